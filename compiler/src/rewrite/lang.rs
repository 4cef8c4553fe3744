//! The e-graph language: IR ops as e-nodes.
//!
//! Instead of `define_language!`, which only carries data on leaves, an e-node is an IR [`Op`]
//! (with all its attributes) plus child e-classes, so every op — fused kernels included — has
//! exactly one representation in both worlds and translation is a field copy. Leaves carry their
//! binding name: two weights of the same shape are different values.

use egg::{Id, Language};

use crate::ir::Op;

/// One e-node: an op, the binding name of a leaf, and the e-classes of its operands in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ENode {
    pub op: Op,
    pub leaf: Option<String>,
    pub children: Vec<Id>,
}

impl ENode {
    pub fn new(op: Op, children: Vec<Id>) -> Self {
        ENode {
            op,
            leaf: None,
            children,
        }
    }
}

impl Language for ENode {
    type Discriminant = (Op, Option<String>);

    fn discriminant(&self) -> Self::Discriminant {
        (self.op.clone(), self.leaf.clone())
    }

    fn matches(&self, other: &Self) -> bool {
        self.op == other.op && self.leaf == other.leaf && self.children.len() == other.children.len()
    }

    fn children(&self) -> &[Id] {
        &self.children
    }

    fn children_mut(&mut self) -> &mut [Id] {
        &mut self.children
    }
}
