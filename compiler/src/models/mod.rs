//! Graph builders for model families.

pub mod llama;

pub use llama::{AttentionPrecision, LlamaConfig, MlpKind, NormKind, Precision, PRESETS};
