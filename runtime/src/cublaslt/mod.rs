//! FP8 and bf16 GEMMs through cuBLASLt, tuned per shape.
//!
//! lancet's linear layers are `out[M, N] = (x[M, K] · w[N, K]ᵀ) · x_scale · w_scale
//! (+ residual[M, N])`: e4m3 × e4m3 → bf16 with per-tensor f32 scales read from device memory
//! (fast accumulation on by default), or bf16 × bf16 → bf16; the residual add is fused into the
//! GEMM's epilogue (C = residual, β = 1). `matmul.rs` explains the mapping of these row-major
//! tensors onto cuBLASLt's column-major "TN" form, [`GemmSpec`] the shape and alignment rules.
//!
//! ```text
//! let gemms = Gemms::new(&device)?;                     // handle + 32 MiB workspace, once
//! let plan = gemms.get(&GemmSpec::fp8(4096, 3072, 2048))?;  // tuned once, cached in memory and on disk
//! println!("{:?} in {:?}: {}", plan.tuning().source, plan.tuning().elapsed, plan.config());
//! unsafe { plan.launch(device.stream(), &GemmPointers { x, w, scales: Some(ScalePointers { x: xs, w: ws }),
//!                                                       residual: None, out }) }?;
//! ```
//!
//! - [`Library`]: the process's cuBLASLt, loaded at run time and version-checked;
//! - [`GemmSpec`], [`Precision`]: what a GEMM computes, validated before cuBLASLt sees it;
//! - [`Gemms`]: the handle, the shared workspace and the plans, tuned by timing the heuristic's
//!   top candidates ([`TuneOptions`], [`Tuning`]);
//! - [`GemmPlan`]: launch on raw addresses ([`GemmPointers`]) or on cudarc buffers;
//! - [`AlgoStore`]: tuned choices on disk, keyed and checked so a stale entry is never used.

mod algo;
mod descriptor;
mod error;
mod gemms;
mod handle;
mod library;
mod matmul;
mod plan;
mod spec;
mod store;
mod tune;

pub use algo::{Algo, AlgoConfig};
pub use error::{CublasLtError, Status, Version};
pub use gemms::Gemms;
pub use handle::DEFAULT_WORKSPACE_BYTES;
pub use library::Library;
pub use plan::{GemmElement, GemmPlan, GemmPointers, Residual, ScalePointers};
pub use spec::{GemmSpec, Precision, OPERAND_ALIGNMENT, SCALE_ALIGNMENT};
pub use store::{AlgoKey, AlgoLookup, AlgoStore, StoredAlgo};
pub use tune::{Candidate, TuneOptions, TuneSource, Tuning};
