"""CUDA-event timing shared by PyTorch's side of the attention and GEMM benchmarks."""

import torch


def time_calls(fn, warmup, samples, calls):
    """Milliseconds per call of `fn`: `samples` timings of `calls` back-to-back calls each, after
    `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    events = []
    for _ in range(samples):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return [start.elapsed_time(end) / calls for start, end in events]
