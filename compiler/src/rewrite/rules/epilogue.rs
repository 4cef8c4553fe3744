//! GEMM epilogues: work the GEMM can do on its output before writing it.

use egg::Id;

use crate::codegen::gated_gemm;
use crate::ir::{DType, GateAct, Op};
use crate::rewrite::analysis::Graph;
use crate::rewrite::lang::ENode;
use crate::rewrite::rule::{below, parent_classes, roots_of, sole_consumer, Proposal, Rule};

/// The name of the rule that makes [`Op::GatedLinear`]s (which [`Options`] can switch off).
///
/// [`Options`]: crate::rewrite::Options
pub const GATED_LINEAR: &str = "gated-linear";

pub static RULES: &[Rule] = &[
    Rule {
        name: "gemm-residual",
        family: "epilogue",
        why: "cuBLASLt adds a C matrix with beta = 1 while the tile is in registers: the residual add \
              costs one read of C instead of a kernel reading both operands and writing the sum",
        propose: gemm_residual,
    },
    Rule {
        name: GATED_LINEAR,
        family: "epilogue",
        why: "a GEMM over the packed gate/up weight holds both halves of a row in one tile: its \
              epilogue applies the gate, the product and the FP8 quantize, so the [.., 2f] product \
              never goes through memory and the glue kernel disappears",
        propose: gated_linear,
    },
];

fn gemm_residual(egraph: &Graph, id: Id) -> Vec<Proposal> {
    let mut out = Vec::new();
    for node in &egraph[id].nodes {
        if node.op != Op::Add {
            continue;
        }
        let (a, b) = (node.children[0], node.children[1]);
        for (linear, residual) in [(b, a), (a, b)] {
            if egraph.find(linear) == egraph.find(residual) || sole_consumer(egraph, linear).is_none() {
                continue;
            }
            for inner in &egraph[linear].nodes {
                let Op::Linear { out: dtype } = inner.op else {
                    continue;
                };
                let mut children = inner.children.clone();
                children.push(residual);
                let node = ENode::new(Op::LinearAdd { out: dtype }, children);
                if below(egraph, &node, id) {
                    out.push(Proposal::Node(node));
                }
            }
        }
    }
    out
}

/// `quantize(act(y[.., :f]) · y[.., f:], s)` where `y` is an FP8 linear over a packed `[2f, k]`
/// weight: one [`Op::GatedLinear`]. Every value between the linear and the quantize must have
/// that one reader, or it would be materialised anyway and the GEMM computed twice.
fn gated_linear(egraph: &Graph, id: Id) -> Vec<Proposal> {
    let mut out = Vec::new();
    for node in &egraph[id].nodes {
        let Op::Quantize { to } = node.op else { continue };
        let (h, scale) = (node.children[0], node.children[1]);
        if sole_consumer(egraph, h).is_none() {
            continue;
        }
        for mul in egraph[h].nodes.iter().filter(|n| n.op == Op::Mul) {
            let (p, q) = (mul.children[0], mul.children[1]);
            for (gated, up) in [(p, q), (q, p)] {
                if egraph.find(gated) == egraph.find(up)
                    || sole_consumer(egraph, gated).is_none()
                    || sole_consumer(egraph, up).is_none()
                {
                    continue;
                }
                for act_node in &egraph[gated].nodes {
                    let Some(act) = GateAct::of(&act_node.op) else {
                        continue;
                    };
                    let gate = act_node.children[0];
                    if sole_consumer(egraph, gate).is_none() {
                        continue;
                    }
                    for (mid, mut children) in packed_linears(egraph, gate, up, act) {
                        children.push(scale);
                        let node = ENode::new(Op::GatedLinear { act, mid, out: to }, children);
                        if below(egraph, &node, id) {
                            out.push(Proposal::Node(node));
                        }
                    }
                }
            }
        }
    }
    out
}

/// For each FP8 linear `y` (`[.., 2f]` of `mid` values over `k` features) whose first half along
/// the last axis is class `gate` and second half class `up`, which nothing but those two slices
/// reads, and which the gated GEMM can take with gate `act` ([`gated_gemm::refusal`]): `mid` and
/// the linear's operands `(x, w, x_scale, w_scale)`.
fn packed_linears(egraph: &Graph, gate: Id, up: Id, act: GateAct) -> Vec<(DType, Vec<Id>)> {
    let mut out = Vec::new();
    for first in &egraph[gate].nodes {
        let Op::Slice {
            axis,
            start: 0,
            end: f,
        } = first.op
        else {
            continue;
        };
        let y = egraph.find(first.children[0]);
        let dims = egraph[y].data.ty.shape.dims();
        let second = Op::Slice {
            axis,
            start: f,
            end: 2 * f,
        };
        let halves = axis + 1 == dims.len()
            && dims[axis] == 2 * f
            && egraph[up]
                .nodes
                .iter()
                .any(|n| n.op == second && egraph.find(n.children[0]) == y);
        let readers = [egraph.find(gate), egraph.find(up)];
        if !halves
            || roots_of(egraph, y) > 0
            || !parent_classes(egraph, y).iter().all(|p| readers.contains(p))
        {
            continue;
        }
        for linear in &egraph[y].nodes {
            let Op::Linear { out: mid } = linear.op else {
                continue;
            };
            // FP8 linears only (they alone have scales): bf16 graphs have no quantize to fuse.
            let w = &egraph[linear.children[1]].data.ty;
            if linear.children.len() == 4
                && w.dtype.is_fp8()
                && gated_gemm::refusal(act, w.shape.last(), f).is_none()
            {
                out.push((mid, linear.children.clone()));
            }
        }
    }
    out
}
