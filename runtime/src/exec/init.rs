//! Random parameters made on the GPU, for runs without a checkpoint: the same draws as the host
//! generator (`lancet_compiler::weights`), made where they are used instead of being computed
//! on the host (~10⁹ numbers for the headline model) and copied over. The kernels are one fixed
//! CUDA program, `templates/init.cu`, compiled by NVRTC like the generated ones (and cached).

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaModule, LaunchConfig, PushKernelArg};
use lancet_compiler::ir::{DType, Init};
use lancet_compiler::lower::{BufferKind, Plan};
use lancet_compiler::weights::stream_key;

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
        include_str!("../../../templates/init.cu")
    }
}

/// Blocks of the grid-stride init kernels: enough to fill an H100 several times over.
const GRID: u32 = 132 * 16;
const BLOCK: u32 = 256;

/// The init kernels, loaded, with the seed they draw from.
pub struct RandomInit {
    seed: u64,
    functions: HashMap<&'static str, CudaFunction>,
    _module: Arc<CudaModule>,
}

impl RandomInit {
    /// Loads the compiled [`InitSource`] (the only program of `compilation`).
    pub fn load(device: &Device, compilation: &Compilation, seed: u64) -> crate::Result<Self> {
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
        ] {
            let function = module
                .load_function(name)
                .map_err(|e| kernel_error(format!("cuModuleGetFunction({name}) failed: {e}")))?;
            functions.insert(name, function);
        }
        Ok(RandomInit {
            seed,
            functions,
            _module: module,
        })
    }

    /// Fills every parameter buffer of `plan` that is Normal-initialised and not in `given`,
    /// and the scale buffer of each such FP8 weight; returns the names filled.
    pub(crate) fn fill(
        &self,
        device: &Device,
        plan: &Plan,
        buffers: &Buffers,
        given: impl Fn(&str) -> bool,
    ) -> crate::Result<Vec<String>> {
        let scale_of: HashMap<&str, usize> = plan
            .buffers
            .iter()
            .enumerate()
            .filter_map(|(id, b)| match &b.init {
                Some(Init::ScaleOf { weight }) => Some((weight.as_str(), id)),
                _ => None,
            })
            .collect();
        let stream = device.stream();
        let driver = |what| move |source| crate::Error::from(DeviceError::Driver { what, source });
        // Scratch for FP8 weights: f32 draws, then the amax, then the quantized values.
        let largest = plan
            .buffers
            .iter()
            .filter(|b| b.dtype.is_fp8() && matches!(b.init, Some(Init::Normal { .. })))
            .map(|b| b.elems)
            .max()
            .unwrap_or(0);
        let mut scratch = stream
            .alloc_zeros::<f32>(largest.max(1))
            .map_err(driver("allocating init scratch"))?;
        let mut amax = stream
            .alloc_zeros::<u32>(1)
            .map_err(driver("allocating init scratch"))?;
        let config = LaunchConfig {
            grid_dim: (GRID, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut filled = Vec::new();
        for (id, buffer) in plan.buffers.iter().enumerate() {
            let Some(Init::Normal { std }) = &buffer.init else {
                continue;
            };
            if buffer.kind != BufferKind::Param || given(&buffer.name) {
                continue;
            }
            let (n, key, std) = (
                buffer.elems as u64,
                stream_key(self.seed, &buffer.name),
                std.get(),
            );
            let out = buffers.base(id);
            let launch_error = |e: cudarc::driver::DriverError| ExecError::Kernel {
                kernel: format!("lancet_init for '{}'", buffer.name),
                problem: e.to_string(),
            };
            let normal = match buffer.dtype {
                DType::F32 => Some("normal_f32"),
                DType::BF16 => Some("normal_bf16"),
                DType::F16 => Some("normal_f16"),
                _ => None,
            };
            if let Some(name) = normal {
                let mut b = stream.launch_builder(&self.functions[name]);
                b.arg(&out).arg(&n).arg(&key).arg(&std);
                // SAFETY: `out` is this parameter's own allocation of `n` elements of the kernel's
                // output type; the kernel writes exactly those.
                unsafe { b.launch(config) }.map_err(launch_error)?;
                filled.push(buffer.name.clone());
                continue;
            }
            let quantize = match buffer.dtype {
                DType::F8E4M3 => "quantize_e4m3",
                DType::F8E5M2 => "quantize_e5m2",
                other => {
                    return Err(ExecError::Binding {
                        kind: "param",
                        name: buffer.name.clone(),
                        problem: format!("random initialisation of {other} is not supported"),
                    }
                    .into())
                }
            };
            let scale = scale_of.get(buffer.name.as_str()).map(|&s| buffers.base(s));
            let Some(scale) = scale else {
                return Err(ExecError::Binding {
                    kind: "param",
                    name: buffer.name.clone(),
                    problem: "an FP8 weight needs a ScaleOf parameter to hold its scale".into(),
                }
                .into());
            };
            stream
                .memset_zeros(&mut amax)
                .map_err(driver("clearing the init amax"))?;
            let mut b = stream.launch_builder(&self.functions["normal_f32"]);
            b.arg(&mut scratch).arg(&n).arg(&key).arg(&std);
            // SAFETY: the scratch holds at least `n` f32 (sized for the largest FP8 weight).
            unsafe { b.launch(config) }.map_err(launch_error)?;
            let mut b = stream.launch_builder(&self.functions["amax_f32"]);
            b.arg(&scratch).arg(&n).arg(&mut amax);
            // SAFETY: reads `n` scratch elements, writes the one amax word.
            unsafe { b.launch(config) }.map_err(launch_error)?;
            let mut b = stream.launch_builder(&self.functions[quantize]);
            b.arg(&scratch).arg(&n).arg(&amax).arg(&out).arg(&scale);
            // SAFETY: writes `n` FP8 bytes into this weight's allocation and one f32 into its
            // scale parameter's.
            unsafe { b.launch(config) }.map_err(launch_error)?;
            filled.push(buffer.name.clone());
            filled.push(plan.buffers[scale_of[buffer.name.as_str()]].name.clone());
        }
        stream.synchronize().map_err(driver("initialising parameters"))?;
        Ok(filled)
    }
}
