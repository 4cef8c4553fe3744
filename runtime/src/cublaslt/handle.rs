//! A cuBLASLt handle and the device memory every GEMM of it shares: the workspace and a unit
//! scale.
//!
//! One workspace serves every plan: GEMMs run in stream order, so no two use it at once. It is
//! allocated once, at its full size, so that its address — which a captured CUDA graph bakes
//! in — never changes, and so that no launch ever allocates (cuBLASLt without a workspace of
//! its own may add stream-ordered allocations to a capture).

use std::sync::Arc;

use cudarc::cublaslt::sys::cublasLtHandle_t;
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use super::library::Library;
use crate::device::{bind, DeviceError};
use crate::Result;

/// NVIDIA's recommended cuBLAS workspace for Hopper (sm_90), and Transformer Engine's: 32 MiB.
/// PyTorch's cuBLASLt path uses 1 MiB. Measured on an H100 with cuBLASLt 13.1 (benches/gemm.rs):
/// at the Llama-3.2-1B shapes no FP8 candidate asks for more than 4 bytes, so the size only
/// matters for shapes whose best kernels split K; it costs 0.04 % of an H100's memory.
pub const DEFAULT_WORKSPACE_BYTES: usize = 32 << 20;

pub(crate) struct Handle {
    raw: cublasLtHandle_t,
    lib: &'static Library,
    stream: Arc<CudaStream>,
    workspace: CudaSlice<u8>,
    workspace_ptr: CUdeviceptr,
    /// One f32 holding 1.0, and its address: the scale pointers a descriptor holds until a
    /// launch sets its own, so the heuristic and `cublasLtMatmulAlgoCheck` see FP8 descriptors
    /// as they will run.
    unit_scale: (CudaSlice<f32>, CUdeviceptr),
}

// SAFETY: a cuBLASLt handle has no thread affinity and holds no per-call state (streams and
// workspaces are arguments of each call). Launch order on the shared workspace is the
// callers' contract (`GemmPlan::launch`).
unsafe impl Send for Handle {}
// SAFETY: see `Send`.
unsafe impl Sync for Handle {}

impl Handle {
    pub fn new(stream: &Arc<CudaStream>, workspace_bytes: usize) -> Result<Self> {
        let lib = Library::get()?;
        bind(stream)?;
        let alloc_error = |what| move |source| DeviceError::Driver { what, source };
        let workspace = stream
            .alloc_zeros::<u8>(workspace_bytes.max(1))
            .map_err(alloc_error("allocating the cuBLASLt workspace"))?;
        let unit_scale = stream
            .clone_htod(&[1.0f32])
            .map_err(alloc_error("uploading the unit GEMM scale"))?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; the stream's context is current.
        lib.check(unsafe { (lib.api.create)(&mut raw) }, || "cublasLtCreate".into())?;
        let workspace_ptr = workspace.device_ptr(stream).0;
        let unit_scale_ptr = unit_scale.device_ptr(stream).0;
        Ok(Handle {
            raw,
            lib,
            stream: stream.clone(),
            workspace,
            workspace_ptr,
            unit_scale: (unit_scale, unit_scale_ptr),
        })
    }

    pub fn library(&self) -> &'static Library {
        self.lib
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn raw(&self) -> cublasLtHandle_t {
        self.raw
    }

    /// The workspace's address and size in bytes.
    pub fn workspace(&self) -> (CUdeviceptr, usize) {
        (self.workspace_ptr, self.workspace.len())
    }

    pub fn unit_scale(&self) -> CUdeviceptr {
        self.unit_scale.1
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // The buffers may still be in use by queued work: cudarc frees them in stream order.
        // SAFETY: created by `cublasLtCreate`, destroyed once; a failure has no one to report to.
        unsafe { (self.lib.api.destroy)(self.raw) };
    }
}
