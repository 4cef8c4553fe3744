"""PyTorch's FP8 GEMM (torch._scaled_mm, cuBLASLt underneath) at the shapes of benches/gemm.rs,
timed the same way.

M = 4096 tokens; x [M, K] and w [N, K] are e4m3 (randn, cast), per-tensor f32 scales of 1,
bf16 out: QKV 2048->3072, O 2048->2048, gate+up 2048->16384, down 8192->2048. Variants: fast
accumulation on and off, fast accumulation replayed from a CUDA graph of CALLS calls, and, for
the two projections lancet fuses a residual into, the GEMM followed by PyTorch's separate
residual add. Each sample times CALLS back-to-back calls between
two CUDA events; the table and the JSON report the median, min and max per call.

usage: python3 benches/torch_gemm.py [--json PATH] [--samples N] [--calls N] [--warmup N]
"""

import argparse
import json
import statistics

import torch

from torch_timing import time_calls

M = 4096
# (name, N, K, residual): the rows of benches/gemm.rs.
CASES = [
    ("qkv", 3072, 2048, False),
    ("o", 2048, 2048, True),
    ("gate_up", 16384, 2048, False),
    ("down", 2048, 8192, True),
]


def graph_of(fn, calls):
    """A CUDA graph of `calls` calls of fn (warmed up on a side stream, as PyTorch requires)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return graph


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()

    torch.manual_seed(0)
    one = torch.ones((), device="cuda", dtype=torch.float32)
    rows = []
    for name, n, k, residual in CASES:
        x = torch.randn(M, k, device="cuda").to(torch.float8_e4m3fn)
        w = torch.randn(n, k, device="cuda").to(torch.float8_e4m3fn)
        r = torch.randn(M, n, device="cuda", dtype=torch.bfloat16)

        def mm(fast):
            return torch._scaled_mm(
                x, w.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16, use_fast_accum=fast
            )

        graph = graph_of(lambda: mm(True), args.calls)
        variants = [
            ("fast accumulation", lambda: mm(True), args.calls),
            ("fast accumulation, CUDA graph", graph.replay, 1),
            ("no fast accumulation", lambda: mm(False), args.calls),
        ]
        if residual:
            variants.append(("fast accumulation + residual add", lambda: mm(True) + r, args.calls))
        for variant, fn, calls in variants:
            samples = time_calls(fn, args.warmup, args.samples, calls)
            samples = [s * calls / args.calls for s in samples]
            median = statistics.median(samples)
            rows.append(
                {
                    "case": name,
                    "variant": variant,
                    "n": n,
                    "k": k,
                    "median_ms": median,
                    "min_ms": min(samples),
                    "max_ms": max(samples),
                    "tflops": 2 * M * n * k / (median * 1e-3) / 1e12,
                }
            )

    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}")
    print(f"{'case':<8} {'variant':<34} {'median ms':>9} {'min ms':>9} {'max ms':>9} {'TFLOP/s':>8}")
    for r in rows:
        print(
            f"{r['case']:<8} {r['variant']:<34} {r['median_ms']:9.4f} {r['min_ms']:9.4f} "
            f"{r['max_ms']:9.4f} {r['tflops']:8.1f}"
        )
    if args.json:
        report = {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name(),
            "m": M,
            "samples": args.samples,
            "calls_per_sample": args.calls,
            "rows": rows,
        }
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
