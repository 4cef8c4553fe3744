//! The CUDA device lancet runs on: its context, the one stream all of lancet's work is queued on,
//! and a description of the GPU that keys on-disk caches (a plan compiled for one GPU model is
//! never loaded on another).

use std::fmt;
use std::sync::Arc;

use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaContext, CudaStream, DriverError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("no CUDA driver library (libcuda.so) could be loaded")]
    NoDriver,
    #[error("CUDA driver: {what} failed: {source}")]
    Driver {
        what: &'static str,
        #[source]
        source: DriverError,
    },
    #[error("no CUDA device {ordinal}: the driver reports {count} device(s)")]
    NoDevice { ordinal: usize, count: usize },
}

fn driver(what: &'static str) -> impl FnOnce(DriverError) -> DeviceError {
    move |source| DeviceError::Driver { what, source }
}

/// Makes `stream`'s context current on this thread: the driver, cuDNN and cuBLASLt act in
/// whatever context is current. (Not a stream operation, so harmless during a capture.)
pub(crate) fn bind(stream: &CudaStream) -> Result<(), DeviceError> {
    stream
        .context()
        .bind_to_thread()
        .map_err(driver("making the context current"))
}

/// What identifies a GPU for compiled artifacts: its model name, architecture and SM count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub sm_count: i32,
}

impl DeviceInfo {
    /// The architecture name NVIDIA's tools use, e.g. `sm_90`.
    pub fn arch(&self) -> String {
        format!("sm_{}{}", self.compute_capability.0, self.compute_capability.1)
    }
}

impl fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}, {} SMs)", self.name, self.arch(), self.sm_count)
    }
}

/// How many CUDA devices this machine has. Never panics: without a loadable driver this is
/// [`DeviceError::NoDriver`], which is how GPU tests decide to skip themselves.
pub fn device_count() -> Result<usize, DeviceError> {
    // SAFETY: only tries to open the library; cudarc's loader would panic if it were absent.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(DeviceError::NoDriver);
    }
    let count = CudaContext::device_count().map_err(driver("cuInit / cuDeviceGetCount"))?;
    Ok(usize::try_from(count).unwrap_or(0))
}

/// `ordinal` as the driver's device index, if the driver has such a device.
fn existing(ordinal: usize) -> Result<std::os::raw::c_int, DeviceError> {
    let count = device_count()?;
    std::os::raw::c_int::try_from(ordinal)
        .ok()
        .filter(|_| ordinal < count)
        .ok_or(DeviceError::NoDevice { ordinal, count })
}

/// The compute capability of device `ordinal`, read without creating a context: what compiling
/// for the device needs, known about a tenth of a second into the process (after `cuInit`)
/// while the context, which takes as long again, is still being made.
pub fn compute_capability(ordinal: usize) -> Result<(i32, i32), DeviceError> {
    let ordinal = existing(ordinal)?;
    let device = cudarc::driver::result::device::get(ordinal).map_err(driver("cuDeviceGet"))?;
    let read = |attribute| {
        // SAFETY: `device` is a valid handle from cuDeviceGet; the attribute is an integer one.
        unsafe { cudarc::driver::result::device::get_attribute(device, attribute) }
            .map_err(driver("reading the compute capability"))
    };
    Ok((
        read(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
        read(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
    ))
}

/// An open device: the primary context and lancet's stream on it.
///
/// lancet queues all of its work (copies, kernels, library calls) on this one stream, in
/// program order, and captures it into CUDA graphs. cudarc's per-buffer event tracking, which
/// exists to order work across *several* streams, is therefore switched off: it would only add
/// event records to every launch, and waits on events recorded outside a capture.
pub struct Device {
    stream: Arc<CudaStream>,
    info: DeviceInfo,
}

impl Device {
    pub fn open(ordinal: usize) -> Result<Self, DeviceError> {
        existing(ordinal)?;
        let ctx = CudaContext::new(ordinal).map_err(driver("creating the primary context"))?;
        // SAFETY: called before this context allocates anything; every buffer lancet makes is
        // used on `stream` alone (see the type's documentation), so stream order is all the
        // synchronization there is to manage.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(driver("creating a stream"))?;
        let info = DeviceInfo {
            ordinal,
            name: ctx.name().map_err(driver("cuDeviceGetName"))?,
            compute_capability: ctx
                .compute_capability()
                .map_err(driver("reading the compute capability"))?,
            sm_count: ctx
                .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .map_err(driver("reading the SM count"))?,
        };
        Ok(Device { stream, info })
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Bytes of device memory in use (by every process) and in total, as the driver reports
    /// them: the difference between two readings is what this process allocated in between.
    pub fn memory_used(&self) -> Result<(usize, usize), DeviceError> {
        bind(&self.stream)?;
        let (free, total) = cudarc::driver::result::mem_get_info().map_err(driver("cuMemGetInfo"))?;
        Ok((total - free, total))
    }
}
