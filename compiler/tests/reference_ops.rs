//! The reference interpreter, op by op, against direct computations written here.
//!
//! Each test builds a tiny graph, evaluates it with `reference::evaluate` and compares with a
//! naive formula computed in this file (in f64 where that helps); nothing here calls
//! `reference::kernels`. Tolerances are relative L2 (`reference::rel_l2`) or exact equality.

use std::collections::HashSet;

use lancet_compiler::ir::{Builder, DType, GateAct, GeluApprox, Init, NodeId, RopeStyle, Shape};
use lancet_compiler::reference::numerics::{round_to, E4M3_MAX, E5M2_MAX};
use lancet_compiler::reference::{self, rel_l2, Array, Bindings, EvalError};
use lancet_compiler::weights;

use DType::{BF16, F16, F32, F8E4M3, F8E5M2, I32, I64};

/// An f32 attribute in whatever form the IR stores it (`f32`, or a wrapper built `From<f32>`).
fn fl<T: From<f32>>(x: f32) -> T {
    T::from(x)
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn arr(dims: &[usize], data: Vec<f32>) -> Array {
    Array::new(dims, data).expect("data length matches the shape")
}

fn numel(dims: &[usize]) -> usize {
    dims.iter().product()
}

/// Normal(0, std) values, deterministic in (seed, name).
fn randn(seed: u64, name: &str, dims: &[usize], std: f32) -> Vec<f32> {
    weights::normal(seed, name, numel(dims), std)
}

fn bind(pairs: Vec<(&str, Array)>) -> Bindings {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Evaluates the graph of `b` and returns the output named `name`, checking its shape.
fn run(b: Builder, bindings: &Bindings, name: &str) -> Array {
    let graph = b.finish();
    let out_id = graph.binding(name).expect("output exists");
    let mut outputs = reference::evaluate(&graph, bindings).expect("evaluation succeeds");
    let out = outputs.remove(name).expect("output is returned");
    assert_eq!(out.shape, graph.node(out_id).ty.shape, "output shape");
    out
}

fn assert_rel_l2(got: &[f32], want: &[f32], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let err = rel_l2(got, want);
    assert!(err <= tol, "{what}: rel L2 {err:.3e} > {tol:.0e}");
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// f32 -> bf16 -> f32 with round-to-nearest-even, by bit manipulation.
fn bf16_rne(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let bits = x.to_bits();
    let lsb = (bits >> 16) & 1;
    f32::from_bits(bits.wrapping_add(0x7FFF + lsb) & 0xFFFF_0000)
}

fn is_bf16(x: f32) -> bool {
    x.to_bits() & 0xFFFF == 0
}

/// Values already representable in bf16.
fn randn_bf16(seed: u64, name: &str, dims: &[usize], std: f32) -> Vec<f32> {
    randn(seed, name, dims, std).into_iter().map(bf16_rne).collect()
}

/// A tiny deterministic generator (SplitMix64) for picks that are not Normal draws.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Row-major strides of `dims`.
fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for a in (0..dims.len().saturating_sub(1)).rev() {
        s[a] = s[a + 1] * dims[a + 1];
    }
    s
}

/// The multi-index of flat position `flat` in `dims`.
fn unravel(mut flat: usize, dims: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; dims.len()];
    for a in (0..dims.len()).rev() {
        idx[a] = flat % dims[a];
        flat /= dims[a];
    }
    idx
}

fn ravel(idx: &[usize], dims: &[usize]) -> usize {
    idx.iter().zip(strides(dims)).map(|(i, s)| i * s).sum()
}

// ---------------------------------------------------------------------------------------------
// Number formats decoded from their bit layouts
// ---------------------------------------------------------------------------------------------

/// An OCP FP8 value from its bits: `S.EEEE.MMM` (e4m3, bias 7, `S.1111.111` is NaN and there
/// are no infinities) or `S.EEEEE.MM` (e5m2, bias 15, IEEE-like infinities and NaNs).
fn decode_fp8(dtype: DType, bits: u8) -> f64 {
    let (mant_bits, bias) = match dtype {
        F8E4M3 => (3u32, 7i32),
        F8E5M2 => (2u32, 15i32),
        _ => unreachable!(),
    };
    let exp_bits = 7 - mant_bits;
    let sign = if bits & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = ((bits & 0x7F) >> mant_bits) as i32;
    let m = (bits & ((1 << mant_bits) - 1)) as f64;
    let frac = m / (1u32 << mant_bits) as f64;
    let e_max = (1i32 << exp_bits) - 1;
    let magnitude = match dtype {
        F8E4M3 if e == e_max && m == 7.0 => f64::NAN,
        F8E5M2 if e == e_max && m == 0.0 => f64::INFINITY,
        F8E5M2 if e == e_max => f64::NAN,
        _ if e == 0 => frac * 2f64.powi(1 - bias),
        _ => (1.0 + frac) * 2f64.powi(e - bias),
    };
    sign * magnitude
}

/// Positive finite values of an FP8 type in bit order (bits 0, 1, 2, …): increasing, and the
/// index of each value is its bit pattern.
fn fp8_positive_finite(dtype: DType) -> Vec<f64> {
    (0u8..0x80)
        .map(|b| decode_fp8(dtype, b))
        .take_while(|v| v.is_finite())
        .collect()
}

/// Round-to-nearest-even onto an increasing table of non-negative values whose index is the
/// bit pattern (so "even" is an even index), saturating at the last entry; sign-symmetric.
fn nearest_in_table(table: &[f64], x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let a = (x as f64).abs();
    let max = *table.last().unwrap();
    let r = if a >= max {
        max
    } else {
        let hi = table.iter().position(|&v| v >= a).unwrap();
        if table[hi] == a || hi == 0 {
            table[hi]
        } else {
            let lo = hi - 1;
            let (dl, dh) = (a - table[lo], table[hi] - a);
            if dl < dh || (dl == dh && lo % 2 == 0) {
                table[lo]
            } else {
                table[hi]
            }
        }
    };
    (r as f32).copysign(x)
}

/// An IEEE binary16 value from its bits.
fn decode_f16(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let e = ((bits >> 10) & 0x1F) as i32;
    let m = (bits & 0x3FF) as f64;
    let magnitude = match e {
        0 => m * 2f64.powi(-24),
        31 if m == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        _ => (1024.0 + m) * 2f64.powi(e - 25),
    };
    sign * magnitude
}

/// A bfloat16 value from its bits (the top half of an f32).
fn decode_bf16(bits: u16) -> f64 {
    f32::from_bits((bits as u32) << 16) as f64
}

/// For a 16-bit float format given by `decode`: all non-negative finite values in bit order,
/// then, for every pair of neighbours, probes at the midpoint and one f32 ulp either side with
/// the value each must round to. The midpoint goes to the neighbour with the even bit pattern.
/// The last probes straddle the overflow threshold (half an ulp above the largest finite value),
/// where round-to-nearest-even gives infinity.
fn rounding_probes_16(decode: fn(u16) -> f64) -> Vec<(f32, f32)> {
    let values: Vec<f64> = (0u16..0x8000).map(decode).take_while(|v| v.is_finite()).collect();
    let mut probes = Vec::new();
    for (n, pair) in values.windows(2).enumerate() {
        let (lo, hi) = (pair[0], pair[1]);
        let mid = (lo + hi) / 2.0;
        let mid32 = mid as f32;
        assert_eq!(mid32 as f64, mid, "midpoint exact in f32");
        let even = if n % 2 == 0 { lo } else { hi };
        probes.push((lo as f32, lo as f32));
        probes.push((mid32, even as f32));
        probes.push((f32::from_bits(mid32.to_bits() - 1), lo as f32));
        probes.push((f32::from_bits(mid32.to_bits() + 1), hi as f32));
    }
    let max = *values.last().unwrap();
    let ulp = max - values[values.len() - 2];
    let threshold = (max + ulp / 2.0) as f32;
    assert_eq!(threshold as f64, max + ulp / 2.0);
    probes.push((max as f32, max as f32));
    probes.push((f32::from_bits(threshold.to_bits() - 1), max as f32));
    probes.push((threshold, f32::INFINITY));
    // Negative mirror images.
    let negatives: Vec<(f32, f32)> = probes.iter().map(|&(x, y)| (-x, -y)).collect();
    probes.extend(negatives);
    probes
}

// ---------------------------------------------------------------------------------------------
// Embedding
// ---------------------------------------------------------------------------------------------

fn embedding_graph(
    ids_dtype: DType,
    table_dtype: DType,
    vocab: usize,
    hidden: usize,
    ids: &[usize],
) -> Builder {
    let mut b = Builder::new();
    let table = b
        .param(
            "embed",
            table_dtype,
            [vocab, hidden],
            Init::Normal { std: fl(1.0) },
        )
        .unwrap();
    let ids = b.input("ids", ids_dtype, ids).unwrap();
    let y = b.embedding(table, ids).unwrap();
    b.output("y", y).unwrap();
    b
}

#[test]
fn embedding_gathers_rows_by_i32_and_i64_ids() {
    let (vocab, hidden) = (7, 5);
    let table = randn(1, "embed", &[vocab, hidden], 1.0);
    let ids: Vec<f32> = vec![3.0, 0.0, 6.0, 3.0, 1.0, 5.0];
    for ids_dtype in [I32, I64] {
        let b = embedding_graph(ids_dtype, F32, vocab, hidden, &[2, 3]);
        let bindings = bind(vec![
            ("embed", arr(&[vocab, hidden], table.clone())),
            ("ids", arr(&[2, 3], ids.clone())),
        ]);
        let out = run(b, &bindings, "y");
        assert_eq!(out.shape.dims(), &[2, 3, hidden]);
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&id| table[id as usize * hidden..][..hidden].to_vec())
            .collect();
        assert_eq!(out.data, want, "{ids_dtype}");
    }
}

#[test]
fn embedding_of_bf16_table_keeps_bf16_rows() {
    let table = randn_bf16(2, "embed", &[4, 8], 1.0);
    let b = embedding_graph(I32, BF16, 4, 8, &[3]);
    let bindings = bind(vec![
        ("embed", arr(&[4, 8], table.clone())),
        ("ids", arr(&[3], vec![2.0, 2.0, 0.0])),
    ]);
    let out = run(b, &bindings, "y");
    let want: Vec<f32> = [2, 2, 0]
        .iter()
        .flat_map(|&r| table[r * 8..][..8].to_vec())
        .collect();
    assert_eq!(out.data, want);
}

#[test]
fn embedding_id_out_of_range_is_an_error() {
    for (bad, position) in [(7.0, 2usize), (-1.0, 0), (100.0, 1)] {
        let b = embedding_graph(I32, F32, 7, 3, &[4]);
        let graph = b.finish();
        let mut ids = vec![1.0, 2.0, 3.0, 4.0];
        ids[position] = bad;
        let bindings = bind(vec![
            ("embed", arr(&[7, 3], randn(3, "embed", &[7, 3], 1.0))),
            ("ids", arr(&[4], ids)),
        ]);
        let err = reference::evaluate(&graph, &bindings).unwrap_err();
        assert_eq!(
            err,
            EvalError::IdOutOfRange {
                node: NodeId(2),
                name: String::new(),
                id: bad,
                position,
                vocab: 7,
            }
        );
        assert!(err.to_string().contains("outside the table's 7 rows"), "{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Norms
// ---------------------------------------------------------------------------------------------

fn rms_norm_f64(x: &[f32], gain: &[f32], eps: f32) -> Vec<f64> {
    let n = gain.len();
    x.chunks(n)
        .flat_map(|row| {
            let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n as f64;
            let inv = 1.0 / (ms + eps as f64).sqrt();
            row.iter()
                .zip(gain)
                .map(move |(&v, &g)| v as f64 * inv * g as f64)
        })
        .collect()
}

fn layer_norm_f64(x: &[f32], gain: &[f32], bias: &[f32], eps: f32) -> Vec<f64> {
    let n = gain.len();
    x.chunks(n)
        .flat_map(|row| {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
            let inv = 1.0 / (var + eps as f64).sqrt();
            row.iter()
                .zip(gain)
                .zip(bias)
                .map(move |((&v, &g), &b)| (v as f64 - mean) * inv * g as f64 + b as f64)
        })
        .collect()
}

fn norm_graph(dtype: DType, dims: &[usize], layer: bool, eps: f32) -> Builder {
    let n = *dims.last().unwrap();
    let mut b = Builder::new();
    let x = b.input("x", dtype, dims).unwrap();
    let y = b
        .scoped("norm", |b| {
            let g = b.param("weight", dtype, [n], Init::Const { value: fl(1.0) })?;
            if layer {
                let bias = b.param("bias", dtype, [n], Init::Const { value: fl(0.0) })?;
                b.layer_norm(x, g, bias, eps)
            } else {
                b.rms_norm(x, g, eps)
            }
        })
        .unwrap();
    b.output("y", y).unwrap();
    b
}

#[test]
fn rms_norm_matches_formula_f32() {
    // A large eps makes a misplaced eps visible; a small one checks the plain normalisation.
    for (eps, seed) in [(1e-6f32, 10u64), (0.5, 11)] {
        let dims = [2, 3, 16];
        let x = randn(seed, "x", &dims, 1.5);
        let gain = randn(seed, "gain", &[16], 1.0);
        let b = norm_graph(F32, &dims, false, eps);
        let bindings = bind(vec![
            ("x", arr(&dims, x.clone())),
            ("norm.weight", arr(&[16], gain.clone())),
        ]);
        let out = run(b, &bindings, "y");
        assert_rel_l2(
            &out.data,
            &to_f32(&rms_norm_f64(&x, &gain, eps)),
            1e-6,
            "rms_norm",
        );
    }
}

#[test]
fn layer_norm_matches_formula_f32() {
    for (eps, seed) in [(1e-5f32, 20u64), (0.25, 21)] {
        let dims = [4, 12];
        // An offset so that subtracting the mean matters; n = 12 so a biased vs unbiased
        // variance differs by 4%.
        let x: Vec<f32> = randn(seed, "x", &dims, 2.0).iter().map(|v| v + 3.0).collect();
        let gain = randn(seed, "gain", &[12], 1.0);
        let bias = randn(seed, "bias", &[12], 1.0);
        let b = norm_graph(F32, &dims, true, eps);
        let bindings = bind(vec![
            ("x", arr(&dims, x.clone())),
            ("norm.weight", arr(&[12], gain.clone())),
            ("norm.bias", arr(&[12], bias.clone())),
        ]);
        let out = run(b, &bindings, "y");
        let want = to_f32(&layer_norm_f64(&x, &gain, &bias, eps));
        assert_rel_l2(&out.data, &want, 1e-6, "layer_norm");
    }
}

#[test]
fn norms_in_bf16_produce_bf16_values() {
    let dims = [3, 32];
    let x = randn_bf16(30, "x", &dims, 1.0);
    let gain = randn_bf16(30, "gain", &[32], 1.0);
    let bias = randn_bf16(30, "bias", &[32], 1.0);

    let b = norm_graph(BF16, &dims, false, 1e-6);
    let bindings = bind(vec![
        ("x", arr(&dims, x.clone())),
        ("norm.weight", arr(&[32], gain.clone())),
    ]);
    let out = run(b, &bindings, "y");
    assert!(out.data.iter().all(|&v| is_bf16(v)), "rms_norm output is bf16");
    // Only the final rounding separates it from the exact value: at most 2^-9 relative.
    assert_rel_l2(
        &out.data,
        &to_f32(&rms_norm_f64(&x, &gain, 1e-6)),
        2e-3,
        "bf16 rms_norm",
    );

    let b = norm_graph(BF16, &dims, true, 1e-5);
    let bindings = bind(vec![
        ("x", arr(&dims, x.clone())),
        ("norm.weight", arr(&[32], gain.clone())),
        ("norm.bias", arr(&[32], bias.clone())),
    ]);
    let out = run(b, &bindings, "y");
    assert!(out.data.iter().all(|&v| is_bf16(v)), "layer_norm output is bf16");
    assert_rel_l2(
        &out.data,
        &to_f32(&layer_norm_f64(&x, &gain, &bias, 1e-5)),
        2e-3,
        "bf16 layer_norm",
    );
}

// ---------------------------------------------------------------------------------------------
// Linear
// ---------------------------------------------------------------------------------------------

/// `x [m, k] · w [n, k]ᵀ` in f64.
fn matmul_nt_f64(x: &[f32], w: &[f32], k: usize) -> Vec<f64> {
    let n = w.len() / k;
    let mut out = Vec::new();
    for row in x.chunks(k) {
        for j in 0..n {
            out.push((0..k).map(|i| row[i] as f64 * w[j * k + i] as f64).sum());
        }
    }
    out
}

fn linear_graph(dtype: DType, x_dims: &[usize], n: usize, out: DType) -> Builder {
    let k = *x_dims.last().unwrap();
    let mut b = Builder::new();
    let x = b.input("x", dtype, x_dims).unwrap();
    let w = b
        .param("w", dtype, [n, k], Init::Normal { std: fl(1.0) })
        .unwrap();
    let y = b.linear(x, w, out).unwrap();
    b.output("y", y).unwrap();
    b
}

#[test]
fn linear_f32_is_x_times_w_transposed() {
    for (x_dims, n) in [
        (vec![4, 24], 7usize),
        (vec![2, 3, 24], 5),
        (vec![24], 3),
        (vec![3, 24], 24),
    ] {
        let k = 24;
        let x = randn(40, "x", &x_dims, 1.0);
        let w = randn(40, "w", &[n, k], 1.0);
        let b = linear_graph(F32, &x_dims, n, F32);
        let bindings = bind(vec![
            ("x", arr(&x_dims, x.clone())),
            ("w", arr(&[n, k], w.clone())),
        ]);
        let out = run(b, &bindings, "y");
        let mut want_dims = x_dims.clone();
        *want_dims.last_mut().unwrap() = n;
        assert_eq!(out.shape.dims(), &want_dims[..]);
        assert_rel_l2(&out.data, &to_f32(&matmul_nt_f64(&x, &w, k)), 1e-6, "f32 linear");
    }
}

#[test]
fn linear_bf16_accumulates_exactly_enough_and_rounds_output() {
    let (x_dims, n, k) = ([2, 3, 32], 6, 32);
    let x = randn_bf16(41, "x", &x_dims, 1.0);
    let w = randn_bf16(41, "w", &[n, k], 1.0);
    let want = matmul_nt_f64(&x, &w, k);
    let bindings = bind(vec![
        ("x", arr(&x_dims, x.clone())),
        ("w", arr(&[n, k], w.clone())),
    ]);

    // f32 output: f32 accumulation of exact bf16 products.
    let out = run(linear_graph(BF16, &x_dims, n, F32), &bindings, "y");
    assert_eq!(out.shape.dims(), &[2, 3, n]);
    assert_rel_l2(&out.data, &to_f32(&want), 1e-6, "bf16 linear, f32 out");
    // bf16 output: the same, rounded once.
    let out = run(linear_graph(BF16, &x_dims, n, BF16), &bindings, "y");
    assert!(out.data.iter().all(|&v| is_bf16(v)), "bf16 linear output is bf16");
    let want_bf16: Vec<f32> = want.iter().map(|&v| bf16_rne(v as f32)).collect();
    assert_rel_l2(&out.data, &want_bf16, 1e-6, "bf16 linear, bf16 out");
}

/// `count` random finite e4m3 values (any sign, any magnitude).
fn random_e4m3(rng: &mut Rng, count: usize) -> Vec<f32> {
    let table = fp8_positive_finite(F8E4M3);
    (0..count)
        .map(|_| {
            let v = table[rng.below(table.len() as u64) as usize] as f32;
            if rng.below(2) == 0 {
                v
            } else {
                -v
            }
        })
        .collect()
}

#[test]
fn fp8_linear_multiplies_by_both_scales() {
    let mut rng = Rng(42);
    let (k, n) = (16, 5);
    for x_dims in [vec![3, k], vec![2, 3, k]] {
        let x = random_e4m3(&mut rng, numel(&x_dims));
        let w = random_e4m3(&mut rng, n * k);
        let (xs, ws) = (0.0375f32, 0.0021f32);
        for out_dtype in [F32, BF16] {
            let mut b = Builder::new();
            let xi = b.input("x", F8E4M3, &x_dims[..]).unwrap();
            let wi = b
                .param("w", F8E4M3, [n, k], Init::Normal { std: fl(1.0) })
                .unwrap();
            let xsi = b.input("x_scale", F32, []).unwrap();
            let wsi = b
                .param("w_scale", F32, [], Init::Const { value: fl(1.0) })
                .unwrap();
            let y = b.linear_fp8(xi, wi, xsi, wsi, out_dtype).unwrap();
            b.output("y", y).unwrap();
            let bindings = bind(vec![
                ("x", arr(&x_dims, x.clone())),
                ("w", arr(&[n, k], w.clone())),
                ("x_scale", Array::scalar(xs)),
                ("w_scale", Array::scalar(ws)),
            ]);
            let out = run(b, &bindings, "y");
            let mut want_dims = x_dims.clone();
            *want_dims.last_mut().unwrap() = n;
            assert_eq!(out.shape.dims(), &want_dims[..]);
            let want: Vec<f32> = matmul_nt_f64(&x, &w, k)
                .iter()
                .map(|&v| (v * xs as f64 * ws as f64) as f32)
                .collect();
            if out_dtype == F32 {
                assert_rel_l2(&out.data, &want, 1e-6, "fp8 linear, f32 out");
            } else {
                assert!(out.data.iter().all(|&v| is_bf16(v)));
                assert_rel_l2(&out.data, &want, 2e-3, "fp8 linear, bf16 out");
            }
        }
    }
}

#[test]
fn gated_linear_is_bit_identical_to_the_chain_it_replaces() {
    // One graph computes both: the unfused FP8 linear → split → act → mul → quantize, and the
    // gated linear over the same operands. Rounding happens at the same points, so the bits agree.
    let mut rng = Rng(7);
    let (k, f) = (32, 24);
    for x_dims in [vec![5, k], vec![2, 3, k]] {
        let x = random_e4m3(&mut rng, numel(&x_dims));
        let w = random_e4m3(&mut rng, 2 * f * k);
        for act in [GateAct::Silu, GateAct::GeluTanh, GateAct::GeluErf] {
            for out in [F8E4M3, F8E5M2] {
                let mut b = Builder::new();
                let xi = b.input("x", F8E4M3, &x_dims[..]).unwrap();
                let wi = b
                    .param("w", F8E4M3, [2 * f, k], Init::Normal { std: fl(1.0) })
                    .unwrap();
                let scales = ["x_scale", "w_scale", "out_scale"].map(|n| b.input(n, F32, []).unwrap());
                let y = b.linear_fp8(xi, wi, scales[0], scales[1], BF16).unwrap();
                let parts = b.split(y, x_dims.len() - 1, &[f, f]).unwrap();
                let a = match act {
                    GateAct::Silu => b.silu(parts[0]),
                    GateAct::GeluTanh => b.gelu(parts[0], GeluApprox::Tanh),
                    GateAct::GeluErf => b.gelu(parts[0], GeluApprox::None),
                }
                .unwrap();
                let h = b.mul(a, parts[1]).unwrap();
                let unfused = b.quantize(h, scales[2], out).unwrap();
                let fused = b.gated_linear([xi, wi], scales, act, BF16, out).unwrap();
                b.output("unfused", unfused).unwrap();
                b.output("fused", fused).unwrap();
                let bindings = bind(vec![
                    ("x", arr(&x_dims, x.clone())),
                    ("w", arr(&[2 * f, k], w.clone())),
                    ("x_scale", Array::scalar(0.01)),
                    ("w_scale", Array::scalar(0.002)),
                    ("out_scale", Array::scalar(0.02)),
                ]);
                let mut outputs = reference::evaluate(&b.finish(), &bindings).unwrap();
                let (want, got) = (
                    outputs.remove("unfused").unwrap(),
                    outputs.remove("fused").unwrap(),
                );
                let what = format!("{act:?} to {out}, x {x_dims:?}");
                assert_eq!(got.shape, want.shape, "{what}");
                let bits = |a: &Array| a.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{what}");
                // Not a vacuous match: the values spread over the FP8 range.
                let mut distinct = bits(&got);
                distinct.sort_unstable();
                distinct.dedup();
                assert!(distinct.len() > 50, "{what}: {} distinct values", distinct.len());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Views and broadcasting
// ---------------------------------------------------------------------------------------------

fn iota(n: usize) -> Vec<f32> {
    (0..n).map(|i| i as f32).collect()
}

#[test]
fn reshape_keeps_row_major_order() {
    let mut b = Builder::new();
    let x = b.input("x", F32, [2, 3, 4]).unwrap();
    let y = b.reshape(x, [4, 6]).unwrap();
    b.output("y", y).unwrap();
    let data = randn(50, "x", &[24], 1.0);
    let out = run(b, &bind(vec![("x", arr(&[2, 3, 4], data.clone()))]), "y");
    assert_eq!(out.shape.dims(), &[4, 6]);
    assert_eq!(out.data, data);
}

#[test]
fn permute_4d_matches_index_arithmetic() {
    let dims = [2, 3, 4, 5];
    for perm in [[2, 0, 3, 1], [0, 2, 1, 3], [3, 2, 1, 0]] {
        let mut b = Builder::new();
        let x = b.input("x", F32, dims).unwrap();
        let y = b.permute(x, perm).unwrap();
        b.output("y", y).unwrap();
        let data = iota(numel(&dims));
        let out = run(b, &bind(vec![("x", arr(&dims, data.clone()))]), "y");
        let out_dims: Vec<usize> = perm.iter().map(|&a| dims[a]).collect();
        assert_eq!(out.shape.dims(), &out_dims[..]);
        for (flat, &v) in out.data.iter().enumerate() {
            let o = unravel(flat, &out_dims);
            // Output axis i is input axis perm[i].
            let mut src = [0usize; 4];
            for (i, &a) in perm.iter().enumerate() {
                src[a] = o[i];
            }
            let want = src[0] * 60 + src[1] * 20 + src[2] * 5 + src[3];
            assert_eq!(v, want as f32, "perm {perm:?} at {o:?}");
        }
    }
}

#[test]
fn split_on_a_middle_axis() {
    let dims = [2, 6, 3];
    let mut b = Builder::new();
    let x = b.input("x", F32, dims).unwrap();
    let sizes = [1, 3, 2];
    let parts = b.split(x, 1, &sizes).unwrap();
    for (i, &p) in parts.iter().enumerate() {
        b.output(&format!("p{i}"), p).unwrap();
    }
    let graph = b.finish();
    let data = randn(51, "x", &dims, 1.0);
    let outputs = reference::evaluate(&graph, &bind(vec![("x", arr(&dims, data.clone()))])).unwrap();
    let mut start = 0;
    for (i, &size) in sizes.iter().enumerate() {
        let part = &outputs[&format!("p{i}")];
        assert_eq!(part.shape.dims(), &[2, size, 3]);
        for (flat, &v) in part.data.iter().enumerate() {
            let [a, j, c] = unravel(flat, &[2, size, 3])[..] else {
                unreachable!()
            };
            assert_eq!(
                v,
                data[ravel(&[a, start + j, c], &dims)],
                "part {i} at {a},{j},{c}"
            );
        }
        start += size;
    }
}

#[test]
fn slice_on_last_and_first_axes() {
    let dims = [4, 5];
    let mut b = Builder::new();
    let x = b.input("x", F32, dims).unwrap();
    let cols = b.slice(x, 1, 1, 4).unwrap();
    let rows = b.slice(x, 0, 2, 4).unwrap();
    b.output("cols", cols).unwrap();
    b.output("rows", rows).unwrap();
    let graph = b.finish();
    let outputs = reference::evaluate(&graph, &bind(vec![("x", arr(&dims, iota(20)))])).unwrap();
    let want_cols: Vec<f32> = (0..4)
        .flat_map(|r| (1..4).map(move |c| (r * 5 + c) as f32))
        .collect();
    assert_eq!(outputs["cols"].data, want_cols);
    assert_eq!(outputs["rows"].data, iota(20)[10..20].to_vec());
}

#[test]
fn concat_on_axis_0_and_a_middle_axis() {
    // Axis 0: plain append.
    let mut b = Builder::new();
    let a = b.input("a", F32, [2, 3]).unwrap();
    let c = b.input("c", F32, [1, 3]).unwrap();
    let y = b.concat(&[a, c], 0).unwrap();
    b.output("y", y).unwrap();
    let (da, dc) = (randn(52, "a", &[2, 3], 1.0), randn(52, "c", &[1, 3], 1.0));
    let out = run(
        b,
        &bind(vec![
            ("a", arr(&[2, 3], da.clone())),
            ("c", arr(&[1, 3], dc.clone())),
        ]),
        "y",
    );
    assert_eq!(out.shape.dims(), &[3, 3]);
    assert_eq!(out.data, [da, dc].concat());

    // Middle axis of three operands: element by element.
    let shapes = [[2, 3, 4], [2, 1, 4], [2, 2, 4]];
    let mut b = Builder::new();
    let ids: Vec<_> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| b.input(&format!("x{i}"), F32, *s).unwrap())
        .collect();
    let y = b.concat(&ids, 1).unwrap();
    b.output("y", y).unwrap();
    let datas: Vec<Vec<f32>> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| randn(53, &format!("x{i}"), s, 1.0))
        .collect();
    let bindings = bind(
        shapes
            .iter()
            .zip(&datas)
            .enumerate()
            .map(|(i, (s, d))| (["x0", "x1", "x2"][i], arr(s, d.clone())))
            .collect(),
    );
    let out = run(b, &bindings, "y");
    let out_dims = [2, 6, 4];
    assert_eq!(out.shape.dims(), &out_dims);
    for (flat, &v) in out.data.iter().enumerate() {
        let [i, j, k] = unravel(flat, &out_dims)[..] else {
            unreachable!()
        };
        let (which, jj) = match j {
            0..=2 => (0, j),
            3 => (1, 0),
            _ => (2, j - 4),
        };
        assert_eq!(
            v,
            datas[which][ravel(&[i, jj, k], &shapes[which])],
            "at {i},{j},{k}"
        );
    }
}

/// `a op b` with NumPy broadcasting to `out_dims`, by explicit index arithmetic.
fn broadcast_naive(
    a: &[f32],
    a_dims: &[usize],
    b: &[f32],
    b_dims: &[usize],
    out_dims: &[usize],
    f: fn(f32, f32) -> f32,
) -> Vec<f32> {
    let pick = |data: &[f32], dims: &[usize], o: &[usize]| {
        let pad = o.len() - dims.len();
        let idx: Vec<usize> = dims
            .iter()
            .enumerate()
            .map(|(i, &d)| if d == 1 { 0 } else { o[pad + i] })
            .collect();
        data[ravel(&idx, dims)]
    };
    (0..numel(out_dims))
        .map(|flat| {
            let o = unravel(flat, out_dims);
            f(pick(a, a_dims, &o), pick(b, b_dims, &o))
        })
        .collect()
}

#[test]
fn broadcasting_add_and_mul() {
    type Case = (&'static [usize], &'static [usize], &'static [usize], bool);
    let cases: [Case; 4] = [
        (&[2, 3, 4], &[4], &[2, 3, 4], true),
        (&[2, 1, 4], &[3, 1], &[2, 3, 4], false),
        (&[4], &[2, 3, 4], &[2, 3, 4], false),
        (&[], &[2, 3], &[2, 3], true),
    ];
    for (a_dims, b_dims, out_dims, add) in cases {
        let mut b = Builder::new();
        let a = b.input("a", F32, a_dims).unwrap();
        let c = b.input("b", F32, b_dims).unwrap();
        let y = if add { b.add(a, c) } else { b.mul(a, c) }.unwrap();
        b.output("y", y).unwrap();
        let da = randn(54, "a", a_dims, 1.0);
        let db = randn(54, "b", b_dims, 1.0);
        let bindings = bind(vec![
            ("a", arr(a_dims, da.clone())),
            ("b", arr(b_dims, db.clone())),
        ]);
        let out = run(b, &bindings, "y");
        assert_eq!(out.shape.dims(), out_dims);
        let f: fn(f32, f32) -> f32 = if add { |x, y| x + y } else { |x, y| x * y };
        let want = broadcast_naive(&da, a_dims, &db, b_dims, out_dims, f);
        assert_eq!(
            out.data,
            want,
            "{a_dims:?} {} {b_dims:?}",
            if add { "+" } else { "*" }
        );
    }
}

// ---------------------------------------------------------------------------------------------
// RoPE
// ---------------------------------------------------------------------------------------------

/// RoPE on `x [outer, seq, heads, head_dim]` in f64: position is the seq index.
fn rope_f64(x: &[f32], dims: &[usize], style: RopeStyle, theta: f64, rotary_dim: usize) -> Vec<f32> {
    let r = dims.len();
    let (seq, heads, head_dim) = (dims[r - 3], dims[r - 2], dims[r - 1]);
    let outer = numel(&dims[..r - 3]);
    let mut out = x.to_vec();
    for o in 0..outer {
        for s in 0..seq {
            for h in 0..heads {
                let base = ((o * seq + s) * heads + h) * head_dim;
                for i in 0..rotary_dim / 2 {
                    let inv_freq = theta.powf(-2.0 * i as f64 / rotary_dim as f64);
                    let angle = s as f64 * inv_freq;
                    let (a, b) = match style {
                        RopeStyle::Neox => (i, i + rotary_dim / 2),
                        RopeStyle::Gptj => (2 * i, 2 * i + 1),
                    };
                    let (x1, x2) = (x[base + a] as f64, x[base + b] as f64);
                    out[base + a] = (x1 * angle.cos() - x2 * angle.sin()) as f32;
                    out[base + b] = (x2 * angle.cos() + x1 * angle.sin()) as f32;
                }
            }
        }
    }
    out
}

#[test]
fn rope_matches_formula_in_both_layouts_full_and_partial() {
    let cases = [
        (RopeStyle::Neox, 16, vec![2, 5, 3, 16]),
        (RopeStyle::Neox, 12, vec![2, 5, 3, 16]),
        (RopeStyle::Neox, 4, vec![5, 2, 8]),
        (RopeStyle::Gptj, 16, vec![2, 5, 3, 16]),
        (RopeStyle::Gptj, 6, vec![2, 5, 3, 16]),
        (RopeStyle::Gptj, 8, vec![5, 2, 8]),
    ];
    for (style, rotary_dim, dims) in cases {
        let theta = 10000.0f32;
        let mut b = Builder::new();
        let x = b.input("x", F32, &dims[..]).unwrap();
        let y = b.rope(x, style, theta, rotary_dim, None).unwrap();
        b.output("y", y).unwrap();
        let data = randn(60, "x", &dims, 1.0);
        let out = run(b, &bind(vec![("x", arr(&dims, data.clone()))]), "y");
        let want = rope_f64(&data, &dims, style, theta as f64, rotary_dim);
        let what = format!("{style:?} rotary_dim {rotary_dim} {dims:?}");
        assert_rel_l2(&out.data, &want, 1e-6, &what);
        let head_dim = *dims.last().unwrap();
        for (i, (&got, &x)) in out.data.iter().zip(&data).enumerate() {
            let channel = i % head_dim;
            if channel >= rotary_dim {
                assert_eq!(
                    got.to_bits(),
                    x.to_bits(),
                    "{what}: channel {channel} must pass through"
                );
            }
            // Position 0 (first row of every sequence) is unrotated.
            let seq_index = (i / (head_dim * dims[dims.len() - 2])) % dims[dims.len() - 3];
            if seq_index == 0 {
                assert_eq!(got, x, "{what}: position 0 must be unchanged");
            }
        }
    }
}

#[test]
fn rope_with_small_theta_rotates_every_pair_visibly() {
    // theta = 2 gives large angles for every frequency, so a wrong pairing cannot hide.
    let dims = [1, 4, 1, 8];
    for style in [RopeStyle::Neox, RopeStyle::Gptj] {
        let mut b = Builder::new();
        let x = b.input("x", F32, dims).unwrap();
        let y = b.rope(x, style, 2.0, 8, None).unwrap();
        b.output("y", y).unwrap();
        let data = randn(61, "x", &dims, 1.0);
        let out = run(b, &bind(vec![("x", arr(&dims, data.clone()))]), "y");
        let want = rope_f64(&data, &dims, style, 2.0, 8);
        assert_rel_l2(&out.data, &want, 1e-6, &format!("{style:?} theta 2"));
        let other = match style {
            RopeStyle::Neox => RopeStyle::Gptj,
            RopeStyle::Gptj => RopeStyle::Neox,
        };
        let wrong = rope_f64(&data, &dims, other, 2.0, 8);
        assert!(
            rel_l2(&want, &wrong) > 0.1,
            "the two layouts must differ on this input"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct AttnCase {
    b: usize,
    hq: usize,
    hkv: usize,
    sq: usize,
    skv: usize,
    d: usize,
    dv: usize,
    causal: bool,
}

/// `softmax(q·kᵀ·scale + mask)·v` by explicit loops in f64.
fn attention_f64(c: &AttnCase, q: &[f32], k: &[f32], v: &[f32], scale: f64) -> Vec<f32> {
    let group = c.hq / c.hkv;
    let mut out = vec![0f32; c.b * c.hq * c.sq * c.dv];
    for bi in 0..c.b {
        for h in 0..c.hq {
            let kvh = h / group;
            for i in 0..c.sq {
                let q_at = |x: usize| q[((bi * c.hq + h) * c.sq + i) * c.d + x] as f64;
                let k_at = |j: usize, x: usize| k[((bi * c.hkv + kvh) * c.skv + j) * c.d + x] as f64;
                let v_at = |j: usize, x: usize| v[((bi * c.hkv + kvh) * c.skv + j) * c.dv + x] as f64;
                let keys: Vec<usize> = (0..c.skv).filter(|&j| !c.causal || j <= i).collect();
                let scores: Vec<f64> = keys
                    .iter()
                    .map(|&j| (0..c.d).map(|x| q_at(x) * k_at(j, x)).sum::<f64>() * scale)
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for x in 0..c.dv {
                    let o: f64 = keys.iter().zip(&e).map(|(&j, p)| p / sum * v_at(j, x)).sum();
                    out[((bi * c.hq + h) * c.sq + i) * c.dv + x] = o as f32;
                }
            }
        }
    }
    out
}

#[test]
fn attention_matches_explicit_loops() {
    #[rustfmt::skip]
    let cases = [
        AttnCase { b: 2, hq: 2, hkv: 2, sq: 5, skv: 5, d: 8, dv: 8, causal: true },
        AttnCase { b: 2, hq: 2, hkv: 2, sq: 5, skv: 5, d: 8, dv: 8, causal: false },
        AttnCase { b: 1, hq: 4, hkv: 2, sq: 6, skv: 6, d: 8, dv: 8, causal: true },
        AttnCase { b: 2, hq: 4, hkv: 2, sq: 3, skv: 7, d: 8, dv: 6, causal: false },
        AttnCase { b: 1, hq: 4, hkv: 1, sq: 6, skv: 6, d: 8, dv: 4, causal: true },
        AttnCase { b: 2, hq: 4, hkv: 1, sq: 4, skv: 9, d: 8, dv: 8, causal: false },
        // Top-left aligned causal mask with q_len < kv_len: query i sees keys 0..=i only.
        AttnCase { b: 1, hq: 4, hkv: 2, sq: 3, skv: 6, d: 8, dv: 8, causal: true },
    ];
    for (n, c) in cases.iter().enumerate() {
        let scale = 1.0 / (c.d as f32).sqrt();
        let (qd, kd, vd) = (
            [c.b, c.hq, c.sq, c.d],
            [c.b, c.hkv, c.skv, c.d],
            [c.b, c.hkv, c.skv, c.dv],
        );
        let mut b = Builder::new();
        let q = b.input("q", F32, qd).unwrap();
        let k = b.input("k", F32, kd).unwrap();
        let v = b.input("v", F32, vd).unwrap();
        let y = b.attention(q, k, v, c.causal, scale).unwrap();
        b.output("y", y).unwrap();
        let (dq, dk, dv) = (
            randn(70 + n as u64, "q", &qd, 1.5),
            randn(70 + n as u64, "k", &kd, 1.5),
            randn(70 + n as u64, "v", &vd, 1.0),
        );
        let bindings = bind(vec![
            ("q", arr(&qd, dq.clone())),
            ("k", arr(&kd, dk.clone())),
            ("v", arr(&vd, dv.clone())),
        ]);
        let out = run(b, &bindings, "y");
        assert_eq!(out.shape.dims(), &[c.b, c.hq, c.sq, c.dv]);
        let want = attention_f64(c, &dq, &dk, &dv, scale as f64);
        assert_rel_l2(&out.data, &want, 1e-5, &format!("attention case {n}"));

        // The case must be able to tell the mask and the head mapping apart.
        let flipped = AttnCase {
            causal: !c.causal,
            ..*c
        };
        let other_mask = attention_f64(&flipped, &dq, &dk, &dv, scale as f64);
        assert!(rel_l2(&other_mask, &want) > 1e-2, "case {n}: mask must matter");
    }
}

/// bf16 attention weighs V with probabilities rounded to bf16 (the row sum unrounded), as
/// cuDNN's flash attention does: the output matches loops that round them, and is closer to them
/// than to loops that do not.
#[test]
fn bf16_attention_weighs_v_with_bf16_probabilities() {
    let c = AttnCase {
        b: 1,
        hq: 2,
        hkv: 1,
        sq: 24,
        skv: 24,
        d: 16,
        dv: 16,
        causal: true,
    };
    let (qd, kd, vd) = (
        [c.b, c.hq, c.sq, c.d],
        [c.b, c.hkv, c.skv, c.d],
        [c.b, c.hkv, c.skv, c.dv],
    );
    let mut b = Builder::new();
    let q = b.input("q", BF16, qd).unwrap();
    let k = b.input("k", BF16, kd).unwrap();
    let v = b.input("v", BF16, vd).unwrap();
    let y = b.attention(q, k, v, true, 0.25).unwrap();
    b.output("y", y).unwrap();
    let bf = |x: Vec<f32>| x.into_iter().map(|x| round_to(BF16, x)).collect::<Vec<_>>();
    let (dq, dk, dv) = (
        bf(randn(90, "q", &qd, 2.0)),
        bf(randn(90, "k", &kd, 2.0)),
        bf(randn(90, "v", &vd, 1.0)),
    );
    let bindings = bind(vec![
        ("q", arr(&qd, dq.clone())),
        ("k", arr(&kd, dk.clone())),
        ("v", arr(&vd, dv.clone())),
    ]);
    let out = run(b, &bindings, "y");
    let loops = |round_p: bool| {
        let mut want = Vec::new();
        for h in 0..c.hq {
            for i in 0..c.sq {
                let at = |t: &[f32], j: usize, x: usize| t[j * c.d + x] as f64;
                let qi = |x: usize| dq[(h * c.sq + i) * c.d + x] as f64;
                let scores: Vec<f64> = (0..=i)
                    .map(|j| (0..c.d).map(|x| qi(x) * at(&dk, j, x)).sum::<f64>() * 0.25)
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                let p = |j: usize| {
                    if round_p {
                        round_to(BF16, e[j] as f32) as f64
                    } else {
                        e[j]
                    }
                };
                for x in 0..c.dv {
                    let o: f64 = (0..=i).map(|j| p(j) * at(&dv, j, x)).sum();
                    want.push(round_to(BF16, (o / sum) as f32));
                }
            }
        }
        want
    };
    let (rounded, exact) = (loops(true), loops(false));
    // f32 against f64 sums may still move an output across a bf16 rounding boundary.
    assert_rel_l2(&out.data, &rounded, 1e-3, "bf16 attention");
    let (to_rounded, to_exact) = (rel_l2(&out.data, &rounded), rel_l2(&out.data, &exact));
    assert!(
        to_rounded < 0.5 * to_exact,
        "closer to bf16 probabilities ({to_rounded:.2e}) than to exact ones ({to_exact:.2e})"
    );
}

#[test]
fn attention_gqa_reads_kv_head_h_over_group() {
    // With 4 query heads on 2 KV heads, heads 0,1 read KV head 0 and heads 2,3 read KV head 1.
    // Make the KV heads distinguishable: v of KV head j is constant j + 1, so every output row
    // of query head h equals (h / 2) + 1 exactly, whatever the attention weights.
    let (hq, hkv, s, d) = (4, 2, 3, 8);
    let mut b = Builder::new();
    let q = b.input("q", F32, [1, hq, s, d]).unwrap();
    let k = b.input("k", F32, [1, hkv, s, d]).unwrap();
    let v = b.input("v", F32, [1, hkv, s, 2]).unwrap();
    let y = b.attention(q, k, v, true, 0.3).unwrap();
    b.output("y", y).unwrap();
    let vdata: Vec<f32> = (0..hkv).flat_map(|j| vec![(j + 1) as f32; s * 2]).collect();
    let bindings = bind(vec![
        ("q", arr(&[1, hq, s, d], randn(80, "q", &[1, hq, s, d], 1.0))),
        ("k", arr(&[1, hkv, s, d], randn(80, "k", &[1, hkv, s, d], 1.0))),
        ("v", arr(&[1, hkv, s, 2], vdata)),
    ]);
    let out = run(b, &bindings, "y");
    for (i, &o) in out.data.iter().enumerate() {
        let h = i / (s * 2);
        let want = (h / (hq / hkv) + 1) as f32;
        assert!((o - want).abs() <= 1e-6, "query head {h}: got {o}, want {want}");
    }
}

// ---------------------------------------------------------------------------------------------
// Activations
// ---------------------------------------------------------------------------------------------

/// erf by its Maclaurin series, in f64; accurate to ~1e-13 for |z| < 3.
fn erf_series(z: f64) -> f64 {
    assert!(z.abs() < 3.0);
    let mut sum = 0.0;
    let mut power = z; // z^(2n+1) / n!, with alternating sign
    for n in 0..200 {
        let term = power / (2 * n + 1) as f64;
        sum += term;
        if term.abs() < 1e-18 {
            break;
        }
        power *= -z * z / (n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

fn unary_graph(dtype: DType, n: usize, f: impl FnOnce(&mut Builder, NodeId) -> NodeId) -> Builder {
    let mut b = Builder::new();
    let x = b.input("x", dtype, [n]).unwrap();
    let y = f(&mut b, x);
    b.output("y", y).unwrap();
    b
}

/// Inputs on a grid over [-4, 4] plus random ones.
fn activation_inputs() -> Vec<f32> {
    let mut x: Vec<f32> = (0..=160).map(|i| -4.0 + i as f32 * 0.05).collect();
    x.extend(randn(90, "x", &[64], 1.5).iter().map(|v| v.clamp(-4.0, 4.0)));
    x
}

/// Each element within `tol` relative to the expectation (or `tol` absolute near 0).
fn assert_elementwise(x: &[f32], got: &[f32], want: &[f64], tol: f64, what: &str) {
    for ((&x, &g), &w) in x.iter().zip(got).zip(want) {
        let err = (g as f64 - w).abs();
        assert!(
            err <= tol * w.abs().max(1.0),
            "{what}({x}): got {g}, want {w} (error {err:.3e})"
        );
    }
}

#[test]
fn silu_matches_formula() {
    let x = activation_inputs();
    let mut big = x.clone();
    big.extend([-30.0, -10.0, 10.0, 30.0]);
    let b = unary_graph(F32, big.len(), |b, x| b.silu(x).unwrap());
    let out = run(b, &bind(vec![("x", arr(&[big.len()], big.clone()))]), "y");
    let want: Vec<f64> = big
        .iter()
        .map(|&v| v as f64 / (1.0 + (-(v as f64)).exp()))
        .collect();
    assert_rel_l2(&out.data, &to_f32(&want), 1e-6, "silu");
    assert_elementwise(&big, &out.data, &want, 1e-6, "silu");
}

#[test]
fn gelu_exact_matches_erf_formula() {
    let x = activation_inputs();
    let b = unary_graph(F32, x.len(), |b, x| b.gelu(x, GeluApprox::None).unwrap());
    let out = run(b, &bind(vec![("x", arr(&[x.len()], x.clone()))]), "y");
    let want: Vec<f64> = x
        .iter()
        .map(|&v| {
            let v = v as f64;
            0.5 * v * (1.0 + erf_series(v / std::f64::consts::SQRT_2))
        })
        .collect();
    assert_rel_l2(&out.data, &to_f32(&want), 1e-6, "gelu erf");
    assert_elementwise(&x, &out.data, &want, 1e-6, "gelu erf");
}

#[test]
fn gelu_tanh_matches_approximation() {
    let x = activation_inputs();
    let b = unary_graph(F32, x.len(), |b, x| b.gelu(x, GeluApprox::Tanh).unwrap());
    let out = run(b, &bind(vec![("x", arr(&[x.len()], x.clone()))]), "y");
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let want: Vec<f64> = x
        .iter()
        .map(|&v| {
            let v = v as f64;
            0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())
        })
        .collect();
    assert_rel_l2(&out.data, &to_f32(&want), 1e-6, "gelu tanh");
    assert_elementwise(&x, &out.data, &want, 1e-6, "gelu tanh");
    // The approximation is distinguishable from the exact form at this tolerance.
    let exact: Vec<f32> = x
        .iter()
        .map(|&v| (0.5 * v as f64 * (1.0 + erf_series(v as f64 / std::f64::consts::SQRT_2))) as f32)
        .collect();
    let diff = out
        .data
        .iter()
        .zip(&exact)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff > 1e-4, "tanh and erf GELU differ by {diff}");
}

#[test]
fn erf_series_is_accurate() {
    // Known values of erf (to 16 digits) keep the test's own oracle honest.
    for (z, want) in [
        (0.5, 0.520_499_877_813_046_5),
        (1.0, 0.842_700_792_949_714_9),
        (2.0, 0.995_322_265_018_952_7),
        (2.8, 0.999_924_986_805_334_4),
    ] {
        assert!((erf_series(z) - want).abs() < 1e-13, "erf({z})");
        assert!((erf_series(-z) + want).abs() < 1e-13, "erf(-{z})");
    }
}

// ---------------------------------------------------------------------------------------------
// Casts and rounding to each dtype
// ---------------------------------------------------------------------------------------------

fn cast_values(to: DType, x: &[f32]) -> Vec<f32> {
    let b = unary_graph(F32, x.len(), |b, x| b.cast(x, to).unwrap());
    run(b, &bind(vec![("x", arr(&[x.len()], x.to_vec()))]), "y").data
}

fn assert_same_bits(got: &[f32], probes: &[(f32, f32)], what: &str) {
    for (&g, &(x, want)) in got.iter().zip(probes) {
        assert!(
            g.to_bits() == want.to_bits(),
            "{what}: {x:e} ({:#010x}) -> {g:e}, want {want:e}",
            x.to_bits()
        );
    }
}

#[test]
fn cast_to_bf16_rounds_to_nearest_even_everywhere() {
    let probes = rounding_probes_16(decode_bf16);
    let x: Vec<f32> = probes.iter().map(|p| p.0).collect();
    let got = cast_values(BF16, &x);
    assert_same_bits(&got, &probes, "cast to bf16");
    // Hand-picked halfway cases.
    let halfway = [
        (1.0 + 2f32.powi(-8), 1.0),
        (1.0 + 3.0 * 2f32.powi(-8), 1.0 + 2f32.powi(-6)),
        (-(1.0 + 2f32.powi(-8)), -1.0),
        (256.0 + 1.0, 256.0),
        (256.0 + 3.0, 260.0),
    ];
    let got = cast_values(BF16, &halfway.map(|p| p.0));
    assert_same_bits(&got, &halfway, "bf16 halfway");
}

#[test]
fn cast_to_f16_rounds_to_nearest_even_everywhere() {
    let probes = rounding_probes_16(decode_f16);
    let x: Vec<f32> = probes.iter().map(|p| p.0).collect();
    let got = cast_values(F16, &x);
    assert_same_bits(&got, &probes, "cast to f16");
    let halfway = [
        (1.0 + 2f32.powi(-11), 1.0),
        (1.0 + 3.0 * 2f32.powi(-11), 1.0 + 2f32.powi(-9)),
        (2048.0 + 1.0, 2048.0),
        (2048.0 + 3.0, 2052.0),
        (65504.0 + 16.0, f32::INFINITY),
        (2f32.powi(-25), 0.0),
        (3.0 * 2f32.powi(-25), 2f32.powi(-23)),
        (-0.0, -0.0),
    ];
    let got = cast_values(F16, &halfway.map(|p| p.0));
    assert_same_bits(&got, &halfway, "f16 halfway");
}

#[test]
fn cast_to_int_truncates_toward_zero() {
    let x = [2.7, -2.7, 0.5, -0.5, 3.0, -3.0, 1e6 + 0.5, -123.999];
    let want = [2.0, -2.0, 0.0, 0.0, 3.0, -3.0, 1e6, -123.0];
    for to in [I32, I64] {
        let got = cast_values(to, &x);
        assert_eq!(got, want, "{to}");
    }
    // Back to a float, the value is unchanged.
    let mut b = Builder::new();
    let i = b.input("i", I32, [3]).unwrap();
    let f = b.cast(i, F32).unwrap();
    b.output("y", f).unwrap();
    let out = run(
        b,
        &bind(vec![("i", arr(&[3], vec![-5.0, 0.0, 16_777_216.0]))]),
        "y",
    );
    assert_eq!(out.data, vec![-5.0, 0.0, 16_777_216.0]);
}

#[test]
fn each_node_result_is_rounded_to_its_dtype() {
    // bf16 add: 1 + 3·2^-9 lies between bf16 neighbours 1 and 1 + 2^-7, nearer the latter.
    let mut b = Builder::new();
    let a = b.input("a", BF16, [4]).unwrap();
    let c = b.input("b", BF16, [4]).unwrap();
    let s = b.add(a, c).unwrap();
    let p = b.mul(a, c).unwrap();
    b.output("sum", s).unwrap();
    b.output("prod", p).unwrap();
    let graph = b.finish();
    let da = vec![1.0, 3.0, -1.5, 100.0];
    let db = vec![
        3.0 * 2f32.powi(-9),
        1.0 + 2f32.powi(-7),
        2f32.powi(-9),
        0.5 + 2f32.powi(-8),
    ];
    assert!(da.iter().chain(&db).all(|&v| is_bf16(v)));
    let outputs = reference::evaluate(
        &graph,
        &bind(vec![("a", arr(&[4], da.clone())), ("b", arr(&[4], db.clone()))]),
    )
    .unwrap();
    assert_eq!(outputs["sum"].data[0], 1.0 + 2f32.powi(-7));
    for i in 0..4 {
        assert_eq!(outputs["sum"].data[i], bf16_rne(da[i] + db[i]), "sum {i}");
        assert_eq!(outputs["prod"].data[i], bf16_rne(da[i] * db[i]), "prod {i}");
    }
    assert!(outputs["sum"]
        .data
        .iter()
        .chain(&outputs["prod"].data)
        .all(|&v| is_bf16(v)));

    // Random bf16 and f16 chains: every stored tensor is representable in its dtype.
    for dtype in [BF16, F16] {
        let mut b = Builder::new();
        let x = b.input("x", dtype, [64]).unwrap();
        let y = b.input("y", dtype, [64]).unwrap();
        let s = b.add(x, y).unwrap();
        let m = b.mul(s, y).unwrap();
        let g = b.silu(m).unwrap();
        b.output("out", g).unwrap();
        let graph = b.finish();
        let dx = randn(91, "x", &[64], 1.0);
        let dy = randn(91, "y", &[64], 1.0);
        let outputs =
            reference::evaluate(&graph, &bind(vec![("x", arr(&[64], dx)), ("y", arr(&[64], dy))])).unwrap();
        let f16_values: HashSet<u32> = (0u16..=0xFFFF)
            .map(decode_f16)
            .filter(|v| v.is_finite())
            .map(|v| (v as f32).to_bits())
            .collect();
        let representable = |v: f32| match dtype {
            BF16 => is_bf16(v),
            _ => f16_values.contains(&v.to_bits()),
        };
        assert!(
            outputs["out"].data.iter().all(|&v| representable(v)),
            "{dtype} chain output"
        );
    }
}

#[test]
fn bound_values_are_rounded_to_their_dtype() {
    let x = vec![1.0 + 2f32.powi(-9), 0.1, -2.718_281_7, 1e-3];
    let mut b = Builder::new();
    let xi = b.input("x", BF16, [4]).unwrap();
    b.output("y", xi).unwrap();
    let out = run(b, &bind(vec![("x", arr(&[4], x.clone()))]), "y");
    let want: Vec<f32> = x.iter().map(|&v| bf16_rne(v)).collect();
    assert_eq!(out.data, want);
    assert_eq!(out.data[0], 1.0, "1 + 2^-9 rounds down to 1 in bf16");
}

// ---------------------------------------------------------------------------------------------
// FP8
// ---------------------------------------------------------------------------------------------

#[test]
fn fp8_bit_layouts_decode_as_specified() {
    let e4m3: Vec<f64> = (0u8..=255).map(|b| decode_fp8(F8E4M3, b)).collect();
    let e5m2: Vec<f64> = (0u8..=255).map(|b| decode_fp8(F8E5M2, b)).collect();
    // e4m3: only S.1111.111 is NaN, no infinities, max 448 = S.1111.110.
    let nans: Vec<usize> = (0..256).filter(|&b| e4m3[b].is_nan()).collect();
    assert_eq!(nans, vec![0x7F, 0xFF]);
    assert!(e4m3.iter().all(|v| !v.is_infinite()));
    assert_eq!(e4m3[0x7E], 448.0);
    assert_eq!(E4M3_MAX as f64, 448.0);
    assert_eq!(e4m3[0x01], 2f64.powi(-9), "smallest e4m3 subnormal");
    assert_eq!(e4m3[0x08], 2f64.powi(-6), "smallest e4m3 normal");
    assert_eq!(e4m3[0x38], 1.0);
    // e5m2: infinities at S.11111.00, NaNs at S.11111.{01,10,11}, max 57344.
    assert_eq!(e5m2[0x7C], f64::INFINITY);
    assert_eq!(e5m2[0xFC], f64::NEG_INFINITY);
    assert_eq!(e5m2.iter().filter(|v| v.is_nan()).count(), 6);
    assert_eq!(e5m2[0x7B], 57344.0);
    assert_eq!(E5M2_MAX as f64, 57344.0);
    assert_eq!(e5m2[0x01], 2f64.powi(-16), "smallest e5m2 subnormal");
    assert_eq!(e5m2[0x3C], 1.0);
    // Bit order is value order for the non-negative finite patterns.
    for dtype in [F8E4M3, F8E5M2] {
        let t = fp8_positive_finite(dtype);
        assert!(t.windows(2).all(|w| w[0] < w[1]), "{dtype} increasing");
        assert_eq!(t.len(), if dtype == F8E4M3 { 127 } else { 124 });
    }
}

#[test]
fn fp8_round_to_is_identity_on_every_representable_value() {
    for dtype in [F8E4M3, F8E5M2] {
        for bits in 0u8..=255 {
            let v = decode_fp8(dtype, bits);
            if !v.is_finite() {
                continue;
            }
            let x = v as f32;
            assert_eq!(x as f64, v);
            let r = round_to(dtype, x);
            assert_eq!(
                r.to_bits(),
                x.to_bits(),
                "{dtype} {bits:#04x} = {v}: round_to gave {r}"
            );
        }
        assert!(round_to(dtype, f32::NAN).is_nan(), "{dtype} NaN stays NaN");
    }
}

#[test]
fn fp8_midpoints_round_to_the_even_neighbour() {
    for dtype in [F8E4M3, F8E5M2] {
        let t = fp8_positive_finite(dtype);
        for (n, w) in t.windows(2).enumerate() {
            let (lo, hi) = (w[0], w[1]);
            let mid = (lo + hi) / 2.0;
            let even = if n % 2 == 0 { lo } else { hi };
            for sign in [1.0, -1.0] {
                let m = (sign * mid) as f32;
                assert_eq!(
                    round_to(dtype, m) as f64,
                    sign * even,
                    "{dtype} midpoint {m} of {lo} and {hi}"
                );
                let below = f32::from_bits(m.to_bits() - 1);
                let above = f32::from_bits(m.to_bits() + 1);
                assert_eq!(
                    round_to(dtype, below) as f64,
                    sign * lo,
                    "{dtype} just inside {lo}"
                );
                assert_eq!(
                    round_to(dtype, above) as f64,
                    sign * hi,
                    "{dtype} just inside {hi}"
                );
            }
        }
    }
}

#[test]
fn fp8_saturates_instead_of_overflowing() {
    for (dtype, max, beyond) in [
        (F8E4M3, 448.0f32, [448.5, 464.0, 480.0, 500.0, 1e4]),
        (F8E5M2, 57344.0, [57345.0, 61440.0, 65536.0, 1e5, 1e9]),
    ] {
        for x in beyond.into_iter().chain([f32::MAX, f32::INFINITY]) {
            assert_eq!(round_to(dtype, x), max, "{dtype} {x}");
            assert_eq!(round_to(dtype, -x), -max, "{dtype} -{x}");
        }
    }
}

#[test]
fn fp8_subnormals_and_signed_zero() {
    let q = 2f32.powi(-9); // smallest e4m3 subnormal
    let e4 = |x: f32| round_to(F8E4M3, x);
    assert_eq!(
        e4(q / 2.0).to_bits(),
        0.0f32.to_bits(),
        "half the smallest subnormal ties to 0"
    );
    assert_eq!(e4(q / 2.0 * 1.0001), q);
    assert_eq!(e4(q / 4.0), 0.0);
    assert_eq!(e4(1.5 * q), 2.0 * q, "1.5 q ties to the even 2 q");
    assert_eq!(e4(2.5 * q), 2.0 * q, "2.5 q ties to the even 2 q");
    assert_eq!(e4(5.0 * q), 5.0 * q);
    assert_eq!(
        e4(7.5 * q),
        2f32.powi(-6),
        "between the largest subnormal and the smallest normal"
    );
    assert_eq!(e4(1e-30), 0.0);
    assert_eq!(e4(-0.0).to_bits(), (-0.0f32).to_bits(), "negative zero is kept");
    assert_eq!(
        e4(-q / 4.0).to_bits(),
        (-0.0f32).to_bits(),
        "tiny negatives round to -0"
    );
    assert_eq!(e4(-3.0 * q), -3.0 * q);
    let q5 = 2f32.powi(-16); // smallest e5m2 subnormal
    let e5 = |x: f32| round_to(F8E5M2, x);
    assert_eq!(e5(q5 / 2.0), 0.0);
    assert_eq!(e5(3.0 * q5), 3.0 * q5);
    assert_eq!(e5(3.5 * q5), 4.0 * q5);
    assert_eq!(e5(-0.0).to_bits(), (-0.0f32).to_bits());
    assert_eq!(e5(f32::from_bits(1)), 0.0, "f32 subnormals flush to 0");
}

#[test]
fn quantize_is_saturating_fp8_rounding_of_x_over_scale() {
    let mut rng = Rng(7);
    for (to, scale) in [(F8E4M3, 0.5f32), (F8E5M2, 3.0f32), (F8E4M3, 0.013)] {
        let table = fp8_positive_finite(to);
        let max = *table.last().unwrap() as f32;
        // Values spread over several binades, some far beyond max · scale, plus exact ties.
        let mut x: Vec<f32> = randn(100, "x", &[200], max * scale / 2.0)
            .iter()
            .enumerate()
            .map(|(i, v)| v * 2f32.powi(i as i32 % 7 - 3))
            .collect();
        x.extend((0..32).map(|_| table[rng.below(table.len() as u64) as usize] as f32 * scale));
        x.extend([max * scale * 3.0, -max * scale * 3.0, 0.0, -0.0]);
        let n = x.len();
        let mut b = Builder::new();
        let xi = b.input("x", F32, [n]).unwrap();
        let si = b.input("scale", F32, []).unwrap();
        let qn = b.quantize(xi, si, to).unwrap();
        b.output("q", qn).unwrap();
        let bindings = bind(vec![("x", arr(&[n], x.clone())), ("scale", Array::scalar(scale))]);
        let out = run(b, &bindings, "q");
        let mut saturated = 0;
        for (&got, &v) in out.data.iter().zip(&x) {
            let want = nearest_in_table(&table, v * (1.0 / scale));
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "quantize {v} · (1 / {scale}) to {to}"
            );
            saturated += (got.abs() == max) as usize;
        }
        assert!(saturated >= 2, "some values must saturate ({saturated})");
    }
}

#[test]
fn cast_to_fp8_saturates_and_rounds_like_quantize_with_unit_scale() {
    let table = fp8_positive_finite(F8E4M3);
    let x: Vec<f32> = randn(101, "x", &[256], 200.0);
    let got = cast_values(F8E4M3, &x);
    for (&g, &v) in got.iter().zip(&x) {
        assert_eq!(
            g.to_bits(),
            nearest_in_table(&table, v).to_bits(),
            "cast {v} to e4m3"
        );
    }
}

#[test]
fn dequantize_is_q_times_scale() {
    let mut rng = Rng(9);
    let q = random_e4m3(&mut rng, 128);
    let scale = 0.0173f32;
    for to in [F32, BF16] {
        let mut b = Builder::new();
        let qi = b.input("q", F8E4M3, [128]).unwrap();
        let si = b.param("scale", F32, [], Init::Const { value: fl(1.0) }).unwrap();
        let y = b.dequantize(qi, si, to).unwrap();
        b.output("y", y).unwrap();
        let out = run(
            b,
            &bind(vec![
                ("q", arr(&[128], q.clone())),
                ("scale", Array::scalar(scale)),
            ]),
            "y",
        );
        let want: Vec<f32> = q
            .iter()
            .map(|&v| if to == F32 { v * scale } else { bf16_rne(v * scale) })
            .collect();
        assert_eq!(out.data, want, "dequantize to {to}");
    }
}

#[test]
fn quantize_dequantize_round_trip_error_is_bounded() {
    // e4m3 keeps 3 mantissa bits: relative error <= 2^-4 for values in the normal range.
    let x: Vec<f32> = randn(102, "x", &[512], 1.0);
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = amax / E4M3_MAX;
    let mut b = Builder::new();
    let xi = b.input("x", F32, [512]).unwrap();
    let si = b.input("scale", F32, []).unwrap();
    let qn = b.quantize(xi, si, F8E4M3).unwrap();
    let y = b.dequantize(qn, si, F32).unwrap();
    b.output("y", y).unwrap();
    let out = run(
        b,
        &bind(vec![
            ("x", arr(&[512], x.clone())),
            ("scale", Array::scalar(scale)),
        ]),
        "y",
    );
    let err = rel_l2(&out.data, &x);
    assert!(err > 1e-3 && err < 2f64.powi(-4), "round-trip rel L2 {err:.3e}");
}

// ---------------------------------------------------------------------------------------------
// Bindings
// ---------------------------------------------------------------------------------------------

#[test]
fn unbound_input_or_param_is_an_error() {
    let make = || {
        let mut b = Builder::new();
        let x = b.input("x", F32, [2, 3]).unwrap();
        let w = b
            .scoped("mlp", |b| {
                b.param("weight", F32, [4, 3], Init::Normal { std: fl(1.0) })
            })
            .unwrap();
        let y = b.linear(x, w, F32).unwrap();
        b.output("y", y).unwrap();
        b.finish()
    };
    let graph = make();
    let err = reference::evaluate(&graph, &Bindings::new()).unwrap_err();
    assert_eq!(
        err,
        EvalError::Unbound {
            node: NodeId(0),
            op: "input",
            name: "x".into()
        }
    );
    let err = reference::evaluate(&graph, &bind(vec![("x", Array::zeros([2, 3]))])).unwrap_err();
    assert_eq!(
        err,
        EvalError::Unbound {
            node: NodeId(1),
            op: "param",
            name: "mlp.weight".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "node 1 (param 'mlp.weight'): no value bound for 'mlp.weight'"
    );
    // Binding under the unscoped name does not count.
    let err = reference::evaluate(
        &graph,
        &bind(vec![
            ("x", Array::zeros([2, 3])),
            ("weight", Array::zeros([4, 3])),
        ]),
    )
    .unwrap_err();
    assert!(matches!(err, EvalError::Unbound { node: NodeId(1), .. }));
    // Fully bound, it evaluates.
    let ok = reference::evaluate(
        &graph,
        &bind(vec![
            ("x", Array::zeros([2, 3])),
            ("mlp.weight", Array::zeros([4, 3])),
        ]),
    )
    .unwrap();
    assert_eq!(ok["y"], Array::zeros([2, 4]));
}

#[test]
fn binding_of_the_wrong_shape_is_an_error() {
    let mut b = Builder::new();
    let x = b.input("x", F32, [2, 3]).unwrap();
    let y = b.silu(x).unwrap();
    b.output("y", y).unwrap();
    let graph = b.finish();
    // Same element count, different shape: still rejected.
    for got in [
        Shape::new([3, 2]),
        Shape::new([6]),
        Shape::new([2, 3, 1]),
        Shape::new([2, 4]),
    ] {
        let value = Array::zeros(got.clone());
        let err = reference::evaluate(&graph, &bind(vec![("x", value)])).unwrap_err();
        assert_eq!(
            err,
            EvalError::BindingShape {
                node: NodeId(0),
                op: "input",
                name: "x".into(),
                expected: Shape::new([2, 3]),
                got: got.clone(),
            }
        );
    }
    let err = reference::evaluate(&graph, &bind(vec![("x", Array::zeros([3, 2]))])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "node 0 (input 'x'): bound value has shape [3, 2], expected [2, 3]"
    );
}

#[test]
fn evaluate_returns_every_output_and_ignores_extra_bindings() {
    let mut b = Builder::new();
    let x = b.input("x", F32, [3]).unwrap();
    let s = b.silu(x).unwrap();
    let g = b.gelu(x, GeluApprox::Tanh).unwrap();
    b.output("s", s).unwrap();
    b.output("g", g).unwrap();
    b.output("x_out", x).unwrap();
    let graph = b.finish();
    let data = vec![-1.0, 0.0, 2.0];
    let outputs = reference::evaluate(
        &graph,
        &bind(vec![
            ("x", arr(&[3], data.clone())),
            ("unused", Array::scalar(1.0)),
        ]),
    )
    .unwrap();
    let mut names: Vec<_> = outputs.keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["g", "s", "x_out"]);
    assert_eq!(outputs["x_out"].data, data);
    assert_eq!(outputs["s"].data[1], 0.0);
    assert!(outputs["g"].data[2] > 1.9 && outputs["s"].data[2] > 1.7);
}

// ---------------------------------------------------------------------------------------------
// Bugs found while writing these tests
// ---------------------------------------------------------------------------------------------

#[test]
fn same_operand_twice_evaluates() {
    // Uses are counted per operand slot, so `x * x` keeps x alive for both reads.
    let mut b = Builder::new();
    let x = b.input("x", F32, [3]).unwrap();
    let sq = b.mul(x, x).unwrap();
    let twice = b.add(x, x).unwrap();
    let both = b.concat(&[x, x], 0).unwrap();
    b.output("sq", sq).unwrap();
    b.output("twice", twice).unwrap();
    b.output("both", both).unwrap();
    let graph = b.finish();
    let data = vec![1.5, -2.0, 3.0];
    let outputs = reference::evaluate(&graph, &bind(vec![("x", arr(&[3], data.clone()))])).unwrap();
    assert_eq!(outputs["sq"].data, vec![2.25, 4.0, 9.0]);
    assert_eq!(outputs["twice"].data, vec![3.0, -4.0, 6.0]);
    assert_eq!(outputs["both"].data, [data.clone(), data].concat());
}

#[test]
fn output_node_cannot_be_an_operand() {
    // An output is a sink: its value is the node it outputs, which is what a consumer reads.
    let mut b = Builder::new();
    let x = b.input("x", F32, [2]).unwrap();
    let h = b.output("hidden", x).unwrap();
    let err = b.silu(h).unwrap_err().to_string();
    assert_eq!(
        err,
        "node 2 (silu ''): operand 0 is output node 1: read the value it outputs instead"
    );
}

#[test]
fn fp8_attention_rounds_probabilities_and_quantizes_its_output() {
    let c = AttnCase {
        b: 1,
        hq: 4,
        hkv: 2,
        sq: 7,
        skv: 7,
        d: 16,
        dv: 16,
        causal: true,
    };
    let (qd, kd) = ([c.b, c.hq, c.sq, c.d], [c.b, c.hkv, c.skv, c.d]);
    let (q_scale, k_scale, v_scale, o_scale, p_scale) =
        (1.0 / 64.0, 1.0 / 32.0, 1.0 / 128.0, 1.0 / 256.0, 256.0);
    let mut b = Builder::new();
    let mut quantized = Vec::new();
    for (name, dims, s) in [("q", qd, q_scale), ("k", kd, k_scale), ("v", kd, v_scale)] {
        let x = b.input(name, F32, dims).unwrap();
        let s = b
            .param(&format!("{name}_scale"), F32, [], Init::constant(s))
            .unwrap();
        quantized.push((b.quantize(x, s, F8E4M3).unwrap(), s));
    }
    let os = b.param("o_scale", F32, [], Init::constant(o_scale)).unwrap();
    let [(q, qs), (k, ks), (v, vs)] = quantized[..] else {
        unreachable!()
    };
    let y = b
        .fp8_attention([q, k, v], [qs, ks, vs, os], true, 0.25, p_scale, F8E4M3)
        .unwrap();
    b.output("y", y).unwrap();
    let (dq, dk, dv) = (
        randn(90, "q", &qd, 1.5),
        randn(90, "k", &kd, 1.5),
        randn(90, "v", &kd, 1.0),
    );
    let mut bindings = bind(vec![
        ("q", arr(&qd, dq.clone())),
        ("k", arr(&kd, dk.clone())),
        ("v", arr(&kd, dv.clone())),
    ]);
    for (name, s) in [
        ("q_scale", q_scale),
        ("k_scale", k_scale),
        ("v_scale", v_scale),
        ("o_scale", o_scale),
    ] {
        bindings.insert(name.to_string(), arr(&[], vec![s]));
    }
    let out = run(b, &bindings, "y");

    // Explicitly: the e4m3 values times their scales; exp(s − max) rounded to e4m3 as
    // `· p_scale`; the row sum unrounded; O divided by its scale and rounded to e4m3.
    let e4m3 = |x: f64| round_to(F8E4M3, x as f32) as f64;
    let real = |x: &[f32], s: f32| {
        x.iter()
            .map(|&x| e4m3((x / s) as f64) * s as f64)
            .collect::<Vec<_>>()
    };
    let (rq, rk, rv) = (real(&dq, q_scale), real(&dk, k_scale), real(&dv, v_scale));
    let mut want = Vec::new();
    for h in 0..c.hq {
        let kvh = h / (c.hq / c.hkv);
        for i in 0..c.sq {
            let row = |t: &[f64], head: usize, j: usize| t[(head * c.sq + j) * c.d..][..c.d].to_vec();
            let qi = row(&rq, h, i);
            let scores: Vec<f64> = (0..=i)
                .map(|j| qi.iter().zip(row(&rk, kvh, j)).map(|(a, b)| a * b).sum::<f64>() * 0.25)
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for x in 0..c.dv {
                let o: f64 = (0..=i)
                    .map(|j| e4m3(e[j] * p_scale as f64) / p_scale as f64 * row(&rv, kvh, j)[x])
                    .sum();
                want.push(e4m3(o / sum / o_scale as f64) as f32);
            }
        }
    }
    assert!(
        out.data.iter().all(|&x| round_to(F8E4M3, x) == x),
        "the output is e4m3"
    );
    // f32 against f64 sums may move a value across an e4m3 rounding boundary, rarely.
    assert_rel_l2(&out.data, &want, 1e-2, "fp8 attention");
}
