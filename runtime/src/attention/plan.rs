//! An attention plan and its execution: checking buffers against the spec, and binding
//! addresses into a variant pack.

use std::ffi::c_void;

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{DevicePtr, DevicePtrMut};
use half::bf16;

use super::graph::uid;
use super::spec::{AttentionSpec, Tensor};
use crate::cudnn::{EngineInfo, ExecutionPlan, Handle, VariantPack, BYTE_ALIGNMENT};
use crate::{Error, Result};

/// A finalized cuDNN plan for one [`AttentionSpec`]. Get one from
/// [`AttentionPlans::get`](super::AttentionPlans::get), which builds each spec once.
///
/// The first execution loads the compiled kernel into the context: execute once outside a
/// stream capture before capturing a CUDA graph that contains the plan.
pub struct AttentionPlan {
    spec: AttentionSpec,
    plan: ExecutionPlan,
    io_uids: Vec<i64>,
}

/// Device addresses of one call's tensors: each the address of element `[0, 0, 0, 0]` of its
/// view (for packed QKV, the buffer's base plus [`packed_offsets`]).
///
/// [`packed_offsets`]: super::AttentionShape::packed_offsets
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionPointers {
    pub q: CUdeviceptr,
    pub k: CUdeviceptr,
    pub v: CUdeviceptr,
    pub o: CUdeviceptr,
}

impl AttentionPlan {
    pub(crate) fn new(spec: AttentionSpec, plan: ExecutionPlan, io_uids: Vec<i64>) -> Self {
        AttentionPlan { spec, plan, io_uids }
    }

    pub fn spec(&self) -> &AttentionSpec {
        &self.spec
    }

    pub fn engine(&self) -> &EngineInfo {
        self.plan.engine()
    }

    pub fn workspace_size(&self) -> usize {
        self.plan.workspace_size()
    }

    /// `O = softmax(Q·Kᵀ·scale [+ causal mask])·V`, queued on the handle's stream.
    ///
    /// Each buffer is the view's storage starting at its element `[0, 0, 0, 0]`; it must hold
    /// the view's [extent](AttentionSpec::extent) and be 16-byte aligned, which is checked.
    pub fn execute<Q, K, V, O>(
        &self,
        handle: &Handle,
        q: &Q,
        k: &K,
        v: &V,
        o: &mut O,
        scale: f32,
    ) -> Result<()>
    where
        Q: DevicePtr<bf16>,
        K: DevicePtr<bf16>,
        V: DevicePtr<bf16>,
        O: DevicePtrMut<bf16>,
    {
        let lens = [q.len(), k.len(), v.len(), o.len()];
        for (tensor, len) in Tensor::ALL.into_iter().zip(lens) {
            let needed = self.spec.extent(tensor).unwrap_or(usize::MAX);
            if len < needed {
                return Err(buffer_error(
                    tensor,
                    format!("holds {len} elements, the view spans {needed}"),
                ));
            }
        }
        let stream = handle.stream();
        let (q, _q) = q.device_ptr(stream);
        let (k, _k) = k.device_ptr(stream);
        let (v, _v) = v.device_ptr(stream);
        let (o, _o) = o.device_ptr_mut(stream);
        // SAFETY: each buffer spans its view (checked above) and is borrowed until the work is
        // queued; cudarc frees device memory in stream order, after the queued work.
        let call = unsafe { self.bind(handle, AttentionPointers { q, k, v, o }, scale)? };
        call.execute()
    }

    /// Builds the variant pack for fixed buffers once, for calls repeated with the same
    /// addresses (one per layer at compile time, executed every step).
    ///
    /// # Safety
    /// Each address must point to device memory spanning its view's
    /// [extent](AttentionSpec::extent), valid and not written by others until the last
    /// execution of the returned call completes; O must not overlap Q, K or V.
    pub unsafe fn bind<'a>(
        &'a self,
        handle: &'a Handle,
        pointers: AttentionPointers,
        scale: f32,
    ) -> Result<BoundAttention<'a>> {
        let AttentionPointers { q, k, v, o } = pointers;
        for (tensor, address) in Tensor::ALL.into_iter().zip([q, k, v, o]) {
            if address % BYTE_ALIGNMENT as u64 != 0 {
                return Err(buffer_error(
                    tensor,
                    format!("address {address:#x} is not 16-byte aligned"),
                ));
            }
        }
        // The by-value scalars cuDNN reads through host pointers at each execution. A `Vec`'s
        // buffer stays put, and its pointers stay valid, when the `Vec` moves into the call.
        let mut scalars = vec![scale, f32::NEG_INFINITY];
        let scale_ptr = scalars.as_mut_ptr();
        let neg_inf_ptr = scale_ptr.wrapping_add(1).cast::<c_void>();
        let scale_ptr = scale_ptr.cast::<c_void>();
        let pointers: Vec<*mut c_void> = self
            .io_uids
            .iter()
            .map(|&id| match id {
                uid::Q => q as *mut c_void,
                uid::K_T => k as *mut c_void,
                uid::V => v as *mut c_void,
                uid::O => o as *mut c_void,
                uid::SCALE => scale_ptr,
                // The one remaining input of the graph: −∞ for masked scores.
                _ => neg_inf_ptr,
            })
            .collect();
        let workspace = handle.workspace(self.workspace_size())?;
        let pack = VariantPack::new(handle.library(), &self.io_uids, &pointers, workspace)?;
        Ok(BoundAttention {
            plan: self,
            handle,
            pack,
            _scalars: scalars,
        })
    }
}

/// An attention call with its addresses bound: executing it costs one cuDNN call.
pub struct BoundAttention<'a> {
    plan: &'a AttentionPlan,
    handle: &'a Handle,
    pack: VariantPack,
    /// The by-value softmax scale and −∞ the pack points at.
    _scalars: Vec<f32>,
}

impl BoundAttention<'_> {
    /// Queues the call on the handle's stream (or records it, during a stream capture).
    pub fn execute(&self) -> Result<()> {
        // SAFETY: `bind`'s contract covers the device addresses; the workspace belongs to the
        // handle, which outlives `self`; the scalars live in `self`.
        unsafe { self.plan.plan.execute(self.handle, &self.pack) }
    }
}

fn buffer_error(tensor: Tensor, problem: String) -> Error {
    Error::Buffer {
        op: "attention",
        buffer: tensor.name(),
        problem,
    }
}
