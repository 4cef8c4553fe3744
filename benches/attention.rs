//! Attention benchmark: lancet's cuDNN fused attention at Llama-3.2-1B shapes (batch 2,
//! sequence 2048, 32 query heads), bf16 and FP8, timed with CUDA events, and what its plans
//! cost: the first build (kernel compilation), a restore from the on-disk store in a fresh
//! process, and a lookup in the process's cache. An FP8 plan that the loaded cuDNN cannot build
//! or computes wrongly (lancet checks each new FP8 plan) gets the reason instead of a time.
//!
//! ```text
//! attention [--json PATH] [--samples N] [--calls N] [--warmup N]
//! ```
//!
//! Each sample times `--calls` back-to-back executions between two events; the table reports the
//! median, min and max per call over `--samples` samples, after `--warmup` untimed calls.
//! `benches/torch_attention.py` times PyTorch's cuDNN attention the same way.

#[path = "common/device.rs"]
mod common_device;
#[path = "common/options.rs"]
mod options;

use options::Options;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use half::bf16;
use lancet_runtime::attention::{e4m3_from_f32, AttentionPrecision, Fp8Scalars, Fp8Scales};
use lancet_runtime::attention::{AttentionLayout, AttentionPlans, AttentionPointers, AttentionShape};
use lancet_runtime::attention::{AttentionSpec, PlanSource};
use lancet_runtime::cudarc::driver::sys::{CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use lancet_runtime::cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use lancet_runtime::cudnn::{Library, PlanStore};
use lancet_runtime::device::Device;
use serde_json::{json, Value};

/// The flag the parent passes to the child processes that measure plan builds and restores.
const PLAN_PROBE: &str = "--plan-probe";

fn main() {
    let started = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some(PLAN_PROBE) => plan_probe(Path::new(args.get(1).map_or("", String::as_str)), started),
        _ => options::parse(&args).and_then(|options| run(&options)),
    };
    if let Err(e) = result {
        eprintln!("attention bench: error: {e:#}");
        std::process::exit(1);
    }
}

/// The timed shapes: the headline GQA shape, the same with 32 KV heads, head dim 128,
/// non-causal, and the headline shape in FP8. All take Q, K, V from one packed QKV buffer and
/// write O as `[B, S, H·D]`.
fn cases() -> Vec<(&'static str, AttentionSpec)> {
    let spec = |kv_heads, head_dim, causal, precision| {
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
            precision,
        }
    };
    let (bf16, fp8) = (AttentionPrecision::Bf16, AttentionPrecision::Fp8);
    vec![
        ("gqa32x8_d64_causal", spec(8, 64, true, bf16)),
        ("mha32x32_d64_causal", spec(32, 64, true, bf16)),
        ("gqa32x8_d128_causal", spec(8, 128, true, bf16)),
        ("gqa32x8_d64_full", spec(8, 64, false, bf16)),
        ("gqa32x8_d64_causal_fp8", spec(8, 64, true, fp8)),
    ]
}

/// The FP8 row's quantization: N(0, 1) inputs stored as e4m3(16·x); P and O scaled as lancet's
/// plan check does.
const FP8_SCALES: Fp8Scales = Fp8Scales {
    descale_q: 1.0 / 16.0,
    descale_k: 1.0 / 16.0,
    descale_v: 1.0 / 16.0,
    descale_s: 1.0 / 128.0,
    scale_s: 128.0,
    scale_o: 32.0,
};

fn run(options: &Options) -> Result<()> {
    let Some(device) = common_device::open_or_skip("attention bench")? else {
        return Ok(());
    };
    let library = Library::get()?;
    let cudnn = library.version();
    let from = library
        .path()
        .map(|p| format!(" from {} ({})", p.display(), Library::ENV_VAR))
        .unwrap_or_default();
    println!("device: {}; cuDNN {cudnn}{from}", device.info());

    // The timed plans use lancet's plan store, as the compiler would (`LANCET_CACHE_DIR`).
    let plans = AttentionPlans::new(&device, PlanStore::from_env())?;
    let mut rows = Vec::new();
    for (i, (name, spec)) in cases().into_iter().enumerate() {
        rows.push(time_case(&plans, name, &spec, options, false)?);
        if i == 0 {
            rows.push(time_case(&plans, name, &spec, options, true)?);
        }
    }
    let (headline, spec) = cases()[0];
    let plan_cost = plan_cost(&plans, &spec)?;

    let cold = &plan_cost["cold_build"];
    let warm = &plan_cost["build_with_cuda_cache"];
    let number = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    println!("\nplan cost ({headline}; fresh processes unless noted), ms:");
    for (what, value) in [
        ("first build, nothing cached", number(&cold["lookup_ms"])),
        (
            "  of which finalize (kernel compilation)",
            number(&cold["build"]["finalize_ms"]),
        ),
        ("first build, CUDA JIT cache filled", number(&warm["lookup_ms"])),
        (
            "restore from the plan store (median of 3)",
            number(&plan_cost["restore_ms"]),
        ),
        (
            "  same, CUDA JIT cache filled",
            number(&plan_cost["restore_with_cuda_cache_ms"]),
        ),
        (
            "restoring process: context creation",
            number(&plan_cost["restore_context_ms"]),
        ),
        (
            "restoring process: cuDNN load + handle",
            number(&plan_cost["restore_handle_ms"]),
        ),
        (
            "restoring process: start to plan ready",
            number(&plan_cost["restore_process_ms"]),
        ),
        (
            "lookup in memory, same process (median)",
            number(&plan_cost["lookup_ms"]),
        ),
    ] {
        println!("  {what:<44} {value:>10.4}");
    }
    println!(
        "  serialized plan: {} bytes; engine {}",
        plan_cost["plan_bytes"], cold["engine"]
    );
    println!(
        "\n{:<28} {:>9} {:>9} {:>9} {:>8}  {:<10} engine",
        "case", "median ms", "min ms", "max ms", "TFLOP/s", "plan"
    );
    for row in &rows {
        if let Some(reason) = row["refused"].as_str() {
            println!("{:<28} refused: {reason}", row["case"].as_str().unwrap_or(""));
            continue;
        }
        println!(
            "{:<28} {:>9.4} {:>9.4} {:>9.4} {:>8.1}  {:<10} {}",
            row["case"].as_str().unwrap_or(""),
            number(&row["median_ms"]),
            number(&row["min_ms"]),
            number(&row["max_ms"]),
            number(&row["tflops"]),
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

/// What the headline plan costs a process, each number from fresh child processes:
/// - a first build with nothing cached anywhere (empty plan store, empty CUDA JIT cache, empty
///   home), then a build with an empty plan store but the CUDA JIT cache the first one filled;
/// - restores from the plan store, with an empty and with that filled CUDA JIT cache;
///
/// and lookups in this process's memory.
fn plan_cost(plans: &AttentionPlans, spec: &AttentionSpec) -> Result<Value> {
    let root = std::env::temp_dir().join(format!("lancet-bench-plans-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let dir = |name: &str| root.join(name);
    let exe = std::env::current_exe()?;
    let probe = |store: &str, cuda_cache: &str, expected: PlanSource| -> Result<Value> {
        let home = dir(&format!("home-{cuda_cache}"));
        std::fs::create_dir_all(&home)?;
        let out = Command::new(&exe)
            .arg(PLAN_PROBE)
            .arg(dir(store))
            .env("CUDA_CACHE_PATH", dir(cuda_cache))
            .env("HOME", &home)
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .output()?;
        if !out.status.success() {
            bail!("plan probe failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let report: Value = serde_json::from_slice(&out.stdout).context("plan probe output")?;
        if report["source"] != format!("{expected:?}") {
            bail!("plan probe expected {expected:?}: {report}");
        }
        Ok(report)
    };
    let cold = probe("store", "cuda-a", PlanSource::Built)?;
    let warm_cuda_cache = probe("store-2", "cuda-a", PlanSource::Built)?;
    let restore_cold: Vec<Value> = (0..3)
        .map(|i| probe("store", &format!("cuda-r{i}"), PlanSource::Disk))
        .collect::<Result<_>>()?;
    let restore_warm: Vec<Value> = (0..3)
        .map(|_| probe("store", "cuda-a", PlanSource::Disk))
        .collect::<Result<_>>()?;
    let plan_bytes: u64 = std::fs::read_dir(dir("store"))?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    let _ = std::fs::remove_dir_all(&root);

    let lookups: Vec<f64> = (0..1000)
        .map(|_| plans.get(spec).map(|l| l.elapsed.as_secs_f64() * 1e3))
        .collect::<Result<_, _>>()?;
    let ms =
        |reports: &[Value], key: &str| reports.iter().filter_map(|r| r[key].as_f64()).collect::<Vec<_>>();
    Ok(json!({
        "cold_build": cold,
        "build_with_cuda_cache": warm_cuda_cache,
        "restore_ms": median(&ms(&restore_cold, "lookup_ms")),
        "restore_ms_all": ms(&restore_cold, "lookup_ms"),
        "restore_with_cuda_cache_ms": median(&ms(&restore_warm, "lookup_ms")),
        "restore_with_cuda_cache_ms_all": ms(&restore_warm, "lookup_ms"),
        "restore_process_ms": median(&ms(&restore_cold, "process_ms")),
        "restore_context_ms": median(&ms(&restore_cold, "context_ms")),
        "restore_handle_ms": median(&ms(&restore_cold, "handle_ms")),
        "lookup_ms": median(&lookups),
        "plan_bytes": plan_bytes,
    }))
}

/// The child side of [`plan_cost`]: a fresh process getting the headline plan with the plan
/// store in `dir`.
fn plan_probe(dir: &Path, started: Instant) -> Result<()> {
    let device = Device::open(0)?;
    let context_ms = started.elapsed().as_secs_f64() * 1e3;
    let plans = AttentionPlans::new(&device, Some(PlanStore::new(dir)))?;
    let handle_ms = started.elapsed().as_secs_f64() * 1e3 - context_ms;
    let lookup = plans.get(&cases()[0].1)?;
    let build = lookup.build.as_ref().map(|t| {
        json!({
            "graph_ms": t.graph.as_secs_f64() * 1e3,
            "heuristics_ms": t.heuristics.as_secs_f64() * 1e3,
            "finalize_ms": t.finalize.as_secs_f64() * 1e3,
            "rejected_configs": t.rejected,
        })
    });
    let report = json!({
        "source": format!("{:?}", lookup.source),
        "lookup_ms": lookup.elapsed.as_secs_f64() * 1e3,
        "build": build,
        "engine": lookup.plan.engine().to_string(),
        "warnings": lookup.warnings,
        "context_ms": context_ms,
        "handle_ms": handle_ms,
        "process_ms": started.elapsed().as_secs_f64() * 1e3,
    });
    println!("{report}");
    Ok(())
}

/// A timed case's packed QKV buffer and O, in the spec's element type; FP8 adds its scalars.
enum Buffers {
    Bf16(CudaSlice<bf16>, CudaSlice<bf16>),
    Fp8(CudaSlice<u8>, CudaSlice<u8>, Fp8Scalars),
}

impl Buffers {
    fn new(stream: &Arc<CudaStream>, name: &str, spec: &AttentionSpec) -> Result<Self> {
        let shape = &spec.shape;
        let n_qkv = shape.batch * shape.seq_len * shape.packed_width();
        let n_o = shape.batch * shape.seq_len * shape.q_heads * shape.head_dim;
        let values = lancet_runtime::compiler::weights::normal(7, name, n_qkv, 1.0);
        Ok(match spec.precision {
            AttentionPrecision::Bf16 => {
                let host: Vec<bf16> = values.into_iter().map(bf16::from_f32).collect();
                Buffers::Bf16(stream.clone_htod(&host)?, stream.alloc_zeros(n_o)?)
            }
            AttentionPrecision::Fp8 => {
                let host: Vec<u8> = values
                    .into_iter()
                    .map(|x| e4m3_from_f32(x / FP8_SCALES.descale_q))
                    .collect();
                Buffers::Fp8(
                    stream.clone_htod(&host)?,
                    stream.alloc_zeros(n_o)?,
                    Fp8Scalars::new(stream, &FP8_SCALES)?,
                )
            }
        })
    }

    /// Q, K, V at their offsets in the packed buffer, O, and the FP8 scalars.
    fn pointers(&mut self, stream: &CudaStream, spec: &AttentionSpec) -> AttentionPointers {
        let (base, o, fp8) = match self {
            Buffers::Bf16(qkv, o) => (qkv.device_ptr(stream).0, o.device_ptr_mut(stream).0, None),
            Buffers::Fp8(qkv, o, scalars) => (
                qkv.device_ptr(stream).0,
                o.device_ptr_mut(stream).0,
                Some(scalars.pointers(stream).0),
            ),
        };
        let (k_off, v_off) = spec.shape.packed_offsets();
        let bytes = spec.precision.element_bytes() as u64;
        AttentionPointers {
            q: base,
            k: base + k_off as u64 * bytes,
            v: base + v_off as u64 * bytes,
            o,
            fp8,
        }
    }
}

fn time_case(
    plans: &AttentionPlans,
    name: &str,
    spec: &AttentionSpec,
    options: &Options,
    graph: bool,
) -> Result<Value> {
    let lookup = match plans.get(spec) {
        Ok(lookup) => lookup,
        // FP8 depends on the loaded cuDNN (9.14 computes it wrongly): report, don't stop.
        Err(e) if spec.precision == AttentionPrecision::Fp8 => {
            return Ok(json!({ "case": name, "precision": "fp8", "refused": e.to_string() }));
        }
        Err(e) => return Err(e.into()),
    };
    let handle = plans.handle();
    let stream = handle.stream();
    let shape = &spec.shape;
    let mut buffers = Buffers::new(stream, name, spec)?;
    let pointers = buffers.pointers(stream, spec);
    let scale = 1.0 / (shape.head_dim as f32).sqrt();
    // SAFETY: the buffers span every view (packed layout) and outlive `call`.
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
        "precision": spec.precision.name(), "fp8_check_rel_l2": lookup.fp8_check,
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
