//! Graph builders for model families.

pub mod llama;

pub use llama::{LlamaConfig, MlpKind, NormKind, Precision, PRESETS};
