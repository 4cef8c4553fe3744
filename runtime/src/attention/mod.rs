//! Fused flash-attention forward through cuDNN: bf16 or FP8 (e4m3) Q, K, V and O, causal or not,
//! grouped-query attention without copies, and arbitrary strides, so that Q, K and V can be
//! views of the QKV projection's packed output and O can be written in the layout the output
//! projection reads.
//!
//! ```text
//! let plans = AttentionPlans::new(&device, PlanStore::from_env())?;   // one per device
//! let layout = AttentionLayout::packed_qkv(&shape);
//! let spec = AttentionSpec { shape, layout, causal: true, precision: AttentionPrecision::Bf16 };
//! let plan = plans.get(&spec)?.plan;                  // built once, cached in memory and on disk
//! plan.execute(plans.handle(), &q, &k, &v, &mut o, 1.0 / (d as f32).sqrt())?;
//! ```
//!
//! FP8 plans ([`AttentionPrecision::Fp8`]) take e4m3 buffers and per-tensor scale factors in
//! device memory ([`Fp8Pointers`], or [`Fp8Scalars`] with [`AttentionPlan::execute_fp8`]), and
//! write the amaxes of P and O. Each new FP8 plan is checked against lancet's reference once,
//! because some cuDNN releases (9.14) compute FP8 attention wrongly without reporting it; point
//! `LANCET_CUDNN` at a newer cuDNN there (see [`crate::cudnn::Library`]).
//!
//! Logical dims are `[batch, heads, seq, head_dim]`, as in the IR's `Op::Attention`.

mod check;
mod fp8;
mod graph;
mod plan;
mod plans;
mod spec;

pub use fp8::{e4m3_from_f32, e4m3_to_f32, Fp8Scalars, Fp8Scales};
pub use plan::{AttentionPlan, AttentionPointers, BoundAttention, Fp8Pointers};
pub use plans::{fp8_attention_blocker, AttentionPlans, PlanLookup, PlanSource};
pub use spec::{
    AttentionLayout, AttentionPrecision, AttentionShape, AttentionSpec, SpecError, Strides, Tensor,
};
