//! Finding NVRTC and the CUDA headers it compiles against — or fetching both through pip.
//!
//! NVRTC runs without a GPU, so this works on CI machines too. Search order, for the library
//! and for the headers alike: `$CUDA_HOME`, `$CUDA_PATH`, `/usr/local/cuda`, the pip wheels
//! (`nvidia/cu13/...`) in lancet's cache folder `cuda/`, then (library only) the loader's
//! default path. A library found in a folder is loaded by absolute path before cudarc opens
//! NVRTC by name, so the loader reuses it (same soname) without `LD_LIBRARY_PATH`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::JitError;

/// The toolkit this process found and loaded, once it has.
static FOUND: OnceLock<Toolkit> = OnceLock::new();

/// The pip packages that carry NVRTC and the CUDA headers.
pub const PIP_PACKAGES: &[&str] = &["nvidia-cuda-nvrtc", "nvidia-cuda-runtime"];

/// Where NVRTC was found.
#[derive(Clone, Debug)]
pub struct Toolkit {
    /// The folder holding `libnvrtc.so*`, or `None` when the loader found it on its own.
    pub lib_dir: Option<PathBuf>,
    /// The folder holding `cuda_bf16.h` and friends.
    pub include_dir: PathBuf,
    pub nvrtc_version: (i32, i32),
}

/// The NVRTC library a search would load, identified from the file system alone: with the
/// version recorded the last time it was loaded, a process whose kernels are all in the cubin
/// cache need not load NVRTC at all (~0.2 s).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LibraryId {
    pub path: PathBuf,
    pub size: u64,
    pub modified_ns: u128,
}

/// The [`LibraryId`] of the NVRTC in the first root that has one (`None` when only the
/// loader's default path could provide it).
pub fn library_id() -> Option<LibraryId> {
    let dir = roots().iter().find_map(|r| find_lib(r))?;
    let path = nvrtc_files(&dir).ok()?.into_iter().next()?;
    let meta = std::fs::metadata(&path).ok()?;
    let modified_ns = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(LibraryId {
        path,
        size: meta.len(),
        modified_ns,
    })
}

/// The `libnvrtc.so*` files of `dir`, longest name (the versioned soname) first.
fn nvrtc_files(dir: &Path) -> Result<Vec<PathBuf>, JitError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| JitError::Toolkit(format!("cannot list {}: {e}", dir.display())))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libnvrtc.so"))
        })
        .collect();
    files.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    Ok(files)
}

/// Roots that may hold `lib64/`, `lib/` and `include/` of a CUDA installation or a pip wheel.
fn roots() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .collect();
    roots.push(PathBuf::from("/usr/local/cuda"));
    if let Some(pip) = pip_dir() {
        roots.push(pip.join("nvidia").join("cu13"));
    }
    roots
}

/// The folder lancet installs the pip wheels into.
pub fn pip_dir() -> Option<PathBuf> {
    crate::cache_dir::subdir("cuda")
}

fn find_lib(root: &Path) -> Option<PathBuf> {
    ["lib64", "lib", "targets/x86_64-linux/lib"]
        .iter()
        .map(|d| root.join(d))
        .find(|dir| {
            std::fs::read_dir(dir).is_ok_and(|entries| {
                entries
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("libnvrtc.so"))
            })
        })
}

fn find_include(root: &Path) -> Option<PathBuf> {
    ["include", "targets/x86_64-linux/include"]
        .iter()
        .map(|d| root.join(d))
        .find(|dir| dir.join("cuda_bf16.h").is_file() && dir.join("cuda_fp8.h").is_file())
}

/// Loads `libnvrtc.so*` from `dir` by absolute path and keeps it loaded for the process.
fn preload(dir: &Path) -> Result<(), JitError> {
    static KEPT: OnceLock<Vec<libloading::Library>> = OnceLock::new();
    let mut kept = Vec::new();
    // The versioned soname (libnvrtc.so.13), first, is what cudarc asks for by name.
    for path in nvrtc_files(dir)? {
        // SAFETY: loading NVRTC runs no initialisers with preconditions.
        match unsafe { libloading::Library::new(&path) } {
            Ok(lib) => kept.push(lib),
            Err(e) => return Err(JitError::Toolkit(format!("cannot load {}: {e}", path.display()))),
        }
    }
    let _ = KEPT.set(kept);
    Ok(())
}

/// The toolkit, if a search of this process has loaded NVRTC.
pub fn loaded() -> Option<&'static Toolkit> {
    FOUND.get()
}

/// Finds NVRTC and the headers, loads NVRTC, and reads its version. A success is kept for the
/// process; a failure is not, so a search after [`fetch_with_pip`] looks again.
pub fn locate() -> Result<&'static Toolkit, JitError> {
    if let Some(found) = FOUND.get() {
        return Ok(found);
    }
    let found = search()?;
    Ok(FOUND.get_or_init(|| found))
}

fn search() -> Result<Toolkit, JitError> {
    let roots = roots();
    let include_dir = roots.iter().find_map(|r| find_include(r)).ok_or_else(|| {
        JitError::Missing(format!(
            "no CUDA headers (cuda_bf16.h, cuda_fp8.h) under {}",
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let lib_dir = roots.iter().find_map(|r| find_lib(r));
    if let Some(dir) = &lib_dir {
        preload(dir)?;
    }
    // SAFETY: probing for the library has no preconditions.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(JitError::Missing(format!(
            "libnvrtc not found in {} or the loader's default path",
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two out-pointers to live integers.
    let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if status != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(JitError::Toolkit(format!("nvrtcVersion failed: {status:?}")));
    }
    Ok(Toolkit {
        lib_dir,
        include_dir,
        nvrtc_version: (major, minor),
    })
}

/// Installs NVRTC and the CUDA headers with pip into lancet's cache folder `cuda/`: what the
/// CLI does on a machine with no CUDA toolkit. Prints what it runs; pip's output is shown.
pub fn fetch_with_pip() -> Result<PathBuf, JitError> {
    let dir =
        pip_dir().ok_or_else(|| JitError::Toolkit("no cache folder: set LANCET_CACHE_DIR or HOME".into()))?;
    std::fs::create_dir_all(&dir)
        .map_err(|e| JitError::Toolkit(format!("cannot create {}: {e}", dir.display())))?;
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .ok_or_else(|| {
            JitError::Toolkit("fetching NVRTC needs python3 with pip, and none was found".into())
        })?;
    eprintln!(
        "lancet: fetching NVRTC and the CUDA headers: {python} -m pip install --target {} {}",
        dir.display(),
        PIP_PACKAGES.join(" ")
    );
    let status = Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--upgrade",
            "--target",
        ])
        .arg(&dir)
        .args(PIP_PACKAGES)
        .status()
        .map_err(|e| JitError::Toolkit(format!("cannot run pip: {e}")))?;
    if !status.success() {
        return Err(JitError::Toolkit(format!(
            "pip install of {} failed ({status})",
            PIP_PACKAGES.join(" ")
        )));
    }
    Ok(dir)
}
