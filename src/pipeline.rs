//! The compile pipeline, phase by phase: rewrite → lower (with codegen) → NVRTC. Every phase is
//! timed, so the report attributes each millisecond of compile time to a named phase.

use std::time::Instant;

use lancet_compiler::codegen::{gated_gemm, Kernel};
use lancet_compiler::ir::Graph;
use lancet_compiler::lower::{lower_with, LowerOptions, Plan};
use lancet_compiler::rewrite::{optimize, Options, Report};
use lancet_runtime::jit::{self, Compilation, JitError, JitOptions};
use serde::Serialize;

/// How to compile.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    pub rewrite: Options,
    /// Where gated GEMMs run their epilogue.
    pub gated_epilogue: gated_gemm::Epilogue,
    pub jit: JitOptions,
    /// Compile the kernels with NVRTC (off: codegen only).
    pub nvrtc: bool,
    /// When NVRTC is missing, install it with pip into lancet's cache folder.
    pub fetch: bool,
}

impl Default for CompileOptions {
    /// Fusion on, sm_90a, cubin cache on, NVRTC fetched with pip when missing.
    fn default() -> Self {
        CompileOptions {
            rewrite: Options::default(),
            gated_epilogue: gated_gemm::EPILOGUE,
            jit: JitOptions::default(),
            nvrtc: true,
            fetch: true,
        }
    }
}

/// Milliseconds per phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Phases {
    pub rewrite_ms: f64,
    pub lower_codegen_ms: f64,
    pub nvrtc_ms: f64,
    pub total_ms: f64,
}

/// A compiled model: the optimized graph, its plan and kernels, and how compilation went.
pub struct Compiled {
    pub optimized: Graph,
    pub report: Report,
    pub plan: Plan,
    /// The cubins, or why NVRTC did not run.
    pub cubins: Result<Compilation, JitError>,
    pub phases: Phases,
}

/// NVRTC on a plan's kernels: the cubins, or why NVRTC is unavailable (after fetching it with pip
/// when asked). A kernel that fails to compile or spills is an error: a compiler bug.
pub fn build_kernels(
    kernels: &[Kernel],
    options: &CompileOptions,
) -> anyhow::Result<Result<Compilation, JitError>> {
    let mut result = jit::compile(kernels, &options.jit);
    if options.fetch && matches!(result, Err(JitError::Missing(_))) {
        jit::toolkit::fetch_with_pip()?;
        result = jit::compile(kernels, &options.jit);
    }
    if let Err(e @ (JitError::Compile { .. } | JitError::Spill { .. })) = &result {
        anyhow::bail!("{e}");
    }
    Ok(result)
}

/// Rewrites, lowers and (when asked) compiles `graph` for `options.jit.arch`: the gated GEMM only
/// where that architecture runs it.
pub fn compile(graph: &Graph, options: &CompileOptions) -> anyhow::Result<Compiled> {
    let t0 = Instant::now();
    let rewrite = Options {
        gated_gemm: options.rewrite.gated_gemm && gated_gemm::runs_on(&options.jit.arch),
        ..options.rewrite.clone()
    };
    let (optimized, report) = optimize(graph, &rewrite)?;
    let t1 = Instant::now();
    let merge_launches = options.rewrite.fusion;
    let lowering = LowerOptions {
        merge_launches,
        gated_epilogue: options.gated_epilogue,
    };
    let plan = lower_with(&optimized, &lowering)?;
    let t2 = Instant::now();
    let cubins = if options.nvrtc {
        build_kernels(&plan.kernels, options)?
    } else {
        Err(JitError::Missing("not requested (--no-nvrtc)".into()))
    };
    let t3 = Instant::now();
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
    let phases = Phases {
        rewrite_ms: ms(t0, t1),
        lower_codegen_ms: ms(t1, t2),
        nvrtc_ms: ms(t2, t3),
        total_ms: ms(t0, t3),
    };
    Ok(Compiled {
        optimized,
        report,
        plan,
        cubins,
        phases,
    })
}
