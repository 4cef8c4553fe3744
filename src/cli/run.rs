//! `lancet run` and `lancet bench`: a compiled model on the GPU — one forward pass and its
//! output's statistics, or the compile report plus steady-state timings.

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use lancet::session::{open, SessionOptions};
use lancet_compiler::summary::summarize;
use lancet_runtime::device::Device;

use super::compile::CompileArgs;
use super::table::Table;

/// Options of commands that run a model.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub compile: CompileArgs,
    /// Seed of the random weights and inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Delayed-scaling passes that set FP8 activation scales from recorded amax (0: defaults).
    #[arg(long, default_value_t = 2)]
    pub calibrate: usize,
    /// Launch kernels one by one instead of replaying a captured CUDA graph (for debugging).
    #[arg(long)]
    pub no_cuda_graph: bool,
    /// FP8 GEMMs with full f32 accumulation instead of Hopper's fast accumulation.
    #[arg(long)]
    pub no_fast_accum: bool,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl RunArgs {
    fn session_options(&self) -> SessionOptions {
        SessionOptions {
            compile: self.compile.options(),
            seed: self.seed,
            calibration_passes: self.calibrate,
            cuda_graph: !self.no_cuda_graph,
            fast_accum: !self.no_fast_accum,
        }
    }
}

fn open_device(ordinal: usize) -> Result<Device> {
    Device::open(ordinal).context("lancet run and bench need a CUDA GPU (lancet compile does not)")
}

pub fn run(args: &RunArgs) -> Result<()> {
    let model = args.compile.model.load()?;
    let device = open_device(args.device)?;
    let session = open(&device, &model.graph, &args.session_options())?;
    session.exe.poison_outputs()?;
    session.exe.run()?;
    let outputs = session.exe.outputs()?;
    let mut table = Table::new([
        "output",
        "elements",
        "mean",
        "std",
        "abs max",
        "NaN",
        "checksum (Σ)",
    ]);
    let mut json = Vec::new();
    let mut names: Vec<_> = outputs.keys().cloned().collect();
    names.sort();
    for name in names {
        let data = &outputs[&name].data;
        let finite: Vec<f64> = data.iter().filter(|x| x.is_finite()).map(|&x| x as f64).collect();
        let n = finite.len().max(1) as f64;
        let mean = finite.iter().sum::<f64>() / n;
        let std = (finite.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        let absmax = finite.iter().fold(0f64, |m, x| m.max(x.abs()));
        let nans = data.len() - finite.len();
        let sum: f64 = finite.iter().sum();
        table.row([
            name.clone(),
            data.len().to_string(),
            format!("{mean:.6}"),
            format!("{std:.6}"),
            format!("{absmax:.4}"),
            nans.to_string(),
            format!("{sum:.6e}"),
        ]);
        json.push(serde_json::json!({"output": name, "elements": data.len(), "mean": mean, "std": std, "absmax": absmax, "non_finite": nans, "sum": sum}));
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"model": model.title, "device": device.info().to_string(), "outputs": json})
            )?
        );
    } else {
        println!("{} on {}\n\n{table}", model.title, device.info());
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Timed forward passes.
    #[arg(long, default_value_t = 50)]
    pub runs: usize,
    /// Untimed forward passes first.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    /// Also time every step on its own: where the time goes (GEMMs, attention, kernels, gaps).
    #[arg(long)]
    pub profile: bool,
}

/// Median, min, max and standard deviation of `ms`.
fn stats(ms: &[f64]) -> serde_json::Value {
    let mut sorted = ms.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    let mean = sorted.iter().sum::<f64>() / n as f64;
    let std = (sorted.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
    serde_json::json!({"median_ms": median, "min_ms": sorted[0], "max_ms": sorted[n - 1], "std_ms": std, "runs": n})
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    let start = Instant::now();
    let model = args.run.compile.model.load()?;
    let device = open_device(args.run.device)?;
    let device_ms = start.elapsed().as_secs_f64() * 1e3;
    let mut options = args.run.session_options();
    options.cuda_graph = true;
    let session = open(&device, &model.graph, &options)?;
    let ready_ms = start.elapsed().as_secs_f64() * 1e3;
    let flops = summarize(&model.graph).flops.total();

    let graph = stats(&session.exe.time(args.warmup, args.runs, true)?);
    // The same passes launched one by one, for comparison.
    let eager = stats(&session.exe.time(args.warmup, args.runs, false)?);
    let profile = if args.profile {
        let steps = session.exe.profile(args.runs.min(20))?;
        let mut by_kind: std::collections::BTreeMap<String, (usize, f64)> = Default::default();
        for (kind, name, ms) in &steps {
            let key = if *kind == "kernel" {
                format!(
                    "kernel {}",
                    name.rsplit_once('_').map_or(name.as_str(), |(ops, _)| ops)
                )
            } else {
                kind.to_string()
            };
            let e = by_kind.entry(key).or_default();
            e.0 += 1;
            e.1 += ms;
        }
        Some(by_kind)
    } else {
        None
    };
    let p = &session.compiled.phases;
    let r = &session.ready;
    let phases = [
        ("device open (CUDA context)", device_ms),
        ("rewrite", p.rewrite_ms),
        ("lower + codegen", p.lower_codegen_ms),
        ("NVRTC (in parallel with the next five)", p.nvrtc_ms),
        ("random weights (host)", r.weights_ms),
        ("allocate", r.load.allocate_ms),
        ("upload weights", r.load.upload_ms),
        ("GEMM algorithm selection", r.load.gemm_tuning_ms),
        ("attention plans", r.load.attention_plans_ms),
        ("load cubins", r.load.modules_ms),
        ("calibrate + first pass", r.calibrate_ms),
        ("CUDA graph capture", r.capture_ms),
    ];
    let median = graph["median_ms"].as_f64().unwrap_or(f64::NAN);
    if args.run.json {
        let phases: serde_json::Map<String, serde_json::Value> = phases
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "model": model.title, "device": device.info().to_string(),
                "compile_phases_ms": phases, "ready_ms": ready_ms,
                "steady_state": {"cuda_graph": graph, "eager": eager},
                "tflops": flops / (median * 1e-3) / 1e12,
                "kernel_launches": session.compiled.plan.kernel_launches(),
                "profile_ms": profile.as_ref().map(|p| p.iter().map(|(k, (n, ms))| (k.clone(), serde_json::json!({"launches": n, "ms": ms}))).collect::<serde_json::Map<_, _>>()),
                "gemms": session.compiled.plan.gemms(), "attention_calls": session.compiled.plan.attentions(),
            }))?
        );
        return Ok(());
    }
    println!("{} on {}\n", model.title, device.info());
    let mut t = Table::new(["compile phase", "ms"]);
    for (k, v) in phases {
        t.row([k.to_string(), format!("{v:.1}")]);
    }
    t.row(["total, start to ready".to_string(), format!("{ready_ms:.1}")]);
    println!("{t}");
    let mut s = Table::new(["steady state", "median ms", "min", "max", "std", "TFLOP/s"]);
    for (name, v) in [("CUDA graph replay", &graph), ("launch by launch", &eager)] {
        let m = v["median_ms"].as_f64().unwrap_or(f64::NAN);
        s.row([
            name.to_string(),
            format!("{m:.3}"),
            format!("{:.3}", v["min_ms"].as_f64().unwrap_or(f64::NAN)),
            format!("{:.3}", v["max_ms"].as_f64().unwrap_or(f64::NAN)),
            format!("{:.3}", v["std_ms"].as_f64().unwrap_or(f64::NAN)),
            format!("{:.0}", flops / (m * 1e-3) / 1e12),
        ]);
    }
    println!("{s}");
    if let Some(profile) = profile {
        let mut t = Table::new([
            "where the time goes (steps timed alone)",
            "launches",
            "ms",
            "share of replay",
        ]);
        let mut total = 0.0;
        for (kind, (n, ms)) in &profile {
            total += ms;
            t.row([
                kind.clone(),
                n.to_string(),
                format!("{ms:.3}"),
                format!("{:.1} %", 100.0 * ms / median),
            ]);
        }
        t.row([
            "sum of steps".to_string(),
            String::new(),
            format!("{total:.3}"),
            format!("{:.1} %", 100.0 * total / median),
        ]);
        t.row([
            "gaps (replay − sum)".to_string(),
            String::new(),
            format!("{:.3}", median - total),
            format!("{:.1} %", 100.0 * (median - total) / median),
        ]);
        println!("{t}");
    }
    Ok(())
}
