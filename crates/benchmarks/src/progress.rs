//! Progress with ETA: a bar on a terminal, periodic log lines otherwise (CI, redirected output).

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    label: String,
    total: u64,
    done: u64,
    resumed: u64,
    started: Instant,
    last_log: Instant,
    terminal: bool,
}

impl Progress {
    /// `resumed` items were already scored by an earlier run (they count as done, not in the ETA).
    pub fn new(label: &str, total: usize, resumed: usize) -> Self {
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = ProgressBar::with_draw_target(
            Some(total as u64),
            if terminal {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        bar.set_style(
            ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        bar.set_position(resumed as u64);
        bar.reset_eta();
        if resumed > 0 {
            tracing::info!("{label}: resuming, {resumed} of {total} items already scored");
        }
        Self {
            bar,
            label: label.to_string(),
            total: total as u64,
            done: resumed as u64,
            resumed: resumed as u64,
            started: Instant::now(),
            last_log: Instant::now(),
            terminal,
        }
    }

    pub fn advance(&mut self, items: usize) {
        self.done += items as u64;
        self.bar.inc(items as u64);
        if !self.terminal
            && (self.last_log.elapsed() > Duration::from_secs(15) || self.done == self.total)
        {
            self.last_log = Instant::now();
            tracing::info!(
                "{}: {}/{} ({:.2} items/s) ETA {}",
                self.label,
                self.done,
                self.total,
                self.rate(),
                format_duration(self.eta())
            );
        }
    }

    /// Items per second scored by this run (resumed items not counted).
    pub fn rate(&self) -> f64 {
        (self.done - self.resumed) as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    /// Remaining time at the rate measured in this run.
    pub fn eta(&self) -> Duration {
        let fresh = self.done - self.resumed;
        if fresh == 0 {
            return Duration::ZERO;
        }
        let per_item = self.started.elapsed().as_secs_f64() / fresh as f64;
        Duration::from_secs_f64(per_item * (self.total - self.done) as f64)
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
        tracing::info!(
            "{}: {} items in {}",
            self.label,
            self.total,
            format_duration(self.started.elapsed())
        );
    }
}

fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    format!(
        "{}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}
