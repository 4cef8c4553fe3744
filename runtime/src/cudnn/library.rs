//! The process's cuDNN: loaded once, version-checked, and called through a table of entry points
//! that return the raw `int` status.
//!
//! cudarc's `sys` functions return `cudnnStatus_t` as a Rust enum, which would be undefined
//! behaviour for a status code newer than cudarc's headers, and panic on a missing symbol.
//! lancet resolves the few entry points it needs itself, from the same library cudarc opens
//! (`sys::culib`), with integer statuses, so every outcome is a value it can report.

use std::ffi::{c_char, c_void, CStr};
use std::sync::OnceLock;

use cudarc::cudnn::sys::{self, cudaStream_t, cudnnBackendDescriptor_t, cudnnHandle_t};

use super::error::{CudnnError, Status, Version};
use crate::native::resolve_api;

type RawStatus = i32;

/// Entry points, with enum arguments as the `u32` values of cudarc's `#[repr(u32)]` enums.
pub(crate) struct Api {
    pub get_error_string: unsafe extern "C" fn(RawStatus) -> *const c_char,
    pub get_last_error_string: unsafe extern "C" fn(*mut c_char, usize),
    pub create: unsafe extern "C" fn(*mut cudnnHandle_t) -> RawStatus,
    pub destroy: unsafe extern "C" fn(cudnnHandle_t) -> RawStatus,
    pub set_stream: unsafe extern "C" fn(cudnnHandle_t, cudaStream_t) -> RawStatus,
    pub backend_create: unsafe extern "C" fn(u32, *mut cudnnBackendDescriptor_t) -> RawStatus,
    pub backend_destroy: unsafe extern "C" fn(cudnnBackendDescriptor_t) -> RawStatus,
    pub backend_finalize: unsafe extern "C" fn(cudnnBackendDescriptor_t) -> RawStatus,
    pub backend_set:
        unsafe extern "C" fn(cudnnBackendDescriptor_t, u32, u32, i64, *const c_void) -> RawStatus,
    pub backend_get:
        unsafe extern "C" fn(cudnnBackendDescriptor_t, u32, u32, i64, *mut i64, *mut c_void) -> RawStatus,
    pub backend_execute:
        unsafe extern "C" fn(cudnnHandle_t, cudnnBackendDescriptor_t, cudnnBackendDescriptor_t) -> RawStatus,
}

pub struct Library {
    version: Version,
    pub(crate) api: Api,
}

static LIBRARY: OnceLock<Result<Library, CudnnError>> = OnceLock::new();

impl Library {
    /// The process's cuDNN, loaded on first use. Fails (every time, with the same error) when
    /// no cuDNN can be opened, a needed symbol is missing, or the version is not supported.
    pub fn get() -> Result<&'static Library, CudnnError> {
        LIBRARY.get_or_init(load).as_ref().map_err(Clone::clone)
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// `Ok` for `CUDNN_STATUS_SUCCESS`; otherwise an error naming the call (built lazily: the
    /// success path allocates nothing) with cuDNN's last error message for this thread.
    pub(crate) fn check(&self, status: RawStatus, call: impl FnOnce() -> String) -> Result<(), CudnnError> {
        if status == 0 {
            return Ok(());
        }
        // SAFETY: cuDNN returns a static string for any status value, known or not.
        let name = unsafe { CStr::from_ptr((self.api.get_error_string)(status)) };
        let mut message = [0 as c_char; 1024];
        // SAFETY: cuDNN writes at most `len` bytes, NUL-terminated.
        unsafe { (self.api.get_last_error_string)(message.as_mut_ptr(), message.len()) };
        // SAFETY: NUL-terminated within the buffer (zero-initialised, cuDNN truncates).
        let message = unsafe { CStr::from_ptr(message.as_ptr()) };
        Err(CudnnError::Call {
            version: self.version,
            call: call(),
            status: Status {
                code: status,
                name: name.to_string_lossy().into_owned(),
            },
            message: message.to_string_lossy().trim().to_owned(),
        })
    }
}

fn load() -> Result<Library, CudnnError> {
    // SAFETY: only tries to open the candidates; `culib` would panic if none opened.
    if !unsafe { sys::is_culib_present() } {
        return Err(CudnnError::NotFound {
            candidates: cudarc::get_lib_name_candidates("cudnn").join(", "),
        });
    }
    // SAFETY: present, as just checked.
    let lib = unsafe { sys::culib() };
    // SAFETY: `size_t cudnnGetVersion(void)`.
    let get_version =
        unsafe { lib.get::<unsafe extern "C" fn() -> usize>(b"cudnnGetVersion\0") }.map_err(|_| {
            CudnnError::MissingSymbol {
                version: "(unknown)".into(),
                symbol: "cudnnGetVersion",
            }
        })?;
    // SAFETY: takes no arguments, has no preconditions.
    let version = Version(unsafe { get_version() });
    version.check_supported()?;
    let api = resolve_api!(CudnnError, lib, version.to_string(), {
        get_error_string = "cudnnGetErrorString",
        get_last_error_string = "cudnnGetLastErrorString",
        create = "cudnnCreate",
        destroy = "cudnnDestroy",
        set_stream = "cudnnSetStream",
        backend_create = "cudnnBackendCreateDescriptor",
        backend_destroy = "cudnnBackendDestroyDescriptor",
        backend_finalize = "cudnnBackendFinalize",
        backend_set = "cudnnBackendSetAttribute",
        backend_get = "cudnnBackendGetAttribute",
        backend_execute = "cudnnBackendExecute",
    });
    Ok(Library { version, api })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs everywhere, CI included: with no cuDNN installed the answer is an error listing the
    /// file names tried; with one, its version passed the check. Either way, no panic.
    #[test]
    fn loading_reports_instead_of_panicking() {
        match Library::get() {
            Ok(lib) => assert!(lib.version().check_supported().is_ok()),
            Err(CudnnError::NotFound { candidates }) => {
                assert!(candidates.contains("libcudnn.so.9"), "{candidates}");
                let message = Library::get().err().map(|e| e.to_string()).unwrap_or_default();
                assert!(message.contains("cuDNN 9.1 or newer"), "{message}");
            }
            Err(e) => assert!(e.to_string().starts_with("cuDNN"), "{e}"),
        }
    }
}
