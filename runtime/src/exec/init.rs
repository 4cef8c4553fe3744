//! Parameters made on the GPU: random ones drawn there (the host generator's draws, made where
//! they are used instead of computed on the host and copied over), and a checkpoint's copied
//! there as stored (bf16, usually) and converted there, tensor by tensor, so that neither the
//! whole model in f32 nor its FP8 quantization passes through host memory. The kernels are one
//! fixed CUDA program, `templates/init.cu`, compiled by NVRTC like the generated ones (and
//! cached).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{
    result, CudaFunction, CudaModule, CudaSlice, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use lancet_compiler::checkpoint::Checkpoint;
use lancet_compiler::ir::{DType, Init};
use lancet_compiler::lower::{Buffer, BufferKind, Plan};
use lancet_compiler::weights::stream_key;

use super::host::{decode, encode};
use super::memory::Buffers;
use super::ExecError;
use crate::device::{Device, DeviceError};
use crate::jit::{Compilation, CudaSource};

/// The CUDA program, as NVRTC compiles it.
pub struct InitSource;

impl CudaSource for InitSource {
    fn name(&self) -> &str {
        "lancet_init"
    }

    fn body(&self) -> &str {
        // The generated kernels' storage types and conversions first: no CUDA headers to parse.
        concat!(
            include_str!("../../../templates/numerics.cuh"),
            include_str!("../../../templates/init.cu")
        )
    }
}

/// Where the parameters the host does not hand over come from.
pub enum DeviceParams<'a> {
    /// Drawn from this seed: every Normal-initialised parameter (and its FP8 scale).
    Random { seed: u64 },
    /// Every `*.weight` parameter (and its FP8 scale), from this checkpoint, whose tensors
    /// [`Checkpoint::check`] has found and sized.
    Checkpoint(&'a Checkpoint),
}

/// Blocks of the grid-stride kernels: enough to fill an H100 several times over.
const GRID: u32 = 132 * 16;
const BLOCK: u32 = 256;
const CONFIG: LaunchConfig = LaunchConfig {
    grid_dim: (GRID, 1, 1),
    block_dim: (BLOCK, 1, 1),
    shared_mem_bytes: 0,
};

/// The loaded kernels of [`InitSource`].
pub struct InitKernels {
    functions: HashMap<&'static str, CudaFunction>,
    _module: Arc<CudaModule>,
}

fn driver(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> crate::Error {
    move |source| crate::Error::from(DeviceError::Driver { what, source })
}

impl InitKernels {
    /// Loads the compiled [`InitSource`] (the only program of `compilation`).
    pub fn load(device: &Device, compilation: &Compilation) -> crate::Result<Self> {
        let compiled = &compilation.kernels[0];
        let kernel_error = |problem: String| ExecError::Kernel {
            kernel: compiled.name.clone(),
            problem,
        };
        let module = device
            .stream()
            .context()
            .load_module(cudarc::nvrtc::Ptx::from_binary(compiled.cubin.clone()))
            .map_err(|e| kernel_error(format!("cuModuleLoadData failed: {e}")))?;
        let mut functions = HashMap::new();
        for name in [
            "normal_f32",
            "normal_bf16",
            "normal_f16",
            "amax_f32",
            "quantize_e4m3",
            "quantize_e5m2",
            "widen_bf16",
            "widen_f16",
        ] {
            let function = module
                .load_function(name)
                .map_err(|e| kernel_error(format!("cuModuleGetFunction({name}) failed: {e}")))?;
            functions.insert(name, function);
        }
        Ok(InitKernels {
            functions,
            _module: module,
        })
    }

    /// Fills the parameter buffers `source` provides (those in `given` excepted, for random
    /// ones) and the scale buffer of each FP8 weight among them; returns the names filled.
    pub(crate) fn fill(
        &self,
        device: &Device,
        plan: &Plan,
        buffers: &Buffers,
        source: &DeviceParams,
        given: impl Fn(&str) -> bool,
    ) -> crate::Result<HashSet<String>> {
        let mut fill = Fill::new(self, device, plan, buffers, source)?;
        for (id, buffer) in plan.buffers.iter().enumerate() {
            if buffer.kind != BufferKind::Param {
                continue;
            }
            match (source, &buffer.init) {
                (DeviceParams::Random { seed }, Some(Init::Normal { std })) if !given(&buffer.name) => {
                    fill.random(id, stream_key(*seed, &buffer.name), std.get())?
                }
                (DeviceParams::Checkpoint(checkpoint), _) if buffer.name.ends_with(".weight") => {
                    fill.copy_checkpoint(id, checkpoint)?
                }
                _ => {}
            }
        }
        device
            .stream()
            .synchronize()
            .map_err(driver("making parameters"))?;
        Ok(fill.filled)
    }
}

/// One pass of filling parameters: the scratch it needs and what it has filled.
struct Fill<'a> {
    kernels: &'a InitKernels,
    device: &'a Device,
    plan: &'a Plan,
    buffers: &'a Buffers,
    /// FP8 weight name → its scale parameter's buffer.
    scale_of: HashMap<&'a str, usize>,
    /// f32 values of the FP8 weight being quantized, then its amax.
    scratch: CudaSlice<f32>,
    amax: CudaSlice<u32>,
    /// A checkpoint tensor as stored, before it is widened.
    staging: CudaSlice<u8>,
    filled: HashSet<String>,
}

/// Zeroed scratch of `n` elements, or an out-of-memory error that says how much.
fn alloc<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    device: &Device,
    n: usize,
) -> crate::Result<CudaSlice<T>> {
    device.stream().alloc_zeros::<T>(n).map_err(|_| {
        let (free, total) = result::mem_get_info().unwrap_or((0, 0));
        ExecError::OutOfMemory(super::OutOfMemory {
            what: "scratch for making parameters on the device".into(),
            asked: n * std::mem::size_of::<T>(),
            free,
            total,
        })
        .into()
    })
}

impl<'a> Fill<'a> {
    fn new(
        kernels: &'a InitKernels,
        device: &'a Device,
        plan: &'a Plan,
        buffers: &'a Buffers,
        source: &DeviceParams,
    ) -> crate::Result<Self> {
        let scale_of = plan
            .buffers
            .iter()
            .enumerate()
            .filter_map(|(id, b)| match &b.init {
                Some(Init::ScaleOf { weight }) => Some((weight.as_str(), id)),
                _ => None,
            })
            .collect();
        let largest_fp8 = plan
            .buffers
            .iter()
            .filter(|b| b.kind == BufferKind::Param && b.dtype.is_fp8())
            .map(|b| b.elems)
            .max()
            .unwrap_or(0);
        // A bf16 or f16 part of a checkpoint's FP8 weight is staged as stored before widening
        // (f32 parts go straight into the scratch).
        let largest_staged = match source {
            DeviceParams::Checkpoint(checkpoint) => plan
                .buffers
                .iter()
                .filter(|b| b.kind == BufferKind::Param && b.dtype.is_fp8())
                .filter_map(|b| checkpoint.raw_parts(&b.name).ok())
                .flatten()
                .filter(|(dtype, _)| *dtype != DType::F32)
                .map(|(_, bytes)| bytes.len())
                .max()
                .unwrap_or(0),
            DeviceParams::Random { .. } => 0,
        };
        let scratch = alloc::<f32>(device, largest_fp8.max(1))?;
        let staging = alloc::<u8>(device, largest_staged.max(1))?;
        let amax = alloc::<u32>(device, 1)?;
        Ok(Fill {
            kernels,
            device,
            plan,
            buffers,
            scale_of,
            scratch,
            amax,
            staging,
            filled: HashSet::new(),
        })
    }

    fn launch_error(buffer: &Buffer) -> impl Fn(cudarc::driver::DriverError) -> ExecError + '_ {
        move |e| ExecError::Kernel {
            kernel: format!("lancet_init for '{}'", buffer.name),
            problem: e.to_string(),
        }
    }

    /// Draws buffer `id` from the stream `key`.
    fn random(&mut self, id: usize, key: u64, std: f32) -> crate::Result<()> {
        let buffer = &self.plan.buffers[id];
        let n = buffer.elems as u64;
        let name = match buffer.dtype {
            DType::F32 => "normal_f32",
            DType::BF16 => "normal_bf16",
            DType::F16 => "normal_f16",
            DType::F8E4M3 | DType::F8E5M2 => {
                let mut b = self
                    .device
                    .stream()
                    .launch_builder(&self.kernels.functions["normal_f32"]);
                b.arg(&mut self.scratch).arg(&n).arg(&key).arg(&std);
                // SAFETY: the scratch holds at least `n` f32 (sized for the largest FP8 weight).
                unsafe { b.launch(CONFIG) }.map_err(Self::launch_error(buffer))?;
                return self.quantize(id);
            }
            other => {
                return Err(ExecError::Binding {
                    kind: "param",
                    name: buffer.name.clone(),
                    problem: format!("random {other} parameters cannot be drawn on the device"),
                }
                .into())
            }
        };
        let out = self.buffers.base(id);
        let mut b = self.device.stream().launch_builder(&self.kernels.functions[name]);
        b.arg(&out).arg(&n).arg(&key).arg(&std);
        // SAFETY: `out` is this parameter's own allocation of `n` elements of the kernel's output.
        unsafe { b.launch(CONFIG) }.map_err(Self::launch_error(buffer))?;
        self.filled.insert(buffer.name.clone());
        Ok(())
    }

    /// Copies buffer `id`'s tensors from `checkpoint`: as stored when the dtypes agree, widened
    /// and quantized on the device for an FP8 weight, converted on the host, tensor by tensor,
    /// otherwise (an f16 or f32 checkpoint into a bf16 graph).
    fn copy_checkpoint(&mut self, id: usize, checkpoint: &Checkpoint) -> crate::Result<()> {
        let buffer = &self.plan.buffers[id];
        let parts = checkpoint
            .raw_parts(&buffer.name)
            .map_err(|e| ExecError::Binding {
                kind: "param",
                name: buffer.name.clone(),
                problem: e.to_string(),
            })?;
        let elems: usize = parts
            .iter()
            .map(|(dtype, bytes)| bytes.len() / dtype.size_bytes())
            .sum();
        if elems != buffer.elems {
            return Err(ExecError::Binding {
                kind: "param",
                name: buffer.name.clone(),
                problem: format!(
                    "the checkpoint holds {elems} elements, the plan expects {}",
                    buffer.elems
                ),
            }
            .into());
        }
        let stream = self.device.stream();
        let mut at = 0usize;
        for (dtype, bytes) in parts {
            let n = bytes.len() / dtype.size_bytes();
            if buffer.dtype.is_fp8() {
                // Into the f32 scratch at element `at`: directly for f32, widened otherwise.
                let (scratch, _) = self.scratch.device_ptr_mut(stream);
                let dst = scratch + (4 * at) as CUdeviceptr;
                if dtype == DType::F32 {
                    copy(self.device, dst, bytes)?;
                } else {
                    let (staging, _) = self.staging.device_ptr_mut(stream);
                    copy(self.device, staging, bytes)?;
                    let widen = if dtype == DType::BF16 {
                        "widen_bf16"
                    } else {
                        "widen_f16"
                    };
                    let mut b = stream.launch_builder(&self.kernels.functions[widen]);
                    let count = n as u64;
                    b.arg(&staging).arg(&count).arg(&dst);
                    // SAFETY: reads `n` staged elements of `dtype`, writes `n` f32 inside the
                    // scratch (its parts sum to the buffer's size, checked above).
                    unsafe { b.launch(CONFIG) }.map_err(Self::launch_error(buffer))?;
                }
            } else {
                let dst = self.buffers.base(id) + (at * buffer.dtype.size_bytes()) as CUdeviceptr;
                if dtype == buffer.dtype {
                    copy(self.device, dst, bytes)?;
                } else {
                    copy(self.device, dst, &encode(buffer.dtype, &decode(dtype, bytes)))?;
                }
            }
            at += n;
        }
        if buffer.dtype.is_fp8() {
            return self.quantize(id);
        }
        self.filled.insert(buffer.name.clone());
        Ok(())
    }

    /// Quantizes the f32 scratch into FP8 buffer `id` with the per-tensor scale amax / max,
    /// written to the weight's scale parameter.
    fn quantize(&mut self, id: usize) -> crate::Result<()> {
        let buffer = &self.plan.buffers[id];
        let n = buffer.elems as u64;
        let name = match buffer.dtype {
            DType::F8E4M3 => "quantize_e4m3",
            DType::F8E5M2 => "quantize_e5m2",
            other => {
                return Err(ExecError::Binding {
                    kind: "param",
                    name: buffer.name.clone(),
                    problem: format!("{other} parameters cannot be made on the device"),
                }
                .into())
            }
        };
        let Some(&scale_id) = self.scale_of.get(buffer.name.as_str()) else {
            return Err(ExecError::Binding {
                kind: "param",
                name: buffer.name.clone(),
                problem: "an FP8 weight needs a ScaleOf parameter to hold its scale".into(),
            }
            .into());
        };
        let stream = self.device.stream();
        stream
            .memset_zeros(&mut self.amax)
            .map_err(driver("clearing the weight amax"))?;
        let mut b = stream.launch_builder(&self.kernels.functions["amax_f32"]);
        b.arg(&self.scratch).arg(&n).arg(&mut self.amax);
        // SAFETY: reads `n` scratch elements, writes the one amax word.
        unsafe { b.launch(CONFIG) }.map_err(Self::launch_error(buffer))?;
        let (out, scale) = (self.buffers.base(id), self.buffers.base(scale_id));
        let mut b = stream.launch_builder(&self.kernels.functions[name]);
        b.arg(&self.scratch).arg(&n).arg(&self.amax).arg(&out).arg(&scale);
        // SAFETY: writes `n` FP8 bytes into this weight's allocation and one f32 into its scale
        // parameter's.
        unsafe { b.launch(CONFIG) }.map_err(Self::launch_error(buffer))?;
        self.filled.insert(buffer.name.clone());
        self.filled.insert(self.plan.buffers[scale_id].name.clone());
        Ok(())
    }
}

/// Copies `bytes` from the host to device address `dst`, waiting for the copy (pageable memory,
/// possibly a memory-mapped file: it must be read before this returns).
fn copy(device: &Device, dst: CUdeviceptr, bytes: &[u8]) -> crate::Result<()> {
    let stream = device.stream();
    // SAFETY: `dst` is inside an allocation sized for these bytes (checked by the callers); the
    // stream is synchronized before `bytes` may go away.
    unsafe { result::memcpy_htod_async(dst, bytes, stream.cu_stream()) }
        .map_err(driver("copying a parameter"))?;
    stream.synchronize().map_err(driver("copying a parameter"))
}
