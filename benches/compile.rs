//! Compile speed on the CPU (criterion): rewriting + extraction + lowering + codegen of the
//! headline graph, NVRTC on the unique kernel set cold and from the cubin cache, and how compile
//! time grows from 1 to 32 layers. `cargo bench --bench compile`; NVRTC benches are skipped,
//! with a message, where NVRTC is not installed.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lancet_compiler::ir::Graph;
use lancet_compiler::lower::lower;
use lancet_compiler::models::LlamaConfig;
use lancet_compiler::rewrite::{optimize, Options};
use lancet_runtime::jit::{self, JitOptions};

fn headline(layers: usize) -> Graph {
    let mut c = LlamaConfig::preset("llama-3.2-1b").expect("preset");
    c.layers = layers;
    c.build().expect("builds")
}

fn front_end(graph: &Graph) -> lancet_compiler::lower::Plan {
    let (optimized, _) = optimize(graph, &Options::default()).expect("rewrites");
    lower(&optimized).expect("lowers")
}

fn rewrite_lower_codegen(c: &mut Criterion) {
    let mut group = c.benchmark_group("rewrite+lower+codegen");
    for layers in [1, 8, 32] {
        let graph = headline(layers);
        group.bench_with_input(BenchmarkId::new("llama-3.2-1b layers", layers), &graph, |b, g| {
            b.iter(|| front_end(g))
        });
    }
    group.finish();
}

fn nvrtc(c: &mut Criterion) {
    if let Err(e) = jit::toolkit::locate() {
        eprintln!("nvrtc benches skipped: {e}");
        return;
    }
    let cold = JitOptions {
        cache: false,
        ..JitOptions::default()
    };
    let mut group = c.benchmark_group("nvrtc");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    let kernels = front_end(&headline(8)).kernels;
    group.bench_function("cold, unique kernels of 8 layers", |b| {
        b.iter(|| jit::compile(&kernels, &cold).expect("compiles"))
    });
    // Warm: every cubin comes from the cache (filled by the first call).
    let warm = JitOptions::default();
    jit::compile(&kernels, &warm).expect("compiles");
    group.bench_function("warm (cache hits), unique kernels of 8 layers", |b| {
        b.iter(|| jit::compile(&kernels, &warm).expect("compiles"))
    });
    // The whole cold compile (graph to cubins) at 1 and 32 layers: kernels are shared across
    // layers, so NVRTC's cost does not grow with depth.
    for layers in [1, 32] {
        let graph = headline(layers);
        group.bench_with_input(
            BenchmarkId::new("cold graph-to-cubins, layers", layers),
            &graph,
            |b, g| b.iter(|| jit::compile(&front_end(g).kernels, &cold).expect("compiles")),
        );
    }
    group.finish();
}

criterion_group!(benches, rewrite_lower_codegen, nvrtc);
criterion_main!(benches);
