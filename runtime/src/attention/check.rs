//! The check every freshly built FP8 attention plan passes before lancet uses or stores it.
//!
//! cuDNN 9.14 builds FP8 plans that compute head_dim 64 wrongly (relative L2 error 1.6–5.4 at
//! sequence 2048, 0.30 at 512, varying from run to run) and reports no error, while 9.19
//! computes the same graph right (1.7e-2). Rather than a list of versions, which would go stale,
//! each new plan runs once on random e4m3 inputs and its output is compared, on a sample of
//! rows, with an f64 reference computed from the same e4m3 values. Plans restored from the disk
//! store were checked before they were stored. The check costs a fraction of the plan build.
//!
//! **The reference** quantizes P the way NVIDIA's frontend models the fused kernel in its own
//! FP8 attention tests (`test/python/sdpa/fp8_ref.py`, `compute_ref`): a flash-attention kernel
//! never holds the normalized P, it quantizes `exp(s − m)` block by block against a running
//! row maximum `m`, which it only raises when a block's maximum exceeds it by more than
//! [`RESCALE_THRESHOLD`], and it scales by `scale_s / 2^threshold` so that these unnormalized
//! values (up to `e^threshold`) fit:
//!
//! ```text
//! per query row, over its visible keys in blocks of 128:
//!   m' = block max if m = −∞ or block max > m + 4, else m;   acc, l ·= exp(m − m')
//!   p = exp(s − m');   l += p;   acc += e4m3(p · scale_s / 2⁴) · V · descale_s · 2⁴
//! X = acc / l;   O = e4m3(scale_o · X)
//! ```
//!
//! Quantizing the normalized P instead, as the graph's ops literally say, rounds elsewhere: in
//! a simulation on these inputs such a reference lies about 4e-2 from this model. Either is
//! within the bound; modelling the kernel keeps the measured error about the kernel.

use rayon::prelude::*;

use lancet_compiler::ir::DType;
use lancet_compiler::reference::numerics::round_to;
use lancet_compiler::reference::rel_l2;
use lancet_compiler::weights::normal;

use super::fp8::{e4m3_from_f32, e4m3_to_f32, Fp8Scalars, Fp8Scales};
use super::plan::AttentionPlan;
use super::spec::{AttentionShape, AttentionSpec, Strides, Tensor};
use crate::cudnn::{CudnnError, Handle, Library};
use crate::device::DeviceError;
use crate::Result;

/// The largest relative L2 error a plan may show. P and O in e4m3 (3 mantissa bits) put a
/// correct plan 2–5e-2 from any reference that rounds P a little differently from the kernel;
/// the wrong results seen on cuDNN 9.14 are 0.3 and above.
const BOUND: f64 = 0.08;

/// The inputs are N(0, 1) values stored as e4m3(16·x), well inside e4m3's range (448).
const INPUT_SCALE: f32 = 16.0;

const SCALES: Fp8Scales = Fp8Scales {
    descale_q: 1.0 / INPUT_SCALE,
    descale_k: 1.0 / INPUT_SCALE,
    descale_v: 1.0 / INPUT_SCALE,
    descale_s: 1.0 / 128.0,
    scale_s: 128.0,
    // |O| is at most max |V|, about 6: 32·6 stays below 448, and small outputs stay normal.
    scale_o: 32.0,
};

/// Keys per block of the kernel model (see the module docs).
const BLOCK: usize = 128;

/// How far (in natural-log units) a block's maximum may exceed the running maximum before the
/// kernel model rescales; its unnormalized probabilities reach `e^4`, which `scale_s / 2^4`
/// keeps below 448 for `scale_s` up to 131.
const RESCALE_THRESHOLD: f64 = 4.0;

/// Fixed, so that a failing check can be repeated with the same inputs.
const SEED: u64 = 0x1a2c_e7f8;

/// e4m3 NaN: the output's poison, so that elements the plan never writes fail the comparison.
const NAN: u8 = 0x7f;

/// Runs the FP8 `plan` once and compares its output with the reference: the relative L2 error
/// when within [`BOUND`], else [`CudnnError::WrongResults`] saying which cuDNN to use instead.
pub(crate) fn check_fp8(plan: &AttentionPlan, handle: &Handle) -> Result<f64> {
    let spec = plan.spec();
    let stream = handle.stream();
    let driver = |what| move |source| DeviceError::Driver { what, source };
    let inputs = [Tensor::Q, Tensor::K, Tensor::V].map(|tensor| random_e4m3(spec, tensor));
    let upload = |host: &[u8]| {
        stream
            .clone_htod(host)
            .map_err(driver("uploading the FP8 attention check's inputs"))
    };
    let [q, k, v] = [&inputs[0], &inputs[1], &inputs[2]].map(|host| upload(host));
    let (q, k, v) = (q?, k?, v?);
    let mut o = upload(&vec![NAN; extent(spec, Tensor::O)])?;
    let mut scalars = Fp8Scalars::new(stream, &SCALES)?;
    let scale = 1.0 / (spec.shape.head_dim as f32).sqrt();
    plan.execute_fp8(handle, &q, &k, &v, &mut o, &mut scalars, scale)?;
    stream
        .synchronize()
        .map_err(driver("running the FP8 attention check"))?;
    let o = stream
        .clone_dtoh(&o)
        .map_err(driver("downloading the FP8 attention check's output"))?;
    let error = compare(spec, &inputs, &o, scale);
    if error <= BOUND {
        return Ok(error);
    }
    let lib = handle.library();
    let version = lib.version();
    let from = lib
        .path()
        .map(|path| format!(" from {}", path.display()))
        .unwrap_or_default();
    Err(CudnnError::WrongResults {
        version,
        what: spec.to_string(),
        rel_l2: error,
        bound: BOUND,
        advice: format!(
            "FP8 attention needs a cuDNN that computes it correctly (9.19 does; this process \
             loaded cuDNN {version}{from}, perhaps the system's older one): set {} to the folder \
             of a newer libcudnn.so.9 (such as pip's nvidia-cudnn-cu13, nvidia/cudnn/lib), or use \
             bf16 attention",
            Library::ENV_VAR
        ),
    }
    .into())
}

/// The elements a buffer for `tensor`'s view holds (the spec is validated, so this fits).
fn extent(spec: &AttentionSpec, tensor: Tensor) -> usize {
    spec.extent(tensor).unwrap_or(0)
}

/// A buffer for `tensor`'s view, every byte e4m3(16·x) for a standard normal x (bytes outside
/// the view, such as the other heads of a packed QKV buffer, are never read).
fn random_e4m3(spec: &AttentionSpec, tensor: Tensor) -> Vec<u8> {
    let values = normal(SEED, tensor.name(), extent(spec, tensor), 1.0);
    values
        .par_iter()
        .map(|&x| e4m3_from_f32(x * INPUT_SCALE))
        .collect()
}

/// The compared query rows: four (batch, query head) pairs — both ends, the middle, and the
/// last head of the first batch — at 16 rows each from the first to the last.
fn sample(shape: &AttentionShape) -> Vec<(usize, usize, usize)> {
    let (b, h, s) = (shape.batch, shape.q_heads, shape.seq_len);
    let mut heads = vec![(0, 0), (b / 2, h / 2), (b - 1, h - 1), (0, h - 1)];
    heads.sort_unstable();
    heads.dedup();
    let mut rows: Vec<usize> = (0..16).map(|i| i * (s - 1) / 15).collect();
    rows.dedup();
    heads
        .into_iter()
        .flat_map(|(b, h)| rows.iter().map(move |&row| (b, h, row)))
        .collect()
}

/// The relative L2 error of the sampled rows of `o` (e4m3 bytes, as the plan wrote them)
/// against the reference, both as scaled e4m3 values.
fn compare(spec: &AttentionSpec, inputs: &[Vec<u8>; 3], o: &[u8], scale: f32) -> f64 {
    let (mut got, mut want) = (Vec::new(), Vec::new());
    for (b, h, row) in sample(&spec.shape) {
        let reference = reference_row(spec, inputs, [b, h, row], scale);
        for (d, x) in reference.into_iter().enumerate() {
            got.push(e4m3_to_f32(o[offset(spec.strides(Tensor::O), [b, h, row, d])]));
            want.push(round_to(DType::F8E4M3, (x * SCALES.scale_o as f64) as f32));
        }
    }
    rel_l2(&got, &want)
}

/// Row `row` of query head `h` in batch `b` before `scale_o`, in f64 from the dequantized
/// inputs, quantizing P as the kernel model does (see the module docs).
fn reference_row(
    spec: &AttentionSpec,
    [q, k, v]: &[Vec<u8>; 3],
    [b, h, row]: [usize; 3],
    scale: f32,
) -> Vec<f64> {
    let shape = &spec.shape;
    let (d, kv_head) = (shape.head_dim, h / (shape.q_heads / shape.kv_heads));
    let value = |buffer: &[u8], tensor, head, i, c| {
        e4m3_to_f32(buffer[offset(spec.strides(tensor), [b, head, i, c])]) as f64
    };
    let query: Vec<f64> = (0..d)
        .map(|c| value(q, Tensor::Q, h, row, c) * SCALES.descale_q as f64)
        .collect();
    let keys = if spec.causal { row + 1 } else { shape.seq_len };
    let logits: Vec<f64> = (0..keys)
        .map(|j| {
            let dot: f64 = (0..d)
                .map(|c| query[c] * value(k, Tensor::K, kv_head, j, c))
                .sum();
            dot * SCALES.descale_k as f64 * scale as f64
        })
        .collect();
    kernel_model(&logits, d, |j, c| {
        value(v, Tensor::V, kv_head, j, c) * SCALES.descale_v as f64
    })
}

/// One output row (before `scale_o`) from a row's `logits` and the dequantized `value(j, c)`
/// of V, rounding P as the kernel model does (see the module docs).
fn kernel_model(logits: &[f64], d: usize, value: impl Fn(usize, usize) -> f64) -> Vec<f64> {
    let headroom = RESCALE_THRESHOLD.exp2();
    let scale_p = SCALES.scale_s as f64 / headroom;
    let descale_p = SCALES.descale_s as f64 * headroom;
    let (mut max, mut sum, mut acc) = (f64::NEG_INFINITY, 0f64, vec![0f64; d]);
    for (start, block) in logits.chunks(BLOCK).enumerate() {
        let block_max = block.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if max == f64::NEG_INFINITY || block_max > max + RESCALE_THRESHOLD {
            let correction = (max - block_max).exp();
            acc.iter_mut().for_each(|x| *x *= correction);
            sum *= correction;
            max = block_max;
        }
        for (j, s) in (start * BLOCK..).zip(block) {
            let p = (s - max).exp();
            sum += p;
            let p8 = round_to(DType::F8E4M3, (p * scale_p) as f32) as f64 * descale_p;
            for (c, x) in acc.iter_mut().enumerate() {
                *x += p8 * value(j, c);
            }
        }
    }
    acc.iter().map(|x| x / sum).collect()
}

fn offset(strides: Strides, index: [usize; 4]) -> usize {
    index.iter().zip(strides).map(|(i, s)| i * s).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::{AttentionLayout, AttentionPrecision};

    fn spec(seq_len: usize, causal: bool) -> AttentionSpec {
        let shape = AttentionShape {
            batch: 2,
            q_heads: 4,
            kv_heads: 2,
            seq_len,
            head_dim: 16,
        };
        AttentionSpec {
            shape,
            layout: AttentionLayout::packed_qkv(&shape),
            causal,
            precision: AttentionPrecision::Fp8,
        }
    }

    /// The kernel model on hand-made rows of 256 keys (two blocks), V's value being the key's
    /// index: a jump of 10 makes it rescale (then every kept probability is exactly 1, so the
    /// result is exact softmax), a jump of 2 does not (the second block's probabilities are
    /// e², which e4m3 rounds).
    #[test]
    fn the_kernel_model_rescales_lazily() {
        let exact = |logits: &[f64]| {
            let weights: Vec<f64> = logits.iter().map(|l| l.exp()).collect();
            let sum: f64 = weights.iter().sum();
            weights.iter().enumerate().map(|(j, w)| w * j as f64).sum::<f64>() / sum
        };
        for (jump, exactly) in [(10.0, true), (2.0, false)] {
            let logits: Vec<f64> = (0..256).map(|j| if j < 128 { 0.0 } else { jump }).collect();
            let got = kernel_model(&logits, 1, |j, _| j as f64)[0];
            let want = exact(&logits);
            let error = (got - want).abs() / want;
            assert_eq!(error < 1e-12, exactly, "jump {jump}: {got} vs {want}");
            assert!(error < 0.02, "jump {jump}: {got} vs {want}");
        }
    }

    #[test]
    fn the_sample_spans_heads_and_rows_from_first_to_last() {
        let rows = sample(&spec(2048, true).shape);
        assert_eq!(rows.len(), 4 * 16);
        for corner in [(0, 0, 0), (1, 3, 2047), (1, 2, 0), (0, 3, 2047)] {
            assert!(rows.contains(&corner), "{corner:?}");
        }
        // Short sequences and single heads give each row once.
        let tiny = AttentionShape {
            batch: 1,
            q_heads: 1,
            kv_heads: 1,
            seq_len: 3,
            head_dim: 16,
        };
        assert_eq!(sample(&tiny), [(0, 0, 0), (0, 0, 1), (0, 0, 2)]);
    }

    /// The comparison on CPU-made outputs: the reference's own e4m3 output scores 0, a plan
    /// that leaves O unwritten (NaN) or writes noise fails the bound.
    #[test]
    fn compare_accepts_the_reference_and_refuses_garbage() {
        for causal in [true, false] {
            let spec = spec(64, causal);
            let inputs = [Tensor::Q, Tensor::K, Tensor::V].map(|t| random_e4m3(&spec, t));
            let scale = 0.25;
            let mut o = vec![NAN; extent(&spec, Tensor::O)];
            assert!(compare(&spec, &inputs, &o, scale).is_nan());
            for (b, h, row) in sample(&spec.shape) {
                let x = reference_row(&spec, &inputs, [b, h, row], scale);
                for (d, x) in x.into_iter().enumerate() {
                    let at = offset(spec.strides(Tensor::O), [b, h, row, d]);
                    o[at] = e4m3_from_f32((x * SCALES.scale_o as f64) as f32);
                }
            }
            assert_eq!(compare(&spec, &inputs, &o, scale), 0.0);
            // Causal row 0 sees one key: P = 1 and O is V's first row, exactly. (Each view starts
            // at its own buffer's first element.)
            if causal {
                let v0: Vec<f64> = inputs[2][..16]
                    .iter()
                    .map(|&x| e4m3_to_f32(x) as f64 / INPUT_SCALE as f64)
                    .collect();
                assert_eq!(reference_row(&spec, &inputs, [0, 0, 0], scale), v0);
            }
            let noise = random_e4m3(&spec, Tensor::O);
            assert!(compare(&spec, &inputs, &noise, scale) > BOUND);
        }
    }
}
