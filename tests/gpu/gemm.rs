//! cuBLASLt GEMMs on the GPU against a CPU reference computed from the same FP8- or
//! bf16-rounded inputs, plus plan caching (memory and disk), CUDA-graph capture, and the errors
//! users see.

use std::sync::{Arc, OnceLock};

use half::bf16;
use lancet_runtime::compiler::ir::DType;
use lancet_runtime::compiler::reference::kernels::matmul_nt;
use lancet_runtime::compiler::reference::numerics::round_to;
use lancet_runtime::cublaslt::{AlgoKey, AlgoStore, GemmPlan, GemmPointers, GemmSpec, Gemms};
use lancet_runtime::cublaslt::{Residual, ScalePointers, StoredAlgo, TuneOptions, TuneSource};
use lancet_runtime::cudarc::cublaslt::sys as lt;
use lancet_runtime::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use lancet_runtime::cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use libtest_mimic::{Failed, Trial};

use crate::support::{device, fail, gpu_trial, seed, to_bf16, to_f32, within};

/// The accuracy bar. Inputs are exact on both sides; what remains is the bf16 rounding of the
/// output (~1e-3) and, with fast accumulation, partial sums kept in lower precision.
const TOLERANCE: f64 = 1e-2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Fp8Fast,
    Fp8,
    Bf16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ResidualMode {
    None,
    /// C ≠ D.
    Separate,
    /// C = D: `out` holds the residual on entry.
    InPlace,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    ldx: usize,
    mode: Mode,
    residual: ResidualMode,
}

impl Case {
    fn spec(&self) -> GemmSpec {
        let spec = match self.mode {
            Mode::Fp8Fast => GemmSpec::fp8(self.m, self.n, self.k),
            Mode::Fp8 => GemmSpec::fp8(self.m, self.n, self.k).with_fast_accum(false),
            Mode::Bf16 => GemmSpec::bf16(self.m, self.n, self.k),
        };
        spec.with_ldx(self.ldx)
            .with_residual(self.residual != ResidualMode::None)
    }

    fn name(&self) -> String {
        let mode = match self.mode {
            Mode::Fp8Fast => "fp8_fast",
            Mode::Fp8 => "fp8",
            Mode::Bf16 => "bf16",
        };
        let residual = match self.residual {
            ResidualMode::None => "",
            ResidualMode::Separate => "_residual",
            ResidualMode::InPlace => "_residual_in_place",
        };
        format!(
            "{mode}_m{}_n{}_k{}_ldx{}{residual}",
            self.m, self.n, self.k, self.ldx
        )
    }

    fn fp8(&self) -> bool {
        self.mode != Mode::Bf16
    }
}

/// Every mode meets every shape; residual modes rotate so each mode sees all three. M = 17 and
/// strided x (ldx > K) on small shapes, M = 4096 with K up to 8192 (fast accumulation's error
/// grows with K), and two Llama-3.2-1B projections as they run.
fn cases() -> Vec<Case> {
    let shapes = [
        (17, 48, 80, 80),
        (17, 48, 80, 96),
        (4096, 256, 2048, 2048),
        (4096, 256, 2048, 2112),
        (4096, 128, 8192, 8192),
    ];
    let modes = [Mode::Fp8Fast, Mode::Fp8, Mode::Bf16];
    let residuals = [ResidualMode::None, ResidualMode::Separate, ResidualMode::InPlace];
    let mut cases = Vec::new();
    for (i, &(m, n, k, ldx)) in shapes.iter().enumerate() {
        for (j, &mode) in modes.iter().enumerate() {
            let residual = residuals[(i + j) % 3];
            cases.push(Case {
                m,
                n,
                k,
                ldx,
                mode,
                residual,
            });
        }
    }
    let llama = |n, k, residual| Case {
        m: 4096,
        n,
        k,
        ldx: k,
        mode: Mode::Fp8Fast,
        residual,
    };
    cases.push(llama(3072, 2048, ResidualMode::None));
    cases.push(llama(2048, 2048, ResidualMode::InPlace));
    cases
}

pub fn trials() -> Vec<Trial> {
    let mut trials: Vec<Trial> = cases()
        .into_iter()
        .map(|case| gpu_trial(format!("gemm::correct::{}", case.name()), move || correct(case)))
        .collect();
    trials.extend([
        gpu_trial("gemm::plan_is_cached_in_memory", cached_in_memory),
        gpu_trial("gemm::cuda_graph_capture_and_replay", graph_capture),
        gpu_trial("gemm::bad_specs_are_refused", bad_specs),
        gpu_trial("gemm::bad_buffers_are_refused", bad_buffers),
        gpu_trial("gemm::scale_address_alignment", scale_alignment),
        // Last: it hands cuBLASLt a damaged algorithm on purpose.
        gpu_trial("gemm::algo_cache_on_disk", disk_cache),
    ]);
    trials
}

/// The run's shared GEMMs (memory only; the disk store has its own test).
fn gemms() -> Result<&'static Gemms, Failed> {
    static GEMMS: OnceLock<Result<Gemms, String>> = OnceLock::new();
    let gemms = GEMMS.get_or_init(|| {
        let device = device().map_err(|e| format!("{e:?}"))?;
        Gemms::with_options(device, TuneOptions::default(), None).map_err(|e| e.to_string())
    });
    gemms.as_ref().map_err(fail)
}

/// `n` values of Normal(0, std), each rounded to the inputs' storage type.
fn random(name: &str, n: usize, std: f32, dtype: DType) -> Vec<f32> {
    let mut values = lancet_runtime::compiler::weights::normal(seed(), name, n, std);
    values.iter_mut().for_each(|v| *v = round_to(dtype, *v));
    values
}

/// The e4m3 bit pattern of a value e4m3 represents exactly (or of NaN).
fn e4m3_bits(v: f32) -> u8 {
    let sign = if v.is_sign_negative() { 0x80 } else { 0 };
    let bits = v.abs().to_bits();
    let exponent = (bits >> 23) as i32 - 127;
    if v.is_nan() {
        0x7f
    } else if v == 0.0 {
        sign
    } else if exponent < -6 {
        // Subnormal: multiples of 2^-9.
        sign | (v.abs() * 512.0) as u8
    } else {
        sign | (((exponent + 7) as u8) << 3) | ((bits >> 20) & 7) as u8
    }
}

/// One case's inputs as the reference reads them (dense f32 of exactly representable values).
struct Inputs {
    x: Vec<f32>,
    w: Vec<f32>,
    /// `[x_scale, w_scale]`, 1 for bf16.
    scales: [f32; 2],
    residual: Option<Vec<f32>>,
}

impl Inputs {
    fn random(case: &Case, tag: &str) -> Self {
        let dtype = if case.fp8() { DType::F8E4M3 } else { DType::BF16 };
        let name = format!("gemm/{}/{tag}", case.name());
        let scales = if case.fp8() {
            let s = random(&format!("{name}/scales"), 2, 1.0, DType::F32);
            [0.25 + s[0].abs(), 0.02 + 0.1 * s[1].abs()]
        } else {
            [1.0, 1.0]
        };
        // A residual about as large as the product, so both halves of the sum are checked.
        let product_std = (case.k as f32).sqrt() * scales[0] * scales[1];
        Inputs {
            x: random(&format!("{name}/x"), case.m * case.k, 1.0, dtype),
            w: random(&format!("{name}/w"), case.n * case.k, 1.0, dtype),
            scales,
            residual: (case.residual != ResidualMode::None)
                .then(|| random(&format!("{name}/r"), case.m * case.n, product_std, DType::BF16)),
        }
    }

    fn reference(&self, case: &Case) -> Vec<f32> {
        let product = matmul_nt(&self.x, &self.w, case.k);
        let scale = self.scales[0] as f64 * self.scales[1] as f64;
        product
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let r = self.residual.as_ref().map_or(0.0, |r| r[i] as f64);
                (p as f64 * scale + r) as f32
            })
            .collect()
    }

    /// Host bytes of `x` with rows `ldx` apart and NaN in the gaps (read, they would poison the
    /// result), and of `w`.
    fn operand_bytes(&self, case: &Case) -> (Vec<u8>, Vec<u8>) {
        let encode = |v: f32| {
            if case.fp8() {
                vec![e4m3_bits(v)]
            } else {
                bf16::from_f32(v).to_le_bytes().to_vec()
            }
        };
        let nan = encode(f32::NAN);
        let mut x = Vec::new();
        for row in self.x.chunks(case.k) {
            x.extend(row.iter().flat_map(|&v| encode(v)));
            if x.len() < case.spec().x_len() * nan.len() {
                (case.k..case.ldx).for_each(|_| x.extend(&nan));
            }
        }
        let w = self.w.iter().flat_map(|&v| encode(v)).collect();
        (x, w)
    }
}

/// Floats from the x scale to the w scale in the scales buffer: 256 bytes, as if each had its
/// own allocation (cuBLASLt's FP8 path wants 16-byte aligned scale addresses).
const W_SCALE: usize = 64;

/// The scales buffer's host image: x's at 0, w's at [`W_SCALE`].
fn scale_image(scales: [f32; 2]) -> Vec<f32> {
    let mut image = vec![0.0; 2 * W_SCALE];
    image[0] = scales[0];
    image[W_SCALE] = scales[1];
    image
}

/// One call's device buffers.
struct Buffers {
    x: CudaSlice<u8>,
    w: CudaSlice<u8>,
    scales: CudaSlice<f32>,
    residual: CudaSlice<bf16>,
    out: CudaSlice<bf16>,
}

impl Buffers {
    fn upload(stream: &Arc<CudaStream>, case: &Case, inputs: &Inputs) -> Result<Self, Failed> {
        let (x, w) = inputs.operand_bytes(case);
        let mn = case.m * case.n;
        let mut buffers = Buffers {
            x: stream.clone_htod(&x).map_err(fail)?,
            w: stream.clone_htod(&w).map_err(fail)?,
            scales: stream.clone_htod(&scale_image(inputs.scales)).map_err(fail)?,
            residual: stream.alloc_zeros(mn).map_err(fail)?,
            out: stream.alloc_zeros(mn).map_err(fail)?,
        };
        buffers.refill(stream, case, inputs)?;
        Ok(buffers)
    }

    /// Overwrites every input in place (same addresses) and poisons the output with NaN,
    /// except that for an in-place residual the output holds the residual.
    fn refill(&mut self, stream: &Arc<CudaStream>, case: &Case, inputs: &Inputs) -> Result<(), Failed> {
        let (x, w) = inputs.operand_bytes(case);
        stream.memcpy_htod(&x, &mut self.x).map_err(fail)?;
        stream.memcpy_htod(&w, &mut self.w).map_err(fail)?;
        stream
            .memcpy_htod(&scale_image(inputs.scales), &mut self.scales)
            .map_err(fail)?;
        let nan = vec![bf16::NAN; self.out.len()];
        let residual = inputs.residual.as_ref().map(|r| to_bf16(r));
        if let Some(r) = &residual {
            stream.memcpy_htod(r, &mut self.residual).map_err(fail)?;
        }
        let out = match (case.residual, &residual) {
            (ResidualMode::InPlace, Some(r)) => r,
            _ => &nan,
        };
        stream.memcpy_htod(out, &mut self.out).map_err(fail)
    }

    /// Through the safe, length-checked entry point.
    fn run(&mut self, plan: &GemmPlan, stream: &Arc<CudaStream>, case: &Case) -> Result<(), Failed> {
        let residual = match case.residual {
            ResidualMode::None => Residual::None,
            ResidualMode::Separate => Residual::Separate(&self.residual),
            ResidualMode::InPlace => Residual::InPlace,
        };
        let result = if case.fp8() {
            let (xs, ws) = (self.scales.slice(0..1), self.scales.slice(W_SCALE..W_SCALE + 1));
            plan.run::<u8>(
                stream,
                &self.x,
                &self.w,
                Some([&xs, &ws]),
                residual,
                &mut self.out,
            )
        } else {
            // SAFETY: for bf16 cases the bytes are bf16 values (`operand_bytes`).
            let views = unsafe {
                (
                    self.x.transmute(self.x.len() / 2),
                    self.w.transmute(self.w.len() / 2),
                )
            };
            let (Some(x), Some(w)) = views else {
                return Err(fail("bf16 operands of an odd byte count"));
            };
            plan.run::<bf16>(stream, &x, &w, None, residual, &mut self.out)
        };
        result.map_err(fail)
    }

    /// Raw addresses, for launching without borrows (graph capture).
    fn pointers(&mut self, stream: &CudaStream, case: &Case) -> GemmPointers {
        let scales = self.scales.device_ptr(stream).0;
        let out = self.out.device_ptr_mut(stream).0;
        GemmPointers {
            x: self.x.device_ptr(stream).0,
            w: self.w.device_ptr(stream).0,
            scales: case.fp8().then_some(ScalePointers {
                x: scales,
                w: scales + 4 * W_SCALE as u64,
            }),
            residual: match case.residual {
                ResidualMode::None => None,
                ResidualMode::Separate => Some(self.residual.device_ptr(stream).0),
                ResidualMode::InPlace => Some(out),
            },
            out,
        }
    }

    fn output(&self, stream: &Arc<CudaStream>) -> Result<Vec<f32>, Failed> {
        stream.synchronize().map_err(fail)?;
        Ok(to_f32(&stream.clone_dtoh(&self.out).map_err(fail)?))
    }
}

/// Fails unless `got` is within [`TOLERANCE`] of the reference; returns the error.
fn compare(what: &str, got: &[f32], want: &[f32]) -> Result<f64, Failed> {
    within(what, got, want, TOLERANCE)
}

fn correct(case: Case) -> Result<(), Failed> {
    let gemms = gemms()?;
    let stream = device()?.stream();
    let plan = gemms.get(&case.spec()).map_err(fail)?;
    let inputs = Inputs::random(&case, "a");
    let mut buffers = Buffers::upload(stream, &case, &inputs)?;
    buffers.run(&plan, stream, &case)?;
    let err = compare(&case.name(), &buffers.output(stream)?, &inputs.reference(&case))?;
    let tuning = plan.tuning();
    let top1 = tuning.candidates.first().and_then(|c| c.median_ms.clone().ok());
    eprintln!(
        "check gemm {}: rel_l2 {err:.2e}; {}; workspace {} B; tuned {} candidates in {:.1} ms (top-1 {:.4} ms, chosen {:.4} ms)",
        case.name(),
        plan.config(),
        plan.workspace_size(),
        tuning.candidates.len(),
        tuning.elapsed.as_secs_f64() * 1e3,
        top1.unwrap_or(f64::NAN),
        tuning.chosen.median_ms.clone().unwrap_or(f64::NAN),
    );
    Ok(())
}

fn cached_in_memory() -> Result<(), Failed> {
    let gemms = gemms()?;
    let spec = GemmSpec::fp8(17, 48, 80);
    let first = gemms.get(&spec).map_err(fail)?;
    let again = gemms.get(&spec).map_err(fail)?;
    if !Arc::ptr_eq(&first, &again) {
        return Err("a second lookup built a new plan".into());
    }
    eprintln!("check gemm library: cuBLASLt {}", gemms.library().version());
    Ok(())
}

fn graph_capture() -> Result<(), Failed> {
    let case = Case {
        m: 256,
        n: 512,
        k: 1024,
        ldx: 1024,
        mode: Mode::Fp8Fast,
        residual: ResidualMode::Separate,
    };
    let stream = device()?.stream();
    let plan = gemms()?.get(&case.spec()).map_err(fail)?;
    let mut buffers = Buffers::upload(stream, &case, &Inputs::random(&case, "warm-up"))?;
    let pointers = buffers.pointers(stream, &case);
    // SAFETY: `buffers` spans every operand and outlives the launches and the graph.
    unsafe { plan.launch(stream, &pointers) }.map_err(fail)?;
    stream.synchronize().map_err(fail)?;

    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL)
        .map_err(fail)?;
    // SAFETY: as above.
    let captured = unsafe { plan.launch(stream, &pointers) };
    let graph = stream.end_capture(CUgraphInstantiate_flags(0));
    captured.map_err(|e| fail(format!("launch during capture: {e}")))?;
    let graph = graph
        .map_err(fail)?
        .ok_or_else(|| fail("the capture recorded no graph"))?;

    // New inputs and new scale values at the same addresses: the replay must use them.
    for tag in ["replay-1", "replay-2"] {
        let inputs = Inputs::random(&case, tag);
        buffers.refill(stream, &case, &inputs)?;
        graph.launch().map_err(fail)?;
        let err = compare(tag, &buffers.output(stream)?, &inputs.reference(&case))?;
        eprintln!(
            "check gemm graph {tag} {}: rel_l2 {err:.2e} (scales {:?})",
            case.name(),
            inputs.scales
        );
    }
    Ok(())
}

/// Expects `result` to fail with a message containing `needle`.
fn expect_error<T>(result: lancet_runtime::Result<T>, needle: &str) -> Result<(), Failed> {
    match result {
        Err(e) if e.to_string().contains(needle) => {
            eprintln!("check refused as expected: {e}");
            Ok(())
        }
        Err(e) => Err(fail(format!("expected an error mentioning {needle:?}, got: {e}"))),
        Ok(_) => Err(fail(format!(
            "expected an error mentioning {needle:?}, got success"
        ))),
    }
}

fn bad_specs() -> Result<(), Failed> {
    let gemms = gemms()?;
    expect_error(
        gemms.get(&GemmSpec::fp8(17, 48, 24)),
        "K = 24 is not a multiple of 16 (FP8 kernels need 16-byte rows)",
    )?;
    expect_error(
        gemms.get(&GemmSpec::fp8(17, 40, 32)),
        "N = 40 is not a multiple of 16",
    )?;
    expect_error(
        gemms.get(&GemmSpec::fp8(17, 48, 32).with_ldx(16)),
        "ldx 16 is less than K 32",
    )?;
    expect_error(
        gemms.get(&GemmSpec::bf16(17, 48, 32).with_fast_accum(true)),
        "fast accumulation applies to FP8 only",
    )
}

fn bad_buffers() -> Result<(), Failed> {
    let case = Case {
        m: 17,
        n: 48,
        k: 80,
        ldx: 80,
        mode: Mode::Fp8Fast,
        residual: ResidualMode::None,
    };
    let stream = device()?.stream();
    let plan = gemms()?.get(&case.spec()).map_err(fail)?;
    let inputs = Inputs::random(&case, "bad");
    let buffers = Buffers::upload(stream, &case, &inputs)?;
    let (xs, ws) = (
        buffers.scales.slice(0..1),
        buffers.scales.slice(W_SCALE..W_SCALE + 1),
    );
    let scales = Some([&xs as _, &ws as _]);
    let mut short = stream.alloc_zeros::<bf16>(case.m * case.n - 1).map_err(fail)?;
    let mut out = stream.alloc_zeros::<bf16>(case.m * case.n).map_err(fail)?;
    expect_error(
        plan.run::<u8>(stream, &buffers.x, &buffers.w, scales, Residual::None, &mut short),
        &format!(
            "buffer `out` holds {} elements, the GEMM needs {}",
            case.m * case.n - 1,
            case.m * case.n
        ),
    )?;
    expect_error(
        plan.run::<u8>(stream, &buffers.x, &buffers.w, None, Residual::None, &mut out),
        "buffer `scales` missing",
    )?;
    expect_error(
        plan.run::<u8>(
            stream,
            &buffers.x,
            &buffers.w,
            scales,
            Residual::InPlace,
            &mut out,
        ),
        "buffer `residual` given, the spec has none",
    )?;
    let bf16_x = stream.alloc_zeros::<bf16>(case.m * case.k).map_err(fail)?;
    let bf16_w = stream.alloc_zeros::<bf16>(case.n * case.k).map_err(fail)?;
    expect_error(
        plan.run::<bf16>(stream, &bf16_x, &bf16_w, None, Residual::None, &mut out),
        "buffer `x` holds Bf16 elements, the plan is for Fp8E4m3",
    )?;
    // 16 bytes in: aligned enough for FP8 rows, not for the 256 bytes the plan assumes.
    let padded = stream
        .clone_htod(&vec![0u8; buffers.x.len() + 16])
        .map_err(fail)?;
    expect_error(
        plan.run::<u8>(
            stream,
            &padded.slice(16..),
            &buffers.w,
            scales,
            Residual::None,
            &mut out,
        ),
        "is not 256-byte aligned",
    )
}

/// Every scale address lancet accepts works (16-byte steps up to 256); a pair packed 4 bytes
/// apart is refused by lancet before cuBLASLt sees it.
fn scale_alignment() -> Result<(), Failed> {
    let case = Case {
        m: 64,
        n: 64,
        k: 64,
        ldx: 64,
        mode: Mode::Fp8Fast,
        residual: ResidualMode::None,
    };
    let stream = device()?.stream();
    let plan = gemms()?.get(&case.spec()).map_err(fail)?;
    let inputs = Inputs::random(&case, "scale-alignment");
    let want = inputs.reference(&case);
    let mut buffers = Buffers::upload(stream, &case, &inputs)?;
    let pointers = buffers.pointers(stream, &case);
    let x_scale = pointers.scales.map_or(0, |s| s.x);
    let w_scales = stream.clone_htod(&[inputs.scales[1]; 128]).map_err(fail)?;
    let w_base = w_scales.device_ptr(stream).0;
    let at = |offset: u64| GemmPointers {
        scales: Some(ScalePointers {
            x: x_scale,
            w: w_base + offset,
        }),
        ..pointers
    };
    for offset in [16, 32, 48, 64, 128, 256] {
        buffers.refill(stream, &case, &inputs)?;
        // SAFETY: every address is inside a live buffer of the right size.
        unsafe { plan.launch(stream, &at(offset)) }
            .map_err(|e| fail(format!("w scale at +{offset} bytes: {e}")))?;
        compare(&format!("w scale at +{offset}"), &buffers.output(stream)?, &want)?;
    }
    eprintln!("check gemm scale addresses: every 16-byte step from 16 to 256 bytes works");
    // SAFETY: refused before any device work.
    expect_error(unsafe { plan.launch(stream, &at(4)) }, "buffer `w_scale` address")
}

/// Tuning persists across `Gemms` (processes, in real use); corrupt or rejected entries are
/// re-tuned with a warning, and the result stays correct.
fn disk_cache() -> Result<(), Failed> {
    let case = Case {
        m: 256,
        n: 512,
        k: 1024,
        ldx: 1024,
        mode: Mode::Fp8Fast,
        residual: ResidualMode::Separate,
    };
    let spec = case.spec();
    let device = device()?;
    let stream = device.stream();
    let dir = std::env::temp_dir().join(format!("lancet-gemm-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = AlgoStore::new(&dir);
    let options = TuneOptions::default();
    let fresh = || Gemms::with_options(device, options, Some(store.clone())).map_err(fail);
    let key = AlgoKey::new(
        fresh()?.library().version(),
        device.info(),
        &spec,
        options.workspace_bytes,
        options.candidates,
    );
    let check_plan = |plan: &GemmPlan, tag: &str| -> Result<(), Failed> {
        let inputs = Inputs::random(&case, tag);
        let mut buffers = Buffers::upload(stream, &case, &inputs)?;
        buffers.run(plan, stream, &case)?;
        compare(tag, &buffers.output(stream)?, &inputs.reference(&case)).map(drop)
    };
    let expect = |plan: &GemmPlan, source: TuneSource, warning: Option<&str>| -> Result<(), Failed> {
        let tuning = plan.tuning();
        let warned = tuning.warnings.join("\n");
        let warning_ok = match warning {
            None => tuning.warnings.is_empty(),
            Some(needle) => warned.contains(needle),
        };
        if tuning.source != source || !warning_ok {
            return Err(fail(format!(
                "expected {source:?} with warning {warning:?}, got {:?} with warnings: {warned}",
                tuning.source
            )));
        }
        Ok(())
    };

    let tuned = fresh()?.get(&spec).map_err(fail)?;
    expect(&tuned, TuneSource::Tuned, None)?;
    let restored = fresh()?.get(&spec).map_err(fail)?;
    expect(&restored, TuneSource::Disk, None)?;
    if restored.algo() != tuned.algo() {
        return Err("the restored algorithm differs from the tuned one".into());
    }
    check_plan(&restored, "restored")?;
    eprintln!(
        "check gemm disk cache: tuned in {:.1} ms, restored in {:.2} ms ({})",
        tuned.tuning().elapsed.as_secs_f64() * 1e3,
        restored.tuning().elapsed.as_secs_f64() * 1e3,
        restored.config()
    );

    std::fs::write(store.path(&key), b"{ not json").map_err(fail)?;
    let retuned = fresh()?.get(&spec).map_err(fail)?;
    expect(&retuned, TuneSource::Tuned, Some("unreadable"))?;

    // A valid entry whose algorithm cuBLASLt must refuse: the chosen kernel with an 8x8 tile.
    let mut algo = lt::cublasLtMatmulAlgo_t {
        data: tuned.algo().words(),
    };
    let tile = lt::cublasLtMatmulTile_t::CUBLASLT_MATMUL_TILE_8x8 as u32;
    // SAFETY: a valid algorithm struct and a 4-byte value for a `uint32_t` attribute.
    let status = unsafe {
        lt::cublasLtMatmulAlgoConfigSetAttribute(
            &mut algo,
            lt::cublasLtMatmulAlgoConfigAttributes_t::CUBLASLT_ALGO_CONFIG_TILE_ID,
            (&tile as *const u32).cast(),
            4,
        )
    };
    if status != lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        return Err(fail(format!(
            "setting the tile of the stored algorithm: {status:?}"
        )));
    }
    let damaged = StoredAlgo {
        words: algo.data,
        workspace_size: tuned.workspace_size(),
        median_ms: 0.01,
    };
    store.store(&key, &damaged).map_err(fail)?;
    let retuned = fresh()?.get(&spec).map_err(fail)?;
    expect(&retuned, TuneSource::Tuned, Some("rejected its algorithm"))?;
    check_plan(&retuned, "re-tuned")?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
