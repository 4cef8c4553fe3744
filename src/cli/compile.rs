//! `lancet compile`: rewrite, lower, generate and NVRTC-compile a model; dump what was made.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use lancet::pipeline::{compile, CompileOptions, Compiled};
use lancet_compiler::codegen::gated_gemm;
use lancet_compiler::ir::to_dot;
use lancet_compiler::rewrite::Options;
use lancet_runtime::jit::JitOptions;

use super::model::ModelArgs;
use super::table::{bytes, Table};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// Options shared by every command that compiles.
#[derive(Args, Debug)]
pub struct CompileArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Fusion rules (off: one kernel per glue op, the unfused baseline).
    #[arg(long, value_enum, default_value = "on")]
    pub fusion: Switch,
    /// With fusion, a gated linear unit (SwiGLU, GeGLU) and its FP8 quantize in the epilogue of
    /// lancet's own FP8 GEMM kernel instead of a cuBLASLt GEMM and a glue kernel (Hopper,
    /// sm_90a, only: for other architectures the latter whatever this says).
    #[arg(long, value_enum, default_value = "on")]
    pub gated_gemm: Switch,
    /// Where the gated GEMM runs its epilogue: `registers` (in the MMA warps, between tiles) or
    /// `staged` (handed through shared memory to otherwise idle warps, overlapping the next
    /// tile's MMAs; experimental, not yet timed on a GPU).
    #[arg(long, default_value_t = gated_gemm::EPILOGUE)]
    pub gated_epilogue: gated_gemm::Epilogue,
    /// GPU architecture to compile for.
    #[arg(long, default_value = "sm_90a")]
    pub arch: String,
    /// Ignore the cubin cache (neither read nor write it).
    #[arg(long)]
    pub no_cache: bool,
    /// Generate CUDA source only; do not run NVRTC.
    #[arg(long)]
    pub no_nvrtc: bool,
    /// Never install NVRTC with pip when it is missing.
    #[arg(long)]
    pub no_fetch: bool,
}

impl CompileArgs {
    pub fn options(&self) -> CompileOptions {
        CompileOptions {
            rewrite: Options {
                fusion: self.fusion == Switch::On,
                gated_gemm: self.gated_gemm == Switch::On,
                ..Options::default()
            },
            gated_epilogue: self.gated_epilogue,
            jit: JitOptions {
                arch: self.arch.clone(),
                cache: !self.no_cache,
                deny_spills: true,
            },
            nvrtc: !self.no_nvrtc,
            fetch: !self.no_fetch,
        }
    }
}

#[derive(Args, Debug)]
pub struct CompileCommand {
    #[command(flatten)]
    pub compile: CompileArgs,
    /// Write every kernel's .cu and ptxas report, plan.txt and the graph before and after
    /// rewriting (DOT) into this folder (it must be empty or not exist; see --force).
    #[arg(long, value_name = "DIR")]
    pub dump_kernels: Option<PathBuf>,
    /// Allow --dump-kernels to write into a folder that already has files.
    #[arg(long)]
    pub force: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &CompileCommand) -> Result<()> {
    if let Some(dir) = &args.dump_kernels {
        check_dump_dir(dir, args.force)?;
    }
    let model = args.compile.model.load(super::model::Target::Gpu)?;
    let compiled = compile(&model.graph, &args.compile.options())?;
    if let Some(dir) = &args.dump_kernels {
        dump(dir, &model.graph, &compiled)?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report_json(&model.title, &compiled))?
        );
    } else {
        print_report(&model.title, &compiled);
        if let Some(dir) = &args.dump_kernels {
            println!("\nkernels, plan and graphs written to {}", dir.display());
        }
    }
    Ok(())
}

fn check_dump_dir(dir: &Path, force: bool) -> Result<()> {
    if dir.exists() {
        if !dir.is_dir() {
            bail!("--dump-kernels {}: exists and is not a folder", dir.display());
        }
        let non_empty = std::fs::read_dir(dir)?.next().is_some();
        if non_empty && !force {
            bail!(
                "--dump-kernels {}: the folder is not empty; pass --force to write into it",
                dir.display()
            );
        }
    }
    Ok(())
}

fn write(path: PathBuf, contents: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
}

fn dump(dir: &Path, before: &lancet_compiler::ir::Graph, c: &Compiled) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (i, kernel) in c.plan.kernels.iter().enumerate() {
        write(dir.join(format!("{}.cu", kernel.name)), kernel.source())?;
        let report = match &c.cubins {
            Ok(compilation) => {
                let k = &compilation.kernels[i];
                format!(
                    "{}\n# registers {}, stack {} B, spill stores {} B, spill loads {} B{}\n",
                    k.log.trim_end(),
                    k.report.registers,
                    k.report.stack_bytes,
                    k.report.spill_stores,
                    k.report.spill_loads,
                    if k.cached { " (from the cubin cache)" } else { "" }
                )
            }
            Err(why) => format!("# not compiled: {why}\n"),
        };
        write(dir.join(format!("{}.ptxas.txt", kernel.name)), report)?;
    }
    write(dir.join("plan.txt"), c.plan.to_string())?;
    write(dir.join("graph.before.dot"), to_dot(before, "before rewriting"))?;
    write(
        dir.join("graph.after.dot"),
        to_dot(&c.optimized, "after rewriting"),
    )?;
    Ok(())
}

fn print_report(title: &str, c: &Compiled) {
    let plan = &c.plan;
    println!("{title}\n");
    let gated = match plan.gated_gemms() {
        0 => String::new(),
        n => format!(", {n} gated GEMMs"),
    };
    println!(
        "plan: {} kernel launches ({} unique kernels), {} GEMMs{gated}, {} attention calls; arena {} (unplanned {})\n",
        plan.kernel_launches(),
        plan.kernels.len(),
        plan.gemms(),
        plan.attentions(),
        bytes(plan.arena_bytes),
        bytes(plan.unplanned_bytes)
    );
    let mut kernels = Table::new([
        "kernel",
        "template",
        "launches",
        "registers",
        "spills (B)",
        "compile",
    ]);
    for (i, k) in plan.kernels.iter().enumerate() {
        let launches = plan.launches_of(i);
        let (regs, spills, how) = match &c.cubins {
            Ok(comp) => {
                let ck = &comp.kernels[i];
                (
                    ck.report.registers.to_string(),
                    (ck.report.spill_stores + ck.report.spill_loads).to_string(),
                    if ck.cached {
                        "cached".to_string()
                    } else {
                        format!("{:.0} ms", ck.ms)
                    },
                )
            }
            Err(_) => ("-".into(), "-".into(), "skipped".into()),
        };
        kernels.row([
            k.name.clone(),
            k.template.to_string(),
            launches.to_string(),
            regs,
            spills,
            how,
        ]);
    }
    println!("{kernels}");
    match &c.cubins {
        Ok(comp) => {
            let (major, minor) = comp.nvrtc_version;
            println!(
                "NVRTC {major}.{minor}: {} cubins in {:.0} ms wall",
                comp.kernels.len(),
                comp.wall_ms
            );
            for w in &comp.warnings {
                println!("warning: {w}");
            }
        }
        Err(why) => println!("compilation skipped: {why}"),
    }
    let p = &c.phases;
    let mut phases = Table::new(["phase", "ms"]);
    phases.row([
        "rewrite (saturate + extract)".to_string(),
        format!("{:.1}", p.rewrite_ms),
    ]);
    phases.row([
        "lower + codegen".to_string(),
        format!("{:.1}", p.lower_codegen_ms),
    ]);
    phases.row(["NVRTC".to_string(), format!("{:.1}", p.nvrtc_ms)]);
    phases.row(["total".to_string(), format!("{:.1}", p.total_ms)]);
    println!("\n{phases}");
}

fn report_json(title: &str, c: &Compiled) -> serde_json::Value {
    let kernels: Vec<serde_json::Value> = c
        .plan
        .kernels
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let compiled = c.cubins.as_ref().ok().map(|comp| &comp.kernels[i]);
            serde_json::json!({
                "name": k.name,
                "template": k.template,
                "nodes": k.nodes,
                "registers": compiled.map(|ck| ck.report.registers),
                "spill_bytes": compiled.map(|ck| ck.report.spill_stores + ck.report.spill_loads),
                "cached": compiled.map(|ck| ck.cached),
            })
        })
        .collect();
    serde_json::json!({
        "model": title,
        "kernel_launches": c.plan.kernel_launches(),
        "unique_kernels": c.plan.kernels.len(),
        "gemms": c.plan.gemms(),
        "gated_gemms": c.plan.gated_gemms(),
        "attention_calls": c.plan.attentions(),
        "arena_bytes": c.plan.arena_bytes,
        "unplanned_bytes": c.plan.unplanned_bytes,
        "kernels": kernels,
        "nvrtc": match &c.cubins {
            Ok(comp) => serde_json::json!({ "version": format!("{}.{}", comp.nvrtc_version.0, comp.nvrtc_version.1), "wall_ms": comp.wall_ms, "warnings": comp.warnings }),
            Err(why) => serde_json::json!({ "skipped": why.to_string() }),
        },
        "phases": c.phases,
        "rewrite": c.report,
    })
}
