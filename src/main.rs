//! `lancet`: compile transformer forward passes into a few fused CUDA kernels and library calls.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lancet",
    version,
    about = "A kernel-fusion JIT compiler for transformer forward passes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model graph: summary table, JSON or DOT.
    Graph(cli::graph::GraphArgs),
    /// Compile a model: rewrite, lower, generate CUDA and build cubins; dump with --dump-kernels.
    Compile(cli::compile::CompileCommand),
    /// Explain the rewrites: rules fired, e-graph growth, stop reason, launches and bytes saved.
    Explain(cli::explain::ExplainCommand),
    /// Run one forward pass (GPU, or CPU reference) and print its output's statistics.
    Run(cli::run::RunArgs),
    /// Compile time by phase and steady-state time on the GPU (CUDA-graph replay and eager).
    Bench(cli::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Graph(args) => cli::graph::run(args),
        Command::Compile(args) => cli::compile::run(args),
        Command::Explain(args) => cli::explain::run(args),
        Command::Run(args) => cli::run::run(args),
        Command::Bench(args) => cli::bench::bench(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
