//! Rewriting by equality saturation: the graph goes into an `egg` e-graph, named rules add
//! equivalent forms (simpler views, fused kernels, GEMM epilogues) until nothing new appears or
//! a limit is hit, and the cost model picks the cheapest form of every value.
//!
//! Rules never destroy the original form, so extraction keeps an unfused op exactly when the
//! model says fusing it would not pay. Every run reports which rules fired, how the e-graph
//! grew per iteration, why it stopped, and the time of each phase.

mod analysis;
pub mod cost;
mod lang;
mod rule;
pub mod rules;
mod translate;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use egg::{Runner, SimpleScheduler, StopReason};
use serde::Serialize;

use crate::ir::{Graph, GraphError};
pub use rule::Rule;

/// Limits and switches for one rewrite.
#[derive(Clone, Debug)]
pub struct Options {
    /// Fusion rules on; off keeps only view algebra (the unfused baseline).
    pub fusion: bool,
    /// With fusion, the `gated-linear` rule (default on): a gated linear unit becomes lancet's own
    /// FP8 GEMM with the activation, product and quantize in its epilogue, instead of a cuBLASLt
    /// GEMM and a fused kernel. The kernel is Hopper's alone: a compile for another architecture
    /// turns this off (`codegen::gated_gemm::runs_on`).
    pub gated_gemm: bool,
    /// Saturation iterations at most (default 40: transformer glue saturates in under 10).
    pub iter_limit: usize,
    /// E-nodes at most (default 100 000, ~100× a 32-layer model's graph).
    pub node_limit: usize,
    /// Wall time at most (default 5 s; a 32-layer model takes milliseconds).
    pub time_limit: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fusion: true,
            gated_gemm: true,
            iter_limit: 40,
            node_limit: 100_000,
            time_limit: Duration::from_secs(5),
        }
    }
}

impl Options {
    /// Whether a rewrite with these options runs `rule`: view algebra always, the rest with
    /// fusion, the gated GEMM's rule with fusion unless switched off.
    pub fn enables(&self, rule: &Rule) -> bool {
        if rule.family == rules::view::FAMILY {
            true
        } else if rule.name == rules::epilogue::GATED_LINEAR {
            self.fusion && self.gated_gemm
        } else {
            self.fusion
        }
    }
}

/// One saturation iteration, as `lancet explain` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct Iteration {
    pub nodes: usize,
    pub classes: usize,
    /// Rules that changed the e-graph in this iteration, with how often.
    pub applied: BTreeMap<String, usize>,
    pub ms: f64,
}

/// What a rewrite did.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub iterations: Vec<Iteration>,
    /// `saturated`, or which limit stopped the run.
    pub stop_reason: String,
    /// Total applications per rule, over all iterations.
    pub rules_fired: BTreeMap<String, usize>,
    pub final_nodes: usize,
    pub final_classes: usize,
    /// Cost-model estimate of the graph before and after, in ns.
    pub cost_before_ns: f64,
    pub cost_after_ns: f64,
    pub translate_ms: f64,
    pub saturate_ms: f64,
    pub extract_ms: f64,
}

/// Rewrites `graph` into an equivalent graph that is cheapest under the cost model.
pub fn optimize(graph: &Graph, options: &Options) -> Result<(Graph, Report), GraphError> {
    let t0 = Instant::now();
    let (egraph, outputs) = translate::to_egraph(graph);
    let (_, cost_before_ns) = translate::extract(&egraph, &outputs)?;
    let translate_ms = ms(t0);

    let t1 = Instant::now();
    let rules: Vec<_> = rules::all()
        .filter(|r| options.enables(r))
        .map(Rule::rewrite)
        .collect();
    let runner = Runner::default()
        .with_egraph(egraph)
        .with_scheduler(SimpleScheduler)
        .with_iter_limit(options.iter_limit)
        .with_node_limit(options.node_limit)
        .with_time_limit(options.time_limit)
        .run(&rules);
    let saturate_ms = ms(t1);

    let t2 = Instant::now();
    let (optimized, cost_after_ns) = translate::extract(&runner.egraph, &outputs)?;
    let extract_ms = ms(t2);

    let mut rules_fired: BTreeMap<String, usize> = BTreeMap::new();
    let iterations = runner
        .iterations
        .iter()
        .map(|it| {
            let applied: BTreeMap<String, usize> = it
                .applied
                .iter()
                .map(|(rule, n)| (rule.to_string(), *n))
                .collect();
            for (rule, n) in &applied {
                *rules_fired.entry(rule.clone()).or_default() += n;
            }
            Iteration {
                nodes: it.egraph_nodes,
                classes: it.egraph_classes,
                applied,
                ms: (it.search_time + it.apply_time + it.rebuild_time) * 1e3,
            }
        })
        .collect();
    let stop_reason = match &runner.stop_reason {
        Some(StopReason::Saturated) => "saturated".to_string(),
        Some(StopReason::IterationLimit(n)) => format!("iteration limit ({n})"),
        Some(StopReason::NodeLimit(n)) => format!("node limit ({n})"),
        Some(StopReason::TimeLimit(s)) => format!("time limit ({s:.1} s)"),
        Some(StopReason::Other(why)) => why.clone(),
        None => "not run".to_string(),
    };
    let report = Report {
        iterations,
        stop_reason,
        rules_fired,
        final_nodes: runner.egraph.total_number_of_nodes(),
        final_classes: runner.egraph.number_of_classes(),
        cost_before_ns,
        cost_after_ns,
        translate_ms,
        saturate_ms,
        extract_ms,
    };
    Ok((optimized, report))
}

/// Every rule with its family and why, for documentation and `lancet explain --rules`.
pub fn all_rules() -> impl Iterator<Item = &'static Rule> {
    rules::all()
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}
