//! GEMM epilogues: work the GEMM can do on its output before writing it.

use egg::Id;

use crate::ir::Op;
use crate::rewrite::analysis::Graph;
use crate::rewrite::lang::ENode;
use crate::rewrite::rule::{below, sole_consumer, Proposal, Rule};

pub static RULES: &[Rule] = &[Rule {
    name: "gemm-residual",
    family: "epilogue",
    why: "cuBLASLt adds a C matrix with beta = 1 while the tile is in registers: the residual add \
          costs one read of C instead of a kernel reading both operands and writing the sum",
    propose: gemm_residual,
}];

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
