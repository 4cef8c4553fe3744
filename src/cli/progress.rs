//! A spinner on stderr naming the phase under way, for work that takes seconds (reading a
//! checkpoint, uploading weights, building library plans, timing). It draws only on a terminal,
//! so logs and `--json` output stay clean.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress(ProgressBar);

impl Progress {
    pub fn new() -> Self {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}").expect("a valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        Progress(bar)
    }

    /// Names the phase that starts now.
    pub fn phase(&self, what: &str) {
        self.0.set_message(what.to_string());
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
