//! Hugging Face Llama checkpoints: a directory with `config.json` and `model.safetensors` (or
//! shards listed by `model.safetensors.index.json`), read into a [`LlamaConfig`] and the
//! parameters of the graph it builds; plus safetensors files of inputs and outputs.
//!
//! lancet's graph packs Q, K and V into one projection and gate and up into another (one GEMM
//! each); Hugging Face stores them apart, so those weights are concatenated at load. Every
//! `*.weight` param must come from the checkpoint, with its shape checked; FP8 scales are the
//! only params a checkpoint does not provide (weight scales are computed at load, activation
//! scales calibrated).

mod config;
mod error;
mod tensors;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use config::HfLlamaConfig;
pub use error::CheckpointError;
pub use tensors::{check_writable, read_all, write_f32, TensorFile};

use crate::ir::{DType, Graph, Init, Node};
use crate::models::{LlamaConfig, MlpKind, NormKind, Precision};
use crate::reference::Bindings;
use crate::weights::bind_params;

/// A checkpoint tensor that is part of a lancet weight: its file, its name there, and the rows it
/// contributes when it is one of several.
type Located<'a> = (&'a TensorFile, String, Option<usize>);

/// An open checkpoint directory.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: HfLlamaConfig,
    files: Vec<TensorFile>,
    /// Tensor name → index in `files`.
    index: HashMap<String, usize>,
}

const SINGLE: &str = "model.safetensors";
const SHARD_INDEX: &str = "model.safetensors.index.json";

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        if !dir.is_dir() {
            let (kind, what) = if dir.exists() {
                (
                    std::io::ErrorKind::NotADirectory,
                    "not a directory (a checkpoint is a folder)",
                )
            } else {
                (std::io::ErrorKind::NotFound, "no such directory")
            };
            return Err(CheckpointError::io(dir, std::io::Error::new(kind, what)));
        }
        let config = HfLlamaConfig::load(&config::config_path(dir))?;
        let files = if dir.join(SINGLE).exists() {
            vec![TensorFile::open(&dir.join(SINGLE))?]
        } else if dir.join(SHARD_INDEX).exists() {
            shards(dir)?
        } else {
            return Err(CheckpointError::io(
                dir.join(SINGLE),
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no {SINGLE} and no {SHARD_INDEX} in the checkpoint directory"),
                ),
            ));
        };
        let mut index = HashMap::new();
        for (i, file) in files.iter().enumerate() {
            for name in file.names() {
                // Two shards holding one name would make the weight depend on file order.
                if let Some(first) = index.insert(name.clone(), i) {
                    return Err(CheckpointError::Value {
                        path: file.path().to_path_buf(),
                        tensor: name,
                        message: format!("is also in {}", files[first].path().display()),
                    });
                }
            }
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            config,
            files,
            index,
        })
    }

    /// The decoder this checkpoint describes, on `batch × seq` tokens: all its layers or the
    /// first `layers`; from token ids through the embedding when `embed`, otherwise from hidden
    /// states; always ending with the final norm, as Hugging Face's `LlamaModel` does.
    pub fn llama(
        &self,
        layers: Option<usize>,
        [batch, seq]: [usize; 2],
        embed: bool,
        precision: Precision,
        dtype: DType,
    ) -> Result<LlamaConfig, CheckpointError> {
        let c = &self.config;
        let layers = layers.unwrap_or(c.layers);
        if layers == 0 || layers > c.layers {
            return Err(CheckpointError::field(
                config::config_path(&self.dir),
                "num_hidden_layers",
                format!("the checkpoint has {} layers; {layers} were asked for", c.layers),
            ));
        }
        Ok(LlamaConfig {
            hidden: c.hidden,
            ffn: c.ffn,
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
            layers,
            rope_theta: c.rope_theta,
            rope_style: crate::ir::RopeStyle::Neox,
            rope_scaling: c.rope_scaling,
            rotary_dim: c.head_dim,
            norm: NormKind::Rms,
            norm_eps: c.norm_eps,
            mlp: MlpKind::Swiglu,
            precision,
            // The caller opts into FP8 attention: it depends on the cuDNN at hand.
            attention: crate::models::AttentionPrecision::Bf16,
            dtype,
            batch,
            seq,
            vocab: embed.then_some(c.vocab),
            final_norm: true,
        })
    }

    /// Values for every param of `graph` (built by [`Checkpoint::llama`]): weights from the
    /// checkpoint, FP8 weights quantized, activation scales at their defaults.
    pub fn params(&self, graph: &Graph) -> Result<Bindings, CheckpointError> {
        bind_params(graph, |node, init| {
            if node.name.ends_with(".weight") {
                return self.weight(node);
            }
            match init {
                Init::Const { value } => Ok(vec![value.get(); node.ty.numel()]),
                _ => Err(CheckpointError::MissingTensor {
                    path: self.dir.clone(),
                    tensor: node.name.clone(),
                    needed_for: "a param that is neither a weight nor a scale".into(),
                }),
            }
        })
    }

    /// The checkpoint tensors that make up lancet's weight `node`, each `(name, rows)` (`None`:
    /// the whole tensor is the weight).
    fn sources(&self, name: &str) -> Vec<(String, Option<usize>)> {
        let c = &self.config;
        if let Some(prefix) = name.strip_suffix("self_attn.qkv_proj.weight") {
            let (q, kv) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
            return [("q_proj", q), ("k_proj", kv), ("v_proj", kv)]
                .map(|(p, rows)| (format!("{prefix}self_attn.{p}.weight"), Some(rows)))
                .into();
        }
        if let Some(prefix) = name.strip_suffix("mlp.gate_up_proj.weight") {
            return ["gate_proj", "up_proj"]
                .map(|p| (format!("{prefix}mlp.{p}.weight"), Some(c.ffn)))
                .into();
        }
        vec![(name.to_string(), None)]
    }

    /// Whether the checkpoint holds the tensor `name` (with or without the `model.` prefix).
    pub fn has(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    /// A tensor by its Hugging Face name, with or without `LlamaForCausalLM`'s `model.` prefix.
    fn find(&self, name: &str) -> Option<(&TensorFile, String)> {
        [name.to_string(), format!("model.{name}")]
            .into_iter()
            .find_map(|n| self.index.get(&n).map(|&i| (&self.files[i], n)))
    }

    /// Checks, from the files' headers alone, that every weight of `graph` is in the checkpoint
    /// with the right shape and a float dtype: bad checkpoints fail before any work starts.
    pub fn check(&self, graph: &Graph) -> Result<(), CheckpointError> {
        for id in graph.params() {
            let node = graph.node(id);
            if node.name.ends_with(".weight") {
                self.parts(node)?;
            }
        }
        Ok(())
    }

    /// The checkpoint tensors that make up lancet's weight `node`, each found, float and of the
    /// right shape (checked on the header; nothing is read).
    fn parts(&self, node: &Node) -> Result<Vec<(&TensorFile, String)>, CheckpointError> {
        let want = node.ty.shape.dims();
        self.located(&node.name, &node.ty.to_string())?
            .into_iter()
            .map(|(file, found, rows)| {
                let shape = &file.info(&found).expect("indexed tensors exist").shape;
                let expected = match rows {
                    Some(rows) => vec![rows, want[1]],
                    None => want.to_vec(),
                };
                if shape != &expected {
                    return Err(CheckpointError::Shape {
                        path: file.path().to_path_buf(),
                        tensor: found,
                        found: shape.clone(),
                        expected: format!("{expected:?} (for lancet's {} {})", node.name, node.ty),
                    });
                }
                Ok((file, found))
            })
            .collect()
    }

    /// The float tensors that make up lancet's weight `name` (`what` describes it in errors),
    /// each with its file, its name there and the rows it contributes when it is one of several.
    fn located(&self, name: &str, what: &str) -> Result<Vec<Located<'_>>, CheckpointError> {
        self.sources(name)
            .into_iter()
            .map(|(source, rows)| {
                let (file, found) = self.find(&source).ok_or_else(|| CheckpointError::MissingTensor {
                    path: self.dir.clone(),
                    tensor: source.clone(),
                    needed_for: format!("lancet's {name} {what}"),
                })?;
                file.require_float(&found)?;
                Ok((file, found, rows))
            })
            .collect()
    }

    /// The tensors that make up lancet's weight `name`, in order, as their raw little-endian
    /// bytes and dtype (bf16, f16 or f32): what a loader converts on the device. Call
    /// [`Checkpoint::check`] first: this finds the tensors, it does not check their shapes.
    pub fn raw_parts(&self, name: &str) -> Result<Vec<(DType, &[u8])>, CheckpointError> {
        self.located(name, "")?
            .into_iter()
            .map(|(file, found, _)| Ok(file.raw(&found).expect("a float tensor")))
            .collect()
    }

    fn weight(&self, node: &Node) -> Result<Vec<f32>, CheckpointError> {
        let mut data = Vec::with_capacity(node.ty.numel());
        for (file, name) in self.parts(node)? {
            data.extend_from_slice(&file.read(&name)?.expect("indexed tensors exist").data);
        }
        Ok(data)
    }
}

/// The files of a sharded checkpoint, as its index lists them.
fn shards(dir: &Path) -> Result<Vec<TensorFile>, CheckpointError> {
    let path = dir.join(SHARD_INDEX);
    let text = std::fs::read_to_string(&path).map_err(|e| CheckpointError::io(&path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|error| CheckpointError::Json {
        path: path.clone(),
        error,
    })?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| CheckpointError::field(&path, "weight_map", "missing or not an object"))?;
    let mut names: Vec<&str> = Vec::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .filter(|f| !f.contains(['/', '\\']))
            .ok_or_else(|| {
                CheckpointError::field(
                    &path,
                    &format!("weight_map.{tensor}"),
                    "not a file name in the directory",
                )
            })?;
        if !names.contains(&file) {
            names.push(file);
        }
    }
    names.sort_unstable();
    let files = names
        .iter()
        .map(|f| TensorFile::open(&dir.join(f)))
        .collect::<Result<Vec<_>, _>>()?;
    for (tensor, file) in map {
        let i = names
            .binary_search(&file.as_str().expect("checked"))
            .expect("listed");
        if files[i].info(tensor).is_none() {
            return Err(CheckpointError::MissingTensor {
                path: files[i].path().to_path_buf(),
                tensor: tensor.clone(),
                needed_for: format!("listed in {SHARD_INDEX}"),
            });
        }
    }
    Ok(files)
}
