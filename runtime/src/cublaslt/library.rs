//! The process's cuBLASLt: loaded once, version-checked, and called through a table of entry
//! points that return the raw `int` status.
//!
//! cudarc's `sys` functions return `cublasStatus_t` as a Rust enum, which would be undefined
//! behaviour for a status code newer than cudarc's headers, and panic on a missing symbol. As
//! for cuDNN, lancet resolves the few entry points it needs itself, from the library cudarc
//! opens (`sys::culib`), with integer statuses and enums as their `u32` values, so every
//! outcome is a value it can report. Descriptors are made with the `*Create` functions, never
//! the `*Init` ones that take caller-sized structs, so the 13.0 bindings stay correct against a
//! newer library whose opaque structs grew.

use std::ffi::{c_char, c_void, CStr};
use std::sync::OnceLock;

use cudarc::cublaslt::sys::{
    self, cublasLtHandle_t, cublasLtMatmulAlgo_t, cublasLtMatmulDesc_t, cublasLtMatmulPreference_t,
    cublasLtMatrixLayout_t, cudaStream_t,
};

use super::error::{CublasLtError, Status, Version};
use crate::native::resolve_api;

pub(crate) type RawStatus = i32;
type Layout = cublasLtMatrixLayout_t;

/// `cublasLtMatmulHeuristicResult_t` with its status as a plain integer (cuBLASLt writes it).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct HeuristicResult {
    pub algo: cublasLtMatmulAlgo_t,
    pub workspace_size: usize,
    pub state: RawStatus,
    pub waves_count: f32,
    pub reserved: [i32; 4],
}

// The C layout, checked against cudarc's binding of the same struct.
const _: () = assert!(
    std::mem::size_of::<HeuristicResult>() == std::mem::size_of::<sys::cublasLtMatmulHeuristicResult_t>()
);

impl HeuristicResult {
    pub fn zeroed() -> Self {
        HeuristicResult {
            algo: cublasLtMatmulAlgo_t { data: [0; 8] },
            workspace_size: 0,
            state: 0,
            waves_count: 0.0,
            reserved: [0; 4],
        }
    }
}

/// Entry points, with enum arguments as the `u32` values of cudarc's `#[repr(u32)]` enums.
pub(crate) struct Api {
    pub status_name: unsafe extern "C" fn(RawStatus) -> *const c_char,
    pub create: unsafe extern "C" fn(*mut cublasLtHandle_t) -> RawStatus,
    pub destroy: unsafe extern "C" fn(cublasLtHandle_t) -> RawStatus,
    pub desc_create: unsafe extern "C" fn(*mut cublasLtMatmulDesc_t, u32, u32) -> RawStatus,
    pub desc_destroy: unsafe extern "C" fn(cublasLtMatmulDesc_t) -> RawStatus,
    pub desc_set: unsafe extern "C" fn(cublasLtMatmulDesc_t, u32, *const c_void, usize) -> RawStatus,
    pub layout_create: unsafe extern "C" fn(*mut Layout, u32, u64, u64, i64) -> RawStatus,
    pub layout_destroy: unsafe extern "C" fn(Layout) -> RawStatus,
    pub pref_create: unsafe extern "C" fn(*mut cublasLtMatmulPreference_t) -> RawStatus,
    pub pref_destroy: unsafe extern "C" fn(cublasLtMatmulPreference_t) -> RawStatus,
    pub pref_set: unsafe extern "C" fn(cublasLtMatmulPreference_t, u32, *const c_void, usize) -> RawStatus,
    #[allow(clippy::type_complexity)]
    pub heuristic: unsafe extern "C" fn(
        cublasLtHandle_t,
        cublasLtMatmulDesc_t,
        Layout,
        Layout,
        Layout,
        Layout,
        cublasLtMatmulPreference_t,
        i32,
        *mut HeuristicResult,
        *mut i32,
    ) -> RawStatus,
    pub algo_check: unsafe extern "C" fn(
        cublasLtHandle_t,
        cublasLtMatmulDesc_t,
        Layout,
        Layout,
        Layout,
        Layout,
        *const cublasLtMatmulAlgo_t,
        *mut HeuristicResult,
    ) -> RawStatus,
    pub algo_config_get:
        unsafe extern "C" fn(*const cublasLtMatmulAlgo_t, u32, *mut c_void, usize, *mut usize) -> RawStatus,
    #[allow(clippy::type_complexity)]
    pub matmul: unsafe extern "C" fn(
        cublasLtHandle_t,
        cublasLtMatmulDesc_t,
        *const c_void,
        *const c_void,
        Layout,
        *const c_void,
        Layout,
        *const c_void,
        *const c_void,
        Layout,
        *mut c_void,
        Layout,
        *const cublasLtMatmulAlgo_t,
        *mut c_void,
        usize,
        cudaStream_t,
    ) -> RawStatus,
}

pub struct Library {
    version: Version,
    pub(crate) api: Api,
}

static LIBRARY: OnceLock<Result<Library, CublasLtError>> = OnceLock::new();

impl Library {
    /// The process's cuBLASLt, loaded on first use. Fails (every time, with the same error) when
    /// no cuBLASLt can be opened, a needed symbol is missing, or the version is too old.
    pub fn get() -> Result<&'static Library, CublasLtError> {
        LIBRARY.get_or_init(load).as_ref().map_err(Clone::clone)
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// `Ok` for `CUBLAS_STATUS_SUCCESS`; otherwise an error naming the call (built lazily: the
    /// success path allocates nothing).
    pub(crate) fn check(
        &self,
        status: RawStatus,
        call: impl FnOnce() -> String,
    ) -> Result<(), CublasLtError> {
        if status == 0 {
            return Ok(());
        }
        Err(CublasLtError::Call {
            version: self.version,
            call: call(),
            status: self.status(status),
        })
    }

    /// cuBLASLt's name for a status code.
    pub(crate) fn status(&self, code: RawStatus) -> Status {
        // SAFETY: cuBLASLt returns a static string for any value, known or not.
        let name = unsafe { (self.api.status_name)(code) };
        let name = if name.is_null() {
            "(unnamed status)".to_owned()
        } else {
            // SAFETY: a NUL-terminated static string.
            unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned()
        };
        Status { code, name }
    }
}

fn load() -> Result<Library, CublasLtError> {
    // SAFETY: only tries to open the candidates; `culib` would panic if none opened.
    if !unsafe { sys::is_culib_present() } {
        return Err(CublasLtError::NotFound {
            candidates: cudarc::get_lib_name_candidates("cublasLt").join(", "),
        });
    }
    // SAFETY: present, as just checked.
    let lib = unsafe { sys::culib() };
    // SAFETY: `size_t cublasLtGetVersion(void)`.
    let get_version = unsafe { lib.get::<unsafe extern "C" fn() -> usize>(b"cublasLtGetVersion\0") }
        .map_err(|_| CublasLtError::MissingSymbol {
            version: "(unknown)".into(),
            symbol: "cublasLtGetVersion",
        })?;
    // SAFETY: takes no arguments, has no preconditions.
    let version = Version(unsafe { get_version() });
    version.check_supported()?;
    let api = resolve_api!(CublasLtError, lib, version.to_string(), {
        status_name = "cublasLtGetStatusName",
        create = "cublasLtCreate",
        destroy = "cublasLtDestroy",
        desc_create = "cublasLtMatmulDescCreate",
        desc_destroy = "cublasLtMatmulDescDestroy",
        desc_set = "cublasLtMatmulDescSetAttribute",
        layout_create = "cublasLtMatrixLayoutCreate",
        layout_destroy = "cublasLtMatrixLayoutDestroy",
        pref_create = "cublasLtMatmulPreferenceCreate",
        pref_destroy = "cublasLtMatmulPreferenceDestroy",
        pref_set = "cublasLtMatmulPreferenceSetAttribute",
        heuristic = "cublasLtMatmulAlgoGetHeuristic",
        algo_check = "cublasLtMatmulAlgoCheck",
        algo_config_get = "cublasLtMatmulAlgoConfigGetAttribute",
        matmul = "cublasLtMatmul",
    });
    Ok(Library { version, api })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs everywhere, CI included: with no cuBLASLt installed the answer is an error listing
    /// the file names tried; with one, its version passed the check. Either way, no panic.
    #[test]
    fn loading_reports_instead_of_panicking() {
        match Library::get() {
            Ok(lib) => assert!(lib.version().check_supported().is_ok()),
            Err(CublasLtError::NotFound { candidates }) => {
                assert!(candidates.contains("libcublasLt.so"), "{candidates}");
                let message = Library::get().err().map(|e| e.to_string()).unwrap_or_default();
                assert!(message.contains("cuBLASLt 12.0 or newer"), "{message}");
            }
            Err(e) => assert!(e.to_string().starts_with("cuBLASLt"), "{e}"),
        }
    }
}
