"""Scaling sweeps: lancet's FP8 forward pass against PyTorch's best recipe (FP8 `_scaled_mm` +
cuDNN SDPA + surgical torch.compile, replayed as one CUDA graph: torch_llama.py's row
`fp8_graph`) over sequence length, batch and layer count, each point on the same random
checkpoint and inputs for both sides.

Three sweeps around the headline shape (batch 2, sequence 2048, 8 layers), one variable at a time:
  seq     512, 1024, 2048, 4096, 8192   (batch 2, 8 layers)
  batch   1, 2, 4, 8                    (seq 2048, 8 layers)
  layers  1, 8, 16                      (batch 2, seq 2048)
The headline point is measured once and shared by the three sweeps. Each point: a checkpoint and
inputs made by `torch_llama.py --make-checkpoint`, then `lancet bench --model` (CUDA-graph replay
median) and `torch_llama.py --rows fp8_graph` (its median), each side in its own process; the
one-time costs are lancet's start-to-ready and PyTorch's first call (compile included).

Writes the sweep JSON that `cargo run --release --example plot_scaling -- SWEEP.json OUT.svg`
draws, and prints a table.

usage: python3 benches/sweep.py [--lancet gpu-bundle/lancet] [--runs 30] [--json PATH]
           [--only seq|batch|layers]
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
HEADLINE = {"layers": 8, "batch": 2, "seq": 2048}
SWEEPS = {
    "seq": [512, 1024, 2048, 4096, 8192],
    "batch": [1, 2, 4, 8],
    "layers": [1, 8, 16],
}


def run(cmd, env=None):
    """Runs `cmd`; returns its stdout, or None after printing the command and its stderr tail."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        print(f"FAILED ({proc.returncode}): {' '.join(cmd)}\n{tail}", file=sys.stderr)
        return None
    return proc.stdout


def measure(point, args, tmp):
    """lancet's and PyTorch's medians (and one-time costs) at one shape."""
    name = "l{layers}_b{batch}_s{seq}".format(**point)
    ckpt = os.path.join(tmp, name)
    shape = ["--layers", str(point["layers"]), "--batch", str(point["batch"]), "--seq", str(point["seq"])]
    torch_llama = [sys.executable, os.path.join(HERE, "torch_llama.py")]
    result = dict(point, lancet_ms=None, torch_ms=None, lancet_ready_s=None, torch_compile_s=None)
    if run(torch_llama + ["--make-checkpoint", ckpt] + shape) is None:
        return result
    inputs = os.path.join(ckpt, "inputs.safetensors")
    env = dict(os.environ, LANCET_CACHE_DIR=os.path.join(tmp, "lancet-cache"))
    out = run([args.lancet, "bench", "--model", ckpt, "--input", inputs, "--runs", str(args.runs), "--json"], env)
    if out is not None:
        report = json.loads(out)
        result["lancet_ms"] = report["steady_state"]["cuda_graph"]["median_ms"]
        result["lancet_ready_s"] = report["ready_ms"] / 1e3
    torch_json = os.path.join(tmp, name + ".torch.json")
    torch_cmd = torch_llama + ["--checkpoint", ckpt, "--inputs", inputs, "--rows", "fp8_graph"]
    if run(torch_cmd + ["--runs", str(args.runs), "--json", torch_json]) is not None:
        with open(torch_json) as f:
            rows = [r for r in json.load(f)["rows"] if "median_ms" in r]
        if rows:
            result["torch_ms"] = rows[0]["median_ms"]
            result["torch_compile_s"] = rows[0].get("first_call_s")
    subprocess.run(["rm", "-rf", ckpt])
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lancet", default="gpu-bundle/lancet", help="the lancet executable")
    parser.add_argument("--runs", type=int, default=30, help="timed forward passes per point, both sides")
    parser.add_argument("--json", help="write the sweep here (the plot's input)")
    parser.add_argument("--only", choices=sorted(SWEEPS), help="run one sweep")
    args = parser.parse_args()

    import torch  # only for the device's name

    measured = {}
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        for sweep, values in SWEEPS.items():
            if args.only and sweep != args.only:
                continue
            for value in values:
                point = dict(HEADLINE, **{sweep: value})
                key = tuple(sorted(point.items()))
                if key not in measured:
                    print(f"== {sweep} {value}: {point}", file=sys.stderr, flush=True)
                    measured[key] = measure(point, args, tmp)
                points.append(dict(measured[key], sweep=sweep))

    report = {
        "device": torch.cuda.get_device_name(),
        "date": datetime.date.today().isoformat(),
        "points": points,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print(f"{'sweep':<7} {'layers':>6} {'batch':>5} {'seq':>5} {'lancet ms':>10} {'torch ms':>9} {'ratio':>6}")
    for p in points:
        ratio = p["lancet_ms"] / p["torch_ms"] if p["lancet_ms"] and p["torch_ms"] else None
        cells = [f"{p[k]:.3f}" if p[k] else "failed" for k in ("lancet_ms", "torch_ms")]
        print(
            f"{p['sweep']:<7} {p['layers']:>6} {p['batch']:>5} {p['seq']:>5} {cells[0]:>10} {cells[1]:>9} "
            + (f"{ratio:>5.2f}×" if ratio else "     -")
        )
    sys.exit(0 if all(p["lancet_ms"] and p["torch_ms"] for p in points) else 1)


if __name__ == "__main__":
    main()
