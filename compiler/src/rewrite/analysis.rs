//! The e-graph analysis: every e-class knows its type, so rules check types before adding.

use std::collections::BTreeSet;

use egg::{Analysis, DidMerge, EGraph, Id};

use super::lang::ENode;
use crate::ir::{infer, TensorType};

/// What an e-class knows about its value.
#[derive(Clone, Debug)]
pub struct ClassData {
    pub ty: TensorType,
    /// Names of the graph nodes in this class (provenance for extraction and kernel headers).
    pub names: BTreeSet<String>,
    /// A topological level: above every operand's, for the first e-node that made the class;
    /// the least over merged classes. Identity rules (`reshape(x) = x`) make e-graphs cyclic;
    /// a rule that only builds on classes of strictly lower rank cannot grow around a cycle.
    pub rank: usize,
}

/// Types every e-node by the IR's own inference. Rules only propose e-nodes that type-check
/// (see [`super::rule::typed`]), so `make` never sees an ill-typed node.
#[derive(Default)]
pub struct Types {
    /// E-classes that are graph outputs: each counts as one more consumer.
    pub roots: Vec<Id>,
}

pub type Graph = EGraph<ENode, Types>;

impl Analysis<ENode> for Types {
    type Data = ClassData;

    fn make(egraph: &mut Graph, enode: &ENode, _id: Id) -> ClassData {
        let ty = infer_enode(egraph, enode).unwrap_or_else(|m| panic!("ill-typed e-node {enode:?}: {m}"));
        let rank = enode
            .children
            .iter()
            .map(|&c| egraph[c].data.rank + 1)
            .max()
            .unwrap_or(0);
        ClassData {
            ty,
            names: BTreeSet::new(),
            rank,
        }
    }

    fn merge(&mut self, a: &mut ClassData, b: ClassData) -> DidMerge {
        assert_eq!(a.ty, b.ty, "a rule merged values of different types");
        let (a_names, b_names) = (a.names.len(), b.names.len());
        let (a_rank, b_rank) = (a.rank, b.rank);
        a.names.extend(b.names);
        a.rank = a_rank.min(b_rank);
        DidMerge(
            a.names.len() != a_names || a.rank != a_rank,
            a.names.len() != b_names || a.rank != b_rank,
        )
    }
}

/// The type `enode` would have, from its children's types.
pub fn infer_enode(egraph: &Graph, enode: &ENode) -> Result<TensorType, crate::ir::Mismatch> {
    let types: Vec<&TensorType> = enode.children.iter().map(|&c| &egraph[c].data.ty).collect();
    infer(&enode.op, &types)
}
