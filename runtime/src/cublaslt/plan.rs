//! A tuned GEMM plan and its launch: checking addresses against the spec, then one
//! `cublasLtMatmul` on the caller's stream.

use std::sync::Arc;

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};
use half::bf16;

use super::algo::{Algo, AlgoConfig};
use super::handle::Handle;
use super::matmul::Matmul;
use super::spec::{GemmSpec, Precision, OPERAND_ALIGNMENT, SCALE_ALIGNMENT};
use super::tune::Tuning;
use crate::device::bind;
use crate::{Error, Result};

/// Device addresses of the per-tensor dequantization scales (one f32 each) of an FP8 GEMM,
/// each [`SCALE_ALIGNMENT`]-byte aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScalePointers {
    pub x: CUdeviceptr,
    pub w: CUdeviceptr,
}

/// Device addresses of one call's operands: each the address of element `[0, 0]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmPointers {
    /// `[M, K]` with rows `ldx` elements apart.
    pub x: CUdeviceptr,
    /// `[N, K]`, dense.
    pub w: CUdeviceptr,
    /// FP8 only (and required there): read by the GEMM when it runs, so a captured graph picks
    /// up new scale values written to the same addresses.
    pub scales: Option<ScalePointers>,
    /// `[M, N]` bf16, dense: required exactly when the spec has a residual. May equal `out`
    /// (in place), otherwise must not overlap it.
    pub residual: Option<CUdeviceptr>,
    /// `[M, N]` bf16, dense.
    pub out: CUdeviceptr,
}

/// Element types of `x` and `w` in [`GemmPlan::run`]: `u8` holds e4m3 bits.
pub trait GemmElement: cudarc::driver::DeviceRepr {
    const PRECISION: Precision;
}

impl GemmElement for u8 {
    const PRECISION: Precision = Precision::Fp8E4m3;
}

impl GemmElement for bf16 {
    const PRECISION: Precision = Precision::Bf16;
}

/// The residual of a [`GemmPlan::run`] call.
pub enum Residual<'a> {
    /// β = 0.
    None,
    /// `out` holds the residual on entry and the sum on return (`C == D`).
    InPlace,
    /// A separate buffer (`C ≠ D`).
    Separate(&'a dyn DevicePtr<bf16>),
}

/// A tuned cuBLASLt GEMM for one [`GemmSpec`]. Get one from
/// [`Gemms::get`](super::Gemms::get), which tunes each spec once.
///
/// Launching runs one `cublasLtMatmul` and nothing else: no allocation, no synchronization,
/// so launches can be captured into a CUDA graph. A plan restored from disk has never run in
/// this process: launch it once before capturing, so module loading happens outside the capture.
pub struct GemmPlan {
    pub(crate) spec: GemmSpec,
    pub(crate) handle: Arc<Handle>,
    pub(crate) matmul: Matmul,
    pub(crate) algo: Algo,
    pub(crate) workspace_size: usize,
    pub(crate) tuning: Tuning,
}

impl GemmPlan {
    pub fn spec(&self) -> &GemmSpec {
        &self.spec
    }

    pub fn algo(&self) -> &Algo {
        &self.algo
    }

    pub fn config(&self) -> &AlgoConfig {
        &self.tuning.chosen.config
    }

    /// Workspace bytes the chosen algorithm needs (of the shared workspace).
    pub fn workspace_size(&self) -> usize {
        self.workspace_size
    }

    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    /// Queues `out = (x · wᵀ) · x_scale · w_scale (+ residual)` on `stream`, or records it
    /// during a capture. The addresses are checked against the spec (presence of scales and
    /// residual, operand and scale alignment, no overlap of `out` with the inputs) — checks of integers
    /// only, so a launch costs no more than the cuBLASLt call.
    ///
    /// # Safety
    /// Each address must point to device memory of the current context spanning its operand
    /// (see [`GemmPointers`]), valid and not written by other work until the GEMM completes.
    /// Every plan of one [`Gemms`](super::Gemms) shares one workspace: launch them on `stream`
    /// only, or on streams ordered with it, never concurrently.
    pub unsafe fn launch(&self, stream: &CudaStream, pointers: &GemmPointers) -> Result<()> {
        check_pointers(&self.spec, pointers)?;
        bind(stream)?;
        let cu_stream = stream.cu_stream() as _;
        Ok(self
            .matmul
            .enqueue(&self.handle, &self.algo, pointers, cu_stream)?)
    }

    /// [`launch`](Self::launch) over cudarc buffers, checking their lengths (and that the
    /// element type matches the spec's precision). `scales` is `[x_scale, w_scale]`.
    pub fn run<T: GemmElement>(
        &self,
        stream: &Arc<CudaStream>,
        x: &dyn DevicePtr<T>,
        w: &dyn DevicePtr<T>,
        scales: Option<[&dyn DevicePtr<f32>; 2]>,
        residual: Residual<'_>,
        out: &mut dyn DevicePtrMut<bf16>,
    ) -> Result<()> {
        let spec = &self.spec;
        if T::PRECISION != spec.precision {
            return Err(buffer_error(
                "x",
                format!(
                    "holds {:?} elements, the plan is for {:?}",
                    T::PRECISION,
                    spec.precision
                ),
            ));
        }
        let mn = spec.m * spec.n;
        let mut lengths = vec![("x", x.len(), spec.x_len()), ("w", w.len(), spec.n * spec.k)];
        lengths.push(("out", out.len(), mn));
        if let Residual::Separate(r) = &residual {
            lengths.push(("residual", r.len(), mn));
        }
        for (i, scale) in scales.iter().flatten().enumerate() {
            lengths.push((["x_scale", "w_scale"][i], scale.len(), 1));
        }
        if let Some((name, len, needed)) = lengths.into_iter().find(|(_, len, needed)| len < needed) {
            return Err(buffer_error(
                name,
                format!("holds {len} elements, the GEMM needs {needed}"),
            ));
        }
        let (x, _x) = x.device_ptr(stream);
        let (w, _w) = w.device_ptr(stream);
        let scale_ptrs = scales.map(|[xs, ws]| (xs.device_ptr(stream), ws.device_ptr(stream)));
        let separate = match &residual {
            Residual::Separate(r) => Some(r.device_ptr(stream)),
            _ => None,
        };
        let (out, _out) = out.device_ptr_mut(stream);
        let pointers = GemmPointers {
            x,
            w,
            scales: scale_ptrs
                .as_ref()
                .map(|((x, _), (w, _))| ScalePointers { x: *x, w: *w }),
            residual: match residual {
                Residual::None => None,
                Residual::InPlace => Some(out),
                Residual::Separate(_) => separate.as_ref().map(|(r, _)| *r),
            },
            out,
        };
        // SAFETY: every buffer spans its operand (checked above) and stays borrowed until the
        // work is queued; cudarc frees device memory in stream order, after the queued work.
        unsafe { self.launch(stream, &pointers) }
    }
}

/// The checks of [`GemmPlan::launch`].
fn check_pointers(spec: &GemmSpec, p: &GemmPointers) -> Result<()> {
    let fp8 = spec.precision == Precision::Fp8E4m3;
    match (p.scales, fp8) {
        (None, true) => return Err(buffer_error("scales", "missing: FP8 GEMMs need both".into())),
        (Some(_), false) => return Err(buffer_error("scales", "given to a bf16 GEMM".into())),
        _ => {}
    }
    match (p.residual, spec.residual) {
        (None, true) => return Err(buffer_error("residual", "missing: the spec has one".into())),
        (Some(_), false) => return Err(buffer_error("residual", "given, the spec has none".into())),
        _ => {}
    }
    let operands = [
        ("x", Some(p.x)),
        ("w", Some(p.w)),
        ("out", Some(p.out)),
        ("residual", p.residual),
    ];
    for (name, address) in operands {
        if let Some(address) = address.filter(|a| a % OPERAND_ALIGNMENT != 0) {
            let problem = format!("address {address:#x} is not {OPERAND_ALIGNMENT}-byte aligned");
            return Err(buffer_error(name, problem));
        }
    }
    for (name, address) in p.scales.iter().flat_map(|s| [("x_scale", s.x), ("w_scale", s.w)]) {
        if address == 0 || address % SCALE_ALIGNMENT != 0 {
            let problem = format!("address {address:#x} is not {SCALE_ALIGNMENT}-byte aligned");
            return Err(buffer_error(name, problem));
        }
    }
    let elem = spec.precision.input_bytes() as u64;
    let out_bytes = (spec.m * spec.n * 2) as u64;
    let inputs = [
        ("x", p.x, spec.x_len() as u64 * elem),
        ("w", p.w, (spec.n * spec.k) as u64 * elem),
    ];
    let residual = p
        .residual
        .filter(|&r| r != p.out)
        .map(|r| ("residual", r, out_bytes));
    for (name, address, bytes) in inputs.into_iter().chain(residual) {
        if address < p.out + out_bytes && p.out < address + bytes {
            let problem = "overlaps `out` (writing over an input is undefined in cuBLASLt)";
            return Err(buffer_error(name, problem.into()));
        }
    }
    Ok(())
}

fn buffer_error(buffer: &'static str, problem: String) -> Error {
    Error::Buffer {
        op: "gemm",
        buffer,
        problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The executor shares plans between threads; see the `Send`/`Sync` notes of the handle.
    #[test]
    fn plans_can_be_shared_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<GemmPlan>();
    }

    const BASE: u64 = 0x7f00_0000_0000;

    fn pointers(spec: &GemmSpec) -> GemmPointers {
        let mib = 1 << 20;
        GemmPointers {
            x: BASE,
            w: BASE + 16 * mib,
            scales: (spec.precision == Precision::Fp8E4m3).then_some(ScalePointers {
                x: BASE + 32 * mib,
                w: BASE + 32 * mib + 16,
            }),
            residual: spec.residual.then_some(BASE + 48 * mib),
            out: BASE + 64 * mib,
        }
    }

    fn refused(spec: &GemmSpec, p: GemmPointers) -> String {
        match check_pointers(spec, &p) {
            Err(e) => e.to_string(),
            Ok(()) => panic!("expected {p:?} to be refused for {spec}"),
        }
    }

    #[test]
    fn good_pointers_pass_in_and_out_of_place() {
        let spec = GemmSpec::fp8(256, 512, 1024).with_residual(true);
        check_pointers(&spec, &pointers(&spec)).unwrap();
        let in_place = GemmPointers {
            residual: Some(pointers(&spec).out),
            ..pointers(&spec)
        };
        check_pointers(&spec, &in_place).unwrap();
        let bf16 = GemmSpec::bf16(17, 64, 64);
        check_pointers(&bf16, &pointers(&bf16)).unwrap();
    }

    #[test]
    fn mismatches_with_the_spec_are_named() {
        let fp8 = GemmSpec::fp8(256, 512, 1024);
        let p = pointers(&fp8);
        let no_scales = GemmPointers { scales: None, ..p };
        assert_eq!(
            refused(&fp8, no_scales),
            "gemm: buffer `scales` missing: FP8 GEMMs need both"
        );
        let stray = GemmPointers {
            residual: Some(p.out),
            ..p
        };
        assert!(refused(&fp8, stray).contains("`residual` given, the spec has none"));
        let bf16 = GemmSpec::bf16(256, 512, 1024);
        assert!(refused(&bf16, p).contains("given to a bf16 GEMM"));
        let with_residual = fp8.with_residual(true);
        assert!(refused(&with_residual, p).contains("`residual` missing"));
    }

    #[test]
    fn misalignment_and_overlap_are_refused() {
        let spec = GemmSpec::fp8(256, 512, 1024).with_residual(true);
        let p = pointers(&spec);
        let err = refused(&spec, GemmPointers { x: p.x + 16, ..p });
        assert!(
            err.contains("`x` address 0x7f0000000010 is not 256-byte aligned"),
            "{err}"
        );
        // Packed f32s, 4 bytes apart: fine for a kernel, refused by cuBLASLt's FP8 path.
        let packed_scales = GemmPointers {
            scales: Some(ScalePointers {
                x: BASE + (32 << 20),
                w: BASE + (32 << 20) + 4,
            }),
            ..p
        };
        let err = refused(&spec, packed_scales);
        assert!(
            err.contains("`w_scale` address 0x7f0002000004 is not 16-byte aligned"),
            "{err}"
        );
        // `out` spans 256·512·2 bytes = 256 KiB: a residual 128 KiB in overlaps it partially.
        let partial = GemmPointers {
            residual: Some(p.out + (128 << 10)),
            ..p
        };
        assert!(refused(&spec, partial).contains("`residual` overlaps `out`"));
        let onto_w = GemmPointers { out: p.w + 256, ..p };
        assert!(refused(&spec, onto_w).contains("`w` overlaps `out`"));
    }
}
