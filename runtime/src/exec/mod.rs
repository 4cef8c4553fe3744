//! Execution: a [`Plan`] made runnable on a device — buffers allocated, weights uploaded,
//! kernels loaded, library plans built — then run step by step on one stream, or captured once
//! as a CUDA graph and replayed.
//!
//! Every step is resolved to raw device addresses at load time, so running the forward pass is
//! a loop of launches with no allocation and no host work beyond the calls themselves; that is
//! also what makes it capturable.

mod gated_gemm;
pub(crate) mod host;
mod init;
mod memory;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{CudaFunction, CudaGraph, CudaModule, LaunchConfig, PushKernelArg};
use lancet_compiler::ir::{DType, Op, Operand};
use lancet_compiler::lower::{AttentionStep, BufferKind, GemmStep, Plan, Step, View};
use lancet_compiler::reference::{Array, Bindings};
use thiserror::Error;

use crate::attention::{
    AttentionLayout, AttentionPlan, AttentionPlans, AttentionPointers, AttentionPrecision, AttentionShape,
    AttentionSpec, Fp8Pointers,
};
use crate::cublaslt::{GemmPlan, GemmPointers, GemmSpec, Gemms, ScalePointers};
use crate::device::Device;
use crate::jit::Compilation;
use gated_gemm::{GatedGemmKernel, GatedGemmLaunch, GatedGemmPointers};
pub use host::{decode, encode};
pub use init::{DeviceParams, InitKernels, InitSource};
pub use memory::{AttentionScalar, Buffers, OutOfMemory};

#[derive(Debug, Error)]
pub enum ExecError {
    #[error("no value for {kind} '{name}' ({dtype}{shape:?})")]
    Unbound {
        kind: &'static str,
        name: String,
        dtype: DType,
        shape: Vec<usize>,
    },
    #[error("{kind} '{name}': {problem}")]
    Binding {
        kind: &'static str,
        name: String,
        problem: String,
    },
    #[error("kernel {kernel}: {problem}")]
    Kernel { kernel: String, problem: String },
    #[error("step {step} ({what}): {problem}")]
    Step {
        step: usize,
        what: String,
        problem: String,
    },
    #[error(transparent)]
    OutOfMemory(#[from] memory::OutOfMemory),
}

/// Time spent making a plan runnable, by phase (for the compile report).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LoadTimes {
    pub allocate_ms: f64,
    pub upload_ms: f64,
    pub modules_ms: f64,
    pub gemm_tuning_ms: f64,
    pub attention_plans_ms: f64,
}

/// One step with its device addresses resolved.
enum Launch {
    Kernel {
        function: CudaFunction,
        params: Vec<u64>,
        config: LaunchConfig,
    },
    Gemm {
        plan: Arc<GemmPlan>,
        pointers: GemmPointers,
    },
    Attention {
        plan: Arc<AttentionPlan>,
        pointers: AttentionPointers,
        scale: f32,
    },
    /// Boxed: two 128-byte TMA descriptors would make every launch that size.
    GatedGemm(Box<GatedGemmLaunch>),
}

/// A plan loaded on a device.
pub struct Executable<'d> {
    device: &'d Device,
    plan: Plan,
    buffers: Buffers,
    launches: Vec<Launch>,
    attention: AttentionPlans,
    /// Kept alive for their functions.
    _modules: Vec<Arc<CudaModule>>,
    graph: Option<CudaGraph>,
    pub load_times: LoadTimes,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// A plan loaded but for its kernels: see [`Executable::prepare`].
pub struct Prepared<'d> {
    device: &'d Device,
    plan: Plan,
    buffers: Buffers,
    launches: Vec<Pending>,
    attention: AttentionPlans,
    load_times: LoadTimes,
}

/// A step resolved except, for kernels, the function to launch.
enum Pending {
    Kernel {
        kernel: usize,
        params: Vec<u64>,
        config: LaunchConfig,
    },
    /// Step `step` of the plan, a gated GEMM running kernel `kernel`.
    GatedGemm {
        step: usize,
        kernel: usize,
        pointers: GatedGemmPointers,
    },
    Ready(Launch),
}

impl<'d> Prepared<'d> {
    /// Loads the cubins and completes the executable.
    pub fn finish(self, cubins: &Compilation) -> crate::Result<Executable<'d>> {
        let Prepared {
            device,
            plan,
            buffers,
            launches,
            attention,
            load_times: mut times,
        } = self;
        let t = Instant::now();
        let mut modules = Vec::with_capacity(cubins.kernels.len());
        let mut functions = Vec::with_capacity(cubins.kernels.len());
        for compiled in &cubins.kernels {
            let ctx = device.stream().context();
            let module = ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(compiled.cubin.clone()))
                .map_err(|e| ExecError::Kernel {
                    kernel: compiled.name.clone(),
                    problem: format!("cuModuleLoadData failed: {e}"),
                })?;
            let function = module
                .load_function(&compiled.name)
                .map_err(|e| ExecError::Kernel {
                    kernel: compiled.name.clone(),
                    problem: format!("cuModuleGetFunction failed: {e}"),
                })?;
            modules.push(module);
            functions.push(function);
        }
        times.modules_ms = ms(t);
        // Per gated GEMM kernel (not per step): shared memory granted, resident clusters counted.
        let mut gated: HashMap<usize, GatedGemmKernel> = HashMap::new();
        for pending in &launches {
            let &Pending::GatedGemm { kernel, .. } = pending else {
                continue;
            };
            if gated.contains_key(&kernel) {
                continue;
            }
            let spec = plan.kernels[kernel]
                .spec
                .gated_gemm()
                .expect("gated GEMM steps run gated GEMM kernels");
            let prepared =
                GatedGemmKernel::new(functions[kernel].clone(), spec, device).map_err(|problem| {
                    ExecError::Kernel {
                        kernel: plan.kernels[kernel].name.clone(),
                        problem,
                    }
                })?;
            gated.insert(kernel, prepared);
        }
        let launches = launches
            .into_iter()
            .map(|pending| match pending {
                Pending::Kernel {
                    kernel,
                    params,
                    config,
                } => Ok(Launch::Kernel {
                    function: functions[kernel].clone(),
                    params,
                    config,
                }),
                Pending::GatedGemm {
                    step,
                    kernel,
                    pointers,
                } => {
                    let Step::GatedGemm(g) = &plan.steps[step] else {
                        unreachable!("step {step} was lowered as a gated GEMM")
                    };
                    GatedGemmLaunch::new(step, &gated[&kernel], g, &pointers)
                        .map(|launch| Launch::GatedGemm(Box::new(launch)))
                }
                Pending::Ready(launch) => Ok(launch),
            })
            .collect::<Result<_, ExecError>>()?;
        Ok(Executable {
            device,
            plan,
            buffers,
            launches,
            attention,
            _modules: modules,
            graph: None,
            load_times: times,
        })
    }
}

impl<'d> Executable<'d> {
    /// Allocates the plan's buffers, uploads `params`, loads the cubins and builds (or restores)
    /// every GEMM and attention plan. `fast_accum` selects Hopper's fast FP8 accumulation (what
    /// PyTorch's best recipe uses; it sums differently from full f32 accumulation).
    pub fn load(
        device: &'d Device,
        plan: Plan,
        cubins: &Compilation,
        params: &Bindings,
        fast_accum: bool,
    ) -> crate::Result<Self> {
        let (attention, _) = Self::attention_plans(device, &plan)?;
        let gemms = Gemms::new(device)?;
        Self::prepare(device, plan, params, None, fast_accum, attention, &gemms)?.finish(cubins)
    }

    /// Chooses (or restores from disk) the algorithm of every GEMM of `plan`, so that
    /// [`prepare`](Self::prepare) finds them made. Tuning times candidates on the handle's own
    /// stream and needs no weights, so callers run it on a thread while the weights are made and
    /// the attention plans built.
    pub fn tune_gemms(gemms: &Gemms, plan: &Plan, fast_accum: bool) -> crate::Result<()> {
        for (i, step) in plan.steps.iter().enumerate() {
            if let Step::Gemm(g) = step {
                gemm_plan(gemms, i, g, fast_accum)?;
            }
        }
        Ok(())
    }

    /// Builds (or restores from disk) the plan of every attention step of `plan`, returning the
    /// plans and the milliseconds it took. With a cold cache this is the slowest part of getting
    /// ready (cuDNN compiles a kernel per plan, about a second), and it needs neither the weights
    /// nor the GEMMs, so callers run it on a thread of its own while those load.
    pub fn attention_plans(device: &Device, plan: &Plan) -> crate::Result<(AttentionPlans, f64)> {
        let t = Instant::now();
        let plans = AttentionPlans::new(device, crate::cudnn::PlanStore::from_env())?;
        for (i, step) in plan.steps.iter().enumerate() {
            if let Step::Attention(a) = step {
                // A lookup prints its own warnings (a rejected cache entry, a failed write).
                plans.get(&step_spec(i, a)?)?;
            }
        }
        Ok((plans, ms(t)))
    }

    /// [`load`](Self::load) up to the kernels: everything that does not need the cubins, so
    /// NVRTC can compile them meanwhile (on another thread) and [`Prepared::finish`] load them.
    /// `attention` holds the attention plans (see [`attention_plans`](Self::attention_plans)),
    /// `gemms` the cuBLASLt handle (loading cuBLASLt takes ~0.2 s: callers make both on threads
    /// of their own while the weights are made). `on_device`, when given, makes parameters on
    /// the GPU (see [`DeviceParams`]): those override `params`, which supplies the rest.
    pub fn prepare(
        device: &'d Device,
        plan: Plan,
        params: &Bindings,
        on_device: Option<(&InitKernels, DeviceParams)>,
        fast_accum: bool,
        attention: AttentionPlans,
        gemms: &Gemms,
    ) -> crate::Result<Prepared<'d>> {
        let mut times = LoadTimes::default();
        let t = Instant::now();
        let buffers = Buffers::allocate(device, &plan)?;
        times.allocate_ms = ms(t);

        let t = Instant::now();
        let filled = match on_device {
            Some((kernels, source)) => {
                kernels.fill(device, &plan, &buffers, &source, |name| params.contains_key(name))?
            }
            None => Default::default(),
        };
        for (id, buffer) in plan.buffers.iter().enumerate() {
            match buffer.kind {
                BufferKind::Param if filled.contains(&buffer.name) => {}
                BufferKind::Param => {
                    let value = params.get(&buffer.name).ok_or_else(|| ExecError::Unbound {
                        kind: "param",
                        name: buffer.name.clone(),
                        dtype: buffer.dtype,
                        shape: vec![buffer.elems],
                    })?;
                    buffers.upload(device, id, buffer, value, "param")?;
                }
                BufferKind::Constant => {
                    let data = buffer.data.clone().unwrap_or_default();
                    let value = Array::new(vec![data.len()], data).expect("sized");
                    buffers.upload(device, id, buffer, &value, "constant")?;
                }
                _ => {}
            }
        }
        device
            .stream()
            .synchronize()
            .map_err(|e| crate::device::DeviceError::Driver {
                what: "uploading parameters",
                source: e,
            })?;
        times.upload_ms = ms(t);

        let mut launches = Vec::with_capacity(plan.steps.len());
        // FP8 attention steps so far: each has its scalars at this index in `buffers`.
        let mut fp8_attentions = 0;
        for (i, step) in plan.steps.iter().enumerate() {
            let launch = match step {
                Step::Kernel(k) => {
                    let mut params = Vec::new();
                    for ((args, out), amax) in k.args.iter().zip(&k.outs).zip(&k.amax) {
                        params.extend(args.iter().map(|v| buffers.address(v)));
                        params.push(buffers.address(out));
                        params.extend(amax.iter().map(|&slot| buffers.amax_address(slot)));
                    }
                    Pending::Kernel {
                        kernel: k.kernel,
                        params,
                        config: LaunchConfig {
                            grid_dim: (k.grid, 1, 1),
                            block_dim: (k.block, 1, 1),
                            shared_mem_bytes: 0,
                        },
                    }
                }
                Step::Gemm(g) => {
                    let t = Instant::now();
                    let plan_for = gemm_plan(gemms, i, g, fast_accum)?;
                    times.gemm_tuning_ms += ms(t);
                    Pending::Ready(Launch::Gemm {
                        plan: plan_for,
                        pointers: GemmPointers {
                            x: buffers.address(&g.x),
                            w: buffers.address(&g.w),
                            scales: g.scales.as_ref().map(|(x, w)| ScalePointers {
                                x: buffers.address(x),
                                w: buffers.address(w),
                            }),
                            residual: g.residual.as_ref().map(|r| buffers.address(r)),
                            out: buffers.address(&g.out),
                        },
                    })
                }
                Step::GatedGemm(g) => Pending::GatedGemm {
                    step: i,
                    kernel: g.kernel,
                    pointers: GatedGemmPointers {
                        x: buffers.address(&g.x),
                        w: buffers.address(&g.w),
                        x_scale: buffers.address(&g.x_scale),
                        w_scale: buffers.address(&g.w_scale),
                        out_scale: buffers.address(&g.out_scale),
                        out: buffers.address(&g.out),
                        amax: buffers.amax_address(g.amax_slot),
                    },
                },
                Step::Attention(a) => {
                    let t = Instant::now();
                    let lookup = attention.get(&step_spec(i, a)?)?;
                    times.attention_plans_ms += ms(t);
                    let fp8 = a.fp8.as_ref().map(|s| {
                        let n = fp8_attentions;
                        fp8_attentions += 1;
                        let scalar = |which| buffers.attention_scalar(n, which);
                        Fp8Pointers {
                            descale_q: buffers.address(&s.q),
                            descale_k: buffers.address(&s.k),
                            descale_v: buffers.address(&s.v),
                            descale_s: scalar(AttentionScalar::DescaleS),
                            scale_s: scalar(AttentionScalar::ScaleS),
                            scale_o: scalar(AttentionScalar::ScaleO),
                            amax_s: scalar(AttentionScalar::AmaxS),
                            amax_o: buffers.amax_address(s.amax_slot),
                        }
                    });
                    Pending::Ready(Launch::Attention {
                        plan: lookup.plan,
                        pointers: AttentionPointers {
                            q: buffers.address(&a.q),
                            k: buffers.address(&a.k),
                            v: buffers.address(&a.v),
                            o: buffers.address(&a.o),
                            fp8,
                        },
                        scale: a.scale,
                    })
                }
            };
            launches.push(launch);
        }
        // The O scales as the parameters just made hold them.
        set_attention_scalars(device, &plan, &buffers, |b| {
            Ok(buffers.download(device, b, &plan.buffers[b])?[0])
        })?;
        Ok(Prepared {
            device,
            plan,
            buffers,
            launches,
            attention,
            load_times: times,
        })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Copies every graph input from `inputs` to the device.
    pub fn set_inputs(&self, inputs: &Bindings) -> crate::Result<()> {
        for (id, buffer) in self.plan.buffers.iter().enumerate() {
            if buffer.kind != BufferKind::Input {
                continue;
            }
            let value = inputs.get(&buffer.name).ok_or_else(|| ExecError::Unbound {
                kind: "input",
                name: buffer.name.clone(),
                dtype: buffer.dtype,
                shape: vec![buffer.elems],
            })?;
            self.buffers.upload(self.device, id, buffer, value, "input")?;
        }
        Ok(())
    }

    /// Fills every output buffer with NaN, so an element the forward pass fails to write shows.
    pub fn poison_outputs(&self) -> crate::Result<()> {
        for (id, buffer) in self.plan.buffers.iter().enumerate() {
            if buffer.kind == BufferKind::Output {
                let nan = Array::new(vec![buffer.elems], vec![f32::NAN; buffer.elems]).expect("sized");
                self.buffers.upload(self.device, id, buffer, &nan, "output")?;
            }
        }
        Ok(())
    }

    /// Queues the forward pass on the stream, launch by launch.
    pub fn launch_all(&self) -> crate::Result<()> {
        (0..self.launches.len()).try_for_each(|i| self.launch_one(i))
    }

    /// Queues step `i`.
    fn launch_one(&self, i: usize) -> crate::Result<()> {
        let stream = self.device.stream();
        match &self.launches[i] {
            Launch::Kernel {
                function,
                params,
                config,
            } => {
                let mut builder = stream.launch_builder(function);
                for p in params {
                    builder.arg(p);
                }
                // SAFETY: the parameters are the device addresses and launch geometry the
                // kernel was generated for, into buffers this executable owns.
                unsafe { builder.launch(*config) }.map_err(|e| ExecError::Step {
                    step: i,
                    what: "kernel".into(),
                    problem: e.to_string(),
                })?;
            }
            Launch::Gemm { plan, pointers } => {
                // SAFETY: the addresses are views of buffers this executable owns, sized by
                // lowering for exactly this GEMM; the output is a fresh buffer.
                unsafe { plan.launch(stream, pointers) }?;
            }
            Launch::Attention {
                plan,
                pointers,
                scale,
            } => {
                // SAFETY: as for GEMMs; attention's output never aliases its inputs (lowering
                // gives it a fresh buffer).
                let call = unsafe { plan.bind(self.attention.handle(), *pointers, *scale) }?;
                call.execute()?;
            }
            Launch::GatedGemm(launch) => {
                // SAFETY: as for GEMMs; the executable owns every buffer the step reads and writes.
                unsafe { launch.launch(stream) }.map_err(|e| ExecError::Step {
                    step: i,
                    what: "gated GEMM".into(),
                    problem: e.to_string(),
                })?;
            }
        }
        Ok(())
    }

    /// Runs the forward pass: the captured graph if there is one, launch by launch otherwise.
    pub fn run(&self) -> crate::Result<()> {
        match &self.graph {
            Some(graph) => graph.launch().map_err(|e| {
                crate::Error::from(crate::device::DeviceError::Driver {
                    what: "cuGraphLaunch",
                    source: e,
                })
            }),
            None => self.launch_all(),
        }
    }

    /// Captures the forward pass into a CUDA graph; later [`run`](Self::run)s replay it. Run the
    /// pass once uncaptured first (libraries set up lazily on their first call).
    pub fn capture(&mut self) -> crate::Result<f64> {
        let t = Instant::now();
        let stream = self.device.stream().clone();
        let driver = |what| move |e| crate::device::DeviceError::Driver { what, source: e };
        stream
            .begin_capture(cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(driver("cuStreamBeginCapture"))?;
        let launched = self.launch_all();
        let graph = stream
            .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))
            .map_err(driver("cuStreamEndCapture"))?;
        launched?;
        let graph = graph.ok_or_else(|| ExecError::Step {
            step: 0,
            what: "capture".into(),
            problem: "the captured graph is empty".into(),
        })?;
        graph.upload().map_err(driver("cuGraphUpload"))?;
        self.graph = Some(graph);
        Ok(ms(t))
    }

    pub fn synchronize(&self) -> crate::Result<()> {
        self.device.stream().synchronize().map_err(|e| {
            crate::device::DeviceError::Driver {
                what: "synchronizing the stream",
                source: e,
            }
            .into()
        })
    }

    /// Times `runs` forward passes (after `warmup` untimed ones) with CUDA events around each,
    /// in milliseconds: replays of the captured graph, or (`replay` false, or nothing captured)
    /// launch by launch.
    pub fn time(&self, warmup: usize, runs: usize, replay: bool) -> crate::Result<Vec<f64>> {
        let driver =
            |what| move |e| crate::Error::from(crate::device::DeviceError::Driver { what, source: e });
        let pass = || if replay { self.run() } else { self.launch_all() };
        for _ in 0..warmup {
            pass()?;
        }
        let stream = self.device.stream();
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let mut events = Vec::with_capacity(runs);
        for _ in 0..runs {
            let start = stream.record_event(flags).map_err(driver("cuEventRecord"))?;
            pass()?;
            let end = stream.record_event(flags).map_err(driver("cuEventRecord"))?;
            events.push((start, end));
        }
        self.synchronize()?;
        events
            .iter()
            .map(|(start, end)| {
                start
                    .elapsed_ms(end)
                    .map(f64::from)
                    .map_err(driver("cuEventElapsedTime"))
            })
            .collect()
    }

    /// Times every step on its own over `runs` launch-by-launch passes (CUDA events between
    /// steps; median per step): where the time goes. Returns `(kind, node, median ms)` in plan
    /// order, kind being `kernel`, `gemm` or `attention`.
    pub fn profile(&self, runs: usize) -> crate::Result<Vec<(&'static str, String, f64)>> {
        let driver =
            |what| move |e| crate::Error::from(crate::device::DeviceError::Driver { what, source: e });
        let stream = self.device.stream();
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let mut samples = vec![Vec::with_capacity(runs); self.launches.len()];
        for _ in 0..runs.max(1) {
            let mut events = Vec::with_capacity(self.launches.len() + 1);
            events.push(stream.record_event(flags).map_err(driver("cuEventRecord"))?);
            for i in 0..self.launches.len() {
                self.launch_one(i)?;
                events.push(stream.record_event(flags).map_err(driver("cuEventRecord"))?);
            }
            self.synchronize()?;
            for (i, pair) in events.windows(2).enumerate() {
                samples[i].push(
                    pair[0]
                        .elapsed_ms(&pair[1])
                        .map_err(driver("cuEventElapsedTime"))? as f64,
                );
            }
        }
        Ok(self
            .plan
            .steps
            .iter()
            .zip(samples)
            .map(|(step, mut s)| {
                s.sort_by(f64::total_cmp);
                let (kind, node) = match step {
                    Step::Kernel(k) => ("kernel", self.plan.kernels[k.kernel].name.clone()),
                    Step::Gemm(g) => ("gemm", g.node.clone()),
                    Step::GatedGemm(g) => ("gated_gemm", g.node.clone()),
                    Step::Attention(a) => ("attention", a.node.clone()),
                };
                (kind, node, s[s.len() / 2])
            })
            .collect())
    }

    /// Every parameter as the device holds it (flat), calibrated scales included: what a check
    /// against the reference interpreter must evaluate with, since the weights were made on the
    /// GPU.
    pub fn params(&self) -> crate::Result<HashMap<String, Array>> {
        self.download(BufferKind::Param)
    }

    /// Every output, by name, as f32 values (flat).
    pub fn outputs(&self) -> crate::Result<HashMap<String, Array>> {
        self.download(BufferKind::Output)
    }

    fn download(&self, kind: BufferKind) -> crate::Result<HashMap<String, Array>> {
        let mut out = HashMap::new();
        for (id, buffer) in self.plan.buffers.iter().enumerate() {
            if buffer.kind == kind {
                let values = self.buffers.download(self.device, id, buffer)?;
                out.insert(
                    buffer.name.clone(),
                    Array::new(vec![buffer.elems], values).expect("sized"),
                );
            }
        }
        Ok(out)
    }

    /// The amax each quantizing kernel recorded, by slot (see [`Plan::amax_slots`]).
    pub fn amax(&self) -> crate::Result<Vec<f32>> {
        self.buffers.download_amax(self.device)
    }

    /// Zeroes the recorded amax values.
    pub fn reset_amax(&self) -> crate::Result<()> {
        self.buffers.reset_amax(self.device)
    }

    /// Sets each activation scale to `amax / max_finite` from the amax its quantizing kernel
    /// recorded in the last run (delayed scaling; run twice from the defaults to calibrate).
    /// Returns the new scales by param name.
    pub fn rescale_from_amax(&self) -> crate::Result<Vec<(String, f32)>> {
        let amax = self.amax()?;
        let mut scales: HashMap<usize, (String, f32, f32)> = HashMap::new();
        for (slot, &(scale_buffer, to)) in self.amax_targets().iter().enumerate() {
            let max = lancet_compiler::reference::numerics::fp8_max(to).expect("quantize targets FP8");
            let entry = scales
                .entry(scale_buffer)
                .or_insert_with(|| (self.plan.buffers[scale_buffer].name.clone(), 0.0, max));
            entry.1 = entry.1.max(amax[slot]);
        }
        let mut out = Vec::new();
        let mut by_buffer = HashMap::new();
        for (buffer, (name, amax, max)) in scales {
            // A quantization point that saw only zeros keeps a harmless unit scale.
            let scale = if amax > 0.0 && amax.is_finite() {
                amax / max
            } else {
                1.0
            };
            let value = Array::scalar(scale);
            self.buffers
                .upload(self.device, buffer, &self.plan.buffers[buffer], &value, "param")?;
            by_buffer.insert(buffer, scale);
            out.push((name, scale));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        // Every FP8 attention's O scale has an amax slot, so it was just set.
        set_attention_scalars(self.device, &self.plan, &self.buffers, |b| Ok(by_buffer[&b]))?;
        Ok(out)
    }

    /// For every amax slot: the scale buffer its quantize divides by, and the FP8 type.
    fn amax_targets(&self) -> Vec<(usize, DType)> {
        let mut targets = vec![(usize::MAX, DType::F8E4M3); self.plan.amax_slots.len()];
        for step in &self.plan.steps {
            let Step::Kernel(k) = step else { continue };
            let kernel = &self.plan.kernels[k.kernel];
            let spec = kernel.spec.fused().expect("kernel steps run fused kernels");
            for ((job, args), slots) in spec.jobs.iter().zip(&k.args).zip(&k.amax) {
                let quantizes = job
                    .program
                    .instrs
                    .iter()
                    .filter_map(|i| match (&i.op, i.operands.get(1)) {
                        (Op::Quantize { to }, Some(Operand::Arg(a))) => Some((args[*a as usize].buffer, *to)),
                        _ => None,
                    });
                for (&slot, target) in slots.iter().zip(quantizes) {
                    targets[slot] = target;
                }
            }
        }
        for step in &self.plan.steps {
            match step {
                Step::Attention(AttentionStep { fp8: Some(s), o, .. }) => {
                    targets[s.amax_slot] = (s.o.buffer, o.dtype);
                }
                Step::GatedGemm(g) => targets[g.amax_slot] = (g.out_scale.buffer, g.out.dtype),
                _ => {}
            }
        }
        targets
    }
}

/// The GEMM plan of step `i`, tuned on first use.
fn gemm_plan(gemms: &Gemms, i: usize, g: &GemmStep, fast_accum: bool) -> crate::Result<Arc<GemmPlan>> {
    let spec = if g.x.dtype.is_fp8() {
        GemmSpec::fp8(g.m, g.n, g.k)
    } else {
        GemmSpec::bf16(g.m, g.n, g.k)
    }
    .with_ldx(g.ldx)
    .with_residual(g.residual.is_some())
    .with_fast_accum(fast_accum && g.x.dtype.is_fp8());
    gemms.get(&spec).map_err(|e| {
        ExecError::Step {
            step: i,
            what: format!("gemm '{}'", g.node),
            problem: e.to_string(),
        }
        .into()
    })
}

/// The checked attention spec of step `i`.
fn step_spec(i: usize, a: &AttentionStep) -> crate::Result<AttentionSpec> {
    let mut spec = attention_spec(
        a.q.shape.as_slice(),
        a.k.shape[1],
        [&a.q, &a.k, &a.v, &a.o],
        a.causal,
    );
    if a.fp8.is_some() {
        spec.precision = AttentionPrecision::Fp8;
    }
    spec.validate().map_err(|e| ExecError::Step {
        step: i,
        what: format!("attention '{}'", a.node),
        problem: e.to_string(),
    })?;
    Ok(spec)
}

/// The attention spec of a step: dims from the views, strides as they lie in memory.
fn attention_spec(q_shape: &[usize], kv_heads: usize, views: [&View; 4], causal: bool) -> AttentionSpec {
    let strides = |v: &View| [v.strides[0], v.strides[1], v.strides[2], v.strides[3]];
    AttentionSpec {
        shape: AttentionShape {
            batch: q_shape[0],
            q_heads: q_shape[1],
            kv_heads,
            seq_len: q_shape[2],
            head_dim: q_shape[3],
        },
        layout: AttentionLayout {
            q: strides(views[0]),
            k: strides(views[1]),
            v: strides(views[2]),
            o: strides(views[3]),
        },
        causal,
        precision: AttentionPrecision::Bf16,
    }
}

/// Writes every FP8 attention step's scalars from its O scale (`o_scale` of the scale's buffer):
/// after the parameters are made, and again whenever calibration changes a scale.
fn set_attention_scalars(
    device: &Device,
    plan: &Plan,
    buffers: &Buffers,
    o_scale: impl Fn(usize) -> crate::Result<f32>,
) -> crate::Result<()> {
    let steps = plan.steps.iter().filter_map(|s| match s {
        Step::Attention(AttentionStep { fp8: Some(s), .. }) => Some(s),
        _ => None,
    });
    for (n, s) in steps.enumerate() {
        buffers.set_attention_scalars(device, n, o_scale(s.o.buffer)?, s.p_scale)?;
    }
    Ok(())
}
