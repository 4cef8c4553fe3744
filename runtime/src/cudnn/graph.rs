//! A cuDNN operation graph as plain data: tensors (uid, type, dims, strides, where the data
//! lives) and operations wired by uid. Op builders (attention, …) produce a [`GraphSpec`];
//! [`OperationGraph`](super::OperationGraph) turns it into backend descriptors.
//!
//! Keeping the description separate from the descriptors makes graph construction testable on
//! machines without cuDNN, and gives every graph a canonical text, its [`signature`]
//! (GraphSpec::signature), which keys cached plans: a change to a builder changes the key.

use std::fmt::Write;

use cudarc::cudnn::sys::{cudnnDataType_t, cudnnPointwiseMode_t, cudnnReduceTensorOp_t};

/// Element types of tensors in lancet's cuDNN graphs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    F32,
    Bf16,
    /// FP8 with 4 exponent and 3 mantissa bits (no infinities; largest finite value 448).
    Fp8E4m3,
    I32,
    Bool,
}

impl DataType {
    pub fn to_cudnn(self) -> cudnnDataType_t {
        match self {
            DataType::F32 => cudnnDataType_t::CUDNN_DATA_FLOAT,
            DataType::Bf16 => cudnnDataType_t::CUDNN_DATA_BFLOAT16,
            DataType::Fp8E4m3 => cudnnDataType_t::CUDNN_DATA_FP8_E4M3,
            DataType::I32 => cudnnDataType_t::CUDNN_DATA_INT32,
            DataType::Bool => cudnnDataType_t::CUDNN_DATA_BOOLEAN,
        }
    }

    fn name(self) -> &'static str {
        match self {
            DataType::F32 => "f32",
            DataType::Bf16 => "bf16",
            DataType::Fp8E4m3 => "e4m3",
            DataType::I32 => "i32",
            DataType::Bool => "bool",
        }
    }
}

/// Where a tensor's values live, which decides whether it appears in the variant pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// A device buffer passed at execution.
    Device,
    /// A host scalar passed at execution by address; cuDNN copies it into the launch.
    ByValue,
    /// An intermediate that only exists inside the fused kernel.
    Virtual,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub uid: i64,
    /// What the tensor is, for error messages (`"Q"`, `"row max"`).
    pub name: &'static str,
    pub dtype: DataType,
    pub dims: Vec<i64>,
    pub strides: Vec<i64>,
    pub storage: Storage,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointwiseMode {
    Add,
    Sub,
    Mul,
    Div,
    Exp,
    Log,
    /// `y = x >= b`.
    CmpGe,
    /// `y[i] = i[axis]`: the index of each element of `x` along `axis`.
    GenIndex {
        axis: i64,
    },
    /// `y = t ? x : b`.
    BinarySelect,
}

impl PointwiseMode {
    pub fn to_cudnn(self) -> cudnnPointwiseMode_t {
        use cudnnPointwiseMode_t::*;
        match self {
            PointwiseMode::Add => CUDNN_POINTWISE_ADD,
            PointwiseMode::Sub => CUDNN_POINTWISE_SUB,
            PointwiseMode::Mul => CUDNN_POINTWISE_MUL,
            PointwiseMode::Div => CUDNN_POINTWISE_DIV,
            PointwiseMode::Exp => CUDNN_POINTWISE_EXP,
            PointwiseMode::Log => CUDNN_POINTWISE_LOG,
            PointwiseMode::CmpGe => CUDNN_POINTWISE_CMP_GE,
            PointwiseMode::GenIndex { .. } => CUDNN_POINTWISE_GEN_INDEX,
            PointwiseMode::BinarySelect => CUDNN_POINTWISE_BINARY_SELECT,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Max,
    Add,
    /// The largest absolute value: what FP8 scaling recipes derive their next scale from.
    AMax,
}

impl ReduceOp {
    pub fn to_cudnn(self) -> cudnnReduceTensorOp_t {
        match self {
            ReduceOp::Max => cudnnReduceTensorOp_t::CUDNN_REDUCE_TENSOR_MAX,
            ReduceOp::Add => cudnnReduceTensorOp_t::CUDNN_REDUCE_TENSOR_ADD,
            ReduceOp::AMax => cudnnReduceTensorOp_t::CUDNN_REDUCE_TENSOR_AMAX,
        }
    }
}

/// One operation; operands are tensor uids. Matmuls and reductions compute in f32.
#[derive(Clone, Debug, PartialEq)]
pub enum OpSpec {
    /// `c = a · b` over the last two dims, batched (and broadcast) over the leading ones.
    Matmul {
        name: &'static str,
        a: i64,
        b: i64,
        c: i64,
    },
    /// `y = mode(x, b, t)`, computed in `precision`.
    Pointwise {
        mode: PointwiseMode,
        precision: DataType,
        x: i64,
        b: Option<i64>,
        t: Option<i64>,
        y: i64,
    },
    /// `y = op(x)` over the axes where `y` has size 1.
    Reduction { op: ReduceOp, x: i64, y: i64 },
}

impl OpSpec {
    /// A label for error messages: the op and the uids it writes.
    pub fn label(&self) -> String {
        match self {
            OpSpec::Matmul { name, c, .. } => format!("matmul {name} -> {c}"),
            OpSpec::Pointwise { mode, y, .. } => format!("pointwise {mode:?} -> {y}"),
            OpSpec::Reduction { op, y, .. } => format!("reduction {op:?} -> {y}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct GraphSpec {
    pub tensors: Vec<TensorSpec>,
    pub ops: Vec<OpSpec>,
}

impl GraphSpec {
    pub fn tensor(&self, uid: i64) -> Option<&TensorSpec> {
        self.tensors.iter().find(|t| t.uid == uid)
    }

    /// The uids that need an address at execution (device buffers and by-value scalars).
    pub fn io_uids(&self) -> Vec<i64> {
        self.tensors
            .iter()
            .filter(|t| t.storage != Storage::Virtual)
            .map(|t| t.uid)
            .collect()
    }

    /// Canonical text of the whole graph: every tensor and op, in order.
    pub fn signature(&self) -> String {
        let mut s = String::new();
        for t in &self.tensors {
            let storage = match t.storage {
                Storage::Device => "dev",
                Storage::ByValue => "val",
                Storage::Virtual => "virt",
            };
            let _ = write!(
                s,
                "t{}:{}:{}:{:?}:{:?};",
                t.uid,
                t.dtype.name(),
                storage,
                t.dims,
                t.strides
            );
        }
        for op in &self.ops {
            let _ = match op {
                OpSpec::Matmul { a, b, c, .. } => write!(s, "mm({a},{b})->{c};"),
                OpSpec::Pointwise {
                    mode,
                    precision,
                    x,
                    b,
                    t,
                    y,
                } => write!(s, "pw:{mode:?}:{}({x},{b:?},{t:?})->{y};", precision.name()),
                OpSpec::Reduction { op, x, y } => write!(s, "red:{op:?}({x})->{y};"),
            };
        }
        s
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Structural checks every builder's output must pass: unique uids, operands that exist,
    /// every tensor written at most once, and only virtual tensors or the outputs written.
    pub(crate) fn check_well_formed(g: &GraphSpec) {
        let uids: HashSet<_> = g.tensors.iter().map(|t| t.uid).collect();
        assert_eq!(uids.len(), g.tensors.len(), "duplicate uids");
        let mut written = HashSet::new();
        for op in &g.ops {
            let (inputs, output) = match *op {
                OpSpec::Matmul { a, b, c, .. } => (vec![Some(a), Some(b)], c),
                OpSpec::Pointwise { x, b, t, y, .. } => (vec![Some(x), b, t], y),
                OpSpec::Reduction { x, y, .. } => (vec![Some(x)], y),
            };
            for uid in inputs.into_iter().flatten() {
                assert!(uids.contains(&uid), "{}: unknown operand {uid}", op.label());
                let t = g.tensor(uid).unwrap();
                assert!(
                    t.storage != Storage::Virtual || written.contains(&uid),
                    "{}: reads virtual {uid} before it is written",
                    op.label()
                );
            }
            assert!(written.insert(output), "{}: {output} written twice", op.label());
            let out = g
                .tensor(output)
                .unwrap_or_else(|| panic!("{}: unknown output", op.label()));
            assert_ne!(
                out.storage,
                Storage::ByValue,
                "{}: writes a by-value scalar",
                op.label()
            );
        }
        for t in &g.tensors {
            assert_eq!(t.dims.len(), t.strides.len(), "tensor {}", t.uid);
            if t.storage == Storage::Virtual {
                assert!(written.contains(&t.uid), "virtual {} never written", t.uid);
            }
        }
    }
}
