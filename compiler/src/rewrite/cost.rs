//! The cost model: time on an H100, from bytes moved through device memory and kernel launches.
//!
//! Glue kernels are memory-bound, so their time is their traffic over the device's bandwidth
//! plus a fixed cost per launch; library calls add their FLOPs over the measured peak. Only
//! differences between alternatives matter for extraction, so a term both alternatives share
//! (a GEMM's FLOPs, say) never decides anything — but keeping every term makes the printed
//! estimate an honest forecast that the benchmark can be held against.

use crate::ir::{Op, TensorType};

/// Device-to-device copy bandwidth measured on the H100 (read + write): 3.0 TB/s = 3000 B/ns.
pub const BYTES_PER_NS: f64 = 3000.0;

/// Cost of one kernel launch inside a CUDA graph, in ns: PyTorch's best recipe spends 0.27 ms of
/// gaps across 144 launches in one replayed forward pass (measured on the project's H100), ≈ 1.9 µs
/// each.
pub const LAUNCH_NS: f64 = 1_900.0;

/// FP8 e4m3 GEMM throughput through cuBLASLt at Llama-1B shapes with 4096 tokens: 674–1185
/// TFLOP/s measured (1400 at 8192³); 1200 TFLOP/s = 1.2e6 FLOP/ns for the large projections.
pub const FP8_FLOP_PER_NS: f64 = 1.2e6;
/// lancet's gated GEMM (`codegen::gated_gemm`) at the headline's MLP shape (m 4096, 2f 16384, k
/// 2048) in a forward pass on the H100: 0.244 ms, 1130 TFLOP/s measured (1220 alone, back to
/// back); its epilogue is not overlapped with the tensor cores.
pub const GATED_FP8_FLOP_PER_NS: f64 = 1.13e6;
/// bf16 GEMM throughput measured at 8192³: 780 TFLOP/s.
pub const BF16_FLOP_PER_NS: f64 = 7.8e5;
/// cuDNN flash attention, causal, B 2, 32 heads, S 2048, D 64: 347 TFLOP/s measured.
pub const ATTENTION_FLOP_PER_NS: f64 = 3.47e5;

/// A hair of cost on generated kernels and views: when fusing gains nothing the plain op wins,
/// so the extracted graph stays as close to the input as the savings allow, and of two chains
/// of views the shorter wins.
const TIE_BREAK_NS: f64 = 1e-3;

/// Estimated time of an op's own work (operands' production excluded), in ns. `operands` are
/// in slot order; `read_bytes` counts each distinct operand once.
pub fn local_cost(op: &Op, out: &TensorType, operands: &[&TensorType], read_bytes: usize) -> f64 {
    let traffic = |extra: usize| (read_bytes + out.size_bytes() + extra) as f64 / BYTES_PER_NS;
    match op {
        Op::Input { .. } | Op::Param { .. } | Op::Output => 0.0,
        // Views are strided reads of their source (lowering copies only the rare chain that
        // strides cannot express).
        Op::Reshape { .. } | Op::Permute { .. } | Op::Slice { .. } => TIE_BREAK_NS,
        Op::Linear { .. } | Op::LinearAdd { .. } => {
            let k = operands[0].shape.last() as f64;
            let flops = 2.0 * out.numel() as f64 * k;
            let rate = if operands[0].dtype.is_fp8() {
                FP8_FLOP_PER_NS
            } else {
                BF16_FLOP_PER_NS
            };
            LAUNCH_NS + traffic(0) + flops / rate
        }
        // One FP8 GEMM over both halves of the packed weight, `[.., 2f]` wide, whose epilogue
        // writes only the quantized `[.., f]`: the bf16 product never reaches memory.
        Op::GatedLinear { .. } => {
            let k = operands[0].shape.last() as f64;
            let flops = 2.0 * (2 * out.numel()) as f64 * k;
            LAUNCH_NS + traffic(0) + flops / GATED_FP8_FLOP_PER_NS
        }
        Op::Attention { causal, .. } | Op::Fp8Attention { causal, .. } => {
            let (q, k) = (&operands[0].shape, &operands[1].shape);
            let pairs = (q.dims()[0] * q.dims()[1] * q.dims()[2] * k.dims()[2]) as f64;
            let flops = 4.0 * pairs * q.last() as f64 * if *causal { 0.5 } else { 1.0 };
            LAUNCH_NS + traffic(0) + flops / ATTENTION_FLOP_PER_NS
        }
        Op::Fused { .. } => LAUNCH_NS + traffic(0) + TIE_BREAK_NS,
        // Every other op is its own glue kernel when left unfused.
        _ => LAUNCH_NS + traffic(0),
    }
}
