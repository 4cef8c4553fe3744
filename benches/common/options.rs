//! Command-line options shared by the GPU benchmarks: where to write JSON and how to sample.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

pub struct Options {
    /// Write the results here as JSON.
    pub json: Option<PathBuf>,
    /// Timed samples, each of `calls` back-to-back calls between two CUDA events.
    pub samples: usize,
    pub calls: usize,
    /// Untimed calls first.
    pub warmup: usize,
}

/// `--json PATH --samples N --calls N --warmup N` (defaults 30 samples of 20 calls after 20
/// warm-up calls); `--bench`, which `cargo bench` passes, is accepted and ignored.
pub fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options {
        json: None,
        samples: 30,
        calls: 20,
        warmup: 20,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--json" => options.json = Some(PathBuf::from(value()?)),
            "--samples" => options.samples = value()?.parse()?,
            "--calls" => options.calls = value()?.parse()?,
            "--warmup" => options.warmup = value()?.parse()?,
            "--bench" => {}
            other => bail!("unknown argument {other:?}"),
        }
    }
    if options.samples == 0 || options.calls == 0 {
        bail!("--samples and --calls must be at least 1");
    }
    Ok(options)
}
