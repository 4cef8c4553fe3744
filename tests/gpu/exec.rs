//! Whole plans on the GPU against the reference interpreter: every generated kernel kind on its
//! own, and complete models (tiny, and Llama-3.2-1B at 1–2 layers and a short sequence) in bf16
//! and FP8. Outputs are poisoned with NaN before each run; inputs and weights are fresh each run
//! (the support module's seed).

use lancet::pipeline::CompileOptions;
use lancet::session::{open, Data, SessionOptions};
use lancet_compiler::ir::{Builder, DType, GeluApprox, Graph, Init, RopeStyle};
use lancet_compiler::models::{AttentionPrecision, LlamaConfig, Precision};
use lancet_compiler::reference::{evaluate, Bindings};
use lancet_compiler::rewrite::Options;
use lancet_runtime::attention::fp8_attention_blocker;
use libtest_mimic::{Completion, Failed, Trial};

use crate::support::{device, fail, gpu_present, gpu_trial, seed, within};

/// Runs `graph` on the GPU (fusion on or off) and checks every output against the reference
/// interpreter evaluated with the same parameters (calibrated scales included) and inputs.
fn check(graph: &Graph, fusion: bool, tolerance: f64) -> Result<usize, Failed> {
    let rewrite = Options {
        fusion,
        ..Options::default()
    };
    check_with(graph, &rewrite, false, tolerance)
}

/// [`check`], choosing the FP8 GEMMs' accumulation. The reference sums in f32; fast accumulation
/// sums differently, and each later FP8 quantization turns such small differences into whole
/// e4m3 steps for the values they push across a rounding boundary. Returns how many gated GEMMs
/// the plan ran, for checks that are about them.
pub fn check_with(
    graph: &Graph,
    rewrite: &Options,
    fast_accum: bool,
    tolerance: f64,
) -> Result<usize, Failed> {
    let compile = CompileOptions {
        rewrite: rewrite.clone(),
        ..CompileOptions::default()
    };
    check_compiled(graph, compile, fast_accum, tolerance)
}

/// [`check_with`], with every compile option chosen.
pub fn check_compiled(
    graph: &Graph,
    compile: CompileOptions,
    fast_accum: bool,
    tolerance: f64,
) -> Result<usize, Failed> {
    let device = device()?;
    let fusion = compile.rewrite.fusion;
    let options = SessionOptions {
        compile,
        seed: seed(),
        calibration_passes: 2,
        cuda_graph: true,
        fast_accum,
    };
    let session =
        open(device, graph, &Data::default(), &options, &|_| ()).map_err(|e| fail(format!("{e:#}")))?;
    session.exe.poison_outputs().map_err(fail)?;
    session.exe.run().map_err(fail)?;
    let got = session.exe.outputs().map_err(fail)?;
    let mut bindings: Bindings = session.params().map_err(|e| fail(format!("{e:#}")))?;
    bindings.extend(session.inputs.clone());
    let want = evaluate(graph, &bindings).map_err(fail)?;
    let mut report = Vec::new();
    for (name, w) in &want {
        let what = format!(
            "{name} (fusion {fusion}; {} launches)",
            session.compiled.plan.kernel_launches()
        );
        let err = within(&what, &got[name].data, &w.data, tolerance)?;
        report.push(format!("{name} rel L2 {err:.2e}"));
    }
    let gated_gemms = session.compiled.plan.gated_gemms();
    eprintln!(
        "check exec {}; fusion {fusion}; gated GEMMs {gated_gemms}; fast accumulation {fast_accum}",
        report.join(", "),
    );
    Ok(gated_gemms)
}

type Build = fn(&mut Builder) -> lancet_compiler::ir::Tensor;

/// Small graphs, one per generated-kernel kind (and the layouts that change its code path).
fn kernel_cases() -> Vec<(&'static str, Build, f64)> {
    vec![
        (
            "rms_norm_quantize_dequantize",
            |b| {
                let x = b.input("x", DType::BF16, [2, 8, 2048]).unwrap();
                let g = b.param("g", DType::BF16, [2048], Init::normal(1.0)).unwrap();
                let s = b.param("s", DType::F32, [], Init::constant(1.0 / 64.0)).unwrap();
                let n = b.rms_norm(x, g, 1e-5).unwrap();
                let q = b.quantize(n, s, DType::F8E4M3).unwrap();
                b.dequantize(q, s, DType::BF16).unwrap()
            },
            3e-2,
        ),
        (
            "layer_norm_odd_row",
            |b| {
                let x = b.input("x", DType::BF16, [3, 5, 100]).unwrap();
                let g = b.param("g", DType::BF16, [100], Init::normal(1.0)).unwrap();
                let beta = b.param("b", DType::BF16, [100], Init::normal(1.0)).unwrap();
                b.layer_norm(x, g, beta, 1e-5).unwrap()
            },
            1e-2,
        ),
        (
            "rope_neox_from_packed_qkv",
            |b| {
                let qkv = b.input("qkv", DType::BF16, [2, 64, 6 * 64]).unwrap();
                let k = b.slice(qkv, 2, 256, 320).unwrap();
                let k = b.reshape(k, [2, 64, 1, 64]).unwrap();
                b.rope(k, RopeStyle::Neox, 500_000.0, 64, None).unwrap()
            },
            1e-2,
        ),
        (
            "rope_gptj_partial",
            |b| {
                let x = b.input("x", DType::BF16, [1, 33, 4, 48]).unwrap();
                b.rope(x, RopeStyle::Gptj, 10_000.0, 32, None).unwrap()
            },
            1e-2,
        ),
        (
            "swiglu_quantize",
            |b| {
                let gu = b.input("gu", DType::BF16, [2, 16, 2 * 512]).unwrap();
                let s = b.param("s", DType::F32, [], Init::constant(1.0 / 64.0)).unwrap();
                let parts = b.split(gu, 2, &[512, 512]).unwrap();
                let a = b.silu(parts[0]).unwrap();
                let m = b.mul(a, parts[1]).unwrap();
                let q = b.quantize(m, s, DType::F8E4M3).unwrap();
                b.dequantize(q, s, DType::F32).unwrap()
            },
            3e-2,
        ),
        (
            "gelu_mul_add_cast_unaligned",
            |b| {
                let x = b.input("x", DType::BF16, [7, 19]).unwrap();
                let y = b.input("y", DType::BF16, [7, 19]).unwrap();
                let bias = b.param("bias", DType::BF16, [19], Init::normal(1.0)).unwrap();
                let g = b.gelu(x, GeluApprox::None).unwrap();
                let m = b.mul(g, y).unwrap();
                let a = b.add(m, bias).unwrap();
                b.cast(a, DType::F32).unwrap()
            },
            1e-2,
        ),
        (
            "merge_heads_permute_quantize",
            |b| {
                let o = b.input("o", DType::BF16, [2, 4, 16, 64]).unwrap();
                let s = b.param("s", DType::F32, [], Init::constant(1.0 / 64.0)).unwrap();
                let t = b.permute(o, [0, 2, 1, 3]).unwrap();
                let t = b.reshape(t, [2, 16, 256]).unwrap();
                let q = b.quantize(t, s, DType::F8E4M3).unwrap();
                b.dequantize(q, s, DType::F32).unwrap()
            },
            3e-2,
        ),
        (
            "embedding_and_concat",
            |b| {
                let table = b
                    .param("table", DType::BF16, [50, 64], Init::normal(1.0))
                    .unwrap();
                let ids = b.input("ids", DType::I32, [2, 9]).unwrap();
                let e = b.embedding(table, ids).unwrap();
                let x = b.input("x", DType::BF16, [2, 9, 8]).unwrap();
                b.concat(&[e, x], 2).unwrap()
            },
            1e-6,
        ),
    ]
}

fn kernel_case(build: Build, tolerance: f64, fusion: bool) -> Result<(), Failed> {
    let mut b = Builder::new();
    let out = build(&mut b);
    b.output("out", out).map_err(fail)?;
    check(&b.finish(), fusion, tolerance).map(|_| ())
}

/// The precision of a model's linears and attention.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    Bf16,
    /// FP8 linears, bf16 attention (with the attention-output quantize pass).
    Fp8Linears,
    /// FP8 linears and FP8 attention.
    Fp8,
}

pub fn model(name: &str, layers: usize, batch: usize, seq: usize, mode: Mode, vocab: Option<usize>) -> Graph {
    let mut c = LlamaConfig::preset(name).expect("preset");
    c.layers = layers;
    c.batch = batch;
    c.seq = seq;
    c = c.with_precision(match mode {
        Mode::Bf16 => Precision::Bf16,
        Mode::Fp8Linears | Mode::Fp8 => Precision::Fp8,
    });
    c.attention = match mode {
        Mode::Fp8 => AttentionPrecision::Fp8,
        Mode::Bf16 | Mode::Fp8Linears => AttentionPrecision::Bf16,
    };
    c.vocab = vocab;
    c.final_norm = vocab.is_some();
    c.build().expect("builds")
}

/// A GPU test of FP8 attention: reported ignored, with the reason, where the cuDNN at hand is
/// one known to compute FP8 attention wrongly (lancet would refuse the plan at its self-check).
fn fp8_attention_trial(
    name: String,
    mode: Mode,
    test: impl FnOnce() -> Result<(), Failed> + Send + 'static,
) -> Trial {
    if !matches!(mode, Mode::Fp8) {
        return gpu_trial(name, test);
    }
    Trial::ignorable_test(name, move || {
        if let Err(reason) = gpu_present() {
            return Ok(Completion::ignored_with(reason));
        }
        match fp8_attention_blocker() {
            None => test().map(|()| Completion::Completed),
            Some(why) => Ok(Completion::ignored_with(why)),
        }
    })
}

pub fn trials() -> Vec<Trial> {
    let mut trials = Vec::new();
    for (name, build, tolerance) in kernel_cases() {
        for fusion in [true, false] {
            let label = format!(
                "exec::kernel::{name}::fusion_{}",
                if fusion { "on" } else { "off" }
            );
            trials.push(gpu_trial(label, move || kernel_case(build, tolerance, fusion)));
        }
    }
    // Whole models: bf16 ≤ 2e-2, FP8 ≤ 3e-2 against a reference that quantizes identically.
    // (label, preset, layers, batch, seq, mode, vocab, tolerance)
    type Model = (
        &'static str,
        &'static str,
        usize,
        usize,
        usize,
        Mode,
        Option<usize>,
        f64,
    );
    #[rustfmt::skip]
    let models: Vec<Model> = vec![
        ("tiny_bf16", "tiny", 2, 2, 16, Mode::Bf16, None, 2e-2),
        ("tiny_fp8_linears", "tiny", 2, 2, 16, Mode::Fp8Linears, None, 3e-2),
        ("tiny_fp8", "tiny", 2, 2, 16, Mode::Fp8, None, 3e-2),
        ("tiny_full_model_fp8", "tiny", 2, 2, 16, Mode::Fp8, Some(100), 3e-2),
        ("seed_te_1_layer_fp8_linears_seq64", "seed-te", 1, 1, 64, Mode::Fp8Linears, None, 3e-2),
        ("seed_te_1_layer_fp8_seq64", "seed-te", 1, 1, 64, Mode::Fp8, None, 3e-2),
        ("llama_1b_1_layer_bf16_seq64", "llama-3.2-1b", 1, 1, 64, Mode::Bf16, None, 2e-2),
        ("llama_1b_1_layer_fp8_linears_seq64", "llama-3.2-1b", 1, 1, 64, Mode::Fp8Linears, None, 3e-2),
        ("llama_1b_1_layer_fp8_seq64", "llama-3.2-1b", 1, 1, 64, Mode::Fp8, None, 3e-2),
        // Two layers quantize eight times, and any difference that moves a value across an e4m3
        // rounding boundary costs a whole e4m3 step (6 %) and spreads through the next GEMM.
        // cuDNN's attention is 1.8e-3 from the reference (its bf16 probabilities are rounded
        // with a running maximum); in the reference alone, perturbing every GEMM output by 1e-6
        // already moves the 2-layer output by 2.0-2.7e-2, and bf16 probabilities by 3.9e-2. So
        // 3e-2 is below what a non-bit-exact implementation can promise here. Measured 4.1e-2
        // with exact and 4.2e-2 with fast accumulation on the H100; bounded at 6e-2.
        ("llama_1b_2_layers_fp8_linears_seq64", "llama-3.2-1b", 2, 1, 64, Mode::Fp8Linears, None, 6e-2),
        ("llama_1b_2_layers_fp8_seq64", "llama-3.2-1b", 2, 1, 64, Mode::Fp8, None, 6e-2),
    ];
    for (label, preset, layers, batch, seq, mode, vocab, tolerance) in models {
        for fusion in [true, false] {
            let name = format!(
                "exec::model::{label}::fusion_{}",
                if fusion { "on" } else { "off" }
            );
            trials.push(fp8_attention_trial(name, mode, move || {
                check(&model(preset, layers, batch, seq, mode, vocab), fusion, tolerance).map(|_| ())
            }));
        }
    }
    // The benchmark's configuration: FP8 GEMMs with fast accumulation.
    for (label, mode) in [("fp8_linears", Mode::Fp8Linears), ("fp8", Mode::Fp8)] {
        let name = format!("exec::model::llama_1b_2_layers_{label}_seq64::fast_accumulation");
        trials.push(fp8_attention_trial(name, mode, move || {
            let graph = model("llama-3.2-1b", 2, 1, 64, mode, None);
            check_with(&graph, &Options::default(), true, 6e-2).map(|_| ())
        }));
    }
    for (label, precision) in [("fp8", Precision::Fp8), ("bf16", Precision::Bf16)] {
        trials.push(gpu_trial(
            format!("exec::random_weights_drawn_on_the_gpu::{label}"),
            move || random_weights_match_the_host(precision),
        ));
        trials.push(gpu_trial(
            format!("exec::checkpoint_converted_on_the_gpu::{label}"),
            move || checkpoint_weights_match_the_host(precision),
        ));
    }
    trials
}

/// The committed tiny transformers checkpoint, its weights copied as stored (bf16) and converted
/// on the GPU: every param equals the host's conversion exactly (the same widening, division by
/// the same scale and rounding), and the model reproduces transformers' output.
fn checkpoint_weights_match_the_host(precision: Precision) -> Result<(), Failed> {
    use lancet_compiler::checkpoint::{read_all, Checkpoint};
    let device = device()?;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
    let checkpoint = Checkpoint::open(&dir).map_err(fail)?;
    let mut inputs = read_all(&dir.join("inputs.safetensors")).map_err(fail)?;
    let ids = inputs.remove("input_ids").expect("the fixture has input ids");
    let [batch, seq] = ids.shape.dims().try_into().expect("[batch, seq]");
    let config = checkpoint
        .llama(None, [batch, seq], true, precision, DType::BF16)
        .map_err(fail)?;
    let graph = config.build().map_err(fail)?;
    let want = checkpoint.params(&graph).map_err(fail)?;
    let data = Data {
        checkpoint: Some(std::sync::Arc::new(checkpoint)),
        inputs: Some([("input_ids".to_string(), ids)].into_iter().collect()),
    };
    let options = SessionOptions {
        compile: CompileOptions::default(),
        seed: seed(),
        calibration_passes: 2,
        cuda_graph: false,
        fast_accum: true,
    };
    let session = open(device, &graph, &data, &options, &|_| ()).map_err(|e| fail(format!("{e:#}")))?;
    if !session.ready.weights_on_device {
        return Err(fail(
            "the checkpoint was converted on the host, not on the device",
        ));
    }
    let got = session.params().map_err(|e| fail(format!("{e:#}")))?;
    // Activation scales are calibrated on the device; everything else is the checkpoint's.
    for (name, w) in want.iter().filter(|(n, _)| !n.ends_with("input_scale")) {
        within(&format!("param {name}"), &got[name].data, &w.data, 0.0)?;
    }
    session.exe.poison_outputs().map_err(fail)?;
    session.exe.run().map_err(fail)?;
    let out = session.exe.outputs().map_err(fail)?;
    let expected = read_all(&dir.join("expected.safetensors")).map_err(fail)?;
    // bf16 ≤ 2e-2 against transformers' f32 output. FP8 at this size measured 1.4e-1 (every
    // activation and weight in e4m3 with per-tensor scales): bounded at 2e-1, a check that the
    // converted FP8 weights compute the same model, not a precision claim.
    let bound = if precision == Precision::Fp8 { 2e-1 } else { 2e-2 };
    let err = within(
        "last_hidden_state vs transformers",
        &out["last_hidden_state"].data,
        &expected["last_hidden_state"].data,
        bound,
    )?;
    eprintln!(
        "check exec checkpoint {precision:?}: {} params exact; output rel L2 {err:.2e} vs transformers",
        want.len()
    );
    Ok(())
}

/// Weights drawn on the GPU (`templates/init.cu`) are the host generator's draws: the same
/// streams and formulas, differing only where the GPU's `logf`/`sincosf` round differently in the
/// last bit, which can move an FP8 value by one step. Every param is compared: bound 1e-3.
fn random_weights_match_the_host(precision: Precision) -> Result<(), Failed> {
    let device = device()?;
    let mode = match precision {
        Precision::Fp8 => Mode::Fp8Linears,
        Precision::Bf16 => Mode::Bf16,
    };
    let graph = model("llama-3.2-1b", 1, 1, 16, mode, Some(1000));
    let options = SessionOptions {
        compile: CompileOptions::default(),
        seed: seed(),
        calibration_passes: 0,
        cuda_graph: false,
        fast_accum: true,
    };
    let session =
        open(device, &graph, &Data::default(), &options, &|_| ()).map_err(|e| fail(format!("{e:#}")))?;
    if !session.ready.weights_on_device {
        return Err(fail("the weights were made on the host, not drawn on the device"));
    }
    let got = session.params().map_err(|e| fail(format!("{e:#}")))?;
    let want = lancet_compiler::weights::random_params(&graph, seed()).map_err(fail)?;
    let mut worst = (0.0, String::new());
    for (name, w) in &want {
        let err = within(&format!("param {name}"), &got[name].data, &w.data, 1e-3)?;
        if err > worst.0 {
            worst = (err, name.clone());
        }
    }
    eprintln!(
        "check exec random weights {precision:?}: {} params, worst rel L2 {:.2e} ({})",
        want.len(),
        worst.0,
        worst.1
    );
    Ok(())
}
