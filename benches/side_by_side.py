"""The headline benchmark in one command: lancet and PyTorch side by side on the same Hugging Face
checkpoint and inputs, every row's output checked against PyTorch's bf16 eager output.

Steps, in this order (all files in a temporary directory, removed at the end):
  1. `torch_llama.py --make-checkpoint`: a random checkpoint of Llama-3.2-1B's dimensions,
     --layers deep, and Normal(0, 1) bf16 hidden states [--batch, --seq, 2048] as inputs.
  2. `lancet bench`, FP8 linears and FP8 attention, fusion on, with empty caches (a fresh
     LANCET_CACHE_DIR and CUDA JIT cache): the cold compile.
  3. `lancet bench`, FP8 linears with bf16 attention (PyTorch's numerics), fusion on and off
     (off: the seed's "without compile" row); 4. `lancet bench`, bf16, fusion on: each with empty
     caches of its own, so that every lancet row's one-time cost is a cold start, as PyTorch's are.
  5. torch_llama.py's rows on the checkpoint and inputs (each in a fresh process with empty
     caches), every row's output saved.
  6. `lancet bench`, FP8, fusion on again, on step 2's caches: the warm start, and the second of
     two lancet runs bracketing PyTorch's against the GPU's clock drift.
Every lancet row writes its `last_hidden_state` (--output); each row's relative L2 error
‖y − ref‖ / ‖ref‖ is computed against PyTorch bf16 eager's output.

The table: approach | steady-state ms (median; lancet: CUDA graph replay) | ratio to the fastest |
one-time cost in seconds (lancet: process start to ready, `ready_ms`, which includes the CUDA
context, loading the checkpoint and calibration; PyTorch: the first call, compilation included,
plus the FP8 rows' calibration pass and the CUDA graph capture where there is one; its process
start, CUDA init and weight loading are not counted) | rel L2 vs bf16 eager. Transformer Engine
is listed, unmeasured: it cannot be installed on the GPU machine. A failed step is reported with
its command and the tail of its stderr (again above the table); the table still shows every row
that worked, and the exit code is 1.

usage: python3 benches/side_by_side.py [--lancet gpu-bundle/lancet] [--layers 8] [--batch 2]
           [--seq 2048] [--runs 50] [--warmup 10] [--torch-rows all] [--seed 0] [--json PATH]
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from safetensors.torch import load_file

import torch_llama

TORCH_LLAMA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_llama.py")
TAIL_CHARS = 3000  # of a failed step's stderr (or unreadable output), printed and kept in the report
SUMMARY_TAIL_CHARS = 1000  # of the same, repeated in the summary above the table
TE_NOTE = "Transformer Engine FP8: not installable on the GPU machine — not measured"


@dataclass(frozen=True)
class LancetRow:
    key: str
    title: str
    flags: tuple  # precision and fusion flags of `lancet bench`
    caches: str  # name of the row's cache folder: rows sharing one share their caches


FP8_FUSED = ("--precision", "fp8", "--attention", "fp8", "--fusion", "on")
LANCET_BEFORE_TORCH = [
    LancetRow("lancet_fp8_cold", "lancet FP8 + FP8 attention, fusion on (cold caches)", FP8_FUSED, "fp8_fused"),
    LancetRow(
        "lancet_fp8_bf16_attention",
        "lancet FP8, bf16 attention, fusion on",
        ("--precision", "fp8", "--attention", "bf16", "--fusion", "on"),
        "fp8_bf16_attention",
    ),
    LancetRow(
        "lancet_fp8_unfused",
        "lancet FP8, bf16 attention, fusion off (one kernel per glue op)",
        ("--precision", "fp8", "--attention", "bf16", "--fusion", "off"),
        "fp8_unfused",
    ),
    LancetRow("lancet_bf16", "lancet bf16, fusion on", ("--precision", "bf16", "--fusion", "on"), "bf16"),
    # The gate/up projection as a cuBLASLt GEMM and SwiGLU + quantize as a generated kernel, not
    # lancet's own gated GEMM (the default before 2026-12-07).
    LancetRow(
        "lancet_fp8_no_gated_gemm",
        "lancet FP8 + FP8 attention, fusion on, no gated GEMM",
        (*FP8_FUSED, "--gated-gemm", "off"),
        "fp8_no_gated_gemm",
    ),
]
LANCET_AFTER_TORCH = [
    LancetRow("lancet_fp8_warm", "lancet FP8 + FP8 attention, fusion on (warm caches)", FP8_FUSED, "fp8_fused")
]
# The table's order: lancet's rows, then PyTorch's.
LANCET_TABLE_ORDER = [
    "lancet_fp8_cold",
    "lancet_fp8_warm",
    "lancet_fp8_no_gated_gemm",
    "lancet_fp8_bf16_attention",
    "lancet_fp8_unfused",
    "lancet_bf16",
]


class Steps:
    """Runs the subprocesses and records each: command, exit code, seconds, stderr tail."""

    def __init__(self):
        self.records = []

    def run(self, name, cmd, env=None):
        """stdout of `cmd`, or None when it could not start or exited non-zero."""
        command = shlex.join(cmd)
        print(f"== {name}: {command}", flush=True)
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        except OSError as e:
            code, stdout, stderr = None, "", f"could not start: {e}"
        seconds = time.perf_counter() - start
        record = {"step": name, "command": command, "exit_code": code, "seconds": seconds}
        self.records.append(record)
        print(f"   exit {code} after {seconds:.1f} s", flush=True)
        if code == 0:
            return stdout
        record["stdout_tail"] = stdout[-TAIL_CHARS:]
        self.fail(name, "could not start" if code is None else f"exit {code}", stderr)
        return None

    def fail(self, name, message, detail=""):
        """Marks step `name` failed (a non-zero exit, or output that cannot be read) and prints
        why, its command and the tail of `detail` (its stderr, or the unreadable output)."""
        record = next((r for r in reversed(self.records) if r["step"] == name), None)
        if record is None:
            record = {"step": name}
            self.records.append(record)
        record["failed"] = message
        record["detail_tail"] = detail[-TAIL_CHARS:]
        print(f"   FAILED {name}: {message}", flush=True)
        print_failure(record, TAIL_CHARS)

    def failed(self):
        return [r for r in self.records if r.get("failed")]


def print_failure(record, tail_chars):
    if record.get("command"):
        print(f"     $ {record['command']}", flush=True)
    detail = record.get("detail_tail", "")[-tail_chars:].rstrip()
    if detail:
        print("     " + detail.replace("\n", "\n     "), flush=True)


def lancet_row(steps, row, args, model_dir, inputs, tmp):
    """Runs `lancet bench` for one row; returns its table entry."""
    cache = os.path.join(tmp, "caches", row.caches)
    env = {**os.environ, "LANCET_CACHE_DIR": os.path.join(cache, "lancet"), "CUDA_CACHE_PATH": os.path.join(cache, "cuda")}
    os.makedirs(env["LANCET_CACHE_DIR"], exist_ok=True)
    output = os.path.join(tmp, f"{row.key}.safetensors")
    cmd = [args.lancet, "bench", "--model", model_dir, "--input", inputs, "--output", output, "--json",
           "--runs", str(args.runs), "--warmup", str(args.warmup), *row.flags]
    entry = {"key": row.key, "title": row.title, "side": "lancet"}
    stdout = steps.run(row.key, cmd, env)
    if stdout is None:
        return {**entry, "error": f"{steps.records[-1]['failed']} (see the failed steps)"}
    try:
        report = json.loads(stdout)
        graph = report["steady_state"]["cuda_graph"]
        return {
            **entry,
            "median_ms": graph["median_ms"],
            "one_time_s": report["ready_ms"] / 1e3,
            "one_time_note": "to ready",
            "output": output,
            "report": report,
        }
    except (ValueError, KeyError, TypeError) as e:
        steps.fail(row.key, f"unreadable `lancet bench --json` output ({e!r})", stdout[-TAIL_CHARS:])
        return {**entry, "error": "unreadable output"}


def torch_rows(steps, args, model_dir, inputs, tmp):
    """Runs torch_llama.py's rows; returns their table entries and its report (which holds each
    row's details)."""
    report_path = os.path.join(tmp, "torch_llama.json")
    outputs = os.path.join(tmp, "torch_outputs.safetensors")
    cmd = [sys.executable, TORCH_LLAMA, "--checkpoint", model_dir, "--inputs", inputs, "--rows", args.torch_rows,
           "--runs", str(args.runs), "--warmup", str(args.warmup), "--save-output", outputs, "--json", report_path]
    # Exit code 1 also means "a row failed or is off in numerics": its report still holds the rest.
    steps.run("torch_llama", cmd)
    try:
        with open(report_path) as f:
            report = json.load(f)
    except (OSError, ValueError) as e:
        steps.fail("torch_llama", f"no report from torch_llama.py ({e})")
        return [], None
    entries = []
    for r in report["rows"]:
        entry = {"key": r["key"], "title": f"PyTorch: {r.get('title', r['key'])}", "side": "pytorch"}
        if "median_ms" not in r:
            entries.append({**entry, "error": r.get("error", "failed")})
            continue
        calibration, capture = r.get("calibrate_s"), r.get("capture_s")
        entries.append({
            **entry,
            "median_ms": r["median_ms"],
            "one_time_s": r["first_call_s"] + (calibration or 0.0) + (capture or 0.0),
            "one_time_note": "first call" + (" + calibration" if calibration else "") + (" + capture" if capture else ""),
            "output": outputs,
        })
    return entries, report


def output_of(entry):
    """The f32 output tensor a table entry wrote."""
    tensors = load_file(entry["output"])
    name = "last_hidden_state" if entry["side"] == "lancet" else f"last_hidden_state.{entry['key']}"
    if name not in tensors:
        raise KeyError(f"{entry['output']} has no '{name}'")
    return tensors[name]


def add_errors(entries):
    """Sets each entry's rel_l2 against PyTorch bf16 eager's output (or the reason it has none)."""
    reference = next((e for e in entries if e["key"] == "bf16_eager" and "output" in e), None)
    try:
        if reference is None:
            raise KeyError("no PyTorch bf16 eager row")
        ref = output_of(reference)
    except (OSError, KeyError) as err:
        for e in entries:
            e["rel_l2_error"] = f"no reference: {err}"
        return
    for e in entries:
        if "output" not in e:
            continue
        try:
            e["rel_l2"] = torch_llama.rel_l2(output_of(e), ref)
        except (OSError, KeyError, ValueError) as err:
            e["rel_l2_error"] = str(err)


def print_table(entries, config, torch_report):
    timed = [e for e in entries if "median_ms" in e]
    best = min((e["median_ms"] for e in timed), default=None)
    lancet_device = next((e["report"].get("device") for e in entries if e["side"] == "lancet" and "report" in e), None)
    env = (torch_report or {}).get("environment", {})
    print()
    print(f"lancet on {lancet_device or '(no result)'}; PyTorch {env.get('torch', '(no result)')} on {env.get('gpu', '-')}, "
          f"CUDA {env.get('cuda', '-')}, cuDNN {env.get('cudnn', '-')}")
    print(f"Llama-3.2-1B dimensions, {config['layers']} layers + final norm, batch {config['batch']}, "
          f"seq {config['seq']}, random bf16 weights (same checkpoint both sides): median ms of "
          f"{config['runs']} forward passes after {config['warmup']} warm-up")
    print("steady ms: lancet = CUDA graph replay; one-time: lancet = process start to ready, "
          "PyTorch = first call (compile) [+ calibration] [+ graph capture]")
    print(f"{'approach':<66} {'steady ms':>9} {'× fastest':>9} {'one-time s':>10} {'(what)':<34} {'rel L2 vs bf16 eager':>20}")
    for e in entries:
        if "median_ms" not in e:
            print(f"{e['title'][:66]:<66} failed: {e.get('error', '?')}")
            continue
        once = f"{e['one_time_s']:>10.2f} {'(' + e['one_time_note'] + ')':<34}"
        if e["key"] == "bf16_eager":
            err = "(reference)"
        else:
            err = f"{e['rel_l2']:.2e}" if "rel_l2" in e else "-"
        print(f"{e['title'][:66]:<66} {e['median_ms']:>9.3f} {e['median_ms'] / best:>9.2f} {once} {err:>20}")
    print(TE_NOTE)


def print_lancet_details(entries):
    by_key = {e["key"]: e for e in entries if "report" in e}
    for key in ("lancet_fp8_cold", "lancet_fp8_warm"):
        if key in by_key:
            phases = by_key[key]["report"].get("compile_phases_ms", {})
            print(f"{by_key[key]['title']}, compile phases (ms): "
                  + ", ".join(f"{name} {ms:.0f}" for name, ms in phases.items()))
    if "lancet_fp8_cold" in by_key and "lancet_fp8_warm" in by_key:
        before, after = by_key["lancet_fp8_cold"]["median_ms"], by_key["lancet_fp8_warm"]["median_ms"]
        print(f"lancet FP8 fused before / after PyTorch's rows: {before:.3f} / {after:.3f} ms "
              f"(drift {100 * (after - before) / before:+.1f} %)")


def parse_args():
    parser = argparse.ArgumentParser(description="lancet and PyTorch side by side (see the module docstring).")
    parser.add_argument("--lancet", default="gpu-bundle/lancet", help="the lancet executable")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=50, help="timed forward passes per row, both sides")
    parser.add_argument("--warmup", type=int, default=10, help="untimed forward passes per row before timing")
    parser.add_argument("--torch-rows", default="all", help="torch_llama.py's --rows")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random checkpoint and inputs")
    parser.add_argument("--json", help="write everything here")
    return parser.parse_args()


def main():
    args = parse_args()
    steps = Steps()
    entries = []
    torch_report = None
    with tempfile.TemporaryDirectory(prefix="side_by_side_") as tmp:
        model_dir = os.path.join(tmp, "model")
        inputs = os.path.join(model_dir, "inputs.safetensors")
        made = steps.run("make_checkpoint", [
            sys.executable, TORCH_LLAMA, "--make-checkpoint", model_dir, "--layers", str(args.layers),
            "--batch", str(args.batch), "--seq", str(args.seq), "--seed", str(args.seed),
        ])
        if made is not None:
            entries += [lancet_row(steps, row, args, model_dir, inputs, tmp) for row in LANCET_BEFORE_TORCH]
            torch_entries, torch_report = torch_rows(steps, args, model_dir, inputs, tmp)
            entries += [lancet_row(steps, row, args, model_dir, inputs, tmp) for row in LANCET_AFTER_TORCH]
            entries.sort(key=lambda e: LANCET_TABLE_ORDER.index(e["key"]))
            entries += torch_entries
            add_errors(entries)

    done = [e for e in entries if "median_ms" in e]
    if done:
        best = min(e["median_ms"] for e in done)
        for e in done:
            e["ratio_to_fastest"] = e["median_ms"] / best
    failures = steps.failed()
    if args.json:
        report = {
            "config": vars(args),
            "rows": [{k: v for k, v in e.items() if k != "output"} for e in entries],
            "torch_llama": torch_report,
            "transformer_engine": TE_NOTE,
            "steps": steps.records,
            "failed_steps": [r["step"] for r in failures],
        }
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"report written to {args.json}")
    if failures:
        print("\nfailed steps:")
        for r in failures:
            print(f"  {r['step']}: {r['failed']}")
            print_failure(r, SUMMARY_TAIL_CHARS)
    print_lancet_details(entries)
    print_table(entries, vars(args), torch_report)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
