//! What a graph costs: node counts, parameters, FLOPs and activation bytes.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ir::{Graph, Op};

/// FLOPs of one forward pass, split by where they run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Flops {
    /// `2·m·n·k` per linear.
    pub linear: f64,
    /// `2·b·hq·sq·skv·(d + dv)` per attention (QKᵀ and PV), halved when causal — the
    /// convention FlashAttention and PyTorch's benchmarks use.
    pub attention: f64,
    /// Everything else, counted as one FLOP per produced element of each arithmetic op and five
    /// per element for norms and RoPE: small, and only indicative.
    pub pointwise: f64,
}

impl Flops {
    pub fn total(&self) -> f64 {
        self.linear + self.attention + self.pointwise
    }
}

/// The summary `lancet graph --summary` prints.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub nodes: usize,
    pub nodes_by_op: BTreeMap<&'static str, usize>,
    pub params: usize,
    pub param_bytes: usize,
    pub flops: Flops,
    /// Bytes of every intermediate result, as if each op wrote its own output (no fusion, no
    /// buffer reuse): what fusion and memory planning start from.
    pub activation_bytes: usize,
    pub largest_activation_bytes: usize,
    pub input_bytes: usize,
    pub output_bytes: usize,
}

pub fn summarize(graph: &Graph) -> Summary {
    let mut s = Summary {
        nodes: graph.len(),
        ..Summary::default()
    };
    for (id, node) in graph.nodes() {
        *s.nodes_by_op.entry(node.op.kind()).or_default() += 1;
        let out = node.ty.numel() as f64;
        let operand = |i: usize| graph.node(graph.operands(id)[i]).ty.clone();
        match &node.op {
            Op::Param { .. } => {
                s.params += node.ty.numel();
                s.param_bytes += node.ty.size_bytes();
            }
            Op::Input { .. } => s.input_bytes += node.ty.size_bytes(),
            Op::Output => s.output_bytes += node.ty.size_bytes(),
            Op::Linear { .. } | Op::LinearAdd { .. } => {
                s.flops.linear += 2.0 * out * operand(0).shape.last() as f64
            }
            // The GEMM runs over both halves of the packed weight: twice the output's width.
            Op::GatedLinear { .. } => s.flops.linear += 2.0 * (2.0 * out) * operand(0).shape.last() as f64,
            Op::Attention { causal, .. } | Op::Fp8Attention { causal, .. } => {
                let (q, k, v) = (operand(0).shape, operand(1).shape, operand(2).shape);
                let pairs = (q.0[0] * q.0[1] * q.0[2] * k.0[2]) as f64;
                let full = 2.0 * pairs * (q.0[3] + v.0[3]) as f64;
                s.flops.attention += if *causal { full / 2.0 } else { full };
            }
            Op::RmsNorm { .. } | Op::LayerNorm { .. } | Op::Rope { .. } => s.flops.pointwise += 5.0 * out,
            Op::Add | Op::Mul | Op::Silu | Op::Gelu { .. } | Op::Quantize { .. } | Op::Dequantize { .. } => {
                s.flops.pointwise += out
            }
            _ => {}
        }
        if !node.op.is_leaf() && !matches!(node.op, Op::Output) {
            s.activation_bytes += node.ty.size_bytes();
            s.largest_activation_bytes = s.largest_activation_bytes.max(node.ty.size_bytes());
        }
    }
    s
}
