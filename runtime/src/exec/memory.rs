//! Device memory for a plan: one arena for all activations (placed by the plan's memory plan),
//! one allocation per weight, input and output, and the amax slots.

use cudarc::driver::result;
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaSlice, DevicePtr};
use lancet_compiler::lower::{Buffer, BufferKind, Plan, View};
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

/// Every buffer of a plan on the device, by buffer id.
pub struct Buffers {
    /// Device address of each buffer's first byte.
    base: Vec<CUdeviceptr>,
    /// The allocations (arena first); freed when dropped, in stream order.
    _owned: Vec<CudaSlice<u8>>,
    amax: CudaSlice<f32>,
    amax_base: CUdeviceptr,
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
        let amax = device
            .stream()
            .alloc_zeros::<f32>(plan.amax_slots.len().max(1))
            .map_err(|e| {
                crate::Error::from(DeviceError::Driver {
                    what: "allocating amax slots",
                    source: e,
                })
            })?;
        let amax_base = {
            let (base, _sync) = amax.device_ptr(device.stream());
            base
        };
        Ok(Buffers {
            base,
            _owned: owned,
            amax_base,
            amax,
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
        self.amax_base + (slot * 4) as u64
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

    pub fn download_amax(&self, device: &Device) -> crate::Result<Vec<f32>> {
        device.stream().clone_dtoh(&self.amax).map_err(|e| {
            DeviceError::Driver {
                what: "reading amax",
                source: e,
            }
            .into()
        })
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
