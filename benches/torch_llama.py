"""PyTorch's side of the Llama benchmark, run the ways of the seed benchmark (docs/benchmarks.md,
shared DESIGN.md "The seed benchmark"), and the checkpoint format lancet and PyTorch exchange.

The exchange format is a Hugging Face Llama checkpoint directory: `config.json` (LlamaConfig
fields) and `model.safetensors` with the names `LlamaModel.save_pretrained` writes (a `model.`
prefix, as `LlamaForCausalLM` writes, is accepted); inputs are a safetensors file holding
`input_ids` (int64 [B, S]) or `hidden_states` (bf16 [B, S, hidden]); outputs hold
`last_hidden_state` (f32). The function is Hugging Face's `LlamaModel`: `hidden_states` are its
`inputs_embeds`, `input_ids` are looked up in `embed_tokens.weight` (before the timed forward
pass: an exact gather). Per layer, then the final norm:

    h   = RMSNorm(x) · input_layernorm.weight                    (f32 math, bf16 out)
    qkv = h · [q_proj; k_proj; v_proj]ᵀ                            (packed at load: one GEMM)
    q, k, v = split(qkv); q, k = RoPE(q), RoPE(k)                  (NeoX half-split, llama3 scaling)
    x   = x + o_proj(merge_heads(causal GQA SDPA(q, k, v)))        (scale 1/√D)
    h   = RMSNorm(x) · post_attention_layernorm.weight
    x   = x + down_proj(silu(gate) · up)     with [gate, up] = h · [gate_proj; up_proj]ᵀ
    last_hidden_state = RMSNorm(x) · norm.weight

RoPE's inverse frequencies are computed as transformers computes them, in f32: θ^(−2i/D), then
for `rope_scaling` of type llama3 its `_compute_llama3_parameters` (wavelengths under
original/high_freq_factor kept, over original/low_freq_factor divided by `factor`, smoothly
interpolated between); cos and sin of position · inv_freq in f32.

The FP8 rows quantize the activation in front of each of the four (packed) linears to e4m3 with
a static per-tensor scale (saturate(x / input_scale)), calibrated before the first call: every
input_scale is amax / 448 of the activation it quantizes, measured on one bf16 pass over the same
inputs (reported as `calibrate_s`). Weights are e4m3 with scale amax(weight) / 448 per packed
tensor, and the linear is `torch._scaled_mm`.

Rows (each runs in a fresh process with empty Inductor, Triton and CUDA JIT caches, so its first
call is a cold start; see --cache-dir):
  1 bf16_eager    bf16 eager: the plain PyTorch baseline, and the numerical reference of every row.
  2 bf16_compile  bf16, the whole forward under torch.compile: what Inductor alone makes of it.
  3 fp8_eager     FP8 `torch._scaled_mm` linears + cuDNN SDPA (forced, native GQA), eager glue:
                  the library calls of the seed's recipe without any fusion of the glue.
  4 fp8_surgical  row 3 with *surgical* torch.compile (the seed's recipe): norm+quant, RoPE/split,
                  attention-out quant, SwiGLU+quant, the residual add and the final norm are six
                  separately compiled functions; the linears and SDPA stay library calls.
  5 fp8_graph     row 4 with fast accumulation, the whole forward captured in one CUDA graph and
                  replayed: PyTorch at its best, the row lancet must beat (capture timed apart).
  6 fp8_compile   the FP8 forward of row 3 entirely under torch.compile (cuDNN SDPA still forced).

Each row reports: the median, min and max of --runs forward passes timed with CUDA events after
--warmup untimed ones; its one-time cost, which is the first call (compilation included), plus
the FP8 rows' calibration pass (which, like the bf16 rows' first call, pays the libraries' first
use) and the CUDA graph capture where there is one (process start, CUDA init and weight loading
are reported apart, as `setup_s`); and the relative L2 error of its output against bf16 eager,
which checks that every row computes the same function. A table is printed last; --json writes
everything; --save-output writes each row's output.

Weights come from --checkpoint DIR, or are random: drawn from --seed on the GPU exactly as
--make-checkpoint draws them. --make-checkpoint DIR writes such a random checkpoint of
Llama-3.2-1B's dimensions (--layers deep, llama3 RoPE scaling; linears Normal(0, 0.02), norm
gains 1 + Normal(0, 0.05), bf16) and DIR/inputs.safetensors (Normal(0, 1) bf16 hidden states),
then exits. Its config says vocab_size 128256 but it stores no embedding unless --vocab N asks
for one (N rows), in which case the inputs are random `input_ids` instead.

benches/side_by_side.py and benches/hf_parity.py import this module: rel_l2, read_checkpoint,
load_inputs, build_model, calibrate, forward_bf16, forward_fp8 and Glue are shared.

usage: python3 benches/torch_llama.py [--checkpoint DIR] [--inputs FILE] [--rows all] [--runs 40]
           [--warmup 10] [--save-output FILE] [--json PATH] [--cache-dir DIR]
           [--layers 8] [--batch 2] [--seq 2048] [--seed 0]
       python3 benches/torch_llama.py --make-checkpoint DIR [--layers 8] [--batch 2] [--seq 2048]
           [--vocab N] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
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
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.nn.attention import SDPBackend, sdpa_kernel

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
INIT_STD = 0.02  # random checkpoints: linears (and embedding) Normal(0, INIT_STD)
GAIN_NOISE_STD = 0.05  # random checkpoints: norm gains 1 + Normal(0, GAIN_NOISE_STD)
DEFAULT_LAYERS, DEFAULT_BATCH, DEFAULT_SEQ = 8, 2, 2048
# Relative L2 error against bf16 eager above which a row is reported as computing another function
# (measured at the headline shapes with random weights, before the final norm and calibration:
# bf16 torch.compile 1.4e-2, FP8 with 1/32 input scales 1.0e-1).
TOLERANCE = {"bf16": 5e-2, "fp8": 3e-1}
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
# The packed projections of the forward pass, each the concatenation (along its output rows) of
# these Hugging Face projections.
PACKED = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attn.o_proj": ("self_attn.o_proj",),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.down_proj": ("mlp.down_proj",),
}


@dataclass(frozen=True)
class Config:
    """A Llama model's dimensions; the defaults are Llama-3.2-1B's, 8 layers deep."""

    layers: int = DEFAULT_LAYERS
    hidden: int = 2048
    ffn: int = 8192
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 64
    rope_theta: float = 500_000.0
    # llama3 RoPE scaling (the LLAMA3_KEYS), or None for plain RoPE.
    rope_scaling: dict | None = dataclasses.field(
        default_factory=lambda: {
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }
    )
    norm_eps: float = 1e-5
    vocab: int = 128_256

    def to_hf(self):
        """config.json of this model, the fields of transformers' LlamaConfig."""
        c = {
            "architectures": ["LlamaModel"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.ffn,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "rms_norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": 131_072,  # Llama-3.2-1B's; no effect on llama3 RoPE
            "vocab_size": self.vocab,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
        }
        if self.rope_scaling is not None:
            c["rope_scaling"] = {"rope_type": "llama3", **self.rope_scaling}
        return c

    @staticmethod
    def from_hf(c, where):
        """The Config of a config.json, its RoPE settings as transformers 4 writes them
        (`rope_theta`, `rope_scaling`) or as transformers 5 does (`rope_parameters`, θ inside)."""
        if c.get("model_type", "llama") != "llama":
            sys.exit(f"{where}: model_type '{c['model_type']}' is not llama")
        if c.get("hidden_act", "silu") != "silu" or c.get("attention_bias") or c.get("mlp_bias"):
            sys.exit(f"{where}: only Llama's silu MLP without biases is supported")
        rope = {**(c.get("rope_scaling") or {}), **(c.get("rope_parameters") or {})}
        kind = rope.get("rope_type") or rope.get("type") or "default"
        if kind not in ("default", "llama3"):
            sys.exit(f"{where}: RoPE type '{kind}' is not supported (default or llama3)")
        try:
            heads = c["num_attention_heads"]
            return Config(
                layers=c["num_hidden_layers"],
                hidden=c["hidden_size"],
                ffn=c["intermediate_size"],
                heads=heads,
                kv_heads=c.get("num_key_value_heads") or heads,
                head_dim=c.get("head_dim") or c["hidden_size"] // heads,
                rope_theta=float(rope.get("rope_theta") or c.get("rope_theta") or 10_000.0),
                rope_scaling={k: rope[k] for k in LLAMA3_KEYS} if kind == "llama3" else None,
                norm_eps=c.get("rms_norm_eps", 1e-6),
                vocab=c["vocab_size"],
            )
        except KeyError as e:
            sys.exit(f"{where}: no {e}")


def linear_shapes(cfg):
    """[out, in] of each projection of a layer, by its Hugging Face name."""
    q, kv = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    return {
        "self_attn.q_proj": (q, cfg.hidden),
        "self_attn.k_proj": (kv, cfg.hidden),
        "self_attn.v_proj": (kv, cfg.hidden),
        "self_attn.o_proj": (cfg.hidden, q),
        "mlp.gate_proj": (cfg.ffn, cfg.hidden),
        "mlp.up_proj": (cfg.ffn, cfg.hidden),
        "mlp.down_proj": (cfg.hidden, cfg.ffn),
    }


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


# ----------------------------------------------------------------------------- checkpoints


def generator(name, seed):
    """A CUDA generator for the random tensor `name`: its values do not depend on what else is drawn."""
    gen = torch.Generator(device="cuda")
    gen.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
    return gen


def normal(name, shape, std, seed):
    """Normal(0, std) values for the tensor `name`, in f32."""
    return torch.randn(shape, generator=generator(name, seed), device="cuda", dtype=torch.float32) * std


def random_state(cfg, seed, embedding):
    """Random bf16 weights by Hugging Face name, on the GPU; `embed_tokens.weight` only if asked."""

    def draw(name, shape, std, mean=0.0):
        return (mean + normal(name, shape, std, seed)).to(torch.bfloat16)

    state = {"norm.weight": draw("norm.weight", (cfg.hidden,), GAIN_NOISE_STD, mean=1.0)}
    if embedding:
        state["embed_tokens.weight"] = draw("embed_tokens.weight", (cfg.vocab, cfg.hidden), INIT_STD)
    for l in range(cfg.layers):
        p = f"layers.{l}."
        for norm in ("input_layernorm", "post_attention_layernorm"):
            state[f"{p}{norm}.weight"] = draw(f"{p}{norm}.weight", (cfg.hidden,), GAIN_NOISE_STD, mean=1.0)
        for proj, shape in linear_shapes(cfg).items():
            state[f"{p}{proj}.weight"] = draw(f"{p}{proj}.weight", shape, INIT_STD)
    return state


def random_inputs(cfg, batch, seq, seed, ids):
    """The tensors of a random inputs file: Normal(0, 1) bf16 `hidden_states`, or uniform
    `input_ids` below the vocabulary size when `ids`."""
    if ids:
        shape, gen = (batch, seq), generator("input_ids", seed)
        return {"input_ids": torch.randint(0, cfg.vocab, shape, generator=gen, device="cuda")}
    return {"hidden_states": normal("hidden_states", (batch, seq, cfg.hidden), 1.0, seed).to(torch.bfloat16)}


def make_checkpoint(directory, cfg, batch, seq, seed, embedding):
    """Writes a random checkpoint (config.json, model.safetensors) and inputs.safetensors into
    `directory`, refusing to overwrite any of them."""
    paths = [os.path.join(directory, name) for name in ("config.json", "model.safetensors", "inputs.safetensors")]
    for path in paths:
        if os.path.exists(path):
            sys.exit(f"{path} exists: --make-checkpoint writes into a new or empty directory")
    os.makedirs(directory, exist_ok=True)
    with open(paths[0], "w") as f:
        json.dump(cfg.to_hf(), f, indent=2)
    state = random_state(cfg, seed, embedding)
    # transformers refuses safetensors files without this metadata.
    save_file({name: t.cpu() for name, t in state.items()}, paths[1], metadata={"format": "pt"})
    inputs = random_inputs(cfg, batch, seq, seed, ids=embedding)
    save_file({name: t.cpu() for name, t in inputs.items()}, paths[2])
    params = sum(t.numel() for t in state.values())
    print(f"wrote {directory}: {cfg.layers} layers, {params / 1e6:.0f} M parameters, inputs {list(inputs)} "
          f"[{batch}, {seq}]")


def read_config(directory):
    path = os.path.join(directory, "config.json")
    try:
        with open(path) as f:
            return Config.from_hf(json.load(f), path)
    except (OSError, ValueError) as e:
        sys.exit(f"{path}: {e}")


def read_checkpoint(directory):
    """(Config, {Hugging Face name without `model.`: tensor on the GPU}) of a checkpoint directory."""
    cfg = read_config(directory)
    path = os.path.join(directory, "model.safetensors")
    if not os.path.isfile(path):
        sys.exit(f"{directory}: no model.safetensors (sharded checkpoints are not supported)")
    prefix = "model."
    state = {name.removeprefix(prefix): t for name, t in load_file(path, device="cuda").items()}
    return cfg, state


def input_shape(path):
    """(batch, seq) of an inputs file, from its header."""
    with safe_open(path, framework="pt") as f:
        for name in ("hidden_states", "input_ids"):
            if name in f.keys():
                return tuple(f.get_slice(name).get_shape()[:2])
    sys.exit(f"{path}: neither 'hidden_states' nor 'input_ids'")


def hidden_states_of(tensors, cfg, state, where):
    """The bf16 [B, S, hidden] input of the layer stack: `hidden_states` as given, or `input_ids`
    looked up in the checkpoint's embed_tokens.weight."""
    if "hidden_states" in tensors:
        x = tensors["hidden_states"]
        if x.dim() != 3 or x.shape[-1] != cfg.hidden:
            sys.exit(f"{where}: hidden_states has shape {list(x.shape)}, expected [batch, seq, {cfg.hidden}]")
        return x.to("cuda", torch.bfloat16).contiguous()
    if "input_ids" in tensors:
        ids = tensors["input_ids"].to("cuda", torch.int64)
        embed = state.get("embed_tokens.weight")
        if embed is None:
            sys.exit(f"{where}: input_ids need embed_tokens.weight, which the weights lack")
        if embed.dim() != 2 or embed.shape[1] != cfg.hidden:
            sys.exit(f"embed_tokens.weight has shape {list(embed.shape)}, expected [vocab, {cfg.hidden}]")
        if ids.dim() != 2 or ids.min().item() < 0 or ids.max().item() >= embed.shape[0]:
            sys.exit(f"{where}: input_ids must be [batch, seq] ids below {embed.shape[0]}")
        return F.embedding(ids, embed.to("cuda", torch.bfloat16))
    sys.exit(f"{where}: neither 'hidden_states' nor 'input_ids'")


def load_inputs(path, cfg, state):
    return hidden_states_of(load_file(path, device="cuda"), cfg, state, path)


# ----------------------------------------------------------------------------- parameters


@dataclass
class Linear:
    """One projection in both precisions: the bf16 rows use `weight`, the FP8 rows the rest."""

    weight: torch.Tensor  # bf16 [out, in]
    weight_fp8: torch.Tensor  # e4m3 [out, in]
    weight_scale: torch.Tensor  # f32 scalar: weight ≈ weight_fp8 · weight_scale
    input_scale: torch.Tensor | None = None  # f32 scalar, set by calibrate(): x is quantized as x / input_scale


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
    norm: torch.Tensor  # bf16 [hidden]: the final norm's gain
    cos: torch.Tensor  # f32 [seq, 1, head_dim]: RoPE angles of each position, halves repeated
    sin: torch.Tensor


def quantize_weight(master):
    """A Linear from an f32 master weight: per-tensor e4m3 with scale amax / 448."""
    amax = master.abs().amax()
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    return Linear(
        weight=master.to(torch.bfloat16),
        weight_fp8=(master / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8),
        weight_scale=scale,
    )


def rope_frequencies(cfg):
    """RoPE's inverse frequencies [D/2] in f32 on the CPU, computed as transformers computes them
    (`_compute_default_rope_parameters`, then `_compute_llama3_parameters` for llama3 scaling)."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    if cfg.rope_scaling is None:
        return inv_freq
    s = cfg.rope_scaling
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    original = s["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = original / low, original / high
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are divided by `factor`, short ones kept, those between interpolated.
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return torch.where(medium, smoothed, scaled)


def rope_tables(cfg, seq):
    """cos and sin, f32 [seq, 1, head_dim] on the GPU, of position · inv_freq (halves repeated)."""
    inv_freq = rope_frequencies(cfg).to("cuda")
    angles = torch.arange(seq, device="cuda", dtype=torch.float32)[:, None] * inv_freq[None, :]
    angles = torch.cat((angles, angles), dim=-1)[:, None, :]
    return angles.cos(), angles.sin()


def build_model(cfg, state, seq, where):
    """The Model of Hugging Face-named weights, its packed projections concatenated and quantized;
    RoPE tables for `seq` positions. Input scales are left to calibrate()."""
    shapes = linear_shapes(cfg)

    def tensor(name, shape):
        t = state.get(name)
        if t is None:
            sys.exit(f"{where}: no tensor '{name}'")
        if tuple(t.shape) != tuple(shape):
            sys.exit(f"{where}: '{name}' has shape {list(t.shape)}, expected {list(shape)}")
        return t.to("cuda")

    def gain(name):
        return tensor(f"{name}.weight", (cfg.hidden,)).to(torch.bfloat16)

    def packed(prefix, name):
        parts = [tensor(f"{prefix}{part}.weight", shapes[part]).float() for part in PACKED[name]]
        return quantize_weight(torch.cat(parts))

    layers = []
    for l in range(cfg.layers):
        p = f"layers.{l}."
        layers.append(
            Layer(
                input_norm=gain(p + "input_layernorm"),
                qkv_proj=packed(p, "self_attn.qkv_proj"),
                o_proj=packed(p, "self_attn.o_proj"),
                post_norm=gain(p + "post_attention_layernorm"),
                gate_up_proj=packed(p, "mlp.gate_up_proj"),
                down_proj=packed(p, "mlp.down_proj"),
            )
        )
    cos, sin = rope_tables(cfg, seq)
    return Model(cfg, layers, gain("norm"), cos, sin)


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
    return rms_norm(x, model.norm, cfg.norm_eps)


class Glue:
    """The tensor work between the library calls of the FP8 forward, as six functions: eager, or
    each compiled on its own (the seed's surgical torch.compile, plus the final norm)."""

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

        def final_norm(x, gain):
            return rms_norm(x, gain, cfg.norm_eps)

        wrap = (lambda f: torch.compile(f, fullgraph=True, dynamic=False)) if compiled else (lambda f: f)
        self.norm_quant = wrap(norm_quant)
        self.rope_split = wrap(rope_split)
        self.attn_out_quant = wrap(attn_out_quant)
        self.swiglu_quant = wrap(swiglu_quant)
        self.residual = wrap(residual)
        self.final_norm = wrap(final_norm)


def forward_fp8(model, x, glue, fast_accum):
    """The FP8 forward (after calibrate()): library FP8 GEMMs and cuDNN attention, `glue` for
    everything else."""
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
    return glue.final_norm(x, model.norm)


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


def rel_l2(out, ref):
    """‖out − ref‖ / ‖ref‖ in f64."""
    if out.shape != ref.shape:
        raise ValueError(f"shape {list(out.shape)} against the reference's {list(ref.shape)}")
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


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


def model_source(opts):
    """(Config, weights by Hugging Face name, description) of --checkpoint, or random ones."""
    if opts["checkpoint"]:
        cfg, state = read_checkpoint(opts["checkpoint"])
        return cfg, state, opts["checkpoint"]
    cfg = Config(layers=opts["layers"] or DEFAULT_LAYERS)
    return cfg, random_state(cfg, opts["seed"], embedding=False), f"random weights (seed {opts['seed']})"


def model_inputs(opts, cfg, state):
    """The bf16 hidden states of --inputs, or random ones of shape [batch, seq, hidden]."""
    if opts["inputs"]:
        return load_inputs(opts["inputs"], cfg, state)
    tensors = random_inputs(cfg, opts["batch"], opts["seq"], opts["seed"], ids=False)
    return hidden_states_of(tensors, cfg, state, "random inputs")


def run_row(key, opts, result_dir):
    """Runs one row in this (fresh) process and writes `{key}.json` (and its output as
    `{key}.safetensors` when --save-output is set) into result_dir."""
    row = next(r for r in ROWS if r.key == key)

    def say(message):
        print(f"   [{key}] {message}", flush=True)

    start = time.perf_counter()
    cfg, state, where = model_source(opts)
    x = model_inputs(opts, cfg, state)
    model = build_model(cfg, state, x.shape[1], where)
    del state
    torch.cuda.synchronize()
    setup_s = time.perf_counter() - start
    say(f"weights and inputs ready in {setup_s:.1f} s (CUDA init included)")

    calibrate_s = None
    if row.precision == "fp8":
        start = time.perf_counter()
        calibrate(model, x)
        torch.cuda.synchronize()
        calibrate_s = time.perf_counter() - start
        say(f"input scales calibrated on a bf16 pass in {calibrate_s * 1e3:.0f} ms")

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
        "setup_s": setup_s,
        "calibrate_s": calibrate_s,
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
        save_file({f"last_hidden_state.{key}": out.float().cpu()}, os.path.join(result_dir, f"{key}.safetensors"))


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
        f"Llama, {cfg['weights']}: {cfg['layers']} layers + final norm, hidden {cfg['hidden']}, "
        f"batch {cfg['batch']}, seq {cfg['seq']}; median of {cfg['runs']} runs after {cfg['warmup']} warm-up; "
        f"first call from a cold start"
    )
    print(
        f"{'#':<2} {'approach':<48} {'ms':>7} {'min':>7} {'max':>7} {'× best':>7}  "
        f"{'one-time (first call [+ calibration] [+ capture])':<50} {'rel L2 vs bf16 eager':>20}"
    )
    done = [r for r in report["rows"] if "median_ms" in r]
    best = min((r["median_ms"] for r in done), default=None)
    for r in report["rows"]:
        row = next(x for x in ROWS if x.key == r["key"])
        if "median_ms" not in r:
            print(f"{row.number:<2} {row.title:<48} {'failed: ' + r['error']}")
            continue
        once = fmt_s(r["first_call_s"])
        if r["calibrate_s"] is not None:
            once += f" + {r['calibrate_s']:.2f} s calibration"
        if r["capture_s"] is not None:
            once += f" + {r['capture_s'] * 1e3:.0f} ms capture"
        check = "" if r["numerics_ok"] else "  ABOVE TOLERANCE"
        print(
            f"{row.number:<2} {row.title:<48} {r['median_ms']:>7.2f} {r['min_ms']:>7.2f} {r['max_ms']:>7.2f} "
            f"{r['median_ms'] / best:>6.2f}×  {once:<50} {r['rel_l2_vs_bf16_eager']:>20.2e}{check}"
        )
    te = report["transformer_engine"]
    print("Transformer Engine: " + ("not installed on this machine" if te is None else f"{te}, not benchmarked here"))


def parse_args():
    parser = argparse.ArgumentParser(
        description="PyTorch reference rows for lancet's Llama benchmark, and its random checkpoints "
        "(see the module docstring)."
    )
    parser.add_argument("--checkpoint", help="Hugging Face Llama checkpoint directory (default: random weights)")
    parser.add_argument("--inputs", help="safetensors file holding 'hidden_states' or 'input_ids' (default: random)")
    parser.add_argument("--rows", default="all", help="'all' or a comma-separated list of row numbers or keys")
    parser.add_argument("--runs", type=int, default=40, help="timed forward passes per row")
    parser.add_argument("--warmup", type=int, default=10, help="untimed forward passes per row before timing")
    parser.add_argument("--save-output", help="safetensors file to write each row's 'last_hidden_state.<row key>' (f32) to")
    parser.add_argument("--json", help="write the full report here")
    parser.add_argument(
        "--cache-dir",
        help="keep Inductor's, Triton's and the CUDA JIT caches here, shared by all rows and runs "
        "(default: each row starts from empty caches)",
    )
    parser.add_argument("--make-checkpoint", metavar="DIR", help="write a random checkpoint and inputs here, and exit")
    parser.add_argument("--layers", type=int, help=f"layers of random weights (default {DEFAULT_LAYERS})")
    parser.add_argument("--batch", type=int, help=f"batch of random inputs (default {DEFAULT_BATCH}; --inputs has its own)")
    parser.add_argument("--seq", type=int, help=f"sequence of random inputs (default {DEFAULT_SEQ}; --inputs has its own)")
    parser.add_argument("--vocab", type=int, help="--make-checkpoint: store an embedding of this many rows, inputs as input_ids")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    args = parser.parse_args()
    if args.make_checkpoint and (args.checkpoint or args.inputs):
        parser.error("--make-checkpoint writes weights and inputs: it takes no --checkpoint or --inputs")
    if args.vocab is not None and not args.make_checkpoint:
        parser.error("--vocab is for --make-checkpoint")
    if args.checkpoint and args.layers is not None:
        parser.error("--layers is for random weights: a checkpoint's config.json has its own")
    for path in (args.checkpoint, args.inputs):
        if path and not os.path.exists(path):
            parser.error(f"no such file or directory: {path}")
    if args.inputs:
        batch, seq = input_shape(args.inputs)
        if args.batch not in (None, batch) or args.seq not in (None, seq):
            parser.error(f"--batch/--seq disagree with {args.inputs}: batch {batch}, seq {seq}")
        args.batch, args.seq = batch, seq
    args.batch = args.batch or DEFAULT_BATCH
    args.seq = args.seq or DEFAULT_SEQ
    return args


def run_rows(args, rows):
    """Runs each row in a fresh process; returns the report (and writes the outputs if asked)."""
    cfg = read_config(args.checkpoint) if args.checkpoint else Config(layers=args.layers or DEFAULT_LAYERS)
    weights = args.checkpoint or f"random weights (seed {args.seed})"
    report = {
        "config": {**vars(args), "weights": weights, **dataclasses.asdict(cfg)},
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
    if args.save_output and outputs:
        save_file(outputs, args.save_output)
        print(f"outputs written to {args.save_output}")
    return report


def main():
    args = parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    if args.make_checkpoint:
        cfg = Config(layers=args.layers or DEFAULT_LAYERS, vocab=args.vocab or Config.vocab)
        make_checkpoint(args.make_checkpoint, cfg, args.batch, args.seq, args.seed, embedding=args.vocab is not None)
        return
    rows = parse_rows(args.rows)
    report = run_rows(args, rows)
    done = [r for r in report["rows"] if "median_ms" in r]
    if done:
        best = min(r["median_ms"] for r in done)
        for r in done:
            r["ratio_to_fastest"] = r["median_ms"] / best
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"report written to {args.json}")
    print_table(report)
    failed = len(done) < len(rows) or not all(r["numerics_ok"] for r in done)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
