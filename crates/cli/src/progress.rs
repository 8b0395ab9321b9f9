//! `mcr update`'s progress on a terminal: the step under way (a spinner), and a line with
//! its time once it is done. Nothing at all when stdout is not a terminal or with --json:
//! the output is then the report alone, as scripts and the journal read it.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mcr_update::{Phase, Step};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

pub struct UpdateProgress {
    /// None when nothing is shown.
    bar: Option<ProgressBar>,
    /// The step under way, and since when.
    current: Mutex<Option<(Step, Instant)>>,
    /// How long the drain may wait: the longest step that is only waiting.
    drain_timeout_ms: u64,
}

impl UpdateProgress {
    pub fn new(show: bool, drain_timeout_ms: u64) -> Self {
        let bar = show.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
            let style = ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(80));
            bar
        });
        Self { bar, current: Mutex::new(None), drain_timeout_ms }
    }

    /// `step` begins: the one before it is done.
    pub fn step(&self, step: Step) {
        let Some(bar) = &self.bar else { return };
        let previous = self.current.lock().unwrap_or_else(PoisonError::into_inner).replace((step, Instant::now()));
        if let Some((done, since)) = previous {
            bar.println(done_line(done, since.elapsed()));
        }
        bar.reset_elapsed();
        match step {
            Step::Phase(Phase::Drain) => bar.set_message(format!(
                "drain: waiting up to {} ms for the connections the update cannot move…",
                self.drain_timeout_ms
            )),
            _ => bar.set_message(format!("{}…", name(step))),
        }
    }

    /// Run `f` (which prints, a warning) with the spinner out of its way.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    /// The update returned: the last step's line, and the spinner goes before the report.
    pub fn finish(&self) {
        let Some(bar) = &self.bar else { return };
        if let Some((done, since)) = self.current.lock().unwrap_or_else(PoisonError::into_inner).take() {
            bar.println(done_line(done, since.elapsed()));
        }
        bar.finish_and_clear();
    }
}

fn name(step: Step) -> &'static str {
    match step {
        Step::Phase(Phase::Preflight) => "preflight",
        Step::Phase(Phase::Drain) => "drain",
        Step::Phase(Phase::Quiesce) => "quiesce",
        Step::Phase(Phase::Restart) => "restart+replay",
        Step::Phase(Phase::Transfer) => "state transfer",
        Step::Phase(Phase::Commit) => "commit",
        Step::RollBack => "rollback",
    }
}

fn done_line(step: Step, took: Duration) -> String {
    format!("  {:<15}{:>9.1} ms", name(step), took.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_progress_prints_nothing_and_keeps_no_step() {
        let p = UpdateProgress::new(false, 1000);
        p.step(Step::Phase(Phase::Quiesce));
        assert_eq!(p.suspend(|| 7), 7);
        assert!(p.current.lock().unwrap().is_none());
        p.finish();
    }

    #[test]
    fn a_finished_step_is_one_aligned_line() {
        assert_eq!(
            done_line(Step::Phase(Phase::Restart), Duration::from_micros(28_450)),
            "  restart+replay      28.4 ms"
        );
        assert_eq!(done_line(Step::RollBack, Duration::from_millis(3)), "  rollback             3.0 ms");
    }
}
