//! `lancet bench`: the compile report (every phase from process start to a ready forward pass,
//! summing to the wall time), steady-state time with and without CUDA-graph replay, achieved
//! TFLOP/s against the measured floor of the library calls, and device memory.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use lancet::session;
use lancet_compiler::lower::BufferKind;
use lancet_compiler::summary::summarize;
use serde::Serialize;

use super::model::Target;
use super::progress::Progress;
use super::run::{cuda_ordinal, open_device, RunArgs};
use super::table::{bytes, Table};

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
    /// Also print where the time goes, step kind by step kind (each step timed alone).
    #[arg(long)]
    pub profile: bool,
}

/// Median, min, max and standard deviation of a set of timings.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Stats {
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub std_ms: f64,
    pub runs: usize,
}

impl Stats {
    pub fn of(ms: &[f64]) -> Self {
        let mut sorted = ms.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len().max(1);
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        let mean = sorted.iter().sum::<f64>() / n as f64;
        let var = sorted.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        Stats {
            median_ms: median,
            min_ms: sorted[0],
            max_ms: sorted[n - 1],
            std_ms: var.sqrt(),
            runs: ms.len(),
        }
    }
}

/// Device memory, in bytes.
#[derive(Debug, Serialize)]
struct Memory {
    /// Device memory in use at the end of timing minus at device open, as the driver counts it
    /// (device-wide, so another process's allocations would count too): weights, arena,
    /// constants, library workspaces and plans, the CUDA graph. Nothing is freed before the end,
    /// so this is also the peak.
    peak_bytes: usize,
    weights_bytes: usize,
    arena_bytes: usize,
    /// What the activations would take without liveness-based sharing.
    unplanned_activation_bytes: usize,
    total_bytes: usize,
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    let start = Instant::now();
    let ms_since = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    args.run.check_output()?;
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    let model = args.run.compile.model.load(Target::Gpu)?;
    let model_ms = ms_since(start);
    let mut options = args.run.session_options();
    options.cuda_graph = true;
    // Compiling needs no context: it starts first (its NVRTC and the library loads on threads of
    // their own), and the device opens meanwhile.
    let startup = session::start(
        &model.graph,
        &model.data,
        &options,
        cuda_ordinal(args.run.device)?,
    )?;
    let t = Instant::now();
    let device = open_device(args.run.device)?;
    let device_ms = ms_since(t);
    let (used_at_open, total) = device.memory_used()?;
    let progress = Progress::new();
    let session = startup.finish(&device, &|p| progress.phase(p))?;
    let ready_ms = ms_since(start);

    progress.phase("timing CUDA-graph replay");
    let graph = Stats::of(&session.exe.time(args.warmup, args.runs, true)?);
    progress.phase("timing launch by launch");
    let eager = Stats::of(&session.exe.time(args.warmup, args.runs, false)?);
    progress.phase("timing each step alone");
    let steps = session.exe.profile(args.runs.min(20))?;
    let memory = Memory {
        peak_bytes: device.memory_used()?.0.saturating_sub(used_at_open),
        weights_bytes: session
            .compiled
            .plan
            .buffers
            .iter()
            .filter(|b| b.kind == BufferKind::Param)
            .map(|b| b.bytes())
            .sum(),
        arena_bytes: session.compiled.plan.arena_bytes,
        unplanned_activation_bytes: session.compiled.plan.unplanned_bytes,
        total_bytes: total,
    };
    if args.run.output.is_some() {
        progress.phase("writing the output");
        session.exe.poison_outputs()?;
        session.exe.run()?;
        args.run.write_output(&model.graph, &session.exe.outputs()?)?;
    }
    drop(progress);

    let mut by_kind: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for (kind, name, ms) in &steps {
        let key = match *kind {
            "kernel" => format!(
                "kernel {}",
                name.rsplit_once('_').map_or(name.as_str(), |(ops, _)| ops)
            ),
            other => other.to_string(),
        };
        let entry = by_kind.entry(key).or_default();
        entry.0 += 1;
        entry.1 += ms;
    }
    let floor_ms: f64 = steps
        .iter()
        // The library calls alone: a gated GEMM is lancet's own kernel doing a GEMM and glue.
        .filter(|(kind, _, _)| matches!(*kind, "gemm" | "attention"))
        .map(|(_, _, ms)| ms)
        .sum();
    let flops = summarize(&model.graph).flops.total();
    let tflops = |ms: f64| flops / (ms * 1e-3) / 1e12;

    let p = &session.compiled.phases;
    let rw = &session.compiled.report;
    let r = &session.ready;
    let cubins = session.compiled.cubins.as_ref().ok();
    let (kernels, cached) = cubins.map_or((0, 0), |c| {
        (c.kernels.len(), c.kernels.iter().filter(|k| k.cached).count())
    });
    let weights = if r.weights_on_device {
        "weight program compiled (weights are made on the device)"
    } else {
        "weights made on the host (the weight program did not compile)"
    };
    let mut phases: Vec<(String, f64)> = [
        ("model (graph build, checkpoint index)", model_ms),
        (
            "rewrite: e-graph and saturation",
            rw.translate_ms + rw.saturate_ms,
        ),
        ("rewrite: extraction", rw.extract_ms),
        ("lowering + codegen", p.lower_codegen_ms),
        ("device open (CUDA context)", device_ms),
        (weights, r.weights_ms),
        ("allocate", r.load.allocate_ms),
        (
            "weights to the device (checkpoint copied and converted, or drawn)",
            r.load.upload_ms,
        ),
        (
            "cuBLASLt set-up and GEMM selection, beyond what overlapped",
            r.gemm_setup_wait_ms,
        ),
        ("GEMM plan lookups", r.load.gemm_tuning_ms),
        (
            "attention plans (cuDNN), beyond what overlapped",
            r.attention_wait_ms + r.load.attention_plans_ms,
        ),
        ("NVRTC, beyond what overlapped", r.nvrtc_wait_ms),
        ("load cubins", r.load.modules_ms),
        ("calibrate + first pass", r.calibrate_ms),
        ("upload inputs", r.inputs_ms),
        ("CUDA graph capture", r.capture_ms),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let accounted: f64 = phases.iter().map(|(_, v)| v).sum();
    phases.push(("other (threads, bookkeeping)".into(), ready_ms - accounted));
    // From the rewrite to the cubins loaded, less the wait for the driver's cuInit, which the
    // device's opening waits for too.
    let own_ms = r.kernels_compiled_ms - r.arch_wait_ms + r.load.modules_ms;
    let nvrtc_note = format!(
        "on threads of their own, alongside the device's opening and the weights: NVRTC {:.1} ms ({kernels} kernels, \
         {cached} from the cache), cuDNN attention plans {:.1} ms, cuBLASLt set-up and GEMM selection {:.1} ms\n\
         lancet's own work, rewrite to cubins loaded: {own_ms:.1} ms (not counting {:.1} ms waiting for the driver's cuInit)",
        p.nvrtc_ms,
        r.attention_build_ms,
        r.gemm_setup_ms,
        r.arch_wait_ms
    );

    if args.run.json {
        let report = serde_json::json!({
            "model": model.title, "device": device.info().to_string(),
            "compile_phases_ms": phases.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
            "ready_ms": ready_ms,
            "nvrtc": {"kernels": kernels, "cached": cached, "ms": p.nvrtc_ms},
            "own_work_ms": own_ms, "arch_wait_ms": r.arch_wait_ms,

            "attention_plans_build_ms": r.attention_build_ms,
            "cublaslt_setup_ms": r.gemm_setup_ms,
            "steady_state": {"cuda_graph": graph, "eager": eager},
            "tflops": tflops(graph.median_ms),
            "library_floor_ms": floor_ms,
            "floor_share": floor_ms / graph.median_ms,
            "memory": memory,
            "kernel_launches": session.compiled.plan.kernel_launches(),
            "gemms": session.compiled.plan.gemms(), "gated_gemms": session.compiled.plan.gated_gemms(),
            "attention_calls": session.compiled.plan.attentions(),
            "profile_ms": by_kind.iter().map(|(k, (n, ms))| (k.clone(), serde_json::json!({"launches": n, "ms": ms}))).collect::<serde_json::Map<_, _>>(),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }

    println!("{} on {}\n", model.title, device.info());
    let mut t = Table::new(["compile phase (start to ready)", "ms", "share"]);
    for (k, v) in &phases {
        t.row([
            k.clone(),
            format!("{v:.1}"),
            format!("{:.1} %", 100.0 * v / ready_ms),
        ]);
    }
    t.row([
        "total, start to ready".to_string(),
        format!("{ready_ms:.1}"),
        "100 %".into(),
    ]);
    println!("{t}{nvrtc_note}\n");

    let mut s = Table::new(["steady state", "median ms", "min", "max", "std", "TFLOP/s"]);
    for (name, v) in [("CUDA graph replay", &graph), ("launch by launch", &eager)] {
        s.row([
            name.to_string(),
            format!("{:.3}", v.median_ms),
            format!("{:.3}", v.min_ms),
            format!("{:.3}", v.max_ms),
            format!("{:.3}", v.std_ms),
            format!("{:.0}", tflops(v.median_ms)),
        ]);
    }
    println!("{s}");
    println!(
        "library floor (GEMMs + attention, each timed alone): {floor_ms:.3} ms, {:.0} % of the replayed pass",
        100.0 * floor_ms / graph.median_ms
    );
    println!(
        "device memory: {} in use after timing, from device open (weights {}, activation arena {} of {} unplanned), of {}\n",
        bytes(memory.peak_bytes),
        bytes(memory.weights_bytes),
        bytes(memory.arena_bytes),
        bytes(memory.unplanned_activation_bytes),
        bytes(memory.total_bytes)
    );
    if args.profile {
        let mut t = Table::new([
            "where the time goes (steps timed alone)",
            "launches",
            "ms",
            "share of replay",
        ]);
        let mut total = 0.0;
        for (kind, (n, ms)) in &by_kind {
            total += ms;
            t.row([
                kind.clone(),
                n.to_string(),
                format!("{ms:.3}"),
                format!("{:.1} %", 100.0 * ms / graph.median_ms),
            ]);
        }
        let gaps = graph.median_ms - total;
        t.row([
            "sum of steps".to_string(),
            String::new(),
            format!("{total:.3}"),
            format!("{:.1} %", 100.0 * total / graph.median_ms),
        ]);
        t.row([
            "gaps (replay − sum)".to_string(),
            String::new(),
            format!("{gaps:.3}"),
            format!("{:.1} %", 100.0 * gaps / graph.median_ms),
        ]);
        println!("{t}");
    }
    Ok(())
}
