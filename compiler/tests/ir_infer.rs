//! Shape and dtype inference, and the typed errors a graph raises when a node does not fit.
//!
//! The bulk of the file is one table: each row is an op, its operand types and either the
//! `TensorType` it must produce or the kind of `Mismatch` it must be rejected with (plus a piece
//! of the message). Every row is checked twice: through `ir::infer` directly and through
//! `Graph::add`, which must wrap the same mismatch in `GraphError::Invalid` naming the node.

use lancet_compiler::ir::{
    broadcast, infer, Builder, DType, GateAct, GeluApprox, Graph, GraphError, Init, Mismatch, NodeId, Op,
    RopeStyle, Shape, TensorType,
};

use DType::{BF16, F16, F32, F8E4M3, F8E5M2, I32, I64};

/// An f32 attribute in whatever form the IR stores it (`f32`, or a wrapper built `From<f32>`).
fn fl<T: From<f32>>(x: f32) -> T {
    T::from(x)
}

fn t(dtype: DType, dims: &[usize]) -> TensorType {
    TensorType::new(dtype, dims)
}

fn scalar() -> TensorType {
    t(F32, &[])
}

/// What a row expects: a type, or a mismatch of one kind whose message contains the text.
#[derive(Debug)]
enum Want {
    Ok(TensorType),
    Arity(usize),
    Shape(&'static str),
    DType(&'static str),
    Attr(&'static str),
}

struct Case {
    what: &'static str,
    op: Op,
    inputs: Vec<TensorType>,
    want: Want,
}

fn case(what: &'static str, op: Op, inputs: Vec<TensorType>, want: Want) -> Case {
    Case {
        what,
        op,
        inputs,
        want,
    }
}

fn linear(out: DType) -> Op {
    Op::Linear { out }
}

fn rope(style: RopeStyle, rotary_dim: usize) -> Op {
    Op::Rope {
        style,
        theta: fl(10000.0),
        rotary_dim,
        scaling: None,
    }
}

fn attn(causal: bool) -> Op {
    Op::Attention {
        causal,
        scale: fl(0.125),
    }
}

fn fp8_attn(p_scale: f32, out: DType) -> Op {
    Op::Fp8Attention {
        causal: true,
        scale: fl(0.125),
        p_scale: fl(p_scale),
        out,
    }
}

fn gated(act: GateAct, mid: DType, out: DType) -> Op {
    Op::GatedLinear { act, mid, out }
}

/// `x [2, 5, 64]` and a packed `w [96, 64]` in `x_dtype` and `w_dtype`, and three scalar scales.
fn gated_inputs(x_dtype: DType, w_dtype: DType) -> Vec<TensorType> {
    let mut inputs = vec![t(x_dtype, &[2, 5, 64]), t(w_dtype, &[96, 64])];
    inputs.extend(std::iter::repeat_n(scalar(), 3));
    inputs
}

/// FP8 Q, K, V (GQA) and four scalar scales.
fn fp8_attn_inputs(q: DType) -> Vec<TensorType> {
    let mut inputs = vec![
        t(q, &[1, 4, 5, 16]),
        t(F8E4M3, &[1, 2, 5, 16]),
        t(F8E4M3, &[1, 2, 5, 16]),
    ];
    inputs.extend(std::iter::repeat_n(t(F32, &[]), 4));
    inputs
}

fn valid_cases() -> Vec<Case> {
    use Want::Ok;
    vec![
        case(
            "input",
            Op::Input {
                dtype: BF16,
                shape: Shape::new([2, 3]),
            },
            vec![],
            Ok(t(BF16, &[2, 3])),
        ),
        case(
            "param",
            Op::Param {
                dtype: F8E4M3,
                shape: Shape::new([4, 8]),
                init: Init::Normal { std: fl(0.02) },
            },
            vec![],
            Ok(t(F8E4M3, &[4, 8])),
        ),
        case(
            "scalar param",
            Op::Param {
                dtype: F32,
                shape: Shape::scalar(),
                init: Init::Const { value: fl(1.0) },
            },
            vec![],
            Ok(scalar()),
        ),
        case(
            "embedding i32 ids",
            Op::Embedding,
            vec![t(BF16, &[100, 16]), t(I32, &[2, 7])],
            Ok(t(BF16, &[2, 7, 16])),
        ),
        case(
            "embedding i64 1-d ids",
            Op::Embedding,
            vec![t(F32, &[10, 4]), t(I64, &[5])],
            Ok(t(F32, &[5, 4])),
        ),
        case(
            "rms_norm",
            Op::RmsNorm { eps: fl(1e-6) },
            vec![t(BF16, &[2, 3, 16]), t(BF16, &[16])],
            Ok(t(BF16, &[2, 3, 16])),
        ),
        case(
            "rms_norm eps 0",
            Op::RmsNorm { eps: fl(0.0) },
            vec![t(F32, &[8]), t(F32, &[8])],
            Ok(t(F32, &[8])),
        ),
        case(
            "layer_norm",
            Op::LayerNorm { eps: fl(1e-5) },
            vec![t(F16, &[4, 32]), t(F16, &[32]), t(F16, &[32])],
            Ok(t(F16, &[4, 32])),
        ),
        case(
            "linear bf16",
            linear(BF16),
            vec![t(BF16, &[6, 64]), t(BF16, &[128, 64])],
            Ok(t(BF16, &[6, 128])),
        ),
        case(
            "linear bf16 batched, f32 out",
            linear(F32),
            vec![t(BF16, &[2, 3, 64]), t(BF16, &[32, 64])],
            Ok(t(F32, &[2, 3, 32])),
        ),
        case(
            "linear 1-d input",
            linear(F32),
            vec![t(F32, &[64]), t(F32, &[10, 64])],
            Ok(t(F32, &[10])),
        ),
        case(
            "linear fp8",
            linear(BF16),
            vec![t(F8E4M3, &[2, 5, 64]), t(F8E4M3, &[48, 64]), scalar(), scalar()],
            Ok(t(BF16, &[2, 5, 48])),
        ),
        case(
            "linear fp8 mixed formats",
            linear(F16),
            vec![t(F8E4M3, &[3, 16]), t(F8E5M2, &[8, 16]), scalar(), scalar()],
            Ok(t(F16, &[3, 8])),
        ),
        case(
            "gated linear halves the packed width",
            gated(GateAct::Silu, BF16, F8E4M3),
            gated_inputs(F8E4M3, F8E4M3),
            Ok(t(F8E4M3, &[2, 5, 48])),
        ),
        case(
            "gated linear e5m2 in and out, f32 mid",
            gated(GateAct::GeluErf, F32, F8E5M2),
            gated_inputs(F8E5M2, F8E5M2),
            Ok(t(F8E5M2, &[2, 5, 48])),
        ),
        case(
            "reshape",
            Op::Reshape {
                shape: Shape::new([6, 4]),
            },
            vec![t(BF16, &[2, 3, 4])],
            Ok(t(BF16, &[6, 4])),
        ),
        case(
            "reshape to scalar",
            Op::Reshape {
                shape: Shape::scalar(),
            },
            vec![t(F32, &[1, 1])],
            Ok(scalar()),
        ),
        case(
            "permute",
            Op::Permute {
                perm: vec![2, 0, 3, 1],
            },
            vec![t(F16, &[2, 3, 4, 5])],
            Ok(t(F16, &[4, 2, 5, 3])),
        ),
        case(
            "slice middle axis",
            Op::Slice {
                axis: 1,
                start: 2,
                end: 5,
            },
            vec![t(BF16, &[2, 6, 3])],
            Ok(t(BF16, &[2, 3, 3])),
        ),
        case(
            "slice whole axis",
            Op::Slice {
                axis: 0,
                start: 0,
                end: 2,
            },
            vec![t(F32, &[2, 6])],
            Ok(t(F32, &[2, 6])),
        ),
        case(
            "concat axis 0",
            Op::Concat { axis: 0 },
            vec![t(F32, &[2, 3]), t(F32, &[1, 3]), t(F32, &[4, 3])],
            Ok(t(F32, &[7, 3])),
        ),
        case(
            "concat middle axis",
            Op::Concat { axis: 1 },
            vec![t(BF16, &[2, 3, 4]), t(BF16, &[2, 1, 4])],
            Ok(t(BF16, &[2, 4, 4])),
        ),
        case(
            "concat one operand",
            Op::Concat { axis: 0 },
            vec![t(F32, &[5])],
            Ok(t(F32, &[5])),
        ),
        case(
            "rope full",
            rope(RopeStyle::Neox, 64),
            vec![t(BF16, &[2, 16, 8, 64])],
            Ok(t(BF16, &[2, 16, 8, 64])),
        ),
        case(
            "rope partial rank 3",
            rope(RopeStyle::Gptj, 16),
            vec![t(F32, &[16, 8, 64])],
            Ok(t(F32, &[16, 8, 64])),
        ),
        case(
            "attention mha",
            attn(true),
            vec![
                t(BF16, &[2, 4, 16, 64]),
                t(BF16, &[2, 4, 16, 64]),
                t(BF16, &[2, 4, 16, 64]),
            ],
            Ok(t(BF16, &[2, 4, 16, 64])),
        ),
        case(
            "attention gqa, v dim differs, q_len != kv_len",
            attn(false),
            vec![
                t(F32, &[1, 8, 3, 64]),
                t(F32, &[1, 2, 10, 64]),
                t(F32, &[1, 2, 10, 32]),
            ],
            Ok(t(F32, &[1, 8, 3, 32])),
        ),
        case(
            "attention mqa",
            attn(true),
            vec![
                t(F16, &[1, 4, 5, 8]),
                t(F16, &[1, 1, 5, 8]),
                t(F16, &[1, 1, 5, 8]),
            ],
            Ok(t(F16, &[1, 4, 5, 8])),
        ),
        case(
            "fp8 attention gqa",
            fp8_attn(256.0, F8E4M3),
            fp8_attn_inputs(F8E4M3),
            Ok(t(F8E4M3, &[1, 4, 5, 16])),
        ),
        case(
            "add same shape",
            Op::Add,
            vec![t(BF16, &[2, 3]), t(BF16, &[2, 3])],
            Ok(t(BF16, &[2, 3])),
        ),
        case(
            "add broadcast trailing",
            Op::Add,
            vec![t(F32, &[2, 3, 4]), t(F32, &[4])],
            Ok(t(F32, &[2, 3, 4])),
        ),
        case(
            "mul broadcast both sides",
            Op::Mul,
            vec![t(F32, &[2, 1, 4]), t(F32, &[3, 1])],
            Ok(t(F32, &[2, 3, 4])),
        ),
        case(
            "mul by scalar",
            Op::Mul,
            vec![t(F32, &[]), t(F32, &[5, 2])],
            Ok(t(F32, &[5, 2])),
        ),
        case("silu", Op::Silu, vec![t(BF16, &[2, 8])], Ok(t(BF16, &[2, 8]))),
        case(
            "gelu",
            Op::Gelu {
                approx: GeluApprox::Tanh,
            },
            vec![t(F16, &[3])],
            Ok(t(F16, &[3])),
        ),
        case(
            "cast to bf16",
            Op::Cast { to: BF16 },
            vec![t(F32, &[2, 2])],
            Ok(t(BF16, &[2, 2])),
        ),
        case(
            "cast to int",
            Op::Cast { to: I32 },
            vec![t(F32, &[4])],
            Ok(t(I32, &[4])),
        ),
        case(
            "cast to fp8",
            Op::Cast { to: F8E5M2 },
            vec![t(BF16, &[4])],
            Ok(t(F8E5M2, &[4])),
        ),
        case(
            "quantize",
            Op::Quantize { to: F8E4M3 },
            vec![t(BF16, &[2, 16]), scalar()],
            Ok(t(F8E4M3, &[2, 16])),
        ),
        case(
            "dequantize",
            Op::Dequantize { to: BF16 },
            vec![t(F8E5M2, &[2, 16]), scalar()],
            Ok(t(BF16, &[2, 16])),
        ),
        case("output", Op::Output, vec![t(I64, &[3])], Ok(t(I64, &[3]))),
    ]
}

fn invalid_cases() -> Vec<Case> {
    use Want::{Arity, Attr, DType as Dt, Shape as Sh};
    let fp8_x = || t(F8E4M3, &[4, 16]);
    let fp8_w = || t(F8E4M3, &[8, 16]);
    vec![
        // Arity, op by op.
        case(
            "input with operand",
            Op::Input {
                dtype: F32,
                shape: Shape::new([1]),
            },
            vec![scalar()],
            Arity(1),
        ),
        case(
            "embedding 1 operand",
            Op::Embedding,
            vec![t(F32, &[4, 4])],
            Arity(1),
        ),
        case(
            "rms_norm 3 operands",
            Op::RmsNorm { eps: fl(1e-6) },
            vec![t(F32, &[2, 4]), t(F32, &[4]), t(F32, &[4])],
            Arity(3),
        ),
        case(
            "layer_norm 2 operands",
            Op::LayerNorm { eps: fl(1e-6) },
            vec![t(F32, &[2, 4]), t(F32, &[4])],
            Arity(2),
        ),
        case(
            "linear 3 operands",
            linear(F32),
            vec![t(F32, &[2, 4]), t(F32, &[3, 4]), scalar()],
            Arity(3),
        ),
        case("linear 1 operand", linear(F32), vec![t(F32, &[2, 4])], Arity(1)),
        case(
            "reshape 2 operands",
            Op::Reshape {
                shape: Shape::new([4]),
            },
            vec![t(F32, &[4]), t(F32, &[4])],
            Arity(2),
        ),
        case(
            "permute 0 operands",
            Op::Permute { perm: vec![0] },
            vec![],
            Arity(0),
        ),
        case(
            "slice 2 operands",
            Op::Slice {
                axis: 0,
                start: 0,
                end: 1,
            },
            vec![t(F32, &[4]), t(F32, &[4])],
            Arity(2),
        ),
        case("concat 0 operands", Op::Concat { axis: 0 }, vec![], Arity(0)),
        case(
            "rope 2 operands",
            rope(RopeStyle::Neox, 4),
            vec![t(F32, &[2, 2, 4]); 2],
            Arity(2),
        ),
        case(
            "attention 2 operands",
            attn(false),
            vec![t(F32, &[1, 1, 2, 4]); 2],
            Arity(2),
        ),
        case(
            "fp8 attention without scales",
            fp8_attn(256.0, F8E4M3),
            fp8_attn_inputs(F8E4M3)[..3].to_vec(),
            Arity(3),
        ),
        case("add 1 operand", Op::Add, vec![t(F32, &[4])], Arity(1)),
        case("mul 3 operands", Op::Mul, vec![t(F32, &[4]); 3], Arity(3)),
        case("silu 2 operands", Op::Silu, vec![t(F32, &[4]); 2], Arity(2)),
        case(
            "gelu 0 operands",
            Op::Gelu {
                approx: GeluApprox::None,
            },
            vec![],
            Arity(0),
        ),
        case("cast 0 operands", Op::Cast { to: BF16 }, vec![], Arity(0)),
        case(
            "quantize 1 operand",
            Op::Quantize { to: F8E4M3 },
            vec![t(F32, &[4])],
            Arity(1),
        ),
        case(
            "dequantize 1 operand",
            Op::Dequantize { to: F32 },
            vec![fp8_x()],
            Arity(1),
        ),
        case("output 2 operands", Op::Output, vec![t(F32, &[4]); 2], Arity(2)),
        // Embedding.
        case(
            "embedding float ids",
            Op::Embedding,
            vec![t(F32, &[10, 4]), t(F32, &[3])],
            Dt("ids must be i32 or i64, got f32"),
        ),
        case(
            "embedding 3-d table",
            Op::Embedding,
            vec![t(F32, &[10, 4, 2]), t(I32, &[3])],
            Sh("table must be [vocab, hidden], got [10, 4, 2]"),
        ),
        // Norms.
        case(
            "rms_norm gain size",
            Op::RmsNorm { eps: fl(1e-6) },
            vec![t(F32, &[2, 16]), t(F32, &[8])],
            Sh("gain has shape [8], x has 16 features"),
        ),
        case(
            "layer_norm bias size",
            Op::LayerNorm { eps: fl(1e-6) },
            vec![t(F32, &[2, 16]), t(F32, &[16]), t(F32, &[1, 16])],
            Sh("bias has shape [1, 16], x has 16 features"),
        ),
        case(
            "rms_norm negative eps",
            Op::RmsNorm { eps: fl(-1.0) },
            vec![t(F32, &[4]), t(F32, &[4])],
            Attr("eps must be finite"),
        ),
        case(
            "rms_norm NaN eps",
            Op::RmsNorm { eps: fl(f32::NAN) },
            vec![t(F32, &[4]), t(F32, &[4])],
            Attr("eps must be finite"),
        ),
        case(
            "rms_norm fp8 x",
            Op::RmsNorm { eps: fl(1e-6) },
            vec![t(F8E4M3, &[4]), t(F32, &[4])],
            Dt("x must be f32, bf16 or f16, got f8e4m3"),
        ),
        case(
            "rms_norm scalar x",
            Op::RmsNorm { eps: fl(1e-6) },
            vec![scalar(), t(F32, &[1])],
            Sh("at least one dimension"),
        ),
        case(
            "rms_norm int gain",
            Op::RmsNorm { eps: fl(1e-6) },
            vec![t(F32, &[4]), t(I32, &[4])],
            Dt("gain must be f32, bf16 or f16"),
        ),
        // Linear.
        case(
            "linear feature mismatch",
            linear(BF16),
            vec![t(BF16, &[4, 8192]), t(BF16, &[8192, 2048])],
            Sh("input has 8192 features, weight expects 2048"),
        ),
        case(
            "linear 3-d weight",
            linear(F32),
            vec![t(F32, &[4, 8]), t(F32, &[2, 4, 8])],
            Sh("weight must be [out_features, in_features]"),
        ),
        case(
            "linear scalar input",
            linear(F32),
            vec![scalar(), t(F32, &[4, 1])],
            Sh("input must have at least one dimension"),
        ),
        case(
            "fp8 linear without scales",
            linear(BF16),
            vec![fp8_x(), fp8_w()],
            Arity(2),
        ),
        case(
            "bf16 linear with scales",
            linear(BF16),
            vec![t(BF16, &[4, 16]), t(BF16, &[8, 16]), scalar(), scalar()],
            Arity(4),
        ),
        case(
            "fp8 x with bf16 w",
            linear(BF16),
            vec![fp8_x(), t(BF16, &[8, 16]), scalar(), scalar()],
            Dt("input is f8e4m3 but weight is bf16: both must be FP8 or neither"),
        ),
        case(
            "bf16 x with fp8 w",
            linear(BF16),
            vec![t(BF16, &[4, 16]), fp8_w()],
            Dt("both must be FP8 or neither"),
        ),
        case(
            "bf16 x with f16 w",
            linear(BF16),
            vec![t(BF16, &[4, 16]), t(F16, &[8, 16])],
            Dt("input is bf16 but weight is f16"),
        ),
        case(
            "int linear",
            linear(F32),
            vec![t(I32, &[4, 16]), t(I32, &[8, 16])],
            Dt("input must be f32, bf16 or f16"),
        ),
        case(
            "linear to fp8",
            linear(F8E4M3),
            vec![t(F32, &[4, 16]), t(F32, &[8, 16])],
            Dt("output must be f32, bf16 or f16, got f8e4m3"),
        ),
        case(
            "linear to int",
            linear(I32),
            vec![t(F32, &[4, 16]), t(F32, &[8, 16])],
            Dt("output must be f32, bf16 or f16"),
        ),
        case(
            "fp8 linear bf16 scale",
            linear(BF16),
            vec![fp8_x(), fp8_w(), t(BF16, &[]), scalar()],
            Sh("x_scale must be an f32 scalar, got bf16[]"),
        ),
        case(
            "fp8 linear vector scale",
            linear(BF16),
            vec![fp8_x(), fp8_w(), scalar(), t(F32, &[8])],
            Sh("w_scale must be an f32 scalar, got f32[8]"),
        ),
        case(
            "gated linear 4 operands",
            gated(GateAct::Silu, BF16, F8E4M3),
            gated_inputs(F8E4M3, F8E4M3)[..4].to_vec(),
            Arity(4),
        ),
        case(
            "gated linear bf16 x",
            gated(GateAct::Silu, BF16, F8E4M3),
            gated_inputs(BF16, BF16),
            Dt("input is bf16 and weight is bf16: both must be one FP8 type"),
        ),
        case(
            "gated linear mixed FP8 types",
            gated(GateAct::Silu, BF16, F8E4M3),
            gated_inputs(F8E4M3, F8E5M2),
            Dt("input is f8e4m3 and weight is f8e5m2: both must be one FP8 type"),
        ),
        case(
            "gated linear fp8 mid",
            gated(GateAct::Silu, F8E4M3, F8E4M3),
            gated_inputs(F8E4M3, F8E4M3),
            Dt("mid must be f32, bf16 or f16, got f8e4m3"),
        ),
        case(
            "gated linear to bf16",
            gated(GateAct::Silu, BF16, BF16),
            gated_inputs(F8E4M3, F8E4M3),
            Dt("the output must be an FP8 type, not bf16"),
        ),
        case(
            "gated linear 3-d weight",
            gated(GateAct::Silu, BF16, F8E4M3),
            {
                let mut inputs = gated_inputs(F8E4M3, F8E4M3);
                inputs[1] = t(F8E4M3, &[2, 48, 64]);
                inputs
            },
            Sh("weight must be [out_features, in_features], got [2, 48, 64]"),
        ),
        case(
            "gated linear odd rows",
            gated(GateAct::Silu, BF16, F8E4M3),
            {
                let mut inputs = gated_inputs(F8E4M3, F8E4M3);
                inputs[1] = t(F8E4M3, &[95, 64]);
                inputs
            },
            Sh("weight [95, 64] must stack gate and up rows: it needs an even number of rows"),
        ),
        case(
            "gated linear feature mismatch",
            gated(GateAct::Silu, BF16, F8E4M3),
            {
                let mut inputs = gated_inputs(F8E4M3, F8E4M3);
                inputs[1] = t(F8E4M3, &[96, 32]);
                inputs
            },
            Sh("input has 64 features, weight expects 32"),
        ),
        case(
            "gated linear vector w_scale",
            gated(GateAct::Silu, BF16, F8E4M3),
            {
                let mut inputs = gated_inputs(F8E4M3, F8E4M3);
                inputs[3] = t(F32, &[96]);
                inputs
            },
            Sh("w_scale must be an f32 scalar, got f32[96]"),
        ),
        case(
            "gated linear bf16 out_scale",
            gated(GateAct::Silu, BF16, F8E4M3),
            {
                let mut inputs = gated_inputs(F8E4M3, F8E4M3);
                inputs[4] = t(BF16, &[]);
                inputs
            },
            Sh("out_scale must be an f32 scalar, got bf16[]"),
        ),
        // Views.
        case(
            "reshape count",
            Op::Reshape {
                shape: Shape::new([5, 5]),
            },
            vec![t(F32, &[2, 3, 4])],
            Sh("cannot reshape [2, 3, 4] (24 elements) to [5, 5] (25 elements)"),
        ),
        case(
            "permute repeated axis",
            Op::Permute { perm: vec![0, 0, 1] },
            vec![t(F32, &[2, 3, 4])],
            Attr("is not a permutation"),
        ),
        case(
            "permute axis out of range",
            Op::Permute { perm: vec![0, 3, 1] },
            vec![t(F32, &[2, 3, 4])],
            Attr("is not a permutation"),
        ),
        case(
            "permute too short",
            Op::Permute { perm: vec![1, 0] },
            vec![t(F32, &[2, 3, 4])],
            Attr("is not a permutation of the 3 axes"),
        ),
        case(
            "slice end past axis",
            Op::Slice {
                axis: 1,
                start: 2,
                end: 7,
            },
            vec![t(F32, &[2, 6])],
            Attr("range 2..7 is empty or exceeds axis 1"),
        ),
        case(
            "slice empty",
            Op::Slice {
                axis: 0,
                start: 1,
                end: 1,
            },
            vec![t(F32, &[2, 6])],
            Attr("is empty"),
        ),
        case(
            "slice axis out of range",
            Op::Slice {
                axis: 2,
                start: 0,
                end: 1,
            },
            vec![t(F32, &[2, 6])],
            Attr("axis 2 is out of range"),
        ),
        case(
            "concat off-axis mismatch",
            Op::Concat { axis: 1 },
            vec![t(F32, &[2, 3, 4]), t(F32, &[2, 1, 5])],
            Sh("operand 1 has shape [2, 1, 5], which differs from operand 0's [2, 3, 4] off axis 1"),
        ),
        case(
            "concat rank mismatch",
            Op::Concat { axis: 0 },
            vec![t(F32, &[2, 3]), t(F32, &[2, 3, 1])],
            Sh("differs"),
        ),
        case(
            "concat dtype mismatch",
            Op::Concat { axis: 0 },
            vec![t(F32, &[2]), t(BF16, &[2])],
            Dt("operand 1 is bf16, operand 0 is f32"),
        ),
        case(
            "concat axis out of range",
            Op::Concat { axis: 2 },
            vec![t(F32, &[2, 3]), t(F32, &[2, 3])],
            Attr("axis 2 is out of range"),
        ),
        // RoPE.
        case(
            "rope odd rotary_dim",
            rope(RopeStyle::Neox, 7),
            vec![t(F32, &[4, 2, 8])],
            Attr("rotary_dim 7 must be even"),
        ),
        case(
            "rope rotary_dim too large",
            rope(RopeStyle::Gptj, 16),
            vec![t(F32, &[4, 2, 8])],
            Attr("at most head_dim 8"),
        ),
        case(
            "rope rotary_dim 0",
            rope(RopeStyle::Neox, 0),
            vec![t(F32, &[4, 2, 8])],
            Attr("rotary_dim 0"),
        ),
        case(
            "rope theta 0",
            Op::Rope {
                style: RopeStyle::Neox,
                theta: fl(0.0),
                rotary_dim: 8,
                scaling: None,
            },
            vec![t(F32, &[4, 2, 8])],
            Attr("theta must be positive"),
        ),
        case(
            "rope rank 2",
            rope(RopeStyle::Neox, 8),
            vec![t(F32, &[4, 8])],
            Sh("x must be [..., seq, heads, head_dim]"),
        ),
        case(
            "rope int x",
            rope(RopeStyle::Neox, 8),
            vec![t(I32, &[4, 2, 8])],
            Dt("x must be f32, bf16 or f16"),
        ),
        // Attention.
        case(
            "attention hq not a multiple of hkv",
            attn(true),
            vec![
                t(F32, &[1, 6, 4, 8]),
                t(F32, &[1, 4, 4, 8]),
                t(F32, &[1, 4, 4, 8]),
            ],
            Sh("6 query heads are not a multiple of 4 KV heads"),
        ),
        case(
            "attention more kv heads than q heads",
            attn(true),
            vec![
                t(F32, &[1, 2, 4, 8]),
                t(F32, &[1, 4, 4, 8]),
                t(F32, &[1, 4, 4, 8]),
            ],
            Sh("2 query heads are not a multiple of 4 KV heads"),
        ),
        case(
            "attention q/k head dims differ",
            attn(false),
            vec![
                t(F32, &[1, 2, 4, 8]),
                t(F32, &[1, 2, 4, 16]),
                t(F32, &[1, 2, 4, 8]),
            ],
            Sh("q head_dim 8 differs from k head_dim 16"),
        ),
        case(
            "attention v seq differs from k",
            attn(false),
            vec![
                t(F32, &[1, 2, 4, 8]),
                t(F32, &[1, 2, 4, 8]),
                t(F32, &[1, 2, 5, 8]),
            ],
            Sh("must match k"),
        ),
        case(
            "attention v heads differ from k",
            attn(false),
            vec![
                t(F32, &[1, 2, 4, 8]),
                t(F32, &[1, 2, 4, 8]),
                t(F32, &[1, 1, 4, 8]),
            ],
            Sh("must match k"),
        ),
        case(
            "attention batch differs",
            attn(false),
            vec![
                t(F32, &[2, 2, 4, 8]),
                t(F32, &[1, 2, 4, 8]),
                t(F32, &[1, 2, 4, 8]),
            ],
            Sh("batch differs: q 2, k 1, v 1"),
        ),
        case(
            "attention rank 3",
            attn(false),
            vec![t(F32, &[2, 4, 8]), t(F32, &[2, 4, 8]), t(F32, &[2, 4, 8])],
            Sh("q must be [batch, heads, seq, head_dim]"),
        ),
        case(
            "attention mixed dtypes",
            attn(false),
            vec![
                t(BF16, &[1, 2, 4, 8]),
                t(F32, &[1, 2, 4, 8]),
                t(BF16, &[1, 2, 4, 8]),
            ],
            Dt("k is f32, q is bf16"),
        ),
        case(
            "attention infinite scale",
            Op::Attention {
                causal: false,
                scale: fl(f32::INFINITY),
            },
            vec![t(F32, &[1, 2, 4, 8]); 3],
            Attr("scale must be finite"),
        ),
        case(
            "fp8 attention on bf16 q",
            fp8_attn(256.0, F8E4M3),
            fp8_attn_inputs(BF16),
            Dt("q must be FP8, got bf16"),
        ),
        case(
            "fp8 attention to bf16",
            fp8_attn(256.0, BF16),
            fp8_attn_inputs(F8E4M3),
            Dt("the output must be an FP8 type, not bf16"),
        ),
        case(
            "fp8 attention p_scale past e4m3",
            fp8_attn(512.0, F8E4M3),
            fp8_attn_inputs(F8E4M3),
            Attr("p_scale must be in (0, 448]"),
        ),
        case(
            "fp8 attention vector scale",
            fp8_attn(256.0, F8E4M3),
            {
                let mut inputs = fp8_attn_inputs(F8E4M3);
                inputs[6] = t(F32, &[2]);
                inputs
            },
            Sh("o_scale must be an f32 scalar"),
        ),
        // Elementwise.
        case(
            "add not broadcastable",
            Op::Add,
            vec![t(F32, &[2, 3]), t(F32, &[3, 2])],
            Sh("shapes [2, 3] and [3, 2] do not broadcast"),
        ),
        case(
            "mul not broadcastable",
            Op::Mul,
            vec![t(F32, &[4]), t(F32, &[3])],
            Sh("do not broadcast"),
        ),
        case(
            "add mixed dtypes",
            Op::Add,
            vec![t(BF16, &[4]), t(F32, &[4])],
            Dt("operands are bf16 and f32"),
        ),
        case(
            "add ints",
            Op::Add,
            vec![t(I32, &[4]), t(I32, &[4])],
            Dt("a must be f32, bf16 or f16, got i32"),
        ),
        case(
            "silu fp8",
            Op::Silu,
            vec![t(F8E4M3, &[4])],
            Dt("x must be f32, bf16 or f16, got f8e4m3"),
        ),
        case(
            "gelu int",
            Op::Gelu {
                approx: GeluApprox::None,
            },
            vec![t(I64, &[4])],
            Dt("got i64"),
        ),
        // Quantization.
        case(
            "quantize to bf16",
            Op::Quantize { to: BF16 },
            vec![t(F32, &[4]), scalar()],
            Dt("can only quantize to an FP8 type, not bf16"),
        ),
        case(
            "quantize to int",
            Op::Quantize { to: I32 },
            vec![t(F32, &[4]), scalar()],
            Dt("not i32"),
        ),
        case(
            "quantize vector scale",
            Op::Quantize { to: F8E4M3 },
            vec![t(F32, &[4]), t(F32, &[4])],
            Sh("scale must be an f32 scalar"),
        ),
        case(
            "quantize fp8 input",
            Op::Quantize { to: F8E4M3 },
            vec![fp8_x(), scalar()],
            Dt("x must be f32, bf16 or f16"),
        ),
        case(
            "dequantize bf16 input",
            Op::Dequantize { to: F32 },
            vec![t(BF16, &[4]), scalar()],
            Dt("q must be FP8, got bf16"),
        ),
        case(
            "dequantize to fp8",
            Op::Dequantize { to: F8E5M2 },
            vec![fp8_x(), scalar()],
            Dt("can only dequantize to f32, bf16 or f16, not f8e5m2"),
        ),
    ]
}

/// Adds the operands of `c` as inputs `i0, i1, …` of a fresh graph, then the op itself named `n`.
fn add_to_graph(c: &Case) -> (Graph, Result<NodeId, GraphError>) {
    let mut g = Graph::new();
    let ids: Vec<NodeId> = c
        .inputs
        .iter()
        .enumerate()
        .map(|(i, ty)| {
            g.add(
                Op::Input {
                    dtype: ty.dtype,
                    shape: ty.shape.clone(),
                },
                &[],
                format!("i{i}"),
            )
            .expect("operand inputs are valid")
        })
        .collect();
    let result = g.add(c.op.clone(), &ids, "n");
    (g, result)
}

fn check(c: &Case) {
    let refs: Vec<&TensorType> = c.inputs.iter().collect();
    let got = infer(&c.op, &refs);
    match (&c.want, &got) {
        (Want::Ok(want), Ok(ty)) => assert_eq!(ty, want, "{}: inferred type", c.what),
        (Want::Arity(n), Err(Mismatch::Arity { got, .. })) => assert_eq!(got, n, "{}: arity", c.what),
        (Want::Shape(text), Err(m @ Mismatch::Shape(_)))
        | (Want::DType(text), Err(m @ Mismatch::DType(_)))
        | (Want::Attr(text), Err(m @ Mismatch::Attribute(_))) => {
            assert!(
                m.to_string().contains(text),
                "{}: message {m:?} lacks {text:?}",
                c.what
            )
        }
        (want, got) => panic!("{}: wanted {want:?}, inferred {got:?}", c.what),
    }

    // The graph must agree with `infer` and name the node in its error.
    let (g, added) = add_to_graph(c);
    let node = NodeId(c.inputs.len() as u32);
    match (got, added) {
        (Ok(ty), Ok(id)) => {
            assert_eq!(id, node, "{}", c.what);
            assert_eq!(g.node(id).ty, ty, "{}: graph type", c.what);
            assert_eq!(g.operands(id).len(), c.inputs.len(), "{}: operand edges", c.what);
        }
        (Err(mismatch), Err(err)) => {
            let text = err.to_string();
            assert_eq!(
                err,
                GraphError::Invalid {
                    node,
                    op: c.op.kind(),
                    name: "n".into(),
                    mismatch: mismatch.clone(),
                },
                "{}",
                c.what
            );
            assert_eq!(
                text,
                format!("node {node} ({} 'n'): {mismatch}", c.op.kind()),
                "{}: display",
                c.what
            );
            assert_eq!(
                g.len(),
                c.inputs.len(),
                "{}: a rejected node must not be added",
                c.what
            );
        }
        (got, added) => panic!("{}: infer gave {got:?} but Graph::add gave {added:?}", c.what),
    }
}

#[test]
fn every_op_infers_its_output_type() {
    let cases = valid_cases();
    let kinds: std::collections::BTreeSet<&str> = cases.iter().map(|c| c.op.kind()).collect();
    assert_eq!(kinds.len(), 22, "one valid case per op at least, got {kinds:?}");
    for c in &cases {
        check(c);
    }
}

#[test]
fn invalid_operands_and_attributes_are_rejected() {
    for c in &invalid_cases() {
        check(c);
    }
}

#[test]
fn arity_message() {
    let err = infer(&Op::RmsNorm { eps: fl(1e-6) }, &[&t(F32, &[4])]).unwrap_err();
    assert_eq!(
        err,
        Mismatch::Arity {
            expected: "2 (x, gain)",
            got: 1
        }
    );
    assert_eq!(err.to_string(), "expects 2 (x, gain) operand(s), got 1");
}

#[test]
fn linear_feature_mismatch_message_names_node_op_and_scope() {
    let mut b = Builder::new();
    let x = b.input("x", BF16, [2, 8192]).unwrap();
    let y = b.silu(x).unwrap();
    let err = b
        .scoped("mlp.down", |b| {
            let w = b.param("weight", BF16, [8192, 2048], Init::Normal { std: fl(0.02) })?;
            assert_eq!(w, NodeId(2));
            b.linear(y, w, BF16)
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "node 3 (linear 'mlp.down'): input has 8192 features, weight expects 2048"
    );
    assert!(matches!(
        err,
        GraphError::Invalid {
            node: NodeId(3),
            op: "linear",
            mismatch: Mismatch::Shape(_),
            ..
        }
    ));
    assert_eq!(b.graph().len(), 3, "the rejected linear is not in the graph");
    assert_eq!(b.graph().binding("mlp.down.weight"), Some(NodeId(2)));
}

#[test]
fn fp8_linear_without_scales_message() {
    let mut b = Builder::new();
    let x = b.input("x", F8E4M3, [4, 16]).unwrap();
    let w = b
        .param("w", F8E4M3, [8, 16], Init::Normal { std: fl(1.0) })
        .unwrap();
    let err = b.linear(x, w, BF16).unwrap_err();
    assert_eq!(
        err.to_string(),
        "node 2 (linear ''): expects 4 (x, w, x_scale, w_scale: FP8 inputs need scales) operand(s), got 2"
    );
    // With scales it is accepted.
    let xs = b.param("xs", F32, [], Init::Const { value: fl(1.0) }).unwrap();
    let ws = b.param("ws", F32, [], Init::Const { value: fl(1.0) }).unwrap();
    let y = b.linear_fp8(x, w, xs, ws, BF16).unwrap();
    assert_eq!(b.ty(y), &t(BF16, &[4, 8]));
}

#[test]
fn duplicate_names_are_rejected_across_inputs_params_and_outputs() {
    let mut b = Builder::new();
    let x = b.input("x", F32, [4]).unwrap();
    let err = b.input("x", BF16, [2]).unwrap_err();
    assert_eq!(
        err,
        GraphError::DuplicateName {
            node: NodeId(1),
            op: "input",
            name: "x".into(),
            previous: x,
        }
    );
    assert_eq!(
        err.to_string(),
        "node 1 (input 'x'): the name is already used by node 0"
    );
    // Inputs, params and outputs share one namespace; params are scoped.
    let err = b
        .param("x", F32, [4], Init::Const { value: fl(0.0) })
        .unwrap_err();
    assert!(matches!(
        err,
        GraphError::DuplicateName {
            op: "param",
            previous: NodeId(0),
            ..
        }
    ));
    let err = b.output("x", x).unwrap_err();
    assert!(matches!(
        err,
        GraphError::DuplicateName {
            op: "output",
            previous: NodeId(0),
            ..
        }
    ));
    let p = b
        .scoped("layer", |b| {
            b.param("x", F32, [4], Init::Const { value: fl(0.0) })
        })
        .expect("'layer.x' is a different name");
    assert_eq!(b.graph().node(p).name, "layer.x");
    let err = b
        .scoped("layer", |b| {
            b.param("x", F32, [4], Init::Const { value: fl(0.0) })
        })
        .unwrap_err();
    assert!(
        matches!(err, GraphError::DuplicateName { ref name, previous, .. } if name == "layer.x" && previous == p)
    );
    // Intermediate nodes may share a (provenance) name.
    let s1 = b.scoped("act", |b| b.silu(x)).unwrap();
    let s2 = b.scoped("act", |b| b.silu(x)).unwrap();
    assert_eq!(b.graph().node(s1).name, b.graph().node(s2).name);
    assert_eq!(b.graph().len(), 4);
}

#[test]
fn unknown_operand_is_rejected() {
    let mut g = Graph::new();
    let x = g
        .add(
            Op::Input {
                dtype: F32,
                shape: Shape::new([4]),
            },
            &[],
            "x",
        )
        .unwrap();
    let err = g.add(Op::Add, &[x, NodeId(1)], "sum").unwrap_err();
    assert_eq!(
        err,
        GraphError::UnknownOperand {
            node: NodeId(1),
            op: "add",
            name: "sum".into(),
            operand: 1,
            input: NodeId(1),
        }
    );
    assert_eq!(
        err.to_string(),
        "node 1 (add 'sum'): operand 1 refers to node 1, which is not defined before it"
    );
    let err = g.add(Op::Silu, &[NodeId(7)], "").unwrap_err();
    assert!(matches!(
        err,
        GraphError::UnknownOperand {
            operand: 0,
            input: NodeId(7),
            ..
        }
    ));
    assert_eq!(g.len(), 1);
}

#[test]
fn inputs_params_and_outputs_need_names() {
    let mut b = Builder::new();
    let err = b.input("", F32, [4]).unwrap_err();
    assert_eq!(
        err,
        GraphError::MissingName {
            node: NodeId(0),
            op: "input"
        }
    );
    assert_eq!(
        err.to_string(),
        "node 0 (input): inputs, params and outputs need a non-empty name"
    );
    let err = b.param("", F32, [4], Init::Const { value: fl(1.0) }).unwrap_err();
    assert_eq!(
        err,
        GraphError::MissingName {
            node: NodeId(0),
            op: "param"
        }
    );
    let x = b.input("x", F32, [4]).unwrap();
    let err = b.output("", x).unwrap_err();
    assert_eq!(
        err,
        GraphError::MissingName {
            node: NodeId(1),
            op: "output"
        }
    );
    // Other nodes may be anonymous.
    let y = b.silu(x).unwrap();
    assert_eq!(b.graph().node(y).name, "");
    assert_eq!(b.graph().binding(""), None);
}

#[test]
fn builder_split_yields_consecutive_slices() {
    let mut b = Builder::new();
    let x = b.input("x", BF16, [2, 10, 3]).unwrap();
    let parts = b.split(x, 1, &[2, 5, 3]).unwrap();
    let types: Vec<_> = parts.iter().map(|&p| b.ty(p).clone()).collect();
    assert_eq!(
        types,
        vec![t(BF16, &[2, 2, 3]), t(BF16, &[2, 5, 3]), t(BF16, &[2, 3, 3])]
    );
    let ranges: Vec<_> = parts
        .iter()
        .map(|&p| match b.graph().node(p).op {
            Op::Slice { axis, start, end } => (axis, start, end),
            ref op => panic!("split made {op:?}"),
        })
        .collect();
    assert_eq!(ranges, vec![(1, 0, 2), (1, 2, 7), (1, 7, 10)]);
    let err = b.split(x, 1, &[6, 6]).unwrap_err();
    assert!(
        err.to_string().contains("range 6..12 is empty or exceeds axis 1"),
        "{err}"
    );
}

#[test]
fn broadcast_follows_numpy_rules() {
    let s = |d: &[usize]| Shape::new(d);
    type Dims = &'static [usize];
    let cases: &[(Dims, Dims, Option<Dims>)] = &[
        (&[2, 3, 4], &[4], Some(&[2, 3, 4])),
        (&[2, 1, 4], &[3, 1], Some(&[2, 3, 4])),
        (&[], &[3, 2], Some(&[3, 2])),
        (&[], &[], Some(&[])),
        (&[1], &[5, 1], Some(&[5, 1])),
        (&[5, 1, 1], &[1, 6, 1], Some(&[5, 6, 1])),
        (&[2, 0], &[1], Some(&[2, 0])),
        (&[7, 1], &[1, 7], Some(&[7, 7])),
        (&[2, 3], &[3, 2], None),
        (&[3], &[4], None),
        (&[2, 3, 4], &[3, 1, 4], None),
        (&[0], &[2], None),
    ];
    for &(a, b, want) in cases {
        let want = want.map(s);
        assert_eq!(broadcast(&s(a), &s(b)), want, "broadcast({a:?}, {b:?})");
        assert_eq!(broadcast(&s(b), &s(a)), want, "broadcast({b:?}, {a:?})");
    }
}

#[test]
fn display_of_types_and_shapes() {
    assert_eq!(t(BF16, &[2, 3]).to_string(), "bf16[2, 3]");
    assert_eq!(scalar().to_string(), "f32[]");
    assert_eq!(t(F8E4M3, &[1]).size_bytes(), 1);
    assert_eq!(t(I64, &[2, 3]).size_bytes(), 48);
    assert_eq!(Shape::new([2, 3, 4]).strides(), vec![12, 4, 1]);
}
