//! Host-side bytes of device tensors: f32 values (as the reference interpreter holds them) to and
//! from each dtype's storage format.

use half::{bf16, f16};
use lancet_compiler::ir::DType;
use lancet_compiler::reference::numerics::round_to;
use rayon::prelude::*;

/// The storage bytes of `values` in `dtype` (little-endian). Values are rounded to the dtype
/// first, as the reference interpreter rounds them. Encoded in parallel, straight into the output
/// (chunk by chunk, no per-byte collection): weights run to ~10⁹.
pub fn encode(dtype: DType, values: &[f32]) -> Vec<u8> {
    const CHUNK: usize = 1 << 16;
    let size = dtype.size_bytes();
    let mut out = vec![0u8; values.len() * size];
    out.par_chunks_mut(CHUNK * size)
        .zip(values.par_chunks(CHUNK))
        .for_each(|(bytes, chunk)| encode_chunk(dtype, chunk, bytes));
    out
}

/// Writes the storage bytes of `values` into `out` (exactly `values.len()` elements long).
fn encode_chunk(dtype: DType, values: &[f32], out: &mut [u8]) {
    let size = dtype.size_bytes();
    for (&x, o) in values.iter().zip(out.chunks_exact_mut(size)) {
        match dtype {
            DType::F32 => o.copy_from_slice(&x.to_le_bytes()),
            DType::BF16 => o.copy_from_slice(&bf16::from_f32(x).to_bits().to_le_bytes()),
            DType::F16 => o.copy_from_slice(&f16::from_f32(x).to_bits().to_le_bytes()),
            DType::F8E4M3 => o[0] = fp8_bits(round_to(dtype, x), 3, 7),
            DType::F8E5M2 => o[0] = fp8_bits(round_to(dtype, x), 2, 15),
            DType::I32 => o.copy_from_slice(&(x as i32).to_le_bytes()),
            DType::I64 => o.copy_from_slice(&(x as i64).to_le_bytes()),
        }
    }
}

/// f32 values of storage `bytes` in `dtype`.
pub fn decode(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    let chunks = bytes.chunks_exact(dtype.size_bytes());
    match dtype {
        DType::F32 => chunks
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        DType::BF16 => chunks
            .map(|c| bf16::from_bits(u16::from_le_bytes(c.try_into().unwrap())).to_f32())
            .collect(),
        DType::F16 => chunks
            .map(|c| f16::from_bits(u16::from_le_bytes(c.try_into().unwrap())).to_f32())
            .collect(),
        DType::F8E4M3 => bytes.iter().map(|&b| fp8_value(b, 3, 7, false)).collect(),
        DType::F8E5M2 => bytes.iter().map(|&b| fp8_value(b, 2, 15, true)).collect(),
        DType::I32 => chunks
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        DType::I64 => chunks
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
    }
}

/// The bit pattern of an FP8 value `x` (already representable) with `m` mantissa bits and
/// exponent `bias`.
pub(crate) fn fp8_bits(x: f32, m: u32, bias: i32) -> u8 {
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    if x.is_nan() {
        return 0x7f;
    }
    let a = x.abs();
    if a == 0.0 {
        return sign;
    }
    // `x` is already rounded to the FP8 grid, so its bits can be read off the f32 ones: exponent
    // rebased, top `m` mantissa bits; a subnormal is a whole multiple of the smallest quantum.
    // Powers of two are built from their bits (exact, and no `powi` per element).
    let pow2 = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    let e = (a.to_bits() >> 23) as i32 - 127;
    let bits = if e < 1 - bias {
        (a * pow2(bias - 1 + m as i32)) as u32
    } else {
        (((e + bias) as u32) << m) | ((a.to_bits() >> (23 - m)) & ((1 << m) - 1))
    };
    sign | bits as u8
}

/// The value of FP8 bits `b` with `m` mantissa bits and exponent `bias`; e5m2 (`ieee`) has
/// infinities and NaNs at the top exponent, e4m3 only NaN at `S.1111.111`.
pub(crate) fn fp8_value(b: u8, m: u32, bias: i32, ieee: bool) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let e_bits = 7 - m;
    let exp = ((b >> m) & ((1 << e_bits) - 1) as u8) as i32;
    let mant = (b & ((1 << m) - 1) as u8) as f32;
    let top = (1 << e_bits) - 1;
    if ieee && exp == top {
        return if mant == 0.0 {
            sign * f32::INFINITY
        } else {
            f32::NAN
        };
    }
    if !ieee && exp == top && mant as u32 == (1 << m) - 1 {
        return f32::NAN;
    }
    if exp == 0 {
        sign * mant * 2f32.powi(1 - bias - m as i32)
    } else {
        sign * (1.0 + mant / (1u32 << m) as f32) * 2f32.powi(exp - bias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fp8_pattern_round_trips() {
        for (dtype, ieee) in [(DType::F8E4M3, false), (DType::F8E5M2, true)] {
            for bits in 0..=255u8 {
                let x = decode(dtype, &[bits])[0];
                if !x.is_finite() {
                    continue;
                }
                let back = encode(dtype, &[x])[0];
                // ±0 differ only in sign, which encode keeps.
                assert_eq!(back, bits, "{dtype} {bits:#04x} = {x} (ieee {ieee})");
            }
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(
            encode(DType::F8E4M3, &[448.0, -448.0, 1.0, 0.001953125]),
            [0x7e, 0xfe, 0x38, 0x01]
        );
        assert_eq!(encode(DType::F8E4M3, &[1e6]), [0x7e], "saturates");
        assert_eq!(
            decode(DType::BF16, &encode(DType::BF16, &[1.5, -2.25])),
            [1.5, -2.25]
        );
        assert_eq!(decode(DType::I32, &encode(DType::I32, &[7.0, -3.0])), [7.0, -3.0]);
    }
}
