//! The GEMM plans of one device: tuned once per spec, kept for the process, and restored from
//! disk when an earlier process tuned them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use super::algo::Algo;
use super::error::CublasLtError;
use super::handle::Handle;
use super::library::Library;
use super::matmul::Matmul;
use super::plan::GemmPlan;
use super::spec::{GemmSpec, Precision};
use super::store::{AlgoKey, AlgoLookup, AlgoStore, StoredAlgo};
use super::tune::{tune, Candidate, TuneOptions, TuneSource, Tuning};
use crate::device::{Device, DeviceError, DeviceInfo};
use crate::Result;

/// The cuBLASLt handle, the workspace its GEMMs share, and their tuned plans.
pub struct Gemms {
    handle: Arc<Handle>,
    device: DeviceInfo,
    options: TuneOptions,
    store: Option<AlgoStore>,
    /// Held for a whole lookup, so two threads asking for one spec tune it once.
    plans: Mutex<HashMap<GemmSpec, Arc<GemmPlan>>>,
}

impl Gemms {
    /// GEMMs on `device`'s stream, tuned with the default [`TuneOptions`] (a 32 MiB workspace,
    /// 8 candidates) and persisted in lancet's cache folder when there is one.
    pub fn new(device: &Device) -> Result<Self> {
        Gemms::with_options(device, TuneOptions::default(), AlgoStore::from_env())
    }

    /// Allocates the workspace (`options.workspace_bytes`) and loads cuBLASLt.
    pub fn with_options(device: &Device, options: TuneOptions, store: Option<AlgoStore>) -> Result<Self> {
        let options = TuneOptions {
            candidates: options.candidates.max(1),
            reps: options.reps.max(1),
            calls: options.calls.max(1),
            ..options
        };
        // A stream of its own: tuning times candidates there, so it can run while the device's
        // stream makes the weights. Launches name their stream; this one serves tuning only.
        let stream = device
            .stream()
            .context()
            .new_stream()
            .map_err(|source| DeviceError::Driver {
                what: "creating the cuBLASLt tuning stream",
                source,
            })?;
        let handle = Handle::new(&stream, options.workspace_bytes)?;
        // The workspace and unit scale were written on that stream; launches on others follow.
        stream.synchronize().map_err(|source| DeviceError::Driver {
            what: "creating the cuBLASLt workspace",
            source,
        })?;
        Ok(Gemms {
            handle: Arc::new(handle),
            device: device.info().clone(),
            options,
            store,
            plans: Mutex::new(HashMap::new()),
        })
    }

    pub fn library(&self) -> &'static Library {
        self.handle.library()
    }

    pub fn options(&self) -> &TuneOptions {
        &self.options
    }

    /// The plan for `spec`: from memory, else from disk (re-checked by cuBLASLt), else tuned now
    /// (and stored). [`GemmPlan::tuning`] says which, and what it cost.
    pub fn get(&self, spec: &GemmSpec) -> Result<Arc<GemmPlan>> {
        let mut plans = self.plans.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(plan) = plans.get(spec) {
            return Ok(plan.clone());
        }
        let start = Instant::now();
        spec.validate()?;
        if spec.precision == Precision::Fp8E4m3 && self.device.compute_capability < (8, 9) {
            return Err(CublasLtError::Spec {
                spec: spec.to_string(),
                problem: format!(
                    "FP8 GEMMs need sm_89 or newer; {} is {}",
                    self.device.name,
                    self.device.arch()
                ),
            }
            .into());
        }
        let matmul = Matmul::new(&self.handle, spec)?;
        let lib = self.library();
        let key = AlgoKey::new(
            lib.version(),
            &self.device,
            spec,
            self.options.workspace_bytes,
            self.options.candidates,
        );
        let mut warnings = Vec::new();
        let (algo, workspace_size, source, chosen, candidates) =
            match self.restore(&key, &matmul, &mut warnings) {
                Some((algo, candidate)) => (
                    algo,
                    candidate.workspace_size,
                    TuneSource::Disk,
                    candidate,
                    Vec::new(),
                ),
                None => {
                    let tuned = tune(&self.handle, &matmul, spec, &self.options)?;
                    let chosen = tuned.candidates[tuned.chosen].clone();
                    self.save(&key, &tuned.algo, &chosen, &mut warnings);
                    let size = chosen.workspace_size;
                    (tuned.algo, size, TuneSource::Tuned, chosen, tuned.candidates)
                }
            };
        let plan = Arc::new(GemmPlan {
            spec: *spec,
            handle: self.handle.clone(),
            matmul,
            algo,
            workspace_size,
            tuning: Tuning {
                source,
                elapsed: start.elapsed(),
                chosen,
                candidates,
                warnings,
            },
        });
        plans.insert(*spec, plan.clone());
        Ok(plan)
    }

    /// The stored choice for `key` if there is one and cuBLASLt still accepts it.
    fn restore(
        &self,
        key: &AlgoKey,
        matmul: &Matmul,
        warnings: &mut Vec<String>,
    ) -> Option<(Algo, Candidate)> {
        let store = self.store.as_ref()?;
        let lib = self.library();
        let problem = match store.load(key) {
            AlgoLookup::Miss => return None,
            AlgoLookup::Rejected(reason) => reason,
            AlgoLookup::Hit(stored) => {
                let algo = Algo::from_words(stored.words);
                match matmul.check(&self.handle, &algo) {
                    Ok(needed) if needed > self.options.workspace_bytes => format!(
                        "its algorithm needs a {needed}-byte workspace, this process has {}",
                        self.options.workspace_bytes
                    ),
                    Ok(needed) => match algo.config(lib) {
                        Ok(config) => {
                            let candidate = Candidate {
                                config,
                                workspace_size: needed,
                                median_ms: Ok(stored.median_ms),
                            };
                            return Some((algo, candidate));
                        }
                        Err(e) => format!("its algorithm cannot be read: {e}"),
                    },
                    Err(status) => format!(
                        "cuBLASLt {} rejected its algorithm (cublasLtMatmulAlgoCheck: {status})",
                        lib.version()
                    ),
                }
            }
        };
        let message = format!(
            "cuBLASLt algorithm cache entry {} for {} not used: {problem}; re-tuning",
            store.path(key).display(),
            key.spec
        );
        warn(warnings, message);
        None
    }

    fn save(&self, key: &AlgoKey, algo: &Algo, chosen: &Candidate, warnings: &mut Vec<String>) {
        // Only a candidate that ran can be chosen, so both are always there.
        let (Some(store), Ok(median_ms)) = (&self.store, &chosen.median_ms) else {
            return;
        };
        let stored = StoredAlgo {
            words: algo.words(),
            workspace_size: chosen.workspace_size,
            median_ms: *median_ms,
        };
        if let Err(e) = store.store(key, &stored) {
            let message = format!(
                "could not write cuBLASLt algorithm cache entry {}: {e}",
                store.path(key).display()
            );
            warn(warnings, message);
        }
    }
}

/// Records a warning and prints it at once, so it is seen even if the lookup then fails.
fn warn(warnings: &mut Vec<String>, message: String) {
    eprintln!("lancet: warning: {message}");
    warnings.push(message);
}
