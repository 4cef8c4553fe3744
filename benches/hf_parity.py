"""Parity with Hugging Face transformers: lancet's forward pass on a checkpoint that
`LlamaModel.save_pretrained` wrote, against transformers' own forward pass in f32. Runs on the GPU
machine (torch, transformers, safetensors and the lancet executable).

The model is a small random `transformers.LlamaModel`: hidden 512, 4 layers, 8 query and 2 KV
heads of 64, intermediate 1536, vocabulary 1024, RMSNorm eps 1e-5, θ 500000 with llama3 RoPE
scaling (factor 8, low 1, high 4) whose original_max_position_embeddings (128) is below the
sequence (256): positions run past it, and each of the scaling's three bands (wavelengths kept,
interpolated, divided by the factor) holds some of the 32 frequencies. Every weight is Normal(0, 0.02) (transformers' default initializer_range), every norm gain
uniform in [0.5, 1.5]. It is saved in bf16 to a temporary directory, with random `input_ids`
[2, 256] as inputs.safetensors. (At Normal(0, 0.05) the attention logits are so sharp that bf16
alone costs 1.8e-2 in torch_llama.py and 5.7e-2 in transformers, measured on an H100: too close to
the bf16 bound to tell a bug from rounding. At 0.02 they are 7e-3 and 9e-3.)

The reference is transformers' f32 forward pass on those bf16 weights (eager attention, TF32
off). Rows, each with its relative L2 error ‖y − ref‖ / ‖ref‖ against the reference:
  transformers bf16    the same model in bf16 on the GPU (sdpa attention): what bf16 costs
  torch_llama.py bf16  benches/torch_llama.py's bf16 forward on the checkpoint: the benchmark's
                       PyTorch side computes transformers' function
  PyTorch FP8          torch_llama.py's FP8 forward (`torch._scaled_mm`, fast accumulation, cuDNN
                       attention, eager glue, input scales calibrated on a bf16 pass) fed the
                       embeddings of the input_ids: PyTorch's own FP8 pipeline
  lancet bf16, FP8     `lancet run --precision bf16|fp8 --attention bf16` on the GPU: FP8 with
                       the attention PyTorch's pipeline has
  lancet FP8 + FP8 attention  `--attention fp8`: what FP8 attention adds (reported, unchecked)
  lancet CPU           `lancet run --device cpu`: lancet's f32 reference interpreter

Checks, printed PASS/FAIL (the exit code is 1 if any fails):
  lancet bf16 ≤ 2e-2; lancet CPU ≤ 1e-4; torch_llama.py bf16 ≤ 2e-2;
  lancet FP8 ≤ 1.1 × PyTorch FP8's error: both quantize the same activations and weights to e4m3
  per tensor; the 10 % slack allows for their different calibrations (lancet: two
  delayed-scaling passes; PyTorch: one bf16 pass) and roundings.
A table is printed last; --json writes everything.

usage: python3 benches/hf_parity.py [--lancet gpu-bundle/lancet] [--json PATH] [--seed 0]
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaModel

import torch_llama

BATCH, SEQ = 2, 256
DIMS = {
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "vocab_size": 1024,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 4096,
}
ROPE_THETA = 500_000.0
LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 128,
}
INIT_STD = 0.02
GAIN_RANGE = (0.5, 1.5)
FP8_SLACK = 1.1  # lancet FP8 may be 10 % further from the reference than PyTorch's FP8
TAIL_CHARS = 2000  # of a failed lancet run's stderr

ROWS = {
    "transformers_bf16": "transformers bf16 (sdpa)",
    "torch_llama_bf16": "torch_llama.py bf16 eager",
    "pytorch_fp8": "PyTorch FP8 (torch_llama.py: _scaled_mm, fast accum, cuDNN SDPA)",
    "lancet_bf16": "lancet bf16 (GPU)",
    "lancet_fp8": "lancet FP8, bf16 attention (GPU)",
    "lancet_fp8_attention": "lancet FP8 + FP8 attention (GPU)",
    "lancet_cpu": "lancet CPU (f32 reference interpreter)",
}
# `lancet run` flags of each lancet row.
LANCET_FLAGS = {
    "lancet_bf16": ["--precision", "bf16"],
    "lancet_fp8": ["--precision", "fp8", "--attention", "bf16"],
    "lancet_fp8_attention": ["--precision", "fp8", "--attention", "fp8"],
    "lancet_cpu": ["--device", "cpu"],
}


def llama_config():
    """The test model's LlamaConfig, its RoPE settings in the form this transformers takes."""
    if int(transformers.__version__.split(".")[0]) >= 5:
        rope = {"rope_parameters": {**LLAMA3_SCALING, "rope_theta": ROPE_THETA}}
    else:
        rope = {"rope_theta": ROPE_THETA, "rope_scaling": LLAMA3_SCALING}
    return LlamaConfig(**DIMS, **rope, attention_bias=False, mlp_bias=False, tie_word_embeddings=False)


def save_random_model(directory, seed):
    """Writes the random model in bf16 with save_pretrained."""
    torch.manual_seed(seed)
    model = LlamaModel(llama_config())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(*GAIN_RANGE)
            else:
                p.normal_(0.0, INIT_STD)
    model.to(torch.bfloat16).save_pretrained(directory)


def transformers_forward(directory, ids, dtype, attention):
    """last_hidden_state (f32, on the CPU) of the saved model run by transformers in `dtype`."""
    model = LlamaModel.from_pretrained(directory, attn_implementation=attention).to("cuda", dtype)
    with torch.no_grad():
        out = model(input_ids=ids.to("cuda"), use_cache=False).last_hidden_state
    return out.float().cpu()


def torch_llama_forwards(directory, inputs):
    """torch_llama.py's bf16 and FP8 outputs on the checkpoint (f32, on the CPU)."""
    cfg, state = torch_llama.read_checkpoint(directory)
    x = torch_llama.load_inputs(inputs, cfg, state)
    model = torch_llama.build_model(cfg, state, x.shape[1], directory)
    torch_llama.calibrate(model, x)
    bf16 = torch_llama.forward_bf16(model, x)
    fp8 = torch_llama.forward_fp8(model, x, torch_llama.Glue(cfg, compiled=False), fast_accum=True)
    return {"torch_llama_bf16": bf16.float().cpu(), "pytorch_fp8": fp8.float().cpu()}


def lancet_forward(lancet, key, directory, inputs, tmp):
    """(last_hidden_state or None, record of the run) of one `lancet run`."""
    output = os.path.join(tmp, f"{key}.safetensors")
    cmd = [lancet, "run", "--model", directory, "--input", inputs, "--output", output, "--json", *LANCET_FLAGS[key]]
    env = {**os.environ, "LANCET_CACHE_DIR": os.path.join(tmp, "lancet_cache")}
    record = {"command": shlex.join(cmd)}
    print(f"== {key}: {record['command']}", flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    except OSError as e:
        return None, {**record, "error": f"could not start: {e}"}
    record["exit_code"] = proc.returncode
    if proc.returncode != 0:
        return None, {**record, "error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-TAIL_CHARS:]}
    try:
        record["report"] = json.loads(proc.stdout)
    except ValueError:
        record["stdout"] = proc.stdout[-TAIL_CHARS:]
    try:
        return load_file(output)["last_hidden_state"], record
    except (OSError, KeyError) as e:
        return None, {**record, "error": f"no last_hidden_state in {output}: {e!r}"}


def checks_of(errors):
    """Each check: the row it bounds, its description, the row's error and the bound (a missing
    error or bound fails it)."""
    fp8 = errors.get("pytorch_fp8")
    bounds = [
        ("lancet_bf16", "lancet bf16 ≤ 2e-2", 2e-2),
        ("lancet_cpu", "lancet CPU (f32) ≤ 1e-4", 1e-4),
        ("torch_llama_bf16", "torch_llama.py bf16 ≤ 2e-2", 2e-2),
        ("lancet_fp8", "lancet FP8 ≤ 1.1 × PyTorch FP8's error (10 % slack)", FP8_SLACK * fp8 if fp8 is not None else None),
    ]
    checks = []
    for row, description, bound in bounds:
        value = errors.get(row)
        ok = value is not None and bound is not None and value <= bound  # NaN fails
        checks.append({"row": row, "check": description, "value": value, "bound": bound, "pass": ok})
    return checks


def number(value):
    return f"{value:.3e}" if value is not None else "-"


def print_checks(checks):
    print()
    for c in checks:
        print(f"{'PASS' if c['pass'] else 'FAIL'}  {c['check']}: {number(c['value'])} (bound {number(c['bound'])})")


def print_table(errors, failures, checks):
    by_row = {c["row"]: c for c in checks}
    print(f"\nrelative L2 error against transformers' f32 forward pass (batch {BATCH}, seq {SEQ})")
    print(f"{'row':<66} {'rel L2':>10}  {'bound':>10}  check")
    for key, title in ROWS.items():
        err = number(errors[key]) if key in errors else "failed: " + failures.get(key, "?")
        check = by_row.get(key)
        bound = number(check["bound"]) if check else ""
        verdict = ("PASS" if check["pass"] else "FAIL") if check else ""
        print(f"{title:<66} {err:>10}  {bound:>10}  {verdict}")


def parse_args():
    parser = argparse.ArgumentParser(description="lancet against transformers (see the module docstring).")
    parser.add_argument("--lancet", default="gpu-bundle/lancet", help="the lancet executable")
    parser.add_argument("--json", help="write everything here")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random model and input_ids")
    return parser.parse_args()


def main():
    args = parse_args()
    if not torch.cuda.is_available():
        sys.exit("hf_parity needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    outputs, runs = {}, {}
    with tempfile.TemporaryDirectory(prefix="hf_parity_") as tmp:
        model_dir = os.path.join(tmp, "model")
        inputs = os.path.join(tmp, "inputs.safetensors")
        save_random_model(model_dir, args.seed)
        with open(os.path.join(model_dir, "config.json")) as f:
            saved_config = json.load(f)
        ids = torch.randint(0, DIMS["vocab_size"], (BATCH, SEQ), generator=torch.Generator().manual_seed(args.seed))
        save_file({"input_ids": ids}, inputs)

        reference = transformers_forward(model_dir, ids, torch.float32, "eager")
        outputs["transformers_bf16"] = transformers_forward(model_dir, ids, torch.bfloat16, "sdpa")
        outputs.update(torch_llama_forwards(model_dir, inputs))
        for key in LANCET_FLAGS:
            out, runs[key] = lancet_forward(args.lancet, key, model_dir, inputs, tmp)
            if out is not None:
                outputs[key] = out
            else:
                print(f"   FAILED: {runs[key]['error']}: {runs[key]['command']}")
                if runs[key].get("stderr_tail"):
                    print("   " + runs[key]["stderr_tail"].rstrip().replace("\n", "\n   "))

    errors, failures = {}, {key: run["error"] for key, run in runs.items() if "error" in run}
    for key, out in outputs.items():
        try:
            errors[key] = torch_llama.rel_l2(out, reference)
        except ValueError as e:
            failures[key] = str(e)
    checks = checks_of(errors)
    if args.json:
        report = {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0),
            "config_json": saved_config,
            "batch": BATCH,
            "seq": SEQ,
            "seed": args.seed,
            "rel_l2": errors,
            "failures": failures,
            "lancet_runs": runs,
            "checks": checks,
        }
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"report written to {args.json}")
    print_checks(checks)
    print_table(errors, failures, checks)
    sys.exit(0 if all(c["pass"] for c in checks) else 1)

if __name__ == "__main__":
    main()
