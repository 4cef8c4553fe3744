//! The runtime's error type: one enum over the failures of each layer, so callers (the executor,
//! the CLI) handle a single type while the messages keep each layer's evidence.

use thiserror::Error;

use crate::attention::SpecError;
use crate::cublaslt::CublasLtError;
use crate::cudnn::CudnnError;
use crate::device::DeviceError;
use crate::exec::ExecError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Cudnn(#[from] CudnnError),
    #[error(transparent)]
    Cublaslt(#[from] CublasLtError),
    #[error(transparent)]
    AttentionSpec(#[from] SpecError),
    /// A device buffer handed to an op does not fit what the op's plan was built for.
    #[error("{op}: buffer `{buffer}` {problem}")]
    Buffer {
        op: &'static str,
        buffer: &'static str,
        problem: String,
    },
}
