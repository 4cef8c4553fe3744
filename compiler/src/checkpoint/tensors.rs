//! Safetensors files: read memory-mapped (each tensor is decoded from the mapping, so a file is
//! never read into memory whole), decoded to the f32 the rest of lancet holds; and written from
//! f32.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::tensor::{Metadata, TensorInfo, TensorView};
use safetensors::{Dtype, SafeTensors};

use super::CheckpointError;
use crate::ir::DType;
use crate::reference::Array;

/// The float dtypes a tensor may have.
const FLOATS: &str = "bf16, f16 or f32 tensors";

/// One open safetensors file.
pub struct TensorFile {
    path: PathBuf,
    mmap: Mmap,
    /// Where the tensor data starts: after the 8-byte length and the JSON header.
    data_start: usize,
    metadata: Metadata,
}

impl TensorFile {
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let file = File::open(path).map_err(|e| CheckpointError::io(path, e))?;
        // SAFETY: the map is read-only and lives as long as `self`; a file truncated underneath
        // it by another process is the one case this cannot guard against, as for any mmap.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| CheckpointError::io(path, e))?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| CheckpointError::Format {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        // `read_metadata` has checked that the tensors tile the data exactly, each as large as
        // its dtype and shape say.
        Ok(TensorFile {
            path: path.to_path_buf(),
            mmap,
            data_start: 8 + header_len,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The names of the tensors, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.metadata.tensors().into_keys().collect();
        names.sort();
        names
    }

    /// The raw little-endian bytes of float tensor `name`, with its dtype (`None` for a missing
    /// or non-float tensor).
    pub fn raw(&self, name: &str) -> Option<(DType, &[u8])> {
        let info = self.metadata.info(name)?;
        let dtype = match info.dtype {
            Dtype::BF16 => DType::BF16,
            Dtype::F16 => DType::F16,
            Dtype::F32 => DType::F32,
            _ => return None,
        };
        Some((
            dtype,
            &self.mmap[self.data_start + info.data_offsets.0..self.data_start + info.data_offsets.1],
        ))
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.metadata.info(name)
    }

    /// The tensor `name` as f32: floats widened exactly, integers converted when f32 holds them
    /// exactly (token ids), anything else refused by name.
    pub fn read(&self, name: &str) -> Result<Option<Array>, CheckpointError> {
        let Some(info) = self.metadata.info(name) else {
            return Ok(None);
        };
        let bytes = &self.mmap[self.data_start + info.data_offsets.0..self.data_start + info.data_offsets.1];
        let data = self.decode(name, info.dtype, bytes)?;
        Ok(Some(
            Array::new(info.shape.clone(), data).expect("read_metadata checked the size"),
        ))
    }

    fn decode(&self, name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>, CheckpointError> {
        fn words<const N: usize>(bytes: &[u8]) -> impl IndexedParallelIterator<Item = [u8; N]> + '_ {
            bytes
                .par_chunks_exact(N)
                .map(|c| c.try_into().expect("chunks of N"))
        }
        let exact_int = |x: i64| -> Result<f32, CheckpointError> {
            if x.unsigned_abs() <= 1 << 24 {
                Ok(x as f32)
            } else {
                Err(CheckpointError::Value {
                    path: self.path.clone(),
                    tensor: name.to_string(),
                    message: format!("integer {x} is too large to be a token id"),
                })
            }
        };
        Ok(match dtype {
            Dtype::F32 => words::<4>(bytes).map(f32::from_le_bytes).collect(),
            Dtype::BF16 => words::<2>(bytes)
                .map(|w| bf16::from_le_bytes(w).to_f32())
                .collect(),
            Dtype::F16 => words::<2>(bytes)
                .map(|w| f16::from_le_bytes(w).to_f32())
                .collect(),
            Dtype::I64 => words::<8>(bytes)
                .map(|w| exact_int(i64::from_le_bytes(w)))
                .collect::<Result<_, _>>()?,
            Dtype::I32 => words::<4>(bytes)
                .map(|w| exact_int(i32::from_le_bytes(w).into()))
                .collect::<Result<_, _>>()?,
            other => {
                return Err(CheckpointError::Dtype {
                    path: self.path.clone(),
                    tensor: name.to_string(),
                    dtype: format!("{other:?}"),
                    supported: "bf16, f16, f32, i32 or i64 tensors",
                })
            }
        })
    }

    /// Every tensor of the file, as f32 arrays by name.
    pub fn read_all(&self) -> Result<HashMap<String, Array>, CheckpointError> {
        self.names()
            .into_iter()
            .map(|name| {
                let array = self.read(&name)?.expect("listed names exist");
                Ok((name, array))
            })
            .collect()
    }

    /// Refuses a tensor that is not a float (weights must be bf16, f16 or f32).
    pub fn require_float(&self, name: &str) -> Result<(), CheckpointError> {
        match self.metadata.info(name).map(|i| i.dtype) {
            Some(Dtype::F32 | Dtype::BF16 | Dtype::F16) | None => Ok(()),
            Some(other) => Err(CheckpointError::Dtype {
                path: self.path.clone(),
                tensor: name.to_string(),
                dtype: format!("{other:?}"),
                supported: FLOATS,
            }),
        }
    }
}

/// Every tensor of a safetensors file, as f32 arrays by name.
pub fn read_all(path: &Path) -> Result<HashMap<String, Array>, CheckpointError> {
    TensorFile::open(path)?.read_all()
}

/// Fails unless `path` can be written: its folder exists, and the file does not unless `force`.
/// Checked before a run, so a typo costs nothing.
pub fn check_writable(path: &Path, force: bool) -> Result<(), CheckpointError> {
    if path.exists() && !force {
        return Err(CheckpointError::Exists {
            path: path.to_path_buf(),
        });
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(CheckpointError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "its folder does not exist"),
        ));
    }
    Ok(())
}

/// Writes `tensors` as f32 to a safetensors file (through a temporary file renamed over it, so
/// a reader never sees half of one); an existing file is replaced only when `force` is set.
pub fn write_f32(path: &Path, tensors: &[(String, &Array)], force: bool) -> Result<(), CheckpointError> {
    check_writable(path, force)?;
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, a)| a.data.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, a), b)| {
            let view =
                TensorView::new(Dtype::F32, a.shape.dims().to_vec(), b).expect("f32 bytes of the shape");
            (name.clone(), view)
        })
        .collect::<Vec<_>>();
    let file = safetensors::serialize(views, None).map_err(|e| CheckpointError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, file)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| CheckpointError::io(path, e))
}
