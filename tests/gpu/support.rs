//! What every GPU test needs: device detection, the shared device, fresh random data, and bf16
//! conversions.

use std::sync::OnceLock;

use half::bf16;
use lancet_runtime::compiler::reference::rel_l2;
use lancet_runtime::device::{self, Device};
use libtest_mimic::{Completion, Failed, Trial};

/// Set to a number to rerun the tests on the same random inputs.
pub const SEED_VAR: &str = "LANCET_TEST_SEED";

/// `Ok` when a CUDA driver and at least one device are present; otherwise why not.
pub fn gpu_present() -> Result<(), String> {
    match device::device_count() {
        Ok(0) => Err("the CUDA driver reports no device".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// The device every test shares (device 0), opened on first use.
pub fn device() -> Result<&'static Device, Failed> {
    static DEVICE: OnceLock<Result<Device, String>> = OnceLock::new();
    DEVICE
        .get_or_init(|| Device::open(0).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Failed::from(format!("opening device 0: {e}")))
}

/// A test that needs the GPU. If it runs anyway without one (`--include-ignored`), it reports
/// itself ignored again rather than failing on the missing device or, worse, passing.
pub fn gpu_trial(
    name: impl Into<String>,
    test: impl FnOnce() -> Result<(), Failed> + Send + 'static,
) -> Trial {
    Trial::ignorable_test(name, move || match gpu_present() {
        Ok(()) => test().map(|()| Completion::Completed),
        Err(reason) => Ok(Completion::ignored_with(reason)),
    })
}

/// This process's random seed: fresh each run unless [`SEED_VAR`] is set.
pub fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        std::env::var(SEED_VAR)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                now.map_or(0, |d| d.as_nanos() as u64)
            })
    })
}

/// `n` values of Normal(0, 1) rounded to bf16, for the tensor `name` of this run.
pub fn random_bf16(name: &str, n: usize) -> Vec<f32> {
    let mut values = lancet_runtime::compiler::weights::normal(seed(), name, n, 1.0);
    for x in &mut values {
        *x = bf16::from_f32(*x).to_f32();
    }
    values
}

pub fn to_bf16(values: &[f32]) -> Vec<bf16> {
    values.iter().map(|&x| bf16::from_f32(x)).collect()
}

pub fn to_f32(values: &[bf16]) -> Vec<f32> {
    values.iter().map(|x| x.to_f32()).collect()
}

/// Fails unless `got` is within `tolerance` (relative L2) of `want`; returns the error. NaN —
/// an output element the run never wrote over its poison — fails any tolerance.
pub fn within(what: &str, got: &[f32], want: &[f32], tolerance: f64) -> Result<f64, Failed> {
    let err = rel_l2(got, want);
    let nans = got.iter().filter(|x| x.is_nan()).count();
    if err <= tolerance {
        Ok(err)
    } else {
        Err(format!(
            "{what}: rel L2 {err:.3e} > {tolerance:e} ({nans} of {} outputs NaN)",
            got.len()
        )
        .into())
    }
}

/// Turns any error into a test failure that keeps its message.
pub fn fail(e: impl std::fmt::Display) -> Failed {
    Failed::from(e.to_string())
}
