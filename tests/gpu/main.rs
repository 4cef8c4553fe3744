//! Tests that need a CUDA device, in one binary with its own harness (libtest-mimic), so that
//! on a machine without a GPU every test is reported *ignored* — never passed — with one line
//! on stderr saying why. Each module contributes a list of trials; add new modules to `TRIALS`.
//!
//! The tests share one device, one stream and one cache of plans, so they run one at a time.

mod attention;
mod exec;
mod gated_gemm;
mod gemm;
mod support;

use libtest_mimic::{Arguments, Trial};

const TRIALS: &[fn() -> Vec<Trial>] = &[attention::trials, exec::trials, gated_gemm::trials, gemm::trials];

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads.get_or_insert(1);
    let mut trials: Vec<Trial> = TRIALS.iter().flat_map(|trials| trials()).collect();
    if let Err(reason) = support::gpu_present() {
        eprintln!("gpu tests: SKIPPED ({} tests ignored): {reason}", trials.len());
        trials = trials.into_iter().map(|t| t.with_ignored_flag(true)).collect();
    } else {
        eprintln!(
            "gpu tests: random seed {} (set {} to repeat)",
            support::seed(),
            support::SEED_VAR
        );
    }
    libtest_mimic::run(&args, trials).exit();
}
