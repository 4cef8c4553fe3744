//! What one GEMM computes, in lancet's row-major terms, and the shape rules it must meet —
//! checked before any cuBLASLt call, so that a shape cuBLASLt would refuse (or, for FP8, run
//! through a path with different requirements) fails with a message about the shape.
//!
//! `out[M, N] = (x[M, K] · w[N, K]ᵀ) · x_scale · w_scale (+ residual[M, N])`, with `x` rows
//! `ldx ≥ K` elements apart, `w` in PyTorch's `Linear` layout, `out` and `residual` dense bf16.

use std::fmt;

use cudarc::cublaslt::sys::cudaDataType_t;

use super::error::CublasLtError;

/// Byte alignment of every operand's base address. cuBLASLt's heuristic assumes 256 unless told
/// otherwise; lancet's arena places every buffer at a multiple of 256, so it holds for free.
pub const OPERAND_ALIGNMENT: u64 = 256;

/// Byte alignment of the FP8 scale addresses. cuBLASLt documents that FP8 kernels need every
/// pointer 16-byte aligned, and means the scales too: on an H100 with cuBLASLt 13.1, a w scale
/// 4 bytes after the x scale made `cublasLtMatmul` return `CUBLAS_STATUS_NOT_SUPPORTED` for
/// every algorithm its heuristic had proposed, while every 16-byte step works.
pub const SCALE_ALIGNMENT: u64 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precision {
    /// e4m3 × e4m3 → bf16, per-tensor f32 scales read from device memory at each launch.
    Fp8E4m3,
    /// bf16 × bf16 → bf16, no scales.
    Bf16,
}

impl Precision {
    /// Bytes per element of `x` and `w`.
    pub fn input_bytes(self) -> usize {
        match self {
            Precision::Fp8E4m3 => 1,
            Precision::Bf16 => 2,
        }
    }

    pub(crate) fn input_type(self) -> cudaDataType_t {
        match self {
            Precision::Fp8E4m3 => cudaDataType_t::CUDA_R_8F_E4M3,
            Precision::Bf16 => cudaDataType_t::CUDA_R_16BF,
        }
    }

    /// `K`, `N` and `ldx` must be multiples of this many elements (16 bytes).
    pub fn row_multiple(self) -> usize {
        16 / self.input_bytes()
    }

    fn name(self) -> &'static str {
        match self {
            Precision::Fp8E4m3 => "fp8e4m3",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Everything a tuned GEMM plan depends on: one plan serves every call with an equal spec
/// (all layers of a model share one per projection). Scales and addresses are not part of it:
/// they are given at each launch.
///
/// Alignment rules (every one of them is what cuBLASLt's FP8 kernels require, applied to bf16
/// too so that each row of every operand starts 16-byte aligned):
/// - FP8 e4m3: `K`, `N` and `ldx` multiples of 16 (16 bytes of e4m3: the TN kernels' row
///   alignment; `N` also makes the bf16 output's rows 32-byte multiples);
/// - bf16: `K`, `N` and `ldx` multiples of 8 (16 bytes);
/// - `M` is free (17 works); every size at most `i32::MAX`;
/// - operand base addresses 256-byte aligned, checked at launch ([`OPERAND_ALIGNMENT`]);
/// - FP8 scale addresses 16-byte aligned, checked at launch ([`SCALE_ALIGNMENT`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmSpec {
    /// Rows of `x` and `out` (tokens).
    pub m: usize,
    /// Rows of `w`, columns of `out` (output features).
    pub n: usize,
    /// Columns of `x` and `w` (input features).
    pub k: usize,
    /// Elements from one row of `x` to the next (`≥ k`: `x` may be a column slice of a wider
    /// row-major buffer, read in place).
    pub ldx: usize,
    pub precision: Precision,
    /// `out = x·wᵀ + residual`, added in the GEMM's epilogue (β = 1).
    pub residual: bool,
    /// FP8 only: skip the periodic promotion of partial sums to full f32 (faster; error grows
    /// with `K`). Always `false` for bf16.
    pub fast_accum: bool,
}

impl GemmSpec {
    /// An FP8 GEMM on dense `x`, fast accumulation on, no residual.
    pub fn fp8(m: usize, n: usize, k: usize) -> Self {
        GemmSpec {
            m,
            n,
            k,
            ldx: k,
            precision: Precision::Fp8E4m3,
            residual: false,
            fast_accum: true,
        }
    }

    /// A bf16 GEMM on dense `x`, no residual.
    pub fn bf16(m: usize, n: usize, k: usize) -> Self {
        GemmSpec {
            precision: Precision::Bf16,
            fast_accum: false,
            ..GemmSpec::fp8(m, n, k)
        }
    }

    pub fn with_ldx(self, ldx: usize) -> Self {
        GemmSpec { ldx, ..self }
    }

    pub fn with_residual(self, residual: bool) -> Self {
        GemmSpec { residual, ..self }
    }

    pub fn with_fast_accum(self, fast_accum: bool) -> Self {
        GemmSpec { fast_accum, ..self }
    }

    /// Floating-point operations of one call (`2·M·N·K`; the residual add is not counted).
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }

    /// Elements `x` spans: `M - 1` strides plus one row.
    pub fn x_len(&self) -> usize {
        (self.m - 1) * self.ldx + self.k
    }

    /// The canonical text of the spec, for cache keys.
    pub fn signature(&self) -> String {
        format!(
            "{} m={} n={} k={} ldx={} residual={} fast_accum={}",
            self.precision.name(),
            self.m,
            self.n,
            self.k,
            self.ldx,
            self.residual as u8,
            self.fast_accum as u8
        )
    }

    /// Refuses shapes that break the alignment rules above.
    pub fn validate(&self) -> Result<(), CublasLtError> {
        let refuse = |problem: String| {
            Err(CublasLtError::Spec {
                spec: self.to_string(),
                problem,
            })
        };
        let sizes = [("M", self.m), ("N", self.n), ("K", self.k), ("ldx", self.ldx)];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return refuse(format!("{name} is 0"));
        }
        if let Some((name, v)) = sizes.iter().find(|(_, v)| *v > i32::MAX as usize) {
            return refuse(format!("{name} = {v} exceeds {}", i32::MAX));
        }
        if self.ldx < self.k {
            return refuse(format!("ldx {} is less than K {}", self.ldx, self.k));
        }
        let multiple = self.precision.row_multiple();
        let what = match self.precision {
            Precision::Fp8E4m3 => "FP8 kernels need 16-byte rows",
            Precision::Bf16 => "lancet keeps every bf16 row 16-byte aligned",
        };
        for (name, value) in &sizes[1..] {
            if value % multiple != 0 {
                return refuse(format!(
                    "{name} = {value} is not a multiple of {multiple} ({what})"
                ));
            }
        }
        if self.fast_accum && self.precision == Precision::Bf16 {
            return refuse("fast accumulation applies to FP8 only".into());
        }
        Ok(())
    }
}

impl fmt::Display for GemmSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (m, n, k) = (self.m, self.n, self.k);
        write!(f, "{} x[{m}, {k}]", self.precision.name())?;
        if self.ldx != self.k {
            write!(f, " (ldx {})", self.ldx)?;
        }
        write!(f, " · w[{n}, {k}]ᵀ")?;
        if self.residual {
            write!(f, " + residual")?;
        }
        if self.fast_accum {
            write!(f, ", fast accumulation")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(spec: GemmSpec) -> String {
        match spec.validate() {
            Err(CublasLtError::Spec { problem, .. }) => problem,
            other => panic!("expected a refusal for {spec}, got {other:?}"),
        }
    }

    #[test]
    fn llama_shapes_and_odd_m_pass() {
        for (n, k) in [(3072, 2048), (2048, 2048), (16384, 2048), (2048, 8192)] {
            GemmSpec::fp8(4096, n, k).validate().unwrap();
            GemmSpec::bf16(4096, n, k).validate().unwrap();
        }
        GemmSpec::fp8(17, 48, 80).with_ldx(96).validate().unwrap();
        GemmSpec::bf16(1, 8, 8).with_residual(true).validate().unwrap();
    }

    #[test]
    fn fp8_alignment_rules_are_explained() {
        assert_eq!(
            problem(GemmSpec::fp8(17, 48, 24)),
            "K = 24 is not a multiple of 16 (FP8 kernels need 16-byte rows)"
        );
        assert!(problem(GemmSpec::fp8(17, 40, 32)).starts_with("N = 40"));
        assert!(problem(GemmSpec::fp8(17, 48, 32).with_ldx(40)).starts_with("ldx = 40"));
        // 8 bf16 elements are 16 bytes: fine for bf16, not for FP8.
        GemmSpec::bf16(17, 40, 24).validate().unwrap();
        assert!(problem(GemmSpec::bf16(17, 40, 20)).contains("multiple of 8"));
    }

    #[test]
    fn other_refusals() {
        assert_eq!(problem(GemmSpec::fp8(0, 16, 16)), "M is 0");
        assert_eq!(
            problem(GemmSpec::fp8(4, 16, 32).with_ldx(16)),
            "ldx 16 is less than K 32"
        );
        assert!(problem(GemmSpec::fp8(1 << 31, 16, 16)).contains("exceeds"));
        assert_eq!(
            problem(GemmSpec::bf16(4, 16, 16).with_fast_accum(true)),
            "fast accumulation applies to FP8 only"
        );
    }

    #[test]
    fn display_signature_and_extent() {
        let spec = GemmSpec::fp8(4096, 2048, 8192).with_residual(true);
        assert_eq!(
            spec.to_string(),
            "fp8e4m3 x[4096, 8192] · w[2048, 8192]ᵀ + residual, fast accumulation"
        );
        assert_eq!(
            spec.signature(),
            "fp8e4m3 m=4096 n=2048 k=8192 ldx=8192 residual=1 fast_accum=1"
        );
        let strided = GemmSpec::bf16(3, 8, 16).with_ldx(24);
        assert_eq!(strided.x_len(), 2 * 24 + 16);
        assert_eq!(strided.flops(), 2.0 * 3.0 * 8.0 * 16.0);
        assert!(strided.to_string().contains("(ldx 24)"));
    }
}
