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
        let raw: Raw = parse_fields(text, path)?;
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
        for (name, value) in [
            ("hidden_size", raw.hidden_size),
            ("intermediate_size", raw.intermediate_size),
            ("num_hidden_layers", raw.num_hidden_layers),
            ("num_attention_heads", raw.num_attention_heads),
            ("num_key_value_heads", raw.num_key_value_heads.unwrap_or(1)),
            ("head_dim", raw.head_dim.unwrap_or(2)),
            ("vocab_size", raw.vocab_size),
        ] {
            if value == 0 {
                return Err(field(name, "must be at least 1".into()));
            }
        }
        let heads = raw.num_attention_heads;
        let kv_heads = raw.num_key_value_heads.unwrap_or(heads);
        if heads % kv_heads != 0 {
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
        let norm_eps = raw.rms_norm_eps.unwrap_or(1e-6);
        if !(norm_eps > 0.0 && norm_eps.is_finite()) {
            return Err(field(
                "rms_norm_eps",
                format!("{norm_eps} is not a positive number"),
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
            norm_eps,
            rope_theta,
            rope_scaling,
        })
    }
}

/// The raw fields, with a missing or mistyped one named by its path in the file.
fn parse_fields(text: &str, path: &Path) -> Result<Raw, CheckpointError> {
    let mut json = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data if field != "." => {
                CheckpointError::field(path, &field, inner.to_string())
            }
            // A missing field is reported at its parent (the top level): its name is in the text.
            serde_json::error::Category::Data => {
                let message = inner.to_string();
                let name = message.split('`').nth(1).unwrap_or("?").to_string();
                CheckpointError::field(path, &name, message)
            }
            _ => CheckpointError::Json {
                path: path.to_path_buf(),
                error: inner,
            },
        }
    })
}

/// RoPE's base and scaling, from `rope_parameters` (transformers 5) or from `rope_theta` and
/// `rope_scaling` (transformers 4). Anything not understood exactly is an error, not plain RoPE.
fn rope(raw: &Raw, path: &Path) -> Result<(f32, Option<RopeScaling>), CheckpointError> {
    let err = |field: &str, message: &str| CheckpointError::field(path, field, message);
    let (params, name) = match (&raw.rope_parameters, &raw.rope_scaling) {
        (Some(p), None | Some(Value::Null)) => (Some(p), "rope_parameters"),
        (Some(p), Some(s)) if rope_type(s) == rope_type(p) => (Some(p), "rope_parameters"),
        (Some(_), Some(_)) => {
            return Err(err(
                "rope_scaling",
                "disagrees with rope_parameters on the RoPE type",
            ))
        }
        (None, Some(Value::Null)) | (None, None) => (None, "rope_scaling"),
        (None, Some(s)) => (Some(s), "rope_scaling"),
    };
    if let Some(p) = params {
        if !p.is_object() || p.as_object().is_some_and(|o| o.values().any(Value::is_object)) {
            return Err(err(
                name,
                "expected one object of RoPE settings (per-layer-type settings are not supported)",
            ));
        }
    }
    let number = |key: &str| -> Result<Option<f64>, CheckpointError> {
        match params.and_then(|p| p.get(key)) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| err(&format!("{name}.{key}"), &format!("{v} is not a number"))),
        }
    };
    let theta = number("rope_theta")?
        .map(|t| t as f32)
        .or(raw.rope_theta)
        .unwrap_or(10_000.0);
    if !(theta > 0.0 && theta.is_finite()) {
        return Err(err("rope_theta", &format!("{theta} is not a positive number")));
    }
    let kind = match params.map(rope_type) {
        None => "default".to_string(),
        Some(Ok(Some(kind))) => kind,
        Some(Ok(None)) if params.is_some_and(|p| p.get("factor").is_some()) => {
            return Err(err(name, "has scaling settings but no rope_type"))
        }
        Some(Ok(None)) => "default".to_string(),
        Some(Err(())) => return Err(err(&format!("{name}.rope_type"), "is not a string")),
    };
    let scaling = match kind.as_str() {
        "default" => None,
        "llama3" => {
            let required = |key: &str| -> Result<f64, CheckpointError> {
                let value = number(key)?.ok_or_else(|| err(&format!("{name}.{key}"), "missing"))?;
                if !(value > 0.0 && value.is_finite()) {
                    return Err(err(
                        &format!("{name}.{key}"),
                        &format!("{value} is not a positive number"),
                    ));
                }
                Ok(value)
            };
            let context = required("original_max_position_embeddings")?;
            if context.fract() != 0.0 {
                return Err(err(
                    &format!("{name}.original_max_position_embeddings"),
                    &format!("{context} is not a whole number of positions"),
                ));
            }
            let scaling = RopeScaling {
                factor: Float(required("factor")? as f32),
                low_freq_factor: Float(required("low_freq_factor")? as f32),
                high_freq_factor: Float(required("high_freq_factor")? as f32),
                original_context: context as usize,
            };
            if scaling.high_freq_factor.get() <= scaling.low_freq_factor.get() {
                return Err(err(
                    name,
                    "llama3 scaling needs high_freq_factor > low_freq_factor",
                ));
            }
            Some(scaling)
        }
        other => {
            return Err(err(
                &format!("{name}.rope_type"),
                &format!("\"{other}\" is not supported (\"default\" or \"llama3\")"),
            ))
        }
    };
    Ok((theta, scaling))
}

/// The RoPE type a settings object names (`rope_type`, or `type` in older configs): `Ok(None)`
/// when it names none, `Err` when the value is not a string.
fn rope_type(settings: &Value) -> Result<Option<String>, ()> {
    match settings.get("rope_type").or_else(|| settings.get("type")) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(kind)) => Ok(Some(kind.clone())),
        Some(_) => Err(()),
    }
}

/// `dir/config.json`.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("config.json")
}
