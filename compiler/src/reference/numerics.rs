//! Rounding f32 values the way each storage dtype rounds them on the GPU.
//!
//! The reference interpreter computes in f32 and rounds every node's result to the node's dtype,
//! so it sees exactly the precision loss the device sees at each stored tensor.

use half::{bf16, f16};
use rayon::prelude::*;

use crate::ir::DType;

/// The largest finite e4m3 value (`S.1111.110`); e4m3 has no infinities.
pub const E4M3_MAX: f32 = 448.0;
/// The largest finite e5m2 value.
pub const E5M2_MAX: f32 = 57344.0;

/// The largest finite value of an FP8 type (`None` for other dtypes).
pub fn fp8_max(dtype: DType) -> Option<f32> {
    match dtype {
        DType::F8E4M3 => Some(E4M3_MAX),
        DType::F8E5M2 => Some(E5M2_MAX),
        _ => None,
    }
}

/// `x` as stored in `dtype`: round to nearest even for floats (FP8 saturating to its largest
/// finite value, as `__NV_SATFINITE` does), truncation toward zero for integers.
pub fn round_to(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::F32 => x,
        DType::BF16 => bf16::from_f32(x).to_f32(),
        DType::F16 => f16::from_f32(x).to_f32(),
        DType::F8E4M3 => round_fp8(x, 3, -6, E4M3_MAX),
        DType::F8E5M2 => round_fp8(x, 2, -14, E5M2_MAX),
        DType::I32 => x.trunc().clamp(i32::MIN as f32, i32::MAX as f32),
        DType::I64 => x.trunc(),
    }
}

/// Rounds every element of `data` to `dtype` in place (in parallel: weights run to ~10⁹).
pub fn round_slice(dtype: DType, data: &mut [f32]) {
    if dtype != DType::F32 {
        data.par_chunks_mut(1 << 16)
            .for_each(|chunk| chunk.iter_mut().for_each(|x| *x = round_to(dtype, *x)));
    }
}

/// Round-to-nearest-even into a binary float with `mantissa_bits` explicit mantissa bits,
/// smallest normal exponent `min_exp`, saturating at `max`. NaN stays NaN.
fn round_fp8(x: f32, mantissa_bits: i32, min_exp: i32, max: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    if a >= max {
        return max.copysign(x);
    }
    if a == 0.0 {
        return x;
    }
    // Exponent of `a` (exact for normal f32), clamped so subnormals share the smallest quantum.
    // Scaling by powers of two built from their bits is exact and avoids `powi` and a division:
    // weights run to ~10⁹ elements.
    let exp = ((a.to_bits() >> 23) as i32 - 127).max(min_exp);
    let pow2 = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    let rounded = (a * pow2(mantissa_bits - exp)).round_ties_even() * pow2(exp - mantissa_bits);
    rounded.min(max).copysign(x)
}
