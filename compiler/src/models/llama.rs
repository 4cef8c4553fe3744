//! Llama-style decoder stacks, and the presets the benchmarks and tests use.
//!
//! One builder covers the family: RMSNorm or LayerNorm, SwiGLU or GELU MLP, MHA or GQA, NeoX or
//! GPT-J RoPE, FP8 or bf16 linears. Q, K and V come from one packed projection (and gate and up
//! from another) because that is how the fast path runs them: one GEMM each, then a split.
//! Parameter names follow Hugging Face's Llama where one exists (`layers.3.mlp.down_proj.weight`).

use serde::{Deserialize, Serialize};

use crate::ir::{Builder, DType, GeluApprox, Graph, GraphError, Init, RopeScaling, RopeStyle, Tensor};

/// Which normalisation each block uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    Rms,
    Layer,
}

/// Which MLP each block uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MlpKind {
    /// `down(silu(gate(x)) · up(x))`, gate and up packed into one projection.
    Swiglu,
    /// `down(gelu_tanh(up(x)))`.
    Gelu,
}

/// The precision of the linears (everything else stays bf16).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// e4m3 × e4m3 GEMMs with per-tensor scales; activations are quantized before each linear.
    Fp8,
    Bf16,
}

/// The precision of attention's two matrix products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionPrecision {
    /// bf16 Q, K, V and O (the attention output is quantized for the output projection apart).
    #[default]
    Bf16,
    /// e4m3 Q, K, V and O with per-tensor scales: Q, K and V are quantized where RoPE writes
    /// them and O leaves attention already quantized for the output projection, so the
    /// attention-output quantize pass disappears. Needs FP8 linears.
    Fp8,
}

/// How FP8 attention scales its probabilities before rounding them to e4m3. NVIDIA's model of
/// the Hopper kernel (cudnn-frontend's FP8 SDPA test reference) rounds the *unnormalised*
/// `exp(s − m)` times `p_scale / 16`, where `m` is a running row maximum raised only once a block
/// of keys exceeds it by more than 4, so values reach e⁴ ≈ 55: 128 keeps 55 · 8 within e4m3's
/// 448 (NVIDIA's own tests use 112).
pub const FP8_ATTENTION_P_SCALE: f32 = 128.0;

/// The default per-tensor scale of a quantized activation before calibration: values up to
/// 448/32 = 14 stay unsaturated, which covers unit-variance activations past 10σ. Calibration
/// replaces it with the measured `amax / 448`.
pub const DEFAULT_ACTIVATION_SCALE: f32 = 1.0 / 32.0;

/// The standard deviation of random linear and embedding weights (Hugging Face's
/// `initializer_range` default), so random models have realistic activation magnitudes.
pub const INIT_STD: f32 = 0.02;

/// Everything that shapes a decoder stack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub layers: usize,
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    /// Llama 3's long-context frequency scaling (Llama 3.1 and 3.2 checkpoints have one).
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// Channels of each head that RoPE rotates (`head_dim` for full rotary).
    pub rotary_dim: usize,
    pub norm: NormKind,
    pub norm_eps: f32,
    pub mlp: MlpKind,
    pub precision: Precision,
    /// The precision of attention (FP8 only with FP8 linears).
    #[serde(default)]
    pub attention: AttentionPrecision,
    /// The dtype of activations and of every weight that is not FP8: bf16 as the benchmarks run,
    /// f32 for checks that must not see bf16 rounding.
    pub dtype: DType,
    pub batch: usize,
    pub seq: usize,
    /// `Some(vocab)` starts from token ids through an embedding of `vocab` rows; `None` from
    /// hidden states (the bare layer stack, as the benchmark runs it).
    pub vocab: Option<usize>,
    /// End with the final norm (`norm.weight`), as Hugging Face's `LlamaModel` does.
    #[serde(default)]
    pub final_norm: bool,
}

/// Preset names accepted by [`LlamaConfig::preset`].
pub const PRESETS: &[&str] = &["llama-3.2-1b", "seed-te", "tiny"];

impl LlamaConfig {
    /// A named preset: `llama-3.2-1b` (16 layers as released; batch 2, seq 2048), `seed-te`
    /// (the seed benchmark's Transformer Engine layout: MHA with one 3×hidden QKV projection,
    /// LayerNorm, GELU MLP) or `tiny` (small dimensions for tests).
    pub fn preset(name: &str) -> Option<Self> {
        let llama_1b = LlamaConfig {
            hidden: 2048,
            ffn: 8192,
            heads: 32,
            kv_heads: 8,
            head_dim: 64,
            layers: 16,
            rope_theta: 500_000.0,
            rope_style: RopeStyle::Neox,
            rope_scaling: None,
            rotary_dim: 64,
            norm: NormKind::Rms,
            norm_eps: 1e-5,
            mlp: MlpKind::Swiglu,
            precision: Precision::Fp8,
            attention: AttentionPrecision::Fp8,
            dtype: DType::BF16,
            batch: 2,
            seq: 2048,
            vocab: None,
            final_norm: false,
        };
        match name {
            "llama-3.2-1b" => Some(llama_1b),
            "seed-te" => Some(LlamaConfig {
                kv_heads: 32,
                rope_theta: 10_000.0,
                norm: NormKind::Layer,
                mlp: MlpKind::Gelu,
                layers: 8,
                ..llama_1b
            }),
            "tiny" => Some(LlamaConfig {
                hidden: 64,
                ffn: 128,
                heads: 4,
                kv_heads: 2,
                head_dim: 16,
                layers: 2,
                rope_theta: 10_000.0,
                rotary_dim: 16,
                batch: 2,
                seq: 16,
                ..llama_1b
            }),
            _ => None,
        }
    }

    /// The same model with linears in `precision`; bf16 linears make attention bf16 too, since
    /// FP8 attention hands the output projection an e4m3 input.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        if precision == Precision::Bf16 {
            self.attention = AttentionPrecision::Bf16;
        }
        self
    }

    /// Tokens per forward pass.
    pub fn tokens(&self) -> usize {
        self.batch * self.seq
    }

    /// Builds the graph: inputs `hidden_states` (`[batch, seq, hidden]` in `dtype`) or, with a
    /// vocabulary, `input_ids` (i32 `[batch, seq]`); output `last_hidden_state`, after the final
    /// norm when there is one.
    pub fn build(&self) -> Result<Graph, GraphError> {
        if self.attention == AttentionPrecision::Fp8 && self.precision != Precision::Fp8 {
            return Err(GraphError::Config(
                "FP8 attention needs FP8 linears: its e4m3 output feeds the output projection".into(),
            ));
        }
        let mut b = Builder::new();
        let (bs, s, h) = (self.batch, self.seq, self.hidden);
        let mut x = match self.vocab {
            Some(vocab) => {
                let ids = b.input("input_ids", DType::I32, [bs, s])?;
                b.scoped("embed_tokens", |b| {
                    let table = b.param("weight", self.dtype, [vocab, h], Init::normal(INIT_STD))?;
                    b.embedding(table, ids)
                })?
            }
            None => b.input("hidden_states", self.dtype, [bs, s, h])?,
        };
        for layer in 0..self.layers {
            x = b.scoped(&format!("layers.{layer}"), |b| self.block(b, x))?;
        }
        if self.final_norm {
            x = b.scoped("norm", |b| self.norm(b, x))?;
        }
        b.output("last_hidden_state", x)?;
        Ok(b.finish())
    }

    /// One decoder block: pre-norm attention and pre-norm MLP, each with a residual add.
    fn block(&self, b: &mut Builder, x: Tensor) -> Result<Tensor, GraphError> {
        let attn_in = b.scoped("input_layernorm", |b| self.norm(b, x))?;
        let attn = b.scoped("self_attn", |b| self.attention(b, attn_in))?;
        let x = b.scoped("attn_residual", |b| b.add(x, attn))?;
        let mlp_in = b.scoped("post_attention_layernorm", |b| self.norm(b, x))?;
        let mlp = b.scoped("mlp", |b| self.mlp(b, mlp_in))?;
        b.scoped("mlp_residual", |b| b.add(x, mlp))
    }

    fn norm(&self, b: &mut Builder, x: Tensor) -> Result<Tensor, GraphError> {
        let h = self.hidden;
        let gain = b.param("weight", self.dtype, [h], Init::constant(1.0))?;
        match self.norm {
            NormKind::Rms => b.rms_norm(x, gain, self.norm_eps),
            NormKind::Layer => {
                let bias = b.param("bias", self.dtype, [h], Init::constant(0.0))?;
                b.layer_norm(x, gain, bias, self.norm_eps)
            }
        }
    }

    fn attention(&self, b: &mut Builder, x: Tensor) -> Result<Tensor, GraphError> {
        let (bs, s, d) = (self.batch, self.seq, self.head_dim);
        let (hq, hkv) = (self.heads, self.kv_heads);
        let qkv = b.scoped("qkv_proj", |b| self.linear(b, x, (hq + 2 * hkv) * d, self.hidden))?;
        let parts = b.scoped("split_qkv", |b| b.split(qkv, 2, &[hq * d, hkv * d, hkv * d]))?;
        // FP8 attention reads Q, K and V quantized, each with a scale of its own. The quantize
        // comes before the heads permute, where it is elementwise with RoPE: the kernel that
        // rotates a head writes it in e4m3, and attention reads the permute as a strided view.
        let fp8 = self.attention == AttentionPrecision::Fp8;
        let scales = if fp8 {
            Some([
                activation_scale(b, "q_scale")?,
                activation_scale(b, "k_scale")?,
                activation_scale(b, "v_scale")?,
            ])
        } else {
            None
        };
        let heads = |b: &mut Builder, t: Tensor, n: usize, rotate: bool, scale: Option<Tensor>| {
            let t = b.reshape(t, [bs, s, n, d])?;
            let t = if rotate {
                b.rope(
                    t,
                    self.rope_style,
                    self.rope_theta,
                    self.rotary_dim,
                    self.rope_scaling,
                )?
            } else {
                t
            };
            let t = match scale {
                Some(scale) => b.quantize(t, scale, DType::F8E4M3)?,
                None => t,
            };
            b.permute(t, [0, 2, 1, 3])
        };
        let q = b.scoped("q", |b| heads(b, parts[0], hq, true, scales.map(|s| s[0])))?;
        let k = b.scoped("k", |b| heads(b, parts[1], hkv, true, scales.map(|s| s[1])))?;
        let v = b.scoped("v", |b| heads(b, parts[2], hkv, false, scales.map(|s| s[2])))?;
        let scale = 1.0 / (d as f32).sqrt();
        let merge_heads = |b: &mut Builder, o: Tensor| -> Result<Tensor, GraphError> {
            b.scoped("merge_heads", |b| {
                let o = b.permute(o, [0, 2, 1, 3])?;
                b.reshape(o, [bs, s, hq * d])
            })
        };
        match scales {
            None => {
                let o = b.scoped("sdpa", |b| b.attention(q, k, v, true, scale))?;
                let o = merge_heads(b, o)?;
                b.scoped("o_proj", |b| self.linear(b, o, self.hidden, hq * d))
            }
            Some([qs, ks, vs]) => {
                // O leaves attention quantized with the output projection's own input scale.
                let o_scale = b.scoped("o_proj", |b| activation_scale(b, "input_scale"))?;
                let o = b.scoped("sdpa", |b| {
                    b.fp8_attention(
                        [q, k, v],
                        [qs, ks, vs, o_scale],
                        true,
                        scale,
                        FP8_ATTENTION_P_SCALE,
                        DType::F8E4M3,
                    )
                })?;
                let o = merge_heads(b, o)?;
                b.scoped("o_proj", |b| self.linear_fp8(b, o, o_scale, self.hidden, hq * d))
            }
        }
    }

    fn mlp(&self, b: &mut Builder, x: Tensor) -> Result<Tensor, GraphError> {
        let f = self.ffn;
        let act = match self.mlp {
            MlpKind::Swiglu => {
                let gu = b.scoped("gate_up_proj", |b| self.linear(b, x, 2 * f, self.hidden))?;
                b.scoped("act", |b| {
                    let parts = b.split(gu, 2, &[f, f])?;
                    let gate = b.silu(parts[0])?;
                    b.mul(gate, parts[1])
                })?
            }
            MlpKind::Gelu => {
                let up = b.scoped("up_proj", |b| self.linear(b, x, f, self.hidden))?;
                b.scoped("act", |b| b.gelu(up, GeluApprox::Tanh))?
            }
        };
        b.scoped("down_proj", |b| self.linear(b, act, self.hidden, f))
    }

    /// A projection `[.., in] → [.., out]` in the configured precision. FP8 quantizes its input
    /// with `input_scale` and carries the weight's own scale as `weight_scale`.
    fn linear(&self, b: &mut Builder, x: Tensor, out: usize, inp: usize) -> Result<Tensor, GraphError> {
        match self.precision {
            Precision::Bf16 => {
                let w = b.param("weight", self.dtype, [out, inp], Init::normal(INIT_STD))?;
                b.linear(x, w, self.dtype)
            }
            Precision::Fp8 => {
                let x_scale = activation_scale(b, "input_scale")?;
                let xq = b.quantize(x, x_scale, DType::F8E4M3)?;
                self.linear_fp8(b, xq, x_scale, out, inp)
            }
        }
    }

    /// An FP8 projection of `xq`, already quantized with `x_scale`.
    fn linear_fp8(
        &self,
        b: &mut Builder,
        xq: Tensor,
        x_scale: Tensor,
        out: usize,
        inp: usize,
    ) -> Result<Tensor, GraphError> {
        let w = b.param("weight", DType::F8E4M3, [out, inp], Init::normal(INIT_STD))?;
        let weight = b.graph().node(w).name.clone();
        let w_scale = b.param("weight_scale", DType::F32, [], Init::ScaleOf { weight })?;
        b.linear_fp8(xq, w, x_scale, w_scale, self.dtype)
    }
}

/// The per-tensor scale of a quantized activation, calibrated on the GPU from its default.
fn activation_scale(b: &mut Builder, name: &str) -> Result<Tensor, GraphError> {
    b.param(name, DType::F32, [], Init::constant(DEFAULT_ACTIVATION_SCALE))
}
