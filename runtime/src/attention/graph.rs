//! The cuDNN graph of fused attention forward: exactly the composite graph NVIDIA's frontend
//! emits for SDPA on cuDNN 9.13–9.20 (for bf16, as recorded from PyTorch on an H100), because
//! cuDNN picks its flash-attention engine by recognising this pattern, and small deviations (an
//! f32 softmax output, no stats branch) make it refuse the graph or fall back to a slow engine.
//!
//! ```text
//! S = Q·Kᵀ (f32) → ·scale → [causal: row ≥ col ? S : −∞] → softmax → P (bf16) → O = P·V
//! softmax: M = max(S), E = exp(S − M), L = Σ E, P = E / L; stats = M + log L (virtual, unused)
//! ```
//!
//! Kᵀ is K's view with the last two dims and strides swapped; GQA needs nothing: K and V carry
//! `kv_heads` heads and cuDNN broadcasts them over the query-head groups. (cuDNN ≥ 9.21 prefers a
//! single `OPERATION_SDPA_FWD` node; this graph is what 9.14, the system library, understands.)
//!
//! **FP8** ([`AttentionPrecision::Fp8`]): Q, K, V and O are e4m3 and the graph grows by the
//! frontend's per-tensor scaling (its `CompositeSDPANode` with FP8 inputs, whose second product
//! is a `MatmulFP8Node`), reading six f32 scale factors from device memory and writing two amaxes:
//!
//! ```text
//! S = Q·Kᵀ (f32) · scale · descale_Q · descale_K → [mask] → softmax → P (f32)
//! amax_S = max |P|;  P8 = P · scale_S (e4m3)
//! X = (P8·V) · descale_S · descale_V (f32);  O = X · scale_O (e4m3);  amax_O = max |X|
//! ```
//!
//! The amaxes are taken before scaling (of P, of X), as delayed-scaling recipes want them.

use crate::cudnn::{DataType, GraphSpec, OpSpec, PointwiseMode as Pw, ReduceOp, Storage, TensorSpec};

use super::spec::{AttentionPrecision, AttentionSpec, Tensor};

/// Tensor uids: the frontend's numbering for the bf16 graph, kept stable because they key
/// variant packs; the FP8 graph's own tensors follow from 19.
pub(crate) mod uid {
    pub const Q: i64 = 0;
    pub const K_T: i64 = 1;
    pub const V: i64 = 2;
    pub const O: i64 = 3;
    pub const SCORES: i64 = 4;
    pub const SCALE: i64 = 5;
    pub const SCALED: i64 = 6;
    pub const ROW: i64 = 7;
    pub const COL: i64 = 8;
    pub const MASK: i64 = 9;
    pub const NEG_INF: i64 = 10;
    pub const MASKED: i64 = 11;
    pub const STATS: i64 = 12;
    pub const P: i64 = 13;
    pub const MAX: i64 = 14;
    pub const SHIFTED: i64 = 15;
    pub const EXP: i64 = 16;
    pub const SUM: i64 = 17;
    pub const LOG_SUM: i64 = 18;
    // FP8 only: the six scale factors and two amaxes (device f32 scalars)…
    pub const DESCALE_Q: i64 = 19;
    pub const DESCALE_K: i64 = 20;
    pub const DESCALE_V: i64 = 21;
    pub const DESCALE_S: i64 = 22;
    pub const SCALE_S: i64 = 23;
    pub const SCALE_O: i64 = 24;
    pub const AMAX_S: i64 = 25;
    pub const AMAX_O: i64 = 26;
    // …and the intermediates they add.
    pub const SCALED_DQ: i64 = 27;
    pub const LOGITS: i64 = 28;
    pub const P8: i64 = 29;
    pub const PV: i64 = 30;
    pub const PV_DS: i64 = 31;
    pub const X: i64 = 32;
}

/// The fused-attention graph for `spec`, which must have passed [`AttentionSpec::validate`]
/// (that bounds every size below by `i64::MAX`).
pub(crate) fn sdpa_forward(spec: &AttentionSpec) -> GraphSpec {
    let s = &spec.shape;
    let i = |n: usize| n as i64;
    let (b, hq, seq, d) = (i(s.batch), i(s.q_heads), i(s.seq_len), i(s.head_dim));
    let fp8 = spec.precision == AttentionPrecision::Fp8;
    let io_type = if fp8 { DataType::Fp8E4m3 } else { DataType::Bf16 };
    let io = |uid, name, tensor: Tensor| {
        let (mut dims, mut strides) = (spec.dims(tensor).map(i), spec.strides(tensor).map(i));
        if uid == uid::K_T {
            dims.swap(2, 3);
            strides.swap(2, 3);
        }
        TensorSpec {
            uid,
            name,
            dtype: io_type,
            dims: dims.to_vec(),
            strides: strides.to_vec(),
            storage: Storage::Device,
        }
    };
    let scalar = |uid, name, storage| TensorSpec {
        uid,
        name,
        dtype: DataType::F32,
        dims: vec![1; 4],
        strides: vec![1; 4],
        storage,
    };
    let scores = |uid, name, dtype| TensorSpec {
        uid,
        name,
        dtype,
        dims: vec![b, hq, seq, seq],
        strides: vec![hq * seq * seq, seq * seq, seq, 1],
        storage: Storage::Virtual,
    };
    let rows = |uid, name| TensorSpec {
        uid,
        name,
        dtype: DataType::F32,
        dims: vec![b, hq, seq, 1],
        strides: vec![hq * seq, seq, 1, 1],
        storage: Storage::Virtual,
    };
    // `P·V` before scaling: dense `[b, hq, seq, d]`, as the frontend infers a matmul's output.
    let outputs = |uid, name| TensorSpec {
        uid,
        name,
        dtype: DataType::F32,
        dims: vec![b, hq, seq, d],
        strides: vec![hq * seq * d, seq * d, d, 1],
        storage: Storage::Virtual,
    };
    let pw = |mode, x, b: Option<i64>, y| OpSpec::Pointwise {
        mode,
        precision: DataType::F32,
        x,
        b,
        t: None,
        y,
    };
    let mul = |x, b, y| pw(Pw::Mul, x, Some(b), y);

    let mut tensors = vec![
        io(uid::Q, "Q", Tensor::Q),
        io(uid::K_T, "K^T", Tensor::K),
        io(uid::V, "V", Tensor::V),
        io(uid::O, "O", Tensor::O),
        scores(uid::SCORES, "scores", DataType::F32),
        scalar(uid::SCALE, "softmax scale", Storage::ByValue),
        scores(uid::SCALED, "scaled scores", DataType::F32),
    ];
    let mut ops = vec![
        OpSpec::Matmul {
            name: "Q·K^T",
            a: uid::Q,
            b: uid::K_T,
            c: uid::SCORES,
        },
        mul(uid::SCORES, uid::SCALE, uid::SCALED),
    ];
    let mut logits = uid::SCALED;
    if fp8 {
        // The e4m3 product is of the stored values; dequantizing after it costs two multiplies
        // per score instead of one per input element.
        tensors.extend([
            scalar(uid::DESCALE_Q, "descale Q", Storage::Device),
            scalar(uid::DESCALE_K, "descale K", Storage::Device),
            scores(uid::SCALED_DQ, "scores * descale Q", DataType::F32),
            scores(uid::LOGITS, "dequantized scores", DataType::F32),
        ]);
        ops.extend([
            mul(uid::SCALED, uid::DESCALE_Q, uid::SCALED_DQ),
            mul(uid::SCALED_DQ, uid::DESCALE_K, uid::LOGITS),
        ]);
        logits = uid::LOGITS;
    }
    if spec.causal {
        tensors.extend([
            scores(uid::ROW, "row index", DataType::I32),
            scores(uid::COL, "column index", DataType::I32),
            scores(uid::MASK, "causal mask", DataType::Bool),
            scalar(uid::NEG_INF, "-inf", Storage::ByValue),
            scores(uid::MASKED, "masked scores", DataType::F32),
        ]);
        ops.extend([
            pw(Pw::GenIndex { axis: 2 }, logits, None, uid::ROW),
            pw(Pw::GenIndex { axis: 3 }, logits, None, uid::COL),
            OpSpec::Pointwise {
                mode: Pw::CmpGe,
                precision: DataType::Bool,
                x: uid::ROW,
                b: Some(uid::COL),
                t: None,
                y: uid::MASK,
            },
            OpSpec::Pointwise {
                mode: Pw::BinarySelect,
                precision: DataType::F32,
                x: logits,
                b: Some(uid::NEG_INF),
                t: Some(uid::MASK),
                y: uid::MASKED,
            },
        ]);
        logits = uid::MASKED;
    }
    // The second product's A operand must have the I/O type, so for bf16 P itself is bf16;
    // for FP8 the f32 P is measured (amax) and then scaled into e4m3.
    let p_type = if fp8 { DataType::F32 } else { DataType::Bf16 };
    tensors.extend([
        rows(uid::STATS, "softmax stats"),
        scores(uid::P, "P", p_type),
        rows(uid::MAX, "row max"),
        scores(uid::SHIFTED, "scores - max", DataType::F32),
        scores(uid::EXP, "exp", DataType::F32),
        rows(uid::SUM, "row sum"),
        rows(uid::LOG_SUM, "log row sum"),
    ]);
    ops.extend([
        OpSpec::Reduction {
            op: ReduceOp::Max,
            x: logits,
            y: uid::MAX,
        },
        pw(Pw::Sub, logits, Some(uid::MAX), uid::SHIFTED),
        pw(Pw::Exp, uid::SHIFTED, None, uid::EXP),
        OpSpec::Reduction {
            op: ReduceOp::Add,
            x: uid::EXP,
            y: uid::SUM,
        },
        pw(Pw::Log, uid::SUM, None, uid::LOG_SUM),
        pw(Pw::Add, uid::MAX, Some(uid::LOG_SUM), uid::STATS),
        pw(Pw::Div, uid::EXP, Some(uid::SUM), uid::P),
    ]);
    if !fp8 {
        ops.push(OpSpec::Matmul {
            name: "P·V",
            a: uid::P,
            b: uid::V,
            c: uid::O,
        });
        return GraphSpec { tensors, ops };
    }
    tensors.extend([
        scalar(uid::AMAX_S, "amax S", Storage::Device),
        scalar(uid::SCALE_S, "scale S", Storage::Device),
        scores(uid::P8, "P (e4m3)", DataType::Fp8E4m3),
        scalar(uid::DESCALE_S, "descale S", Storage::Device),
        scalar(uid::DESCALE_V, "descale V", Storage::Device),
        scalar(uid::SCALE_O, "scale O", Storage::Device),
        outputs(uid::PV, "P·V"),
        outputs(uid::PV_DS, "P·V * descale S"),
        outputs(uid::X, "O before scale O"),
        scalar(uid::AMAX_O, "amax O", Storage::Device),
    ]);
    ops.extend([
        OpSpec::Reduction {
            op: ReduceOp::AMax,
            x: uid::P,
            y: uid::AMAX_S,
        },
        mul(uid::P, uid::SCALE_S, uid::P8),
        OpSpec::Matmul {
            name: "P·V",
            a: uid::P8,
            b: uid::V,
            c: uid::PV,
        },
        mul(uid::PV, uid::DESCALE_S, uid::PV_DS),
        mul(uid::PV_DS, uid::DESCALE_V, uid::X),
        mul(uid::X, uid::SCALE_O, uid::O),
        OpSpec::Reduction {
            op: ReduceOp::AMax,
            x: uid::X,
            y: uid::AMAX_O,
        },
    ]);
    GraphSpec { tensors, ops }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::{AttentionLayout, AttentionShape};
    use crate::cudnn::check_well_formed;

    fn headline(causal: bool) -> AttentionSpec {
        let shape = AttentionShape {
            batch: 2,
            q_heads: 32,
            kv_heads: 8,
            seq_len: 2048,
            head_dim: 64,
        };
        AttentionSpec {
            shape,
            layout: AttentionLayout::packed_qkv(&shape),
            causal,
            precision: AttentionPrecision::Bf16,
        }
    }

    fn headline_fp8(causal: bool) -> AttentionSpec {
        AttentionSpec {
            precision: AttentionPrecision::Fp8,
            ..headline(causal)
        }
    }

    fn check_tensors(g: &GraphSpec, expected: &[Recorded]) {
        for &(uid, dtype, dims, strides, storage) in expected {
            let t = g.tensor(uid).unwrap_or_else(|| panic!("no tensor {uid}"));
            assert_eq!(
                (t.dtype, &t.dims[..], &t.strides[..], t.storage),
                (dtype, &dims[..], &strides[..], storage),
                "uid {uid}"
            );
        }
        assert_eq!(g.tensors.len(), expected.len());
    }

    fn wiring(g: &GraphSpec) -> Vec<String> {
        g.ops.iter().map(|op| format!("{op:?}")).collect()
    }

    /// One recorded tensor: uid, dtype, dims, strides, storage.
    type Recorded = (i64, DataType, [i64; 4], [i64; 4], Storage);

    /// Tensors of the graph cuDNN 9.19 reported executing for PyTorch's call with this shape,
    /// transcribed from cuDNN's own JSON log.
    #[rustfmt::skip]
    const RECORDED: [Recorded; 19] = {
        use DataType::*;
        use Storage::*;
        const SC: [i64; 4] = [2, 32, 2048, 2048];
        const SCS: [i64; 4] = [134217728, 4194304, 2048, 1];
        const R: [i64; 4] = [2, 32, 2048, 1];
        const RS: [i64; 4] = [65536, 2048, 1, 1];
        [
            (0, Bf16, [2, 32, 2048, 64], [6291456, 64, 3072, 1], Device),
            (1, Bf16, [2, 8, 64, 2048], [6291456, 64, 1, 3072], Device),
            (2, Bf16, [2, 8, 2048, 64], [6291456, 64, 3072, 1], Device),
            (3, Bf16, [2, 32, 2048, 64], [4194304, 64, 2048, 1], Device),
            (4, F32, SC, SCS, Virtual),
            (5, F32, [1, 1, 1, 1], [1, 1, 1, 1], ByValue),
            (6, F32, SC, SCS, Virtual),
            (7, I32, SC, SCS, Virtual),
            (8, I32, SC, SCS, Virtual),
            (9, Bool, SC, SCS, Virtual),
            (10, F32, [1, 1, 1, 1], [1, 1, 1, 1], ByValue),
            (11, F32, SC, SCS, Virtual),
            (12, F32, R, RS, Virtual),
            (13, Bf16, SC, SCS, Virtual),
            (14, F32, R, RS, Virtual),
            (15, F32, SC, SCS, Virtual),
            (16, F32, SC, SCS, Virtual),
            (17, F32, R, RS, Virtual),
            (18, F32, R, RS, Virtual),
        ]
    };

    #[test]
    fn causal_graph_matches_the_recorded_one() {
        let g = sdpa_forward(&headline(true));
        check_well_formed(&g);
        check_tensors(&g, &RECORDED);
        // The recorded op wiring, in the order the frontend passed the ops.
        let expected = [
            "Matmul { name: \"Q·K^T\", a: 0, b: 1, c: 4 }",
            "Pointwise { mode: Mul, precision: F32, x: 4, b: Some(5), t: None, y: 6 }",
            "Pointwise { mode: GenIndex { axis: 2 }, precision: F32, x: 6, b: None, t: None, y: 7 }",
            "Pointwise { mode: GenIndex { axis: 3 }, precision: F32, x: 6, b: None, t: None, y: 8 }",
            "Pointwise { mode: CmpGe, precision: Bool, x: 7, b: Some(8), t: None, y: 9 }",
            "Pointwise { mode: BinarySelect, precision: F32, x: 6, b: Some(10), t: Some(9), y: 11 }",
            "Reduction { op: Max, x: 11, y: 14 }",
            "Pointwise { mode: Sub, precision: F32, x: 11, b: Some(14), t: None, y: 15 }",
            "Pointwise { mode: Exp, precision: F32, x: 15, b: None, t: None, y: 16 }",
            "Reduction { op: Add, x: 16, y: 17 }",
            "Pointwise { mode: Log, precision: F32, x: 17, b: None, t: None, y: 18 }",
            "Pointwise { mode: Add, precision: F32, x: 14, b: Some(18), t: None, y: 12 }",
            "Pointwise { mode: Div, precision: F32, x: 16, b: Some(17), t: None, y: 13 }",
            "Matmul { name: \"P·V\", a: 13, b: 2, c: 3 }",
        ];
        assert_eq!(wiring(&g), expected);
        assert_eq!(g.io_uids(), [0, 1, 2, 3, 5, 10]);
    }

    /// Tensors of the FP8 graph for the same shape, as NVIDIA's frontend builds it (its
    /// `CompositeSDPANode::expand_node` with FP8 inputs and `MatmulFP8Node`; not recorded on a
    /// device): the bf16 graph with e4m3 I/O and an f32 P, plus the scale factors (device f32
    /// scalars, not by-value), the amaxes, and the intermediates of the scaling.
    #[rustfmt::skip]
    const FP8: [Recorded; 33] = {
        use DataType::*;
        use Storage::*;
        const SC: [i64; 4] = [2, 32, 2048, 2048];
        const SCS: [i64; 4] = [134217728, 4194304, 2048, 1];
        const R: [i64; 4] = [2, 32, 2048, 1];
        const RS: [i64; 4] = [65536, 2048, 1, 1];
        const ONE: [i64; 4] = [1, 1, 1, 1];
        const PV: [i64; 4] = [2, 32, 2048, 64];
        const PVS: [i64; 4] = [4194304, 131072, 64, 1];
        [
            (0, Fp8E4m3, [2, 32, 2048, 64], [6291456, 64, 3072, 1], Device),
            (1, Fp8E4m3, [2, 8, 64, 2048], [6291456, 64, 1, 3072], Device),
            (2, Fp8E4m3, [2, 8, 2048, 64], [6291456, 64, 3072, 1], Device),
            (3, Fp8E4m3, [2, 32, 2048, 64], [4194304, 64, 2048, 1], Device),
            (4, F32, SC, SCS, Virtual),
            (5, F32, ONE, ONE, ByValue),
            (6, F32, SC, SCS, Virtual),
            (7, I32, SC, SCS, Virtual),
            (8, I32, SC, SCS, Virtual),
            (9, Bool, SC, SCS, Virtual),
            (10, F32, ONE, ONE, ByValue),
            (11, F32, SC, SCS, Virtual),
            (12, F32, R, RS, Virtual),
            (13, F32, SC, SCS, Virtual),
            (14, F32, R, RS, Virtual),
            (15, F32, SC, SCS, Virtual),
            (16, F32, SC, SCS, Virtual),
            (17, F32, R, RS, Virtual),
            (18, F32, R, RS, Virtual),
            (19, F32, ONE, ONE, Device),
            (20, F32, ONE, ONE, Device),
            (21, F32, ONE, ONE, Device),
            (22, F32, ONE, ONE, Device),
            (23, F32, ONE, ONE, Device),
            (24, F32, ONE, ONE, Device),
            (25, F32, ONE, ONE, Device),
            (26, F32, ONE, ONE, Device),
            (27, F32, SC, SCS, Virtual),
            (28, F32, SC, SCS, Virtual),
            (29, Fp8E4m3, SC, SCS, Virtual),
            (30, F32, PV, PVS, Virtual),
            (31, F32, PV, PVS, Virtual),
            (32, F32, PV, PVS, Virtual),
        ]
    };

    #[test]
    fn fp8_causal_graph_is_the_frontends() {
        let g = sdpa_forward(&headline_fp8(true));
        check_well_formed(&g);
        check_tensors(&g, &FP8);
        // The frontend's op order: bmm1, attention scale, descale Q and K (after the product),
        // mask, softmax, amax of P *before* scale S, scale S into e4m3, bmm2, descale S and V,
        // scale O, and last the amax of O taken before scale O.
        let expected = [
            "Matmul { name: \"Q·K^T\", a: 0, b: 1, c: 4 }",
            "Pointwise { mode: Mul, precision: F32, x: 4, b: Some(5), t: None, y: 6 }",
            "Pointwise { mode: Mul, precision: F32, x: 6, b: Some(19), t: None, y: 27 }",
            "Pointwise { mode: Mul, precision: F32, x: 27, b: Some(20), t: None, y: 28 }",
            "Pointwise { mode: GenIndex { axis: 2 }, precision: F32, x: 28, b: None, t: None, y: 7 }",
            "Pointwise { mode: GenIndex { axis: 3 }, precision: F32, x: 28, b: None, t: None, y: 8 }",
            "Pointwise { mode: CmpGe, precision: Bool, x: 7, b: Some(8), t: None, y: 9 }",
            "Pointwise { mode: BinarySelect, precision: F32, x: 28, b: Some(10), t: Some(9), y: 11 }",
            "Reduction { op: Max, x: 11, y: 14 }",
            "Pointwise { mode: Sub, precision: F32, x: 11, b: Some(14), t: None, y: 15 }",
            "Pointwise { mode: Exp, precision: F32, x: 15, b: None, t: None, y: 16 }",
            "Reduction { op: Add, x: 16, y: 17 }",
            "Pointwise { mode: Log, precision: F32, x: 17, b: None, t: None, y: 18 }",
            "Pointwise { mode: Add, precision: F32, x: 14, b: Some(18), t: None, y: 12 }",
            "Pointwise { mode: Div, precision: F32, x: 16, b: Some(17), t: None, y: 13 }",
            "Reduction { op: AMax, x: 13, y: 25 }",
            "Pointwise { mode: Mul, precision: F32, x: 13, b: Some(23), t: None, y: 29 }",
            "Matmul { name: \"P·V\", a: 29, b: 2, c: 30 }",
            "Pointwise { mode: Mul, precision: F32, x: 30, b: Some(22), t: None, y: 31 }",
            "Pointwise { mode: Mul, precision: F32, x: 31, b: Some(21), t: None, y: 32 }",
            "Pointwise { mode: Mul, precision: F32, x: 32, b: Some(24), t: None, y: 3 }",
            "Reduction { op: AMax, x: 32, y: 26 }",
        ];
        assert_eq!(wiring(&g), expected);
        let mut io = g.io_uids();
        io.sort();
        assert_eq!(io, [0, 1, 2, 3, 5, 10, 19, 20, 21, 22, 23, 24, 25, 26]);
    }

    #[test]
    fn fp8_non_causal_graph_drops_only_the_mask() {
        let g = sdpa_forward(&headline_fp8(false));
        check_well_formed(&g);
        assert_eq!(g.ops.len(), 18);
        assert!(g.tensor(uid::NEG_INF).is_none() && g.tensor(uid::MASK).is_none());
        // Softmax reads the dequantized scores directly.
        assert!(matches!(
            g.ops[4],
            OpSpec::Reduction {
                op: ReduceOp::Max,
                x: uid::LOGITS,
                ..
            }
        ));
    }

    #[test]
    fn non_causal_graph_drops_the_mask() {
        let g = sdpa_forward(&headline(false));
        check_well_formed(&g);
        assert_eq!(g.ops.len(), 10);
        for uid in [uid::ROW, uid::COL, uid::MASK, uid::NEG_INF, uid::MASKED] {
            assert!(g.tensor(uid).is_none(), "uid {uid}");
        }
        assert!(matches!(
            g.ops[2],
            OpSpec::Reduction {
                op: ReduceOp::Max,
                x: uid::SCALED,
                ..
            }
        ));
        assert_eq!(g.io_uids(), [0, 1, 2, 3, 5]);
    }

    #[test]
    fn signatures_tell_graphs_apart() {
        let causal = sdpa_forward(&headline(true)).signature();
        assert_ne!(causal, sdpa_forward(&headline(false)).signature());
        let mut contiguous = headline(true);
        contiguous.layout = AttentionLayout::contiguous(&contiguous.shape);
        assert_ne!(causal, sdpa_forward(&contiguous).signature());
        assert_eq!(causal, sdpa_forward(&headline(true)).signature());
    }

    #[test]
    fn signatures_tell_bf16_and_fp8_apart() {
        for causal in [true, false] {
            let bf16 = sdpa_forward(&headline(causal)).signature();
            let fp8 = sdpa_forward(&headline_fp8(causal)).signature();
            assert_ne!(bf16, fp8);
            assert!(fp8.contains("t0:e4m3:dev:") && bf16.contains("t0:bf16:dev:"));
        }
    }
}
