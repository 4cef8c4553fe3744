//! The JSON graph format: round trips, and every class of bad file rejected with an error that
//! names the file, the place and what was expected.

use lancet_compiler::ir::{json, Graph};
use lancet_compiler::models::{LlamaConfig, Precision};
use lancet_compiler::rewrite::{optimize, Options};
use serde_json::Value;

fn preset(name: &str, precision: Precision) -> Graph {
    let mut config = LlamaConfig::preset(name).unwrap();
    // Small dims keep the test fast; the structure is the preset's.
    config.layers = 2;
    config.seq = 8;
    config.batch = 1;
    config.with_precision(precision).build().unwrap()
}

fn assert_same(a: &Graph, b: &Graph) {
    assert_eq!(a.len(), b.len());
    for id in a.ids() {
        assert_eq!(a.node(id), b.node(id), "node {id}");
        assert_eq!(a.operands(id), b.operands(id), "operands of node {id}");
    }
}

#[test]
fn every_preset_round_trips() {
    for name in lancet_compiler::models::PRESETS {
        for precision in [Precision::Fp8, Precision::Bf16] {
            let graph = preset(name, precision);
            let text = json::to_string(&graph);
            let back = json::from_str(&text, "g.json").unwrap();
            assert_same(&graph, &back);
            assert_eq!(json::to_string(&back), text, "{name}: serialisation is stable");
        }
    }
}

#[test]
fn full_model_with_embedding_round_trips() {
    let mut config = LlamaConfig::preset("tiny").unwrap();
    config.vocab = Some(100);
    config.final_norm = true;
    let graph = config.build().unwrap();
    let back = json::from_str(&json::to_string(&graph), "g.json").unwrap();
    assert_same(&graph, &back);
}

#[test]
fn rewritten_graph_round_trips_with_its_gated_linears() {
    let (optimized, _) = optimize(&preset("llama-3.2-1b", Precision::Fp8), &Options::default()).unwrap();
    let text = json::to_string(&optimized);
    let back = json::from_str(&text, "g.json").unwrap();
    assert_same(&optimized, &back);
    let value: Value = serde_json::from_str(&text).unwrap();
    let gated = &value["nodes"][node_index(&value, "gated_linear")];
    assert_eq!(
        [&gated["act"], &gated["mid"], &gated["out"]],
        ["silu", "bf16", "f8e4m3"]
    );
    assert_eq!(gated["inputs"].as_array().map(Vec::len), Some(5));
}

/// Serialises the tiny preset, lets `edit` corrupt the JSON value, and returns the load error.
fn load_error(edit: impl FnOnce(&mut Value)) -> String {
    let graph = preset("tiny", Precision::Fp8);
    let mut value: Value = serde_json::from_str(&json::to_string(&graph)).unwrap();
    edit(&mut value);
    let err = json::from_str(&value.to_string(), "g.json").expect_err("corrupted file must be rejected");
    err.to_string()
}

fn node_index(value: &Value, op: &str) -> usize {
    value["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .position(|n| n["op"] == op)
        .unwrap()
}

#[test]
fn bad_json_names_file_line_and_column() {
    let err = json::from_str("{\n  \"format\": \"lancet-graph\",\n  \"nodes\": [", "g.json").unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("g.json: line 3 column"), "{msg}");
    assert!(msg.contains("invalid JSON"), "{msg}");
}

#[test]
fn wrong_format_tag_and_non_object_are_rejected() {
    let msg = load_error(|v| v["format"] = "onnx".into());
    assert!(
        msg.contains("field 'format'") && msg.contains("expected \"lancet-graph\""),
        "{msg}"
    );
    let msg = json::from_str("[1, 2]", "g.json").unwrap_err().to_string();
    assert_eq!(msg, "g.json: top level: expected a JSON object");
}

#[test]
fn wrong_version_is_rejected() {
    let msg = load_error(|v| v["version"] = 2.into());
    assert!(msg.starts_with("g.json: field 'version': expected 1"), "{msg}");
    assert!(msg.contains("found 2"), "{msg}");
    let msg = load_error(|v| {
        v.as_object_mut().unwrap().remove("version");
    });
    assert!(
        msg.contains("field 'version'") && msg.contains("missing"),
        "{msg}"
    );
}

#[test]
fn unknown_op_names_the_node() {
    let msg = load_error(|v| {
        let i = node_index(v, "rope");
        v["nodes"][i]["op"] = "frobnicate".into();
    });
    assert!(msg.contains("(frobnicate 'layers.0.self_attn.q')"), "{msg}");
    assert!(msg.contains("unknown variant `frobnicate`"), "{msg}");
}

#[test]
fn missing_field_names_the_node_and_field() {
    let msg = load_error(|v| {
        let i = node_index(v, "rms_norm");
        v["nodes"][i].as_object_mut().unwrap().remove("inputs");
    });
    assert!(msg.contains("(rms_norm 'layers.0.input_layernorm')"), "{msg}");
    assert!(msg.contains("missing field `inputs`"), "{msg}");
    let msg = load_error(|v| {
        let i = node_index(v, "rope");
        v["nodes"][i].as_object_mut().unwrap().remove("theta");
    });
    assert!(msg.contains("missing field `theta`"), "{msg}");
}

#[test]
fn dangling_edge_is_rejected() {
    let msg = load_error(|v| {
        let i = node_index(v, "silu");
        v["nodes"][i]["inputs"] = serde_json::json!([9999]);
    });
    assert!(msg.contains("operand 0 refers to node 9999"), "{msg}");
    assert!(msg.contains("(silu 'layers.0.mlp.act')"), "{msg}");
}

#[test]
fn forward_reference_is_rejected() {
    // An operand defined after its user would make the file order non-topological.
    let msg = load_error(|v| {
        let i = node_index(v, "silu");
        v["nodes"][i]["inputs"] = serde_json::json!([i + 1]);
    });
    assert!(msg.contains("which is not defined before it"), "{msg}");
}

#[test]
fn shape_mismatch_names_node_and_mismatch() {
    // Shrink the down projection's weight: the linear no longer type-checks.
    let msg = load_error(|v| {
        let nodes = v["nodes"].as_array_mut().unwrap();
        let w = nodes
            .iter()
            .position(|n| n["name"] == "layers.1.mlp.down_proj.weight")
            .unwrap();
        nodes[w]["shape"] = serde_json::json!([64, 100]);
        nodes[w]["type"]["shape"] = serde_json::json!([64, 100]);
    });
    assert!(msg.contains("(linear 'layers.1.mlp.down_proj')"), "{msg}");
    assert!(
        msg.contains("input has 128 features, weight expects 100"),
        "{msg}"
    );
}

#[test]
fn stored_type_that_disagrees_with_inference_is_rejected() {
    let msg = load_error(|v| {
        let i = node_index(v, "silu");
        v["nodes"][i]["type"]["dtype"] = "f32".into();
    });
    assert!(msg.contains("field 'type' says f32["), "{msg}");
    assert!(msg.contains("but the operands give bf16["), "{msg}");
}

#[test]
fn ids_must_be_positions() {
    let msg = load_error(|v| v["nodes"][3]["id"] = 7.into());
    assert!(
        msg.contains("nodes[3]") && msg.contains("id is 7, expected 3"),
        "{msg}"
    );
}

#[test]
fn bad_attribute_type_names_the_node() {
    let msg = load_error(|v| {
        let i = node_index(v, "rope");
        v["nodes"][i]["style"] = "sideways".into();
    });
    assert!(
        msg.contains("nodes[") && msg.contains("unknown variant `sideways`"),
        "{msg}"
    );
}

#[test]
fn missing_file_is_an_error_not_a_panic() {
    let err = json::load(std::path::Path::new("does/not/exist.json")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("does/not/exist.json: file: cannot read"),
        "{err}"
    );
}
