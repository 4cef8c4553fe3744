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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Graph(args) => cli::graph::run(args),
        Command::Compile(args) => cli::compile::run(args),
        Command::Explain(args) => cli::explain::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
