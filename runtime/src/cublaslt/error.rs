//! cuBLASLt failures, each carrying the library version that was loaded and the call that failed.

use std::fmt;

use thiserror::Error;

pub use crate::native::Status;

/// A cuBLASLt version as `cublasLtGetVersion` reports it: `major·10000 + minor·100 + patch`
/// (`130100` is 13.1.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub usize);

impl Version {
    /// The oldest cuBLASLt lancet accepts: FP8 GEMMs with a bf16 C read at β ≠ 0 (the fused
    /// residual) are documented from 12.0 on.
    pub const MINIMUM: Version = Version(120000);

    pub fn parts(self) -> (usize, usize, usize) {
        let v = self.0;
        (v / 10000, v / 100 % 100, v % 100)
    }

    /// Refuses versions lancet cannot use, saying why.
    pub fn check_supported(self) -> Result<(), CublasLtError> {
        if self < Self::MINIMUM {
            return Err(CublasLtError::Unsupported {
                found: self,
                reason: "lancet needs cuBLASLt 12.0 or newer (FP8 GEMMs with a fused bf16 residual)",
            });
        }
        Ok(())
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (major, minor, patch) = self.parts();
        write!(f, "{major}.{minor}.{patch}")
    }
}

#[derive(Clone, Debug, Error)]
pub enum CublasLtError {
    #[error(
        "cuBLASLt could not be loaded: none of {candidates} was found (lancet needs cuBLASLt 12.0 or newer)"
    )]
    NotFound { candidates: String },
    #[error("cuBLASLt {version}: the library has no symbol `{symbol}`")]
    MissingSymbol { version: String, symbol: &'static str },
    #[error("cuBLASLt {found} is not supported: {reason}")]
    Unsupported { found: Version, reason: &'static str },
    /// A cuBLASLt call returned an error. `call` names the function, the attribute (for the
    /// set-attribute calls) and the GEMM the call was for.
    #[error("cuBLASLt {version}: {call} failed with {status}")]
    Call {
        version: Version,
        call: String,
        status: Status,
    },
    /// A GEMM lancet refuses before asking cuBLASLt, because the answer would be an error or,
    /// worse, a wrong result (see [`GemmSpec::validate`](super::GemmSpec::validate)).
    #[error("unsupported GEMM {spec}: {problem}")]
    Spec { spec: String, problem: String },
    /// No candidate algorithm could run the GEMM (each failure is listed).
    #[error("cuBLASLt {version}: no algorithm runs {spec}: {}", failures.join("; "))]
    NoAlgorithm {
        version: Version,
        spec: String,
        failures: Vec<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_decode_and_old_ones_are_refused() {
        assert_eq!(Version(130100).to_string(), "13.1.0");
        assert_eq!(Version(120901).to_string(), "12.9.1");
        let err = Version(111103).check_supported().unwrap_err().to_string();
        assert!(err.starts_with("cuBLASLt 11.11.3 is not supported"), "{err}");
        assert!(err.contains("12.0 or newer"), "{err}");
        assert!(Version(120000).check_supported().is_ok());
    }

    #[test]
    fn call_errors_name_version_call_and_status() {
        let err = CublasLtError::Call {
            version: Version(130100),
            call: "cublasLtMatmulDescSetAttribute(CUBLASLT_MATMUL_DESC_FAST_ACCUM, 1 byte) for fp8".into(),
            status: Status {
                code: 7,
                name: "CUBLAS_STATUS_INVALID_VALUE".into(),
            },
        };
        assert_eq!(
            err.to_string(),
            "cuBLASLt 13.1.0: cublasLtMatmulDescSetAttribute(CUBLASLT_MATMUL_DESC_FAST_ACCUM, 1 byte) \
             for fp8 failed with CUBLAS_STATUS_INVALID_VALUE (7)"
        );
    }
}
