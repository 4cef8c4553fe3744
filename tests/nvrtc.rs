//! Every generated kernel of every preset, and the runtime's own weight-initialisation program,
//! compiles with NVRTC for sm_90a, without register spills. NVRTC runs without a GPU, so CI runs this on every change.
//!
//! Own harness (libtest-mimic): where NVRTC is not installed the trials are reported *ignored*
//! with the reason — except under `CI`, where a missing NVRTC is a failure, since CI installs it.

use std::collections::BTreeMap;

use lancet_compiler::codegen::gated_gemm::{self, Epilogue, GatedGemmSpec};
use lancet_compiler::codegen::Kernel;
use lancet_compiler::ir::{DType, GateAct};
use lancet_compiler::lower::{lower_with, LowerOptions};
use lancet_compiler::models::{AttentionPrecision, LlamaConfig, Precision, PRESETS};
use lancet_compiler::rewrite::{optimize, Options};
use lancet_runtime::exec::InitSource;
use lancet_runtime::jit::{self, CudaSource, JitOptions};
use libtest_mimic::{Arguments, Failed, Trial};

/// The unique kernels of every preset (2 layers; fp8 and bf16; fusion on and off; as bare layer
/// stacks and as full models with an embedding; fusion with and without the gated GEMM),
/// by name, with the configurations that use each.
fn all_kernels() -> BTreeMap<String, (Kernel, Vec<String>)> {
    let mut kernels: BTreeMap<String, (Kernel, Vec<String>)> = BTreeMap::new();
    for name in PRESETS {
        // FP8 linears with FP8 attention, with bf16 attention (where cuDNN cannot do FP8), and bf16.
        for (precision, attention) in [
            (Precision::Fp8, AttentionPrecision::Fp8),
            (Precision::Fp8, AttentionPrecision::Bf16),
            (Precision::Bf16, AttentionPrecision::Bf16),
        ] {
            for (fusion, gated_gemm, vocab) in [
                (true, false, None),
                (true, true, None),
                (false, false, None),
                (true, false, Some(1000)),
                (false, false, Some(1000)),
            ] {
                let mut c = LlamaConfig::preset(name).expect("preset exists");
                c.layers = 2;
                c.precision = precision;
                c.attention = attention;
                c.vocab = vocab;
                c.final_norm = vocab.is_some();
                let graph = c.build().expect("presets build");
                let (optimized, _) = optimize(
                    &graph,
                    &Options {
                        fusion,
                        gated_gemm,
                        ..Options::default()
                    },
                )
                .expect("rewrites");
                let plan = lower_with(
                    &optimized,
                    &LowerOptions {
                        merge_launches: fusion,
                        ..LowerOptions::default()
                    },
                )
                .expect("lowers");
                let config = format!(
                    "{name} {precision:?} attention {attention:?} fusion {}{}",
                    if fusion { "on" } else { "off" },
                    if gated_gemm { " gated GEMM" } else { "" }
                );
                for k in plan.kernels {
                    kernels
                        .entry(k.name.clone())
                        .or_insert_with(|| (k, Vec::new()))
                        .1
                        .push(config.clone());
                }
            }
        }
    }
    // The gated GEMM variants lowering does not choose: the multicast one (no faster on the
    // H100), the staged epilogue (not yet timed), and both together.
    for (cluster, epilogue) in [
        (2, Epilogue::Registers),
        (1, Epilogue::Staged),
        (2, Epilogue::Staged),
    ] {
        let spec = GatedGemmSpec {
            act: GateAct::Silu,
            mid: DType::BF16,
            out: DType::F8E4M3,
            cluster,
            epilogue,
        };
        let k = gated_gemm::generate(spec, Vec::new());
        let what = format!("gated GEMM, clusters of {cluster}, {epilogue} epilogue");
        kernels.insert(k.name.clone(), (k, vec![what]));
    }
    kernels
}

/// One trial: `source` compiles for sm_90a with a ptxas report and no spills.
fn trial<S: CudaSource + Send + 'static>(
    name: String,
    source: S,
    used_by: String,
    available: &Result<(), String>,
) -> Trial {
    let ignored = std::env::var_os("CI").is_none() && available.is_err();
    let available = available.clone();
    Trial::test(format!("sm_90a/{name}"), move || {
        if let Err(why) = available {
            return Err(Failed::from(format!("CI must compile every kernel, but {why}")));
        }
        let opts = JitOptions {
            arch: "sm_90a".into(),
            cache: false,
            deny_spills: true,
        };
        let compiled = jit::compile(std::slice::from_ref(&source), &opts)
            .map_err(|e| Failed::from(format!("{e}\n(used by: {used_by})")))?;
        if compiled.kernels[0].report.registers == 0 {
            return Err(Failed::from(
                "the ptxas report is missing from NVRTC's log".to_string(),
            ));
        }
        Ok(())
    })
    .with_ignored_flag(ignored)
}

fn main() {
    let args = Arguments::from_args();
    let available = jit::toolkit::locate().map(|_| ()).map_err(|e| e.to_string());
    let mut trials: Vec<Trial> = all_kernels()
        .into_iter()
        .map(|(name, (kernel, configs))| trial(name, kernel, configs.join("; "), &available))
        .collect();
    // The runtime's own program: random weights drawn on the GPU.
    trials.push(trial(
        "lancet_init".into(),
        InitSource,
        "random weights".into(),
        &available,
    ));
    if let (Err(why), false) = (&available, std::env::var_os("CI").is_some()) {
        eprintln!("nvrtc tests: SKIPPED ({} kernels ignored): {why}", trials.len());
    }
    libtest_mimic::run(&args, trials).exit();
}
