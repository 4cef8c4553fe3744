//! The `lancet` command line, run as a user would run it.

use std::process::{Command, Output};

use tempfile::TempDir;

fn lancet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lancet"))
        .args(args)
        .output()
        .expect("run lancet")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A scratch directory of its own for one test, removed when the test is done with it (also
/// when it fails).
fn scratch(name: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("lancet-cli-{name}-"))
        .tempdir()
        .unwrap()
}

#[test]
fn headline_summary_reports_flops() {
    let o = lancet(&[
        "graph",
        "--preset",
        "llama-3.2-1b",
        "--layers",
        "8",
        "--batch",
        "2",
        "--seq",
        "2048",
        "--summary",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("llama-3.2-1b · 8 layers · batch 2 · seq 2048 · fp8"),
        "{out}"
    );
    assert!(out.contains("4.263 TFLOP"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("linear") && l.trim_end().ends_with("32")),
        "{out}"
    );
}

#[test]
fn json_round_trips_through_a_file_and_corruption_fails() {
    let dir = scratch("json");
    let file = dir.path().join("g.json");
    let o = lancet(&["graph", "--preset", "llama-3.2-1b", "--layers", "2", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(&file, &o.stdout).unwrap();

    let from_file = lancet(&["graph", file.to_str().unwrap(), "--summary"]);
    assert!(from_file.status.success(), "{}", stderr(&from_file));
    let from_preset = lancet(&["graph", "--preset", "llama-3.2-1b", "--layers", "2", "--summary"]);
    // Same graph, same table (only the title line differs).
    let body = |o: &Output| stdout(o).lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&from_file), body(&from_preset));

    let text = String::from_utf8(o.stdout).unwrap();
    std::fs::write(&file, &text[..text.len() / 2]).unwrap();
    let broken = lancet(&["graph", file.to_str().unwrap(), "--summary"]);
    assert!(!broken.status.success());
    let err = stderr(&broken);
    assert!(
        err.starts_with("error: ") && err.contains("g.json: line"),
        "{err}"
    );
}

#[test]
fn dot_renders_a_digraph() {
    let o = lancet(&["graph", "--preset", "tiny", "--dot"]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(out.starts_with("digraph \"tiny"), "{out}");
    assert!(out.contains("attention 'layers.1.self_attn.sdpa'"), "{out}");
}

#[test]
fn bad_arguments_fail_with_a_message() {
    for (args, needle) in [
        (
            &["graph", "--preset", "gpt-9"][..],
            "unknown preset 'gpt-9' (known: llama-3.2-1b, seed-te, tiny)",
        ),
        (
            &["graph", "--preset", "tiny", "--layers", "0"][..],
            "--layers must be at least 1",
        ),
        (&["graph"][..], "name a model"),
        (&["graph", "missing.json"][..], "missing.json: file: cannot read"),
        (
            &["graph", "--preset", "tiny", "--json", "--dot"][..],
            "cannot be used with",
        ),
        (
            &["compile", "--preset", "tiny", "--gated-epilogue", "bogus"][..],
            "unknown gated GEMM epilogue 'bogus' (registers or staged)",
        ),
    ] {
        let o = lancet(args);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn compile_dumps_kernels_plan_and_graphs() {
    let dir = scratch("dump");
    let out = dir.path().join("kernels");
    let args = [
        "compile",
        "--preset",
        "llama-3.2-1b",
        "--layers",
        "2",
        // Explicit: the default depends on the cuDNN this machine has.
        "--attention",
        "fp8",
        "--no-nvrtc",
        "--dump-kernels",
    ];
    let o = lancet(&[&args[..], &[out.to_str().unwrap()]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    // Per layer: RMSNorm + quantize twice, RoPE + quantize, three cuBLASLt GEMMs, the gated
    // GEMM (gate/up projection, SwiGLU and its quantize) and attention.
    assert!(
        text.contains(
            "plan: 6 kernel launches (3 unique kernels), 6 GEMMs, 2 gated GEMMs, 2 attention calls"
        ),
        "{text}"
    );
    assert!(
        text.contains("compilation skipped: NVRTC is not available: not requested"),
        "{text}"
    );
    let files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for expected in ["plan.txt", "graph.before.dot", "graph.after.dot"] {
        assert!(
            files.iter().any(|f| f == expected),
            "{expected} missing from {files:?}"
        );
    }
    assert_eq!(
        files.iter().filter(|f| f.ends_with(".cu")).count(),
        3,
        "{files:?}"
    );
    assert_eq!(
        files.iter().filter(|f| f.ends_with(".ptxas.txt")).count(),
        3,
        "{files:?}"
    );
    let gated = text
        .lines()
        .find(|l| l.starts_with("gated_gemm_silu_"))
        .unwrap_or_else(|| panic!("no gated kernel in {text}"));
    assert!(gated.contains("gated_gemm.cu.tera"), "{gated}");
    let plan = std::fs::read_to_string(out.join("plan.txt")).unwrap();
    assert!(plan.contains("gemm m 4096 n 2048 k 2048 + residual"), "{plan}");
    assert!(
        plan.contains("gated_gemm m 4096 f 8192 k 2048 act silu"),
        "{plan}"
    );

    // A folder with files in it is the user's: not written into without --force.
    let again = lancet(&[&args[..], &[out.to_str().unwrap()]].concat());
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("the folder is not empty; pass --force"),
        "{}",
        stderr(&again)
    );
    let forced = lancet(&[&args[..], &[out.to_str().unwrap(), "--force"]].concat());
    assert!(forced.status.success(), "{}", stderr(&forced));
}

#[test]
fn without_the_gated_gemm_swiglu_is_a_cublaslt_gemm_and_a_kernel() {
    // Switched off, or compiled for an architecture other than Hopper's sm_90a (the kernel is
    // wgmma and TMA): the gate/up projection stays a cuBLASLt GEMM and SwiGLU + quantize a
    // generated kernel.
    for extra in [&["--gated-gemm", "off"], &["--arch", "sm_89"]] {
        let o = lancet(
            &[
                &[
                    "compile",
                    "--preset",
                    "llama-3.2-1b",
                    "--layers",
                    "2",
                    "--attention",
                    "fp8",
                    "--no-nvrtc",
                ][..],
                &extra[..],
            ]
            .concat(),
        );
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        let text = stdout(&o);
        assert!(
            text.contains("plan: 8 kernel launches (3 unique kernels), 8 GEMMs, 2 attention calls"),
            "{extra:?}: {text}"
        );
        assert!(
            text.lines().any(|l| l.starts_with("silu_mul_quantize_")),
            "{extra:?}: {text}"
        );
    }
}

#[test]
fn the_staged_epilogue_is_generated_when_asked_for() {
    let dir = scratch("staged");
    let out = dir.path().join("kernels");
    let o = lancet(&[
        "compile",
        "--preset",
        "llama-3.2-1b",
        "--layers",
        "1",
        "--attention",
        "fp8",
        "--gated-epilogue",
        "staged",
        "--no-nvrtc",
        "--dump-kernels",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let gated: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("gated_gemm_") && name.ends_with(".cu")
        })
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert_eq!(gated.len(), 1);
    assert!(gated[0].contains("drain(tiles, out_scale"), "{}", gated[0]);
    let plan = std::fs::read_to_string(out.join("plan.txt")).unwrap();
    assert!(plan.contains("(epilogue staged, clusters of 1)"), "{plan}");
}

#[test]
fn explain_reports_rules_growth_and_savings() {
    let o = lancet(&[
        "explain",
        "--preset",
        "seed-te",
        "--layers",
        "2",
        "--attention",
        "fp8",
        "--gated-gemm",
        "off",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("stop reason: saturated"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("gemm-residual") && l.contains(" 4 ")),
        "{text}"
    );
    // A rule the run did not use says so, rather than "fired 0".
    assert!(
        text.lines()
            .any(|l| l.starts_with("gated-linear") && l.contains(" off ")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("one layer (layers.0)") && l.contains("13 → 4")),
        "{text}"
    );
}

#[test]
fn run_without_a_gpu_says_so() {
    // On a machine with a GPU this test has nothing to check; CI machines have none.
    if lancet_runtime::device::device_count().is_ok_and(|n| n > 0) {
        eprintln!("skipped: this machine has a GPU");
        return;
    }
    let o = lancet(&["run", "--preset", "tiny"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(
            "lancet run and bench need a CUDA GPU (lancet compile does not, nor lancet run --device cpu)"
        ),
        "{err}"
    );
}

fn fixture(file: &str) -> String {
    format!("{}/tests/fixtures/tiny-llama/{file}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn run_on_the_cpu_reproduces_transformers_and_keeps_existing_outputs() {
    let dir = scratch("cpu-run");
    let out = dir.path().join("out.safetensors");
    let _ = std::fs::remove_file(&out);
    let out_arg = out.to_str().unwrap();
    let args = [
        "run",
        "--model",
        &fixture(""),
        "--input",
        &fixture("inputs.safetensors"),
        "--device",
        "cpu",
        "--output",
        out_arg,
    ];
    let o = lancet(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("last_hidden_state      3072"),
        "{}",
        stdout(&o)
    );
    let got = lancet_compiler::checkpoint::read_all(&out).unwrap();
    let want = lancet_compiler::checkpoint::read_all(std::path::Path::new(&fixture("expected.safetensors")))
        .unwrap();
    let (got, want) = (&got["last_hidden_state"], &want["last_hidden_state"]);
    assert_eq!(got.shape, want.shape);
    let err = lancet_compiler::reference::rel_l2(&got.data, &want.data);
    assert!(err <= 1e-4, "rel L2 {err:.2e} against transformers");

    // A second run does not overwrite the output unless told to.
    let before = std::fs::read(&out).unwrap();
    let o = lancet(&args);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("exists; pass --force to overwrite it"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(&out).unwrap(), before);
    let mut forced = args.to_vec();
    forced.push("--force");
    assert!(lancet(&forced).status.success());
}

#[test]
fn bad_checkpoint_runs_fail_with_a_message() {
    let scratch_dir = scratch("bad-inputs");
    let missing = scratch_dir.path().join("none.safetensors");
    let missing = missing.to_str().unwrap();
    let (model, weights, ids) = (
        fixture(""),
        fixture("model.safetensors"),
        fixture("inputs.safetensors"),
    );
    let dir = scratch("bad-input-files");
    let write = |name: &str, tensor: &str, dtype: safetensors::Dtype, shape: Vec<usize>, bytes: Vec<u8>| {
        let path = dir.path().join(name);
        let view = safetensors::tensor::TensorView::new(dtype, shape, &bytes).unwrap();
        safetensors::serialize_to_file([(tensor.to_string(), view)], None, &path).unwrap();
        path.to_str().unwrap().to_string()
    };
    let float_ids = write(
        "float_ids.safetensors",
        "input_ids",
        safetensors::Dtype::F32,
        vec![1, 2],
        [1.5f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect(),
    );
    let empty = write(
        "empty.safetensors",
        "input_ids",
        safetensors::Dtype::I64,
        vec![1, 0],
        vec![],
    );
    let far = write(
        "far.safetensors",
        "input_ids",
        safetensors::Dtype::I64,
        vec![1, 2],
        [3i64, 256].iter().flat_map(|x| x.to_le_bytes()).collect(),
    );
    let no_dir = dir.path().join("missing").join("out.safetensors");
    let no_dir = no_dir.to_str().unwrap();
    let cases: [(&[&str], &str); 8] = [
        (
            &["--input", &float_ids],
            "is F32 [1, 2]; expected input_ids as i32/i64",
        ),
        (&["--input", &empty], "batch and sequence must be at least 1"),
        (
            &["--input", &far],
            "input_ids[1] = 256 is outside the vocabulary (0..256)",
        ),
        (&["--output", no_dir], "its folder does not exist"),
        (&["--precision", "fp8"], "--precision fp8 needs the GPU"),
        (
            &["--input", &weights],
            "expected one tensor, `input_ids` or `hidden_states`",
        ),
        (
            &["--layers", "3"],
            "the checkpoint has 2 layers; 3 were asked for",
        ),
        (&["--input", missing], "none.safetensors"),
    ];
    for (extra, want) in cases {
        let mut args = vec!["run", "--model", &model, "--device", "cpu"];
        if !extra.contains(&"--input") {
            args.extend(["--input", &ids]);
        }
        args.extend_from_slice(extra);
        let o = lancet(&args);
        assert!(!o.status.success(), "{extra:?} succeeded");
        assert!(stderr(&o).contains(want), "{extra:?}: {}", stderr(&o));
    }
}

#[test]
fn an_fp8_graph_is_refused_on_the_cpu() {
    let dir = scratch("fp8-cpu");
    let file = dir.path().join("tiny.json");
    let o = lancet(&["graph", "--preset", "tiny", "--json"]);
    std::fs::write(&file, o.stdout).unwrap();
    let o = lancet(&["run", file.to_str().unwrap(), "--device", "cpu"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("quantizes to FP8"), "{}", stderr(&o));
}

#[test]
fn fp8_attention_needs_fp8_linears() {
    let o = lancet(&[
        "compile",
        "--preset",
        "tiny",
        "--precision",
        "bf16",
        "--attention",
        "fp8",
        "--no-nvrtc",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--attention fp8 needs --precision fp8"),
        "{}",
        stderr(&o)
    );
}
