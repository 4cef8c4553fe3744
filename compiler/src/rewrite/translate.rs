//! Graph ⇄ e-graph: a graph goes in node by node; the cheapest e-node of each needed class comes
//! back out as a graph again.

use std::collections::HashMap;

use egg::{Extractor, Id};

use super::analysis::{Graph as EGraph, Types};
use super::cost::TimeCost;
use super::lang::ENode;
use crate::ir::{Graph, GraphError, NodeId, Op};

/// The e-graph of `graph`, and its outputs as (name, e-class) in graph order.
pub fn to_egraph(graph: &Graph) -> (EGraph, Vec<(String, Id)>) {
    let mut egraph = EGraph::new(Types::default());
    let mut class: Vec<Id> = Vec::with_capacity(graph.len());
    let mut outputs = Vec::new();
    for (id, node) in graph.nodes() {
        let children: Vec<Id> = graph.operands(id).iter().map(|o| class[o.index()]).collect();
        if node.op == Op::Output {
            outputs.push((node.name.clone(), children[0]));
            class.push(children[0]);
            continue;
        }
        let enode = ENode {
            op: node.op.clone(),
            leaf: node.op.is_leaf().then(|| node.name.clone()),
            children,
        };
        let c = egraph.add(enode);
        if !node.name.is_empty() {
            egraph[c].data.names.insert(node.name.clone());
        }
        class.push(c);
    }
    egraph.analysis.roots = outputs.iter().map(|(_, c)| *c).collect();
    egraph.rebuild();
    (egraph, outputs)
}

/// The graph made of the cheapest e-node of every class the outputs need, and its estimated cost
/// in ns (the sum over the extracted graph, each class counted once).
pub fn extract(egraph: &EGraph, outputs: &[(String, Id)]) -> Result<(Graph, f64), GraphError> {
    let extractor = Extractor::new(egraph, TimeCost { egraph });
    let mut graph = Graph::new();
    let mut done: HashMap<Id, NodeId> = HashMap::new();
    let mut cost = 0.0;
    for (name, root) in outputs {
        // Post-order DFS with an explicit stack: deep graphs must not overflow the call stack.
        let mut stack = vec![(egraph.find(*root), false)];
        while let Some((class, expanded)) = stack.pop() {
            if done.contains_key(&class) {
                continue;
            }
            let node = extractor.find_best_node(class);
            if !expanded {
                stack.push((class, true));
                stack.extend(node.children.iter().map(|&c| (egraph.find(c), false)));
                continue;
            }
            let operands: Vec<NodeId> = node.children.iter().map(|&c| done[&egraph.find(c)]).collect();
            let name = match (&node.leaf, &node.op) {
                (Some(leaf), _) => leaf.clone(),
                (None, Op::Fused { program }) => program
                    .instrs
                    .last()
                    .map(|i| i.origin.0.clone())
                    .unwrap_or_default(),
                (None, _) => egraph[class]
                    .data
                    .names
                    .iter()
                    .next()
                    .cloned()
                    .unwrap_or_default(),
            };
            let types: Vec<_> = node.children.iter().map(|&c| &egraph[c].data.ty).collect();
            let read = {
                let mut distinct: Vec<Id> = node.children.iter().map(|&c| egraph.find(c)).collect();
                distinct.sort_unstable();
                distinct.dedup();
                distinct.iter().map(|&c| egraph[c].data.ty.size_bytes()).sum()
            };
            cost += super::cost::local_cost(&node.op, &egraph[class].data.ty, &types, read);
            let id = graph.add(node.op.clone(), &operands, name)?;
            done.insert(class, id);
        }
        graph.add(Op::Output, &[done[&egraph.find(*root)]], name.clone())?;
    }
    Ok((graph, cost))
}
