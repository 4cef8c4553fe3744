//! lancet's runtime: everything that touches the GPU.
//!
//! - [`device`]: opening a CUDA device and its stream, and detecting whether there is one;
//! - [`cublaslt`]: FP8 and bf16 GEMMs (fused residual) through cuBLASLt, autotuned per shape,
//!   with the choices kept on disk;
//! - [`cudnn`]: a safe wrapper over cuDNN's backend (graph) API, and its on-disk plan store;
//! - [`attention`]: fused flash-attention forward through cuDNN, with plans cached per shape;
//! - [`exec`]: a plan on the device — buffers, weights, launches, CUDA-graph replay;
//! - [`jit`]: NVRTC compilation of generated kernels to cubins, with a disk cache;
//! - [`cache_dir`]: where lancet keeps compiled artifacts between processes.
//!
//! Every CUDA library is loaded at run time through `cudarc`, so this crate builds, and its CPU
//! tests run, on machines without CUDA. Nothing here panics on a missing library or a rejected
//! graph: every failure is an [`Error`] that names what failed and the library version found.

pub mod attention;
pub mod cache_dir;
pub mod cublaslt;
pub mod cudnn;
pub mod device;
mod error;
pub mod exec;
pub mod jit;
mod native;

pub use cudarc;
pub use error::{Error, Result};
pub use lancet_compiler as compiler;
