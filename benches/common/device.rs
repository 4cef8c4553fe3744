//! The GPU the benchmarks run on, or a line saying why they are skipped.

use anyhow::Result;
use lancet_runtime::device::{self, Device};

/// Device 0, or `None` after printing `<bench>: SKIPPED: <why>` when there is no GPU.
pub fn open_or_skip(bench: &str) -> Result<Option<Device>> {
    match device::device_count() {
        Ok(n) if n > 0 => Ok(Some(Device::open(0)?)),
        Ok(_) => {
            println!("{bench}: SKIPPED: no CUDA device");
            Ok(None)
        }
        Err(e) => {
            println!("{bench}: SKIPPED: {e}");
            Ok(None)
        }
    }
}
