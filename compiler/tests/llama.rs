//! The Llama builder: presets, structure, FLOP counts and an end-to-end reference run.

use lancet_compiler::ir::{Graph, Op};
use lancet_compiler::models::{LlamaConfig, MlpKind, NormKind, Precision};
use lancet_compiler::reference::{evaluate, rel_l2, Bindings};
use lancet_compiler::rewrite::{optimize, Options};
use lancet_compiler::summary::summarize;
use lancet_compiler::weights::{random_inputs, random_params};

fn count(graph: &Graph, pred: impl Fn(&Op) -> bool) -> usize {
    graph.nodes().filter(|(_, n)| pred(&n.op)).count()
}

#[test]
fn headline_flops_match_an_independent_count() {
    let mut c = LlamaConfig::preset("llama-3.2-1b").unwrap();
    c.layers = 8;
    let graph = c.build().unwrap();
    let s = summarize(&graph);
    // Counted by hand from the shapes: 4096 tokens through four projections, and causal
    // attention at half of 4·B·H·S²·D.
    let m = 4096.0;
    let linear_per_layer = 2.0 * m * (2048.0 * 3072.0 + 2048.0 * 2048.0 + 2048.0 * 16384.0 + 8192.0 * 2048.0);
    let attention_per_layer = 4.0 * 2.0 * 32.0 * 2048.0 * 2048.0 * 64.0 / 2.0;
    assert_eq!(s.flops.linear, 8.0 * linear_per_layer);
    assert_eq!(s.flops.attention, 8.0 * attention_per_layer);
    let total = s.flops.total();
    assert!(
        (total / 4.26e12 - 1.0).abs() < 0.005,
        "total {total:e} is not ≈ 4.26 TFLOP"
    );
    // Epilogues move no GEMM FLOPs: the gated GEMM counts the whole gate/up projection.
    let (optimized, _) = optimize(&graph, &Options::default()).unwrap();
    assert_eq!(summarize(&optimized).flops.linear, s.flops.linear);
}

#[test]
fn llama_layer_structure() {
    let mut c = LlamaConfig::preset("llama-3.2-1b").unwrap();
    c.layers = 3;
    let g = c.build().unwrap();
    assert_eq!(count(&g, |op| matches!(op, Op::Linear { .. })), 3 * 4);
    assert_eq!(
        count(&g, |op| matches!(op, Op::Fp8Attention { causal: true, .. })),
        3
    );
    assert_eq!(count(&g, |op| matches!(op, Op::Rope { .. })), 3 * 2);
    // Before the QKV, gate/up and down projections, and Q, K and V before attention (whose
    // output leaves quantized for the output projection).
    assert_eq!(count(&g, |op| matches!(op, Op::Quantize { .. })), 3 * 6);
    assert_eq!(count(&g, |op| matches!(op, Op::RmsNorm { .. })), 3 * 2);
    // GQA: K and V reach attention with 8 heads, Q with 32.
    let (id, _) = g
        .nodes()
        .find(|(_, n)| matches!(n.op, Op::Fp8Attention { .. }))
        .unwrap();
    let shapes: Vec<Vec<usize>> = g.operands(id)[..3]
        .iter()
        .map(|&o| g.node(o).ty.shape.dims().to_vec())
        .collect();
    assert_eq!(
        shapes,
        vec![vec![2, 32, 2048, 64], vec![2, 8, 2048, 64], vec![2, 8, 2048, 64]]
    );
    for name in [
        "layers.2.self_attn.qkv_proj.weight",
        "layers.2.self_attn.qkv_proj.weight_scale",
        "layers.2.self_attn.qkv_proj.input_scale",
        "layers.2.mlp.gate_up_proj.weight",
        "layers.2.mlp.down_proj.weight",
        "layers.2.post_attention_layernorm.weight",
    ] {
        assert!(g.binding(name).is_some(), "missing param {name}");
    }
}

#[test]
fn seed_te_is_mha_layernorm_gelu() {
    let c = LlamaConfig::preset("seed-te").unwrap();
    assert_eq!(
        (c.heads, c.kv_heads, c.norm, c.mlp),
        (32, 32, NormKind::Layer, MlpKind::Gelu)
    );
    let mut c = c;
    c.layers = 1;
    let g = c.build().unwrap();
    let qkv = g.binding("layers.0.self_attn.qkv_proj.weight").unwrap();
    assert_eq!(
        g.node(qkv).ty.shape.dims(),
        &[3 * 2048, 2048],
        "one 3×hidden QKV projection"
    );
    assert_eq!(count(&g, |op| matches!(op, Op::LayerNorm { .. })), 2);
    assert_eq!(count(&g, |op| matches!(op, Op::Gelu { .. })), 1);
    assert_eq!(count(&g, |op| matches!(op, Op::Silu)), 0);
}

fn run(config: &LlamaConfig, seed: u64) -> Vec<f32> {
    let g = config.build().unwrap();
    let mut bindings: Bindings = random_params(&g, seed).unwrap();
    bindings.extend(random_inputs(&g, seed + 1));
    let out = evaluate(&g, &bindings).unwrap();
    out["last_hidden_state"].data.clone()
}

#[test]
fn tiny_model_runs_and_fp8_tracks_bf16() {
    let c = LlamaConfig::preset("tiny").unwrap();
    let bf16 = run(&c.clone().with_precision(Precision::Bf16), 7);
    assert!(bf16.iter().all(|x| x.is_finite()));
    assert_eq!(
        bf16,
        run(&c.clone().with_precision(Precision::Bf16), 7),
        "evaluation is deterministic"
    );
    // FP8 linears and FP8 attention.
    let fp8 = run(&c, 7);
    // FP8 weights are the same Normal draws quantized, so the two precisions compute nearly the
    // same function; e4m3's 3 mantissa bits bound the difference well below 10%.
    let err = rel_l2(&fp8, &bf16);
    assert!(err > 0.0 && err < 0.1, "fp8 vs bf16 rel L2 {err}");
}

#[test]
fn full_model_embeds_ids_and_applies_final_norm() {
    let mut c = LlamaConfig::preset("tiny").unwrap();
    c.vocab = Some(50);
    c.final_norm = true;
    let g = c.build().unwrap();
    assert!(g.binding("input_ids").is_some() && g.binding("norm.weight").is_some());
    let out = run(&c, 3);
    // The final RMSNorm with unit gain leaves every row with mean square 1 / (1 + eps / ms_in):
    // just under 1, since the random embedding rows (std 0.02) have ms_in ≈ 4e-4 against eps 1e-5.
    for row in out.chunks(c.hidden) {
        let ms = row.iter().map(|x| x * x).sum::<f32>() / row.len() as f32;
        assert!(ms > 0.9 && ms < 1.01, "row mean square {ms}");
    }
}
