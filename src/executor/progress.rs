//! Progress of a run: a bar on a terminal (finished/total, pruned, failed, best, ETA), plain
//! lines otherwise, nothing when quiet.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use crate::frozen::{Direction, FrozenTrial, TrialState};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar when stdout is a terminal, plain lines otherwise.
    Auto,
    /// One line per finished trial.
    Plain,
    /// Nothing.
    Quiet,
}

/// Study-wide counts shown in the bar.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    finished: u64,
    pruned: u64,
    failed: u64,
    best: Option<(f64, i64)>,
}

/// The progress display of one run.
pub struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    total: Option<u64>,
    direction: Direction,
    start: Instant,
    finished_at_start: Mutex<Option<u64>>,
}

impl Progress {
    /// A display for a study with `total` trials (if bounded).
    pub fn new(mode: ProgressMode, total: Option<u64>, direction: Direction) -> Self {
        let terminal = std::io::stdout().is_terminal();
        let bar = (mode == ProgressMode::Auto && terminal).then(|| {
            let bar = match total {
                Some(n) => ProgressBar::new(n),
                None => ProgressBar::new_spinner(),
            };
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30.cyan/blue} {pos}/{len} trials {msg} [{elapsed_precise}, ETA {eta}]",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar
        });
        Progress {
            bar,
            plain: mode == ProgressMode::Plain || (mode == ProgressMode::Auto && !terminal),
            total,
            direction,
            start: Instant::now(),
            finished_at_start: Mutex::new(None),
        }
    }

    fn counts(&self, trials: &[Arc<FrozenTrial>]) -> Counts {
        let mut c = Counts::default();
        for t in trials {
            match t.state {
                TrialState::Complete => {
                    c.finished += 1;
                    if let Some(v) = t.value {
                        if c.best.is_none_or(|(b, _)| self.direction.better(v, b)) {
                            c.best = Some((v, t.number));
                        }
                    }
                }
                TrialState::Pruned => {
                    c.finished += 1;
                    c.pruned += 1;
                }
                TrialState::Fail if !t.interrupted() => {
                    c.finished += 1;
                    c.failed += 1;
                }
                _ => {}
            }
        }
        c
    }

    /// Shows the study's state (at start, or after another process moved it on).
    pub fn refresh(&self, trials: &[Arc<FrozenTrial>]) {
        let c = self.counts(trials);
        self.finished_at_start.lock().unwrap().get_or_insert(c.finished);
        if let Some(bar) = &self.bar {
            bar.set_position(c.finished);
            bar.set_message(Self::message(&c));
        }
    }

    fn message(c: &Counts) -> String {
        let best = match c.best {
            Some((v, n)) => format!("best {v:.6} (trial {n})"),
            None => "no complete trial yet".into(),
        };
        format!("| pruned {} | failed {} | {best}", c.pruned, c.failed)
    }

    /// Whether [`Progress::trial_finished`] shows anything (not with `--quiet`): the study's
    /// trials need not be read otherwise, a round trip to a database server per trial.
    pub fn shows_trials(&self) -> bool {
        self.bar.is_some() || self.plain
    }

    /// Called after each trial this process finished.
    pub fn trial_finished(&self, t: &FrozenTrial, trials: &[Arc<FrozenTrial>]) {
        let c = self.counts(trials);
        if let Some(bar) = &self.bar {
            bar.set_position(c.finished);
            bar.set_message(Self::message(&c));
        } else if self.plain {
            let value = match (t.state, t.value) {
                (TrialState::Fail, _) => format!(
                    "failed: {}",
                    t.system_attrs.get(crate::frozen::FAIL_REASON_KEY).and_then(|v| v.as_str()).unwrap_or("?")
                ),
                (_, Some(v)) => format!("value {v:.6}"),
                (_, None) => "no value".into(),
            };
            let total = self.total.map(|n| n.to_string()).unwrap_or_else(|| "?".into());
            let eta = self.eta(c.finished).map(|s| format!(", ETA {s:.0}s")).unwrap_or_default();
            println!("[{}/{total}] trial {} {} ({value}) {}{eta}", c.finished, t.number, t.state, Self::message(&c));
        }
    }

    fn eta(&self, finished: u64) -> Option<f64> {
        let total = self.total?;
        let at_start = (*self.finished_at_start.lock().unwrap())?;
        let done_here = finished.checked_sub(at_start)?;
        if done_here == 0 || finished >= total {
            return None;
        }
        Some(self.start.elapsed().as_secs_f64() / done_here as f64 * (total - finished) as f64)
    }

    /// Prints a note above the bar (or on stderr).
    pub fn note(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
