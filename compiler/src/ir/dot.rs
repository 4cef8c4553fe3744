//! Graphviz DOT rendering, for looking at a graph before and after rewriting.

use std::fmt::Write;

use super::{Graph, Op};

/// Renders `graph` as a DOT digraph: one box per node (`id op 'name'` over its type), params
/// greyed so the dataflow stands out, edges labelled with the operand slot when an op has several.
pub fn to_dot(graph: &Graph, title: &str) -> String {
    let mut out = String::new();
    writeln!(out, "digraph \"{}\" {{", escape(title)).unwrap();
    writeln!(out, "  rankdir=TB;").unwrap();
    writeln!(out, "  node [shape=box, fontname=\"monospace\", fontsize=10];").unwrap();
    for (id, node) in graph.nodes() {
        let style = match node.op {
            Op::Param { .. } => ", style=filled, fillcolor=\"#eeeeee\", fontcolor=\"#666666\"",
            Op::Input { .. } | Op::Output => ", style=filled, fillcolor=\"#d8e8ff\"",
            _ => "",
        };
        let name = if node.name.is_empty() {
            String::new()
        } else {
            format!(" '{}'", escape(&node.name))
        };
        writeln!(
            out,
            "  n{id} [label=\"{id} {}{name}\\n{}\"{style}];",
            node.op.kind(),
            node.ty
        )
        .unwrap();
    }
    for id in graph.ids() {
        let operands = graph.operands(id);
        for (slot, src) in operands.iter().enumerate() {
            if operands.len() > 1 {
                writeln!(out, "  n{src} -> n{id} [label=\"{slot}\", fontsize=8];").unwrap();
            } else {
                writeln!(out, "  n{src} -> n{id};").unwrap();
            }
        }
    }
    out.push_str("}\n");
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}
