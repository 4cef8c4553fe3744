//! `lancet explain`: what rewriting did and what it bought — rules fired, e-graph growth, why
//! saturation stopped, time per phase, and kernel launches and bytes per layer before and after.

use anyhow::Result;
use clap::Args;
use lancet::pipeline::{compile, CompileOptions};
use lancet_compiler::lower::{step_views, Plan, Step};
use lancet_compiler::rewrite::{all_rules, Options};

use super::compile::CompileArgs;
use super::table::{bytes, Table};

#[derive(Args, Debug)]
pub struct ExplainCommand {
    #[command(flatten)]
    pub compile: CompileArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Launches, library calls and traffic of the steps whose nodes belong to `layer` (all steps
/// when `None`).
#[derive(serde::Serialize, Default)]
struct Traffic {
    kernels: usize,
    gemms: usize,
    attention: usize,
    bytes: usize,
}

fn traffic(plan: &Plan, layer: Option<&str>) -> Traffic {
    let mut t = Traffic::default();
    for step in &plan.steps {
        let names: Vec<&str> = match step {
            Step::Kernel(k) => k.nodes.iter().map(String::as_str).collect(),
            Step::Gemm(g) => vec![g.node.as_str()],
            Step::GatedGemm(g) => vec![g.node.as_str()],
            Step::Attention(a) => vec![a.node.as_str()],
        };
        if let Some(prefix) = layer {
            if !names.iter().any(|n| n.starts_with(prefix)) {
                continue;
            }
        }
        match step {
            Step::Kernel(_) => t.kernels += 1,
            Step::Gemm(_) | Step::GatedGemm(_) => t.gemms += 1,
            Step::Attention(_) => t.attention += 1,
        }
        // Scales are a few bytes; count each view's elements once per step.
        t.bytes += step_views(step)
            .iter()
            .map(|v| v.numel() * v.dtype.size_bytes())
            .sum::<usize>();
    }
    t
}

pub fn run(args: &ExplainCommand) -> Result<()> {
    let model = args.compile.model.load(super::model::Target::Gpu)?;
    let mut on = args.compile.options();
    on.nvrtc = false;
    let off = CompileOptions {
        rewrite: Options {
            fusion: false,
            ..on.rewrite.clone()
        },
        ..on.clone()
    };
    let fused = compile(&model.graph, &on)?;
    let unfused = compile(&model.graph, &off)?;
    let layer = model
        .graph
        .nodes()
        .any(|(_, n)| n.name.starts_with("layers.0."))
        .then_some("layers.0.");
    let rows = [
        (
            "one layer (layers.0)",
            layer.map(|l| (traffic(&unfused.plan, Some(l)), traffic(&fused.plan, Some(l)))),
        ),
        (
            "whole model",
            Some((traffic(&unfused.plan, None), traffic(&fused.plan, None))),
        ),
    ];
    let r = &fused.report;
    if args.json {
        let per: Vec<_> = rows
            .iter()
            .filter_map(|(what, t)| {
                t.as_ref()
                    .map(|(a, b)| serde_json::json!({ "scope": what, "unfused": a, "fused": b }))
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "model": model.title, "rewrite": r, "phases": fused.phases, "before_after": per,
            }))?
        );
        return Ok(());
    }
    println!("{}\n", model.title);
    let mut rules = Table::new(["rule", "family", "fired", "why"]);
    for rule in all_rules() {
        let fired = match r.rules_fired.get(rule.name) {
            _ if !on.rewrite.enables(rule) => "off".to_string(),
            Some(n) => n.to_string(),
            None => "0".to_string(),
        };
        rules.row([
            rule.name.to_string(),
            rule.family.to_string(),
            fired,
            rule.why.split_whitespace().collect::<Vec<_>>().join(" "),
        ]);
    }
    println!("{rules}");
    let mut growth = Table::new(["iteration", "e-nodes", "e-classes", "ms", "rules applied"]);
    for (i, it) in r.iterations.iter().enumerate() {
        let applied: Vec<String> = it.applied.iter().map(|(k, v)| format!("{k}×{v}")).collect();
        growth.row([
            i.to_string(),
            it.nodes.to_string(),
            it.classes.to_string(),
            format!("{:.2}", it.ms),
            applied.join(", "),
        ]);
    }
    println!("{growth}");
    println!(
        "stop reason: {}; final e-graph {} nodes in {} classes",
        r.stop_reason, r.final_nodes, r.final_classes
    );
    println!(
        "cost model: {:.3} ms before rewriting, {:.3} ms after\n",
        r.cost_before_ns / 1e6,
        r.cost_after_ns / 1e6
    );
    let mut phases = Table::new(["phase", "ms"]);
    phases.row([
        "translate (graph → e-graph, first extraction)".to_string(),
        format!("{:.2}", r.translate_ms),
    ]);
    phases.row(["saturate".to_string(), format!("{:.2}", r.saturate_ms)]);
    phases.row(["extract".to_string(), format!("{:.2}", r.extract_ms)]);
    phases.row([
        "lower + codegen".to_string(),
        format!("{:.2}", fused.phases.lower_codegen_ms),
    ]);
    println!("{phases}");
    let mut table = Table::new(["scope", "kernel launches", "GEMMs", "attention", "bytes moved"]);
    for (what, t) in &rows {
        let Some((a, b)) = t else { continue };
        table.row([
            what.to_string(),
            format!("{} → {}", a.kernels, b.kernels),
            format!("{} → {}", a.gemms, b.gemms),
            format!("{} → {}", a.attention, b.attention),
            format!("{} → {}", bytes(a.bytes), bytes(b.bytes)),
        ]);
    }
    println!("unfused → fused\n{table}");
    Ok(())
}
