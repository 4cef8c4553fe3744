//! `lancet run`: one forward pass, on the GPU or through the CPU reference interpreter, with its
//! output's statistics and, on request, the output itself as a safetensors file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Context, Result};
use clap::Args;
use lancet::session::{start, SessionOptions};
use lancet_compiler::checkpoint::{check_writable, write_f32};
use lancet_compiler::ir::Graph;
use lancet_compiler::reference::{evaluate, Array, Bindings};
use lancet_runtime::device::Device;

use super::compile::CompileArgs;
use super::model::{Model, Target};
use super::progress::Progress;
use super::table::Table;

/// Where to run: `cpu` (the reference interpreter) or a CUDA device (`cuda`, `cuda:N` or `N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceArg {
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let ordinal = |n: &str| {
            n.parse()
                .map(DeviceArg::Cuda)
                .map_err(|_| format!("'{s}' is not a device: cpu, cuda, cuda:N or N"))
        };
        match s {
            "cpu" => Ok(DeviceArg::Cpu),
            "cuda" => Ok(DeviceArg::Cuda(0)),
            _ => ordinal(s.strip_prefix("cuda:").unwrap_or(s)),
        }
    }
}

/// Options of commands that run a model.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub compile: CompileArgs,
    /// Seed of the random weights and inputs (those a checkpoint or --input do not provide).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Delayed-scaling passes that set FP8 activation scales from recorded amax (0: defaults).
    #[arg(long, default_value_t = 2)]
    pub calibrate: usize,
    /// Launch kernels one by one instead of replaying a captured CUDA graph (for debugging).
    #[arg(long)]
    pub no_cuda_graph: bool,
    /// FP8 GEMMs with full f32 accumulation instead of Hopper's fast accumulation.
    #[arg(long)]
    pub no_fast_accum: bool,
    /// Where to run: cuda, cuda:N (or N), or cpu (the f32 reference interpreter).
    #[arg(long, default_value = "cuda")]
    pub device: DeviceArg,
    /// Write the outputs (`last_hidden_state`, f32) to this safetensors file.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Overwrite --output if it exists.
    #[arg(long)]
    pub force: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl RunArgs {
    pub fn session_options(&self) -> SessionOptions {
        SessionOptions {
            compile: self.compile.options(),
            seed: self.seed,
            calibration_passes: self.calibrate,
            cuda_graph: !self.no_cuda_graph,
            fast_accum: !self.no_fast_accum,
        }
    }

    fn target(&self) -> Target {
        match self.device {
            DeviceArg::Cpu => Target::Cpu,
            DeviceArg::Cuda(_) => Target::Gpu,
        }
    }

    /// Fails early, before any work, if --output cannot be written (a missing folder) or would
    /// overwrite a file without --force.
    pub fn check_output(&self) -> Result<()> {
        if let Some(path) = &self.output {
            check_writable(path, self.force)?;
        }
        Ok(())
    }

    /// Writes `outputs` to --output, shaped as the graph's outputs.
    pub fn write_output(&self, graph: &Graph, outputs: &HashMap<String, Array>) -> Result<()> {
        let Some(path) = &self.output else {
            return Ok(());
        };
        let mut tensors = Vec::new();
        for id in graph.outputs() {
            let name = &graph.node(id).name;
            let data = outputs[name].data.clone();
            let shaped = Array::new(graph.node(id).ty.shape.clone(), data).context("output size")?;
            tensors.push((name.clone(), shaped));
        }
        let refs: Vec<(String, &Array)> = tensors.iter().map(|(n, a)| (n.clone(), a)).collect();
        write_f32(path, &refs, self.force)?;
        eprintln!("wrote {}", path.display());
        Ok(())
    }
}

/// The ordinal of the CUDA device `device` names; an error for the CPU.
pub fn cuda_ordinal(device: DeviceArg) -> Result<usize> {
    match device {
        DeviceArg::Cuda(ordinal) => Ok(ordinal),
        DeviceArg::Cpu => anyhow::bail!("this command needs a CUDA GPU; --device cpu runs only `lancet run`"),
    }
}

pub fn open_device(device: DeviceArg) -> Result<Device> {
    Device::open(cuda_ordinal(device)?).context(
        "lancet run and bench need a CUDA GPU (lancet compile does not, nor lancet run --device cpu)",
    )
}

pub fn run(args: &RunArgs) -> Result<()> {
    args.check_output()?;
    let model = args.compile.model.load(args.target())?;
    let (outputs, device) = match args.device {
        DeviceArg::Cpu => (
            run_cpu(&model, args)?,
            "CPU (reference interpreter, f32 accumulation)".to_string(),
        ),
        DeviceArg::Cuda(ordinal) => {
            // Compiling needs no context: it starts first, and the device opens meanwhile.
            let startup = start(&model.graph, &model.data, &args.session_options(), ordinal)?;
            let device = open_device(args.device)?;
            let progress = Progress::new();
            let session = startup.finish(&device, &|p| progress.phase(p))?;
            drop(progress);
            session.exe.poison_outputs()?;
            session.exe.run()?;
            (session.exe.outputs()?, device.info().to_string())
        }
    };
    args.write_output(&model.graph, &outputs)?;
    print_outputs(&model.title, &device, &outputs, args.json)
}

/// The forward pass through the reference interpreter.
fn run_cpu(model: &Model, args: &RunArgs) -> Result<HashMap<String, Array>> {
    if let Some((_, node)) = model
        .graph
        .nodes()
        .find(|(_, n)| matches!(n.op, lancet_compiler::ir::Op::Quantize { .. }))
    {
        anyhow::bail!(
            "node '{}' quantizes to FP8, whose activation scales are calibrated on the GPU; the CPU path runs graphs without FP8",
            node.name
        );
    }
    let progress = Progress::new();
    progress.phase("loading weights");
    let mut bindings: Bindings = model.data.params(&model.graph, args.seed)?;
    bindings.extend(model.data.inputs(&model.graph, args.seed + 1));
    progress.phase("running the reference interpreter");
    Ok(evaluate(&model.graph, &bindings)?)
}

fn print_outputs(title: &str, device: &str, outputs: &HashMap<String, Array>, json: bool) -> Result<()> {
    let mut table = Table::new([
        "output",
        "elements",
        "mean",
        "std",
        "abs max",
        "non-finite",
        "checksum (Σ)",
    ]);
    let mut rows = Vec::new();
    let mut names: Vec<_> = outputs.keys().cloned().collect();
    names.sort();
    for name in names {
        let data = &outputs[&name].data;
        let finite: Vec<f64> = data.iter().filter(|x| x.is_finite()).map(|&x| x as f64).collect();
        let n = finite.len().max(1) as f64;
        let mean = finite.iter().sum::<f64>() / n;
        let std = (finite.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        let absmax = finite.iter().fold(0f64, |m, x| m.max(x.abs()));
        let nans = data.len() - finite.len();
        let sum: f64 = finite.iter().sum();
        table.row([
            name.clone(),
            data.len().to_string(),
            format!("{mean:.6}"),
            format!("{std:.6}"),
            format!("{absmax:.4}"),
            nans.to_string(),
            format!("{sum:.6e}"),
        ]);
        rows.push(serde_json::json!({"output": name, "elements": data.len(), "mean": mean, "std": std, "absmax": absmax, "non_finite": nans, "sum": sum}));
    }
    if json {
        let report = serde_json::json!({"model": title, "device": device, "outputs": rows});
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{title} on {device}\n\n{table}");
    }
    Ok(())
}
