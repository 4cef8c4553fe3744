//! cuDNN failures, each carrying the library version that was loaded and the call that failed.

use std::fmt;

use thiserror::Error;

pub use crate::native::Status;

/// A cuDNN library version as `cudnnGetVersion` reports it (`91400` is 9.14.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub usize);

impl Version {
    /// The oldest cuDNN lancet accepts. Its graphs follow what cuDNN 9's own frontend builds;
    /// cuDNN 8 lacks pieces of them, and 9.0 is untested.
    pub const MINIMUM: Version = Version(90100);

    /// `(major, minor, patch)`. cuDNN 9 encodes `major·10000 + minor·100 + patch`; cuDNN 8 and
    /// older used `major·1000 + minor·100 + patch`.
    pub fn parts(self) -> (usize, usize, usize) {
        let v = self.0;
        if v >= 90000 {
            (v / 10000, v / 100 % 100, v % 100)
        } else {
            (v / 1000, v / 100 % 10, v % 100)
        }
    }

    /// Refuses versions lancet cannot use, saying why.
    pub fn check_supported(self) -> Result<(), CudnnError> {
        let reason = if self < Self::MINIMUM {
            "lancet needs cuDNN 9.1 or newer"
        } else if (91000..91002).contains(&self.0) {
            "NVIDIA lists bf16 fused attention forward as broken in 9.10.0 and 9.10.1; use 9.10.2 or newer"
        } else {
            return Ok(());
        };
        Err(CudnnError::Unsupported { found: self, reason })
    }

    /// The first cuDNN lancet knows to compute FP8 attention correctly. 9.14 (as Ubuntu packages
    /// it) runs the FP8 graph at head_dim 64 without any error and returns results off by a
    /// relative L2 of 1.6–5.4 at sequence 2048; 9.19 (PyTorch's pip wheel) is right on the same
    /// machine. (Versions NVIDIA's frontend declines FP8 attention on, before 9.1.0 and 9.10.0,
    /// are refused at load already.)
    pub const FP8_ATTENTION_KNOWN_RIGHT: Version = Version(91900);
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (major, minor, patch) = self.parts();
        write!(f, "{major}.{minor}.{patch}")
    }
}

#[derive(Clone, Debug, Error)]
pub enum CudnnError {
    #[error("cuDNN could not be loaded: none of {candidates} was found (lancet needs cuDNN 9.1 or newer)")]
    NotFound { candidates: String },
    /// The cuDNN that [`Library::ENV_VAR`](super::Library::ENV_VAR) names cannot be used.
    #[error("cuDNN could not be loaded from {var}={path}: {problem}")]
    Configured {
        var: &'static str,
        path: String,
        problem: String,
    },
    #[error("cuDNN {version}: the library has no symbol `{symbol}`")]
    MissingSymbol { version: String, symbol: &'static str },
    #[error("cuDNN {found} is not supported: {reason}")]
    Unsupported { found: Version, reason: &'static str },
    /// A cuDNN call returned an error. `call` names the function, the descriptor type, the
    /// attribute and which part of lancet's graph the descriptor stands for.
    #[error("cuDNN {version}: {call} failed with {status}{}", detail(message))]
    Call {
        version: Version,
        call: String,
        status: Status,
        message: String,
    },
    /// A plan cuDNN built without complaint computed wrong results when lancet checked it
    /// against its own reference. `advice` says what to do about it.
    #[error(
        "cuDNN {version} computes {what} wrongly: relative L2 error {rel_l2:.3e} against lancet's \
         f64 reference, bound {bound}. {advice}"
    )]
    WrongResults {
        version: Version,
        what: String,
        rel_l2: f64,
        bound: f64,
        advice: String,
    },
    /// A graph operation names a tensor the graph does not declare (a graph-builder bug).
    #[error("graph operation `{op}` refers to tensor uid {uid}, which the graph does not declare")]
    UnknownTensor { op: String, uid: i64 },
    /// cuDNN accepted the graph but none of the engine configurations it proposed built a plan.
    #[error("cuDNN {version}: no engine builds a plan for {graph}; tried: {}", attempts.join("; "))]
    NoEngine {
        version: Version,
        graph: String,
        attempts: Vec<String>,
    },
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_decode_both_schemes() {
        assert_eq!(Version(91400).to_string(), "9.14.0");
        assert_eq!(Version(91902).to_string(), "9.19.2");
        assert_eq!(Version(8907).to_string(), "8.9.7");
    }

    #[test]
    fn old_and_known_bad_versions_are_refused_by_name() {
        let err = Version(8907).check_supported().unwrap_err().to_string();
        assert!(
            err.contains("cuDNN 8.9.7") && err.contains("9.1 or newer"),
            "{err}"
        );
        let err = Version(91001).check_supported().unwrap_err().to_string();
        assert!(err.contains("9.10.1"), "{err}");
        assert!(Version(91002).check_supported().is_ok());
        assert!(Version(91400).check_supported().is_ok());
    }

    #[test]
    fn call_errors_name_version_call_and_message() {
        let err = CudnnError::Call {
            version: Version(91400),
            call: "cudnnBackendFinalize on CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR `bmm1`".into(),
            status: Status {
                code: 3000,
                name: "CUDNN_STATUS_NOT_SUPPORTED".into(),
            },
            message: "shape mismatch".into(),
        };
        assert_eq!(
            err.to_string(),
            "cuDNN 9.14.0: cudnnBackendFinalize on CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR `bmm1` \
             failed with CUDNN_STATUS_NOT_SUPPORTED (3000): shape mismatch"
        );
    }
}
