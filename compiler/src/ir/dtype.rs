//! Element types a tensor can hold.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The element type of a tensor.
///
/// The FP8 formats follow the OCP "FP8 Formats for Deep Learning" spec that NVIDIA's `__nv_fp8_*`
/// types implement: e4m3 has no infinities and saturates at ±448, e5m2 is IEEE-like up to ±57344.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    BF16,
    F16,
    F8E4M3,
    F8E5M2,
    I32,
    I64,
}

impl DType {
    /// Bytes one element occupies in device memory.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::F8E4M3 | DType::F8E5M2 => 1,
            DType::I64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        !self.is_int()
    }

    pub fn is_int(self) -> bool {
        matches!(self, DType::I32 | DType::I64)
    }

    pub fn is_fp8(self) -> bool {
        matches!(self, DType::F8E4M3 | DType::F8E5M2)
    }

    /// Short name used in JSON, DOT labels and error messages.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::F8E4M3 => "f8e4m3",
            DType::F8E5M2 => "f8e5m2",
            DType::I32 => "i32",
            DType::I64 => "i64",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
