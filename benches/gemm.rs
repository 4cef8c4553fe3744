//! FP8 GEMM benchmark: lancet's cuBLASLt GEMMs at the four projections of a Llama-3.2-1B layer
//! at M = 4096 tokens (QKV 2048→3072, O 2048→2048 + residual, gate+up 2048→16384, down
//! 8192→2048 + residual), e4m3 × e4m3 → bf16 with per-tensor scales and fast accumulation,
//! timed with CUDA events after autotuning, and what tuning costs.
//!
//! ```text
//! gemm [--json PATH] [--samples N] [--calls N] [--warmup N]
//! ```
//!
//! Variants per projection: the autotuned plan (lancet's default: 8 heuristic candidates timed,
//! 32 MiB workspace), the same replayed from a CUDA graph, the heuristic's first choice untimed
//! (PyTorch's way), the autotuned plan under PyTorch's 1 MiB workspace, fast accumulation off,
//! and, for the residual projections, the GEMM without its fused residual. Each sample times
//! `--calls` back-to-back launches between two events; the table reports the median, min and
//! max per call over `--samples` samples, after `--warmup` untimed calls.
//! `benches/torch_gemm.py` times `torch._scaled_mm` the same way.

#[path = "common/device.rs"]
mod common_device;
#[path = "common/options.rs"]
mod options;

use options::Options;

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use half::bf16;
use lancet_runtime::compiler::ir::DType;
use lancet_runtime::compiler::reference::numerics::round_to;
use lancet_runtime::cublaslt::{AlgoStore, GemmPlan, GemmPointers, GemmSpec, Gemms, ScalePointers};
use lancet_runtime::cublaslt::{TuneOptions, TuneSource};
use lancet_runtime::cudarc::driver::sys::{CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use lancet_runtime::cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use serde_json::{json, Value};

/// Tokens: batch 2 × sequence 2048.
const M: usize = 4096;

/// (name, N, K, fused residual): the projections of one layer.
const CASES: [(&str, usize, usize, bool); 4] = [
    ("qkv", 3072, 2048, false),
    ("o", 2048, 2048, true),
    ("gate_up", 16384, 2048, false),
    ("down", 2048, 8192, true),
];

fn main() {
    let result =
        options::parse(&std::env::args().skip(1).collect::<Vec<_>>()).and_then(|options| run(&options));
    if let Err(e) = result {
        eprintln!("gemm bench: error: {e:#}");
        std::process::exit(1);
    }
}

/// The GEMM registries the variants come from.
struct Registries {
    tuned: Gemms,
    top1: Gemms,
    small_workspace: Gemms,
}

fn run(options: &Options) -> Result<()> {
    let Some(device) = common_device::open_or_skip("gemm bench")? else {
        return Ok(());
    };
    let store_dir = std::env::temp_dir().join(format!("lancet-bench-gemm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store_dir);
    let store = AlgoStore::new(&store_dir);
    let defaults = TuneOptions::default();
    let registries = Registries {
        tuned: Gemms::with_options(&device, defaults, Some(store.clone()))?,
        top1: Gemms::with_options(
            &device,
            TuneOptions {
                candidates: 1,
                ..defaults
            },
            None,
        )?,
        small_workspace: Gemms::with_options(
            &device,
            TuneOptions {
                workspace_bytes: 1 << 20,
                ..defaults
            },
            None,
        )?,
    };
    let version = registries.tuned.library().version();
    println!("device: {}; cuBLASLt {version}", device.info());

    let mut tuning = Vec::new();
    let mut rows = Vec::new();
    for (name, n, k, residual) in CASES {
        let spec = GemmSpec::fp8(M, n, k).with_residual(residual);
        let plan = registries.tuned.get(&spec)?;
        tuning.push(tuning_report(name, &plan));
        let mut buffers = Buffers::new(device.stream(), name, n, k)?;
        rows.extend(time_variants(
            &registries,
            device.stream(),
            name,
            &spec,
            &mut buffers,
            options,
        )?);
    }
    // A second registry on the same store: what a later process pays per spec.
    let restoring = Gemms::with_options(&device, defaults, Some(store))?;
    for ((name, n, k, residual), report) in CASES.into_iter().zip(&mut tuning) {
        let plan = restoring.get(&GemmSpec::fp8(M, n, k).with_residual(residual))?;
        if plan.tuning().source != TuneSource::Disk {
            bail!(
                "{name}: expected a restore from disk, got {:?}",
                plan.tuning().source
            );
        }
        report["restore_ms"] = json!(plan.tuning().elapsed.as_secs_f64() * 1e3);
    }
    let _ = std::fs::remove_dir_all(&store_dir);

    print_tables(&rows, &tuning);
    if let Some(path) = &options.json {
        let report = json!({
            "device": device.info().to_string(),
            "cublaslt": version.to_string(),
            "m": M,
            "samples": options.samples,
            "calls_per_sample": options.calls,
            "workspace_bytes": defaults.workspace_bytes,
            "candidates": defaults.candidates,
            "tuning": tuning,
            "rows": rows,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn tuning_report(name: &str, plan: &GemmPlan) -> Value {
    let tuning = plan.tuning();
    let candidates: Vec<Value> = tuning
        .candidates
        .iter()
        .map(|c| {
            json!({
                "algo": c.config.to_string(),
                "workspace_size": c.workspace_size,
                "median_ms": c.median_ms.as_ref().ok(),
                "error": c.median_ms.as_ref().err(),
            })
        })
        .collect();
    json!({
        "case": name,
        "source": format!("{:?}", tuning.source),
        "tuning_ms": tuning.elapsed.as_secs_f64() * 1e3,
        "chosen": plan.config().to_string(),
        "chosen_workspace_size": plan.workspace_size(),
        "max_candidate_workspace_size": tuning.candidates.iter().map(|c| c.workspace_size).max(),
        "candidates": candidates,
    })
}

/// One projection's device buffers: random e4m3 `x` and `w`, unit scales (each in its own
/// allocation, as cuBLASLt's FP8 path wants them 16-byte aligned), a bf16 residual.
struct Buffers {
    x: CudaSlice<u8>,
    w: CudaSlice<u8>,
    scales: [CudaSlice<f32>; 2],
    residual: CudaSlice<bf16>,
    out: CudaSlice<bf16>,
}

impl Buffers {
    fn new(stream: &Arc<CudaStream>, name: &str, n: usize, k: usize) -> Result<Self> {
        let e4m3 = |tag: &str, len: usize| -> Vec<u8> {
            let values = lancet_runtime::compiler::weights::normal(7, &format!("{name}/{tag}"), len, 1.0);
            values
                .into_iter()
                .map(|v| e4m3_bits(round_to(DType::F8E4M3, v)))
                .collect()
        };
        let residual: Vec<bf16> =
            lancet_runtime::compiler::weights::normal(7, &format!("{name}/r"), M * n, 1.0)
                .into_iter()
                .map(bf16::from_f32)
                .collect();
        Ok(Buffers {
            x: stream.clone_htod(&e4m3("x", M * k))?,
            w: stream.clone_htod(&e4m3("w", n * k))?,
            scales: [stream.clone_htod(&[1.0f32])?, stream.clone_htod(&[1.0f32])?],
            residual: stream.clone_htod(&residual)?,
            out: stream.alloc_zeros(M * n)?,
        })
    }

    fn pointers(&mut self, stream: &CudaStream, residual: bool) -> GemmPointers {
        GemmPointers {
            x: self.x.device_ptr(stream).0,
            w: self.w.device_ptr(stream).0,
            scales: Some(ScalePointers {
                x: self.scales[0].device_ptr(stream).0,
                w: self.scales[1].device_ptr(stream).0,
            }),
            residual: residual.then(|| self.residual.device_ptr(stream).0),
            out: self.out.device_ptr_mut(stream).0,
        }
    }
}

/// The e4m3 bit pattern of a value e4m3 represents exactly (or of NaN).
fn e4m3_bits(v: f32) -> u8 {
    let sign = if v.is_sign_negative() { 0x80 } else { 0 };
    let bits = v.abs().to_bits();
    let exponent = (bits >> 23) as i32 - 127;
    if v.is_nan() {
        0x7f
    } else if v == 0.0 {
        sign
    } else if exponent < -6 {
        sign | (v.abs() * 512.0) as u8
    } else {
        sign | (((exponent + 7) as u8) << 3) | ((bits >> 20) & 7) as u8
    }
}

fn time_variants(
    registries: &Registries,
    stream: &Arc<CudaStream>,
    name: &str,
    spec: &GemmSpec,
    buffers: &mut Buffers,
    options: &Options,
) -> Result<Vec<Value>> {
    let mut variants = vec![
        ("autotuned", &registries.tuned, *spec, false),
        ("autotuned, CUDA graph", &registries.tuned, *spec, true),
        ("heuristic top-1", &registries.top1, *spec, false),
        (
            "autotuned, 1 MiB workspace",
            &registries.small_workspace,
            *spec,
            false,
        ),
        (
            "autotuned, no fast accumulation",
            &registries.tuned,
            spec.with_fast_accum(false),
            false,
        ),
    ];
    if spec.residual {
        variants.push((
            "autotuned, no residual",
            &registries.tuned,
            spec.with_residual(false),
            false,
        ));
    }
    let mut rows = Vec::new();
    for (variant, gemms, spec, graph) in variants {
        let plan = gemms.get(&spec)?;
        let pointers = buffers.pointers(stream, spec.residual);
        let samples = time_plan(stream, &plan, &pointers, options, graph)?;
        let median_ms = median(&samples);
        rows.push(json!({
            "case": name,
            "variant": variant,
            "n": spec.n, "k": spec.k, "residual": spec.residual, "fast_accum": spec.fast_accum,
            "median_ms": median_ms,
            "min_ms": samples.iter().copied().fold(f64::INFINITY, f64::min),
            "max_ms": samples.iter().copied().fold(0.0, f64::max),
            "tflops": spec.flops() / (median_ms * 1e-3) / 1e12,
            "algo": plan.config().to_string(),
            "workspace_size": plan.workspace_size(),
            "tuning_ms": plan.tuning().elapsed.as_secs_f64() * 1e3,
        }));
    }
    Ok(rows)
}

/// Per-call milliseconds of each sample: `calls` launches between two events, launched one
/// by one or replayed from a captured graph of `calls` launches.
fn time_plan(
    stream: &Arc<CudaStream>,
    plan: &GemmPlan,
    pointers: &GemmPointers,
    options: &Options,
    graph: bool,
) -> Result<Vec<f64>> {
    // SAFETY: the buffers behind `pointers` span the spec and outlive every launch and graph.
    let launch = || unsafe { plan.launch(stream, pointers) };
    for _ in 0..options.warmup.max(1) {
        launch()?;
    }
    stream.synchronize()?;
    let cuda_graph = if graph {
        stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL)?;
        let captured = (0..options.calls).try_for_each(|_| launch());
        let cuda_graph = stream.end_capture(CUgraphInstantiate_flags(0))?;
        captured?;
        Some(cuda_graph.context("the capture recorded no graph")?)
    } else {
        None
    };
    let ctx = stream.context();
    let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let mut events = Vec::with_capacity(options.samples);
    for _ in 0..options.samples {
        let (start, end) = (ctx.new_event(flags)?, ctx.new_event(flags)?);
        start.record(stream)?;
        match &cuda_graph {
            Some(g) => g.launch()?,
            None => (0..options.calls).try_for_each(|_| launch())?,
        }
        end.record(stream)?;
        events.push((start, end));
    }
    stream.synchronize()?;
    events
        .iter()
        .map(|(start, end)| Ok(start.elapsed_ms(end)? as f64 / options.calls as f64))
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

fn print_tables(rows: &[Value], tuning: &[Value]) {
    let number = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    println!(
        "\n{:<8} {:<32} {:>9} {:>9} {:>9} {:>8}  algorithm",
        "case", "variant", "median ms", "min ms", "max ms", "TFLOP/s"
    );
    for row in rows {
        println!(
            "{:<8} {:<32} {:>9.4} {:>9.4} {:>9.4} {:>8.1}  {}",
            row["case"].as_str().unwrap_or(""),
            row["variant"].as_str().unwrap_or(""),
            number(&row["median_ms"]),
            number(&row["min_ms"]),
            number(&row["max_ms"]),
            number(&row["tflops"]),
            row["algo"].as_str().unwrap_or(""),
        );
    }
    println!("\ntuning (autotuned plans; restore = a second registry on the same store):");
    for t in tuning {
        println!(
            "  {:<8} tuned in {:>7.1} ms, restored in {:>6.2} ms; chosen {} (workspace {} B, largest candidate {} B)",
            t["case"].as_str().unwrap_or(""),
            number(&t["tuning_ms"]),
            number(&t["restore_ms"]),
            t["chosen"].as_str().unwrap_or(""),
            t["chosen_workspace_size"],
            t["max_candidate_workspace_size"],
        );
    }
}
