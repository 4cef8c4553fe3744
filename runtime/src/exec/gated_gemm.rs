//! Launching a generated gated-GEMM kernel (`templates/gated_gemm.cu.tera`): the TMA
//! descriptors of its two operands, its shared memory and its persistent grid.
//!
//! The kernel streams `x` and `w` into shared memory with the Tensor Memory Accelerator, which
//! reads a tensor through a descriptor the driver encodes on the host (`cuTensorMapEncodeTiled`).
//! Addresses are fixed once the buffers are allocated, so the descriptors are encoded once at
//! load and passed by value on every launch (a CUDA graph keeps its own copy).

use cudarc::driver::sys::{
    self, CUfunction_attribute, CUtensorMap, CUtensorMapDataType, CUtensorMapFloatOOBfill,
    CUtensorMapInterleave, CUtensorMapL2promotion, CUtensorMapSwizzle,
};
use cudarc::driver::{CudaFunction, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};
use lancet_compiler::codegen::gated_gemm::{
    GatedGemmSpec, BOX_K, F_MULTIPLE, K_MULTIPLE, THREADS, TILE_M, TILE_N,
};
use lancet_compiler::lower::GatedGemmStep;

use super::ExecError;
use crate::device::Device;

/// A TMA descriptor as the kernel takes it (`const __grid_constant__ TmaMap`): 128 opaque bytes
/// the driver filled in.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct TensorMap(CUtensorMap);

// SAFETY: a plain-old-data struct of 16 u64s, laid out as the kernel's parameter.
unsafe impl DeviceRepr for TensorMap {}

/// A loaded gated-GEMM kernel made launchable, once for all the steps that run it: its shared
/// memory granted, and how many of its clusters fit on the device at once.
pub(super) struct GatedGemmKernel {
    function: CudaFunction,
    /// What the kernel was generated from: its cluster size and, through its epilogue, its
    /// shared memory.
    spec: GatedGemmSpec,
    /// Clusters resident at once: a persistent grid must not have more, or the late ones would
    /// run their whole share of tiles after the others finish.
    resident: usize,
}

impl GatedGemmKernel {
    /// Grants `function` the dynamic shared memory of `spec`'s kernel and counts its resident
    /// clusters.
    pub(super) fn new(function: CudaFunction, spec: &GatedGemmSpec, device: &Device) -> Result<Self, String> {
        let (cluster, smem) = (spec.cluster, spec.epilogue.smem_bytes());
        function
            .set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )
            .map_err(|e| format!("asking for {smem} bytes of shared memory: {e}"))?;
        let resident = if cluster == 1 {
            device.info().sm_count.max(1) as usize
        } else {
            function
                .occupancy_max_active_clusters(launch_config(cluster, smem), device.stream())
                .map_err(|e| format!("asking how many clusters of {cluster} fit: {e}"))?
                .max(1) as usize
        };
        Ok(GatedGemmKernel {
            function,
            spec: spec.clone(),
            resident,
        })
    }
}

/// A launch of `grid` CTAs with the kernel's block and `smem` bytes of shared memory.
fn launch_config(grid: usize, smem: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid as u32, 1, 1),
        block_dim: (THREADS as u32, 1, 1),
        shared_mem_bytes: smem as u32,
    }
}

/// One gated-GEMM step, resolved to device addresses.
pub(super) struct GatedGemmLaunch {
    function: CudaFunction,
    x_map: TensorMap,
    w_map: TensorMap,
    /// `x_scale, w_scale, out_scale, out, amax`.
    pointers: [u64; 5],
    /// `m, f, k`.
    dims: [i32; 3],
    config: LaunchConfig,
}

/// Device addresses of a [`GatedGemmStep`]'s operands, in kernel order.
pub(super) struct GatedGemmPointers {
    pub x: u64,
    pub w: u64,
    pub x_scale: u64,
    pub w_scale: u64,
    pub out_scale: u64,
    pub out: u64,
    pub amax: u64,
}

impl GatedGemmLaunch {
    /// Encodes the operands' descriptors and sizes the launch: as many clusters (of one CTA, or
    /// two) as are resident at once, at most one per unit of work, each looping over tiles.
    /// `step` names the plan step in errors.
    pub(super) fn new(
        step: usize,
        kernel: &GatedGemmKernel,
        g: &GatedGemmStep,
        p: &GatedGemmPointers,
    ) -> Result<Self, ExecError> {
        let error = |problem: String| ExecError::Step {
            step,
            what: format!("gated GEMM {}", g.node),
            problem,
        };
        let dim = |d: usize| i32::try_from(d).map_err(|_| error(format!("dimension {d} exceeds i32")));
        let dims = [dim(g.m)?, dim(g.f)?, dim(g.k)?];
        // The epilogue's paired stores (lowering sees to it).
        if g.f % F_MULTIPLE != 0 {
            return Err(error(format!("f = {} is not a multiple of {F_MULTIPLE}", g.f)));
        }
        let x_map = encode(p.x, g.m, g.k, TILE_M).map_err(|e| error(format!("x: {e}")))?;
        let w_map = encode(p.w, 2 * g.f, g.k, TILE_N).map_err(|e| error(format!("w: {e}")))?;
        // The kernel's units of work: one column of `cluster` vertically adjacent tiles each.
        let cluster = kernel.spec.cluster;
        let groups = g.m.div_ceil(TILE_M).div_ceil(cluster) * g.f.div_ceil(TILE_N);
        Ok(GatedGemmLaunch {
            function: kernel.function.clone(),
            x_map,
            w_map,
            pointers: [p.x_scale, p.w_scale, p.out_scale, p.out, p.amax],
            dims,
            config: launch_config(
                groups.min(kernel.resident) * cluster,
                kernel.spec.epilogue.smem_bytes(),
            ),
        })
    }

    /// Queues the kernel on `stream`.
    ///
    /// # Safety
    /// The addresses given to [`new`](Self::new) must still be live allocations of the sizes the
    /// step describes.
    pub(super) unsafe fn launch(
        &self,
        stream: &std::sync::Arc<CudaStream>,
    ) -> Result<(), cudarc::driver::DriverError> {
        let mut b = stream.launch_builder(&self.function);
        b.arg(&self.x_map).arg(&self.w_map);
        for p in &self.pointers {
            b.arg(p);
        }
        for d in &self.dims {
            b.arg(d);
        }
        // SAFETY: the parameters match the kernel's signature in gated_gemm.cu.tera, and the
        // caller keeps the buffers alive.
        unsafe { b.launch(self.config) }.map(|_| ())
    }
}

/// The descriptor of a row-major e4m3 matrix `[rows, k]` at `address`, read in boxes of
/// `box_rows` rows × `BOX_K` bytes with the 128-byte swizzle wgmma expects. Out-of-range
/// elements of edge boxes read as zero, which is what lets the kernel take any `m` and ragged `f`
/// and `k`.
fn encode(address: u64, rows: usize, k: usize, box_rows: usize) -> Result<TensorMap, String> {
    // TMA's own limits: a 16-byte aligned base and row pitch (lowering sees to both).
    if address % 16 != 0 {
        return Err(format!("address {address:#x} is not 16-byte aligned"));
    }
    if k % K_MULTIPLE != 0 {
        return Err(format!("row of {k} bytes is not a multiple of {K_MULTIPLE}"));
    }
    let global_dim = [k as u64, rows as u64];
    let global_strides = [k as u64];
    let box_dim = [BOX_K as u32, box_rows as u32];
    let element_strides = [1u32, 1];
    let mut map = std::mem::MaybeUninit::<CUtensorMap>::zeroed();
    // SAFETY: every array holds the rank (2) entries the call reads (strides: rank − 1), and
    // `map` is a writable descriptor.
    let status = unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8,
            2,
            address as *mut std::ffi::c_void,
            global_dim.as_ptr(),
            global_strides.as_ptr(),
            box_dim.as_ptr(),
            element_strides.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    if status != sys::CUresult::CUDA_SUCCESS {
        return Err(format!(
            "cuTensorMapEncodeTiled refused a [{rows}, {k}] e4m3 matrix: {status:?}"
        ));
    }
    // SAFETY: the driver wrote the descriptor (and it was zeroed before).
    Ok(TensorMap(unsafe { map.assume_init() }))
}
