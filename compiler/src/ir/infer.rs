//! Shape and dtype inference: what each op produces from its operands, or why it cannot.

use super::{DType, Mismatch, Op, RopeScaling, Shape, TensorType};

/// The type `op` produces from operands of types `inputs`.
pub fn infer(op: &Op, inputs: &[&TensorType]) -> Result<TensorType, Mismatch> {
    match op {
        Op::Input { dtype, shape } | Op::Param { dtype, shape, .. } => {
            arity(inputs, 0, "0")?;
            Ok(TensorType::new(*dtype, shape.clone()))
        }
        Op::Embedding => embedding(inputs),
        Op::RmsNorm { eps } => norm(inputs, 2, "2 (x, gain)", eps.get()),
        Op::LayerNorm { eps } => norm(inputs, 3, "3 (x, gain, bias)", eps.get()),
        Op::Linear { out } => linear(inputs, *out),
        Op::LinearAdd { out } => linear_add(inputs, *out),
        Op::GatedLinear { mid, out, .. } => gated_linear(inputs, *mid, *out),
        Op::Fused { program } => Ok(program.infer(inputs)?.pop().expect("programs are non-empty")),
        Op::Reshape { shape } => reshape(inputs, shape),
        Op::Permute { perm } => permute(inputs, perm),
        Op::Slice { axis, start, end } => slice(inputs, *axis, *start, *end),
        Op::Concat { axis } => concat(inputs, *axis),
        Op::Rope {
            rotary_dim,
            theta,
            scaling,
            ..
        } => rope(inputs, *rotary_dim, theta.get(), scaling.as_ref()),
        Op::Attention { scale, .. } => attention(inputs, scale.get()),
        Op::Fp8Attention {
            scale, p_scale, out, ..
        } => fp8_attention(inputs, scale.get(), p_scale.get(), *out),
        Op::Add | Op::Mul => binary(inputs),
        Op::Silu | Op::Gelu { .. } => {
            arity(inputs, 1, "1")?;
            float_operand(inputs[0], "x")?;
            Ok(inputs[0].clone())
        }
        Op::Cast { to } => {
            arity(inputs, 1, "1")?;
            Ok(TensorType::new(*to, inputs[0].shape.clone()))
        }
        Op::Quantize { to } => quantize(inputs, *to),
        Op::Dequantize { to } => dequantize(inputs, *to),
        Op::Output => {
            arity(inputs, 1, "1")?;
            Ok(inputs[0].clone())
        }
    }
}

fn arity(inputs: &[&TensorType], n: usize, expected: &'static str) -> Result<(), Mismatch> {
    if inputs.len() == n {
        Ok(())
    } else {
        Err(Mismatch::Arity {
            expected,
            got: inputs.len(),
        })
    }
}

fn float_operand(t: &TensorType, what: &str) -> Result<(), Mismatch> {
    if t.dtype.is_float() && !t.dtype.is_fp8() {
        Ok(())
    } else {
        Err(Mismatch::DType(format!(
            "{what} must be f32, bf16 or f16, got {}",
            t.dtype
        )))
    }
}

fn scalar_f32(t: &TensorType, what: &str) -> Result<(), Mismatch> {
    if t.dtype != DType::F32 || t.numel() != 1 {
        return Err(Mismatch::Shape(format!("{what} must be an f32 scalar, got {t}")));
    }
    Ok(())
}

fn embedding(inputs: &[&TensorType]) -> Result<TensorType, Mismatch> {
    arity(inputs, 2, "2 (table, ids)")?;
    let (table, ids) = (inputs[0], inputs[1]);
    if table.shape.rank() != 2 {
        return Err(Mismatch::Shape(format!(
            "table must be [vocab, hidden], got {}",
            table.shape
        )));
    }
    if !ids.dtype.is_int() {
        return Err(Mismatch::DType(format!(
            "ids must be i32 or i64, got {}",
            ids.dtype
        )));
    }
    let mut dims = ids.shape.0.clone();
    dims.push(table.shape.0[1]);
    Ok(TensorType::new(table.dtype, dims))
}

fn norm(inputs: &[&TensorType], n: usize, expected: &'static str, eps: f32) -> Result<TensorType, Mismatch> {
    arity(inputs, n, expected)?;
    let x = inputs[0];
    float_operand(x, "x")?;
    if x.shape.rank() == 0 {
        return Err(Mismatch::Shape("x must have at least one dimension".into()));
    }
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(Mismatch::Attribute(format!(
            "eps must be finite and >= 0, got {eps}"
        )));
    }
    for (what, p) in ["gain", "bias"].iter().zip(&inputs[1..]) {
        if p.shape.dims() != [x.shape.last()] {
            return Err(Mismatch::Shape(format!(
                "{what} has shape {}, x has {} features",
                p.shape,
                x.shape.last()
            )));
        }
        float_operand(p, what)?;
    }
    Ok(x.clone())
}

fn linear(inputs: &[&TensorType], out: DType) -> Result<TensorType, Mismatch> {
    if inputs.len() != 2 && inputs.len() != 4 {
        return Err(Mismatch::Arity {
            expected: "2 (x, w) or 4 (x, w, x_scale, w_scale)",
            got: inputs.len(),
        });
    }
    let (x, w) = (inputs[0], inputs[1]);
    if w.shape.rank() != 2 {
        return Err(Mismatch::Shape(format!(
            "weight must be [out_features, in_features], got {}",
            w.shape
        )));
    }
    if x.shape.rank() == 0 {
        return Err(Mismatch::Shape("input must have at least one dimension".into()));
    }
    let (n, k) = (w.shape.0[0], w.shape.0[1]);
    if x.shape.last() != k {
        return Err(Mismatch::Shape(format!(
            "input has {} features, weight expects {k}",
            x.shape.last()
        )));
    }
    let fp8 = x.dtype.is_fp8();
    if fp8 != w.dtype.is_fp8() {
        return Err(Mismatch::DType(format!(
            "input is {} but weight is {}: both must be FP8 or neither",
            x.dtype, w.dtype
        )));
    }
    if fp8 {
        if inputs.len() != 4 {
            return Err(Mismatch::Arity {
                expected: "4 (x, w, x_scale, w_scale: FP8 inputs need scales)",
                got: inputs.len(),
            });
        }
        scalar_f32(inputs[2], "x_scale")?;
        scalar_f32(inputs[3], "w_scale")?;
    } else {
        if inputs.len() != 2 {
            return Err(Mismatch::Arity {
                expected: "2 (x, w): scales are only for FP8 operands",
                got: inputs.len(),
            });
        }
        float_operand(x, "input")?;
        if x.dtype != w.dtype {
            return Err(Mismatch::DType(format!(
                "input is {} but weight is {}",
                x.dtype, w.dtype
            )));
        }
    }
    if !out.is_float() || out.is_fp8() {
        return Err(Mismatch::DType(format!(
            "output must be f32, bf16 or f16, got {out}"
        )));
    }
    let mut dims = x.shape.0.clone();
    *dims.last_mut().expect("rank checked") = n;
    Ok(TensorType::new(out, dims))
}

/// A linear plus a residual operand of the linear's own output type.
fn linear_add(inputs: &[&TensorType], out: DType) -> Result<TensorType, Mismatch> {
    let Some((residual, linear_inputs)) = inputs.split_last() else {
        return Err(Mismatch::Arity {
            expected: "3 (x, w, residual) or 5 (x, w, x_scale, w_scale, residual)",
            got: 0,
        });
    };
    let ty = linear(linear_inputs, out).map_err(|m| match m {
        Mismatch::Arity { got, .. } => Mismatch::Arity {
            expected: "3 (x, w, residual) or 5 (x, w, x_scale, w_scale, residual)",
            got: got + 1,
        },
        other => other,
    })?;
    if **residual != ty {
        return Err(Mismatch::Shape(format!(
            "residual is {residual}, the linear produces {ty}"
        )));
    }
    Ok(ty)
}

/// An FP8 linear into a packed `[gate, up]` of `mid` values, halved by the gate, quantized.
fn gated_linear(inputs: &[&TensorType], mid: DType, out: DType) -> Result<TensorType, Mismatch> {
    arity(inputs, 5, "5 (x, w, x_scale, w_scale, out_scale)")?;
    let (x, w) = (inputs[0], inputs[1]);
    if !x.dtype.is_fp8() || w.dtype != x.dtype {
        return Err(Mismatch::DType(format!(
            "input is {} and weight is {}: both must be one FP8 type",
            x.dtype, w.dtype
        )));
    }
    if !mid.is_float() || mid.is_fp8() {
        return Err(Mismatch::DType(format!(
            "mid must be f32, bf16 or f16, got {mid}"
        )));
    }
    let ty = linear(&inputs[..4], mid)?;
    let rows = w.shape.0[0];
    if rows % 2 != 0 {
        return Err(Mismatch::Shape(format!(
            "weight {} must stack gate and up rows: it needs an even number of rows",
            w.shape
        )));
    }
    scalar_f32(inputs[4], "out_scale")?;
    if !out.is_fp8() {
        return Err(Mismatch::DType(format!(
            "the output must be an FP8 type, not {out}"
        )));
    }
    let mut dims = ty.shape.0;
    *dims.last_mut().expect("linear outputs have rank >= 1") = rows / 2;
    Ok(TensorType::new(out, dims))
}

fn reshape(inputs: &[&TensorType], shape: &Shape) -> Result<TensorType, Mismatch> {
    arity(inputs, 1, "1")?;
    let x = inputs[0];
    if x.numel() != shape.numel() {
        return Err(Mismatch::Shape(format!(
            "cannot reshape {} ({} elements) to {shape} ({} elements)",
            x.shape,
            x.numel(),
            shape.numel()
        )));
    }
    Ok(TensorType::new(x.dtype, shape.clone()))
}

fn permute(inputs: &[&TensorType], perm: &[usize]) -> Result<TensorType, Mismatch> {
    arity(inputs, 1, "1")?;
    let x = inputs[0];
    let mut seen = vec![false; x.shape.rank()];
    let valid = perm.len() == x.shape.rank()
        && perm
            .iter()
            .all(|&a| a < seen.len() && !std::mem::replace(&mut seen[a], true));
    if !valid {
        return Err(Mismatch::Attribute(format!(
            "perm {perm:?} is not a permutation of the {} axes of {}",
            x.shape.rank(),
            x.shape
        )));
    }
    let dims = perm.iter().map(|&a| x.shape.0[a]).collect::<Vec<_>>();
    Ok(TensorType::new(x.dtype, dims))
}

fn slice(inputs: &[&TensorType], axis: usize, start: usize, end: usize) -> Result<TensorType, Mismatch> {
    arity(inputs, 1, "1")?;
    let x = inputs[0];
    if axis >= x.shape.rank() {
        return Err(Mismatch::Attribute(format!(
            "axis {axis} is out of range for {}",
            x.shape
        )));
    }
    if start >= end || end > x.shape.0[axis] {
        return Err(Mismatch::Attribute(format!(
            "range {start}..{end} is empty or exceeds axis {axis} of {}",
            x.shape
        )));
    }
    let mut dims = x.shape.0.clone();
    dims[axis] = end - start;
    Ok(TensorType::new(x.dtype, dims))
}

fn concat(inputs: &[&TensorType], axis: usize) -> Result<TensorType, Mismatch> {
    if inputs.is_empty() {
        return Err(Mismatch::Arity {
            expected: "at least 1",
            got: 0,
        });
    }
    let first = inputs[0];
    if axis >= first.shape.rank() {
        return Err(Mismatch::Attribute(format!(
            "axis {axis} is out of range for {}",
            first.shape
        )));
    }
    let mut dims = first.shape.0.clone();
    dims[axis] = 0;
    for (i, t) in inputs.iter().enumerate() {
        if t.dtype != first.dtype {
            return Err(Mismatch::DType(format!(
                "operand {i} is {}, operand 0 is {}",
                t.dtype, first.dtype
            )));
        }
        let same_elsewhere = t.shape.rank() == first.shape.rank()
            && (0..dims.len()).all(|a| a == axis || t.shape.0[a] == first.shape.0[a]);
        if !same_elsewhere {
            return Err(Mismatch::Shape(format!(
                "operand {i} has shape {}, which differs from operand 0's {} off axis {axis}",
                t.shape, first.shape
            )));
        }
        dims[axis] += t.shape.0[axis];
    }
    Ok(TensorType::new(first.dtype, dims))
}

fn rope(
    inputs: &[&TensorType],
    rotary_dim: usize,
    theta: f32,
    scaling: Option<&RopeScaling>,
) -> Result<TensorType, Mismatch> {
    arity(inputs, 1, "1")?;
    let x = inputs[0];
    float_operand(x, "x")?;
    if x.shape.rank() < 3 {
        return Err(Mismatch::Shape(format!(
            "x must be [..., seq, heads, head_dim], got {}",
            x.shape
        )));
    }
    let head_dim = x.shape.last();
    if rotary_dim == 0 || rotary_dim % 2 != 0 || rotary_dim > head_dim {
        return Err(Mismatch::Attribute(format!(
            "rotary_dim {rotary_dim} must be even, positive and at most head_dim {head_dim}"
        )));
    }
    if !(theta > 0.0 && theta.is_finite()) {
        return Err(Mismatch::Attribute(format!(
            "theta must be positive, got {theta}"
        )));
    }
    if let Some(s) = scaling {
        let (factor, low, high) = (s.factor.get(), s.low_freq_factor.get(), s.high_freq_factor.get());
        if !(factor > 0.0 && low > 0.0 && high > low && s.original_context > 0) {
            return Err(Mismatch::Attribute(format!(
                "llama3 RoPE scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor and \
                 original_context > 0; got factor {factor}, low {low}, high {high}, context {}",
                s.original_context
            )));
        }
    }
    Ok(x.clone())
}

fn attention(inputs: &[&TensorType], scale: f32) -> Result<TensorType, Mismatch> {
    arity(inputs, 3, "3 (q, k, v)")?;
    for (what, t) in [("q", inputs[0]), ("k", inputs[1]), ("v", inputs[2])] {
        float_operand(t, what)?;
    }
    let dims = attention_dims(inputs, scale)?;
    Ok(TensorType::new(inputs[0].dtype, dims))
}

fn fp8_attention(
    inputs: &[&TensorType],
    scale: f32,
    p_scale: f32,
    out: DType,
) -> Result<TensorType, Mismatch> {
    arity(inputs, 7, "7 (q, k, v, q_scale, k_scale, v_scale, o_scale)")?;
    if !inputs[0].dtype.is_fp8() {
        return Err(Mismatch::DType(format!("q must be FP8, got {}", inputs[0].dtype)));
    }
    for (what, t) in [
        ("q_scale", inputs[3]),
        ("k_scale", inputs[4]),
        ("v_scale", inputs[5]),
        ("o_scale", inputs[6]),
    ] {
        scalar_f32(t, what)?;
    }
    if !out.is_fp8() {
        return Err(Mismatch::DType(format!(
            "the output must be an FP8 type, not {out}"
        )));
    }
    // P is rounded to e4m3 after multiplying by p_scale: P ≤ 1 must stay finite.
    if !(p_scale.is_finite() && p_scale > 0.0 && p_scale <= 448.0) {
        return Err(Mismatch::Attribute(format!(
            "p_scale must be in (0, 448] so that probabilities up to 1 fit e4m3, got {p_scale}"
        )));
    }
    let dims = attention_dims(&inputs[..3], scale)?;
    Ok(TensorType::new(out, dims))
}

/// The output dims `[b, hq, sq, dv]` of attention over `(q, k, v)` of one dtype.
fn attention_dims(inputs: &[&TensorType], scale: f32) -> Result<[usize; 4], Mismatch> {
    let (q, k, v) = (inputs[0], inputs[1], inputs[2]);
    for (what, t) in [("q", q), ("k", k), ("v", v)] {
        if t.shape.rank() != 4 {
            return Err(Mismatch::Shape(format!(
                "{what} must be [batch, heads, seq, head_dim], got {}",
                t.shape
            )));
        }
        if t.dtype != q.dtype {
            return Err(Mismatch::DType(format!(
                "{what} is {}, q is {}",
                t.dtype, q.dtype
            )));
        }
    }
    let [b, hq, sq, d] = q.shape.0[..] else {
        unreachable!()
    };
    let [kb, hkv, skv, kd] = k.shape.0[..] else {
        unreachable!()
    };
    let [vb, vh, vs, dv] = v.shape.0[..] else {
        unreachable!()
    };
    if kb != b || vb != b {
        return Err(Mismatch::Shape(format!("batch differs: q {b}, k {kb}, v {vb}")));
    }
    if kd != d {
        return Err(Mismatch::Shape(format!(
            "q head_dim {d} differs from k head_dim {kd}"
        )));
    }
    if vh != hkv || vs != skv {
        return Err(Mismatch::Shape(format!(
            "v {} must match k {} in heads and sequence",
            v.shape, k.shape
        )));
    }
    if hkv == 0 || hq % hkv != 0 {
        return Err(Mismatch::Shape(format!(
            "{hq} query heads are not a multiple of {hkv} KV heads"
        )));
    }
    if !scale.is_finite() {
        return Err(Mismatch::Attribute(format!("scale must be finite, got {scale}")));
    }
    Ok([b, hq, sq, dv])
}

/// NumPy broadcasting of two shapes, aligned at the trailing axis.
pub fn broadcast(a: &Shape, b: &Shape) -> Option<Shape> {
    let rank = a.rank().max(b.rank());
    let dim = |s: &Shape, i: usize| (i + s.rank()).checked_sub(rank).map_or(1, |j| s.0[j]);
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .map(Shape)
}

fn binary(inputs: &[&TensorType]) -> Result<TensorType, Mismatch> {
    arity(inputs, 2, "2")?;
    let (a, b) = (inputs[0], inputs[1]);
    float_operand(a, "a")?;
    if a.dtype != b.dtype {
        return Err(Mismatch::DType(format!(
            "operands are {} and {}",
            a.dtype, b.dtype
        )));
    }
    let shape = broadcast(&a.shape, &b.shape)
        .ok_or_else(|| Mismatch::Shape(format!("shapes {} and {} do not broadcast", a.shape, b.shape)))?;
    Ok(TensorType::new(a.dtype, shape))
}

fn quantize(inputs: &[&TensorType], to: DType) -> Result<TensorType, Mismatch> {
    arity(inputs, 2, "2 (x, scale)")?;
    float_operand(inputs[0], "x")?;
    scalar_f32(inputs[1], "scale")?;
    if !to.is_fp8() {
        return Err(Mismatch::DType(format!(
            "can only quantize to an FP8 type, not {to}"
        )));
    }
    Ok(TensorType::new(to, inputs[0].shape.clone()))
}

fn dequantize(inputs: &[&TensorType], to: DType) -> Result<TensorType, Mismatch> {
    arity(inputs, 2, "2 (q, scale)")?;
    if !inputs[0].dtype.is_fp8() {
        return Err(Mismatch::DType(format!("q must be FP8, got {}", inputs[0].dtype)));
    }
    scalar_f32(inputs[1], "scale")?;
    if !to.is_float() || to.is_fp8() {
        return Err(Mismatch::DType(format!(
            "can only dequantize to f32, bf16 or f16, not {to}"
        )));
    }
    Ok(TensorType::new(to, inputs[0].shape.clone()))
}
