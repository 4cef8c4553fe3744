//! An attention plan and its execution: checking buffers against the spec, and binding
//! addresses into a variant pack.

use std::ffi::c_void;

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{DevicePtr, DevicePtrMut};
use half::bf16;

use super::fp8::Fp8Scalars;
use super::graph::uid;
use super::spec::{AttentionPrecision, AttentionSpec, Tensor};
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
    /// The scale factors and amaxes: required by FP8 plans, refused by bf16 ones.
    pub fp8: Option<Fp8Pointers>,
}

/// Addresses of the f32 device scalars an FP8 attention call reads (the six scale factors) and
/// writes (the two amaxes), each 16-byte aligned. The plan owns none of this memory; see
/// [`Fp8Scales`](super::Fp8Scales) for what each factor does, and
/// [`Fp8Scalars`](super::Fp8Scalars) for memory that provides them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fp8Pointers {
    pub descale_q: CUdeviceptr,
    pub descale_k: CUdeviceptr,
    pub descale_v: CUdeviceptr,
    pub descale_s: CUdeviceptr,
    pub scale_s: CUdeviceptr,
    pub scale_o: CUdeviceptr,
    /// Written: max |P|, before `scale_s`.
    pub amax_s: CUdeviceptr,
    /// Written: max |O|, before `scale_o`.
    pub amax_o: CUdeviceptr,
}

impl Fp8Pointers {
    /// Each address with the graph tensor it binds and its name in errors.
    fn by_uid(&self) -> [(i64, &'static str, CUdeviceptr); 8] {
        [
            (uid::DESCALE_Q, "descale_q", self.descale_q),
            (uid::DESCALE_K, "descale_k", self.descale_k),
            (uid::DESCALE_V, "descale_v", self.descale_v),
            (uid::DESCALE_S, "descale_s", self.descale_s),
            (uid::SCALE_S, "scale_s", self.scale_s),
            (uid::SCALE_O, "scale_o", self.scale_o),
            (uid::AMAX_S, "amax_s", self.amax_s),
            (uid::AMAX_O, "amax_o", self.amax_o),
        ]
    }
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

    pub(crate) fn execution_plan(&self) -> &ExecutionPlan {
        &self.plan
    }

    /// `O = softmax(Q·Kᵀ·scale [+ causal mask])·V` for a bf16 plan, queued on the handle's
    /// stream.
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
        self.execute_buffers(handle, [q, k, v], o, None, scale)
    }

    /// [`execute`](Self::execute) for an FP8 plan: Q, K, V and O hold e4m3 bytes, and the call
    /// reads its scale factors from `scalars` and writes its amaxes there.
    #[allow(clippy::too_many_arguments)]
    pub fn execute_fp8<Q, K, V, O>(
        &self,
        handle: &Handle,
        q: &Q,
        k: &K,
        v: &V,
        o: &mut O,
        scalars: &mut Fp8Scalars,
        scale: f32,
    ) -> Result<()>
    where
        Q: DevicePtr<u8>,
        K: DevicePtr<u8>,
        V: DevicePtr<u8>,
        O: DevicePtrMut<u8>,
    {
        self.execute_buffers(handle, [q, k, v], o, Some(scalars), scale)
    }

    /// Checks typed buffers against the spec, then binds and queues one call.
    fn execute_buffers<T>(
        &self,
        handle: &Handle,
        [q, k, v]: [&dyn DevicePtr<T>; 3],
        o: &mut dyn DevicePtrMut<T>,
        scalars: Option<&mut Fp8Scalars>,
        scale: f32,
    ) -> Result<()> {
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
        let (fp8, _fp8) = match scalars {
            Some(scalars) => {
                let (pointers, guard) = scalars.pointers(stream);
                (Some(pointers), Some(guard))
            }
            None => (None, None),
        };
        let pointers = AttentionPointers { q, k, v, o, fp8 };
        // SAFETY: each buffer spans its view (checked above), the scalars are their own
        // allocation, and all are borrowed until the work is queued; cudarc frees device memory
        // in stream order, after the queued work.
        let call = unsafe { self.bind(handle, pointers, scale)? };
        call.execute()
    }

    /// Builds the variant pack for fixed buffers once, for calls repeated with the same
    /// addresses (one per layer at compile time, executed every step).
    ///
    /// # Safety
    /// Each address must point to device memory spanning its view's
    /// [extent](AttentionSpec::extent) (for the FP8 scalars, one f32), valid and not written by
    /// others until the last execution of the returned call completes; O and the amaxes must
    /// not overlap any other tensor.
    pub unsafe fn bind<'a>(
        &'a self,
        handle: &'a Handle,
        pointers: AttentionPointers,
        scale: f32,
    ) -> Result<BoundAttention<'a>> {
        let AttentionPointers { q, k, v, o, fp8 } = pointers;
        let mut named: Vec<(i64, &'static str, CUdeviceptr)> = vec![
            (uid::Q, Tensor::Q.name(), q),
            (uid::K_T, Tensor::K.name(), k),
            (uid::V, Tensor::V.name(), v),
            (uid::O, Tensor::O.name(), o),
        ];
        match (self.spec.precision, fp8) {
            (AttentionPrecision::Fp8, Some(fp8)) => named.extend(fp8.by_uid()),
            (AttentionPrecision::Bf16, None) => {}
            (AttentionPrecision::Fp8, None) => {
                return Err(fp8_error(
                    "is missing: an FP8 plan reads six scale factors and writes two amaxes \
                     (set AttentionPointers::fp8)",
                ))
            }
            (AttentionPrecision::Bf16, Some(_)) => {
                return Err(fp8_error(
                    "is set, but the plan is for bf16 attention, which has no scale factors",
                ))
            }
        }
        for &(_, buffer, address) in &named {
            if address % BYTE_ALIGNMENT as u64 != 0 {
                return Err(Error::Buffer {
                    op: "attention",
                    buffer,
                    problem: format!("address {address:#x} is not 16-byte aligned"),
                });
            }
        }
        // The by-value scalars cuDNN reads through host pointers at each execution. A `Vec`'s
        // buffer stays put, and its pointers stay valid, when the `Vec` moves into the call.
        let mut scalars = vec![scale, f32::NEG_INFINITY];
        let scale_ptr = scalars.as_mut_ptr();
        let neg_inf_ptr = scale_ptr.wrapping_add(1).cast::<c_void>();
        let scale_ptr = scale_ptr.cast::<c_void>();
        let pointers = self
            .io_uids
            .iter()
            .map(|&id| match id {
                uid::SCALE => Ok(scale_ptr),
                uid::NEG_INF => Ok(neg_inf_ptr),
                _ => named
                    .iter()
                    .find(|&&(tensor, _, _)| tensor == id)
                    .map(|&(_, _, address)| address as *mut c_void)
                    .ok_or_else(|| Error::Buffer {
                        op: "attention",
                        buffer: "variant pack",
                        problem: format!("has no address for graph tensor {id} (a lancet bug)"),
                    }),
            })
            .collect::<Result<Vec<_>>>()?;
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

fn fp8_error(problem: &str) -> Error {
    Error::Buffer {
        op: "attention",
        buffer: "fp8",
        problem: problem.to_owned(),
    }
}

fn buffer_error(tensor: Tensor, problem: String) -> Error {
    Error::Buffer {
        op: "attention",
        buffer: tensor.name(),
        problem,
    }
}
