//! Materializes a [`GraphSpec`] as backend descriptors: one tensor descriptor per tensor, one
//! operation descriptor (plus its inner pointwise / reduction / matmul descriptor) per op, and
//! the finalized operation graph, following the attribute order cuDNN's own frontend uses.

use std::collections::HashMap;

use cudarc::cudnn::sys::{
    cudnnBackendAttributeName_t::*, cudnnBackendDescriptorType_t::*, cudnnDataType_t::CUDNN_DATA_FLOAT,
};

use super::descriptor::Descriptor;
use super::error::CudnnError;
use super::graph::{GraphSpec, OpSpec, PointwiseMode, Storage, TensorSpec};
use super::handle::Handle;
use super::library::Library;

/// Every non-unit global stride of Hopper's TMA loads must be a multiple of 16 bytes, and cuDNN
/// assumes this alignment for every tensor's base address; lancet's buffers guarantee it.
pub const BYTE_ALIGNMENT: i64 = 16;

/// A finalized operation graph and the descriptors it was built from.
pub struct OperationGraph {
    // Declared first so it is dropped before the descriptors it references.
    desc: Descriptor,
    _parts: Vec<Descriptor>,
}

impl OperationGraph {
    pub fn new(handle: &Handle, spec: &GraphSpec) -> Result<Self, CudnnError> {
        let lib = handle.library();
        let tensors = spec
            .tensors
            .iter()
            .map(|t| Ok((t.uid, tensor(lib, t)?)))
            .collect::<Result<HashMap<_, _>, CudnnError>>()?;
        let mut inner = Vec::new();
        let ops = spec
            .ops
            .iter()
            .map(|op| operation(lib, op, &tensors, &mut inner))
            .collect::<Result<Vec<_>, _>>()?;
        let mut desc = Descriptor::new(lib, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph")?;
        desc.set_descriptors(CUDNN_ATTR_OPERATIONGRAPH_OPS, &ops.iter().collect::<Vec<_>>())?;
        desc.set_handle(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, handle)?;
        desc.finalize()?;
        let mut parts = ops;
        parts.extend(inner);
        parts.extend(tensors.into_values());
        Ok(OperationGraph { desc, _parts: parts })
    }

    pub fn descriptor(&self) -> &Descriptor {
        &self.desc
    }
}

fn tensor(lib: &'static Library, t: &TensorSpec) -> Result<Descriptor, CudnnError> {
    let mut d = Descriptor::new(
        lib,
        CUDNN_BACKEND_TENSOR_DESCRIPTOR,
        format!("{} (uid {})", t.name, t.uid),
    )?;
    d.set(CUDNN_ATTR_TENSOR_DATA_TYPE, &[t.dtype.to_cudnn()])?;
    d.set(CUDNN_ATTR_TENSOR_DIMENSIONS, &t.dims)?;
    d.set(CUDNN_ATTR_TENSOR_STRIDES, &t.strides)?;
    d.set(CUDNN_ATTR_TENSOR_UNIQUE_ID, &[t.uid])?;
    d.set(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, &[BYTE_ALIGNMENT])?;
    match t.storage {
        Storage::Device => {}
        Storage::ByValue => d.set(CUDNN_ATTR_TENSOR_IS_BY_VALUE, &[true])?,
        Storage::Virtual => d.set(CUDNN_ATTR_TENSOR_IS_VIRTUAL, &[true])?,
    }
    d.finalize()?;
    Ok(d)
}

/// The operation descriptor for `op`; its inner descriptor goes to `inner`, to be kept alive.
fn operation(
    lib: &'static Library,
    op: &OpSpec,
    tensors: &HashMap<i64, Descriptor>,
    inner: &mut Vec<Descriptor>,
) -> Result<Descriptor, CudnnError> {
    let label = op.label();
    let operand = |uid: i64| {
        tensors.get(&uid).ok_or_else(|| CudnnError::UnknownTensor {
            op: label.clone(),
            uid,
        })
    };
    let mut d = match *op {
        OpSpec::Matmul { a, b, c, .. } => {
            let mut mm = Descriptor::new(lib, CUDNN_BACKEND_MATMUL_DESCRIPTOR, &label)?;
            mm.set(CUDNN_ATTR_MATMUL_COMP_TYPE, &[CUDNN_DATA_FLOAT])?;
            mm.finalize()?;
            let mut d = Descriptor::new(lib, CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, &label)?;
            d.set_descriptors(CUDNN_ATTR_OPERATION_MATMUL_ADESC, &[operand(a)?])?;
            d.set_descriptors(CUDNN_ATTR_OPERATION_MATMUL_BDESC, &[operand(b)?])?;
            d.set_descriptors(CUDNN_ATTR_OPERATION_MATMUL_CDESC, &[operand(c)?])?;
            d.set_descriptors(CUDNN_ATTR_OPERATION_MATMUL_DESC, &[&mm])?;
            inner.push(mm);
            d
        }
        OpSpec::Pointwise {
            mode,
            precision,
            x,
            b,
            t,
            y,
        } => {
            let mut pw = Descriptor::new(lib, CUDNN_BACKEND_POINTWISE_DESCRIPTOR, &label)?;
            pw.set(CUDNN_ATTR_POINTWISE_MODE, &[mode.to_cudnn()])?;
            pw.set(CUDNN_ATTR_POINTWISE_MATH_PREC, &[precision.to_cudnn()])?;
            if let PointwiseMode::GenIndex { axis } = mode {
                pw.set(CUDNN_ATTR_POINTWISE_AXIS, &[axis])?;
            }
            pw.finalize()?;
            let mut d = Descriptor::new(lib, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, &label)?;
            d.set_descriptors(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, &[&pw])?;
            d.set_descriptors(CUDNN_ATTR_OPERATION_POINTWISE_XDESC, &[operand(x)?])?;
            d.set_descriptors(CUDNN_ATTR_OPERATION_POINTWISE_YDESC, &[operand(y)?])?;
            if let Some(b) = b {
                d.set_descriptors(CUDNN_ATTR_OPERATION_POINTWISE_BDESC, &[operand(b)?])?;
            }
            if let Some(t) = t {
                d.set_descriptors(CUDNN_ATTR_OPERATION_POINTWISE_TDESC, &[operand(t)?])?;
            }
            // The runtime-fusion engines require both scaling factors to be exactly 1.
            d.set(CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, &[1.0f32])?;
            d.set(CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, &[1.0f32])?;
            inner.push(pw);
            d
        }
        OpSpec::Reduction { op: reduce, x, y } => {
            let mut red = Descriptor::new(lib, CUDNN_BACKEND_REDUCTION_DESCRIPTOR, &label)?;
            red.set(CUDNN_ATTR_REDUCTION_COMP_TYPE, &[CUDNN_DATA_FLOAT])?;
            red.set(CUDNN_ATTR_REDUCTION_OPERATOR, &[reduce.to_cudnn()])?;
            red.set(CUDNN_ATTR_REDUCTION_IS_DETERMINISTIC, &[false])?;
            red.finalize()?;
            let mut d = Descriptor::new(lib, CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, &label)?;
            d.set_descriptors(CUDNN_ATTR_OPERATION_REDUCTION_DESC, &[&red])?;
            d.set_descriptors(CUDNN_ATTR_OPERATION_REDUCTION_XDESC, &[operand(x)?])?;
            d.set_descriptors(CUDNN_ATTR_OPERATION_REDUCTION_YDESC, &[operand(y)?])?;
            inner.push(red);
            d
        }
    };
    d.finalize()?;
    Ok(d)
}
