"""PyTorch's cuDNN fused attention at the shapes of benches/attention.rs, timed the same way.

Q, K and V are views of one packed [B, S, (Hq + 2*Hkv)*D] bf16 buffer, as in lancet; the cuDNN
backend is forced (an error, not a silent fallback, if it cannot run), GQA through enable_gqa.
Each sample times CALLS back-to-back calls between two CUDA events; the table and the JSON
report the median, min and max per call.

usage: python3 benches/torch_attention.py [--json PATH] [--samples N] [--calls N] [--warmup N]
"""

import argparse
import json
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from torch_timing import time_calls

BATCH, Q_HEADS, SEQ = 2, 32, 2048
# (name, kv heads, head dim, causal): the rows of benches/attention.rs.
CASES = [
    ("gqa32x8_d64_causal", 8, 64, True),
    ("mha32x32_d64_causal", 32, 64, True),
    ("gqa32x8_d128_causal", 8, 128, True),
    ("gqa32x8_d64_full", 8, 64, False),
]


def packed_views(kv_heads, head_dim):
    width = (Q_HEADS + 2 * kv_heads) * head_dim
    qkv = torch.randn(BATCH, SEQ, width, device="cuda", dtype=torch.bfloat16)
    k0, v0 = Q_HEADS * head_dim, (Q_HEADS + kv_heads) * head_dim

    def heads(lo, hi, n):
        return qkv[..., lo:hi].view(BATCH, SEQ, n, head_dim).transpose(1, 2)

    return heads(0, k0, Q_HEADS), heads(k0, v0, kv_heads), heads(v0, width, kv_heads)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()

    torch.manual_seed(0)
    rows = []
    for name, kv_heads, head_dim, causal in CASES:
        q, k, v = packed_views(kv_heads, head_dim)
        scale = head_dim**-0.5

        def call():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return F.scaled_dot_product_attention(
                    q, k, v, is_causal=causal, scale=scale, enable_gqa=kv_heads != Q_HEADS
                )

        samples = time_calls(call, args.warmup, args.samples, args.calls)
        median = statistics.median(samples)
        flops = 4 * BATCH * Q_HEADS * SEQ * SEQ * head_dim / (2 if causal else 1)
        rows.append(
            {
                "case": name,
                "kv_heads": kv_heads,
                "head_dim": head_dim,
                "causal": causal,
                "median_ms": median,
                "min_ms": min(samples),
                "max_ms": max(samples),
                "tflops": flops / (median * 1e-3) / 1e12,
            }
        )

    report = {
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "device": torch.cuda.get_device_name(),
        "samples": args.samples,
        "calls_per_sample": args.calls,
        "cases": rows,
    }
    print(f"PyTorch {report['torch']}, cuDNN {report['cudnn']}, {report['device']}")
    print(f"{'case':<28} {'median ms':>9} {'min ms':>9} {'max ms':>9} {'TFLOP/s':>8}")
    for r in rows:
        print(
            f"{r['case']:<28} {r['median_ms']:>9.4f} {r['min_ms']:>9.4f} {r['max_ms']:>9.4f} {r['tflops']:>8.1f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
