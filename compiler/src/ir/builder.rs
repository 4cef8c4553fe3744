//! A convenient way to build graphs from Rust: one method per op, with dotted name scopes.
//!
//! ```
//! use lancet_compiler::ir::{Builder, DType, Init};
//! let mut b = Builder::new();
//! let x = b.input("x", DType::BF16, [2, 16, 64])?;
//! let y = b.scoped("mlp.up", |b| {
//!     let w = b.param("weight", DType::BF16, [128, 64], Init::normal(0.02))?;
//!     b.linear(x, w, DType::BF16)
//! })?;
//! let y = b.silu(y)?;
//! b.output("y", y)?;
//! let graph = b.finish();
//! assert_eq!(graph.node(y).ty.shape.dims(), &[2, 16, 128]);
//! # Ok::<(), lancet_compiler::ir::GraphError>(())
//! ```

use super::{
    DType, GateAct, GeluApprox, Graph, GraphError, Init, NodeId, Op, RopeScaling, RopeStyle, Shape,
    TensorType,
};

/// A handle to a node while building; it is the node's id.
pub type Tensor = NodeId;

type Result<T> = std::result::Result<T, GraphError>;

/// Builds a [`Graph`]. Nodes are named after the current scope (`layers.3.mlp.down`) so that
/// errors, DOT renderings and dumped kernels point back at the model code that made them.
#[derive(Default)]
pub struct Builder {
    graph: Graph,
    scope: Vec<String>,
}

impl Builder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` with `name` appended to the scope (dots allowed: `"layers.3"`).
    pub fn scoped<T>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.scope.push(name.to_string());
        let result = f(self);
        self.scope.pop();
        result
    }

    /// The full name of `leaf` in the current scope.
    fn qualified(&self, leaf: &str) -> String {
        self.scope
            .iter()
            .map(String::as_str)
            .chain((!leaf.is_empty()).then_some(leaf))
            .collect::<Vec<_>>()
            .join(".")
    }

    fn node(&mut self, op: Op, operands: &[Tensor]) -> Result<Tensor> {
        let name = self.qualified("");
        self.graph.add(op, operands, name)
    }

    pub fn ty(&self, t: Tensor) -> &TensorType {
        &self.graph.node(t).ty
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn finish(self) -> Graph {
        self.graph
    }

    /// A runtime input named `name` (not scoped: inputs are the graph's interface).
    pub fn input(&mut self, name: &str, dtype: DType, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        self.graph.add(Op::Input { dtype, shape }, &[], name)
    }

    /// A parameter named `name` within the current scope.
    pub fn param(&mut self, name: &str, dtype: DType, shape: impl Into<Shape>, init: Init) -> Result<Tensor> {
        let shape = shape.into();
        let name = self.qualified(name);
        self.graph.add(Op::Param { dtype, shape, init }, &[], name)
    }

    /// Marks `x` as a result named `name`.
    pub fn output(&mut self, name: &str, x: Tensor) -> Result<Tensor> {
        self.graph.add(Op::Output, &[x], name)
    }

    pub fn embedding(&mut self, table: Tensor, ids: Tensor) -> Result<Tensor> {
        self.node(Op::Embedding, &[table, ids])
    }

    pub fn rms_norm(&mut self, x: Tensor, gain: Tensor, eps: f32) -> Result<Tensor> {
        self.node(Op::RmsNorm { eps: eps.into() }, &[x, gain])
    }

    pub fn layer_norm(&mut self, x: Tensor, gain: Tensor, bias: Tensor, eps: f32) -> Result<Tensor> {
        self.node(Op::LayerNorm { eps: eps.into() }, &[x, gain, bias])
    }

    /// `x · wᵀ` for bf16/f16/f32 operands.
    pub fn linear(&mut self, x: Tensor, w: Tensor, out: DType) -> Result<Tensor> {
        self.node(Op::Linear { out }, &[x, w])
    }

    /// `x · wᵀ · x_scale · w_scale` for FP8 operands.
    pub fn linear_fp8(
        &mut self,
        x: Tensor,
        w: Tensor,
        x_scale: Tensor,
        w_scale: Tensor,
        out: DType,
    ) -> Result<Tensor> {
        self.node(Op::Linear { out }, &[x, w, x_scale, w_scale])
    }

    /// A gated linear unit and the quantize of its result in one op (see [`Op::GatedLinear`]):
    /// what rewriting makes of `quantize(act(gate) · up)` over an FP8 linear, for tests and
    /// hand-built graphs.
    pub fn gated_linear(
        &mut self,
        [x, w]: [Tensor; 2],
        [x_scale, w_scale, out_scale]: [Tensor; 3],
        act: GateAct,
        mid: DType,
        out: DType,
    ) -> Result<Tensor> {
        self.node(
            Op::GatedLinear { act, mid, out },
            &[x, w, x_scale, w_scale, out_scale],
        )
    }

    pub fn reshape(&mut self, x: Tensor, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        self.node(Op::Reshape { shape }, &[x])
    }

    pub fn permute(&mut self, x: Tensor, perm: impl Into<Vec<usize>>) -> Result<Tensor> {
        let perm = perm.into();
        self.node(Op::Permute { perm }, &[x])
    }

    pub fn slice(&mut self, x: Tensor, axis: usize, start: usize, end: usize) -> Result<Tensor> {
        self.node(Op::Slice { axis, start, end }, &[x])
    }

    /// Consecutive slices of `sizes` along `axis` (they must add up to the axis length).
    pub fn split(&mut self, x: Tensor, axis: usize, sizes: &[usize]) -> Result<Vec<Tensor>> {
        let mut start = 0;
        let mut parts = Vec::with_capacity(sizes.len());
        for &size in sizes {
            parts.push(self.slice(x, axis, start, start + size)?);
            start += size;
        }
        Ok(parts)
    }

    pub fn concat(&mut self, xs: &[Tensor], axis: usize) -> Result<Tensor> {
        self.node(Op::Concat { axis }, xs)
    }

    pub fn rope(
        &mut self,
        x: Tensor,
        style: RopeStyle,
        theta: f32,
        rotary_dim: usize,
        scaling: Option<RopeScaling>,
    ) -> Result<Tensor> {
        self.node(
            Op::Rope {
                style,
                theta: theta.into(),
                rotary_dim,
                scaling,
            },
            &[x],
        )
    }

    pub fn attention(&mut self, q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: f32) -> Result<Tensor> {
        self.node(
            Op::Attention {
                causal,
                scale: scale.into(),
            },
            &[q, k, v],
        )
    }

    /// FP8 attention over quantized `q`, `k`, `v` with their scales, quantizing its result with
    /// `o_scale` to `out` (see [`Op::Fp8Attention`]).
    #[allow(clippy::too_many_arguments)]
    pub fn fp8_attention(
        &mut self,
        [q, k, v]: [Tensor; 3],
        [q_scale, k_scale, v_scale, o_scale]: [Tensor; 4],
        causal: bool,
        scale: f32,
        p_scale: f32,
        out: DType,
    ) -> Result<Tensor> {
        self.node(
            Op::Fp8Attention {
                causal,
                scale: scale.into(),
                p_scale: p_scale.into(),
                out,
            },
            &[q, k, v, q_scale, k_scale, v_scale, o_scale],
        )
    }

    pub fn add(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.node(Op::Add, &[a, b])
    }

    pub fn mul(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.node(Op::Mul, &[a, b])
    }

    pub fn silu(&mut self, x: Tensor) -> Result<Tensor> {
        self.node(Op::Silu, &[x])
    }

    pub fn gelu(&mut self, x: Tensor, approx: GeluApprox) -> Result<Tensor> {
        self.node(Op::Gelu { approx }, &[x])
    }

    pub fn cast(&mut self, x: Tensor, to: DType) -> Result<Tensor> {
        self.node(Op::Cast { to }, &[x])
    }

    pub fn quantize(&mut self, x: Tensor, scale: Tensor, to: DType) -> Result<Tensor> {
        self.node(Op::Quantize { to }, &[x, scale])
    }

    pub fn dequantize(&mut self, q: Tensor, scale: Tensor, to: DType) -> Result<Tensor> {
        self.node(Op::Dequantize { to }, &[q, scale])
    }
}
