//! `lancet graph`: show a model graph as a summary table, JSON or DOT.

use anyhow::Result;
use clap::{ArgGroup, Args};
use lancet_compiler::ir::{json, to_dot};
use lancet_compiler::summary::summarize;

use super::model::ModelArgs;
use super::table::{bytes, si, Table};

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("format").args(["summary", "json", "dot"])))]
pub struct GraphArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print a table of nodes by op, parameters, FLOPs and activation bytes (the default).
    #[arg(long)]
    pub summary: bool,
    /// Print the graph in lancet's JSON format.
    #[arg(long)]
    pub json: bool,
    /// Print the graph as Graphviz DOT.
    #[arg(long)]
    pub dot: bool,
}

pub fn run(args: &GraphArgs) -> Result<()> {
    let model = args.model.load(super::model::Target::Gpu)?;
    let graph = &model.graph;
    if args.json {
        print!("{}", json::to_string(graph));
        return Ok(());
    }
    if args.dot {
        print!("{}", to_dot(graph, &model.title));
        return Ok(());
    }
    let s = summarize(graph);
    println!("{}\n", model.title);
    let mut ops = Table::new(["op", "nodes"]);
    for (op, n) in &s.nodes_by_op {
        ops.row([op.to_string(), n.to_string()]);
    }
    ops.row(["total".to_string(), s.nodes.to_string()]);
    println!("{ops}");
    let f = &s.flops;
    let mut totals = Table::new(["quantity", "value", "detail"]);
    totals.row([
        "parameters".to_string(),
        si(s.params as f64),
        format!("{} in their storage dtypes", bytes(s.param_bytes)),
    ]);
    totals.row([
        "FLOPs per forward".to_string(),
        format!("{}FLOP", si(f.total())),
        format!(
            "linear {}, attention {} (causal counted as half), pointwise {}",
            si(f.linear),
            si(f.attention),
            si(f.pointwise)
        ),
    ]);
    totals.row([
        "activation bytes".to_string(),
        bytes(s.activation_bytes),
        format!(
            "every intermediate materialised, unfused and unplanned; largest {}",
            bytes(s.largest_activation_bytes)
        ),
    ]);
    totals.row([
        "inputs / outputs".to_string(),
        bytes(s.input_bytes),
        format!("in; {} out", bytes(s.output_bytes)),
    ]);
    print!("{totals}");
    Ok(())
}
