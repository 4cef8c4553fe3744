//! Rewriting and lowering: semantics preserved (the reference interpreter is the oracle),
//! fusion achieved (kernel counts pinned on the plan, as tinygrad's tests count kernels), and a
//! few anchored lines of every kernel kind's generated source.

use lancet_compiler::codegen::gated_gemm::Epilogue;
use lancet_compiler::codegen::{GatedGemmSpec, Generated};
use lancet_compiler::ir::{Builder, DType, GateAct, GeluApprox, Graph, Init, Op, RopeStyle, Tensor};
use lancet_compiler::lower::{lower, lower_with, LowerOptions, Plan, Step};
use lancet_compiler::models::{AttentionPrecision, LlamaConfig, Precision, PRESETS};
use lancet_compiler::reference::{evaluate, rel_l2, Bindings};
use lancet_compiler::rewrite::{optimize, Options};
use lancet_compiler::weights::{random_inputs, random_params};

/// A preset shrunk to test size, keeping its structure (GQA ratio, norm, MLP, RoPE style).
fn small(name: &str, dtype: DType, precision: Precision) -> LlamaConfig {
    let mut c = LlamaConfig::preset(name).unwrap();
    if c.hidden > 64 {
        c.hidden = 64;
        c.ffn = 128;
        c.heads /= 8;
        c.kv_heads = (c.kv_heads / 8).max(1);
        c.head_dim = 16;
        c.rotary_dim = 16;
    }
    c.layers = 2;
    c.batch = 2;
    c.seq = 16;
    c.dtype = dtype;
    c.precision = precision;
    if precision == Precision::Bf16 {
        c.attention = AttentionPrecision::Bf16;
    }
    c
}

fn bindings(graph: &Graph, seed: u64) -> Bindings {
    let mut b = random_params(graph, seed).unwrap();
    b.extend(random_inputs(graph, seed + 1));
    b
}

/// The largest relative L2 error over the outputs of `graph` before and after rewriting.
fn rewrite_error(graph: &Graph, seed: u64) -> (f64, Graph) {
    let (optimized, report) = optimize(graph, &Options::default()).unwrap();
    assert_eq!(report.stop_reason, "saturated");
    let b = bindings(graph, seed);
    let before = evaluate(graph, &b).unwrap();
    let after = evaluate(&optimized, &b).unwrap();
    assert_eq!(before.len(), after.len());
    let err = before
        .iter()
        .map(|(name, want)| rel_l2(&after[name].data, &want.data))
        .fold(0.0, f64::max);
    (err, optimized)
}

fn fused_nodes(graph: &Graph) -> usize {
    graph
        .nodes()
        .filter(|(_, n)| matches!(n.op, Op::Fused { .. } | Op::LinearAdd { .. }))
        .count()
}

#[test]
fn every_preset_keeps_its_semantics_in_f32() {
    for name in PRESETS {
        for precision in [Precision::Fp8, Precision::Bf16] {
            let graph = small(name, DType::F32, precision).build().unwrap();
            let (err, optimized) = rewrite_error(&graph, 11);
            assert!(
                err <= 1e-5,
                "{name} {precision:?}: rel L2 {err:e} after rewriting"
            );
            assert!(fused_nodes(&optimized) > 0, "{name} {precision:?}: nothing fused");
        }
    }
}

#[test]
fn every_preset_keeps_its_semantics_in_bf16() {
    // The GEMM epilogue rounds `x·w + residual` once where the unfused graph rounds the product
    // to bf16 first: a difference of bf16 rounding, nothing more.
    for name in PRESETS {
        let graph = small(name, DType::BF16, Precision::Fp8).build().unwrap();
        let (err, _) = rewrite_error(&graph, 5);
        assert!(err <= 1e-2, "{name}: rel L2 {err:e} after rewriting");
    }
}

/// A deterministic generator of small random graphs over f32 `[2, 4, 2, 8]` tensors.
struct Random(u64);

impl Random {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn random_graph(seed: u64) -> Graph {
    let mut r = Random(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut b = Builder::new();
    let shape = [2, 4, 2, 8];
    let mut pool = vec![
        b.input("x", DType::F32, shape).unwrap(),
        b.input("y", DType::F32, shape).unwrap(),
    ];
    let steps = 4 + r.next(8);
    for step in 0..steps {
        let pick = |r: &mut Random, pool: &Vec<_>| pool[r.next(pool.len() as u64) as usize];
        let x = pick(&mut r, &pool);
        let v = b
            .scoped(&format!("s{step}"), |b| match r.next(11) {
                0 => b.silu(x),
                1 => b.gelu(
                    x,
                    if r.next(2) == 0 {
                        GeluApprox::Tanh
                    } else {
                        GeluApprox::None
                    },
                ),
                2 => {
                    let y = pick(&mut r, &pool);
                    if r.next(2) == 0 {
                        b.add(x, y)
                    } else {
                        b.mul(x, y)
                    }
                }
                3 => {
                    let p = b.param("bias", DType::F32, [8], Init::normal(1.0))?;
                    b.add(x, p)
                }
                4 => {
                    let t = b.cast(x, DType::BF16)?;
                    b.cast(t, DType::F32)
                }
                5 => {
                    let (style, rot) = [(RopeStyle::Neox, 8), (RopeStyle::Gptj, 4)][r.next(2) as usize];
                    b.rope(x, style, 10_000.0, rot, None)
                }
                6 => {
                    let g = b.param("gain", DType::F32, [8], Init::normal(1.0))?;
                    b.rms_norm(x, g, 1e-5)
                }
                7 => {
                    let s = b.param("scale", DType::F32, [], Init::constant(1.0 / 16.0))?;
                    let q = b.quantize(x, s, DType::F8E4M3)?;
                    b.dequantize(q, s, DType::F32)
                }
                8 => {
                    let t = b.permute(x, [0, 2, 1, 3])?;
                    let t = b.silu(t)?;
                    b.permute(t, [0, 2, 1, 3])
                }
                9 => {
                    let parts = b.split(x, 3, &[4, 4])?;
                    let left = b.gelu(parts[0], GeluApprox::Tanh)?;
                    b.concat(&[left, parts[1]], 3)
                }
                _ => {
                    let w = b.param("w", DType::F32, [8, 8], Init::normal(0.3))?;
                    let t = b.reshape(x, [16, 8])?;
                    let t = b.linear(t, w, DType::F32)?;
                    b.reshape(t, shape)
                }
            })
            .unwrap();
        pool.push(v);
    }
    // The last value, and sometimes an intermediate too (a value with two readers).
    b.output("out", *pool.last().unwrap()).unwrap();
    if r.next(2) == 0 && pool.len() > 3 {
        b.output("mid", pool[pool.len() - 2]).unwrap();
    }
    b.finish()
}

#[test]
fn random_graphs_keep_their_semantics() {
    let mut fused = 0;
    for seed in 0..150 {
        let graph = random_graph(seed);
        let (err, optimized) = rewrite_error(&graph, seed);
        assert!(err <= 1e-5, "seed {seed}: rel L2 {err:e} after rewriting");
        fused += fused_nodes(&optimized);
        // Lowering never launches more kernels than the unfused graph has glue ops.
        let (unfused, _) = optimize(
            &graph,
            &Options {
                fusion: false,
                ..Options::default()
            },
        )
        .unwrap();
        let (a, b) = (lower(&optimized).unwrap(), lower(&unfused).unwrap());
        assert!(a.kernel_launches() <= b.kernel_launches(), "seed {seed}");
    }
    // Random graphs read values twice often (so those stay unfused), yet fusion must happen.
    assert!(fused > 50, "random graphs should fuse often, fused {fused} nodes");
}

fn plan(config: &LlamaConfig, fusion: bool) -> Plan {
    let graph = config.build().unwrap();
    let (optimized, _) = optimize(
        &graph,
        &Options {
            fusion,
            ..Options::default()
        },
    )
    .unwrap();
    lower_with(
        &optimized,
        &LowerOptions {
            merge_launches: fusion,
            ..LowerOptions::default()
        },
    )
    .unwrap()
}

/// The ops of each kernel launch of `plan`, one sorted list per launch.
fn launches(plan: &Plan) -> Vec<String> {
    plan.steps
        .iter()
        .filter_map(|s| match s {
            Step::Kernel(k) => Some(
                plan.kernels[k.kernel]
                    .name
                    .rsplit_once('_')
                    .unwrap()
                    .0
                    .to_string(),
            ),
            _ => None,
        })
        .collect()
}

#[test]
fn llama_layer_fuses_to_three_kernels_three_gemms_one_gated_gemm_one_attention() {
    let mut c = LlamaConfig::preset("llama-3.2-1b").unwrap();
    c.layers = 3;
    assert_eq!(c.attention, AttentionPrecision::Fp8);
    let p = plan(&c, true);
    assert_eq!(p.gemms(), 3 * 3);
    assert_eq!(p.gated_gemms(), 3);
    assert_eq!(p.attentions(), 3);
    // Per layer: norm + quantize; RoPE of Q and K with the quantize of Q, K and V in one launch
    // (FP8 attention writes O already quantized); norm + quantize. SwiGLU + quantize live in the
    // gate/up GEMM's epilogue, residual adds in cuBLASLt's.
    let per_layer = ["rms_norm_quantize", "quantize_rope", "rms_norm_quantize"];
    assert_eq!(launches(&p), per_layer.repeat(3));
    let residual_gemms = p
        .steps
        .iter()
        .filter(|s| matches!(s, Step::Gemm(g) if g.residual.is_some()))
        .count();
    assert_eq!(residual_gemms, 3 * 2);
    // Every layer shares the same kernels, the gated GEMM among them: one compile each.
    assert_eq!(p.kernels.len(), 3);
    // The gated GEMM reads the quantized norm output as a [b·s, hidden] matrix and the packed
    // gate/up weight; its e4m3 output is what the down projection reads, in place.
    let Some(Step::GatedGemm(g)) = p.steps.iter().find(|s| matches!(s, Step::GatedGemm(_))) else {
        panic!()
    };
    assert_eq!((g.m, g.f, g.k), (2 * 2048, 8192, 2048));
    assert_eq!(p.buffers[g.w.buffer].name, "layers.0.mlp.gate_up_proj.weight");
    assert_eq!(
        p.buffers[g.out_scale.buffer].name,
        "layers.0.mlp.down_proj.input_scale"
    );
    assert_eq!(p.amax_slots[g.amax_slot], g.node);
    assert_eq!(
        p.kernels[g.kernel].spec,
        Generated::GatedGemm(GatedGemmSpec {
            act: GateAct::Silu,
            mid: DType::BF16,
            out: DType::F8E4M3,
            cluster: 1,
            epilogue: Epilogue::Registers,
        })
    );
    let down = p
        .steps
        .iter()
        .find_map(|s| match s {
            Step::Gemm(d) if d.x.buffer == g.out.buffer => Some(d),
            _ => None,
        })
        .expect("a GEMM reads the gated output in place");
    assert_eq!((down.k, down.ldx, down.x.dtype), (8192, 8192, DType::F8E4M3));
    let Some(Step::Attention(a)) = p.steps.iter().find(|s| matches!(s, Step::Attention(_))) else {
        panic!()
    };
    let scales = a.fp8.as_ref().expect("FP8 attention");
    assert_eq!(
        p.buffers[scales.o.buffer].name,
        "layers.0.self_attn.o_proj.input_scale"
    );
    assert_eq!(p.buffers[scales.v.buffer].name, "layers.0.self_attn.v_scale");
    assert_eq!(p.amax_slots[scales.amax_slot], a.node);
    // O goes to the output projection as it is: e4m3, [b, s, h·d] row-major.
    assert_eq!(a.o.dtype, DType::F8E4M3);
    let o_proj = p
        .steps
        .iter()
        .find_map(|s| match s {
            Step::Gemm(g) if g.x.buffer == a.o.buffer => Some(g),
            _ => None,
        })
        .expect("a GEMM reads O in place");
    assert_eq!((o_proj.k, o_proj.ldx), (2048, 2048));
    // One RoPE table serves every layer's Q and K.
    let tables: Vec<_> = p
        .buffers
        .iter()
        .filter(|b| b.name.starts_with("rope_table"))
        .collect();
    assert_eq!(tables.len(), 1);
    assert_eq!(tables[0].data.as_ref().map(Vec::len), Some(2048 * 64));
}

#[test]
fn llama_layer_with_bf16_attention_fuses_to_four_kernels_and_a_gated_gemm() {
    let mut c = LlamaConfig::preset("llama-3.2-1b").unwrap();
    c.layers = 3;
    c.attention = AttentionPrecision::Bf16;
    let p = plan(&c, true);
    // The attention output needs its own quantize pass for the FP8 output projection.
    let per_layer = ["rms_norm_quantize", "rope", "quantize", "rms_norm_quantize"];
    assert_eq!(launches(&p), per_layer.repeat(3));
    assert_eq!((p.gemms(), p.gated_gemms()), (3 * 3, 3));
    assert_eq!(p.kernels.len(), 4);
    // V reaches attention as a strided view of the packed QKV projection, without a copy.
    let Some(Step::Attention(a)) = p.steps.iter().find(|s| matches!(s, Step::Attention(_))) else {
        panic!()
    };
    assert!(a.fp8.is_none());
    assert_eq!(p.buffers[a.v.buffer].name, "layers.0.self_attn.qkv_proj");
    assert_eq!(
        (a.v.offset, a.v.strides.clone()),
        (2560, vec![6291456, 64, 3072, 1])
    );
}

#[test]
fn every_depth_shares_one_gated_gemm_kernel() {
    for layers in [1, 2, 8] {
        let mut c = LlamaConfig::preset("llama-3.2-1b").unwrap();
        c.layers = layers;
        let p = plan(&c, true);
        assert_eq!(p.gated_gemms(), layers, "{layers} layers");
        assert_eq!(p.kernels.len(), 3, "{layers} layers");
        let gated: Vec<_> = p
            .kernels
            .iter()
            .filter(|k| matches!(k.spec, Generated::GatedGemm(_)))
            .collect();
        assert_eq!(gated.len(), 1, "{layers} layers");
        assert_eq!(gated[0].nodes.len(), layers, "{layers} layers");
    }
}

#[test]
fn bf16_linears_keep_swiglu_in_a_kernel() {
    // Without FP8 linears there is no quantize to end the chain: nothing for a gated GEMM.
    let mut c = LlamaConfig::preset("llama-3.2-1b")
        .unwrap()
        .with_precision(Precision::Bf16);
    c.layers = 2;
    let p = plan(&c, true);
    assert_eq!((p.gemms(), p.gated_gemms()), (2 * 4, 0));
    assert_eq!(
        launches(&p),
        ["rms_norm", "rope", "rms_norm", "silu_mul"].repeat(2)
    );
}

#[test]
fn gated_gemm_off_keeps_swiglu_in_a_kernel() {
    let mut c = LlamaConfig::preset("llama-3.2-1b").unwrap();
    c.layers = 2;
    let options = Options {
        gated_gemm: false,
        ..Options::default()
    };
    let (optimized, report) = optimize(&c.build().unwrap(), &options).unwrap();
    assert_eq!(report.rules_fired.get("gated-linear"), None);
    let p = lower(&optimized).unwrap();
    let per_layer = [
        "rms_norm_quantize",
        "quantize_rope",
        "rms_norm_quantize",
        "silu_mul_quantize",
    ];
    assert_eq!(launches(&p), per_layer.repeat(2));
    assert_eq!((p.gemms(), p.gated_gemms()), (2 * 4, 0));
}

#[test]
fn unfused_baseline_is_one_kernel_per_glue_op() {
    // The seed's layout: bf16 attention.
    let mut c = LlamaConfig::preset("llama-3.2-1b").unwrap();
    c.layers = 1;
    c.attention = AttentionPrecision::Bf16;
    let p = plan(&c, false);
    assert_eq!(
        launches(&p),
        [
            "rms_norm", "quantize", "rope", "rope", "quantize", "add", "rms_norm", "quantize", "silu", "mul",
            "quantize", "add"
        ]
    );
}

#[test]
fn seed_te_fuses_layernorm_and_gelu() {
    let mut c = LlamaConfig::preset("seed-te").unwrap();
    c.layers = 2;
    let p = plan(&c, true);
    let per_layer = [
        "layer_norm_quantize",
        "quantize_rope",
        "layer_norm_quantize",
        "gelu_quantize",
    ];
    assert_eq!(launches(&p), per_layer.repeat(2));
    // No gate: the GELU MLP's up projection stays a cuBLASLt GEMM.
    assert_eq!((p.gemms(), p.gated_gemms()), (2 * 4, 0));
}

#[test]
fn an_unusual_chain_fuses_into_one_kernel() {
    // gelu → mul → add → cast: no rule names this chain; the general rule fuses it anyway.
    let mut b = Builder::new();
    let x = b.input("x", DType::BF16, [4, 256]).unwrap();
    let y = b.input("y", DType::BF16, [4, 256]).unwrap();
    let bias = b.param("bias", DType::BF16, [256], Init::normal(1.0)).unwrap();
    let g = b.gelu(x, GeluApprox::None).unwrap();
    let m = b.mul(g, y).unwrap();
    let a = b.add(m, bias).unwrap();
    let c = b.cast(a, DType::F32).unwrap();
    b.output("out", c).unwrap();
    let graph = b.finish();
    let (optimized, report) = optimize(&graph, &Options::default()).unwrap();
    assert!(report.rules_fired["grow-kernel"] >= 3, "{:?}", report.rules_fired);
    let p = lower(&optimized).unwrap();
    assert_eq!(launches(&p), ["gelu_mul_add_cast"]);
    let (err, _) = rewrite_error(&graph, 3);
    assert!(err <= 1e-6, "rel L2 {err:e}");
}

#[test]
fn a_value_with_two_readers_is_not_fused_into_either() {
    let mut b = Builder::new();
    let x = b.input("x", DType::F32, [8, 64]).unwrap();
    let s = b.silu(x).unwrap();
    let a = b.gelu(s, GeluApprox::Tanh).unwrap();
    let m = b.mul(s, s).unwrap();
    b.output("a", a).unwrap();
    b.output("m", m).unwrap();
    let p = lower(&optimize(&b.finish(), &Options::default()).unwrap().0).unwrap();
    // silu is materialised once; its two independent readers share one launch (horizontal
    // merge), each computing from memory.
    assert_eq!(launches(&p), ["silu", "gelu_mul"].map(String::from).to_vec());
}

/// `start => goal` for view algebra: the optimized graph has no ops of the listed kinds left.
#[test]
fn view_algebra_collapses_chains() {
    type Case = (
        &'static str,
        fn(&mut Builder) -> lancet_compiler::ir::Tensor,
        &'static [&'static str],
    );
    let cases: &[Case] = &[
        (
            "reshape∘reshape => reshape",
            |b| {
                let x = b.input("x", DType::F32, [2, 3, 4]).unwrap();
                let t = b.reshape(x, [6, 4]).unwrap();
                b.reshape(t, [24]).unwrap()
            },
            &["reshape:1"],
        ),
        (
            "reshape to own shape => nothing",
            |b| {
                let x = b.input("x", DType::F32, [2, 3]).unwrap();
                b.reshape(x, [2, 3]).unwrap()
            },
            &["reshape:0"],
        ),
        (
            "permute∘permute(inverse) => nothing",
            |b| {
                let x = b.input("x", DType::F32, [2, 3, 4]).unwrap();
                let t = b.permute(x, [2, 0, 1]).unwrap();
                b.permute(t, [1, 2, 0]).unwrap()
            },
            &["permute:0"],
        ),
        (
            "slice of concat => slice of operand",
            |b| {
                let x = b.input("x", DType::F32, [2, 3]).unwrap();
                let y = b.input("y", DType::F32, [2, 5]).unwrap();
                let c = b.concat(&[x, y], 1).unwrap();
                b.slice(c, 1, 4, 7).unwrap()
            },
            &["concat:0", "slice:1"],
        ),
        (
            "slice∘slice => slice",
            |b| {
                let x = b.input("x", DType::F32, [2, 16]).unwrap();
                let t = b.slice(x, 1, 2, 14).unwrap();
                b.slice(t, 1, 1, 5).unwrap()
            },
            &["slice:1"],
        ),
        (
            "cast bf16→f32→bf16 => nothing",
            |b| {
                let x = b.input("x", DType::BF16, [4]).unwrap();
                let t = b.cast(x, DType::F32).unwrap();
                b.cast(t, DType::BF16).unwrap()
            },
            &["cast:0"],
        ),
        (
            "cast f32→bf16→f32 is lossy => kept",
            |b| {
                let x = b.input("x", DType::F32, [4]).unwrap();
                let t = b.cast(x, DType::BF16).unwrap();
                b.cast(t, DType::F32).unwrap()
            },
            &["cast_or_fused:2"],
        ),
    ];
    for (what, build, goals) in cases {
        let mut b = Builder::new();
        let out = build(&mut b);
        b.output("out", out).unwrap();
        let graph = b.finish();
        let (optimized, _) = optimize(&graph, &Options::default()).unwrap();
        for goal in *goals {
            let (kind, n) = goal.split_once(':').unwrap();
            let n: usize = n.parse().unwrap();
            let count = if kind == "cast_or_fused" {
                // Two lossy casts may fuse into one kernel of two instructions.
                optimized
                    .nodes()
                    .map(|(_, node)| match &node.op {
                        Op::Cast { .. } => 1,
                        Op::Fused { program } => program
                            .instrs
                            .iter()
                            .filter(|i| matches!(i.op, Op::Cast { .. }))
                            .count(),
                        _ => 0,
                    })
                    .sum()
            } else {
                optimized
                    .nodes()
                    .filter(|(_, node)| node.op.kind() == kind)
                    .count()
            };
            assert_eq!(count, n, "{what}: {kind} nodes");
        }
        let (err, _) = rewrite_error(&graph, 1);
        assert!(err == 0.0, "{what}: rel L2 {err:e}");
    }
}

/// An FP8 gated linear unit as a model writes it, and the ways a rule test varies it.
#[derive(Clone, Copy)]
struct Glu {
    /// Features of `x`: the gated GEMM needs a multiple of 16.
    k: usize,
    /// Width of each half (gate, up): the gated GEMM needs a multiple of 2.
    f: usize,
    /// The gate's activation: `None` for SiLU.
    gelu: Option<GeluApprox>,
    /// `up · act(gate)` instead of `act(gate) · up`.
    up_first: bool,
    /// The activation reads the second half and `up` is the first.
    swapped_halves: bool,
    out: DType,
    /// An intermediate that is also a graph output: `linear`, `gate`, `act` or `product`.
    tap: Option<&'static str>,
}

const GLU: Glu = Glu {
    k: 32,
    f: 16,
    gelu: None,
    up_first: false,
    swapped_halves: false,
    out: DType::F8E4M3,
    tap: None,
};

/// `quantize(act(y[.., :f]) · y[.., f:])` with `y` an FP8 linear of `x [2, 4, k]`.
fn glu_graph(glu: Glu) -> Graph {
    let f = glu.f;
    let mut b = Builder::new();
    let x = b.input("x", DType::F8E4M3, [2, 4, glu.k]).unwrap();
    let w = b
        .param("w", DType::F8E4M3, [2 * f, glu.k], Init::normal(1.0))
        .unwrap();
    let scale = |b: &mut Builder, name, value| b.param(name, DType::F32, [], Init::constant(value)).unwrap();
    let (xs, ws, os) = (
        scale(&mut b, "x_scale", 0.5),
        scale(&mut b, "w_scale", 0.002),
        scale(&mut b, "out_scale", 0.005),
    );
    let y = b.linear_fp8(x, w, xs, ws, DType::BF16).unwrap();
    let parts = b.split(y, 2, &[f, f]).unwrap();
    let (gate, up) = if glu.swapped_halves {
        (parts[1], parts[0])
    } else {
        (parts[0], parts[1])
    };
    let a = match glu.gelu {
        None => b.silu(gate),
        Some(approx) => b.gelu(gate, approx),
    }
    .unwrap();
    let h = if glu.up_first { b.mul(up, a) } else { b.mul(a, up) }.unwrap();
    let q = b.quantize(h, os, glu.out).unwrap();
    b.output("out", q).unwrap();
    let tapped: Option<Tensor> = glu.tap.map(|tap| match tap {
        "linear" => y,
        "gate" => gate,
        "act" => a,
        "product" => h,
        other => panic!("no intermediate {other}"),
    });
    if let Some(t) = tapped {
        b.output("tap", t).unwrap();
    }
    b.finish()
}

/// `start => goal` for the `gated-linear` rule: which activation the one gated linear of the
/// optimized graph computes, or `None` where the rule must not fire. Either way the reference
/// gives the same bits before and after.
#[test]
fn gated_linear_fuses_only_a_whole_glu() {
    let cases: &[(&str, Glu, Option<GateAct>)] = &[
        (
            "quantize(silu(gate) · up) => gated silu",
            GLU,
            Some(GateAct::Silu),
        ),
        (
            "quantize(up · silu(gate)) => gated silu",
            Glu {
                up_first: true,
                ..GLU
            },
            Some(GateAct::Silu),
        ),
        (
            "tanh GELU gate => gated gelu_tanh",
            Glu {
                gelu: Some(GeluApprox::Tanh),
                ..GLU
            },
            Some(GateAct::GeluTanh),
        ),
        (
            "erf GELU gate => kept (the kernel's epilogue would spill on erff)",
            Glu {
                gelu: Some(GeluApprox::None),
                ..GLU
            },
            None,
        ),
        (
            "quantize to e5m2 => gated, e5m2 out",
            Glu {
                out: DType::F8E5M2,
                ..GLU
            },
            Some(GateAct::Silu),
        ),
        (
            "activation of the second half => kept (another function)",
            Glu {
                swapped_halves: true,
                ..GLU
            },
            None,
        ),
        (
            "linear output read elsewhere => kept",
            Glu {
                tap: Some("linear"),
                ..GLU
            },
            None,
        ),
        (
            "gate half read elsewhere => kept",
            Glu {
                tap: Some("gate"),
                ..GLU
            },
            None,
        ),
        (
            "activation read elsewhere => kept",
            Glu {
                tap: Some("act"),
                ..GLU
            },
            None,
        ),
        (
            "product read elsewhere => kept",
            Glu {
                tap: Some("product"),
                ..GLU
            },
            None,
        ),
        ("k = 24, rows TMA cannot load => kept", Glu { k: 24, ..GLU }, None),
        ("f = 15, odd => kept", Glu { f: 15, ..GLU }, None),
    ];
    for &(what, glu, want) in cases {
        let graph = glu_graph(glu);
        let (optimized, report) = optimize(&graph, &Options::default()).unwrap();
        let gated: Vec<_> = optimized
            .nodes()
            .filter_map(|(_, n)| match n.op {
                Op::GatedLinear { act, out, .. } => Some((act, out)),
                _ => None,
            })
            .collect();
        let fired = report.rules_fired.get("gated-linear").copied().unwrap_or(0);
        match want {
            Some(act) => {
                assert_eq!(gated, [(act, glu.out)], "{what}");
                assert!(fired > 0, "{what}");
                let linears = optimized.nodes().filter(|(_, n)| n.op.kind() == "linear");
                assert_eq!(linears.count(), 0, "{what}: the linear is gone");
            }
            None => {
                assert!(gated.is_empty(), "{what}: {gated:?}");
                assert_eq!(fired, 0, "{what}");
            }
        }
        let (err, _) = rewrite_error(&graph, 7);
        assert!(err == 0.0, "{what}: rel L2 {err:e}");
    }
    // The scales put the output across the e4m3 range, so equal bits mean equal arithmetic.
    let graph = glu_graph(GLU);
    let out = &evaluate(&graph, &bindings(&graph, 7)).unwrap()["out"];
    let mut values: Vec<u32> = out.data.iter().map(|v| v.to_bits()).collect();
    values.sort_unstable();
    values.dedup();
    assert!(values.len() > 40, "{} distinct values", values.len());
}

#[test]
fn gated_gemm_reads_x_as_a_dense_matrix() {
    // x as the first 32 of 64 features: rows 64 apart, which the gated GEMM cannot read.
    let mut b = Builder::new();
    let wide = b.input("wide", DType::F8E4M3, [8, 64]).unwrap();
    let x = b.slice(wide, 1, 0, 32).unwrap();
    let w = b.param("w", DType::F8E4M3, [32, 32], Init::normal(1.0)).unwrap();
    let s = [0.5, 0.01, 0.02].map(|v| {
        b.param(&format!("s{v}"), DType::F32, [], Init::constant(v))
            .unwrap()
    });
    let q = b
        .gated_linear([x, w], s, GateAct::Silu, DType::BF16, DType::F8E4M3)
        .unwrap();
    b.output("out", q).unwrap();
    let p = lower(&b.finish()).unwrap();
    assert_eq!(launches(&p), ["cast"], "x is copied first");
    let Some(Step::GatedGemm(g)) = p.steps.last() else {
        panic!("{p}")
    };
    assert_eq!((g.m, g.f, g.k), (8, 16, 32));
    assert!(g.x.is_contiguous() && p.buffers[g.x.buffer].name != "wide");
    assert_eq!(p.amax_slots, std::slice::from_ref(&g.node));
}

/// A lone `GatedLinear` node (named `mlp.act`) over `x [8, k]` and `w [2f, k]`, rounding to
/// `mid`.
fn lone_gated_linear(k: usize, f: usize, act: GateAct, mid: DType) -> Graph {
    let mut b = Builder::new();
    let x = b.input("x", DType::F8E4M3, [8, k]).unwrap();
    let w = b
        .param("w", DType::F8E4M3, [2 * f, k], Init::normal(1.0))
        .unwrap();
    let s = [0.5, 0.01, 0.02].map(|v| {
        b.param(&format!("s{v}"), DType::F32, [], Init::constant(v))
            .unwrap()
    });
    let q = b
        .scoped("mlp.act", |b| b.gated_linear([x, w], s, act, mid, DType::F8E4M3))
        .unwrap();
    b.output("out", q).unwrap();
    b.finish()
}

#[test]
fn gated_gemm_lowering_names_what_it_cannot_take() {
    for (k, f, act, want) in [
        (24, 16, GateAct::Silu, "k = 24 is not a multiple of 16"),
        (32, 15, GateAct::Silu, "f = 15 is not a multiple of 2"),
        (
            32,
            16,
            GateAct::GeluErf,
            "the gated GEMM has no gelu_erf epilogue",
        ),
    ] {
        let graph = lone_gated_linear(k, f, act, DType::BF16);
        let err = lower(&graph).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("node 5 (gated_linear 'mlp.act'): {want}")),
            "{err}"
        );
    }
}

#[test]
fn the_staged_epilogue_is_chosen_where_mid_fits_its_buffer() {
    // The staging buffer holds 16-bit values: a gated GEMM rounding to f32 keeps its epilogue
    // in registers.
    let options = LowerOptions {
        gated_epilogue: Epilogue::Staged,
        ..LowerOptions::default()
    };
    for (mid, want) in [
        (DType::BF16, Epilogue::Staged),
        (DType::F16, Epilogue::Staged),
        (DType::F32, Epilogue::Registers),
    ] {
        let p = lower_with(&lone_gated_linear(32, 16, GateAct::Silu, mid), &options).unwrap();
        let spec = p.kernels[0].spec.gated_gemm().expect("a gated GEMM");
        assert_eq!(spec.epilogue, want, "{mid}");
        assert_eq!(
            p.kernels[0].body.contains("drain("),
            want == Epilogue::Staged,
            "{mid}"
        );
    }
}

/// A line of `source` containing `needle`, so a failure shows what was generated instead.
fn anchored(source: &str, needle: &str) {
    assert!(
        source.lines().any(|l| l.contains(needle)),
        "missing `{needle}` in:\n{source}"
    );
}

#[test]
fn generated_sources_have_their_anchors() {
    let mut c = LlamaConfig::preset("llama-3.2-1b").unwrap();
    c.layers = 2;
    let fp8 = plan(&c, true);
    c.attention = AttentionPrecision::Bf16;
    let bf16 = plan(&c, true);
    // With bf16 linears SwiGLU stays a kernel of its own (FP8 puts it in the gated GEMM).
    let bf16_linears = plan(&c.clone().with_precision(Precision::Bf16), true);
    let source = |prefix: &str| {
        [&fp8, &bf16, &bf16_linears]
            .iter()
            .flat_map(|p| &p.kernels)
            .find(|k| k.name.rsplit_once('_').unwrap().0 == prefix)
            .unwrap_or_else(|| panic!("no {prefix} kernel"))
            .source()
    };
    let norm = source("rms_norm_quantize");
    anchored(&norm, "// implements:");
    anchored(&norm, "layers.1.post_attention_layernorm");
    anchored(
        &norm,
        "extern \"C\" __global__ void __launch_bounds__(64, 1) rms_norm_quantize_",
    );
    anchored(
        &norm,
        "load<__nv_bfloat16, V, 1>(arg0 + i0 * 4194304 + i1 * 2048 + i_last, xr[c]);",
    );
    anchored(&norm, "const float inv = rsqrtf(row_sum(sum) / 2048.0f + 1e-5f);");
    // Two warps per 2048-element row, four 8-element vectors per thread (see `ROW_CHUNKS`).
    anchored(&norm, "constexpr int LANES = 64;");
    anchored(&norm, "constexpr int CHUNKS = 4;");
    anchored(&norm, "v0[j] = round_to<__nv_bfloat16>(xr[c][j] * inv * a1[j]);");
    anchored(
        &norm,
        "amax0 = fmaxf(amax0, fabsf(v0[j])); v1[j] = round_to<__nv_fp8_e4m3>(v0[j] * __frcp_rn(a2[j]));",
    );
    anchored(&norm, "record_amax(amax_ptr0, amax0);");

    let rope = source("rope");
    // Q and K read the packed QKV rows (3072 wide) in place, 16-byte vectors at a time.
    anchored(
        &rope,
        "load<__nv_bfloat16, V, 1>(arg0 + i0 * 6291456 + i1 * 3072 + i2 * 64 + i_last, a0);",
    );
    // Angles come from the (cos, sin) table lowering uploads: row = position, 32 pairs of 64.
    anchored(
        &rope,
        "const float* angles = arg1 + i1 * 64;  // (cos, sin) per pair",
    );
    anchored(&rope, "const int k = int(c < 32 ? c : c - 32);");
    anchored(
        &rope,
        "store<__nv_bfloat16, V, 1>(out + i0 * 1048576 + i1 * 512 + i2 * 64 + i_last, v0);",
    );
    anchored(&rope, "constexpr int V = 8;");

    let swiglu = source("silu_mul");
    // The up half is read in place from the packed gate/up rows (16384 wide).
    anchored(
        &swiglu,
        "load<__nv_bfloat16, V, 1>(arg1 + i0 * 33554432 + i1 * 16384 + i_last, a1);",
    );
    anchored(&swiglu, "v1[j] = round_to<__nv_bfloat16>(v0[j] * a1[j]);");
    anchored(
        &swiglu,
        "store<__nv_bfloat16, V, 1>(out + i0 * 16777216 + i1 * 8192 + i_last, v1);",
    );

    // The gated GEMM's header (its body is the template's own).
    let gated = source("gated_gemm_silu");
    anchored(&gated, "(template gated_gemm.cu.tera)");
    anchored(&gated, "layers.0.mlp.down_proj, layers.1.mlp.down_proj");
    anchored(
        &gated,
        "// out[m, f] = quantize(silu(y[:, :f]) · y[:, f:]) to f8e4m3, y = x[m, k] · w[2f, k]ᵀ in bf16",
    );

    let quant = source("quantize");
    // Attention wrote [b, s, h, d], so the merge-heads permute is a plain contiguous read.
    anchored(
        &quant,
        "load<__nv_bfloat16, V, 1>(arg0 + i0 * 4194304 + i1 * 2048 + i_last, a0);",
    );

    // FP8 attention: one launch quantizes V and rotates and quantizes K and Q, each job writing
    // e4m3 heads [b, s, h, d] that attention reads through the heads permute.
    let qkv = source("quantize_rope");
    anchored(&qkv, "// job 0: %0 = quantize(arg0, arg1)");
    anchored(&qkv, "// job 1: %0 = rope(arg0); %1 = quantize(%0, arg1)");
    anchored(
        &qkv,
        "store<__nv_fp8_e4m3, V, 1>(out + i0 * 1048576 + i1 * 512 + i2 * 64 + i_last, v0);",
    );
    anchored(
        &qkv,
        "store<__nv_fp8_e4m3, V, 1>(out + i0 * 4194304 + i1 * 2048 + i2 * 64 + i_last, v1);",
    );
}

#[test]
fn memory_plan_shares_the_arena() {
    let mut c = LlamaConfig::preset("llama-3.2-1b").unwrap();
    c.layers = 8;
    let p = plan(&c, true);
    // Every layer's activations reuse the same space: the arena stays near one layer's peak.
    assert!(
        p.arena_bytes * 8 < p.unplanned_bytes,
        "arena {} vs unplanned {}",
        p.arena_bytes,
        p.unplanned_bytes
    );
    // No two buffers that are live at the same step overlap.
    let mut live: Vec<(usize, usize, usize, usize)> = Vec::new();
    for (b, buf) in p.buffers.iter().enumerate() {
        let Some(offset) = buf.offset else { continue };
        let steps: Vec<usize> = p
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                lancet_compiler::lower::step_views(s)
                    .iter()
                    .any(|v| v.buffer == b)
            })
            .map(|(i, _)| i)
            .collect();
        live.push((offset, offset + buf.bytes(), steps[0], *steps.last().unwrap()));
    }
    for (i, a) in live.iter().enumerate() {
        for b in &live[i + 1..] {
            let overlap_time = a.2 <= b.3 && b.2 <= a.3;
            let overlap_space = a.0 < b.1 && b.0 < a.1;
            assert!(!(overlap_time && overlap_space), "{a:?} and {b:?} collide");
        }
    }
}
