//! Choosing a model on the command line: a preset with overrides, or a graph file.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use lancet_compiler::ir::{json, Graph};
use lancet_compiler::models::{LlamaConfig, Precision, PRESETS};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PrecisionArg {
    Fp8,
    Bf16,
}

/// A model: `--preset NAME` with optional overrides, or a graph JSON file.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// A graph JSON file (as written by `lancet graph --json`).
    #[arg(value_name = "FILE.json", conflicts_with = "preset")]
    pub file: Option<PathBuf>,
    /// A built-in model: llama-3.2-1b, seed-te or tiny.
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// Decoder layers (default: the preset's).
    #[arg(long, requires = "preset")]
    pub layers: Option<usize>,
    /// Sequences per forward pass.
    #[arg(long, requires = "preset")]
    pub batch: Option<usize>,
    /// Tokens per sequence.
    #[arg(long, requires = "preset")]
    pub seq: Option<usize>,
    /// Precision of the linears.
    #[arg(long, value_enum, requires = "preset")]
    pub precision: Option<PrecisionArg>,
    /// Build a full model with a token embedding of this many rows and a final norm, instead
    /// of the bare layer stack on hidden states.
    #[arg(long, requires = "preset")]
    pub vocab: Option<usize>,
}

/// What the user asked for, resolved to a graph and a one-line description.
pub struct Model {
    pub graph: Graph,
    pub title: String,
}

impl ModelArgs {
    /// The preset's config with the command line's overrides applied.
    pub fn config(&self) -> Result<Option<LlamaConfig>> {
        let Some(name) = &self.preset else {
            return Ok(None);
        };
        let Some(mut config) = LlamaConfig::preset(name) else {
            bail!("unknown preset '{name}' (known: {})", PRESETS.join(", "));
        };
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
        config.layers = self.layers.unwrap_or(config.layers);
        config.batch = self.batch.unwrap_or(config.batch);
        config.seq = self.seq.unwrap_or(config.seq);
        config.vocab = self.vocab.or(config.vocab);
        if let Some(p) = self.precision {
            config.precision = match p {
                PrecisionArg::Fp8 => Precision::Fp8,
                PrecisionArg::Bf16 => Precision::Bf16,
            };
        }
        Ok(Some(config))
    }

    pub fn load(&self) -> Result<Model> {
        if let Some(config) = self.config()? {
            let name = self.preset.as_deref().unwrap_or_default();
            let graph = config
                .build()
                .with_context(|| format!("building preset '{name}'"))?;
            let precision = match config.precision {
                Precision::Fp8 => "fp8",
                Precision::Bf16 => "bf16",
            };
            let title = format!(
                "{name} · {} layers · batch {} · seq {} · {precision}{}",
                config.layers,
                config.batch,
                config.seq,
                config.vocab.map(|v| format!(" · vocab {v}")).unwrap_or_default()
            );
            return Ok(Model { graph, title });
        }
        match &self.file {
            Some(path) => Ok(Model {
                graph: json::load(path)?,
                title: path.display().to_string(),
            }),
            None => bail!("name a model: --preset NAME or a graph FILE.json"),
        }
    }
}
