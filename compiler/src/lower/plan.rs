//! The plan: what the runtime executes, in order, over which buffers.

use std::fmt;

use serde::Serialize;

use super::layout::View;
use crate::ir::{DType, Init};

/// Where a buffer's memory comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BufferKind {
    /// Bound by name on every run.
    Input,
    /// A weight, bound by name once.
    Param,
    /// An intermediate, placed in the shared arena at `offset`.
    Activation,
    /// Values lowering computed (RoPE's rotation table), uploaded once with the weights.
    Constant,
    /// A result the caller reads back by name.
    Output,
}

#[derive(Clone, Debug, Serialize)]
pub struct Buffer {
    pub name: String,
    pub kind: BufferKind,
    pub dtype: DType,
    pub elems: usize,
    /// Byte offset in the arena (activations only, after memory planning).
    pub offset: Option<usize>,
    /// The values of a constant buffer.
    #[serde(skip)]
    pub data: Option<Vec<f32>>,
    /// How a parameter is filled when no checkpoint provides it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<Init>,
}

impl Buffer {
    pub fn bytes(&self) -> usize {
        self.elems * self.dtype.size_bytes()
    }
}

/// One launch of a generated kernel.
#[derive(Clone, Debug, Serialize)]
pub struct KernelStep {
    /// Index into [`Plan::kernels`]: identical kernels (every layer's) share one entry.
    pub kernel: usize,
    /// Per job: its input views, in argument order.
    pub args: Vec<Vec<View>>,
    /// Per job: the view it writes.
    pub outs: Vec<View>,
    /// Per job: the amax slot of each quantize instruction, in program order.
    pub amax: Vec<Vec<usize>>,
    /// The graph nodes this launch implements.
    pub nodes: Vec<String>,
    pub grid: u32,
    pub block: u32,
}

/// `out = x · wᵀ (· x_scale · w_scale) (+ residual)` through cuBLASLt.
#[derive(Clone, Debug, Serialize)]
pub struct GemmStep {
    pub x: View,
    pub w: View,
    pub scales: Option<(View, View)>,
    pub residual: Option<View>,
    pub out: View,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Row stride of `x` in elements (the GEMM reads it in place when it is a strided view).
    pub ldx: usize,
    pub node: String,
}

/// A gated linear unit in one generated GEMM kernel (see `Op::GatedLinear`): FP8 `x [m, k]`
/// times the packed gate/up weight `w [2f, k]`, activation, product and quantize in the epilogue.
#[derive(Clone, Debug, Serialize)]
pub struct GatedGemmStep {
    /// Index into [`Plan::kernels`].
    pub kernel: usize,
    pub x: View,
    pub w: View,
    pub x_scale: View,
    pub w_scale: View,
    pub out_scale: View,
    pub out: View,
    pub m: usize,
    pub f: usize,
    pub k: usize,
    /// Where the kernel records max |h| (before quantizing) for delayed scaling.
    pub amax_slot: usize,
    pub node: String,
}

/// Fused flash attention through cuDNN; every operand is a strided `[b, h, s, d]` view.
#[derive(Clone, Debug, Serialize)]
pub struct AttentionStep {
    pub q: View,
    pub k: View,
    pub v: View,
    pub o: View,
    pub causal: bool,
    pub scale: f32,
    /// Scales and amax slot of FP8 attention (`None`: bf16).
    pub fp8: Option<Fp8Scales>,
    pub node: String,
}

/// The per-tensor scales of FP8 attention ([`Op::Fp8Attention`](crate::ir::Op::Fp8Attention)):
/// Q, K and V stand for their e4m3 values times `q`, `k`, `v`; O is quantized by dividing by
/// `o`; probabilities are rounded as `P · p_scale`.
#[derive(Clone, Debug, Serialize)]
pub struct Fp8Scales {
    pub q: View,
    pub k: View,
    pub v: View,
    pub o: View,
    pub p_scale: f32,
    /// Where the call records max |O| before quantizing it (for delayed scaling of `o`).
    pub amax_slot: usize,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    Kernel(KernelStep),
    Gemm(GemmStep),
    GatedGemm(GatedGemmStep),
    Attention(AttentionStep),
}

/// A lowered forward pass.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub buffers: Vec<Buffer>,
    pub steps: Vec<Step>,
    /// The unique generated kernels, with their CUDA source.
    pub kernels: Vec<crate::codegen::Kernel>,
    /// Names of the quantization points whose amax the kernels record, by slot.
    pub amax_slots: Vec<String>,
    /// Bytes of the activation arena after liveness-based sharing.
    pub arena_bytes: usize,
    /// Bytes the activations would need, each in its own allocation.
    pub unplanned_bytes: usize,
}

impl Plan {
    /// Launches of fused elementwise and row kernels (gated GEMMs are counted apart).
    pub fn kernel_launches(&self) -> usize {
        self.steps.iter().filter(|s| matches!(s, Step::Kernel(_))).count()
    }

    /// cuBLASLt GEMMs (gated GEMMs are generated kernels: see [`Plan::gated_gemms`]).
    pub fn gemms(&self) -> usize {
        self.steps.iter().filter(|s| matches!(s, Step::Gemm(_))).count()
    }

    pub fn gated_gemms(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| matches!(s, Step::GatedGemm(_)))
            .count()
    }

    /// How many steps launch generated kernel `kernel` (fused kernels and gated GEMMs alike).
    pub fn launches_of(&self, kernel: usize) -> usize {
        self.steps
            .iter()
            .filter(|s| match s {
                Step::Kernel(k) => k.kernel == kernel,
                Step::GatedGemm(g) => g.kernel == kernel,
                _ => false,
            })
            .count()
    }

    pub fn attentions(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| matches!(s, Step::Attention(_)))
            .count()
    }
}

fn view(plan: &Plan, v: &View) -> String {
    format!(
        "{}{:?}@{}+{} strides {:?}",
        v.dtype, v.shape, plan.buffers[v.buffer].name, v.offset, v.strides
    )
}

impl fmt::Display for Plan {
    /// `plan.txt`: buffers with arena offsets, then every step with its views.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "# {} steps: {} kernel launches ({} unique kernels), {} GEMMs, {} gated GEMMs, {} attention calls",
            self.steps.len(),
            self.kernel_launches(),
            self.kernels.len(),
            self.gemms(),
            self.gated_gemms(),
            self.attentions()
        )?;
        writeln!(
            f,
            "# arena {} bytes (unplanned {} bytes)\n\n## buffers",
            self.arena_bytes, self.unplanned_bytes
        )?;
        for (i, b) in self.buffers.iter().enumerate() {
            let place = b.offset.map(|o| format!(" arena+{o}")).unwrap_or_default();
            writeln!(
                f,
                "b{i:<4} {:<10} {:<6} {:>12} B{place}  {}",
                format!("{:?}", b.kind).to_lowercase(),
                b.dtype.name(),
                b.bytes(),
                b.name
            )?;
        }
        writeln!(f, "\n## steps")?;
        for (i, step) in self.steps.iter().enumerate() {
            match step {
                Step::Kernel(k) => {
                    let kernel = &self.kernels[k.kernel];
                    writeln!(
                        f,
                        "{i:>4} kernel {} grid {} block {}  [{}]",
                        kernel.name,
                        k.grid,
                        k.block,
                        k.nodes.join(", ")
                    )?;
                    for (job, (args, out)) in k.args.iter().zip(&k.outs).enumerate() {
                        for (a, v) in args.iter().enumerate() {
                            writeln!(f, "       job {job} arg{a}: {}", view(self, v))?;
                        }
                        writeln!(f, "       job {job} out:  {}", view(self, out))?;
                    }
                }
                Step::Gemm(g) => {
                    let epilogue = if g.residual.is_some() { " + residual" } else { "" };
                    writeln!(
                        f,
                        "{i:>4} gemm m {} n {} k {}{epilogue}  [{}]",
                        g.m, g.n, g.k, g.node
                    )?;
                    writeln!(f, "       x:   {} (ld {})", view(self, &g.x), g.ldx)?;
                    writeln!(f, "       w:   {}", view(self, &g.w))?;
                    if let Some(r) = &g.residual {
                        writeln!(f, "       c:   {}", view(self, r))?;
                    }
                    writeln!(f, "       out: {}", view(self, &g.out))?;
                }
                Step::GatedGemm(g) => {
                    let spec = self.kernels[g.kernel]
                        .spec
                        .gated_gemm()
                        .expect("gated GEMM steps run gated GEMM kernels");
                    writeln!(
                        f,
                        "{i:>4} gated_gemm m {} f {} k {} act {}  [{}]",
                        g.m,
                        g.f,
                        g.k,
                        spec.act.name(),
                        g.node
                    )?;
                    writeln!(
                        f,
                        "       kernel: {} (epilogue {}, clusters of {})",
                        self.kernels[g.kernel].name, spec.epilogue, spec.cluster
                    )?;
                    for (name, v) in [
                        ("x", &g.x),
                        ("w", &g.w),
                        ("x scale", &g.x_scale),
                        ("w scale", &g.w_scale),
                        ("out scale", &g.out_scale),
                        ("out", &g.out),
                    ] {
                        writeln!(f, "       {name}: {}", view(self, v))?;
                    }
                    writeln!(f, "       amax slot {}", g.amax_slot)?;
                }
                Step::Attention(a) => {
                    let precision = if a.fp8.is_some() { "fp8" } else { "bf16" };
                    writeln!(
                        f,
                        "{i:>4} attention {precision} causal {} scale {}  [{}]",
                        a.causal, a.scale, a.node
                    )?;
                    for (name, v) in [("q", &a.q), ("k", &a.k), ("v", &a.v), ("o", &a.o)] {
                        writeln!(f, "       {name}: {}", view(self, v))?;
                    }
                    if let Some(s) = &a.fp8 {
                        for (name, v) in [("q", &s.q), ("k", &s.k), ("v", &s.v), ("o", &s.o)] {
                            writeln!(f, "       {name} scale: {}", view(self, v))?;
                        }
                        writeln!(f, "       p scale: {}, o amax slot {}", s.p_scale, s.amax_slot)?;
                    }
                }
            }
        }
        Ok(())
    }
}
