//! Attention benchmark: lancet's cuDNN fused attention at Llama-3.2-1B shapes (batch 2,
//! sequence 2048, 32 query heads), timed with CUDA events, and what its plans cost: the first
//! build (kernel compilation), a restore from the on-disk store in a fresh process, and a lookup
//! in the process's cache.
//!
//! ```text
//! attention [--json PATH] [--samples N] [--calls N] [--warmup N]
//! ```
//!
//! Each sample times `--calls` back-to-back executions between two events; the table reports the
//! median, min and max per call over `--samples` samples, after `--warmup` untimed calls.
//! `benches/torch_attention.py` times PyTorch's cuDNN attention the same way.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use half::bf16;
use lancet_runtime::attention::{AttentionLayout, AttentionPlans, AttentionPointers, AttentionShape};
use lancet_runtime::attention::{AttentionSpec, PlanSource};
use lancet_runtime::cudarc::driver::sys::{CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use lancet_runtime::cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use lancet_runtime::cudnn::{Library, PlanStore};
use lancet_runtime::device::{self, Device};
use serde_json::{json, Value};

/// The flag the parent passes to the child process that measures a restore from disk.
const RESTORE_PROBE: &str = "--restore-probe";

struct Options {
    json: Option<PathBuf>,
    samples: usize,
    calls: usize,
    warmup: usize,
}

fn main() {
    let started = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some(RESTORE_PROBE) => restore_probe(Path::new(args.get(1).map_or("", String::as_str)), started),
        _ => parse(&args).and_then(|options| run(&options)),
    };
    if let Err(e) = result {
        eprintln!("attention bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn parse(args: &[String]) -> Result<Options> {
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
            "--bench" => {} // passed by `cargo bench`
            other => bail!("unknown argument {other:?}"),
        }
    }
    if options.samples == 0 || options.calls == 0 {
        bail!("--samples and --calls must be at least 1");
    }
    Ok(options)
}

/// The timed shapes: the headline GQA shape, the same with 32 KV heads, head dim 128, and
/// non-causal. All take Q, K, V from one packed QKV buffer and write O as `[B, S, H·D]`.
fn cases() -> Vec<(&'static str, AttentionSpec)> {
    let spec = |kv_heads, head_dim, causal| {
        let shape = AttentionShape {
            batch: 2,
            q_heads: 32,
            kv_heads,
            seq_len: 2048,
            head_dim,
        };
        AttentionSpec {
            shape,
            layout: AttentionLayout::packed_qkv(&shape),
            causal,
        }
    };
    vec![
        ("gqa32x8_d64_causal", spec(8, 64, true)),
        ("mha32x32_d64_causal", spec(32, 64, true)),
        ("gqa32x8_d128_causal", spec(8, 128, true)),
        ("gqa32x8_d64_full", spec(8, 64, false)),
    ]
}

fn run(options: &Options) -> Result<()> {
    match device::device_count() {
        Ok(n) if n > 0 => {}
        Ok(_) => {
            println!("attention bench: SKIPPED: no CUDA device");
            return Ok(());
        }
        Err(e) => {
            println!("attention bench: SKIPPED: {e}");
            return Ok(());
        }
    }
    let device = Device::open(0)?;
    let cudnn = Library::get()?.version();
    println!("device: {}; cuDNN {cudnn}", device.info());

    let plan_cost = plan_cost(&device, &cases()[0].1)?;
    let plans = AttentionPlans::new(&device, None)?;
    let mut rows = Vec::new();
    for (name, spec) in cases() {
        rows.push(time_case(&plans, name, &spec, options, false)?);
        if name == cases()[0].0 {
            rows.push(time_case(&plans, name, &spec, options, true)?);
        }
    }

    println!("\nplan cost ({}):", cases()[0].0);
    for (what, key) in [
        ("first build (graph + heuristics + finalize)", "build_ms"),
        ("  of which finalize (kernel compilation)", "finalize_ms"),
        ("restore from disk, fresh process (median)", "restore_ms"),
        ("fresh process: start to plan ready (median)", "process_ms"),
        ("lookup in memory (median)", "lookup_ms"),
    ] {
        println!(
            "  {what:<46} {:>10.4} ms",
            plan_cost[key].as_f64().unwrap_or(f64::NAN)
        );
    }
    println!("  serialized plan {} bytes", plan_cost["plan_bytes"]);
    println!(
        "\n{:<28} {:>9} {:>9} {:>9} {:>8}  {:<10} engine",
        "case", "median ms", "min ms", "max ms", "TFLOP/s", "plan"
    );
    for row in &rows {
        println!(
            "{:<28} {:>9.4} {:>9.4} {:>9.4} {:>8.1}  {:<10} {}",
            row["case"].as_str().unwrap_or(""),
            row["median_ms"].as_f64().unwrap_or(f64::NAN),
            row["min_ms"].as_f64().unwrap_or(f64::NAN),
            row["max_ms"].as_f64().unwrap_or(f64::NAN),
            row["tflops"].as_f64().unwrap_or(f64::NAN),
            row["plan"].as_str().unwrap_or(""),
            row["engine"].as_str().unwrap_or(""),
        );
    }
    if let Some(path) = &options.json {
        let report = json!({
            "device": device.info().to_string(),
            "cudnn": cudnn.to_string(),
            "samples": options.samples,
            "calls_per_sample": options.calls,
            "plan_cost": plan_cost,
            "cases": rows,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// First build into an empty store, restores from it in fresh processes, in-memory lookups.
fn plan_cost(device: &Device, spec: &AttentionSpec) -> Result<Value> {
    let dir = std::env::temp_dir().join(format!("lancet-bench-plans-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let plans = AttentionPlans::new(device, Some(PlanStore::new(&dir)))?;
    let built = plans.get(spec)?;
    if built.source != PlanSource::Built {
        bail!("the first lookup in an empty store came from {:?}", built.source);
    }
    let times = built.build.clone().unwrap_or_default();
    let lookups: Vec<f64> = (0..1000)
        .map(|_| plans.get(spec).map(|l| l.elapsed.as_secs_f64() * 1e3))
        .collect::<Result<_, _>>()?;

    let exe = std::env::current_exe()?;
    let mut probes = Vec::new();
    for _ in 0..3 {
        let out = Command::new(&exe).arg(RESTORE_PROBE).arg(&dir).output()?;
        if !out.status.success() {
            bail!("restore probe failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        probes.push(serde_json::from_slice::<Value>(&out.stdout).context("restore probe output")?);
    }
    let plan_bytes: u64 = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    let _ = std::fs::remove_dir_all(&dir);
    let probe = |key: &str| probes.iter().filter_map(|p| p[key].as_f64()).collect::<Vec<_>>();
    Ok(json!({
        "engine": built.plan.engine().to_string(),
        "build_ms": built.elapsed.as_secs_f64() * 1e3,
        "graph_ms": times.graph.as_secs_f64() * 1e3,
        "heuristics_ms": times.heuristics.as_secs_f64() * 1e3,
        "finalize_ms": times.finalize.as_secs_f64() * 1e3,
        "rejected_configs": times.rejected,
        "restore_ms": median(&probe("restore_ms")),
        "restore_ms_all": probe("restore_ms"),
        "process_ms": median(&probe("process_ms")),
        "context_ms_all": probe("context_ms"),
        "lookup_ms": median(&lookups),
        "plan_bytes": plan_bytes,
    }))
}

/// The child side of [`plan_cost`]: a fresh process restoring the plan from `dir`.
fn restore_probe(dir: &Path, started: Instant) -> Result<()> {
    let device = Device::open(0)?;
    let context_ms = started.elapsed().as_secs_f64() * 1e3;
    let plans = AttentionPlans::new(&device, Some(PlanStore::new(dir)))?;
    let lookup = plans.get(&cases()[0].1)?;
    if lookup.source != PlanSource::Disk {
        bail!(
            "expected a restore from {}, got {:?}: {:?}",
            dir.display(),
            lookup.source,
            lookup.warnings
        );
    }
    let report = json!({
        "restore_ms": lookup.elapsed.as_secs_f64() * 1e3,
        "context_ms": context_ms,
        "process_ms": started.elapsed().as_secs_f64() * 1e3,
    });
    println!("{report}");
    Ok(())
}

fn time_case(
    plans: &AttentionPlans,
    name: &str,
    spec: &AttentionSpec,
    options: &Options,
    graph: bool,
) -> Result<Value> {
    let lookup = plans.get(spec)?;
    let handle = plans.handle();
    let stream = handle.stream();
    let shape = &spec.shape;
    let n_qkv = shape.batch * shape.seq_len * shape.packed_width();
    let host: Vec<bf16> = lancet_runtime::compiler::weights::normal(7, name, n_qkv, 1.0)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let qkv: CudaSlice<bf16> = stream.clone_htod(&host)?;
    let mut o: CudaSlice<bf16> =
        stream.alloc_zeros(shape.batch * shape.seq_len * shape.q_heads * shape.head_dim)?;
    let (k_off, v_off) = shape.packed_offsets();
    let base = qkv.device_ptr(stream).0;
    let bytes = std::mem::size_of::<bf16>() as u64;
    let pointers = AttentionPointers {
        q: base,
        k: base + k_off as u64 * bytes,
        v: base + v_off as u64 * bytes,
        o: o.device_ptr_mut(stream).0,
    };
    let scale = 1.0 / (shape.head_dim as f32).sqrt();
    // SAFETY: `qkv` and `o` span every view (packed layout) and outlive `call`.
    let call = unsafe { lookup.plan.bind(handle, pointers, scale)? };

    let samples = if graph {
        for _ in 0..options.warmup.max(1) {
            call.execute()?;
        }
        stream.synchronize()?;
        stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL)?;
        let captured = (0..options.calls).try_for_each(|_| call.execute());
        let cuda_graph = stream.end_capture(CUgraphInstantiate_flags(0))?;
        captured?;
        let cuda_graph = cuda_graph.context("the capture recorded no graph")?;
        time(stream, options.warmup, options.samples, 1, || {
            Ok(cuda_graph.launch()?)
        })?
        .into_iter()
        .map(|ms| ms / options.calls as f64)
        .collect()
    } else {
        time(stream, options.warmup, options.samples, options.calls, || {
            Ok(call.execute()?)
        })?
    };
    let median_ms = median(&samples);
    Ok(json!({
        "case": if graph { format!("{name} (graph)") } else { name.to_owned() },
        "batch": shape.batch, "q_heads": shape.q_heads, "kv_heads": shape.kv_heads,
        "seq_len": shape.seq_len, "head_dim": shape.head_dim, "causal": spec.causal,
        "median_ms": median_ms,
        "min_ms": samples.iter().copied().fold(f64::INFINITY, f64::min),
        "max_ms": samples.iter().copied().fold(0.0, f64::max),
        "tflops": spec.flops() / (median_ms * 1e-3) / 1e12,
        "plan": match lookup.source {
            PlanSource::Built => format!("{:.0} ms", lookup.elapsed.as_secs_f64() * 1e3),
            source => format!("{source:?}"),
        },
        "engine": lookup.plan.engine().to_string(),
    }))
}

/// Per-call milliseconds of `samples` samples, each `calls` calls of `f` between two events,
/// after `warmup` untimed calls.
fn time(
    stream: &Arc<CudaStream>,
    warmup: usize,
    samples: usize,
    calls: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    let ctx = stream.context();
    let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let mut events = Vec::with_capacity(samples);
    for _ in 0..samples {
        let (start, end) = (ctx.new_event(flags)?, ctx.new_event(flags)?);
        start.record(stream)?;
        for _ in 0..calls {
            f()?;
        }
        end.record(stream)?;
        events.push((start, end));
    }
    stream.synchronize()?;
    events
        .iter()
        .map(|(start, end)| Ok(start.elapsed_ms(end)? as f64 / calls as f64))
        .collect()
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}
