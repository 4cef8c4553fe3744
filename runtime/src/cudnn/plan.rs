//! Execution plans: engine selection by cuDNN's heuristics, plan finalization (for the fused
//! attention engines this is where cuDNN compiles a kernel, the expensive step), serialization
//! of a finalized plan to cuDNN's JSON form and back, and execution with a variant pack.

use std::ffi::c_void;
use std::fmt;
use std::time::{Duration, Instant};

use cudarc::cudnn::sys::{
    cudnnBackendAttributeName_t::*, cudnnBackendAttributeType_t as AttrType,
    cudnnBackendBehaviorNote_t::CUDNN_BEHAVIOR_NOTE_TYPE_COUNT, cudnnBackendDescriptorType_t::*,
    cudnnBackendHeurMode_t, cudnnBackendKnobType_t::CUDNN_KNOB_TYPE_COUNTS,
};

use super::descriptor::Descriptor;
use super::error::CudnnError;
use super::graph::GraphSpec;
use super::handle::Handle;
use super::library::Library;
use super::operation_graph::OperationGraph;

/// Which engine a plan runs, as cuDNN's logs and the frontend name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineInfo {
    /// The engine's global index (`engineId` in cuDNN's logs).
    pub index: i64,
    /// `(knob type code, value)` pairs of the engine configuration.
    pub knobs: Vec<(u32, i64)>,
    /// `cudnnBackendBehaviorNote_t` codes.
    pub behavior_notes: Vec<u32>,
}

impl EngineInfo {
    fn of_config(cfg: &Descriptor) -> Result<Self, CudnnError> {
        let engine = cfg
            .get_descriptors(
                CUDNN_ATTR_ENGINECFG_ENGINE,
                CUDNN_BACKEND_ENGINE_DESCRIPTOR,
                1,
                "engine",
            )?
            .pop();
        let (index, behavior_notes) = match engine {
            Some(engine) => (
                engine
                    .get::<i64>(CUDNN_ATTR_ENGINE_GLOBAL_INDEX, 1)?
                    .first()
                    .copied()
                    .unwrap_or(-1),
                engine.get_codes(
                    CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE,
                    AttrType::CUDNN_TYPE_BEHAVIOR_NOTE,
                    CUDNN_BEHAVIOR_NOTE_TYPE_COUNT as usize,
                )?,
            ),
            None => (-1, Vec::new()),
        };
        let choices = cfg.get_descriptors(
            CUDNN_ATTR_ENGINECFG_KNOB_CHOICES,
            CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR,
            CUDNN_KNOB_TYPE_COUNTS as usize,
            "knob choice",
        )?;
        let knobs = choices
            .iter()
            .map(|choice| {
                let ty = choice.get_codes(
                    CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE,
                    AttrType::CUDNN_TYPE_KNOB_TYPE,
                    1,
                )?;
                let value = choice.get::<i64>(CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE, 1)?;
                Ok((
                    ty.first().copied().unwrap_or(u32::MAX),
                    value.first().copied().unwrap_or(0),
                ))
            })
            .collect::<Result<_, CudnnError>>()?;
        Ok(EngineInfo {
            index,
            knobs,
            behavior_notes,
        })
    }
}

impl fmt::Display for EngineInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "engine {}", self.index)?;
        for &(knob, value) in &self.knobs {
            match knob {
                24 => write!(f, " KERNEL_CFG={value}")?,
                _ => write!(f, " knob{knob}={value}")?,
            }
        }
        for &note in &self.behavior_notes {
            match note {
                0 => write!(f, " [runtime-compiled]")?,
                3 => write!(f, " [cuda-graph-native]")?,
                4 => write!(f, " [cublaslt]")?,
                _ => write!(f, " [note{note}]")?,
            }
        }
        Ok(())
    }
}

/// Where the time of a plan build went.
#[derive(Clone, Debug, Default)]
pub struct BuildTimes {
    /// Creating and finalizing the tensor, operation and graph descriptors.
    pub graph: Duration,
    /// cuDNN's heuristics queries.
    pub heuristics: Duration,
    /// Finalizing execution plans (kernel compilation), including candidates that failed.
    pub finalize: Duration,
    /// Engine configurations cuDNN proposed that did not build, with the reason.
    pub rejected: Vec<String>,
}

/// A finalized execution plan, ready to execute with any variant pack of its graph's uids.
pub struct ExecutionPlan {
    // Field order is drop order: the plan before the configuration and graph it was built from.
    plan: Descriptor,
    _config: Descriptor,
    _graph: Option<OperationGraph>,
    engine: EngineInfo,
    workspace: usize,
}

/// Heuristic modes in the order they are tried: mode A is what PyTorch and cuDNN's frontend use;
/// the fallback list catches graphs mode A has no recommendation for.
const HEURISTIC_MODES: [cudnnBackendHeurMode_t; 2] = [
    cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_A,
    cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_FALLBACK,
];

impl ExecutionPlan {
    /// Builds `spec` and finalizes a plan with the first engine configuration (in heuristic
    /// order) that accepts it. `what` names the graph in errors.
    pub fn build(handle: &Handle, spec: &GraphSpec, what: &str) -> Result<(Self, BuildTimes), CudnnError> {
        let lib = handle.library();
        let start = Instant::now();
        let graph = OperationGraph::new(handle, spec)?;
        let mut times = BuildTimes {
            graph: start.elapsed(),
            ..BuildTimes::default()
        };
        for mode in HEURISTIC_MODES {
            let start = Instant::now();
            let configs = engine_configs(lib, &graph, mode);
            times.heuristics += start.elapsed();
            let (_heuristics, configs) = match configs {
                Ok(found) => found,
                Err(e) => {
                    times.rejected.push(format!("heuristics {mode:?}: {e}"));
                    continue;
                }
            };
            if configs.is_empty() {
                times
                    .rejected
                    .push(format!("heuristics {mode:?}: no engine configuration"));
            }
            for config in configs {
                let engine = EngineInfo::of_config(&config)?;
                let start = Instant::now();
                let plan = finalize(lib, &config, what);
                times.finalize += start.elapsed();
                match plan {
                    Ok(plan) => {
                        let workspace = workspace_size(&plan)?;
                        let plan = ExecutionPlan {
                            plan,
                            _config: config,
                            _graph: Some(graph),
                            engine,
                            workspace,
                        };
                        return Ok((plan, times));
                    }
                    Err(e) => times.rejected.push(format!("{engine}: {e}")),
                }
            }
        }
        Err(CudnnError::NoEngine {
            version: lib.version(),
            graph: what.to_owned(),
            attempts: times.rejected,
        })
    }

    /// Restores a plan from [`to_json`](Self::to_json) output. The representation records the
    /// cuDNN version and GPU it was built for, which callers should check first (lancet's
    /// [`PlanStore`](super::PlanStore) does); cuDNN refuses a representation it cannot parse.
    pub fn from_json(handle: &Handle, json: &[u8], what: &str) -> Result<Self, CudnnError> {
        let lib = handle.library();
        let mut plan = Descriptor::new(
            lib,
            CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR,
            format!("{what} (restored)"),
        )?;
        plan.set(CUDNN_ATTR_EXECUTION_PLAN_JSON_REPRESENTATION, json)?;
        plan.set_handle(CUDNN_ATTR_EXECUTION_PLAN_HANDLE, handle)?;
        plan.finalize()?;
        let config = plan
            .get_descriptors(
                CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                CUDNN_BACKEND_ENGINECFG_DESCRIPTOR,
                1,
                "restored engine config",
            )?
            .pop()
            .ok_or_else(|| CudnnError::NoEngine {
                version: lib.version(),
                graph: what.to_owned(),
                attempts: vec!["the restored plan reports no engine configuration".into()],
            })?;
        Ok(ExecutionPlan {
            engine: EngineInfo::of_config(&config)?,
            workspace: workspace_size(&plan)?,
            plan,
            _config: config,
            _graph: None,
        })
    }

    /// cuDNN's serialized form of the finalized plan (JSON text; for runtime-compiled engines
    /// it carries the compiled kernel, so restoring skips compilation).
    pub fn to_json(&self) -> Result<Vec<u8>, CudnnError> {
        let attr = CUDNN_ATTR_EXECUTION_PLAN_JSON_REPRESENTATION;
        let len = self.plan.count(attr, AttrType::CUDNN_TYPE_CHAR)?;
        self.plan.get::<u8>(attr, len)
    }

    pub fn engine(&self) -> &EngineInfo {
        &self.engine
    }

    /// Device scratch memory the plan needs at execution, in bytes.
    pub fn workspace_size(&self) -> usize {
        self.workspace
    }

    /// Queues the plan on the handle's stream.
    ///
    /// # Safety
    /// As [`Handle::execute`]: `pack`'s addresses must match the plan's graph.
    pub unsafe fn execute(&self, handle: &Handle, pack: &VariantPack) -> crate::Result<()> {
        handle.execute(&self.plan, &pack.desc)
    }
}

fn engine_configs(
    lib: &'static Library,
    graph: &OperationGraph,
    mode: cudnnBackendHeurMode_t,
) -> Result<(Descriptor, Vec<Descriptor>), CudnnError> {
    let mut heuristics = Descriptor::new(lib, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, format!("{mode:?}"))?;
    heuristics.set_descriptors(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, &[graph.descriptor()])?;
    heuristics.set(CUDNN_ATTR_ENGINEHEUR_MODE, &[mode])?;
    heuristics.finalize()?;
    let attr = CUDNN_ATTR_ENGINEHEUR_RESULTS;
    let count = heuristics.count(attr, AttrType::CUDNN_TYPE_BACKEND_DESCRIPTOR)?;
    // cuDNN may return fewer configurations than it counted; `get_descriptors` keeps those.
    let configs =
        heuristics.get_descriptors(attr, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, count, "engine config")?;
    Ok((heuristics, configs))
}

fn finalize(lib: &'static Library, config: &Descriptor, what: &str) -> Result<Descriptor, CudnnError> {
    let mut plan = Descriptor::new(lib, CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, what)?;
    plan.set_descriptors(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, &[config])?;
    plan.finalize()?;
    Ok(plan)
}

fn workspace_size(plan: &Descriptor) -> Result<usize, CudnnError> {
    let size = plan.get::<i64>(CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, 1)?;
    Ok(size.first().map_or(0, |&s| usize::try_from(s).unwrap_or(0)))
}

/// The addresses one execution reads and writes, by tensor uid, plus the workspace.
pub struct VariantPack {
    desc: Descriptor,
}

impl VariantPack {
    /// `pointers[i]` is the address of tensor `uids[i]`: device memory, or for by-value tensors
    /// a host scalar that must outlive every execution of this pack.
    pub fn new(
        lib: &'static Library,
        uids: &[i64],
        pointers: &[*mut c_void],
        workspace: *mut c_void,
    ) -> Result<Self, CudnnError> {
        let mut desc = Descriptor::new(lib, CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, "variant pack")?;
        desc.set_pointers(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, &[workspace])?;
        desc.set_pointers(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, pointers)?;
        desc.set(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, uids)?;
        desc.finalize()?;
        Ok(VariantPack { desc })
    }
}
