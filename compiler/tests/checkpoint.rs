//! Hugging Face checkpoints: the committed tiny Llama (made by `tests/fixtures/make_tiny_llama.py`
//! with transformers) through the reference interpreter against transformers' own f32 output,
//! the layouts a checkpoint may come in (shards, `model.` prefix, f32), and every class of bad
//! checkpoint, each rejected with an error that names what is wrong.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lancet_compiler::checkpoint::{read_all, write_f32, Checkpoint, CheckpointError, HfLlamaConfig};
use lancet_compiler::ir::{DType, Float, RopeScaling};
use lancet_compiler::models::Precision;
use lancet_compiler::reference::kernels::rope_inv_freq;
use lancet_compiler::reference::{evaluate, rel_l2, Array, Bindings};
use tempfile::TempDir;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-llama")
}

/// A scratch directory of its own for one test, removed when the test is done with it (also
/// when it fails).
fn scratch(name: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("lancet-ckpt-{name}-"))
        .tempdir()
        .unwrap()
}

/// Runs the checkpoint in `dir` on the fixture's inputs through the reference interpreter (f32,
/// no FP8) and returns its relative L2 error against transformers' output.
fn error_against_transformers(dir: &Path) -> Result<f64, CheckpointError> {
    let checkpoint = Checkpoint::open(dir)?;
    let mut inputs = read_all(&fixture().join("inputs.safetensors"))?;
    let ids = inputs.remove("input_ids").expect("the fixture has input_ids");
    let [batch, seq] = ids.shape.dims().try_into().expect("[batch, seq]");
    let config = checkpoint.llama(None, [batch, seq], true, Precision::Bf16, DType::F32)?;
    let graph = config.build().expect("builds");
    let mut bindings: Bindings = checkpoint.params(&graph)?;
    bindings.insert("input_ids".into(), ids);
    let got = evaluate(&graph, &bindings).expect("evaluates");
    let want = read_all(&fixture().join("expected.safetensors"))?;
    let want = &want["last_hidden_state"];
    let got = &got["last_hidden_state"];
    assert_eq!(got.len(), want.len());
    Ok(rel_l2(&got.data, &want.data))
}

#[test]
fn tiny_llama_matches_transformers_in_f32() {
    let err = error_against_transformers(&fixture()).unwrap();
    assert!(err <= 1e-4, "rel L2 {err:.2e} against transformers (bound 1e-4)");
}

/// Writes a copy of the fixture into `dir` with `edit` applied to its tensors (as f32), and the
/// config edited by `config`.
fn variant(
    name: &str,
    edit: impl FnOnce(&mut HashMap<String, Array>),
    config: impl FnOnce(&mut serde_json::Value),
) -> TempDir {
    let dir = scratch(name);
    let mut tensors = read_all(&fixture().join("model.safetensors")).unwrap();
    edit(&mut tensors);
    let list: Vec<(String, &Array)> = tensors.iter().map(|(n, a)| (n.clone(), a)).collect();
    write_f32(&dir.path().join("model.safetensors"), &list, false).unwrap();
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("config.json")).unwrap()).unwrap();
    config(&mut json);
    std::fs::write(dir.path().join("config.json"), json.to_string()).unwrap();
    dir
}

#[test]
fn f32_tensors_with_the_causal_lm_prefix_load_the_same() {
    let dir = variant(
        "prefix",
        |t| {
            *t = std::mem::take(t)
                .into_iter()
                .map(|(n, a)| (format!("model.{n}"), a))
                .collect();
            t.insert("lm_head.weight".into(), Array::zeros([256, 64]));
        },
        |_| {},
    );
    let err = error_against_transformers(dir.path()).unwrap();
    assert!(err <= 1e-4, "rel L2 {err:.2e}");
}

#[test]
fn sharded_checkpoints_load_through_their_index() {
    let dir = scratch("sharded");
    let tensors = read_all(&fixture().join("model.safetensors")).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let list: Vec<(String, &Array)> = part.iter().map(|&n| (n.clone(), &tensors[n])).collect();
        write_f32(&dir.path().join(file), &list, false).unwrap();
        for n in part {
            map.insert((*n).clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::copy(fixture().join("config.json"), dir.path().join("config.json")).unwrap();
    let err = error_against_transformers(dir.path()).unwrap();
    assert!(err <= 1e-4, "rel L2 {err:.2e}");

    // A tensor in two shards would load from whichever file came last: refused at open.
    let copy = "model-00003-of-00002.safetensors";
    let dup = [
        (first[0].clone(), &tensors[first[0]]),
        ("extra.weight".to_string(), &tensors[first[0]]),
    ];
    write_f32(&dir.path().join(copy), &dup, false).unwrap();
    map.insert("extra.weight".into(), copy.into());
    let index = serde_json::json!({"weight_map": map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    let e = Checkpoint::open(dir.path())
        .err()
        .expect("a duplicate tensor")
        .to_string();
    assert!(e.contains(first[0].as_str()) && e.contains("is also in"), "{e}");
    map.remove("extra.weight");
    std::fs::remove_file(dir.path().join(copy)).unwrap();

    // An index naming a tensor its shard does not hold is caught at open.
    map.insert(
        "layers.9.extra.weight".into(),
        "model-00001-of-00002.safetensors".into(),
    );
    let index = serde_json::json!({"weight_map": map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    let e = Checkpoint::open(dir.path())
        .err()
        .expect("a missing tensor")
        .to_string();
    assert!(
        e.contains("layers.9.extra.weight") && e.contains("model-00001-of-00002"),
        "{e}"
    );
}

/// The error of running a broken variant, as text.
fn failure(dir: &Path) -> String {
    error_against_transformers(dir).expect_err("an error").to_string()
}

#[test]
fn a_missing_tensor_is_named_with_what_needed_it() {
    let dir = variant(
        "missing",
        |t| drop(t.remove("layers.1.self_attn.k_proj.weight")),
        |_| {},
    );
    let e = failure(dir.path());
    assert!(
        e.contains("no tensor 'layers.1.self_attn.k_proj.weight'")
            && e.contains("layers.1.self_attn.qkv_proj.weight"),
        "{e}"
    );
}

#[test]
fn a_mis_shaped_tensor_is_named_with_both_shapes() {
    let dir = variant(
        "shape",
        |t| {
            t.insert("layers.0.mlp.up_proj.weight".into(), Array::zeros([128, 64]));
        },
        |_| {},
    );
    let e = failure(dir.path());
    assert!(
        e.contains("'layers.0.mlp.up_proj.weight' has shape [128, 64], expected [160, 64]"),
        "{e}"
    );
}

#[test]
fn unsupported_configs_name_the_field() {
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit, &str); 12] = [
        ("arch", |c| c["model_type"] = "gpt2".into(), "field 'model_type'"),
        ("act", |c| c["hidden_act"] = "gelu".into(), "field 'hidden_act'"),
        (
            "bias",
            |c| c["attention_bias"] = true.into(),
            "field 'attention_bias'",
        ),
        (
            "rope",
            |c| c["rope_parameters"]["rope_type"] = "yarn".into(),
            "field 'rope_parameters.rope_type': \"yarn\" is not supported",
        ),
        (
            "hidden",
            |c| {
                c.as_object_mut()
                    .unwrap()
                    .remove("hidden_size")
                    .map(drop)
                    .unwrap_or(())
            },
            "field 'hidden_size': missing field `hidden_size`",
        ),
        (
            "typed",
            |c| c["hidden_size"] = "64".into(),
            "field 'hidden_size': invalid type",
        ),
        (
            "zero",
            |c| c["intermediate_size"] = 0.into(),
            "field 'intermediate_size': must be at least 1",
        ),
        (
            "eps",
            |c| c["rms_norm_eps"] = (-1.0).into(),
            "field 'rms_norm_eps'",
        ),
        (
            "untyped-rope",
            |c| c["rope_parameters"]["rope_type"] = 3.into(),
            "field 'rope_parameters.rope_type': is not a string",
        ),
        (
            "typeless-rope",
            |c| drop(c["rope_parameters"].as_object_mut().unwrap().remove("rope_type")),
            "has scaling settings but no rope_type",
        ),
        (
            "per-layer-rope",
            |c| c["rope_parameters"] = serde_json::json!({"full_attention": {"rope_type": "default"}}),
            "per-layer-type settings are not supported",
        ),
        (
            "fractional-context",
            |c| c["rope_parameters"]["original_max_position_embeddings"] = 16.5.into(),
            "is not a whole number of positions",
        ),
    ];
    for (name, edit, want) in cases {
        let dir = variant(name, |_| {}, edit);
        let e = Checkpoint::open(dir.path()).err().expect("rejected").to_string();
        assert!(e.contains(want) && e.contains("config.json"), "{name}: {e}");
    }
}

#[test]
fn integer_weights_and_garbage_files_are_rejected_by_name() {
    let dir = scratch("garbage");
    std::fs::copy(fixture().join("config.json"), dir.path().join("config.json")).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), b"not a safetensors file").unwrap();
    let e = Checkpoint::open(dir.path()).err().expect("rejected").to_string();
    assert!(
        e.contains("model.safetensors: not a valid safetensors file"),
        "{e}"
    );

    let e = Checkpoint::open(&dir.path().join("nowhere"))
        .err()
        .expect("rejected")
        .to_string();
    assert!(e.contains("nowhere"), "{e}");
}

#[test]
fn old_style_rope_scaling_reads_like_rope_parameters() {
    let text = r#"{"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192,
        "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
        "vocab_size": 128256, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"}}"#;
    let c = HfLlamaConfig::parse(text, Path::new("config.json")).unwrap();
    assert_eq!((c.head_dim, c.kv_heads, c.rope_theta), (64, 8, 500_000.0));
    assert_eq!(
        c.rope_scaling,
        Some(RopeScaling {
            factor: Float(32.0),
            low_freq_factor: Float(1.0),
            high_freq_factor: Float(4.0),
            original_context: 8192
        })
    );
}

#[test]
fn llama3_frequencies_keep_high_divide_low_and_blend_between() {
    // θ 10000, 16 channels: wavelengths 2π·10000^(i/8) = 6.28, 19.9, 62.8, …; the original
    // context of 16 with factors 1 and 4 keeps wavelengths under 4, divides those over 16 by
    // the factor, and blends the one in between (6.28: smooth = (16/6.28 − 1) / 3).
    let s = RopeScaling {
        factor: Float(4.0),
        low_freq_factor: Float(1.0),
        high_freq_factor: Float(4.0),
        original_context: 16,
    };
    let plain = rope_inv_freq(16, 10_000.0, None);
    let scaled = rope_inv_freq(16, 10_000.0, Some(&s));
    let smooth = (16.0 / (2.0 * std::f32::consts::PI) - 1.0) / 3.0;
    assert!(
        (scaled[0] - ((1.0 - smooth) / 4.0 + smooth)).abs() < 1e-6,
        "{}",
        scaled[0]
    );
    for i in 1..8 {
        assert!((scaled[i] - plain[i] / 4.0).abs() <= 1e-7 * plain[i], "{i}");
    }
    // A wavelength under original_context / high_freq_factor (2π < 64 / 8) passes unchanged.
    let keep = RopeScaling {
        original_context: 64,
        high_freq_factor: Float(8.0),
        ..s
    };
    assert_eq!(rope_inv_freq(64, 10_000.0, Some(&keep))[0], 1.0);
}

#[test]
fn an_integer_weight_is_refused_by_name() {
    let dir = variant("int-weight", |_| {}, |_| {});
    let mut tensors = read_all(&dir.path().join("model.safetensors")).unwrap();
    let norm = tensors.remove("norm.weight").unwrap();
    let ints: Vec<u8> = norm.data.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect();
    let floats: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, a)| {
            (
                n.clone(),
                a.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
                a.shape.dims().to_vec(),
            )
        })
        .collect();
    let view = safetensors::tensor::TensorView::new;
    let mut views = vec![(
        "norm.weight".to_string(),
        view(safetensors::Dtype::I32, vec![64], &ints).unwrap(),
    )];
    for (n, bytes, shape) in &floats {
        views.push((
            n.clone(),
            view(safetensors::Dtype::F32, shape.clone(), bytes).unwrap(),
        ));
    }
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    let e = failure(dir.path());
    assert!(
        e.contains("tensor 'norm.weight' is I32; lancet reads bf16, f16 or f32"),
        "{e}"
    );
}
