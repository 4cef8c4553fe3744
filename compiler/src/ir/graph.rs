//! The dataflow graph: typed nodes on a `petgraph` DAG, validated as they are added.
//!
//! Nodes can only refer to nodes added before them, so insertion order is a topological order
//! and every pass can walk the graph front to back without sorting.

use std::collections::HashMap;
use std::fmt;

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use serde::{Deserialize, Serialize};

use super::{infer, GraphError, Mismatch, Op, TensorType};

/// A node's position in its graph (its insertion index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u32);

impl NodeId {
    pub fn index(self) -> usize {
        self.0 as usize
    }

    fn ix(self) -> NodeIndex<u32> {
        NodeIndex::new(self.index())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One operation with its inferred result type.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    /// Binding name for inputs, params and outputs; a dotted provenance path
    /// (`layers.3.mlp.down`) for everything else. May be empty for anonymous nodes.
    pub name: String,
    pub ty: TensorType,
}

/// A typed dataflow graph. Edges carry the operand slot they feed.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    dag: DiGraph<Node, u32>,
    /// Inputs, params and outputs by name: one namespace, so a binding is never ambiguous.
    bindings: HashMap<String, NodeId>,
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node after checking its operands exist and inferring its type.
    pub fn add(
        &mut self,
        op: Op,
        operands: &[NodeId],
        name: impl Into<String>,
    ) -> Result<NodeId, GraphError> {
        let name = name.into();
        let id = NodeId(self.dag.node_count() as u32);
        let kind = op.kind();
        for (slot, &input) in operands.iter().enumerate() {
            if input.index() >= self.dag.node_count() {
                return Err(GraphError::UnknownOperand {
                    node: id,
                    op: kind,
                    name,
                    operand: slot,
                    input,
                });
            }
        }
        if let Some(slot) = operands
            .iter()
            .position(|&o| matches!(self.dag[o.ix()].op, Op::Output))
        {
            return Err(GraphError::Invalid {
                node: id,
                op: kind,
                name,
                mismatch: Mismatch::Attribute(format!(
                    "operand {slot} is output node {}: read the value it outputs instead",
                    operands[slot]
                )),
            });
        }
        let binds = op.is_leaf() || matches!(op, Op::Output);
        if binds {
            if name.is_empty() {
                return Err(GraphError::MissingName { node: id, op: kind });
            }
            if let Some(&previous) = self.bindings.get(&name) {
                return Err(GraphError::DuplicateName {
                    node: id,
                    op: kind,
                    name,
                    previous,
                });
            }
        }
        let types: Vec<&TensorType> = operands.iter().map(|&i| &self.dag[i.ix()].ty).collect();
        let ty = match infer::infer(&op, &types) {
            Ok(ty) => ty,
            Err(mismatch) => {
                return Err(GraphError::Invalid {
                    node: id,
                    op: kind,
                    name,
                    mismatch,
                })
            }
        };
        if binds {
            self.bindings.insert(name.clone(), id);
        }
        let ix = self.dag.add_node(Node { op, name, ty });
        for (slot, &input) in operands.iter().enumerate() {
            self.dag.add_edge(input.ix(), ix, slot as u32);
        }
        Ok(id)
    }

    pub fn len(&self) -> usize {
        self.dag.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.dag[id.ix()]
    }

    /// All node ids, in topological (insertion) order.
    pub fn ids(&self) -> impl ExactSizeIterator<Item = NodeId> + DoubleEndedIterator {
        (0..self.len() as u32).map(NodeId)
    }

    /// All nodes with their ids, in topological order.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &Node)> {
        self.ids().map(move |id| (id, self.node(id)))
    }

    /// The operands of `id`, in slot order.
    pub fn operands(&self, id: NodeId) -> Vec<NodeId> {
        let mut edges: Vec<(u32, NodeId)> = self
            .dag
            .edges_directed(id.ix(), Direction::Incoming)
            .map(|e| (*e.weight(), NodeId(e.source().index() as u32)))
            .collect();
        edges.sort_unstable();
        edges.into_iter().map(|(_, n)| n).collect()
    }

    /// The nodes that read `id`, once per distinct user, in topological order.
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let mut users: Vec<NodeId> = self
            .dag
            .neighbors_directed(id.ix(), Direction::Outgoing)
            .map(|n| NodeId(n.index() as u32))
            .collect();
        users.sort_unstable();
        users.dedup();
        users
    }

    /// The input, param or output bound to `name`.
    pub fn binding(&self, name: &str) -> Option<NodeId> {
        self.bindings.get(name).copied()
    }

    fn of_kind(&self, pred: impl Fn(&Op) -> bool) -> Vec<NodeId> {
        self.nodes()
            .filter(|(_, n)| pred(&n.op))
            .map(|(id, _)| id)
            .collect()
    }

    pub fn inputs(&self) -> Vec<NodeId> {
        self.of_kind(|op| matches!(op, Op::Input { .. }))
    }

    pub fn params(&self) -> Vec<NodeId> {
        self.of_kind(|op| matches!(op, Op::Param { .. }))
    }

    pub fn outputs(&self) -> Vec<NodeId> {
        self.of_kind(|op| matches!(op, Op::Output))
    }

    /// The underlying petgraph DAG, for graph algorithms.
    pub fn dag(&self) -> &DiGraph<Node, u32> {
        &self.dag
    }
}
