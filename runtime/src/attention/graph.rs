//! The cuDNN graph of fused attention forward: exactly the composite graph NVIDIA's frontend
//! emits for bf16 SDPA on cuDNN 9.13–9.20 (as recorded from PyTorch on an H100), because cuDNN
//! picks its flash-attention engine by recognising this pattern, and small deviations (an f32
//! softmax output, no stats branch) make it refuse the graph or fall back to a slow engine.
//!
//! ```text
//! S = Q·Kᵀ (f32) → ·scale → [causal: row ≥ col ? S : −∞] → softmax → P (bf16) → O = P·V
//! softmax: M = max(S), E = exp(S − M), L = Σ E, P = E / L; stats = M + log L (virtual, unused)
//! ```
//!
//! Kᵀ is K's view with the last two dims and strides swapped; GQA needs nothing: K and V carry
//! `kv_heads` heads and cuDNN broadcasts them over the query-head groups. (cuDNN ≥ 9.21 prefers a
//! single `OPERATION_SDPA_FWD` node; this graph is what 9.14, the system library, understands.)

use crate::cudnn::{DataType, GraphSpec, OpSpec, PointwiseMode as Pw, ReduceOp, Storage, TensorSpec};

use super::spec::{AttentionSpec, Tensor};

/// Tensor uids: the frontend's numbering, kept stable because they key variant packs.
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
}

/// The fused-attention graph for `spec`, which must have passed [`AttentionSpec::validate`]
/// (that bounds every size below by `i64::MAX`).
pub(crate) fn sdpa_forward(spec: &AttentionSpec) -> GraphSpec {
    let s = &spec.shape;
    let i = |n: usize| n as i64;
    let (b, hq, seq) = (i(s.batch), i(s.q_heads), i(s.seq_len));
    let io = |uid, name, tensor: Tensor| {
        let (mut dims, mut strides) = (spec.dims(tensor).map(i), spec.strides(tensor).map(i));
        if uid == uid::K_T {
            dims.swap(2, 3);
            strides.swap(2, 3);
        }
        TensorSpec {
            uid,
            name,
            dtype: DataType::Bf16,
            dims: dims.to_vec(),
            strides: strides.to_vec(),
            storage: Storage::Device,
        }
    };
    let scalar = |uid, name| TensorSpec {
        uid,
        name,
        dtype: DataType::F32,
        dims: vec![1; 4],
        strides: vec![1; 4],
        storage: Storage::ByValue,
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
    let pw = |mode, x, b: Option<i64>, y| OpSpec::Pointwise {
        mode,
        precision: DataType::F32,
        x,
        b,
        t: None,
        y,
    };

    let mut tensors = vec![
        io(uid::Q, "Q", Tensor::Q),
        io(uid::K_T, "K^T", Tensor::K),
        io(uid::V, "V", Tensor::V),
        io(uid::O, "O", Tensor::O),
        scores(uid::SCORES, "scores", DataType::F32),
        scalar(uid::SCALE, "softmax scale"),
        scores(uid::SCALED, "scaled scores", DataType::F32),
    ];
    let mut ops = vec![
        OpSpec::Matmul {
            name: "Q·K^T",
            a: uid::Q,
            b: uid::K_T,
            c: uid::SCORES,
        },
        pw(Pw::Mul, uid::SCORES, Some(uid::SCALE), uid::SCALED),
    ];
    let logits = if spec.causal {
        tensors.extend([
            scores(uid::ROW, "row index", DataType::I32),
            scores(uid::COL, "column index", DataType::I32),
            scores(uid::MASK, "causal mask", DataType::Bool),
            scalar(uid::NEG_INF, "-inf"),
            scores(uid::MASKED, "masked scores", DataType::F32),
        ]);
        ops.extend([
            pw(Pw::GenIndex { axis: 2 }, uid::SCALED, None, uid::ROW),
            pw(Pw::GenIndex { axis: 3 }, uid::SCALED, None, uid::COL),
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
                x: uid::SCALED,
                b: Some(uid::NEG_INF),
                t: Some(uid::MASK),
                y: uid::MASKED,
            },
        ]);
        uid::MASKED
    } else {
        uid::SCALED
    };
    tensors.extend([
        rows(uid::STATS, "softmax stats"),
        scores(uid::P, "P", DataType::Bf16),
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
        OpSpec::Matmul {
            name: "P·V",
            a: uid::P,
            b: uid::V,
            c: uid::O,
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
        }
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
        for (uid, dtype, dims, strides, storage) in RECORDED {
            let t = g.tensor(uid).unwrap_or_else(|| panic!("no tensor {uid}"));
            assert_eq!(
                (t.dtype, &t.dims[..], &t.strides[..], t.storage),
                (dtype, &dims[..], &strides[..], storage),
                "uid {uid}"
            );
        }
        assert_eq!(g.tensors.len(), RECORDED.len());
        // The recorded op wiring, in the order the frontend passed the ops.
        let wiring: Vec<String> = g.ops.iter().map(|op| format!("{op:?}")).collect();
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
        assert_eq!(wiring, expected);
        assert_eq!(g.io_uids(), [0, 1, 2, 3, 5, 10]);
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
}
