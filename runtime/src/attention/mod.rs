//! Fused flash-attention forward through cuDNN: bf16 Q, K, V and O, causal or not, grouped-query
//! attention without copies, and arbitrary strides, so that Q, K and V can be views of the QKV
//! projection's packed output and O can be written in the layout the output projection reads.
//!
//! ```text
//! let plans = AttentionPlans::new(&device, PlanStore::from_env())?;   // one per device
//! let spec = AttentionSpec { shape, layout: AttentionLayout::packed_qkv(&shape), causal: true };
//! let plan = plans.get(&spec)?.plan;                  // built once, cached in memory and on disk
//! plan.execute(plans.handle(), &q, &k, &v, &mut o, 1.0 / (d as f32).sqrt())?;
//! ```
//!
//! Logical dims are `[batch, heads, seq, head_dim]`, as in the IR's `Op::Attention`.

mod graph;
mod plan;
mod plans;
mod spec;

pub use plan::{AttentionPlan, AttentionPointers, BoundAttention};
pub use plans::{AttentionPlans, PlanLookup, PlanSource};
pub use spec::{AttentionLayout, AttentionShape, AttentionSpec, SpecError, Strides, Tensor};
