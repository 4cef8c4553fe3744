//! Errors raised while building a graph: each names the node, its op and what did not fit.

use thiserror::Error;

use super::NodeId;

/// Why an op rejected its operands or attributes.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Mismatch {
    #[error("expects {expected} operand(s), got {got}")]
    Arity { expected: &'static str, got: usize },
    #[error("{0}")]
    Shape(String),
    #[error("{0}")]
    DType(String),
    #[error("{0}")]
    Attribute(String),
}

/// A graph that would be invalid. The message always starts with the node, e.g.
/// `node 17 (linear 'layers.3.mlp.down'): input has 8192 features, weight expects 2048`.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum GraphError {
    #[error("node {node} ({op} '{name}'): {mismatch}")]
    Invalid {
        node: NodeId,
        op: &'static str,
        name: String,
        mismatch: Mismatch,
    },
    #[error("node {node} ({op} '{name}'): operand {operand} refers to node {input}, which is not defined before it")]
    UnknownOperand {
        node: NodeId,
        op: &'static str,
        name: String,
        operand: usize,
        input: NodeId,
    },
    #[error("node {node} ({op} '{name}'): the name is already used by node {previous}")]
    DuplicateName {
        node: NodeId,
        op: &'static str,
        name: String,
        previous: NodeId,
    },
    #[error("node {node} ({op}): inputs, params and outputs need a non-empty name")]
    MissingName { node: NodeId, op: &'static str },
    /// A model configuration that describes no valid graph.
    #[error("model configuration: {0}")]
    Config(String),
}
