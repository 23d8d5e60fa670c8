//! `tune show STUDY`: a table of trials (number, state, value, duration, params), sortable,
//! optionally only the top k; also the end-of-run summary.

use std::sync::Arc;

use super::{fmt_f64, fmt_value, load_study, DEFAULT_STORAGE};
use crate::frozen::{Direction, FrozenTrial, TrialState, FAIL_REASON_KEY};
use crate::study::Study;

/// Sort order of `tune show`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SortKey {
    /// Trial number.
    Number,
    /// Best value first (direction-aware); trials without value last.
    Value,
    /// Longest first.
    Duration,
}

/// Arguments of `tune show`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Study name.
    study: String,
    /// Storage URL: sqlite:///FILE or postgresql://USER@HOST:PORT/DATABASE (password from
    /// PGPASSWORD or ~/.pgpass).
    #[arg(long, env = "TUNE_STORAGE", hide_env_values = true, default_value = DEFAULT_STORAGE)]
    storage: String,
    /// Sort order.
    #[arg(long, value_enum, default_value = "number")]
    sort: SortKey,
    /// Show only the first K trials after sorting.
    #[arg(long)]
    top: Option<usize>,
    /// Show only trials in these states (complete, pruned, fail, running, waiting).
    #[arg(long, value_delimiter = ',')]
    state: Vec<String>,
}

/// Runs the subcommand.
pub fn run(a: Args) -> anyhow::Result<i32> {
    let study = load_study(&a.storage, &a.study)?;
    let mut states = Vec::new();
    for s in &a.state {
        states.push(TrialState::parse(&s.to_uppercase()).ok_or_else(|| {
            crate::input_err!("unknown state `{s}`; expected one of: complete, pruned, fail, running, waiting")
        })?);
    }
    let mut trials: Vec<Arc<FrozenTrial>> =
        study.trials()?.into_iter().filter(|t| states.is_empty() || states.contains(&t.state)).collect();
    sort(&mut trials, a.sort, study.direction());
    if let Some(k) = a.top {
        trials.truncate(k);
    }
    print_table(&trials);
    Ok(0)
}

fn sort(trials: &mut [Arc<FrozenTrial>], key: SortKey, direction: Direction) {
    match key {
        SortKey::Number => trials.sort_by_key(|t| t.number),
        SortKey::Duration => {
            trials.sort_by(|a, b| b.duration_secs().unwrap_or(-1.0).total_cmp(&a.duration_secs().unwrap_or(-1.0)))
        }
        SortKey::Value => trials.sort_by(|a, b| {
            let key = |t: &Arc<FrozenTrial>| match (t.state, t.value) {
                (TrialState::Complete, Some(v)) => (0, direction.to_loss(v)),
                (_, Some(v)) => (1, direction.to_loss(v)),
                _ => (2, 0.0),
            };
            let (ka, kb) = (key(a), key(b));
            ka.0.cmp(&kb.0).then(ka.1.total_cmp(&kb.1)).then(a.number.cmp(&b.number))
        }),
    }
}

/// Prints trials as an aligned table; FAIL rows show their reason.
pub fn print_table(trials: &[Arc<FrozenTrial>]) {
    println!("{:>6}  {:<8}  {:>14}  {:>9}  params", "number", "state", "value", "duration");
    for t in trials {
        let params: Vec<String> = t.external_params().iter().map(|(k, v)| format!("{k}={}", fmt_value(v))).collect();
        let mut extra = String::new();
        if t.state == TrialState::Fail {
            if let Some(r) = t.system_attrs.get(FAIL_REASON_KEY).and_then(|v| v.as_str()) {
                let r: String = r.lines().next().unwrap_or("").chars().take(80).collect();
                extra = format!("  [{r}]");
            }
        }
        println!(
            "{:>6}  {:<8}  {:>14}  {:>9}  {}{extra}",
            t.number,
            t.state.as_str(),
            fmt_f64(t.value),
            t.duration_secs().map(|d| format!("{d:.2}s")).unwrap_or_else(|| "-".into()),
            params.join(" ")
        );
    }
}

/// Prints the state counts and the best `k` trials of a study.
pub fn print_summary(study: &Study, k: usize) -> anyhow::Result<()> {
    let mut trials = study.trials()?;
    let count = |s| trials.iter().filter(|t| t.state == s).count();
    println!(
        "\nStudy `{}`: {} trials ({} complete, {} pruned, {} failed, {} running, {} waiting)",
        study.name(),
        trials.len(),
        count(TrialState::Complete),
        count(TrialState::Pruned),
        count(TrialState::Fail),
        count(TrialState::Running),
        count(TrialState::Waiting)
    );
    trials.retain(|t| t.state == TrialState::Complete);
    if trials.is_empty() {
        return Ok(());
    }
    sort(&mut trials, SortKey::Value, study.direction());
    trials.truncate(k);
    println!("Best {} trial(s):", trials.len());
    print_table(&trials);
    Ok(())
}
