//! The gated GEMM: an FP8 GEMM over a packed gate/up weight whose epilogue computes a gated
//! linear unit and quantizes it ([`Op::GatedLinear`](crate::ir::Op::GatedLinear)), rendered
//! from `gated_gemm.cu.tera`.
//!
//! Shapes and pointers are launch arguments, so a spec is only the arithmetic: every layer of a
//! model (and every model with the same activation and types) shares one kernel.

use std::fmt::Write;

use serde::Serialize;
use tera::Context;

use super::emit::fnv1a;
use super::{templates, Generated, Kernel};
use crate::ir::{DType, GateAct};

/// Elements of `k` the kernel needs per row of `x` and `w` to be a multiple of: TMA copies rows
/// whose pitch is a multiple of 16 bytes, and FP8 elements are one byte each.
pub const K_MULTIPLE: usize = 16;

/// Output columns `f` the kernel needs to be a multiple of: its epilogue stores each thread's
/// pair of adjacent FP8 outputs with one 2-byte store. (A byte-store path for odd `f` doubled the
/// kernel's compile time, 308 → 540 ms, for widths no model has.)
pub const F_MULTIPLE: usize = 2;

const TEMPLATE: &str = "gated_gemm.cu.tera";

/// Why the kernel cannot compute a gated linear unit with gate `act` over `k` input features
/// into `f` outputs, or `None` when it can: what the rewrite rule checks before proposing one,
/// and what lowering names when a graph has one anyway.
pub fn refusal(act: GateAct, k: usize, f: usize) -> Option<String> {
    // Beside 128 accumulators a thread, ptxas has about 40 registers for the epilogue (168 a
    // thread at 384 threads); `erff` needs more and spilled (28 bytes).
    if act == GateAct::GeluErf {
        return Some(format!(
            "the gated GEMM has no {} epilogue (it would spill registers); leave this gated \
             linear unfused",
            act.name()
        ));
    }
    if k % K_MULTIPLE != 0 {
        return Some(format!(
            "k = {k} is not a multiple of {K_MULTIPLE}: the gated GEMM loads rows of x and w with \
             TMA, whose row pitch must be a multiple of 16 bytes"
        ));
    }
    if f % F_MULTIPLE != 0 {
        return Some(format!(
            "f = {f} is not a multiple of {F_MULTIPLE}: the gated GEMM stores its FP8 outputs in \
             pairs"
        ));
    }
    None
}

/// Whether GPUs of NVRTC target `arch` run the kernel: it is built of Hopper's
/// architecture-specific instructions (wgmma, setmaxnreg), which `sm_90a` alone has — Ada has
/// no wgmma, and Blackwell's `sm_100a` replaces it. Elsewhere a gated linear unit stays a cuBLASLt
/// GEMM and a fused kernel.
pub fn runs_on(arch: &str) -> bool {
    arch == "sm_90a"
}

/// Rows of `x` per output tile (two consumer warpgroups of 64 rows each): one TMA box of `x` a
/// stage.
pub const TILE_M: usize = 128;
/// Output columns per tile: the tile's B operand is `TILE_N` gate rows of `w` and the `TILE_N` up
/// rows `f` further on (two TMA boxes a stage), so one m64n256 wgmma holds both halves of the
/// same columns.
pub const TILE_N: usize = 128;
/// Bytes of `k` per pipeline stage: one 128-byte swizzle row, what a TMA box with that swizzle
/// may span.
pub const BOX_K: usize = 128;
/// The cluster size lowering gives gated GEMMs: 1. The multicast variant (2, which halves the
/// weight traffic from L2) is correct on an H100 but was no faster at the headline's MLP shape
/// (docs/benchmarks.md, 2026-12-07): L2 is not what bounds this kernel yet. It stays compiled in
/// CI (`tests/nvrtc.rs`) for when the bound moves there.
pub const CLUSTER: usize = 1;
/// Threads per CTA: one producer warpgroup and two consumer warpgroups.
pub const THREADS: usize = 384;

/// Where the epilogue (activation, product, quantize) runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Epilogue {
    /// In the consumer warpgroups, on their accumulators, between one tile's MMAs and the next:
    /// the tensor cores wait for it (measured on the H100: 1,220 TFLOP/s alone, where cuBLASLt's
    /// GEMM reaches 1,440).
    Registers,
    /// The consumers write each tile's gate and up values, scaled and rounded to `mid`, into a
    /// shared-memory staging buffer and go on to the next tile's MMAs; the producer warpgroup's
    /// three idle warps finish the epilogue from there, in a loop unrolled only twice (less to
    /// compile than 32 unrolled pairs). The buffer (68 KiB) costs one pipeline stage. Needs a
    /// 16-bit `mid`. Not yet run on a GPU.
    Staged,
}

impl std::fmt::Display for Epilogue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Epilogue {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [Epilogue::Registers, Epilogue::Staged]
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| format!("unknown gated GEMM epilogue '{s}' (registers or staged)"))
    }
}

impl Epilogue {
    pub fn name(self) -> &'static str {
        match self {
            Epilogue::Registers => "registers",
            Epilogue::Staged => "staged",
        }
    }

    /// Stages in the shared-memory ring, 48 KiB each: four leave room for nothing else and hide
    /// TMA's latency behind the three in flight; the staging buffer leaves room for three.
    pub const fn stages(self) -> usize {
        match self {
            Epilogue::Registers => 4,
            Epilogue::Staged => 3,
        }
    }

    /// Bytes of the staging buffer: gate and up values of a tile as 16-bit pairs, each row of
    /// `TILE_N / 2` pairs padded by 4 words so that a consumer warp's writes hit 32 banks.
    pub const fn staging_bytes(self) -> usize {
        match self {
            Epilogue::Registers => 0,
            Epilogue::Staged => 2 * TILE_M * (TILE_N / 2 + 4) * 4,
        }
    }

    /// Dynamic shared memory of one CTA: the stages, 1 KiB to align them to the swizzle's
    /// 1024-byte atoms, the staging buffer, two mbarriers per stage and two for the buffer.
    pub const fn smem_bytes(self) -> usize {
        let stages = self.stages();
        stages * (TILE_M * BOX_K + 2 * TILE_N * BOX_K) + self.staging_bytes() + 1024 + (2 * stages + 2) * 8
    }
}

/// The epilogue lowering gives gated GEMMs: [`Epilogue::Registers`], until the staged one has
/// run and been timed on an H100.
pub const EPILOGUE: Epilogue = Epilogue::Registers;

/// Whether `epilogue` can round to `mid`: the staging buffer holds 16-bit values.
pub fn epilogue_supports(epilogue: Epilogue, mid: DType) -> bool {
    epilogue == Epilogue::Registers || mid.size_bytes() == 2
}

/// Everything that determines a gated GEMM's source.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct GatedGemmSpec {
    pub act: GateAct,
    /// Where the unfused chain rounds: the product, the activation and `act(gate) · up`.
    pub mid: DType,
    /// The FP8 type of the output.
    pub out: DType,
    /// CTAs per cluster (1 or 2): with 2, the two CTAs of a cluster compute vertically adjacent
    /// tiles and share each stage's weight boxes through TMA multicast (half the weight traffic
    /// from L2). Lowering uses [`CLUSTER`].
    pub cluster: usize,
    /// Where the epilogue runs.
    pub epilogue: Epilogue,
}

/// The entry point's name while rendering: the real one is a hash of the rendered body.
const PLACEHOLDER: &str = "__LANCET_GATED_GEMM__";

/// Generates the gated GEMM of `spec`, which implements graph `nodes`.
pub fn generate(spec: GatedGemmSpec, nodes: Vec<String>) -> Kernel {
    let mut ctx = Context::new();
    ctx.insert("name", PLACEHOLDER);
    ctx.insert("act", spec.act.name());
    ctx.insert("mid", spec.mid.name());
    ctx.insert("out", fp8_name(spec.out));
    ctx.insert("bm", &TILE_M);
    ctx.insert("bn", &TILE_N);
    ctx.insert("bk", &BOX_K);
    ctx.insert("stages", &spec.epilogue.stages());
    ctx.insert("smem_bytes", &spec.epilogue.smem_bytes());
    ctx.insert("cluster", &spec.cluster);
    ctx.insert("staged", &(spec.epilogue == Epilogue::Staged));
    let body = templates::render(TEMPLATE, &ctx);
    let name = format!("gated_gemm_{}_{:016x}", spec.act.name(), fnv1a(&body));
    let body = body.replace(PLACEHOLDER, &name);
    let mut header = super::header(&name, TEMPLATE, &nodes);
    write!(
        header,
        "\n// out[m, f] = quantize({}(y[:, :f]) · y[:, f:]) to {}, y = x[m, k] · w[2f, k]ᵀ in {}\n",
        spec.act.name(),
        spec.out,
        spec.mid
    )
    .unwrap();
    Kernel {
        name,
        template: TEMPLATE,
        header,
        body,
        spec: Generated::GatedGemm(spec),
        nodes,
    }
}

/// `e4m3` or `e5m2`: the template's name for an FP8 type.
fn fp8_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F8E4M3 => "e4m3",
        DType::F8E5M2 => "e5m2",
        other => unreachable!("gated GEMMs quantize to FP8, not {other}"),
    }
}
