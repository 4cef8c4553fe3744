//! Device memory for a plan: one arena for all activations (placed by the plan's memory plan),
//! one allocation per weight, input and output, the amax slots, and the scalars FP8 attention
//! reads.

use cudarc::driver::result;
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaSlice, DevicePtr};
use lancet_compiler::lower::{Buffer, BufferKind, Plan, Step, View};
use lancet_compiler::reference::Array;
use thiserror::Error;

use super::host::{decode, encode};
use super::ExecError;
use crate::device::{Device, DeviceError};

#[derive(Debug, Error)]
#[error("out of device memory: {what} needs {asked} bytes, {free} of {total} bytes are free")]
pub struct OutOfMemory {
    pub what: String,
    pub asked: usize,
    pub free: usize,
    pub total: usize,
}

/// Floats between consecutive amax slots and attention scalars: cuDNN reads and writes its
/// scalar tensors as 16-byte aligned, so every slot gets 16 bytes of its own.
const SLOT_FLOATS: usize = 4;

/// The scalars of one FP8 attention call, in slot order (see [`Buffers::attention_scalar`]).
#[derive(Clone, Copy, Debug)]
pub enum AttentionScalar {
    /// `1 / o_scale`: cuDNN multiplies O by its scale, lancet's scales divide.
    ScaleO,
    /// `p_scale`, applied to probabilities before their e4m3 rounding.
    ScaleS,
    /// `1 / p_scale`, undoing it after P·V.
    DescaleS,
    /// max |P|, which cuDNN records and lancet does not use (P lies in [0, 1]).
    AmaxS,
}

/// Every buffer of a plan on the device, by buffer id.
pub struct Buffers {
    /// Device address of each buffer's first byte.
    base: Vec<CUdeviceptr>,
    /// The allocations (arena first); freed when dropped, in stream order.
    _owned: Vec<CudaSlice<u8>>,
    amax: CudaSlice<f32>,
    amax_base: CUdeviceptr,
    /// Four scalars per FP8 attention step, by the step's order among them (addressed through
    /// `scalars_base`).
    _scalars: CudaSlice<f32>,
    scalars_base: CUdeviceptr,
}

fn alloc_f32(
    device: &Device,
    len: usize,
    what: &'static str,
) -> crate::Result<(CudaSlice<f32>, CUdeviceptr)> {
    let slice = device
        .stream()
        .alloc_zeros::<f32>(len.max(1))
        .map_err(|e| crate::Error::from(DeviceError::Driver { what, source: e }))?;
    let base = {
        let (base, _sync) = slice.device_ptr(device.stream());
        base
    };
    Ok((slice, base))
}

fn alloc(device: &Device, bytes: usize, what: &str) -> crate::Result<CudaSlice<u8>> {
    // SAFETY: the memory is written (uploaded or computed) before anything reads it.
    unsafe { device.stream().alloc::<u8>(bytes.max(1)) }.map_err(|_| {
        let (free, total) = result::mem_get_info().unwrap_or((0, 0));
        ExecError::OutOfMemory(OutOfMemory {
            what: what.to_string(),
            asked: bytes,
            free,
            total,
        })
        .into()
    })
}

fn address(device: &Device, slice: &CudaSlice<u8>) -> CUdeviceptr {
    let (ptr, _sync) = slice.device_ptr(device.stream());
    ptr
}

impl Buffers {
    pub fn allocate(device: &Device, plan: &Plan) -> crate::Result<Self> {
        let arena = alloc(device, plan.arena_bytes, "the activation arena")?;
        let arena_base = address(device, &arena);
        let mut owned = vec![arena];
        let mut base = Vec::with_capacity(plan.buffers.len());
        for buffer in &plan.buffers {
            match (buffer.kind, buffer.offset) {
                (BufferKind::Activation, Some(offset)) => base.push(arena_base + offset as u64),
                // An activation no step touches (dead code lowering kept) needs no memory.
                (BufferKind::Activation, None) => base.push(0),
                _ => {
                    let slice = alloc(
                        device,
                        buffer.bytes(),
                        &format!("{:?} '{}'", buffer.kind, buffer.name),
                    )?;
                    base.push(address(device, &slice));
                    owned.push(slice);
                }
            }
        }
        let (amax, amax_base) = alloc_f32(
            device,
            plan.amax_slots.len() * SLOT_FLOATS,
            "allocating amax slots",
        )?;
        let fp8_attention = plan
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Attention(a) if a.fp8.is_some()))
            .count();
        let (scalars, scalars_base) = alloc_f32(
            device,
            fp8_attention * 4 * SLOT_FLOATS,
            "allocating attention scalars",
        )?;
        Ok(Buffers {
            base,
            _owned: owned,
            amax_base,
            amax,
            _scalars: scalars,
            scalars_base,
        })
    }

    /// The device address of buffer `id`'s first byte.
    pub fn base(&self, id: usize) -> CUdeviceptr {
        self.base[id]
    }

    /// The device address of a view's element 0.
    pub fn address(&self, view: &View) -> CUdeviceptr {
        self.base[view.buffer] + (view.offset * view.dtype.size_bytes()) as u64
    }

    pub fn amax_address(&self, slot: usize) -> CUdeviceptr {
        self.amax_base + (slot * SLOT_FLOATS * 4) as u64
    }

    /// The device address of scalar `which` of the `n`-th FP8 attention step.
    pub fn attention_scalar(&self, n: usize, which: AttentionScalar) -> CUdeviceptr {
        self.scalars_base + ((n * 4 + which as usize) * SLOT_FLOATS * 4) as u64
    }

    /// Sets the scalars of the `n`-th FP8 attention step from its O scale and P scale.
    pub fn set_attention_scalars(
        &self,
        device: &Device,
        n: usize,
        o_scale: f32,
        p_scale: f32,
    ) -> crate::Result<()> {
        for (which, value) in [
            (AttentionScalar::ScaleO, 1.0 / o_scale),
            (AttentionScalar::ScaleS, p_scale),
            (AttentionScalar::DescaleS, 1.0 / p_scale),
        ] {
            let bytes = value.to_ne_bytes();
            // SAFETY: the address is a slot of this allocation; the copy from pageable host
            // memory completes before the call returns.
            unsafe {
                result::memcpy_htod_async(
                    self.attention_scalar(n, which),
                    &bytes,
                    device.stream().cu_stream(),
                )
            }
            .map_err(|e| DeviceError::Driver {
                what: "setting attention scales",
                source: e,
            })?;
        }
        device.stream().synchronize().map_err(|e| {
            DeviceError::Driver {
                what: "setting attention scales",
                source: e,
            }
            .into()
        })
    }

    /// Copies `value` into buffer `id`, checking its size.
    pub fn upload(
        &self,
        device: &Device,
        id: usize,
        buffer: &Buffer,
        value: &Array,
        kind: &'static str,
    ) -> crate::Result<()> {
        if value.len() != buffer.elems {
            return Err(ExecError::Binding {
                kind,
                name: buffer.name.clone(),
                problem: format!("has {} elements, the plan expects {}", value.len(), buffer.elems),
            }
            .into());
        }
        let bytes = encode(buffer.dtype, &value.data);
        // SAFETY: the destination is this buffer's own allocation of exactly `bytes.len()` bytes;
        // the copy is synchronous for pageable host memory, so `bytes` may be dropped after.
        unsafe { result::memcpy_htod_async(self.base[id], &bytes, device.stream().cu_stream()) }.map_err(
            |e| DeviceError::Driver {
                what: "copying to the device",
                source: e,
            },
        )?;
        device.stream().synchronize().map_err(|e| DeviceError::Driver {
            what: "copying to the device",
            source: e,
        })?;
        Ok(())
    }

    /// Buffer `id` as f32 values (waits for queued work).
    pub fn download(&self, device: &Device, id: usize, buffer: &Buffer) -> crate::Result<Vec<f32>> {
        let mut bytes = vec![0u8; buffer.bytes()];
        device.stream().synchronize().map_err(|e| DeviceError::Driver {
            what: "waiting for the forward pass",
            source: e,
        })?;
        // SAFETY: the source is this buffer's allocation of `bytes.len()` bytes; we synchronize
        // before reading the host copy.
        unsafe { result::memcpy_dtoh_async(&mut bytes, self.base[id], device.stream().cu_stream()) }
            .map_err(|e| DeviceError::Driver {
                what: "copying from the device",
                source: e,
            })?;
        device.stream().synchronize().map_err(|e| DeviceError::Driver {
            what: "copying from the device",
            source: e,
        })?;
        Ok(decode(buffer.dtype, &bytes))
    }

    /// The amax of every slot, in slot order.
    pub fn download_amax(&self, device: &Device) -> crate::Result<Vec<f32>> {
        let padded = device
            .stream()
            .clone_dtoh(&self.amax)
            .map_err(|e| DeviceError::Driver {
                what: "reading amax",
                source: e,
            })?;
        Ok(padded.into_iter().step_by(SLOT_FLOATS).collect())
    }

    pub fn reset_amax(&self, device: &Device) -> crate::Result<()> {
        // SAFETY: the amax allocation is `len` f32s.
        unsafe {
            result::memset_d8_async(
                self.amax_base,
                0,
                self.amax.len() * 4,
                device.stream().cu_stream(),
            )
        }
        .map_err(|e| {
            DeviceError::Driver {
                what: "zeroing amax",
                source: e,
            }
            .into()
        })
    }
}
