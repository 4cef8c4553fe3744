"""Start-up: how long `lancet bench` on the headline model takes from process start to a ready
forward pass, with empty caches and with warm ones, for both attention precisions.

For each attention precision, three processes share one fresh `LANCET_CACHE_DIR`: the first
finds it empty (it compiles every kernel with NVRTC and builds the cuDNN plans), the next two
find everything cached. Run first on a machine, the very first process also reads the CUDA
libraries from disk: that row is marked. Each row gives the wall time to ready, lancet's own work
(rewrite to cubins loaded, less the wait for the driver's cuInit), the CUDA context, and what the
main thread waited for beyond what overlapped.

usage: python3 benches/startup.py [--lancet gpu-bundle/lancet] [--json PATH]
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

SHAPE = ["--preset", "llama-3.2-1b", "--layers", "8", "--batch", "2", "--seq", "2048"]
WAITS = {
    "context": "device open (CUDA context)",
    "weights": "weight program compiled (weights are made on the device)",
    "attention": "attention plans (cuDNN), beyond what overlapped",
    "nvrtc": "NVRTC, beyond what overlapped",
    "calibrate": "calibrate + first pass",
}


def bench(lancet, attention, cache):
    cmd = [lancet, "bench", *SHAPE, "--attention", attention, "--runs", "10", "--warmup", "3", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, LANCET_CACHE_DIR=cache))
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-10:])
        print(f"FAILED ({proc.returncode}): {' '.join(cmd)}\n{tail}", file=sys.stderr)
        return None
    return json.loads(proc.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lancet", default="gpu-bundle/lancet")
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for attention in ["fp8", "bf16"]:
            cache = os.path.join(tmp, attention)
            for caches in ["empty", "warm", "warm"]:
                report = bench(args.lancet, attention, cache)
                if report is None:
                    continue
                phases = report["compile_phases_ms"]
                rows.append({
                    "attention": attention,
                    "caches": caches,
                    "first_process_on_machine": not rows,
                    "ready_ms": report["ready_ms"],
                    "own_work_ms": report["own_work_ms"],
                    "nvrtc": report["nvrtc"],
                    "attention_plans_build_ms": report["attention_plans_build_ms"],
                    "waits_ms": {k: phases.get(v, 0.0) for k, v in WAITS.items()},
                    "replay_ms": report["steady_state"]["cuda_graph"]["median_ms"],
                })
    result = {"date": datetime.date.today().isoformat(), "shape": " ".join(SHAPE), "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(f"start to ready, {result['shape']} (ms)")
    head = f"{'attention':<10}{'caches':<8}{'ready':>8}{'own work':>10}" + "".join(f"{k:>11}" for k in WAITS)
    print(head)
    for r in rows:
        mark = "  (first process on this machine)" if r["first_process_on_machine"] else ""
        waits = "".join(f"{r['waits_ms'][k]:>11.0f}" for k in WAITS)
        print(f"{r['attention']:<10}{r['caches']:<8}{r['ready_ms']:>8.0f}{r['own_work_ms']:>10.0f}{waits}{mark}")
    return 0 if len(rows) == 6 else 1


if __name__ == "__main__":
    sys.exit(main())
