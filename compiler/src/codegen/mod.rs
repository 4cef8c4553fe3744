//! Code generation: each unique generated kernel becomes CUDA C++ from a `tera` template.
//!
//! A fused kernel is described by its [`KernelSpec`] — programs, iteration shapes, and how each
//! argument is laid out in memory — and a gated GEMM by its [`GatedGemmSpec`]; nothing else:
//! buffer offsets are passed as pointers at launch, so the eight layers of a model share one
//! spec, one source and one compile. Sources are named after their content hash, so the same
//! kernel in two models is the same cubin.

mod emit;
pub mod gated_gemm;
mod templates;

pub use gated_gemm::GatedGemmSpec;

use serde::Serialize;

use crate::ir::{DType, Op, Program};
use crate::lower::View;

/// How a kernel reads or writes one tensor: element type and strides over the iteration shape
/// (0 on broadcast axes). Offsets are not part of it; `aligned` says whether the runtime
/// pointer is a multiple of the vector width, which vector loads rely on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Access {
    pub dtype: DType,
    /// The tensor's own shape (before broadcasting).
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
    pub aligned: bool,
}

/// One program over one iteration shape: a kernel computes one or more of these.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct JobSpec {
    pub program: Program,
    /// The output's shape: one thread per `vec` elements of it (or one block per row).
    pub shape: Vec<usize>,
    pub args: Vec<Access>,
    pub out: Access,
    /// Elements per thread along the last axis (8 = one 16-byte access of bf16).
    pub vec: usize,
}

/// Elements per thread when every access allows it: 8 bf16 = 16 bytes, the widest load.
pub const VEC: usize = 8;

impl JobSpec {
    pub fn new(program: Program, args: &[View], out: &View) -> JobSpec {
        let shape = out.shape.clone();
        let shape = if shape.is_empty() { vec![1] } else { shape };
        // Arguments past the program's own are RoPE tables, read by direct indexing.
        let arity = program
            .instrs
            .iter()
            .flat_map(|i| &i.operands)
            .filter_map(|o| match o {
                crate::ir::Operand::Arg(a) => Some(*a as usize + 1),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let embedding_table = |a: usize| {
            program
                .instrs
                .iter()
                .any(|i| matches!(i.op, Op::Embedding) && i.operands[0] == crate::ir::Operand::Arg(a as u16))
        };
        let accesses: Vec<(Access, usize)> = args
            .iter()
            .enumerate()
            .map(|(a, v)| {
                let strides = if a >= arity || embedding_table(a) {
                    v.strides.clone()
                } else if v.shape.len() + 1 == shape.len()
                    && program.instrs.iter().any(|i| matches!(i.op, Op::Embedding))
                {
                    // Embedding ids: one id per row of the output.
                    let mut s = v.broadcast_to(&shape[..shape.len() - 1]).strides;
                    s.push(0);
                    s
                } else {
                    v.broadcast_to(&shape).strides
                };
                (
                    Access {
                        dtype: v.dtype,
                        shape: v.shape.clone(),
                        strides,
                        aligned: false,
                    },
                    v.offset,
                )
            })
            .collect();
        let out_access = Access {
            dtype: out.dtype,
            shape: shape.clone(),
            strides: if out.shape.is_empty() {
                vec![1]
            } else {
                out.strides.clone()
            },
            aligned: false,
        };
        let mut job = JobSpec {
            program,
            shape,
            args: accesses.iter().map(|(a, _)| a.clone()).collect(),
            out: out_access,
            vec: 1,
        };
        job.vec = job.pick_vec(&accesses.iter().map(|(_, o)| *o).collect::<Vec<_>>(), out.offset);
        let v = job.vec;
        for (access, (_, offset)) in job.args.iter_mut().zip(&accesses) {
            access.aligned = offset % v == 0;
        }
        job.out.aligned = out.offset % v == 0;
        job
    }

    /// [`VEC`] when the last axis splits into aligned vectors for every access, else 1.
    fn pick_vec(&self, offsets: &[usize], out_offset: usize) -> usize {
        let last = *self.shape.last().expect("shape has at least one axis");
        let ok = |a: &Access, offset: usize| {
            if a.strides.len() != self.shape.len() {
                return true; // tables, indexed directly
            }
            let s = *a.strides.last().unwrap_or(&0);
            s == 0
                || (s == 1
                    && offset % VEC == 0
                    && a.strides.iter().all(|&x| x % VEC == 0 || x == 1 || x == 0))
        };
        let rope_ok = self.program.instrs.iter().all(|i| match i.op {
            // A vector must not straddle the rotated/unrotated boundary or, for NeoX, the halves.
            Op::Rope {
                style: crate::ir::RopeStyle::Neox,
                rotary_dim,
                ..
            } => rotary_dim % (2 * VEC) == 0,
            Op::Rope { rotary_dim, .. } => rotary_dim % VEC == 0,
            _ => true,
        });
        let fits = last % VEC == 0
            && rope_ok
            && ok(&self.out, out_offset)
            && self.args.iter().zip(offsets).all(|(a, &o)| ok(a, o));
        if fits {
            VEC
        } else {
            1
        }
    }

    /// Whether the program reduces along rows (a norm): it then needs the row template.
    pub fn is_row(&self) -> bool {
        self.program.instrs.iter().any(|i| i.op.is_row_reduction())
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Everything that determines a kernel's source.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct KernelSpec {
    pub jobs: Vec<JobSpec>,
}

/// Threads per block of elementwise kernels.
pub const ELEMENTWISE_BLOCK: usize = 256;

/// The most blocks an elementwise job launches: one wave of an H100 (132 SMs × 8 blocks of 256
/// threads). Larger jobs loop (grid-stride), which keeps a quantizing kernel's amax down to one
/// atomic per block — thousands of same-address atomics would serialise in L2.
pub const MAX_JOB_BLOCKS: usize = 132 * 8;

/// Blocks of one elementwise job.
fn job_blocks(job: &JobSpec) -> usize {
    (job.numel() / job.vec)
        .div_ceil(ELEMENTWISE_BLOCK)
        .clamp(1, MAX_JOB_BLOCKS)
}

impl KernelSpec {
    pub fn is_elementwise(&self) -> bool {
        self.jobs.iter().all(|j| !j.is_row())
    }

    /// Blocks per job of an elementwise kernel.
    fn job_blocks(&self) -> Vec<usize> {
        self.jobs.iter().map(job_blocks).collect()
    }

    /// How a row kernel maps rows to threads. Each thread holds at most [`ROW_CHUNKS`] vectors
    /// of its row in registers: rows that fit in a warp that way get one warp each (8 rows per
    /// block; reductions are warp shuffles, with no block barrier); longer rows get a block of as
    /// many warps as that needs (up to 1024 threads), combining through shared memory. Holding
    /// more per thread costs occupancy: a warp holding a whole 2048-wide row (8 vectors a lane)
    /// took 111 registers a thread, 2 blocks per SM, and ran a norm at 1.3 TB/s.
    pub(crate) fn row_geometry(job: &JobSpec) -> RowGeometry {
        let vectors = job.shape.last().copied().unwrap_or(1) / job.vec;
        let rows = job.numel() / job.shape.last().copied().unwrap_or(1);
        if vectors <= 32 * ROW_CHUNKS {
            RowGeometry {
                lanes: 32,
                rows_per_block: 8,
                block: 256,
                chunks: vectors.div_ceil(32),
                grid: rows.div_ceil(8),
            }
        } else {
            let block = vectors.div_ceil(ROW_CHUNKS).next_multiple_of(32).min(1024);
            RowGeometry {
                lanes: block,
                rows_per_block: 1,
                block,
                chunks: vectors.div_ceil(block),
                grid: rows,
            }
        }
    }

    /// `(grid, block)` for a launch.
    pub fn launch(&self) -> (u32, u32) {
        if self.is_elementwise() {
            (
                self.job_blocks().iter().sum::<usize>() as u32,
                ELEMENTWISE_BLOCK as u32,
            )
        } else {
            let g = Self::row_geometry(&self.jobs[0]);
            (g.grid as u32, g.block as u32)
        }
    }
}

/// Vectors of its row each thread of a row kernel holds in registers (at most, until a row needs
/// more than 1024 threads).
pub const ROW_CHUNKS: usize = 4;

/// Threads and rows of a row kernel's launch.
pub(crate) struct RowGeometry {
    /// Threads per row.
    pub lanes: usize,
    pub rows_per_block: usize,
    pub block: usize,
    /// Vectors each thread holds.
    pub chunks: usize,
    pub grid: usize,
}

/// What a generated kernel computes: everything that determines its source, by kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Generated {
    /// Elementwise or row programs (`elementwise.cu.tera`, `row.cu.tera`).
    Fused(KernelSpec),
    /// A GEMM with a gated-linear-unit epilogue (`gated_gemm.cu.tera`).
    GatedGemm(GatedGemmSpec),
}

impl Generated {
    /// The fused kernel's spec (`None` for a gated GEMM).
    pub fn fused(&self) -> Option<&KernelSpec> {
        match self {
            Generated::Fused(spec) => Some(spec),
            Generated::GatedGemm(_) => None,
        }
    }

    /// The gated GEMM's spec (`None` for a fused kernel).
    pub fn gated_gemm(&self) -> Option<&GatedGemmSpec> {
        match self {
            Generated::GatedGemm(spec) => Some(spec),
            Generated::Fused(_) => None,
        }
    }
}

/// A generated kernel: its entry point, CUDA source and the graph nodes it implements.
#[derive(Clone, Debug, Serialize)]
pub struct Kernel {
    /// The `extern "C"` entry point, `<ops>_<content hash>` (`gated_gemm_<act>_<hash>`).
    pub name: String,
    /// Which template made it.
    pub template: &'static str,
    /// A comment naming the nodes it implements and its program: for people, not the compiler.
    pub header: String,
    /// The compilable source (without the header): what the JIT cache keys on.
    pub body: String,
    pub spec: Generated,
    pub nodes: Vec<String>,
}

impl Kernel {
    /// The full `.cu` file: header comment and body.
    pub fn source(&self) -> String {
        format!("{}\n{}", self.header, self.body)
    }

    /// Whether GPUs of NVRTC target `arch` run the kernel: fused kernels on any, gated GEMMs on
    /// Hopper alone ([`gated_gemm::runs_on`]).
    pub fn runs_on(&self, arch: &str) -> bool {
        match self.spec {
            Generated::Fused(_) => true,
            Generated::GatedGemm(_) => gated_gemm::runs_on(arch),
        }
    }
}

/// The first lines of every generated kernel's header comment: its name, the template that made
/// it and the graph nodes it implements, wrapped at 100 columns. Ends without a newline.
fn header(name: &str, template: &str, nodes: &[String]) -> String {
    let mut header = format!("// lancet generated kernel {name} (template {template})\n");
    let mut line = String::from("// implements:");
    for (i, node) in nodes.iter().enumerate() {
        let item = format!(" {node}{}", if i + 1 < nodes.len() { "," } else { "" });
        if line.len() + item.len() > 100 {
            header.push_str(&line);
            header.push('\n');
            line = String::from("//  ");
        }
        line.push_str(&item);
    }
    header.push_str(&line);
    header
}

/// Generates the source of kernel `spec`, which implements graph `nodes`.
pub fn generate(spec: Generated, nodes: Vec<String>) -> Kernel {
    match spec {
        Generated::Fused(spec) => emit::kernel(spec, nodes),
        Generated::GatedGemm(spec) => gated_gemm::generate(spec, nodes),
    }
}
