//! lancet's compiler: everything from a model graph to generated CUDA source, with no GPU code.
//!
//! - [`ir`]: the typed graph IR, its builder, JSON format and DOT rendering;
//! - [`reference`]: the CPU reference interpreter, the oracle for every later stage;
//! - [`models`]: graph builders for decoder transformers (Llama and its presets);
//! - [`weights`]: binding parameters (FP8 quantization at load), deterministic random ones;
//! - [`checkpoint`]: Hugging Face Llama checkpoints and safetensors inputs and outputs;
//! - [`summary`]: parameter, FLOP and byte counts of a graph.

pub mod checkpoint;
pub mod codegen;
pub mod ir;
pub mod lower;
pub mod models;
pub mod reference;
pub mod rewrite;
pub mod summary;
pub mod weights;
