//! Autotuning: ask cuBLASLt's heuristic for its top candidates, time each one on the device,
//! keep the fastest.
//!
//! The heuristic ranks algorithms by a model, not a measurement, and its first choice is not
//! always the fastest at a given shape. Timing a handful costs tens of milliseconds per spec,
//! once (the choice is then stored on disk). Timing runs on scratch buffers of the spec's exact
//! shape, filled with random finite values (zeros would run faster than real data), with the
//! real β, so a residual GEMM is timed reading its C.

use std::sync::Arc;
use std::time::Duration;

use cudarc::cublaslt::sys::cudaStream_t;
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, DevicePtr, DriverError};
use half::bf16;

use super::algo::{Algo, AlgoConfig};
use super::error::CublasLtError;
use super::handle::{Handle, DEFAULT_WORKSPACE_BYTES};
use super::matmul::Matmul;
use super::plan::{GemmPointers, ScalePointers};
use super::spec::{GemmSpec, Precision};
use crate::device::{bind, DeviceError};
use crate::Result;

/// The heuristic's first choice is kept unless another candidate beats it by more than this
/// fraction: smaller differences are within run-to-run noise on a power-limited GPU.
const TOP1_MARGIN: f64 = 0.02;

/// How GEMMs are tuned; the defaults are what lancet compiles with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TuneOptions {
    /// The one workspace every GEMM shares, and the heuristic's limit.
    pub workspace_bytes: usize,
    /// Heuristic candidates to time (1: take the heuristic's first choice, as PyTorch does).
    pub candidates: usize,
    /// Untimed launches of each candidate before its timed ones.
    pub warmup: usize,
    /// Timed samples of each candidate; the median counts.
    pub reps: usize,
    /// Back-to-back launches in one sample (between two events), as the GEMM runs in a forward
    /// pass: a launch timed alone runs from an idle pipeline and ranks candidates differently.
    pub calls: usize,
}

impl Default for TuneOptions {
    fn default() -> Self {
        TuneOptions {
            workspace_bytes: DEFAULT_WORKSPACE_BYTES,
            candidates: 8,
            warmup: 4,
            reps: 6,
            calls: 4,
        }
    }
}

/// Where a plan's algorithm came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TuneSource {
    /// Timed now.
    Tuned,
    /// Restored from the on-disk store (and accepted by `cublasLtMatmulAlgoCheck`).
    Disk,
}

/// One algorithm the heuristic proposed, and how it did.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub config: AlgoConfig,
    /// Workspace bytes it needs.
    pub workspace_size: usize,
    /// Median milliseconds per call, or why it could not run. For a plan restored from disk,
    /// the time measured when it was tuned.
    pub median_ms: Result<f64, String>,
}

/// What getting a plan cost, and what was chosen: counts in lancet's compile report.
#[derive(Clone, Debug)]
pub struct Tuning {
    pub source: TuneSource,
    /// Wall time from the request to the plan, all of it (heuristic, scratch, timing, disk).
    pub elapsed: Duration,
    pub chosen: Candidate,
    /// Every candidate timed, in the heuristic's order (the first is its own choice); empty for
    /// a plan restored from disk.
    pub candidates: Vec<Candidate>,
    /// Cache entries not used and why, failures to write one: also printed to stderr.
    pub warnings: Vec<String>,
}

/// The outcome of [`tune`].
pub(crate) struct Tuned {
    pub algo: Algo,
    pub chosen: usize,
    pub candidates: Vec<Candidate>,
}

/// Times up to `options.candidates` heuristic proposals for `spec` and picks one.
pub(crate) fn tune(
    handle: &Handle,
    matmul: &Matmul,
    spec: &GemmSpec,
    options: &TuneOptions,
) -> Result<Tuned> {
    let lib = handle.library();
    let proposals = matmul.heuristic(handle, options.workspace_bytes, options.candidates)?;
    if proposals.is_empty() {
        return Err(CublasLtError::NoAlgorithm {
            version: lib.version(),
            spec: spec.to_string(),
            failures: vec![format!(
                "the heuristic proposed none within a {}-byte workspace",
                options.workspace_bytes
            )],
        }
        .into());
    }
    let stream = handle.stream();
    bind(stream)?;
    let scratch = Scratch::new(stream, spec).map_err(driver("allocating GEMM tuning buffers"))?;
    let events = (0..options.reps.max(1))
        .map(|_| {
            let ctx = stream.context();
            let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
            Ok((ctx.new_event(flags)?, ctx.new_event(flags)?))
        })
        .collect::<Result<Vec<_>, DriverError>>()
        .map_err(driver("creating timing events"))?;
    let mut candidates = Vec::with_capacity(proposals.len());
    for proposal in &proposals {
        let median_ms = time(
            handle,
            matmul,
            &proposal.algo,
            &scratch.pointers,
            &events,
            options,
        );
        candidates.push(Candidate {
            config: proposal.algo.config(lib)?,
            workspace_size: proposal.workspace_size,
            median_ms,
        });
    }
    let timed = candidates
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.median_ms.as_ref().ok().map(|&ms| (i, ms)));
    let Some((fastest, best_ms)) = timed.min_by(|a, b| a.1.total_cmp(&b.1)) else {
        return Err(CublasLtError::NoAlgorithm {
            version: lib.version(),
            spec: spec.to_string(),
            failures: candidates
                .iter()
                .filter_map(|c| c.median_ms.as_ref().err().map(|e| format!("{}: {e}", c.config)))
                .collect(),
        }
        .into());
    };
    let chosen = match candidates[0].median_ms {
        Ok(top1_ms) if top1_ms <= best_ms * (1.0 + TOP1_MARGIN) => 0,
        _ => fastest,
    };
    Ok(Tuned {
        algo: proposals[chosen].algo,
        chosen,
        candidates,
    })
}

/// Median milliseconds per launch of `algo` over `events.len()` samples of `options.calls`
/// launches, after `options.warmup` launches.
fn time(
    handle: &Handle,
    matmul: &Matmul,
    algo: &Algo,
    pointers: &GemmPointers,
    events: &[(CudaEvent, CudaEvent)],
    options: &TuneOptions,
) -> Result<f64, String> {
    let stream = handle.stream();
    let cu_stream = stream.cu_stream() as cudaStream_t;
    // SAFETY: the scratch buffers span the spec (`Scratch::new`); `algo` was proposed within
    // the handle's workspace.
    let launch = || unsafe { matmul.enqueue(handle, algo, pointers, cu_stream) }.map_err(|e| e.to_string());
    for _ in 0..options.warmup {
        launch()?;
    }
    let record = |event: &CudaEvent| {
        event
            .record(stream)
            .map_err(|e| format!("recording an event: {e}"))
    };
    let calls = options.calls.max(1);
    for (start, end) in events {
        record(start)?;
        for _ in 0..calls {
            launch()?;
        }
        record(end)?;
    }
    let ms = events
        .iter()
        .map(|(start, end)| start.elapsed_ms(end).map(|ms| f64::from(ms) / calls as f64))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("reading the timing events: {e}"))?;
    Ok(median(ms))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn driver(what: &'static str) -> impl FnOnce(DriverError) -> crate::Error {
    move |source| DeviceError::Driver { what, source }.into()
}

/// Device buffers of one spec's exact shape, and their addresses.
struct Scratch {
    _buffers: Vec<CudaSlice<u8>>,
    _scales: [CudaSlice<f32>; 2],
    pointers: GemmPointers,
}

/// Bytes of random values generated on the host and tiled over each scratch buffer.
const PATTERN_BYTES: usize = 1 << 20;

impl Scratch {
    fn new(stream: &Arc<CudaStream>, spec: &GemmSpec) -> Result<Self, DriverError> {
        let input_pattern = stream.clone_htod(&pattern(spec.precision, PATTERN_BYTES))?;
        let bf16_pattern = stream.clone_htod(&pattern(Precision::Bf16, PATTERN_BYTES))?;
        let elem = spec.precision.input_bytes();
        let out_bytes = spec.m * spec.n * 2;
        let x = filled(stream, &input_pattern, spec.x_len() * elem)?;
        let w = filled(stream, &input_pattern, spec.n * spec.k * elem)?;
        // SAFETY: written by every timed GEMM, never read on the host.
        let out = unsafe { stream.alloc::<u8>(out_bytes) }?;
        let residual = spec
            .residual
            .then(|| filled(stream, &bf16_pattern, out_bytes))
            .transpose()?;
        // Two allocations: cuBLASLt's FP8 kernels refuse scales packed 4 bytes apart.
        let scales = [stream.clone_htod(&[1.0f32])?, stream.clone_htod(&[1.0f32])?];
        let address = |b: &CudaSlice<u8>| b.device_ptr(stream).0;
        let pointers = GemmPointers {
            x: address(&x),
            w: address(&w),
            scales: (spec.precision == Precision::Fp8E4m3).then_some(ScalePointers {
                x: scales[0].device_ptr(stream).0,
                w: scales[1].device_ptr(stream).0,
            }),
            residual: residual.as_ref().map(address),
            out: address(&out),
        };
        let mut buffers = vec![x, w, out];
        buffers.extend(residual);
        Ok(Scratch {
            _buffers: buffers,
            _scales: scales,
            pointers,
        })
    }
}

/// A buffer of `bytes` holding `pattern` over and over.
fn filled(
    stream: &Arc<CudaStream>,
    pattern: &CudaSlice<u8>,
    bytes: usize,
) -> Result<CudaSlice<u8>, DriverError> {
    // SAFETY: every byte is written below before the buffer is used.
    let mut buffer = unsafe { stream.alloc::<u8>(bytes) }?;
    let mut offset = 0;
    while offset < bytes {
        let len = (bytes - offset).min(pattern.len());
        stream.memcpy_dtod(&pattern.slice(..len), &mut buffer.slice_mut(offset..offset + len))?;
        offset += len;
    }
    Ok(buffer)
}

/// `bytes` of pseudo-random finite values of `precision`, magnitudes 1/8 to 4 (e4m3) or below
/// 1 (bf16): sums over K = 16384 stay far from bf16 overflow and e4m3 never meets its NaN code.
fn pattern(precision: Precision, bytes: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    match precision {
        Precision::Fp8E4m3 => (0..bytes)
            .map(|_| {
                let r = next();
                // sign | exponent field 4..=8 (2^-3 .. 2^1, bias 7) | 3 mantissa bits
                let exponent = 4 + (r >> 8) % 5;
                ((r & 0x80) as u8) | ((exponent as u8) << 3) | (r >> 20) as u8 & 7
            })
            .collect(),
        Precision::Bf16 => (0..bytes / 2)
            .flat_map(|_| {
                let unit = (next() >> 11) as f64 / (1u64 << 53) as f64;
                bf16::from_f64(2.0 * unit - 1.0).to_le_bytes()
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_pattern_is_finite_and_varied() {
        let bytes = pattern(Precision::Fp8E4m3, 4096);
        assert!(bytes.iter().all(|b| b & 0x7f != 0x7f), "no e4m3 NaN code");
        let exponents: std::collections::BTreeSet<u8> = bytes.iter().map(|b| (b >> 3) & 0xf).collect();
        assert_eq!(exponents.into_iter().collect::<Vec<_>>(), vec![4, 5, 6, 7, 8]);
        assert!(bytes.iter().any(|b| b & 0x80 != 0) && bytes.iter().any(|b| b & 0x80 == 0));
    }

    #[test]
    fn bf16_pattern_is_in_range() {
        let bytes = pattern(Precision::Bf16, 4096);
        assert_eq!(bytes.len(), 4096);
        let values: Vec<f32> = bytes
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        assert!(values.iter().all(|v| v.is_finite() && v.abs() <= 1.0));
        assert!(values.iter().any(|v| *v < -0.5) && values.iter().any(|v| *v > 0.5));
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }
}
