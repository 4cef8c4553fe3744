//! A Hugging Face Llama `config.json`, read into the fields lancet's Llama builder needs.
//!
//! Two generations of the format are accepted: `rope_theta` + `rope_scaling` (transformers 4)
//! and `rope_parameters` (transformers 5). Anything the builder cannot express exactly (biases,
//! another activation, another RoPE scaling) is refused with the field's name rather than run
//! as a slightly different model.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::CheckpointError;
use crate::ir::{Float, RopeScaling};

/// The architecture-defining fields of a Llama checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct HfLlamaConfig {
    pub hidden: usize,
    pub ffn: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: Option<RopeScaling>,
}

/// The raw fields, as transformers writes them.
#[derive(Deserialize)]
struct Raw {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    rms_norm_eps: Option<f32>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    rope_theta: Option<f32>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
}

impl HfLlamaConfig {
    /// Reads and checks `path` (a `config.json`).
    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        let text = std::fs::read_to_string(path).map_err(|e| CheckpointError::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses the text of a `config.json`; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, CheckpointError> {
        let raw: Raw = serde_json::from_str(text).map_err(|source| CheckpointError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let field = |name: &str, message: String| CheckpointError::field(path, name, message);
        let is_llama = match raw.model_type.as_deref() {
            Some(kind) => kind == "llama",
            None => raw.architectures.iter().flatten().any(|a| a.starts_with("Llama")),
        };
        if !is_llama {
            return Err(field(
                "model_type",
                format!(
                    "{:?} (architectures {:?}) is not a Llama model; lancet reads model_type \"llama\"",
                    raw.model_type.unwrap_or_default(),
                    raw.architectures.unwrap_or_default()
                ),
            ));
        }
        if let Some(act) = raw.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(field(
                "hidden_act",
                format!("\"{act}\" is not supported (only \"silu\")"),
            ));
        }
        for (name, bias) in [("attention_bias", raw.attention_bias), ("mlp_bias", raw.mlp_bias)] {
            if bias == Some(true) {
                return Err(field(name, "biased projections are not supported".into()));
            }
        }
        let heads = raw.num_attention_heads;
        let kv_heads = raw.num_key_value_heads.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
            return Err(field(
                "num_key_value_heads",
                format!("{kv_heads} does not divide num_attention_heads {heads}"),
            ));
        }
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None if raw.hidden_size % heads == 0 => raw.hidden_size / heads,
            None => {
                return Err(field(
                    "hidden_size",
                    format!(
                        "{} is not a multiple of num_attention_heads {heads}",
                        raw.hidden_size
                    ),
                ))
            }
        };
        if head_dim % 2 != 0 {
            return Err(field(
                "head_dim",
                format!("{head_dim} is odd; RoPE rotates pairs"),
            ));
        }
        let (rope_theta, rope_scaling) = rope(&raw, path)?;
        Ok(HfLlamaConfig {
            hidden: raw.hidden_size,
            ffn: raw.intermediate_size,
            layers: raw.num_hidden_layers,
            heads,
            kv_heads,
            head_dim,
            vocab: raw.vocab_size,
            norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
        })
    }
}

/// RoPE's base and scaling, from `rope_parameters` or from `rope_theta` and `rope_scaling`.
fn rope(raw: &Raw, path: &Path) -> Result<(f32, Option<RopeScaling>), CheckpointError> {
    let (params, name) = match (&raw.rope_parameters, &raw.rope_scaling) {
        (Some(p), _) => (Some(p), "rope_parameters"),
        (None, Some(Value::Null)) | (None, None) => (None, "rope_scaling"),
        (None, Some(s)) => (Some(s), "rope_scaling"),
    };
    let number = |key: &str| -> Result<Option<f32>, CheckpointError> {
        match params.and_then(|p| p.get(key)) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(|x| Some(x as f32)).ok_or_else(|| {
                CheckpointError::field(path, &format!("{name}.{key}"), format!("{v} is not a number"))
            }),
        }
    };
    let theta = number("rope_theta")?.or(raw.rope_theta).unwrap_or(10_000.0);
    let kind = params
        .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let scaling = match kind {
        "default" => None,
        "llama3" => {
            let required = |key: &str| {
                number(key)?.ok_or_else(|| CheckpointError::field(path, &format!("{name}.{key}"), "missing"))
            };
            let context = required("original_max_position_embeddings")?;
            let scaling = RopeScaling {
                factor: Float(required("factor")?),
                low_freq_factor: Float(required("low_freq_factor")?),
                high_freq_factor: Float(required("high_freq_factor")?),
                original_context: context as usize,
            };
            if scaling.high_freq_factor.get() <= scaling.low_freq_factor.get() || context < 1.0 {
                return Err(CheckpointError::field(
                    path,
                    name,
                    "llama3 scaling needs high_freq_factor > low_freq_factor and a positive original context",
                ));
            }
            Some(scaling)
        }
        other => {
            return Err(CheckpointError::field(
                path,
                &format!("{name}.rope_type"),
                format!("\"{other}\" is not supported (\"default\" or \"llama3\")"),
            ))
        }
    };
    Ok((theta, scaling))
}

/// `dir/config.json`.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("config.json")
}
