//! The versioned JSON format for graphs.
//!
//! ```json
//! { "format": "lancet-graph", "version": 1,
//!   "nodes": [ { "id": 0, "name": "x", "op": "input", "dtype": "bf16", "shape": [2, 64],
//!                "inputs": [], "type": { "dtype": "bf16", "shape": [2, 64] } }, ... ] }
//! ```
//!
//! Each node carries its op's attributes inline, its operand ids and the type it had when it was
//! written. Loading re-infers every type and compares, so a hand-edited file that no longer
//! type-checks is rejected at the node that broke, never half-loaded.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use super::{Graph, NodeId, Op, TensorType};

/// The `format` tag every file carries.
pub const FORMAT: &str = "lancet-graph";
/// The format version this build reads and writes.
pub const VERSION: u64 = 1;

/// A file that could not be loaded: which file, where in it, and what was expected.
#[derive(Debug, Error)]
#[error("{file}: {location}: {message}")]
pub struct LoadError {
    pub file: String,
    /// `line 3 column 7`, `field 'version'` or `nodes[12] (linear 'layers.0.mlp.up')`.
    pub location: String,
    pub message: String,
}

#[derive(Serialize, Deserialize)]
struct NodeRecord {
    id: u32,
    #[serde(default)]
    name: String,
    #[serde(flatten)]
    op: Op,
    inputs: Vec<NodeId>,
    #[serde(rename = "type")]
    ty: TensorType,
}

#[derive(Serialize)]
struct FileRecord<'a> {
    format: &'a str,
    version: u64,
    nodes: Vec<NodeRecord>,
}

/// The graph as pretty-printed JSON.
pub fn to_string(graph: &Graph) -> String {
    let nodes = graph
        .nodes()
        .map(|(id, node)| NodeRecord {
            id: id.0,
            name: node.name.clone(),
            op: node.op.clone(),
            inputs: graph.operands(id),
            ty: node.ty.clone(),
        })
        .collect();
    let file = FileRecord {
        format: FORMAT,
        version: VERSION,
        nodes,
    };
    serde_json::to_string_pretty(&file).expect("graphs always serialize") + "\n"
}

/// Reads and validates a graph file.
pub fn load(path: &Path) -> Result<Graph, LoadError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| LoadError {
        file: file.clone(),
        location: "file".into(),
        message: format!("cannot read: {e}"),
    })?;
    from_str(&text, &file)
}

/// Parses and validates graph JSON; `file` names the source in errors.
pub fn from_str(text: &str, file: &str) -> Result<Graph, LoadError> {
    let err = |location: String, message: String| LoadError {
        file: file.to_string(),
        location,
        message,
    };
    let root: Value = serde_json::from_str(text).map_err(|e| {
        err(
            format!("line {} column {}", e.line(), e.column()),
            format!("invalid JSON: {e}"),
        )
    })?;
    let Value::Object(root) = root else {
        return Err(err("top level".into(), "expected a JSON object".into()));
    };
    match root.get("format") {
        Some(Value::String(f)) if f == FORMAT => {}
        other => {
            return Err(err(
                "field 'format'".into(),
                format!("expected \"{FORMAT}\", found {}", describe(other)),
            ))
        }
    }
    match root.get("version") {
        Some(Value::Number(n)) if n.as_u64() == Some(VERSION) => {}
        other => {
            return Err(err(
                "field 'version'".into(),
                format!(
                    "expected {VERSION} (this lancet reads version {VERSION}), found {}",
                    describe(other)
                ),
            ))
        }
    }
    let Some(Value::Array(nodes)) = root.get("nodes") else {
        return Err(err(
            "field 'nodes'".into(),
            format!(
                "expected an array of nodes, found {}",
                describe(root.get("nodes"))
            ),
        ));
    };

    let mut graph = Graph::new();
    for (index, value) in nodes.iter().enumerate() {
        let label = node_label(index, value);
        let record: NodeRecord =
            serde_json::from_value(value.clone()).map_err(|e| err(label.clone(), e.to_string()))?;
        if record.id as usize != index {
            return Err(err(
                label,
                format!(
                    "id is {}, expected {index}: ids are positions in the node list",
                    record.id
                ),
            ));
        }
        let id = graph
            .add(record.op, &record.inputs, record.name)
            .map_err(|e| err(label.clone(), e.to_string()))?;
        let inferred = &graph.node(id).ty;
        if *inferred != record.ty {
            return Err(err(
                label,
                format!("field 'type' says {} but the operands give {inferred}", record.ty),
            ));
        }
    }
    Ok(graph)
}

/// `nodes[3] (linear 'layers.0.attn.o')`, using what can be read even from a broken node.
fn node_label(index: usize, value: &Value) -> String {
    let op = value.get("op").and_then(Value::as_str);
    let name = value.get("name").and_then(Value::as_str);
    match (op, name) {
        (Some(op), Some(name)) => format!("nodes[{index}] ({op} '{name}')"),
        (Some(op), None) => format!("nodes[{index}] ({op})"),
        _ => format!("nodes[{index}]"),
    }
}

fn describe(value: Option<&Value>) -> String {
    match value {
        None => "nothing (the field is missing)".into(),
        Some(v) => v.to_string(),
    }
}
