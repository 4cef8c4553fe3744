//! The process's cuDNN: loaded once, version-checked, and called through a table of entry points
//! that return the raw `int` status.
//!
//! cudarc's `sys` functions return `cudnnStatus_t` as a Rust enum, which would be undefined
//! behaviour for a status code newer than cudarc's headers, and panic on a missing symbol.
//! lancet resolves the few entry points it needs itself, from the same library cudarc opens
//! (`sys::culib`), with integer statuses, so every outcome is a value it can report.
//!
//! **Choosing the cuDNN.** By default the loader's search decides (cudarc tries `libcudnn.so`,
//! then versioned names down to `libcudnn.so.9`), which usually finds the system's cuDNN. Set
//! `LANCET_CUDNN` ([`Library::ENV_VAR`]) to a `libcudnn.so.9` file, or to a folder holding one
//! (such as the `nvidia/cudnn/lib` folder of pip's `nvidia-cudnn-cu13`), to use that cuDNN
//! instead: for instance a newer one than the system's, which FP8 attention needs on machines
//! with cuDNN 9.14. lancet opens that file by absolute path, keeps it loaded for the process and
//! resolves its entry points from it, never from cudarc's search (whose first candidate,
//! `libcudnn.so`, may be a different file); cuDNN then loads its sub-libraries from the same
//! folder (its `RUNPATH` is `$ORIGIN`). A variable naming a missing or unloadable file is an
//! error, not a silent fallback to the system's cuDNN.

use std::ffi::{c_char, c_void, CStr};
use std::path::{Path, PathBuf};
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
    /// The file [`Library::ENV_VAR`] chose, absolute; `None` when the loader's search chose.
    path: Option<PathBuf>,
    pub(crate) api: Api,
}

static LIBRARY: OnceLock<Result<Library, CudnnError>> = OnceLock::new();

impl Library {
    /// The environment variable naming the cuDNN to load (see the module docs).
    pub const ENV_VAR: &'static str = "LANCET_CUDNN";

    /// The process's cuDNN, loaded on first use. Fails (every time, with the same error) when
    /// no cuDNN can be opened, a needed symbol is missing, or the version is not supported.
    pub fn get() -> Result<&'static Library, CudnnError> {
        LIBRARY.get_or_init(load).as_ref().map_err(Clone::clone)
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// The file loaded, when [`Library::ENV_VAR`] named it.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
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
    let (lib, path) = match std::env::var_os(Library::ENV_VAR) {
        Some(value) => {
            let path = configured_file(Path::new(&value))?;
            (open(&path)?, Some(path))
        }
        None => {
            // SAFETY: only tries to open the candidates; `culib` would panic if none opened.
            if !unsafe { sys::is_culib_present() } {
                return Err(CudnnError::NotFound {
                    candidates: cudarc::get_lib_name_candidates("cudnn").join(", "),
                });
            }
            // SAFETY: present, as just checked.
            (unsafe { sys::culib() }, None)
        }
    };
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
    Ok(Library { version, path, api })
}

/// The absolute path of the `libcudnn.so.9` that `value` (of [`Library::ENV_VAR`]) names: the
/// file itself, or the one in the folder.
fn configured_file(value: &Path) -> Result<PathBuf, CudnnError> {
    const FILE: &str = "libcudnn.so.9";
    let problem = |problem: String| CudnnError::Configured {
        var: Library::ENV_VAR,
        path: value.display().to_string(),
        problem,
    };
    let file = if value.is_dir() {
        value.join(FILE)
    } else {
        value.to_path_buf()
    };
    if !file.is_file() {
        return Err(problem(if value.is_dir() {
            format!("the folder has no {FILE}")
        } else {
            format!("no such file (name a {FILE} file or the folder holding it)")
        }));
    }
    std::fs::canonicalize(&file).map_err(|e| problem(format!("cannot resolve {}: {e}", file.display())))
}

/// Opens `path` and keeps it loaded for the process: the entry points resolved from it, and
/// the sub-libraries cuDNN loads from its folder, must stay valid as long as lancet runs.
fn open(path: &Path) -> Result<&'static libloading::Library, CudnnError> {
    // SAFETY: loading cuDNN runs its initialisers, which have no preconditions.
    match unsafe { libloading::Library::new(path) } {
        Ok(lib) => Ok(Box::leak(Box::new(lib))),
        Err(e) => Err(CudnnError::Configured {
            var: Library::ENV_VAR,
            path: path.display().to_string(),
            problem: format!("the file could not be loaded: {e}"),
        }),
    }
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

    #[test]
    fn a_configured_cudnn_that_cannot_load_is_an_error_naming_it() {
        let scratch = tempfile::Builder::new()
            .prefix("lancet-cudnn-env-")
            .tempdir()
            .unwrap();
        let dir = scratch.path();
        fn message<T>(result: Result<T, CudnnError>) -> String {
            result.err().map(|e| e.to_string()).unwrap_or_default()
        }

        let missing = dir.join("nowhere").join("libcudnn.so.9");
        let err = message(configured_file(&missing));
        assert!(err.contains("LANCET_CUDNN=") && err.contains("nowhere") && err.contains("no such file"));
        let err = message(configured_file(dir));
        assert!(err.contains("the folder has no libcudnn.so.9"), "{err}");

        // A folder holding the file resolves to it; a file that is no library fails to open.
        std::fs::write(dir.join("libcudnn.so.9"), b"not an ELF file").unwrap();
        let file = configured_file(dir).unwrap();
        assert!(
            file.is_absolute() && file.ends_with("libcudnn.so.9"),
            "{}",
            file.display()
        );
        assert_eq!(configured_file(&file).unwrap(), file);
        let err = message(open(&file));
        assert!(
            err.contains(&file.display().to_string()) && err.contains("could not be loaded"),
            "{err}"
        );
    }
}
