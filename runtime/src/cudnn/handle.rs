//! A cuDNN handle bound to lancet's stream, and the workspace memory its plans execute with.

use std::cell::RefCell;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cudnn::sys::cudnnHandle_t;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use super::descriptor::Descriptor;
use super::library::Library;
use crate::device::{bind, DeviceError};
use crate::Result;

/// A cuDNN handle whose work runs on one stream.
///
/// Plans executed through a handle share its workspace: they run in stream order, so one buffer
/// (as large as the largest plan needs) serves them all. The workspace only grows, and a grown
/// workspace keeps the older buffers until the handle is dropped, so an address baked into a
/// variant pack or a captured CUDA graph stays valid for the handle's whole life.
pub struct Handle {
    raw: cudnnHandle_t,
    lib: &'static Library,
    stream: Arc<CudaStream>,
    workspaces: RefCell<Vec<CudaSlice<u8>>>,
}

// SAFETY: cuDNN handles have no thread affinity; cuDNN only forbids using one handle from two
// threads at once, which `Handle` being `!Sync` (its `RefCell`) already rules out.
unsafe impl Send for Handle {}

impl Handle {
    /// Loads cuDNN (checking its version) and creates a handle that runs on `stream`.
    pub fn new(stream: &Arc<CudaStream>) -> Result<Self> {
        let lib = Library::get()?;
        bind(stream)?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; the stream's context is current.
        lib.check(unsafe { (lib.api.create)(&mut raw) }, || "cudnnCreate".into())?;
        let handle = Handle {
            raw,
            lib,
            stream: stream.clone(),
            workspaces: RefCell::new(Vec::new()),
        };
        // SAFETY: a live handle and a live stream of the current context.
        let status = unsafe { (lib.api.set_stream)(raw, stream.cu_stream() as _) };
        lib.check(status, || "cudnnSetStream".into())?;
        Ok(handle)
    }

    pub fn library(&self) -> &'static Library {
        self.lib
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub(crate) fn raw(&self) -> cudnnHandle_t {
        self.raw
    }

    /// A workspace of at least `bytes` (null for zero), allocating a larger one if needed. Call
    /// it when a plan is made, not while a stream capture is under way.
    pub fn workspace(&self, bytes: usize) -> Result<*mut c_void> {
        if bytes == 0 {
            return Ok(std::ptr::null_mut());
        }
        let mut workspaces = self.workspaces.borrow_mut();
        if workspaces.last().is_none_or(|w| w.len() < bytes) {
            let buffer = self
                .stream
                .alloc_zeros::<u8>(bytes)
                .map_err(|source| DeviceError::Driver {
                    what: "allocating the cuDNN workspace",
                    source,
                })?;
            workspaces.push(buffer);
        }
        let current = workspaces.last().expect("a workspace was just ensured");
        let (ptr, _record) = current.device_ptr(&self.stream);
        Ok(ptr as *mut c_void)
    }

    /// Queues `plan` with the buffers of `pack` on the handle's stream.
    ///
    /// # Safety
    /// Every address in `pack` must point to memory of the size and layout the plan's graph
    /// describes, valid until the queued work completes; by-value entries must point to live
    /// host values (cuDNN copies them into the launch before returning).
    pub(crate) unsafe fn execute(&self, plan: &Descriptor, pack: &Descriptor) -> Result<()> {
        bind(&self.stream)?;
        let status = (self.lib.api.backend_execute)(self.raw, plan.raw(), pack.raw());
        Ok(self
            .lib
            .check(status, || format!("cudnnBackendExecute of {plan}"))?)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Workspaces may still be in use by queued work: cudarc frees them in stream order.
        // SAFETY: created by `cudnnCreate`, destroyed once; a failure has no one to report to.
        unsafe { (self.lib.api.destroy)(self.raw) };
    }
}
