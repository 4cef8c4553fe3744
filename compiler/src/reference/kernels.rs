//! The arithmetic of each op on dense f32 arrays: straightforward loops, parallel over
//! independent rows with rayon so that small models evaluate in milliseconds.

use rayon::prelude::*;

use super::numerics::round_to;
use crate::ir::{DType, GeluApprox, RopeScaling, RopeStyle};

/// Rows of `n` features normalised by their root mean square, times `gain`.
pub fn rms_norm(x: &[f32], gain: &[f32], eps: f32) -> Vec<f32> {
    let n = gain.len();
    let mut out = vec![0.0; x.len()];
    out.par_chunks_mut(n).zip(x.par_chunks(n)).for_each(|(o, row)| {
        let ms = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / n as f64;
        let inv = (1.0 / (ms + eps as f64).sqrt()) as f32;
        for ((o, &v), &g) in o.iter_mut().zip(row).zip(gain) {
            *o = v * inv * g;
        }
    });
    out
}

/// Rows of `n` features normalised to zero mean and unit (biased) variance, then `· gain + bias`.
pub fn layer_norm(x: &[f32], gain: &[f32], bias: &[f32], eps: f32) -> Vec<f32> {
    let n = gain.len();
    let mut out = vec![0.0; x.len()];
    out.par_chunks_mut(n).zip(x.par_chunks(n)).for_each(|(o, row)| {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for (((o, &v), &g), &b) in o.iter_mut().zip(row).zip(gain).zip(bias) {
            *o = ((v as f64 - mean) * inv) as f32 * g + b;
        }
    });
    out
}

/// `x [m, k] · w [n, k]ᵀ → [m, n]`, accumulating in f32 over four independent partial sums.
pub fn matmul_nt(x: &[f32], w: &[f32], k: usize) -> Vec<f32> {
    let n = w.len() / k;
    let mut out = vec![0.0; x.len() / k * n];
    out.par_chunks_mut(n).zip(x.par_chunks(k)).for_each(|(o, xr)| {
        for (o, wr) in o.iter_mut().zip(w.chunks_exact(k)) {
            *o = dot(xr, wr);
        }
    });
    out
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// RoPE's inverse frequencies `theta^(-2i / rotary_dim)`, rescaled as Llama 3 does when `scaling`
/// is given; in f32, with Hugging Face's operations (its `2π / f` and `context / wavelen` are a
/// reciprocal then a product).
pub fn rope_inv_freq(rotary_dim: usize, theta: f32, scaling: Option<&RopeScaling>) -> Vec<f32> {
    let plain = (0..rotary_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / rotary_dim as f32));
    let Some(s) = scaling else {
        return plain.collect();
    };
    let (factor, low, high) = (s.factor.get(), s.low_freq_factor.get(), s.high_freq_factor.get());
    let context = s.original_context as f32;
    let (low_freq_wavelen, high_freq_wavelen) = (context / low, context / high);
    plain
        .map(|f| {
            let wavelen = f.recip() * std::f32::consts::TAU;
            if wavelen < high_freq_wavelen {
                f
            } else if wavelen > low_freq_wavelen {
                f / factor
            } else {
                let smooth = (wavelen.recip() * context - low) / (high - low);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}

/// The rotation table RoPE reads: `[seq, rotary_dim / 2, 2]` holding `(cos, sin)` of
/// `pos · inv_freq[i]` ([`rope_inv_freq`]), computed in f32 as Hugging Face's Llama does. The GPU
/// kernels read this very table (lowering uploads it), so both sides rotate by identical numbers.
pub fn rope_table(seq: usize, rotary_dim: usize, theta: f32, scaling: Option<&RopeScaling>) -> Vec<f32> {
    let half = rotary_dim / 2;
    let inv_freq = rope_inv_freq(rotary_dim, theta, scaling);
    let mut table = Vec::with_capacity(seq * half * 2);
    for pos in 0..seq {
        for &f in &inv_freq {
            let (sin, cos) = (pos as f32 * f).sin_cos();
            table.extend([cos, sin]);
        }
    }
    table
}

/// Rotary embedding of `x [..., seq, heads, head_dim]`: the position of a row is its index along
/// the seq axis; angles come from `table`, made by [`rope_table`].
pub fn rope(
    x: &[f32],
    [seq, heads, head_dim]: [usize; 3],
    style: RopeStyle,
    table: &[f32],
    rotary_dim: usize,
) -> Vec<f32> {
    let half = rotary_dim / 2;
    let mut out = x.to_vec();
    let row = heads * head_dim;
    out.par_chunks_mut(row).enumerate().for_each(|(r, o)| {
        let angles = &table[(r % seq) * half * 2..][..half * 2];
        for head in o.chunks_exact_mut(head_dim) {
            for (i, cs) in angles.chunks_exact(2).enumerate() {
                let (cos, sin) = (cs[0], cs[1]);
                let (a, b) = match style {
                    RopeStyle::Neox => (i, i + half),
                    RopeStyle::Gptj => (2 * i, 2 * i + 1),
                };
                let (x1, x2) = (head[a], head[b]);
                head[a] = x1 * cos - x2 * sin;
                head[b] = x2 * cos + x1 * sin;
            }
        }
    });
    out
}

/// Shapes of one attention call, in elements.
#[derive(Clone, Copy, Debug)]
pub struct AttentionDims {
    pub batch: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub head_dim: usize,
    pub v_dim: usize,
}

/// `softmax(q·kᵀ·scale + mask)·v` on `[b, h, s, d]` arrays, one (batch, query head) pair per
/// task. Query head `h` reads KV head `h / (q_heads / kv_heads)`; causal rows see keys `j <= i`.
///
/// As flash attention computes it: with `p_round = Some((dtype, p_scale))`, each unnormalised
/// probability `exp(s − max)` is rounded to `dtype` as `exp(s − max) · p_scale` before it weighs
/// V (bf16 with scale 1 for bf16 attention, e4m3 for FP8 attention), while the row sum stays
/// unrounded in f32; `Σ p·v` is divided by the row sum once, at the end.
///
/// The kernels round with a running row maximum, this with the final one, so single roundings
/// still differ: against cuDNN's bf16 attention this gives 1.8e-3 rel L2 where f32 probabilities
/// gave 2.2e-3 (H100, S 2048).
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d: AttentionDims,
    causal: bool,
    scale: f32,
    p_round: Option<(DType, f32)>,
) -> Vec<f32> {
    let group = d.q_heads / d.kv_heads;
    let mut out = vec![0.0; d.batch * d.q_heads * d.q_len * d.v_dim];
    out.par_chunks_mut(d.q_len * d.v_dim)
        .enumerate()
        .for_each(|(bh, o)| {
            let (b, h) = (bh / d.q_heads, bh % d.q_heads);
            let kvh = b * d.kv_heads + h / group;
            let qh = &q[bh * d.q_len * d.head_dim..][..d.q_len * d.head_dim];
            let kh = &k[kvh * d.kv_len * d.head_dim..][..d.kv_len * d.head_dim];
            let vh = &v[kvh * d.kv_len * d.v_dim..][..d.kv_len * d.v_dim];
            let mut scores = vec![0f32; d.kv_len];
            for (i, orow) in o.chunks_exact_mut(d.v_dim).enumerate() {
                let qi = &qh[i * d.head_dim..][..d.head_dim];
                let visible = if causal { (i + 1).min(d.kv_len) } else { d.kv_len };
                let mut max = f32::NEG_INFINITY;
                for (j, s) in scores[..visible].iter_mut().enumerate() {
                    *s = dot(qi, &kh[j * d.head_dim..][..d.head_dim]) * scale;
                    max = max.max(*s);
                }
                let mut sum = 0f32;
                for s in &mut scores[..visible] {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                if let Some((dtype, ps)) = p_round {
                    for s in &mut scores[..visible] {
                        *s = round_to(dtype, *s * ps) / ps;
                    }
                }
                orow.fill(0.0);
                for (j, &p) in scores[..visible].iter().enumerate() {
                    for (o, &x) in orow.iter_mut().zip(&vh[j * d.v_dim..][..d.v_dim]) {
                        *o += p * x;
                    }
                }
                orow.iter_mut().for_each(|o| *o /= sum);
            }
        });
    out
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

pub fn gelu(x: f32, approx: GeluApprox) -> f32 {
    match approx {
        GeluApprox::None => 0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)),
        GeluApprox::Tanh => {
            let c = (2.0 / std::f32::consts::PI).sqrt();
            0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
        }
    }
}
