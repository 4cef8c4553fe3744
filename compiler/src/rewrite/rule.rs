//! Rules as data: a name, a one-line why, and a function proposing equivalent e-nodes.
//!
//! Every lancet rule inspects an e-class and proposes e-nodes (or an existing e-class) equal to
//! it. Attributes such as permutations or slice bounds need arithmetic that patterns cannot
//! express, so rules are Rust functions; [`Rule::rewrite`] wraps one as an `egg::Rewrite` so the
//! `Runner` still schedules it, enforces limits and counts how often it fired.

use egg::{Applier, Id, Rewrite, SearchMatches, Searcher, Subst, Symbol, Var};

use super::analysis::{infer_enode, Graph};
use super::lang::ENode;

/// Something equal to the e-class a rule looked at.
pub enum Proposal {
    /// A new e-node (it is type-checked before it is added).
    Node(ENode),
    /// An e-class that already exists.
    Class(Id),
}

/// A named rewrite rule.
pub struct Rule {
    pub name: &'static str,
    /// The family (one per file in `rules/`).
    pub family: &'static str,
    /// Why the rule is sound and why it pays.
    pub why: &'static str,
    pub propose: fn(&Graph, Id) -> Vec<Proposal>,
}

impl Rule {
    pub fn rewrite(&'static self) -> Rewrite<ENode, super::analysis::Types> {
        Rewrite::new(self.name, RuleSearcher(self), RuleApplier(self)).expect("rules bind no variables")
    }
}

struct RuleSearcher(&'static Rule);
struct RuleApplier(&'static Rule);

impl Searcher<ENode, super::analysis::Types> for RuleSearcher {
    fn search_eclass_with_limit(
        &self,
        egraph: &Graph,
        eclass: Id,
        limit: usize,
    ) -> Option<SearchMatches<'_, ENode>> {
        if limit == 0 || (self.0.propose)(egraph, eclass).is_empty() {
            return None;
        }
        Some(SearchMatches {
            eclass,
            substs: vec![Subst::default()],
            ast: None,
        })
    }

    fn vars(&self) -> Vec<Var> {
        Vec::new()
    }
}

impl Applier<ENode, super::analysis::Types> for RuleApplier {
    /// Proposals are recomputed against the e-graph as it is now: earlier applications in the
    /// same iteration may have changed it since the search.
    fn apply_one(
        &self,
        egraph: &mut Graph,
        eclass: Id,
        _subst: &Subst,
        _ast: Option<&egg::PatternAst<ENode>>,
        rule: Symbol,
    ) -> Vec<Id> {
        let eclass = egraph.find(eclass);
        let mut changed = Vec::new();
        for proposal in (self.0.propose)(egraph, eclass) {
            let id = match proposal {
                Proposal::Class(id) => id,
                Proposal::Node(node) => match typed(egraph, &node, eclass) {
                    Some(()) => egraph.add(node),
                    None => continue,
                },
            };
            if egraph.union_trusted(eclass, id, rule) {
                changed.push(egraph.find(eclass));
            }
        }
        changed
    }
}

/// `Some` when `node` type-checks and has the type of `eclass`: the guard that keeps ill-typed
/// rewrites out of the e-graph.
pub fn typed(egraph: &Graph, node: &ENode, eclass: Id) -> Option<()> {
    let ty = infer_enode(egraph, node).ok()?;
    (ty == egraph[eclass].data.ty).then_some(())
}

/// Whether every child of `node` ranks strictly below e-class `id` (see `ClassData::rank`):
/// the guard that keeps growing rules from feeding a class with itself around a cycle.
pub fn below(egraph: &Graph, node: &ENode, id: Id) -> bool {
    let rank = egraph[id].data.rank;
    node.children.iter().all(|&c| egraph[c].data.rank < rank)
}

/// The distinct e-classes with an e-node reading class `id` (itself excluded: identity rules
/// make a class its own parent).
pub fn parent_classes(egraph: &Graph, id: Id) -> Vec<Id> {
    let id = egraph.find(id);
    let mut parents: Vec<Id> = egraph[id]
        .parents()
        .map(|p| egraph.find(p))
        .filter(|&p| p != id)
        .collect();
    parents.sort_unstable();
    parents.dedup();
    parents
}

/// How many graph outputs class `id` is.
pub fn roots_of(egraph: &Graph, id: Id) -> usize {
    let id = egraph.find(id);
    egraph
        .analysis
        .roots
        .iter()
        .filter(|&&r| egraph.find(r) == id)
        .count()
}

/// The one value that reads e-class `id`, if exactly one does: fusing a value into its reader is
/// only free when nothing else needs it materialised.
///
/// Parent e-classes over-count readers: once a kernel absorbs a middle op, the producer below is
/// a child of both the middle op's class and the kernel's. Those are not two readers — any
/// extraction uses one or the other — so parents that lead, through single readers, up to one
/// common class count as that one reader. Graph outputs are readers outside the graph.
pub fn sole_consumer(egraph: &Graph, id: Id) -> Option<Id> {
    sole_consumer_within(egraph, egraph.find(id), 4)
}

fn sole_consumer_within(egraph: &Graph, id: Id, depth: usize) -> Option<Id> {
    if roots_of(egraph, id) > 0 {
        return None;
    }
    let parents = parent_classes(egraph, id);
    match parents[..] {
        [] => None,
        [only] => Some(only),
        // Many readers are many readers; bounding the search keeps it linear.
        _ if depth == 0 || parents.len() > 4 => None,
        _ => parents.iter().copied().find(|&top| {
            parents
                .iter()
                .all(|&p| p == top || leads_to(egraph, p, top, depth - 1))
        }),
    }
}

/// Whether following sole readers up from `from` reaches `to`.
fn leads_to(egraph: &Graph, from: Id, to: Id, depth: usize) -> bool {
    match sole_consumer_within(egraph, from, depth) {
        Some(next) if next == to => true,
        Some(next) if depth > 0 => leads_to(egraph, next, to, depth - 1),
        _ => false,
    }
}
