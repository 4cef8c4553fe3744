//! What can be wrong with a checkpoint or a tensor file, each error naming the file and the
//! field or tensor at fault.

use std::path::PathBuf;

use thiserror::Error;

use crate::weights::InitError;

#[derive(Debug, Error)]
pub enum CheckpointError {
    // The underlying errors are part of the message, not `#[source]`s, so that printing the
    // error chain does not repeat them.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: not valid JSON: {error}")]
    Json { path: PathBuf, error: serde_json::Error },
    #[error("{path}: field '{field}': {message}")]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{path}: not a valid safetensors file: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: no tensor '{tensor}' ({needed_for})")]
    MissingTensor {
        path: PathBuf,
        tensor: String,
        needed_for: String,
    },
    #[error("{path}: tensor '{tensor}' has shape {found:?}, expected {expected}")]
    Shape {
        path: PathBuf,
        tensor: String,
        found: Vec<usize>,
        expected: String,
    },
    #[error("{path}: tensor '{tensor}' is {dtype}; lancet reads {supported}")]
    Dtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
        supported: &'static str,
    },
    #[error("{path}: tensor '{tensor}': {message}")]
    Value {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    #[error("{path} exists; pass --force to overwrite it")]
    Exists { path: PathBuf },
    #[error(transparent)]
    Init(#[from] InitError),
}

impl CheckpointError {
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        CheckpointError::Io {
            path: path.into(),
            error,
        }
    }

    pub(crate) fn field(path: impl Into<PathBuf>, field: &str, message: impl Into<String>) -> Self {
        CheckpointError::Field {
            path: path.into(),
            field: field.to_string(),
            message: message.into(),
        }
    }
}
