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
    print_pbt(&study)?;
    Ok(0)
}

/// For a PBT study: the lineage (one row per generation, one column per member: the
/// segment's trial and value, `<-#n` where it took the learner of trial `n`) and the schedule
/// of the best final member. Prints nothing for other studies.
pub fn print_pbt(study: &Study) -> anyhow::Result<()> {
    let trials = study.trials()?;
    let segs = crate::pbt::segments(&trials);
    if segs.is_empty() {
        return Ok(());
    }
    let members = segs.iter().map(|(_, s)| s.member).max().unwrap_or(0) + 1;
    let generations = segs.iter().map(|(_, s)| s.generation).max().unwrap_or(0) + 1;
    println!("\nPBT lineage (trial value, <-#parent where the learner was copied):");
    let header: Vec<String> = (0..members).map(|m| format!("{:>22}", format!("member {m}"))).collect();
    println!("{:>10} {:>9} {}", "generation", "from step", header.join(""));
    for g in 0..generations {
        let mut row = Vec::new();
        let mut step = 0;
        for m in 0..members {
            // The settled attempt: COMPLETE first, else the last one.
            let mut attempts: Vec<_> = segs.iter().filter(|(_, s)| s.generation == g && s.member == m).collect();
            attempts.sort_by_key(|(t, _)| (t.state == TrialState::Complete, t.number));
            let cell = match attempts.last() {
                Some((t, s)) => {
                    step = s.start_step;
                    let v = match t.state {
                        TrialState::Complete => {
                            fmt_f64(t.value).trim_end_matches('0').trim_end_matches('.').to_string()
                        }
                        other => other.as_str().to_lowercase(),
                    };
                    let parent = if s.exploited {
                        s.parent.map(|p| format!(" <-#{p}")).unwrap_or_default()
                    } else {
                        String::new()
                    };
                    format!("#{} {v}{parent}", t.number)
                }
                None => "-".into(),
            };
            row.push(format!("{cell:>22}"));
        }
        println!("{g:>10} {step:>9} {}", row.join(""));
    }
    if let Some(best) = crate::pbt::final_best(&trials, study.direction()) {
        let chain = crate::pbt::chain(&trials, best.number);
        println!(
            "Best final member: trial #{} (value {}); its hyperparameter schedule:",
            best.number,
            fmt_f64(best.value)
        );
        for (step, params, number, value) in crate::pbt::schedule(&chain) {
            let p: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", fmt_value(v))).collect();
            println!("  from step {step:>8}: {}   (trial #{number}, value {})", p.join(" "), fmt_f64(value));
        }
    }
    Ok(())
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
