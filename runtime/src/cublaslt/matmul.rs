//! One GEMM spec as cuBLASLt sees it: the operation descriptor and the three matrix layouts,
//! and the three things done with them — ask the heuristic for algorithms, check a stored
//! algorithm, and queue the matmul.
//!
//! cuBLASLt is column-major; lancet is row-major. A row-major `[R, C]` tensor with row stride
//! `ld` *is* a column-major `C × R` matrix with leading dimension `ld`, so
//! `out[M, N] = x[M, K] · w[N, K]ᵀ` is the column-major `outᵀ (N × M) = w (N × K) · xᵀ (K × M)`:
//!
//! | cuBLASLt | lancet | type | rows × cols, ld | op |
//! |---|---|---|---|---|
//! | A | `w` | e4m3 / bf16 | K × N, K | `TRANSA = T` |
//! | B | `x` | e4m3 / bf16 | K × M, ldx | `TRANSB = N` |
//! | C | `residual` (or `out` when β = 0) | bf16 | N × M, N | |
//! | D | `out` | bf16 | N × M, N | |
//!
//! This "TN" form (both operands K-contiguous) is the only one FP8 supports on Hopper, and it
//! is exactly what PyTorch's `_scaled_mm` builds (see the recorded trace in the research
//! notes). C and D share one layout, which makes `C == D` a valid in-place call and `C ≠ D` a
//! valid out-of-place one. Per-tensor scales multiply (`A_SCALE_POINTER` = w's,
//! `B_SCALE_POINTER` = x's), α = 1 and β = 1 or 0 are host values: a scale update rewrites two
//! device floats and never touches a captured graph.

use std::sync::{Mutex, PoisonError};

use cudarc::cublaslt::sys::{
    cublasComputeType_t, cublasLtMatmulDescAttributes_t as Desc,
    cublasLtMatmulPreferenceAttributes_t as Pref, cudaDataType_t, cudaStream_t,
};

use super::algo::Algo;
use super::descriptor::{MatmulDesc, MatrixLayout, Preference};
use super::error::{CublasLtError, Status};
use super::handle::Handle;
use super::library::HeuristicResult;
use super::plan::GemmPointers;
use super::spec::{GemmSpec, Precision};

/// `CUBLAS_OP_N` and `CUBLAS_OP_T` (cudarc's cuBLASLt bindings lack `cublasOperation_t`).
const OP_N: i32 = 0;
const OP_T: i32 = 1;

/// A heuristic's proposal: the algorithm and the workspace bytes it needs.
pub(crate) struct Proposal {
    pub algo: Algo,
    pub workspace_size: usize,
}

pub(crate) struct Matmul {
    spec: GemmSpec,
    /// Locked for each launch, which sets the call's scale pointers in it.
    desc: Mutex<MatmulDesc>,
    a: MatrixLayout,
    b: MatrixLayout,
    cd: MatrixLayout,
}

impl Matmul {
    pub fn new(handle: &Handle, spec: &GemmSpec) -> Result<Self, CublasLtError> {
        let lib = handle.library();
        let label = spec.to_string();
        let mut desc = MatmulDesc::new(
            lib,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cudaDataType_t::CUDA_R_32F,
            &label,
        )?;
        desc.set(Desc::CUBLASLT_MATMUL_DESC_TRANSA, OP_T)?;
        desc.set(Desc::CUBLASLT_MATMUL_DESC_TRANSB, OP_N)?;
        if spec.precision == Precision::Fp8E4m3 {
            desc.set(Desc::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, handle.unit_scale())?;
            desc.set(Desc::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, handle.unit_scale())?;
            desc.set(Desc::CUBLASLT_MATMUL_DESC_FAST_ACCUM, spec.fast_accum as i8)?;
        }
        let (m, n, k) = (spec.m, spec.n, spec.k);
        let input = spec.precision.input_type();
        let a = MatrixLayout::new(lib, input, k, n, k, &format!("A (w) of {label}"))?;
        let b = MatrixLayout::new(lib, input, k, m, spec.ldx, &format!("B (x) of {label}"))?;
        let cd = MatrixLayout::new(
            lib,
            cudaDataType_t::CUDA_R_16BF,
            n,
            m,
            n,
            &format!("C/D (residual/out) of {label}"),
        )?;
        Ok(Matmul {
            spec: *spec,
            desc: Mutex::new(desc),
            a,
            b,
            cd,
        })
    }

    /// Up to `count` algorithms in the heuristic's order (its estimate of fastest first), each
    /// needing at most `workspace_bytes`.
    pub fn heuristic(
        &self,
        handle: &Handle,
        workspace_bytes: usize,
        count: usize,
    ) -> Result<Vec<Proposal>, CublasLtError> {
        let lib = handle.library();
        let mut pref = Preference::new(lib)?;
        pref.set(
            Pref::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            workspace_bytes as u64,
        )?;
        let mut results = vec![HeuristicResult::zeroed(); count.max(1)];
        let mut returned = 0i32;
        let desc = self.desc.lock().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: live descriptors; `results` has room for the count requested.
        let status = unsafe {
            (lib.api.heuristic)(
                handle.raw(),
                desc.raw(),
                self.a.raw(),
                self.b.raw(),
                self.cd.raw(),
                self.cd.raw(),
                pref.raw(),
                results.len() as i32,
                results.as_mut_ptr(),
                &mut returned,
            )
        };
        lib.check(status, || {
            format!(
                "cublasLtMatmulAlgoGetHeuristic for {} (workspace limit {workspace_bytes} bytes)",
                self.spec
            )
        })?;
        results.truncate(returned.clamp(0, results.len() as i32) as usize);
        Ok(results
            .into_iter()
            .filter(|r| r.state == 0 && r.workspace_size <= workspace_bytes)
            .map(|r| Proposal {
                algo: Algo::from_raw(r.algo),
                workspace_size: r.workspace_size,
            })
            .collect())
    }

    /// Whether cuBLASLt accepts `algo` for this GEMM: the workspace bytes it needs, or the
    /// status `cublasLtMatmulAlgoCheck` refused it with.
    pub fn check(&self, handle: &Handle, algo: &Algo) -> Result<usize, Status> {
        let lib = handle.library();
        let mut result = HeuristicResult::zeroed();
        let desc = self.desc.lock().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: live descriptors; `result` is a valid out-pointer.
        let status = unsafe {
            (lib.api.algo_check)(
                handle.raw(),
                desc.raw(),
                self.a.raw(),
                self.b.raw(),
                self.cd.raw(),
                self.cd.raw(),
                algo.raw(),
                &mut result,
            )
        };
        match (status, result.state) {
            (0, 0) => Ok(result.workspace_size),
            (0, state) => Err(lib.status(state)),
            (status, _) => Err(lib.status(status)),
        }
    }

    /// Queues `out = x·wᵀ·scales (+ residual)` with `algo` on `stream`, using the handle's
    /// workspace. Host work only besides the launch itself: safe inside a stream capture.
    ///
    /// # Safety
    /// The pointers must satisfy [`GemmPlan::launch`](super::GemmPlan::launch)'s contract and
    /// have been checked against the spec; `algo` must fit the handle's workspace.
    pub unsafe fn enqueue(
        &self,
        handle: &Handle,
        algo: &Algo,
        p: &GemmPointers,
        stream: cudaStream_t,
    ) -> Result<(), CublasLtError> {
        let lib = handle.library();
        let mut desc = self.desc.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(scales) = p.scales {
            desc.set(Desc::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, scales.w)?;
            desc.set(Desc::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, scales.x)?;
        }
        let alpha = 1.0f32;
        let beta = if p.residual.is_some() { 1.0f32 } else { 0.0 };
        // With β = 0 cuBLASLt never reads C, but wants a valid address: PyTorch passes D's.
        let c = p.residual.unwrap_or(p.out);
        let (workspace, workspace_bytes) = handle.workspace();
        let status = (lib.api.matmul)(
            handle.raw(),
            desc.raw(),
            (&alpha as *const f32).cast(),
            p.w as *const _,
            self.a.raw(),
            p.x as *const _,
            self.b.raw(),
            (&beta as *const f32).cast(),
            c as *const _,
            self.cd.raw(),
            p.out as *mut _,
            self.cd.raw(),
            algo.raw(),
            workspace as *mut _,
            workspace_bytes,
            stream,
        );
        lib.check(status, || format!("cublasLtMatmul for {}", self.spec))
    }
}
