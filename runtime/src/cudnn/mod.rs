//! cuDNN's backend (graph) API, wrapped safely.
//!
//! cuDNN 9 describes work as a graph of tensors and operations, asks its heuristics which
//! engines can run the graph, and *finalizes* an execution plan for one engine — for fused
//! attention, compiling a kernel at that moment. Plans then execute any number of times with a
//! variant pack (the addresses of the graph's non-virtual tensors).
//!
//! - [`Library`]: the process's cuDNN, loaded at run time and version-checked;
//! - [`Handle`]: a cuDNN handle bound to lancet's stream, with the workspace plans share;
//! - [`Descriptor`]: RAII over one backend descriptor, with typed attribute access;
//! - [`GraphSpec`]: a graph as data; [`OperationGraph`] its finalized descriptors;
//! - [`ExecutionPlan`], [`VariantPack`]: engine choice, finalize, serialize, execute;
//! - [`PlanStore`]: serialized plans on disk, keyed and checked so a stale entry is never used.

mod descriptor;
mod error;
mod graph;
mod handle;
mod library;
mod operation_graph;
mod plan;
mod plan_store;

pub use descriptor::{AttrValue, Descriptor, Readable};
pub use error::{CudnnError, Status, Version};
pub use graph::{DataType, GraphSpec, OpSpec, PointwiseMode, ReduceOp, Storage, TensorSpec};
pub use handle::Handle;
pub use library::Library;
pub use operation_graph::{OperationGraph, BYTE_ALIGNMENT};
pub use plan::{BuildTimes, EngineInfo, ExecutionPlan, VariantPack};
pub use plan_store::{Lookup, PlanKey, PlanStore, StoredPlan};

#[cfg(test)]
pub(crate) use graph::tests::check_well_formed;
