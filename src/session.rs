//! A compiled model loaded on a GPU, with weights, calibrated FP8 scales and inputs: what
//! `lancet run` and `lancet bench` drive, and what the GPU tests check against the reference.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context, Result};
use lancet_compiler::checkpoint::Checkpoint;
use lancet_compiler::ir::Graph;
use lancet_compiler::reference::Bindings;
use lancet_compiler::weights::{constant_params, random_inputs, random_params};
use lancet_runtime::cublaslt::Gemms;
use lancet_runtime::device::{compute_capability, Device};
use lancet_runtime::exec::{DeviceParams, Executable, InitKernels, InitSource};
use lancet_runtime::jit::{self, Compilation, JitError};

use crate::pipeline::{build_kernels, compile, CompileOptions, Compiled};

/// The NVRTC target for compute capability `(major, minor)`: `sm_90a` (architecture-specific
/// features) on Hopper, plain `sm_XY` elsewhere.
pub fn arch_of((major, minor): (i32, i32)) -> String {
    if (major, minor) == (9, 0) {
        "sm_90a".into()
    } else {
        format!("sm_{major}{minor}")
    }
}

/// Where a model's parameters and inputs come from: a checkpoint and an input file, or random
/// values from a seed for whichever is missing.
#[derive(Clone, Default)]
pub struct Data {
    pub checkpoint: Option<Arc<Checkpoint>>,
    pub inputs: Option<Bindings>,
}

impl Data {
    /// The parameters of `graph`: the checkpoint's, or random from `seed`.
    pub fn params(&self, graph: &Graph, seed: u64) -> Result<Bindings> {
        Ok(match &self.checkpoint {
            Some(checkpoint) => checkpoint.params(graph)?,
            None => random_params(graph, seed)?,
        })
    }

    /// The inputs of `graph`: the given ones, or random from `seed`.
    pub fn inputs(&self, graph: &Graph, seed: u64) -> Bindings {
        match &self.inputs {
            Some(inputs) => inputs.clone(),
            None => random_inputs(graph, seed),
        }
    }
}

/// Milliseconds of getting from a compiled plan to a ready forward pass.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ReadyTimes {
    /// Waiting for the program that makes weights on the GPU to compile (the weights themselves
    /// are made, or copied from a checkpoint and converted, in the upload phase); or, when it
    /// could not compile, making every weight on the host.
    pub weights_ms: f64,
    /// Whether the weights were made on the device (the fast path) rather than on the host.
    pub weights_on_device: bool,
    pub load: lancet_runtime::exec::LoadTimes,
    /// How long the main thread waited for NVRTC after its own work (0 when NVRTC finished
    /// first): NVRTC's share of the wall time.
    pub nvrtc_wait_ms: f64,
    /// Attention plans built or restored, on their own thread alongside the weights.
    pub attention_build_ms: f64,
    /// How long the main thread waited for them: their share of the wall time.
    pub attention_wait_ms: f64,
    /// cuBLASLt loaded, its handle and workspace made and every GEMM's algorithm chosen, on
    /// their own thread alongside the weights.
    pub gemm_setup_ms: f64,
    /// How long the main thread waited for that.
    pub gemm_setup_wait_ms: f64,
    /// How long the compile threads waited for the driver to name the GPU's architecture
    /// (`cuInit`, which opening the device waits for as well).
    pub arch_wait_ms: f64,
    /// From the start of the rewrite to the model's cubins compiled (or read from the cache).
    /// Less `arch_wait_ms` (the driver's time), plus
    /// [`LoadTimes::modules_ms`](lancet_runtime::exec::LoadTimes) to load the cubins, this is
    /// lancet's own work.
    pub kernels_compiled_ms: f64,
    /// Inputs uploaded.
    pub inputs_ms: f64,
    pub calibrate_ms: f64,
    pub capture_ms: f64,
}

pub struct Session<'d> {
    pub compiled: Compiled,
    pub exe: Executable<'d>,
    pub inputs: Bindings,
    pub ready: ReadyTimes,
}

impl Session<'_> {
    /// The parameters as the device holds them (calibrated activation scales included), shaped
    /// as the graph's: what the reference interpreter must be given to check this session.
    /// Downloads every weight, so meant for checks, not for benchmarks.
    pub fn params(&self) -> Result<Bindings> {
        let graph = &self.compiled.optimized;
        let mut flat = self.exe.params()?;
        graph
            .params()
            .into_iter()
            .map(|id| {
                let node = graph.node(id);
                let array = flat
                    .remove(&node.name)
                    .with_context(|| format!("param '{}' is not on the device", node.name))?;
                let shaped = lancet_compiler::reference::Array::new(node.ty.shape.clone(), array.data)
                    .with_context(|| format!("param '{}' has the wrong size on the device", node.name))?;
                Ok((node.name.clone(), shaped))
            })
            .collect()
    }
}

/// How to get a session ready.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub compile: CompileOptions,
    /// Seed of the random weights and inputs.
    pub seed: u64,
    /// Delayed-scaling passes that set each FP8 activation scale from the amax its quantizing
    /// kernel recorded (0: keep the graph's default scales).
    pub calibration_passes: usize,
    /// Capture the forward pass as a CUDA graph and replay it.
    pub cuda_graph: bool,
    /// FP8 GEMMs with Hopper's fast accumulation.
    pub fast_accum: bool,
}

/// Compiles `graph` for `device`, loads it with `data`'s weights (random ones from the seed when
/// it has none), calibrates FP8 scales and captures the CUDA graph: [`start`], then
/// [`Startup::finish`]. `progress` hears the name of each phase as it starts.
pub fn open<'d>(
    device: &'d Device,
    graph: &Graph,
    data: &Data,
    options: &SessionOptions,
    progress: &dyn Fn(&str),
) -> Result<Session<'d>> {
    start(graph, data, options, device.info().ordinal)?.finish(device, progress)
}

/// A session under way before its device is open: the plan, and the threads compiling its kernels
/// and its weight program.
pub struct Startup {
    compiled: Compiled,
    data: Data,
    options: SessionOptions,
    /// When the rewrite began: lancet's own work is measured from here.
    began: Instant,
    kernels: Compiling,
    init: Compiling,
}

/// A compilation on its own thread: the architecture it compiled for, the cubins (or why NVRTC
/// is unavailable), how long it waited for the driver to say the architecture and then compiled,
/// and when it was done.
type Compiling = JoinHandle<Result<Built>>;

/// What a compile thread hands back.
struct Built {
    arch: String,
    cubins: std::result::Result<Compilation, JitError>,
    /// The model compiled again for `arch`, when the plan [`start`] made before knowing it has
    /// kernels that architecture does not run (gated GEMMs on a GPU other than Hopper): the
    /// cubins are this plan's.
    replanned: Option<Compiled>,
    arch_wait_ms: f64,
    compile_ms: f64,
    done: Instant,
}

/// Starts a session on device `ordinal` without waiting for the device: rewrites and lowers
/// `graph` here, then compiles its kernels and the weight program with NVRTC on threads of their
/// own. None of that needs a CUDA context, which takes a quarter of a second to make: the caller
/// opens the device meanwhile and hands it to [`Startup::finish`].
///
/// (The libraries are not loaded early: `dlopen` holds the dynamic loader's lock while it runs,
/// and making the context needs that lock. Loading cuBLASLt alongside it delayed the context by
/// as long as the load took, on the H100.)
pub fn start(graph: &Graph, data: &Data, options: &SessionOptions, ordinal: usize) -> Result<Startup> {
    if let Some(checkpoint) = &data.checkpoint {
        // Every weight found, float and of the right shape, before any work starts.
        checkpoint.check(graph)?;
    }
    let began = Instant::now();
    let compiled = compile(
        graph,
        &CompileOptions {
            nvrtc: false,
            ..options.compile.clone()
        },
    )?;
    let kernels = compiled.plan.kernels.clone();
    let graph = graph.clone();
    let compile_options = options.compile.clone();
    let kernels = on_thread(ordinal, compile_options.clone(), move |options| {
        if !kernels.iter().all(|k| k.runs_on(&options.jit.arch)) {
            let replanned = compile(
                &graph,
                &CompileOptions {
                    nvrtc: false,
                    ..options.clone()
                },
            )?;
            let cubins = build_kernels(&replanned.plan.kernels, options)?;
            return Ok((cubins, Some(replanned)));
        }
        Ok((build_kernels(&kernels, options)?, None))
    });
    // Weights are made on the GPU (drawn, or a checkpoint's converted there) by a fixed program.
    let init = on_thread(ordinal, compile_options, |options| {
        Ok((jit::compile(&[InitSource], &options.jit), None))
    });
    Ok(Startup {
        compiled,
        data: data.clone(),
        options: options.clone(),
        began,
        kernels,
        init,
    })
}

/// Runs `compile` on a thread of its own once the driver has said which architecture device
/// `ordinal` is (`cuInit`, a tenth of a second, which the device's opening waits for too).
fn on_thread(
    ordinal: usize,
    mut options: CompileOptions,
    compile: impl FnOnce(&CompileOptions) -> Result<(std::result::Result<Compilation, JitError>, Option<Compiled>)>
        + Send
        + 'static,
) -> Compiling {
    std::thread::spawn(move || {
        let t = Instant::now();
        options.jit.arch = arch_of(compute_capability(ordinal)?);
        let arch_wait_ms = ms(t);
        let t = Instant::now();
        let (cubins, replanned) = compile(&options)?;
        Ok(Built {
            arch: options.jit.arch,
            cubins,
            replanned,
            arch_wait_ms,
            compile_ms: ms(t),
            done: Instant::now(),
        })
    })
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// The result of a compile thread, checked to be for `device`'s architecture.
fn joined(thread: Compiling, device: &Device) -> Result<Built> {
    let compiled = thread.join().expect("compile threads do not panic")?;
    let arch = arch_of(device.info().compute_capability);
    anyhow::ensure!(
        compiled.arch == arch,
        "kernels were compiled for {} but device {} is {arch}",
        compiled.arch,
        device.info()
    );
    Ok(compiled)
}

impl Startup {
    /// Loads the session on `device` (the one [`start`] was given the ordinal of): makes the
    /// weights, builds the attention plans and chooses GEMM algorithms (on threads of their own),
    /// loads the cubins, calibrates FP8 scales and captures the CUDA graph.
    pub fn finish<'d>(self, device: &'d Device, progress: &dyn Fn(&str)) -> Result<Session<'d>> {
        let Startup {
            mut compiled,
            data,
            options,
            began,
            mut kernels,
            init,
        } = self;
        // A plan with kernels this GPU does not run: the compile thread plans the model again
        // for it, and everything below needs that plan first (no overlap, on such GPUs only).
        let arch = arch_of(device.info().compute_capability);
        if !compiled.plan.kernels.iter().all(|k| k.runs_on(&arch)) {
            let mut built = joined(kernels, device)?;
            compiled = built
                .replanned
                .take()
                .context("the compile thread did not plan the model again for this GPU")?;
            kernels = std::thread::spawn(move || Ok(built));
        }
        let graph = &compiled.optimized;
        let mut ready = ReadyTimes::default();
        let (mut exe, inputs, cubins, nvrtc_ms) = std::thread::scope(|scope| -> Result<_> {
            let plan = &compiled.plan;
            // cuDNN compiles a kernel per attention plan (about a second on a cold cache): on a
            // thread of its own, alongside the weights.
            let attention = scope.spawn(|| Executable::attention_plans(device, plan));
            // Choosing GEMM algorithms times candidates on a stream of cuBLASLt's own, on scratch
            // data: no need for the weights, so on a thread of its own too.
            let gemms = scope.spawn(|| {
                let t = Instant::now();
                let gemms = Gemms::new(device)?;
                Executable::tune_gemms(&gemms, plan, options.fast_accum)?;
                anyhow::Ok((gemms, ms(t)))
            });
            let t = Instant::now();
            progress("compiling the weight initialisation");
            let init = joined(init, device)?;
            let (params, kernels_loaded) = match init.cubins {
                // The host gives the constants (activation scales, and norm gains a checkpoint
                // overrides); the device makes the rest.
                Ok(compilation) => (
                    constant_params(graph),
                    Some(InitKernels::load(device, &compilation)?),
                ),
                // Without NVRTC (yet: the other thread may be fetching it), all on the host:
                // slower, and a checkpoint then passes through host memory in f32.
                Err(e) => {
                    eprintln!("lancet: warning: making the weights on the host: the weight program did not compile: {e}");
                    progress("making the weights on the host");
                    (data.params(graph, options.seed)?, None)
                }
            };
            ready.weights_on_device = kernels_loaded.is_some();
            let on_device = kernels_loaded.as_ref().map(|k| {
                let source = match &data.checkpoint {
                    Some(checkpoint) => DeviceParams::Checkpoint(checkpoint),
                    None => DeviceParams::Random { seed: options.seed },
                };
                (k, source)
            });
            let inputs = data.inputs(graph, options.seed + 1);
            ready.weights_ms = ms(t);
            progress("building attention plans");
            let t = Instant::now();
            let (attention, attention_ms) = attention.join().expect("the attention thread does not panic")?;
            ready.attention_wait_ms = ms(t);
            ready.attention_build_ms = attention_ms;
            progress("loading cuBLASLt, choosing GEMM algorithms");
            let t = Instant::now();
            let (gemms, gemm_setup_ms) = gemms.join().expect("the cuBLASLt thread does not panic")?;
            ready.gemm_setup_wait_ms = ms(t);
            ready.gemm_setup_ms = gemm_setup_ms;
            progress("uploading weights");
            let prepared = Executable::prepare(
                device,
                plan.clone(),
                &params,
                on_device,
                options.fast_accum,
                attention,
                &gemms,
            )?;
            progress("waiting for NVRTC");
            let t = Instant::now();
            let kernels = joined(kernels, device)?;
            ready.nvrtc_wait_ms = ms(t);
            ready.arch_wait_ms = kernels.arch_wait_ms;
            ready.kernels_compiled_ms = (kernels.done - began).as_secs_f64() * 1e3;
            let exe = {
                let compilation = kernels
                    .cubins
                    .as_ref()
                    .map_err(|e| anyhow::anyhow!("{e}"))
                    .context("running on the GPU needs NVRTC")?;
                prepared.finish(compilation)?
            };
            let nvrtc_ms = kernels.compile_ms;
            Ok((exe, inputs, kernels.cubins, nvrtc_ms))
        })?;
        compiled.cubins = cubins;
        compiled.phases.nvrtc_ms = nvrtc_ms;
        ready.load = exe.load_times.clone();
        let t = Instant::now();
        exe.set_inputs(&inputs)?;
        ready.inputs_ms = ms(t);

        progress("calibrating FP8 scales");
        let t = Instant::now();
        let quantizing = !compiled.plan.amax_slots.is_empty();
        for _ in 0..if quantizing { options.calibration_passes } else { 0 } {
            exe.reset_amax()?;
            exe.run()?;
            exe.rescale_from_amax()?;
        }
        // One uncaptured pass also lets each library finish its lazy set-up before capture.
        exe.run()?;
        exe.synchronize()?;
        ready.calibrate_ms = ms(t);

        if options.cuda_graph {
            progress("capturing the CUDA graph");
            ready.capture_ms = exe.capture()?;
        }
        Ok(Session {
            compiled,
            exe,
            inputs,
            ready,
        })
    }
}
