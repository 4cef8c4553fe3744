//! lancet's own FP8 GEMM with the gated-linear epilogue (`templates/gated_gemm.cu.tera`) against
//! the reference interpreter: shapes that leave partial tiles in every dimension (rows, output
//! columns, K shorter than one 128-byte stage), both gate activations and the headline's MLP
//! width, each with the epilogue in registers and staged through shared memory; whole models
//! with the rule on, and, as the rule is on by default, one with it off (the cuBLASLt GEMM and
//! the fused SwiGLU kernel it replaces). Outputs are poisoned with NaN first (see
//! `exec::check_compiled`), and each check with the rule on fails when the plan has no gated
//! GEMM to exercise.

use lancet::pipeline::CompileOptions;
use lancet_compiler::codegen::gated_gemm::Epilogue;
use lancet_compiler::ir::{Builder, DType, GeluApprox, Graph, Init, Tensor};
use lancet_compiler::rewrite::Options;
use libtest_mimic::{Failed, Trial};

use crate::exec::{check_compiled, model, Mode};
use crate::support::{fail, gpu_trial};

/// Checks `graph` with fusion and the gated-linear rule on or off (spelled out: the checks must
/// not depend on the default) and the gated GEMM's epilogue where `epilogue` says, failing when
/// the plan has gated GEMMs and should not, or has none and so would not exercise the kernel.
fn check_gated(
    graph: &Graph,
    on: bool,
    epilogue: Epilogue,
    fast_accum: bool,
    tolerance: f64,
) -> Result<(), Failed> {
    let compile = CompileOptions {
        rewrite: Options {
            gated_gemm: on,
            ..Options::default()
        },
        gated_epilogue: epilogue,
        ..CompileOptions::default()
    };
    match (on, check_compiled(graph, compile, fast_accum, tolerance)?) {
        (true, 0) => Err(fail(
            "the plan has no gated GEMM: the check would not exercise it",
        )),
        (false, n) if n > 0 => Err(fail(format!("gated GEMM switched off, but the plan has {n}"))),
        _ => Ok(()),
    }
}

/// `dequantize(quantize(act(y[.., :f]) · y[.., f:]))` of an FP8 linear `y` over `x [rows, k]`.
fn glu(b: &mut Builder, rows: usize, k: usize, f: usize, gelu: bool) -> Tensor {
    let x = b.input("x", DType::BF16, [1, rows, k]).unwrap();
    let x_scale = b
        .param("x_scale", DType::F32, [], Init::constant(1.0 / 64.0))
        .unwrap();
    let xq = b.quantize(x, x_scale, DType::F8E4M3).unwrap();
    let w = b
        .param("w", DType::F8E4M3, [2 * f, k], Init::normal(0.02))
        .unwrap();
    let w_scale = b
        .param("w_scale", DType::F32, [], Init::ScaleOf { weight: "w".into() })
        .unwrap();
    let y = b.linear_fp8(xq, w, x_scale, w_scale, DType::BF16).unwrap();
    let parts = b.split(y, 2, &[f, f]).unwrap();
    let gate = if gelu {
        b.gelu(parts[0], GeluApprox::Tanh).unwrap()
    } else {
        b.silu(parts[0]).unwrap()
    };
    let h = b.mul(gate, parts[1]).unwrap();
    let s = b
        .param("h_scale", DType::F32, [], Init::constant(1.0 / 64.0))
        .unwrap();
    let q = b.quantize(h, s, DType::F8E4M3).unwrap();
    b.dequantize(q, s, DType::F32).unwrap()
}

fn kernel_case(rows: usize, k: usize, f: usize, gelu: bool, epilogue: Epilogue) -> Result<(), Failed> {
    let mut b = Builder::new();
    let out = glu(&mut b, rows, k, f, gelu);
    b.output("out", out).map_err(fail)?;
    // One FP8 GEMM whose output is quantized again: as the fused SwiGLU kernel's test.
    check_gated(&b.finish(), true, epilogue, false, 3e-2)
}

pub fn trials() -> Vec<Trial> {
    // (label, rows, k, f, gelu)
    #[rustfmt::skip]
    let kernels: [(&str, usize, usize, usize, bool); 5] = [
        ("silu_ragged_k96", 100, 96, 200, false),
        ("silu_ragged_f", 130, 256, 130, false),
        ("gelu_tanh", 300, 512, 384, true),
        ("silu_one_tile", 128, 128, 128, false),
        ("silu_headline_mlp", 256, 2048, 8192, false),
    ];
    let mut trials = Vec::new();
    for epilogue in [Epilogue::Registers, Epilogue::Staged] {
        for (label, rows, k, f, gelu) in kernels {
            trials.push(gpu_trial(
                format!("gated_gemm::kernel::{epilogue}::{label}"),
                move || kernel_case(rows, k, f, gelu, epilogue),
            ));
        }
    }
    // Whole models, bounded as the fast-accumulation model checks are (the kernel sums its FP8
    // products in the tensor cores' accumulator, as cuBLASLt's fast accumulation does).
    #[rustfmt::skip]
    let models: [(&str, &str, usize, usize, f64); 3] = [
        ("tiny", "tiny", 2, 16, 3e-2),
        ("llama_1b_1_layer_seq64", "llama-3.2-1b", 1, 64, 3e-2),
        ("llama_1b_2_layers_seq64", "llama-3.2-1b", 2, 64, 6e-2),
    ];
    for (label, preset, layers, seq, tolerance) in models {
        trials.push(gpu_trial(format!("gated_gemm::model::{label}"), move || {
            // bf16 attention: these checks are about the GEMM, and FP8 attention needs a cuDNN
            // that not every machine has.
            let graph = model(preset, layers, 2, seq, Mode::Fp8Linears, None);
            check_gated(&graph, true, Epilogue::Registers, true, tolerance)
        }));
    }
    trials.push(gpu_trial(
        "gated_gemm::model::llama_1b_2_layers_seq64_staged",
        || {
            let graph = model("llama-3.2-1b", 2, 2, 64, Mode::Fp8Linears, None);
            check_gated(&graph, true, Epilogue::Staged, true, 6e-2)
        },
    ));
    trials.push(gpu_trial(
        "gated_gemm::model::llama_1b_2_layers_seq64_without",
        || {
            let graph = model("llama-3.2-1b", 2, 2, 64, Mode::Fp8Linears, None);
            check_gated(&graph, false, Epilogue::Registers, true, 6e-2)
        },
    ));
    trials
}
