//! What an FP8 attention call needs besides its plan: the per-tensor scale factors it reads and
//! the amaxes it writes — device f32 scalars the caller owns, so that scales change between
//! calls (or inside a replayed CUDA graph) without a new plan — and e4m3 conversions for host
//! data.
//!
//! What the graph computes, with `Q8`, `K8`, `V8`, `O8` the stored e4m3 values (the fused
//! kernel rounds P differently: block by block, before normalizing; see `check.rs`):
//!
//! ```text
//! P  = softmax(scale · descale_q · descale_k · Q8·K8ᵀ [+ causal mask])     (f32)
//! P8 = e4m3(scale_s · P)                                     amax_s = max |P|
//! X  = descale_s · descale_v · P8·V8                                        (f32)
//! O8 = e4m3(scale_o · X)                                     amax_o = max |X|
//! ```

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtrMut, SyncOnDrop};
use lancet_compiler::ir::DType;
use lancet_compiler::reference::numerics::round_to;

use super::plan::Fp8Pointers;
use crate::device::DeviceError;
use crate::exec::host::{fp8_bits, fp8_value};
use crate::Result;

/// The scale factors of FP8 attention calls, as host values (see the module docs for where
/// each acts).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fp8Scales {
    /// Undo the scales Q, K and V were quantized with: `Q = descale_q · Q8`.
    pub descale_q: f32,
    pub descale_k: f32,
    pub descale_v: f32,
    /// Undoes `scale_s` after `P8·V`: normally `1 / scale_s`.
    pub descale_s: f32,
    /// Quantizes P to e4m3 before `P·V`. P lies in `[0, 1]`, but the fused kernel (as NVIDIA's
    /// own tests model it) quantizes unnormalized probabilities, which can reach `e^4 ≈ 55`,
    /// times `scale_s / 16`: values up to about 131 avoid saturating at 448. 128 does, and
    /// makes `descale_s` exact; NVIDIA's tests use 112.
    pub scale_s: f32,
    /// Quantizes O: `O8 = e4m3(scale_o · X)`.
    pub scale_o: f32,
}

/// f32 elements per 16 bytes: each scalar gets its own 16-byte slot, the alignment cuDNN is
/// promised for every tensor.
const SLOT: usize = 4;
/// Slots in [`Fp8Pointers`] field order; the last two are the amaxes.
const SLOTS: usize = 8;

/// Device memory for the eight scalars of FP8 attention calls (one allocation, a 16-byte slot
/// each). Calls bound to it read the scales and write the amaxes there.
pub struct Fp8Scalars {
    buffer: CudaSlice<f32>,
}

impl Fp8Scalars {
    /// Uploads `scales` on `stream`. The amaxes start as NaN, so that a call that never wrote
    /// them is visible.
    pub fn new(stream: &Arc<CudaStream>, scales: &Fp8Scales) -> Result<Self> {
        let s = scales;
        let values = [
            s.descale_q,
            s.descale_k,
            s.descale_v,
            s.descale_s,
            s.scale_s,
            s.scale_o,
            f32::NAN,
            f32::NAN,
        ];
        let mut host = vec![0f32; SLOTS * SLOT];
        for (slot, value) in values.into_iter().enumerate() {
            host[slot * SLOT] = value;
        }
        let buffer = stream.clone_htod(&host).map_err(|source| DeviceError::Driver {
            what: "uploading FP8 attention scales",
            source,
        })?;
        Ok(Fp8Scalars { buffer })
    }

    /// The scalars' addresses, and the guard that tells cudarc the memory is written: keep it
    /// until the call that uses the addresses is queued.
    pub fn pointers<'a>(&'a mut self, stream: &'a CudaStream) -> (Fp8Pointers, SyncOnDrop<'a>) {
        let (base, guard) = self.buffer.device_ptr_mut(stream);
        let at = |slot: usize| base + (slot * SLOT * size_of::<f32>()) as u64;
        let pointers = Fp8Pointers {
            descale_q: at(0),
            descale_k: at(1),
            descale_v: at(2),
            descale_s: at(3),
            scale_s: at(4),
            scale_o: at(5),
            amax_s: at(6),
            amax_o: at(7),
        };
        (pointers, guard)
    }

    /// `(amax_s, amax_o)` as the calls queued so far leave them (waits for them).
    pub fn amaxes(&self, stream: &Arc<CudaStream>) -> Result<(f32, f32)> {
        let driver = |what| move |source| DeviceError::Driver { what, source };
        stream
            .synchronize()
            .map_err(driver("waiting for FP8 attention"))?;
        let host = stream
            .clone_dtoh(&self.buffer)
            .map_err(driver("downloading FP8 attention amaxes"))?;
        Ok((host[6 * SLOT], host[7 * SLOT]))
    }
}

/// The e4m3 bits of `x`, rounded to nearest even and saturated to ±448 (e4m3 has no
/// infinities, as `__NV_SATFINITE` does on the device); NaN is `0x7F`. One element of
/// [`encode`](crate::exec::encode).
pub fn e4m3_from_f32(x: f32) -> u8 {
    fp8_bits(round_to(DType::F8E4M3, x), 3, 7)
}

/// The value of e4m3 `bits` (`S.1111.111` is NaN; there are no infinities). One element of
/// [`decode`](crate::exec::decode).
pub fn e4m3_to_f32(bits: u8) -> f32 {
    fp8_value(bits, 3, 7, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_known_values() {
        for (value, bits) in [
            (0.0, 0x00),
            (-0.0, 0x80),
            (1.0, 0x38),
            (-2.0, 0xc0),
            (448.0, 0x7e),
            (0.875, 0x36),
            (2f32.powi(-6), 0x08),
            (2f32.powi(-9), 0x01),
        ] {
            assert_eq!(e4m3_from_f32(value), bits, "{value}");
            assert_eq!(e4m3_to_f32(bits).to_bits(), value.to_bits(), "{bits:#x}");
        }
        assert!(e4m3_to_f32(0x7f).is_nan() && e4m3_to_f32(0xff).is_nan());
        assert_eq!(e4m3_from_f32(f32::NAN), 0x7f);
        // Saturating, and rounding to nearest even (1.0625 is halfway between 1 and 1.125).
        assert_eq!(e4m3_from_f32(1e6), 0x7e);
        assert_eq!(e4m3_from_f32(-f32::INFINITY), 0xfe);
        assert_eq!(e4m3_from_f32(1.0625), 0x38);
        assert_eq!(e4m3_from_f32(1.0626), 0x39);
    }

    #[test]
    fn every_e4m3_value_round_trips() {
        for bits in 0..=255u8 {
            let value = e4m3_to_f32(bits);
            if value.is_nan() {
                continue;
            }
            assert_eq!(e4m3_from_f32(value), bits, "{bits:#x} = {value}");
            assert_eq!(round_to(DType::F8E4M3, value), value, "{bits:#x}");
        }
    }
}
