//! Choosing a model on the command line: a preset with overrides, a Hugging Face checkpoint
//! directory, or a graph file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args, ValueEnum};
use lancet::session::Data;
use lancet_compiler::checkpoint::{Checkpoint, TensorFile};
use lancet_compiler::ir::{json, DType, Graph};
use lancet_compiler::models::{AttentionPrecision, LlamaConfig, Precision, PRESETS};
use lancet_compiler::reference::Bindings;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PrecisionArg {
    Fp8,
    Bf16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AttentionArg {
    Fp8,
    Bf16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    Bf16,
    F32,
}

/// Where the model will run, which sets the defaults: bf16 activations and FP8 linears on the
/// GPU; f32 throughout on the CPU, whose reference interpreter is the accuracy oracle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Gpu,
    Cpu,
}

/// A model: `--preset NAME` with optional overrides, `--model DIR` (a Hugging Face Llama
/// checkpoint), or a graph JSON file.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("source").args(["preset", "model"])))]
pub struct ModelArgs {
    /// A graph JSON file (as written by `lancet graph --json`).
    #[arg(value_name = "FILE.json", conflicts_with = "source")]
    pub file: Option<PathBuf>,
    /// A built-in model: llama-3.2-1b, seed-te or tiny.
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// A Hugging Face Llama checkpoint directory: config.json and model.safetensors (or shards
    /// listed in model.safetensors.index.json), bf16/f16/f32.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Inputs for --model: a safetensors file with `input_ids` [batch, seq] or `hidden_states`
    /// [batch, seq, hidden]; its shape sets batch and sequence (default: random token ids, or
    /// random hidden states when the checkpoint has no embedding).
    #[arg(long, value_name = "FILE", requires = "model")]
    pub input: Option<PathBuf>,
    /// Decoder layers (default: all of the preset's or checkpoint's).
    #[arg(long, requires = "source")]
    pub layers: Option<usize>,
    /// Sequences per forward pass (default: the preset's; 1 for --model).
    #[arg(long, requires = "source", conflicts_with = "input")]
    pub batch: Option<usize>,
    /// Tokens per sequence (default: the preset's; 128 for --model).
    #[arg(long, requires = "source", conflicts_with = "input")]
    pub seq: Option<usize>,
    /// Precision of the linears (default: fp8 on the GPU; the CPU runs without FP8).
    #[arg(long, value_enum, requires = "source")]
    pub precision: Option<PrecisionArg>,
    /// Precision of attention with FP8 linears (default: fp8, unless the cuDNN found is one
    /// known to compute FP8 attention wrongly; then bf16, with a note).
    #[arg(long, value_enum, requires = "source")]
    pub attention: Option<AttentionArg>,
    /// Activation dtype (default: bf16 on the GPU, f32 on the CPU).
    #[arg(long, value_enum, requires = "source")]
    pub dtype: Option<DTypeArg>,
    /// Build a full model with a token embedding of this many rows and a final norm, instead
    /// of the bare layer stack on hidden states.
    #[arg(long, requires = "preset")]
    pub vocab: Option<usize>,
}

/// What the user asked for: the graph, a one-line description, and where its parameters and
/// inputs come from.
pub struct Model {
    pub graph: Graph,
    pub title: String,
    pub data: Data,
}

impl ModelArgs {
    /// The preset's config with the command line's overrides applied.
    pub fn config(&self, target: Target) -> Result<Option<LlamaConfig>> {
        let Some(name) = &self.preset else {
            return Ok(None);
        };
        let Some(mut config) = LlamaConfig::preset(name) else {
            bail!("unknown preset '{name}' (known: {})", PRESETS.join(", "));
        };
        self.check_sizes()?;
        config.layers = self.layers.unwrap_or(config.layers);
        config.batch = self.batch.unwrap_or(config.batch);
        config.seq = self.seq.unwrap_or(config.seq);
        if self.vocab.is_some() {
            // A full model: embedding in, final norm out.
            config.vocab = self.vocab;
            config.final_norm = true;
        }
        let precision = self.precision(target)?.unwrap_or(config.precision);
        config = config.with_precision(precision);
        config.attention = self.attention(precision)?;
        config.dtype = self.dtype(target);
        Ok(Some(config))
    }

    fn check_sizes(&self) -> Result<()> {
        for (what, value) in [
            ("--layers", self.layers),
            ("--batch", self.batch),
            ("--seq", self.seq),
            ("--vocab", self.vocab),
        ] {
            if value == Some(0) {
                bail!("{what} must be at least 1");
            }
        }
        Ok(())
    }

    /// The asked precision; FP8 needs activation scales calibrated on the GPU, so the CPU runs
    /// without it.
    fn precision(&self, target: Target) -> Result<Option<Precision>> {
        Ok(match (self.precision, target) {
            (Some(PrecisionArg::Fp8), Target::Cpu) => {
                bail!("--precision fp8 needs the GPU (its activation scales are calibrated there); the CPU path runs without FP8")
            }
            (Some(PrecisionArg::Fp8), Target::Gpu) => Some(Precision::Fp8),
            (Some(PrecisionArg::Bf16), _) | (None, Target::Cpu) => Some(Precision::Bf16),
            (None, Target::Gpu) => None,
        })
    }

    /// The asked attention precision, or the default for `precision` and the cuDNN at hand.
    fn attention(&self, precision: Precision) -> Result<AttentionPrecision> {
        Ok(match (self.attention, precision) {
            (Some(AttentionArg::Fp8), Precision::Bf16) => {
                bail!("--attention fp8 needs --precision fp8: FP8 attention hands the output projection an FP8 input")
            }
            (Some(AttentionArg::Fp8), Precision::Fp8) => AttentionPrecision::Fp8,
            (Some(AttentionArg::Bf16), _) | (None, Precision::Bf16) => AttentionPrecision::Bf16,
            (None, Precision::Fp8) => match lancet_runtime::attention::fp8_attention_blocker() {
                None => AttentionPrecision::Fp8,
                Some(why) => {
                    eprintln!("lancet: note: bf16 attention: {why}");
                    AttentionPrecision::Bf16
                }
            },
        })
    }

    fn dtype(&self, target: Target) -> DType {
        match (self.dtype, target) {
            (Some(DTypeArg::F32), _) | (None, Target::Cpu) => DType::F32,
            (Some(DTypeArg::Bf16), _) | (None, Target::Gpu) => DType::BF16,
        }
    }

    pub fn load(&self, target: Target) -> Result<Model> {
        if let Some(config) = self.config(target)? {
            let name = self.preset.as_deref().unwrap_or_default();
            let graph = config
                .build()
                .with_context(|| format!("building preset '{name}'"))?;
            let title = format!("{name} · {}", describe(&config));
            return Ok(Model {
                graph,
                title,
                data: Data::default(),
            });
        }
        if let Some(dir) = &self.model {
            return self.checkpoint(dir, target);
        }
        match &self.file {
            Some(path) => Ok(Model {
                graph: json::load(path)?,
                title: path.display().to_string(),
                data: Data::default(),
            }),
            None => bail!("name a model: --preset NAME, --model DIR or a graph FILE.json"),
        }
    }

    /// A checkpoint directory, with its inputs when given.
    fn checkpoint(&self, dir: &std::path::Path, target: Target) -> Result<Model> {
        self.check_sizes()?;
        let checkpoint = Checkpoint::open(dir)?;
        let inputs = match self.input.as_deref() {
            Some(path) => {
                let file = TensorFile::open(path)?;
                Some((file.read_all()?, file))
            }
            None => None,
        };
        let (embed, batch_seq) = match &inputs {
            Some((inputs, file)) => input_shape(inputs, file, checkpoint.config.hidden)?,
            // Random token ids, or random hidden states for a checkpoint without an embedding.
            None => (
                checkpoint.has("embed_tokens.weight"),
                [self.batch.unwrap_or(1), self.seq.unwrap_or(128)],
            ),
        };
        let precision = self.precision(target)?.unwrap_or(Precision::Fp8);
        let mut config = checkpoint.llama(self.layers, batch_seq, embed, precision, self.dtype(target))?;
        config.attention = self.attention(precision)?;
        let graph = config.build().context("building the checkpoint's graph")?;
        if let Some((inputs, file)) = &inputs {
            check_ids(inputs, file.path(), config.vocab)?;
        }
        let title = format!("{} · {}", dir.display(), describe(&config));
        Ok(Model {
            graph,
            title,
            data: Data {
                checkpoint: Some(Arc::new(checkpoint)),
                inputs: inputs.map(|(i, _)| i.into_iter().collect()),
            },
        })
    }
}

/// Layers, tokens and precision, for titles.
fn describe(c: &LlamaConfig) -> String {
    let precision = match (c.precision, c.attention) {
        (Precision::Fp8, AttentionPrecision::Fp8) => "fp8".to_string(),
        (Precision::Fp8, AttentionPrecision::Bf16) => "fp8 (bf16 attention)".to_string(),
        (Precision::Bf16, _) => c.dtype.to_string(),
    };
    format!(
        "{} layers · batch {} · seq {} · {precision}{}",
        c.layers,
        c.batch,
        c.seq,
        c.vocab.map(|v| format!(" · vocab {v}")).unwrap_or_default()
    )
}

/// Whether an input file holds token ids (true) or hidden states, and its `[batch, seq]`.
fn input_shape(inputs: &Bindings, file: &TensorFile, hidden: usize) -> Result<(bool, [usize; 2])> {
    let path = file.path().display();
    let names: Vec<&String> = inputs.keys().collect();
    if inputs.len() != 1 {
        bail!("{path}: expected one tensor, `input_ids` or `hidden_states`; found {names:?}");
    }
    let (name, array) = inputs.iter().next().expect("one");
    let dims = array.shape.dims();
    let dtype = file
        .info(name)
        .map(|i| format!("{:?}", i.dtype))
        .unwrap_or_default();
    let integer = matches!(dtype.as_str(), "I32" | "I64");
    let (embed, batch_seq) = match (name.as_str(), dims) {
        ("input_ids", &[b, s]) if integer => (true, [b, s]),
        ("hidden_states", &[b, s, h]) if h == hidden && !integer => (false, [b, s]),
        ("input_ids", _) | ("hidden_states", _) => bail!(
            "{path}: tensor '{name}' is {dtype} {dims:?}; expected input_ids as i32/i64 [batch, seq] \
             or hidden_states as floats [batch, seq, {hidden}]"
        ),
        _ => bail!("{path}: tensor '{name}' is not an input of the model (input_ids or hidden_states)"),
    };
    if batch_seq.contains(&0) {
        bail!("{path}: tensor '{name}' has shape {dims:?}; batch and sequence must be at least 1");
    }
    Ok((embed, batch_seq))
}

/// Token ids must index rows of the embedding: the GPU would read past the table otherwise.
fn check_ids(inputs: &Bindings, path: &Path, vocab: Option<usize>) -> Result<()> {
    if let (Some(ids), Some(vocab)) = (inputs.get("input_ids"), vocab) {
        if let Some((i, id)) = ids
            .data
            .iter()
            .enumerate()
            .find(|(_, &id)| !(0.0..vocab as f32).contains(&id))
        {
            bail!(
                "{}: input_ids[{i}] = {id} is outside the vocabulary (0..{vocab})",
                path.display()
            );
        }
    }
    Ok(())
}
