//! The JIT: generated CUDA source → cubins, through NVRTC, in parallel, with a disk cache.

mod cache;
mod nvrtc;
pub mod toolkit;

use std::time::Instant;

use lancet_compiler::codegen::Kernel;
use thiserror::Error;

/// CUDA source NVRTC can compile: a file whose `extern "C"` entry points it defines. Generated
/// kernels are one; so is the runtime's own fixed source (random weights made on the GPU).
pub trait CudaSource: Sync {
    /// The name of the program (its entry point, for a generated kernel).
    fn name(&self) -> &str;
    /// The compilable text: what the cache keys on.
    fn body(&self) -> &str;
}

impl CudaSource for Kernel {
    fn name(&self) -> &str {
        &self.name
    }

    fn body(&self) -> &str {
        &self.body
    }
}

pub use cache::{Cache, Lookup, Signature};
pub use nvrtc::PtxasReport;
pub use toolkit::Toolkit;

#[derive(Clone, Debug, Error)]
pub enum JitError {
    /// NVRTC or the CUDA headers are not installed where lancet looks.
    #[error("NVRTC is not available: {0}")]
    Missing(String),
    #[error("NVRTC: {0}")]
    Toolkit(String),
    #[error("NVRTC could not compile kernel {kernel}:\n{context}\nfull log:\n{log}")]
    Compile {
        kernel: String,
        log: String,
        context: String,
    },
    #[error("kernel {kernel} spills registers ({} bytes stored, {} loaded): ptxas log:\n{log}", report.spill_stores, report.spill_loads)]
    Spill {
        kernel: String,
        report: PtxasReport,
        log: String,
    },
}

/// What to compile for.
#[derive(Clone, Debug)]
pub struct JitOptions {
    /// `sm_90a` for an H100 (the default; a present device's own architecture otherwise).
    pub arch: String,
    /// Read and write the disk cache.
    pub cache: bool,
    /// Fail on register spills (CI does; a spill is a performance bug in a generated kernel).
    pub deny_spills: bool,
}

impl Default for JitOptions {
    fn default() -> Self {
        JitOptions {
            arch: "sm_90a".into(),
            cache: true,
            deny_spills: true,
        }
    }
}

/// One compiled kernel.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub name: String,
    pub cubin: Vec<u8>,
    pub report: PtxasReport,
    /// NVRTC's program log, with the ptxas report.
    pub log: String,
    pub cached: bool,
    pub ms: f64,
}

/// The compilation of a plan's kernels.
#[derive(Clone, Debug)]
pub struct Compilation {
    pub kernels: Vec<Compiled>,
    /// Cache entries that were rejected and recompiled, with why.
    pub warnings: Vec<String>,
    pub nvrtc_version: (i32, i32),
    pub wall_ms: f64,
}

/// The NVRTC options for `arch` with headers from `include`, for NVRTC `version`.
pub fn options(arch: &str, include: &std::path::Path, version: (i32, i32)) -> Vec<String> {
    let mut flags = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".into(),
        format!("--include-path={}", include.display()),
        "--ptxas-options=-v".into(),
    ];
    // NVRTC parses declarations of the CUDA runtime before every program; `--minimal` (NVRTC
    // 12.4 and newer) leaves out the parts no lancet kernel uses (textures and surfaces,
    // launches from the device, runtime API types): ~15 ms less front end per kernel, and the
    // same cubins.
    if version >= (12, 4) {
        flags.push("--minimal".into());
    }
    flags
}

/// The options that key the cache: all but the include path (a location, not an input).
fn key_flags(arch: &str, version: (i32, i32)) -> Vec<String> {
    options(arch, std::path::Path::new(""), version)
        .into_iter()
        .filter(|f| !f.starts_with("--include-path"))
        .collect()
}

/// Compiles every kernel to a cubin (in parallel, cache first). NVRTC is loaded only when a
/// kernel is not in the cache, or its version is not known yet: a process whose kernels are all
/// cached skips the ~0.2 s of loading it.
pub fn compile<K: CudaSource>(kernels: &[K], opts: &JitOptions) -> Result<Compilation, JitError> {
    let t0 = Instant::now();
    let cache = opts
        .cache
        .then(|| crate::cache_dir::subdir("nvrtc").map(Cache::new))
        .flatten();
    let library = toolkit::library_id();
    let remembered = cache
        .as_ref()
        .zip(library.as_ref())
        .and_then(|(cache, id)| cache.remembered_version(id));
    let version = match remembered {
        Some(version) => version,
        None => toolkit::locate()?.nvrtc_version,
    };
    let (major, minor) = version;
    let flags = key_flags(&opts.arch, version);
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(kernels.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<(usize, Outcome)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(kernel) = kernels.get(i) else { break };
                        let signature = Signature {
                            source_sha256: cache::sha256(kernel.body().as_bytes()),
                            arch: opts.arch.clone(),
                            nvrtc: format!("{major}.{minor}"),
                            options: flags.clone(),
                            lancet: env!("CARGO_PKG_VERSION").to_string(),
                        };
                        done.push((
                            i,
                            one(kernel, &opts.arch, &signature, cache.as_ref(), opts.deny_spills),
                        ));
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("compile worker panicked"))
            .collect()
    });
    let mut ordered: Vec<Option<Compiled>> = vec![None; kernels.len()];
    let mut warnings = Vec::new();
    for (i, result) in results {
        let (compiled, warning) = result?;
        warnings.extend(warning);
        ordered[i] = Some(compiled);
    }
    // The version NVRTC reported when a miss loaded it outranks a recorded one.
    let version = toolkit::loaded().map_or(version, |t| t.nvrtc_version);
    if let (Some(cache), Some(id)) = (&cache, &library) {
        if remembered != Some(version) {
            if let Err(e) = cache.remember_version(id, version) {
                warnings.push(format!("could not record NVRTC's version in the cache: {e}"));
            }
        }
    }
    Ok(Compilation {
        kernels: ordered
            .into_iter()
            .map(|c| c.expect("every kernel compiled"))
            .collect(),
        warnings,
        nvrtc_version: version,
        wall_ms: t0.elapsed().as_secs_f64() * 1e3,
    })
}

/// `kernel` from the cache under `signature`, if there; a rejected entry leaves a `warning`.
fn cached(
    kernel: &dyn CudaSource,
    signature: &Signature,
    cache: Option<&Cache>,
    t0: Instant,
    warning: &mut Option<String>,
) -> Option<Compiled> {
    match cache?.get(signature) {
        Lookup::Hit(cache::Cached { cubin, report, log }) => Some(Compiled {
            name: kernel.name().to_string(),
            cubin,
            report,
            log,
            cached: true,
            ms: t0.elapsed().as_secs_f64() * 1e3,
        }),
        Lookup::Rejected(why) => {
            *warning = Some(format!(
                "kernel {}: cached cubin rejected, recompiling: {why}",
                kernel.name()
            ));
            None
        }
        Lookup::Miss => None,
    }
}

/// A compiled kernel and, when the cache misbehaved, a warning saying how.
type Outcome = Result<(Compiled, Option<String>), JitError>;

fn one(
    kernel: &dyn CudaSource,
    arch: &str,
    signature: &Signature,
    cache: Option<&Cache>,
    deny_spills: bool,
) -> Outcome {
    let t0 = Instant::now();
    let mut warning = None;
    if let Some(hit) = cached(kernel, signature, cache, t0, &mut warning) {
        return Ok((hit, None));
    }
    // A miss: NVRTC is needed now. Should the version recorded for its library file be stale,
    // the entry may be in the cache under the loaded version.
    let toolkit = toolkit::locate()?;
    let (major, minor) = toolkit.nvrtc_version;
    let mut signature = signature.clone();
    if signature.nvrtc != format!("{major}.{minor}") {
        signature.nvrtc = format!("{major}.{minor}");
        signature.options = key_flags(arch, toolkit.nvrtc_version);
        if let Some(hit) = cached(kernel, &signature, cache, t0, &mut warning) {
            return Ok((hit, None));
        }
    }
    let signature = &signature;
    let flags = options(arch, &toolkit.include_dir, toolkit.nvrtc_version);
    let file = format!("{}.cu", kernel.name());
    let cubin = nvrtc::compile(&file, kernel.body(), &flags)?;
    let report = PtxasReport::parse(&cubin.log);
    if deny_spills && report.spills() {
        return Err(JitError::Spill {
            kernel: kernel.name().to_string(),
            report,
            log: cubin.log,
        });
    }
    if let Some(cache) = cache {
        if let Err(e) = cache.put(signature, &cubin.image, &report, &cubin.log) {
            warning = Some(format!(
                "kernel {}: could not store the cubin in the cache: {e}",
                kernel.name()
            ));
        }
    }
    let compiled = Compiled {
        name: kernel.name().to_string(),
        cubin: cubin.image,
        report,
        log: cubin.log,
        cached: false,
        ms: t0.elapsed().as_secs_f64() * 1e3,
    };
    Ok((compiled, warning))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_only_where_nvrtc_has_it() {
        let include = std::path::Path::new("/cuda/include");
        assert!(options("sm_90a", include, (13, 0)).contains(&"--minimal".to_string()));
        assert!(options("sm_90a", include, (12, 4)).contains(&"--minimal".to_string()));
        assert!(!options("sm_90a", include, (12, 3)).contains(&"--minimal".to_string()));
        // The cache key follows the flags, without the include path.
        assert!(key_flags("sm_90a", (12, 8)).contains(&"--minimal".to_string()));
        assert!(key_flags("sm_90a", (12, 8))
            .iter()
            .all(|f| !f.starts_with("--include-path")));
    }
}
