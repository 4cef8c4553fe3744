"""PyTorch's side of the Llama benchmark: lancet's `llama-3.2-1b` layer stack, run the ways of the
seed benchmark (docs/benchmarks.md, shared DESIGN.md "The seed benchmark").

The function is the one `compiler/src/models/llama.rs` builds: a bare stack of decoder layers on
hidden states (no embedding, no final norm). Per layer, with lancet's parameter names:

    h   = RMSNorm(x) · layers.{l}.input_layernorm.weight           (f32 math, eps 1e-5, bf16 out)
    qkv = h · self_attn.qkv_proj.weightᵀ                            (rows: Q heads, K heads, V heads)
    q, k, v = split(qkv); q, k = RoPE(q), RoPE(k)                   (NeoX half-split, θ 500000)
    x   = x + o_proj(merge_heads(causal GQA SDPA(q, k, v)))         (scale 1/√D)
    h   = RMSNorm(x) · post_attention_layernorm.weight
    x   = x + down_proj(silu(gate) · up)       with [gate, up] = h · mlp.gate_up_proj.weightᵀ

The FP8 rows quantize the activation in front of each of the four linears to e4m3 with a static
per-tensor scale (`{proj}.input_scale`: saturate(x / input_scale)); weights are e4m3 with
`{proj}.weight_scale` = amax(master) / 448, and the linear is `torch._scaled_mm`.

Rows (each runs in a fresh process with empty Inductor, Triton and CUDA JIT caches, so its first
call is a cold start; see --cache-dir):
  1 bf16_eager    bf16 eager: the plain PyTorch baseline, and the numerical reference of every row.
  2 bf16_compile  bf16, the whole forward under torch.compile: what Inductor alone makes of it.
  3 fp8_eager     FP8 `torch._scaled_mm` linears + cuDNN SDPA (forced, native GQA), eager glue:
                  the library calls of the seed's recipe without any fusion of the glue.
  4 fp8_surgical  row 3 with *surgical* torch.compile (the seed's recipe): norm+quant, RoPE/split,
                  attention-out quant, SwiGLU+quant and the residual add are five separately
                  compiled functions; the linears and SDPA stay library calls.
  5 fp8_graph     row 4 with fast accumulation, the whole forward captured in one CUDA graph and
                  replayed: PyTorch at its best, the row lancet must beat (capture timed apart).
  6 fp8_compile   the FP8 forward of row 3 entirely under torch.compile (cuDNN SDPA still forced).

Each row reports the median, min and max of --runs forward passes timed with CUDA events after
--warmup untimed ones, its first call (compile included: the one-time cost) and the relative L2
error of its output against bf16 eager, which checks that every row computes the same function.
Weights are random (Normal(0, 0.02) linears, unit norm gains; FP8 input scales 1/32, lancet's
default, or measured with --calibrate) unless --weights names a safetensors file with lancet's
parameter names. A table is printed last; --json writes everything.

usage: python3 benches/torch_llama.py [--layers 8] [--batch 2] [--seq 2048] [--rows all]
           [--runs 40] [--warmup 10] [--weights FILE] [--calibrate] [--inputs FILE]
           [--save-output FILE] [--json PATH] [--seed 0] [--cache-dir DIR]
"""

import argparse
import importlib.metadata
import importlib.util
import json
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.nn.attention import SDPBackend, sdpa_kernel

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
INIT_STD = 0.02  # lancet's INIT_STD
DEFAULT_INPUT_SCALE = 1.0 / 32.0  # lancet's DEFAULT_ACTIVATION_SCALE
# Relative L2 error against bf16 eager above which a row is reported as computing another function
# (measured at the headline shapes with random weights: bf16 torch.compile 1.4e-2, FP8 1.0e-1).
TOLERANCE = {"bf16": 5e-2, "fp8": 3e-1}
PROJECTIONS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


@dataclass(frozen=True)
class Config:
    """lancet's `llama-3.2-1b` preset; layers, batch and seq come from the command line."""

    layers: int
    batch: int
    seq: int
    hidden: int = 2048
    ffn: int = 8192
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 64
    rope_theta: float = 500_000.0
    norm_eps: float = 1e-5


@dataclass(frozen=True)
class Row:
    number: int
    key: str
    title: str
    precision: str  # "bf16" or "fp8"
    compile_glue: bool = False
    compile_whole: bool = False
    fast_accum: bool = False
    cuda_graph: bool = False


ROWS = [
    Row(1, "bf16_eager", "bf16 eager", "bf16"),
    Row(2, "bf16_compile", "bf16 full torch.compile", "bf16", compile_whole=True),
    Row(3, "fp8_eager", "FP8 (_scaled_mm) + cuDNN SDPA, eager glue", "fp8"),
    Row(4, "fp8_surgical", "FP8 + cuDNN SDPA + surgical torch.compile", "fp8", compile_glue=True),
    Row(
        5,
        "fp8_graph",
        "FP8 + surgical compile + fast accum, CUDA graph",
        "fp8",
        compile_glue=True,
        fast_accum=True,
        cuda_graph=True,
    ),
    Row(6, "fp8_compile", "FP8 full torch.compile", "fp8", compile_whole=True),
]


# ----------------------------------------------------------------------------- parameters


@dataclass
class Linear:
    """One projection in both precisions: the bf16 rows use `weight`, the FP8 rows the rest."""

    weight: torch.Tensor  # bf16 [out, in]
    weight_fp8: torch.Tensor  # e4m3 [out, in]
    weight_scale: torch.Tensor  # f32 scalar: weight ≈ weight_fp8 · weight_scale
    input_scale: torch.Tensor  # f32 scalar: the activation is quantized as x / input_scale


@dataclass
class Layer:
    input_norm: torch.Tensor
    qkv_proj: Linear
    o_proj: Linear
    post_norm: torch.Tensor
    gate_up_proj: Linear
    down_proj: Linear

    def linears(self):
        return {
            "self_attn.qkv_proj": self.qkv_proj,
            "self_attn.o_proj": self.o_proj,
            "mlp.gate_up_proj": self.gate_up_proj,
            "mlp.down_proj": self.down_proj,
        }


@dataclass
class Model:
    cfg: Config
    layers: list
    cos: torch.Tensor  # f32 [seq, 1, head_dim]: RoPE angles of each position, halves repeated
    sin: torch.Tensor


def scalar(value):
    return torch.tensor(value, dtype=torch.float32, device="cuda")


def quantize_weight(master, input_scale):
    """A Linear from an f32 master weight: per-tensor e4m3 with scale amax / 448."""
    amax = master.abs().amax()
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    return Linear(
        weight=master.to(torch.bfloat16),
        weight_fp8=(master / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8),
        weight_scale=scale,
        input_scale=input_scale,
    )


def normal(name, shape, std, seed):
    """Normal(0, std) values for the tensor `name`, the same whatever else is drawn."""
    gen = torch.Generator(device="cuda")
    gen.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
    return torch.randn(shape, generator=gen, device="cuda", dtype=torch.float32) * std


def build_model(cfg, weights_path, seed):
    """Loads the parameters by lancet's names from `weights_path`, or draws them at random.

    A stored e4m3 weight is used as is (the bf16 rows get it dequantized); a stored bf16 or f32
    weight is quantized as lancet quantizes random weights. A missing input_scale is 1/32."""
    stored = load_file(weights_path, device="cuda") if weights_path else None

    def tensor(name, shape):
        if name not in stored:
            sys.exit(f"{weights_path}: no tensor '{name}'")
        t = stored[name]
        if tuple(t.shape) != tuple(shape):
            sys.exit(f"{weights_path}: '{name}' has shape {list(t.shape)}, expected {list(shape)}")
        return t

    def stored_scalar(name, default=None):
        t = stored.get(name)
        if t is None and default is not None:
            return scalar(default)
        if t is None or t.numel() != 1:
            sys.exit(f"{weights_path}: '{name}' must be one f32 value")
        return t.float().reshape(())

    def norm(name):
        if stored is None:
            return torch.ones(cfg.hidden, dtype=torch.bfloat16, device="cuda")
        return tensor(f"{name}.weight", [cfg.hidden]).to(torch.bfloat16)

    def linear(name, out, inp):
        if stored is None:
            return quantize_weight(normal(f"{name}.weight", (out, inp), INIT_STD, seed), scalar(DEFAULT_INPUT_SCALE))
        w = tensor(f"{name}.weight", [out, inp])
        x_scale = stored_scalar(f"{name}.input_scale", DEFAULT_INPUT_SCALE)
        if w.dtype != FP8:
            return quantize_weight(w.float(), x_scale)
        w_scale = stored_scalar(f"{name}.weight_scale")
        return Linear((w.float() * w_scale).to(torch.bfloat16), w, w_scale, x_scale)

    d, hq, hkv = cfg.head_dim, cfg.heads, cfg.kv_heads
    layers = []
    for l in range(cfg.layers):
        p = f"layers.{l}."
        layers.append(
            Layer(
                input_norm=norm(p + "input_layernorm"),
                qkv_proj=linear(p + "self_attn.qkv_proj", (hq + 2 * hkv) * d, cfg.hidden),
                o_proj=linear(p + "self_attn.o_proj", cfg.hidden, hq * d),
                post_norm=norm(p + "post_attention_layernorm"),
                gate_up_proj=linear(p + "mlp.gate_up_proj", 2 * cfg.ffn, cfg.hidden),
                down_proj=linear(p + "mlp.down_proj", cfg.hidden, cfg.ffn),
            )
        )
    # RoPE as lancet's reference computes it: inv_freq = 1 / θ^(2i/D) and angles in f32.
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, d, 2, device="cuda", dtype=torch.float32) / d)
    angles = torch.arange(cfg.seq, device="cuda", dtype=torch.float32)[:, None] * inv_freq[None, :]
    angles = torch.cat((angles, angles), dim=-1)[:, None, :]
    return Model(cfg, layers, angles.cos(), angles.sin())


def load_inputs(cfg, inputs_path, seed):
    shape = (cfg.batch, cfg.seq, cfg.hidden)
    if inputs_path is None:
        return normal("hidden_states", shape, 1.0, seed).to(torch.bfloat16)
    x = load_file(inputs_path, device="cuda").get("hidden_states")
    if x is None:
        sys.exit(f"{inputs_path}: no tensor 'hidden_states'")
    if tuple(x.shape) != shape:
        sys.exit(f"{inputs_path}: hidden_states has shape {list(x.shape)}, --batch/--seq ask for {list(shape)}")
    return x.to(torch.bfloat16).contiguous()


# ----------------------------------------------------------------------------- the forward pass


def rms_norm(x, gain, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * gain.float()).to(x.dtype)


def quantize(x, scale):
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)


def rope(x, cos, sin):
    """NeoX rotation of x [B, S, heads, D]: channel i pairs with i + D/2."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat((-x2, x1), dim=-1) * sin).to(x.dtype)


def split_heads(qkv, cos, sin, cfg):
    """Packed qkv [B, S, (Hq + 2 Hkv) D] → RoPE'd q, k and v, each [B, heads, S, D]."""
    b, s, _ = qkv.shape
    d = cfg.head_dim
    q, k, v = qkv.split([cfg.heads * d, cfg.kv_heads * d, cfg.kv_heads * d], dim=-1)
    q = rope(q.view(b, s, cfg.heads, d), cos, sin)
    k = rope(k.view(b, s, cfg.kv_heads, d), cos, sin)
    return q.transpose(1, 2), k.transpose(1, 2), v.view(b, s, cfg.kv_heads, d).transpose(1, 2)


def merge_heads(o):
    """Attention output [B, Hq, S, D] → [B, S, Hq·D]."""
    b, h, s, d = o.shape
    return o.transpose(1, 2).reshape(b, s, h * d)


def swiglu(gate_up):
    gate, up = gate_up.chunk(2, dim=-1)
    return (F.silu(gate.float()) * up.float()).to(gate_up.dtype)


def sdpa(q, k, v, cfg):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / math.sqrt(cfg.head_dim), enable_gqa=True)


def forward_bf16(model, x, observe=None):
    """The bf16 forward; `observe(linear, activation)` sees the input of every linear."""
    cfg = model.cfg

    def linear(t, lin):
        if observe is not None:
            observe(lin, t)
        return F.linear(t, lin.weight)

    for layer in model.layers:
        h = rms_norm(x, layer.input_norm, cfg.norm_eps)
        q, k, v = split_heads(linear(h, layer.qkv_proj), model.cos, model.sin, cfg)
        x = x + linear(merge_heads(sdpa(q, k, v, cfg)), layer.o_proj)
        h = rms_norm(x, layer.post_norm, cfg.norm_eps)
        x = x + linear(swiglu(linear(h, layer.gate_up_proj)), layer.down_proj)
    return x


class Glue:
    """The tensor work between the library calls of the FP8 forward, as five functions: eager,
    or each compiled on its own (the seed's surgical torch.compile)."""

    def __init__(self, cfg, compiled):
        def norm_quant(x, gain, scale):
            return quantize(rms_norm(x, gain, cfg.norm_eps), scale).view(-1, cfg.hidden)

        def rope_split(qkv, cos, sin):
            return split_heads(qkv, cos, sin, cfg)

        def attn_out_quant(o, scale):
            return quantize(merge_heads(o), scale).view(-1, cfg.heads * cfg.head_dim)

        def swiglu_quant(gate_up, scale):
            return quantize(swiglu(gate_up), scale)

        def residual(x, y):
            return x + y.view(x.shape)

        wrap = (lambda f: torch.compile(f, fullgraph=True, dynamic=False)) if compiled else (lambda f: f)
        self.norm_quant = wrap(norm_quant)
        self.rope_split = wrap(rope_split)
        self.attn_out_quant = wrap(attn_out_quant)
        self.swiglu_quant = wrap(swiglu_quant)
        self.residual = wrap(residual)


def forward_fp8(model, x, glue, fast_accum):
    """The FP8 forward: library FP8 GEMMs and cuDNN attention, `glue` for everything else."""
    cfg = model.cfg
    b, s, _ = x.shape

    def linear(xq, lin):
        return torch._scaled_mm(
            xq,
            lin.weight_fp8.t(),
            scale_a=lin.input_scale,
            scale_b=lin.weight_scale,
            out_dtype=torch.bfloat16,
            use_fast_accum=fast_accum,
        )

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        for layer in model.layers:
            qkv = linear(glue.norm_quant(x, layer.input_norm, layer.qkv_proj.input_scale), layer.qkv_proj)
            q, k, v = glue.rope_split(qkv.view(b, s, -1), model.cos, model.sin)
            o = sdpa(q, k, v, cfg)
            x = glue.residual(x, linear(glue.attn_out_quant(o, layer.o_proj.input_scale), layer.o_proj))
            h = glue.norm_quant(x, layer.post_norm, layer.gate_up_proj.input_scale)
            gate_up = linear(h, layer.gate_up_proj)
            x = glue.residual(x, linear(glue.swiglu_quant(gate_up, layer.down_proj.input_scale), layer.down_proj))
    return x


def make_forward(row, model):
    if row.precision == "bf16":

        def fn(x):
            return forward_bf16(model, x)

    else:
        glue = Glue(model.cfg, compiled=row.compile_glue)

        def fn(x):
            return forward_fp8(model, x, glue, row.fast_accum)

    return torch.compile(fn, fullgraph=True, dynamic=False) if row.compile_whole else fn


def calibrate(model, x):
    """Sets every input_scale to amax / 448 of the activation it quantizes, in the bf16 model."""

    def observe(lin, t):
        amax = t.abs().amax().float()
        lin.input_scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))

    forward_bf16(model, x, observe)


# ----------------------------------------------------------------------------- one row, timed


def capture_graph(fn, x):
    """Captures fn(x) in one CUDA graph (after the side-stream warm-up capture needs); returns
    the replay function and the capture time in seconds."""
    static_x = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.cuda.graph(graph):
        static_out = fn(static_x)
    torch.cuda.synchronize()
    capture_s = time.perf_counter() - start

    def replay():
        graph.replay()
        return static_out

    return replay, capture_s


def time_runs(run, runs):
    """Milliseconds of each of `runs` calls, from CUDA events recorded around each call."""
    events = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def package_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def rel_l2(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def run_row(key, opts, result_dir):
    """Runs one row in this (fresh) process and writes `{key}.json` (and the output tensors as
    `{key}.safetensors` when --save-output is set) into result_dir."""
    row = next(r for r in ROWS if r.key == key)
    cfg = Config(layers=opts["layers"], batch=opts["batch"], seq=opts["seq"])

    def say(message):
        print(f"   [{key}] {message}", flush=True)

    start = time.perf_counter()
    model = build_model(cfg, opts["weights"], opts["seed"])
    x = load_inputs(cfg, opts["inputs"], opts["seed"])
    if row.precision == "fp8" and opts["calibrate"]:
        calibrate(model, x)
    torch.cuda.synchronize()
    say(f"weights and inputs ready in {time.perf_counter() - start:.1f} s (CUDA init included)")

    fwd = make_forward(row, model)
    start = time.perf_counter()
    fwd(x)
    torch.cuda.synchronize()
    first_call_s = time.perf_counter() - start
    say(f"first call {first_call_s:.2f} s")

    def run():
        return fwd(x)

    capture_s = None
    if row.cuda_graph:
        run, capture_s = capture_graph(fwd, x)
        say(f"CUDA graph captured in {capture_s * 1e3:.0f} ms")
    for _ in range(opts["warmup"]):
        run()
    samples = time_runs(run, opts["runs"])
    median = statistics.median(samples)
    say(f"{opts['runs']} runs: median {median:.3f} ms, min {min(samples):.3f}, max {max(samples):.3f}")

    out = run().clone()
    ref = forward_bf16(model, x)
    err = rel_l2(out, ref)
    ok = math.isfinite(err) and err <= TOLERANCE[row.precision]
    say(f"relative L2 error against bf16 eager: {err:.3e}" + ("" if ok else "  (ABOVE TOLERANCE)"))

    props = torch.cuda.get_device_properties(0)
    result = {
        "row": row.number,
        "key": key,
        "title": row.title,
        "precision": row.precision,
        "fast_accum": row.fast_accum,
        "cuda_graph": row.cuda_graph,
        "median_ms": median,
        "min_ms": min(samples),
        "max_ms": max(samples),
        "mean_ms": statistics.fmean(samples),
        "samples_ms": samples,
        "first_call_s": first_call_s,
        "capture_s": capture_s,
        "rel_l2_vs_bf16_eager": err,
        "tolerance": TOLERANCE[row.precision],
        "numerics_ok": ok,
        "max_memory_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
        "environment": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "triton": package_version("triton"),
            "gpu": props.name,
            "sm_count": props.multi_processor_count,
            "gpu_memory_gib": props.total_memory / 2**30,
        },
    }
    if row.precision == "fp8":
        result["input_scales"] = {
            f"layers.{l}.{name}.input_scale": lin.input_scale.item()
            for l, layer in enumerate(model.layers)
            for name, lin in layer.linears().items()
        }
    with open(os.path.join(result_dir, f"{key}.json"), "w") as f:
        json.dump(result, f)
    if opts["save_output"]:
        save_file(
            {"hidden_states": x.cpu(), f"last_hidden_state.{key}": out.cpu()},
            os.path.join(result_dir, f"{key}.safetensors"),
        )


# ----------------------------------------------------------------------------- driver


def parse_rows(text):
    if text == "all":
        return ROWS
    picked = []
    for item in text.split(","):
        item = item.strip()
        match = [r for r in ROWS if item in (str(r.number), r.key)]
        if not match:
            sys.exit(f"unknown row '{item}': use 1-6 or one of {', '.join(r.key for r in ROWS)}")
        picked += match
    return sorted(set(picked), key=lambda r: r.number)


def fmt_s(seconds):
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"


def print_table(report):
    cfg = report["config"]
    env = report.get("environment", {})
    print()
    print(
        f"PyTorch {env.get('torch', torch.__version__)}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, "
        f"{env.get('gpu', 'no GPU')}"
    )
    print(
        f"llama-3.2-1b layer stack: {cfg['layers']} layers, batch {cfg['batch']}, seq {cfg['seq']}; "
        f"median of {cfg['runs']} runs after {cfg['warmup']} warm-up; first call from a cold start"
    )
    print(
        f"{'#':<2} {'approach':<48} {'ms':>7} {'min':>7} {'max':>7} {'× best':>7}  "
        f"{'one-time (first call)':<24} {'rel L2 vs bf16 eager':>20}"
    )
    done = [r for r in report["rows"] if "median_ms" in r]
    best = min((r["median_ms"] for r in done), default=None)
    for r in report["rows"]:
        row = next(x for x in ROWS if x.key == r["key"])
        if "median_ms" not in r:
            print(f"{row.number:<2} {row.title:<48} {'failed: ' + r['error']}")
            continue
        once = fmt_s(r["first_call_s"])
        if r["capture_s"] is not None:
            once += f" + {r['capture_s'] * 1e3:.0f} ms capture"
        check = "" if r["numerics_ok"] else "  ABOVE TOLERANCE"
        print(
            f"{row.number:<2} {row.title:<48} {r['median_ms']:>7.2f} {r['min_ms']:>7.2f} {r['max_ms']:>7.2f} "
            f"{r['median_ms'] / best:>6.2f}×  {once:<24} {r['rel_l2_vs_bf16_eager']:>20.2e}{check}"
        )
    te = report["transformer_engine"]
    print("Transformer Engine: " + ("not installed on this machine" if te is None else f"{te}, not benchmarked here"))


def main():
    parser = argparse.ArgumentParser(
        description="PyTorch reference rows for lancet's llama-3.2-1b benchmark (see the module docstring)."
    )
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--rows", default="all", help="'all' or a comma-separated list of row numbers or keys")
    parser.add_argument("--runs", type=int, default=40, help="timed forward passes per row")
    parser.add_argument("--warmup", type=int, default=10, help="untimed forward passes per row before timing")
    parser.add_argument("--weights", help="safetensors file with lancet's parameter names (default: random)")
    parser.add_argument("--calibrate", action="store_true", help="FP8 input scales = amax / 448 in the bf16 model")
    parser.add_argument("--inputs", help="safetensors file holding 'hidden_states' [batch, seq, 2048]")
    parser.add_argument(
        "--save-output",
        help="safetensors file to write 'hidden_states' and each row's 'last_hidden_state.<row key>' to",
    )
    parser.add_argument("--json", help="write the full report here")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    parser.add_argument(
        "--cache-dir",
        help="keep Inductor's, Triton's and the CUDA JIT caches here, shared by all rows and runs "
        "(default: each row starts from empty caches)",
    )
    args = parser.parse_args()
    rows = parse_rows(args.rows)
    for path in (args.weights, args.inputs):
        if path and not os.path.isfile(path):
            sys.exit(f"no such file: {path}")
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")

    report = {
        "config": {**vars(args), "model": "llama-3.2-1b", **Config(args.layers, args.batch, args.seq).__dict__},
        "transformer_engine": (package_version("transformer_engine") or "installed")
        if importlib.util.find_spec("transformer_engine")
        else None,
        "rows": [],
    }
    spawn = multiprocessing.get_context("spawn")
    outputs = {}
    with tempfile.TemporaryDirectory(prefix="torch_llama_") as tmp:
        for i, row in enumerate(rows):
            print(f"== [{i + 1}/{len(rows)}] row {row.number} {row.key}: {row.title}", flush=True)
            cache = args.cache_dir or os.path.join(tmp, f"cache_{row.key}")
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(cache, "inductor")
            os.environ["TRITON_CACHE_DIR"] = os.path.join(cache, "triton")
            os.environ["CUDA_CACHE_PATH"] = os.path.join(cache, "cuda")
            start = time.perf_counter()
            proc = spawn.Process(target=run_row, args=(row.key, vars(args), tmp))
            proc.start()
            proc.join()
            result_path = os.path.join(tmp, f"{row.key}.json")
            if proc.exitcode == 0 and os.path.isfile(result_path):
                with open(result_path) as f:
                    result = json.load(f)
                report.setdefault("environment", result.pop("environment"))
            else:
                result = {"row": row.number, "key": row.key, "error": f"process exit code {proc.exitcode}"}
            result["process_s"] = time.perf_counter() - start
            report["rows"].append(result)
            print(f"   row process took {result['process_s']:.1f} s", flush=True)
            if args.save_output and "median_ms" in result:
                outputs.update(load_file(os.path.join(tmp, f"{row.key}.safetensors")))

    done = [r for r in report["rows"] if "median_ms" in r]
    if done:
        best = min(r["median_ms"] for r in done)
        for r in done:
            r["ratio_to_fastest"] = r["median_ms"] / best
    if args.save_output and outputs:
        save_file(outputs, args.save_output)
        print(f"outputs written to {args.save_output}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"report written to {args.json}")
    print_table(report)
    failed = len(done) < len(rows) or not all(r["numerics_ok"] for r in done)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
