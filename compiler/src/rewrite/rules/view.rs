//! View algebra: chains of reshapes, permutes, slices and casts that collapse or vanish.
//!
//! Views cost nothing when the consumer reads strided memory, but every link in a chain is one
//! more thing lowering must resolve, and an identity view hides a fusion opportunity behind a
//! node with two parents. These rules only shorten chains; they never add work.

use egg::Id;

use crate::ir::{DType, Op};
use crate::rewrite::analysis::Graph;
use crate::rewrite::lang::ENode;
use crate::rewrite::rule::{Proposal, Rule};

/// The family of these rules, which run with fusion off too (the unfused baseline still wants
/// its views simplified).
pub const FAMILY: &str = "view";

pub static RULES: &[Rule] = &[
    Rule {
        name: "reshape-reshape",
        family: FAMILY,
        why: "a reshape of a reshape is one reshape: only the final shape matters",
        propose: reshape_reshape,
    },
    Rule {
        name: "reshape-identity",
        family: FAMILY,
        why: "a reshape to the shape a value already has is the value",
        propose: reshape_identity,
    },
    Rule {
        name: "permute-permute",
        family: FAMILY,
        why: "two permutations compose into one",
        propose: permute_permute,
    },
    Rule {
        name: "permute-identity",
        family: FAMILY,
        why: "the identity permutation is the value",
        propose: permute_identity,
    },
    Rule {
        name: "slice-full",
        family: FAMILY,
        why: "a slice covering the whole axis is the value",
        propose: slice_full,
    },
    Rule {
        name: "slice-slice",
        family: FAMILY,
        why: "a slice of a slice on the same axis is one slice with added offsets",
        propose: slice_slice,
    },
    Rule {
        name: "slice-concat",
        family: FAMILY,
        why: "a slice inside one operand of a concat reads that operand: the concat's copy is not needed",
        propose: slice_concat,
    },
    Rule {
        name: "concat-single",
        family: FAMILY,
        why: "a concat of one operand is that operand (a redundant copy)",
        propose: concat_single,
    },
    Rule {
        name: "cast-cast",
        family: FAMILY,
        why: "casting through a type that holds every value of the source exactly loses nothing",
        propose: cast_cast,
    },
    Rule {
        name: "cast-identity",
        family: FAMILY,
        why: "a cast to the value's own type is the value",
        propose: cast_identity,
    },
];

/// Applies `f` to every e-node of `id` and collects what it proposes.
fn each(egraph: &Graph, id: Id, f: impl Fn(&ENode) -> Option<Proposal>) -> Vec<Proposal> {
    egraph[id].nodes.iter().filter_map(f).collect()
}

/// The e-nodes of the class of `child` with an op matching `pred`.
fn inner<'a>(
    egraph: &'a Graph,
    child: Id,
    pred: impl Fn(&Op) -> bool + 'a,
) -> impl Iterator<Item = &'a ENode> + 'a {
    egraph[child].nodes.iter().filter(move |n| pred(&n.op))
}

fn reshape_reshape(egraph: &Graph, id: Id) -> Vec<Proposal> {
    let mut out = Vec::new();
    for node in &egraph[id].nodes {
        let Op::Reshape { shape } = &node.op else { continue };
        for child in inner(egraph, node.children[0], |op| matches!(op, Op::Reshape { .. })) {
            let op = Op::Reshape { shape: shape.clone() };
            out.push(Proposal::Node(ENode::new(op, child.children.clone())));
        }
    }
    out
}

fn reshape_identity(egraph: &Graph, id: Id) -> Vec<Proposal> {
    each(egraph, id, |node| match &node.op {
        Op::Reshape { shape } if egraph[node.children[0]].data.ty.shape == *shape => {
            Some(Proposal::Class(node.children[0]))
        }
        _ => None,
    })
}

fn permute_permute(egraph: &Graph, id: Id) -> Vec<Proposal> {
    let mut out = Vec::new();
    for node in &egraph[id].nodes {
        let Op::Permute { perm: outer } = &node.op else {
            continue;
        };
        for child in inner(egraph, node.children[0], |op| matches!(op, Op::Permute { .. })) {
            let Op::Permute { perm: first } = &child.op else {
                unreachable!()
            };
            // Output axis i of the outer permute is its input axis outer[i], which is the
            // original axis first[outer[i]].
            let perm = outer.iter().map(|&a| first[a]).collect();
            out.push(Proposal::Node(ENode::new(
                Op::Permute { perm },
                child.children.clone(),
            )));
        }
    }
    out
}

fn permute_identity(egraph: &Graph, id: Id) -> Vec<Proposal> {
    each(egraph, id, |node| match &node.op {
        Op::Permute { perm } if perm.iter().enumerate().all(|(i, &a)| i == a) => {
            Some(Proposal::Class(node.children[0]))
        }
        _ => None,
    })
}

fn slice_full(egraph: &Graph, id: Id) -> Vec<Proposal> {
    each(egraph, id, |node| match node.op {
        Op::Slice { axis, start: 0, end } if egraph[node.children[0]].data.ty.shape.dims()[axis] == end => {
            Some(Proposal::Class(node.children[0]))
        }
        _ => None,
    })
}

fn slice_slice(egraph: &Graph, id: Id) -> Vec<Proposal> {
    let mut out = Vec::new();
    for node in &egraph[id].nodes {
        let Op::Slice { axis, start, end } = node.op else {
            continue;
        };
        for child in inner(
            egraph,
            node.children[0],
            move |op| matches!(op, Op::Slice { axis: a, .. } if *a == axis),
        ) {
            let Op::Slice { start: base, .. } = child.op else {
                unreachable!()
            };
            let op = Op::Slice {
                axis,
                start: base + start,
                end: base + end,
            };
            out.push(Proposal::Node(ENode::new(op, child.children.clone())));
        }
    }
    out
}

fn slice_concat(egraph: &Graph, id: Id) -> Vec<Proposal> {
    let mut out = Vec::new();
    for node in &egraph[id].nodes {
        let Op::Slice { axis, start, end } = node.op else {
            continue;
        };
        for concat in inner(
            egraph,
            node.children[0],
            move |op| matches!(op, Op::Concat { axis: a } if *a == axis),
        ) {
            let mut offset = 0;
            for &operand in &concat.children {
                let len = egraph[operand].data.ty.shape.dims()[axis];
                if start >= offset && end <= offset + len {
                    let op = Op::Slice {
                        axis,
                        start: start - offset,
                        end: end - offset,
                    };
                    out.push(Proposal::Node(ENode::new(op, vec![operand])));
                }
                offset += len;
            }
        }
    }
    out
}

fn concat_single(egraph: &Graph, id: Id) -> Vec<Proposal> {
    each(egraph, id, |node| match node.op {
        Op::Concat { .. } if node.children.len() == 1 => Some(Proposal::Class(node.children[0])),
        _ => None,
    })
}

/// Whether every value of `from` is exactly representable in `via`.
fn lossless(from: DType, via: DType) -> bool {
    use DType::*;
    from == via
        || matches!(
            (from, via),
            (BF16 | F16 | F8E4M3 | F8E5M2, F32) | (F8E4M3 | F8E5M2, BF16 | F16) | (I32, I64)
        )
}

fn cast_cast(egraph: &Graph, id: Id) -> Vec<Proposal> {
    let mut out = Vec::new();
    for node in &egraph[id].nodes {
        let Op::Cast { to } = node.op else { continue };
        for child in inner(egraph, node.children[0], |op| matches!(op, Op::Cast { .. })) {
            let Op::Cast { to: via } = child.op else {
                unreachable!()
            };
            let source = child.children[0];
            if lossless(egraph[source].data.ty.dtype, via) {
                out.push(Proposal::Node(ENode::new(Op::Cast { to }, vec![source])));
            }
        }
    }
    out
}

fn cast_identity(egraph: &Graph, id: Id) -> Vec<Proposal> {
    each(egraph, id, |node| match node.op {
        Op::Cast { to } if egraph[node.children[0]].data.ty.dtype == to => {
            Some(Proposal::Class(node.children[0]))
        }
        _ => None,
    })
}
