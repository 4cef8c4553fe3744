//! The graph IR: typed dataflow graphs of transformer ops.
//!
//! Every node has a dtype and a static shape, inferred when it is added; an invalid node is
//! rejected with an error naming the node, its op and the mismatch, so a graph that exists is
//! well-typed.

mod builder;
mod dot;
mod dtype;
mod error;
mod float;
mod graph;
mod infer;
pub mod json;
mod op;
mod program;
mod shape;

pub use builder::{Builder, Tensor};
pub use dot::to_dot;
pub use dtype::DType;
pub use error::{GraphError, Mismatch};
pub use float::Float;
pub use graph::{Graph, Node, NodeId};
pub use infer::{broadcast, infer};
pub use op::{GateAct, GeluApprox, Init, Op, RopeScaling, RopeStyle};
pub use program::{Instr, Operand, Origin, Program};
pub use shape::{Shape, TensorType};
