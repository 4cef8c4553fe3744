//! Parameters bound to a graph: FP8 weights quantized once at load, whatever their source; and
//! deterministic random parameters and inputs, for benchmarks and tests without a checkpoint.
//!
//! Every tensor's values depend only on the seed, the tensor's name and the element index
//! (streams are keyed per 64 Ki-element chunk), so they are the same on every host, in any
//! evaluation order, and can be generated in parallel. The GPU draws the same streams
//! (`templates/init.cu`); its `logf`/`sincosf` may round a last bit differently.

use std::collections::HashMap;

use rayon::prelude::*;
use thiserror::Error;

use crate::ir::{DType, Graph, Init, Node, Op};
use crate::reference::numerics::{fp8_max, round_slice};
use crate::reference::{Array, Bindings};

/// A parameter whose initialisation cannot be carried out.
#[derive(Debug, Error, PartialEq)]
#[error("param '{param}': {message}")]
pub struct InitError {
    pub param: String,
    pub message: String,
}

const CHUNK: usize = 1 << 16;

/// SplitMix64: tiny, fast, and good enough for weights; fully determined by its seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
}

/// The key of tensor `name`'s random stream: element `i` is drawn from the SplitMix64 stream
/// seeded `key ^ (i / 65536) · 0xD6E8FEB86659FD93` (what the GPU's generator reproduces).
pub fn stream_key(seed: u64, name: &str) -> u64 {
    // FNV-1a over the name, mixed with the seed.
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for byte in name.bytes() {
        h = (h ^ byte as u64).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// `n` samples of Normal(0, std) for the tensor `name`.
pub fn normal(seed: u64, name: &str, n: usize, std: f32) -> Vec<f32> {
    let key = stream_key(seed, name);
    let mut out = vec![0f32; n];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        let mut rng = SplitMix64(key ^ (c as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
        for pair in chunk.chunks_mut(2) {
            // Box–Muller: two independent normals from two uniforms.
            // In f32: ample for weights, and twice as fast as f64 over ~10⁹ draws.
            let (u1, u2) = (rng.uniform() as f32, rng.uniform() as f32);
            let r = (-2.0 * u1.ln()).sqrt() * std;
            let (sin, cos) = (std::f32::consts::TAU * u2).sin_cos();
            pair[0] = r * cos;
            if let Some(second) = pair.get_mut(1) {
                *second = r * sin;
            }
        }
    });
    out
}

/// `n` integers uniform in `0..bound`, as f32, for the tensor `name`.
pub fn uniform_ints(seed: u64, name: &str, n: usize, bound: usize) -> Vec<f32> {
    let mut rng = SplitMix64(stream_key(seed, name));
    (0..n).map(|_| (rng.next() % bound as u64) as f32).collect()
}

/// Values for every param of `graph`, following each param's [`Init`]. FP8 weights hold their
/// quantized values; the matching `ScaleOf` param holds `amax / max_finite`, so that
/// `weight · scale` approximates the Normal draw.
pub fn random_params(graph: &Graph, seed: u64) -> Result<Bindings, InitError> {
    bind_params(graph, |node, init| {
        let n = node.ty.numel();
        Ok(match init {
            Init::Normal { std } => normal(seed, &node.name, n, std.get()),
            Init::Const { value } => vec![value.get(); n],
            Init::ScaleOf { .. } => unreachable!("bind_params computes scales itself"),
        })
    })
}

/// Values for every param of `graph`, with `values(node, init)` giving the full-precision values
/// of each param that is not a `ScaleOf` (from a seed, a checkpoint, …). This is where weights
/// are quantized once, at load: an FP8 weight is divided by its per-tensor scale
/// `amax / max_finite` and rounded, and the param that is its `ScaleOf` gets that scale. Every
/// other param is rounded to its dtype.
pub fn bind_params<E: From<InitError>>(
    graph: &Graph,
    mut values: impl FnMut(&Node, &Init) -> Result<Vec<f32>, E>,
) -> Result<Bindings, E> {
    let mut bindings = HashMap::new();
    let mut scales: HashMap<String, f32> = HashMap::new();
    let params = graph.params();
    // Weights first, so scales can refer to them whatever the node order.
    for &id in &params {
        let node = graph.node(id);
        let Op::Param { dtype, init, .. } = &node.op else {
            unreachable!()
        };
        if matches!(init, Init::ScaleOf { .. }) {
            continue;
        }
        let n = node.ty.numel();
        let mut data = values(node, init)?;
        if data.len() != n {
            let message = format!("got {} values for {}", data.len(), node.ty);
            return Err(InitError {
                param: node.name.clone(),
                message,
            }
            .into());
        }
        if let Some(max) = fp8_max(*dtype) {
            let amax = data.par_iter().map(|x| x.abs()).reduce(|| 0.0, f32::max);
            let scale = if amax > 0.0 { amax / max } else { 1.0 };
            data.par_iter_mut().for_each(|x| *x /= scale);
            scales.insert(node.name.clone(), scale);
        }
        round_slice(*dtype, &mut data);
        bindings.insert(
            node.name.clone(),
            Array::new(node.ty.shape.clone(), data).expect("length checked above"),
        );
    }
    for &id in &params {
        let node = graph.node(id);
        let Op::Param {
            init: Init::ScaleOf { weight },
            ..
        } = &node.op
        else {
            continue;
        };
        let err = |message: String| InitError {
            param: node.name.clone(),
            message,
        };
        if node.ty.numel() != 1 || node.ty.dtype != DType::F32 {
            return Err(err(format!("a scale must be an f32 scalar, not {}", node.ty)).into());
        }
        let scale = scales
            .get(weight)
            .ok_or_else(|| err(format!("is the scale of '{weight}', which is not an FP8 param")))?;
        bindings.insert(node.name.clone(), Array::scalar(*scale));
    }
    Ok(bindings)
}

/// Values for the constant-initialised params of `graph` (norm gains and biases, default
/// activation scales): what the host provides when the GPU makes the weights (drawn, or a
/// checkpoint's converted, which then overrides the norm gains).
pub fn constant_params(graph: &Graph) -> Bindings {
    graph
        .params()
        .into_iter()
        .filter_map(|id| {
            let node = graph.node(id);
            let Op::Param {
                dtype,
                init: Init::Const { value },
                ..
            } = &node.op
            else {
                return None;
            };
            let mut data = vec![value.get(); node.ty.numel()];
            round_slice(*dtype, &mut data);
            let array = Array::new(node.ty.shape.clone(), data).expect("sized from the type");
            Some((node.name.clone(), array))
        })
        .collect()
}

/// Values for every input of `graph`: Normal(0, 1) floats, and ids uniform over the rows of
/// the embedding tables they index (or `0..1024` when they index none).
pub fn random_inputs(graph: &Graph, seed: u64) -> Bindings {
    let mut bindings = HashMap::new();
    for id in graph.inputs() {
        let node = graph.node(id);
        let n = node.ty.numel();
        let mut data = if node.ty.dtype.is_int() {
            let bound = graph
                .users(id)
                .into_iter()
                .filter(|&u| matches!(graph.node(u).op, Op::Embedding))
                .map(|u| graph.node(graph.operands(u)[0]).ty.shape.dims()[0])
                .min()
                .unwrap_or(1024);
            uniform_ints(seed, &node.name, n, bound)
        } else {
            normal(seed, &node.name, n, 1.0)
        };
        round_slice(node.ty.dtype, &mut data);
        bindings.insert(
            node.name.clone(),
            Array::new(node.ty.shape.clone(), data).expect("sized from the type"),
        );
    }
    bindings
}
