//! lancet: a kernel-fusion JIT compiler for transformer forward passes.
//!
//! This facade re-exports the two halves — [`compiler`] (pure Rust: IR, rewrites, lowering,
//! codegen, reference interpreter) and [`runtime`] (CUDA: NVRTC, cuBLASLt, cuDNN, execution) —
//! and holds the [`pipeline`] that runs them in order.

pub mod pipeline;
pub mod session;

pub use lancet_compiler as compiler;
pub use lancet_runtime as runtime;
