//! Plans built once per spec and kept for the process, restored from disk when a previous
//! process built them: finalizing a fused-attention plan compiles a kernel (about a second on
//! cuDNN 9.14), restoring its serialized form takes tens of milliseconds.
//!
//! A newly built FP8 plan must also pass a run against lancet's reference (see `check.rs`)
//! before it is kept or stored: some cuDNN releases build FP8 plans that compute wrongly.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::check::check_fp8;
use super::graph::sdpa_forward;
use super::plan::AttentionPlan;
use super::spec::{AttentionPrecision, AttentionSpec};
use crate::cudnn::{
    BuildTimes, ExecutionPlan, Handle, Library, Lookup, PlanKey, PlanStore, StoredPlan, Version,
};
use crate::device::{Device, DeviceInfo};
use crate::Result;

/// Why attention should default to bf16 in this process, if it should: the cuDNN it loads (see
/// `LANCET_CUDNN`) predates [`Version::FP8_ATTENTION_KNOWN_RIGHT`]. With no cuDNN at all nothing
/// is said: compiling needs none, and running fails anyway, naming the library.
pub fn fp8_attention_blocker() -> Option<String> {
    let found = Library::get().ok()?.version();
    let right = Version::FP8_ATTENTION_KNOWN_RIGHT;
    (found < right).then(|| {
        format!(
            "cuDNN {found} predates {right}, the first known to compute FP8 attention correctly \
             (9.14 is wrong at head_dim 64); point LANCET_CUDNN at a newer cuDNN's folder (e.g. \
             pip's nvidia-cudnn-cu13) for FP8 attention"
        )
    })
}

/// Where a plan came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanSource {
    /// Already built in this process.
    Memory,
    /// Restored from the on-disk store.
    Disk,
    /// Built (and compiled) now.
    Built,
}

/// A plan and what it cost to get it.
pub struct PlanLookup {
    pub plan: Arc<AttentionPlan>,
    pub source: PlanSource,
    /// Wall time of the lookup, whatever its source.
    pub elapsed: Duration,
    /// The breakdown of a build ([`PlanSource::Built`] only).
    pub build: Option<BuildTimes>,
    /// The relative L2 error a freshly built FP8 plan showed in its check against lancet's
    /// reference ([`PlanSource::Built`] FP8 plans only: stored plans passed it when built).
    pub fp8_check: Option<f64>,
    /// Cache entries that were not used and why, and failures to write one. Also printed to
    /// stderr: a rebuilt plan costs a second, which a user should be able to explain.
    pub warnings: Vec<String>,
}

/// The attention plans of one device, and the cuDNN handle they execute on.
pub struct AttentionPlans {
    handle: Handle,
    device: DeviceInfo,
    store: Option<PlanStore>,
    plans: RefCell<HashMap<AttentionSpec, Arc<AttentionPlan>>>,
}

impl AttentionPlans {
    /// Plans for `device`, persisted in `store` when given (usually [`PlanStore::from_env`]).
    pub fn new(device: &Device, store: Option<PlanStore>) -> Result<Self> {
        Ok(AttentionPlans {
            handle: Handle::new(device.stream())?,
            device: device.info().clone(),
            store,
            plans: RefCell::new(HashMap::new()),
        })
    }

    /// The handle plans from here execute on (its stream is the device's stream).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The plan for `spec`: from memory, else from disk, else built (and stored). Also reserves
    /// the plan's workspace, so that executing it never allocates (safe under stream capture).
    ///
    /// An FP8 spec needs a cuDNN that offers FP8 attention, and a freshly built FP8 plan runs
    /// once on random inputs (on the handle's stream, waiting for it) and must match lancet's
    /// reference; if it does not, the lookup fails with
    /// [`CudnnError::WrongResults`](crate::cudnn::CudnnError::WrongResults) and the plan is
    /// neither kept nor stored.
    pub fn get(&self, spec: &AttentionSpec) -> Result<PlanLookup> {
        let start = Instant::now();
        if let Some(plan) = self.plans.borrow().get(spec) {
            return Ok(PlanLookup {
                plan: plan.clone(),
                source: PlanSource::Memory,
                elapsed: start.elapsed(),
                build: None,
                fp8_check: None,
                warnings: Vec::new(),
            });
        }
        spec.validate()?;
        let version = self.handle.library().version();
        let graph = sdpa_forward(spec);
        let what = spec.to_string();
        let key = PlanKey::new(version, &self.device, &graph);
        let mut warnings = Vec::new();
        let (plan, source, build) = match self.restore(&key, &what, &mut warnings) {
            Some(plan) => (plan, PlanSource::Disk, None),
            None => {
                let (plan, times) = ExecutionPlan::build(&self.handle, &graph, &what)?;
                (plan, PlanSource::Built, Some(times))
            }
        };
        self.handle.workspace(plan.workspace_size())?;
        let plan = AttentionPlan::new(*spec, plan, graph.io_uids());
        let mut fp8_check = None;
        if source == PlanSource::Built {
            if spec.precision == AttentionPrecision::Fp8 {
                fp8_check = Some(check_fp8(&plan, &self.handle)?);
            }
            self.save(&key, plan.execution_plan(), &mut warnings);
        }
        let plan = Arc::new(plan);
        self.plans.borrow_mut().insert(*spec, plan.clone());
        Ok(PlanLookup {
            plan,
            source,
            elapsed: start.elapsed(),
            build,
            fp8_check,
            warnings,
        })
    }

    fn restore(&self, key: &PlanKey, what: &str, warnings: &mut Vec<String>) -> Option<ExecutionPlan> {
        let store = self.store.as_ref()?;
        let path = store.path(key);
        let problem = match store.load(key) {
            Lookup::Miss => return None,
            Lookup::Rejected(reason) => reason,
            Lookup::Hit(stored) => match ExecutionPlan::from_json(&self.handle, &stored.json, what) {
                Ok(plan) if plan.engine().index == stored.engine => return Some(plan),
                Ok(plan) => format!(
                    "it restored as engine {} but was stored for engine {}",
                    plan.engine().index,
                    stored.engine
                ),
                Err(e) => format!("cuDNN refused to restore it: {e}"),
            },
        };
        let message = format!(
            "cuDNN plan cache entry {} for {what} not used: {problem}; rebuilding it",
            path.display()
        );
        warn(warnings, message);
        None
    }

    fn save(&self, key: &PlanKey, plan: &ExecutionPlan, warnings: &mut Vec<String>) {
        let Some(store) = &self.store else { return };
        let stored = plan.to_json().map(|json| StoredPlan {
            engine: plan.engine().index,
            json,
        });
        let written = match stored {
            Ok(stored) => store.store(key, &stored).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = written {
            let message = format!(
                "could not write cuDNN plan cache entry {}: {e}",
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The executor may move its plans to another thread and share built plans between
    /// threads; a handle (and so the registry) is used from one thread at a time.
    #[test]
    fn thread_safety_is_what_the_docs_say() {
        fn send<T: Send>() {}
        fn send_sync<T: Send + Sync>() {}
        send::<AttentionPlans>();
        send_sync::<AttentionPlan>();
    }
}
