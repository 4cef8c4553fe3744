//! Graph ⇄ e-graph: a graph goes in node by node; the cheapest e-node of each needed class comes
//! back out as a graph again.

use std::collections::{HashMap, HashSet, VecDeque};

use egg::Id;

use super::analysis::{Graph as EGraph, Types};
use super::cost::local_cost;
use super::lang::ENode;
use super::rule::{below, parent_classes, roots_of, sole_consumer};
use crate::ir::{Graph, GraphError, NodeId, Op};

/// The e-graph of `graph`, and its outputs as (name, e-class) in graph order.
pub fn to_egraph(graph: &Graph) -> (EGraph, Vec<(String, Id)>) {
    let mut egraph = EGraph::new(Types::default());
    let mut class: Vec<Id> = Vec::with_capacity(graph.len());
    let mut outputs = Vec::new();
    for (id, node) in graph.nodes() {
        let children: Vec<Id> = graph.operands(id).iter().map(|o| class[o.index()]).collect();
        if node.op == Op::Output {
            outputs.push((node.name.clone(), children[0]));
            class.push(children[0]);
            continue;
        }
        let enode = ENode {
            op: node.op.clone(),
            leaf: node.op.is_leaf().then(|| node.name.clone()),
            children,
        };
        let c = egraph.add(enode);
        if !node.name.is_empty() {
            egraph[c].data.names.insert(node.name.clone());
        }
        class.push(c);
    }
    egraph.analysis.roots = outputs.iter().map(|(_, c)| *c).collect();
    egraph.rebuild();
    (egraph, outputs)
}

/// The cheapest e-node of every e-class: its own cost plus, for each distinct child class, that
/// class's cost shared among the child's readers.
///
/// Plain tree costs count a shared value once per reader, so along a residual stream (read by
/// the next norm and the next residual add) they double every layer and drown the few
/// microseconds a fusion saves in f64 rounding by layer 30. Sharing a child's cost among its
/// readers keeps costs linear in the model's size.
///
/// egg's `Extractor` also re-scans every class until nothing changes, quadratic in the depth of a
/// deep model; this propagates improvements from children to parents through a work queue, so a
/// class is revisited only when one of its children got cheaper.
fn best_nodes(egraph: &EGraph) -> HashMap<Id, (f64, ENode)> {
    let readers: HashMap<Id, f64> = egraph.classes().map(|c| (c.id, readers(egraph, c.id))).collect();
    let mut best: HashMap<Id, (f64, ENode)> = HashMap::new();
    let mut queue: VecDeque<Id> = egraph.classes().map(|c| c.id).collect();
    let mut queued: HashSet<Id> = queue.iter().copied().collect();
    while let Some(id) = queue.pop_front() {
        queued.remove(&id);
        let class = &egraph[id];
        let mut improved = false;
        for node in &class.nodes {
            // Children of strictly lower rank only: the extracted graph is then acyclic even
            // though identity rules made the e-graph cyclic (each class keeps the node that set
            // its rank, so none is left without a choice).
            if !below(egraph, node, id) {
                continue;
            }
            let mut children: Vec<Id> = node.children.iter().map(|&c| egraph.find(c)).collect();
            children.sort_unstable();
            children.dedup();
            let Some(below) = children
                .iter()
                .map(|c| best.get(c).map(|b| b.0 / readers[c]))
                .sum::<Option<f64>>()
            else {
                continue;
            };
            let types: Vec<_> = node.children.iter().map(|&c| &egraph[c].data.ty).collect();
            let read = children.iter().map(|&c| egraph[c].data.ty.size_bytes()).sum();
            let cost = local_cost(&node.op, &class.data.ty, &types, read) + below;
            if best.get(&id).is_none_or(|b| cost < b.0) {
                best.insert(id, (cost, node.clone()));
                improved = true;
            }
        }
        if improved {
            for parent in class.parents().map(|p| egraph.find(p)) {
                if queued.insert(parent) {
                    queue.push_back(parent);
                }
            }
        }
    }
    best
}

/// How many values read class `id` (at least 1): one when a single reader exists in the sense of
/// [`sole_consumer`], else its distinct parent classes plus the graph outputs it feeds.
fn readers(egraph: &EGraph, id: Id) -> f64 {
    if sole_consumer(egraph, id).is_some() {
        return 1.0;
    }
    (parent_classes(egraph, id).len() + roots_of(egraph, id)).max(1) as f64
}

/// The graph made of the cheapest e-node of every class the outputs need, and its estimated cost
/// in ns (the sum over the extracted graph, each class counted once).
pub fn extract(egraph: &EGraph, outputs: &[(String, Id)]) -> Result<(Graph, f64), GraphError> {
    let best = best_nodes(egraph);
    let mut graph = Graph::new();
    let mut done: HashMap<Id, NodeId> = HashMap::new();
    let mut cost = 0.0;
    for (name, root) in outputs {
        // Post-order DFS with an explicit stack: deep graphs must not overflow the call stack.
        let mut stack = vec![(egraph.find(*root), false)];
        while let Some((class, expanded)) = stack.pop() {
            if done.contains_key(&class) {
                continue;
            }
            let node = &best[&class].1;
            if !expanded {
                stack.push((class, true));
                stack.extend(node.children.iter().map(|&c| (egraph.find(c), false)));
                continue;
            }
            let operands: Vec<NodeId> = node.children.iter().map(|&c| done[&egraph.find(c)]).collect();
            let name = match (&node.leaf, &node.op) {
                (Some(leaf), _) => leaf.clone(),
                (None, Op::Fused { program }) => program
                    .instrs
                    .last()
                    .map(|i| i.origin.0.clone())
                    .unwrap_or_default(),
                (None, _) => egraph[class]
                    .data
                    .names
                    .iter()
                    .next()
                    .cloned()
                    .unwrap_or_default(),
            };
            let types: Vec<_> = node.children.iter().map(|&c| &egraph[c].data.ty).collect();
            let read = {
                let mut distinct: Vec<Id> = node.children.iter().map(|&c| egraph.find(c)).collect();
                distinct.sort_unstable();
                distinct.dedup();
                distinct.iter().map(|&c| egraph[c].data.ty.size_bytes()).sum()
            };
            cost += local_cost(&node.op, &egraph[class].data.ty, &types, read);
            let id = graph.add(node.op.clone(), &operands, name)?;
            done.insert(class, id);
        }
        graph.add(Op::Output, &[done[&egraph.find(*root)]], name.clone())?;
    }
    Ok((graph, cost))
}
