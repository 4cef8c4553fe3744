//! The operations a graph node can perform, with their attributes.
//!
//! Operands are positional; each variant documents its operand list. Attention uses PyTorch's
//! `[batch, heads, seq, head_dim]` layout, linear weights PyTorch's `[out_features, in_features]`.

use serde::{Deserialize, Serialize};

use super::{DType, Float, Program, Shape};

/// How RoPE pairs up the channels it rotates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeStyle {
    /// Half-split (GPT-NeoX, Hugging Face Llama): channel `i` pairs with `i + rotary_dim / 2`.
    Neox,
    /// Interleaved (GPT-J, Meta's original Llama): channel `2i` pairs with `2i + 1`.
    Gptj,
}

/// Llama 3's RoPE frequency scaling (Hugging Face's `rope_type: "llama3"`), which stretches a
/// model trained on `original_context` positions to a longer one: frequencies whose wavelength
/// exceeds `original_context / low_freq_factor` are divided by `factor`, those shorter than
/// `original_context / high_freq_factor` are kept, and the band between is interpolated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RopeScaling {
    pub factor: Float,
    pub low_freq_factor: Float,
    pub high_freq_factor: Float,
    pub original_context: usize,
}

/// Which GELU formula: the exact one or the tanh approximation most fused kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GeluApprox {
    None,
    Tanh,
}

/// The activation of a gated linear unit's gate half ([`Op::GatedLinear`]): SwiGLU's SiLU or
/// GeGLU's GELU in either formula.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateAct {
    /// `x · sigmoid(x)` ([`Op::Silu`]).
    Silu,
    /// The tanh approximation of GELU ([`Op::Gelu`] with [`GeluApprox::Tanh`]).
    GeluTanh,
    /// The exact, erf-based GELU ([`Op::Gelu`] with [`GeluApprox::None`]).
    GeluErf,
}

/// How a parameter is filled when no checkpoint provides it (deterministic, from a seed).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Init {
    /// Normal(0, std): linear weights, embeddings.
    Normal { std: Float },
    /// Every element the same value: norm gains and biases, default activation scales.
    Const { value: Float },
    /// The per-tensor FP8 scale of another parameter: `amax(weight) / max_finite(dtype)`, so the
    /// quantized weight uses the whole FP8 range.
    ScaleOf { weight: String },
}

/// A graph operation. Operands (in order) are listed on each variant.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A tensor the caller supplies on every run, bound by the node's name. No operands.
    Input { dtype: DType, shape: Shape },
    /// A weight or other parameter, bound by the node's name. No operands.
    Param { dtype: DType, shape: Shape, init: Init },
    /// Rows of a table: `(table [vocab, hidden], ids [...] of i32/i64) -> [..., hidden]`.
    Embedding,
    /// `(x [..., n], gain [n])`: `x / sqrt(mean(x²) + eps) * gain`.
    RmsNorm { eps: Float },
    /// `(x [..., n], gain [n], bias [n])`: `(x - mean) / sqrt(var + eps) * gain + bias`.
    LayerNorm { eps: Float },
    /// `(x [..., k], w [n, k])` in bf16/f16/f32, or `(x, w, x_scale [], w_scale [])` with FP8
    /// `x` and `w`, computing `x · wᵀ · x_scale · w_scale` with f32 accumulation. Output `[..., n]`
    /// in `out`.
    Linear { out: DType },
    /// `(x)`: the same elements in a new shape.
    Reshape { shape: Shape },
    /// `(x)`: output axis `i` is input axis `perm[i]`.
    Permute { perm: Vec<usize> },
    /// `(x)`: elements `start..end` along `axis`.
    Slice { axis: usize, start: usize, end: usize },
    /// `(x0, x1, ...)` joined along `axis`.
    Concat { axis: usize },
    /// `(x [..., seq, heads, head_dim])`: rotary position embedding of the first `rotary_dim`
    /// channels, position = index along the seq axis, frequency `theta^(-2i/rotary_dim)`, rescaled
    /// by `scaling` when there is one.
    Rope {
        style: RopeStyle,
        theta: Float,
        rotary_dim: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scaling: Option<RopeScaling>,
    },
    /// `(q [b, hq, sq, d], k [b, hkv, skv, d], v [b, hkv, skv, dv]) -> [b, hq, sq, dv]`:
    /// `softmax(q·kᵀ·scale + mask)·v`. Query head `h` reads KV head `h / (hq / hkv)` (GQA); the
    /// causal mask lets query `i` see keys `j <= i` (top-left aligned, as PyTorch's `is_causal`).
    Attention { causal: bool, scale: Float },
    /// `(q, k, v, q_scale [], k_scale [], v_scale [], o_scale [])` with `q`, `k` and `v` in one
    /// FP8 type, each standing for `x · x_scale`: attention as [`Op::Attention`] computes it,
    /// except that the probabilities are rounded to e4m3 as `P · p_scale` before `P·V` and divided
    /// back after (what FP8 flash attention does), and that the result is quantized to `out` with
    /// `o_scale` as [`Op::Quantize`] does. Output `[b, hq, sq, dv]` in `out`.
    Fp8Attention {
        causal: bool,
        scale: Float,
        p_scale: Float,
        out: DType,
    },
    /// `(a, b)` with NumPy broadcasting.
    Add,
    /// `(a, b)` with NumPy broadcasting.
    Mul,
    /// `(x)`: `x · sigmoid(x)`.
    Silu,
    /// `(x)`.
    Gelu { approx: GeluApprox },
    /// `(x)` converted to `to`, rounding to nearest even; FP8 saturates.
    Cast { to: DType },
    /// `(x, scale [])`: `saturate(x · (1 / scale))` rounded to the FP8 type `to` (a multiply by
    /// the reciprocal, as Transformer Engine and the generated kernels compute it).
    Quantize { to: DType },
    /// `(q, scale [])`: `q · scale` in `to`.
    Dequantize { to: DType },
    /// `(x)`: a result the caller reads back, by the node's name.
    Output,
    /// A fused kernel made by rewriting: `program` over the operands as its arguments.
    Fused { program: Program },
    /// A linear whose result is added to `residual` in the GEMM's epilogue (`C` with β = 1),
    /// rounded once: operands `(x, w, [x_scale, w_scale,] residual)`.
    LinearAdd { out: DType },
    /// A gated linear unit (SwiGLU, GeGLU) and the FP8 quantize of its result, made by
    /// rewriting: operands `(x [..., k], w [2f, k], x_scale [], w_scale [], out_scale [])` with
    /// `x` and `w` in one FP8 type, output `[..., f]` in the FP8 type `out`. Exactly the unfused
    /// chain it replaces, rounded where that chain stores values: `y = x · wᵀ · x_scale · w_scale`
    /// rounded to `mid`; `gate = y[..., :f]`, `up = y[..., f:]`; `h = act(gate)` rounded to
    /// `mid`, times `up`, rounded to `mid` again; the result is `h` quantized with `out_scale` as
    /// [`Op::Quantize`] does.
    GatedLinear { act: GateAct, mid: DType, out: DType },
}

impl Init {
    pub fn normal(std: f32) -> Self {
        Init::Normal { std: Float(std) }
    }

    pub fn constant(value: f32) -> Self {
        Init::Const { value: Float(value) }
    }
}

impl GateAct {
    /// The activation of a gate op (`silu`, `gelu`), if it is one.
    pub fn of(op: &Op) -> Option<GateAct> {
        match op {
            Op::Silu => Some(GateAct::Silu),
            Op::Gelu {
                approx: GeluApprox::Tanh,
            } => Some(GateAct::GeluTanh),
            Op::Gelu {
                approx: GeluApprox::None,
            } => Some(GateAct::GeluErf),
            _ => None,
        }
    }

    /// The unfused op that computes this activation: [`GateAct::of`]'s inverse.
    pub fn op(self) -> Op {
        match self {
            GateAct::Silu => Op::Silu,
            GateAct::GeluTanh => Op::Gelu {
                approx: GeluApprox::Tanh,
            },
            GateAct::GeluErf => Op::Gelu {
                approx: GeluApprox::None,
            },
        }
    }

    /// The name JSON, plans and kernel names use: `silu`, `gelu_tanh` or `gelu_erf`.
    pub fn name(self) -> &'static str {
        match self {
            GateAct::Silu => "silu",
            GateAct::GeluTanh => "gelu_tanh",
            GateAct::GeluErf => "gelu_erf",
        }
    }
}

impl Op {
    /// The op's name as it appears in JSON, DOT and error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Param { .. } => "param",
            Op::Embedding => "embedding",
            Op::RmsNorm { .. } => "rms_norm",
            Op::LayerNorm { .. } => "layer_norm",
            Op::Linear { .. } => "linear",
            Op::Reshape { .. } => "reshape",
            Op::Permute { .. } => "permute",
            Op::Slice { .. } => "slice",
            Op::Concat { .. } => "concat",
            Op::Rope { .. } => "rope",
            Op::Attention { .. } => "attention",
            Op::Fp8Attention { .. } => "fp8_attention",
            Op::Add => "add",
            Op::Mul => "mul",
            Op::Silu => "silu",
            Op::Gelu { .. } => "gelu",
            Op::Cast { .. } => "cast",
            Op::Quantize { .. } => "quantize",
            Op::Dequantize { .. } => "dequantize",
            Op::Output => "output",
            Op::Fused { .. } => "fused",
            Op::LinearAdd { .. } => "linear_add",
            Op::GatedLinear { .. } => "gated_linear",
        }
    }

    /// Ops that only reinterpret or move elements without arithmetic.
    pub fn is_view(&self) -> bool {
        matches!(
            self,
            Op::Reshape { .. } | Op::Permute { .. } | Op::Slice { .. } | Op::Concat { .. }
        )
    }

    /// Ops whose value comes from outside the graph, by name.
    pub fn is_leaf(&self) -> bool {
        matches!(self, Op::Input { .. } | Op::Param { .. })
    }
}
