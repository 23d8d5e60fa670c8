//! The report's `summary.md`: counts per state, the best trial and its config, the top trials,
//! the parameter importances and links to the figures.

use std::fmt::Write;
use std::sync::Arc;

use serde_json::Value;

use super::importance::Importances;
use crate::cli::{fmt_f64, fmt_value};
use crate::frozen::{Direction, FrozenTrial, TrialState};

/// How many of the best trials the summary lists.
pub const TOP_K: usize = 5;

/// What the summary is made of.
pub struct Summary<'a> {
    /// Study name.
    pub study: &'a str,
    /// Study direction.
    pub direction: Direction,
    /// The storage URL, for the optuna-dashboard command line.
    pub storage: Option<&'a str>,
    /// All trials, by number.
    pub trials: &'a [Arc<FrozenTrial>],
    /// The best COMPLETE trial.
    pub best: Option<&'a FrozenTrial>,
    /// The best trial's full config: `None` without a base config, `Err` when it cannot be
    /// resolved.
    pub best_config: Option<Result<Value, String>>,
    /// The importances, or why there are none.
    pub importances: &'a Result<Importances, String>,
    /// Each figure: file name, title, and the reason it was skipped if it was.
    pub figures: &'a [(&'a str, &'a str, Option<String>)],
    /// For a PBT study: the best final member's schedule, `(first step, parameters, trial,
    /// value)` per segment.
    pub pbt: Option<Vec<crate::pbt::ScheduleRow>>,
}

/// Renders the summary as Markdown.
pub fn markdown(s: &Summary) -> String {
    let mut md = String::new();
    // Writing to a String cannot fail.
    let _ = write_markdown(&mut md, s);
    md
}

fn write_markdown(md: &mut String, s: &Summary) -> std::fmt::Result {
    writeln!(md, "# Study `{}`\n", s.study)?;
    writeln!(
        md,
        "Report written by tune {} on {} UTC.\n",
        env!("CARGO_PKG_VERSION"),
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S")
    )?;
    writeln!(md, "- Direction: {}", s.direction.as_str().to_lowercase())?;
    let count = |st: TrialState| s.trials.iter().filter(|t| t.state == st).count();
    writeln!(
        md,
        "- Trials: {} ({} complete, {} pruned, {} fail, {} running, {} waiting)",
        s.trials.len(),
        count(TrialState::Complete),
        count(TrialState::Pruned),
        count(TrialState::Fail),
        count(TrialState::Running),
        count(TrialState::Waiting)
    )?;
    match s.best {
        Some(b) => {
            writeln!(md, "- Best value: {} (trial #{})", b.value.map_or("-".into(), |v| v.to_string()), b.number)?
        }
        None => writeln!(md, "- Best value: none yet (no COMPLETE trial)")?,
    }
    if let Some(url) = s.storage.filter(|u| u.starts_with("sqlite:")) {
        writeln!(md, "- Browse it interactively: `optuna-dashboard {url}`")?;
    } else if let Some(url) = s.storage.filter(|u| crate::storage::postgres::is_postgres_url(u)) {
        // SQLAlchemy's form of the URL, password masked (optuna-dashboard reads PGPASSWORD).
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let url = crate::storage::postgres::mask(&format!("postgresql+psycopg2://{rest}"));
        writeln!(md, "- Browse it interactively: `optuna-dashboard {url}`")?;
    }

    if let Some(b) = s.best {
        writeln!(md, "\n## Best trial: #{}\n", b.number)?;
        write!(md, "Value {}", fmt_f64(b.value))?;
        if let Some(d) = b.duration_secs() {
            write!(md, ", {d:.2} s")?;
        }
        writeln!(md, ".\n")?;
        let params = b.external_params();
        if params.is_empty() {
            writeln!(md, "It has no parameters.")?;
        } else {
            writeln!(md, "| parameter | value |\n|---|---|")?;
            for (k, v) in &params {
                writeln!(md, "| {} | {} |", cell(k), cell(&fmt_value(v)))?;
            }
        }
        match &s.best_config {
            Some(Ok(config)) => {
                let yaml = serde_norway::to_string(config).unwrap_or_else(|e| format!("# cannot be written: {e}\n"));
                writeln!(md, "\n### Best config\n")?;
                writeln!(md, "The objective's base config with the best trial's parameters (`tune export` writes it to a file):\n")?;
                writeln!(md, "```yaml\n{}```", yaml)?;
            }
            Some(Err(e)) => writeln!(md, "\nThe best trial's config could not be resolved: {e}")?,
            None => {}
        }

        writeln!(md, "\n## Top {TOP_K} trials\n")?;
        let mut top: Vec<&Arc<FrozenTrial>> =
            s.trials.iter().filter(|t| t.state == TrialState::Complete && t.value.is_some()).collect();
        top.sort_by(|a, b| {
            let loss = |t: &FrozenTrial| s.direction.to_loss(t.value.unwrap_or(f64::NAN));
            loss(a).total_cmp(&loss(b)).then(a.number.cmp(&b.number))
        });
        top.truncate(TOP_K);
        let mut names: Vec<&String> = top.iter().flat_map(|t| t.params.keys()).collect();
        names.sort();
        names.dedup();
        write!(md, "| trial | value |")?;
        for n in &names {
            write!(md, " {} |", cell(n))?;
        }
        writeln!(md, "\n|---|---|{}", "---|".repeat(names.len()))?;
        for t in top {
            write!(md, "| #{} | {} |", t.number, fmt_f64(t.value))?;
            for n in &names {
                let v = t.param(n).map_or_else(|| "-".to_string(), |v| fmt_value(&v));
                write!(md, " {} |", cell(&v))?;
            }
            writeln!(md)?;
        }
    }

    if let Some(schedule) = &s.pbt {
        writeln!(md, "\n## PBT: the best final member's schedule\n")?;
        writeln!(
            md,
            "Each row is a segment of the chain of learners that ends at the population's best final member: \
             the hyperparameters in force from that step on (`tune export` writes them as a `schedule:`).\n"
        )?;
        let mut names: Vec<&String> = schedule.iter().flat_map(|r| r.1.keys()).collect();
        names.sort();
        names.dedup();
        write!(md, "| from step | trial | value |")?;
        for n in &names {
            write!(md, " {} |", cell(n))?;
        }
        writeln!(md, "\n|---|---|---|{}", "---|".repeat(names.len()))?;
        for (step, params, number, value) in schedule {
            write!(md, "| {step} | #{number} | {} |", fmt_f64(*value))?;
            for n in &names {
                write!(md, " {} |", cell(&params.get(*n).map_or_else(|| "-".to_string(), fmt_value)))?;
            }
            writeln!(md)?;
        }
    }

    writeln!(md, "\n## Parameter importances\n")?;
    match s.importances {
        Ok(imp) => {
            writeln!(
                md,
                "fANOVA as in Optuna's `FanovaImportanceEvaluator`: a random forest of 64 trees (max depth 64, \
                 seed 0) fitted on the {} COMPLETE trials, then each parameter's share of the objective's \
                 variance; normalised to sum 1. Conditional parameters (not in every COMPLETE trial) are left out.\n",
                imp.n_trials
            )?;
            writeln!(md, "| parameter | importance |\n|---|---|")?;
            for (k, v) in &imp.params {
                writeln!(md, "| {} | {v:.4} |", cell(k))?;
            }
        }
        Err(reason) => writeln!(md, "Not assessed: {reason}.")?,
    }

    writeln!(md, "\n## Figures\n")?;
    for (file, title, skipped) in s.figures {
        match skipped {
            None => writeln!(md, "### {title}\n\n![{title}]({file})\n")?,
            Some(reason) => writeln!(md, "### {title}\n\nNot drawn: {reason}.\n")?,
        }
    }
    Ok(())
}

/// Text safe inside a Markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distribution::Distribution;
    use serde_json::json;

    fn trial(number: i64, state: TrialState, value: Option<f64>, opt: &str) -> Arc<FrozenTrial> {
        let mut t = FrozenTrial::new(number, number, state);
        t.value = value;
        let d = Distribution::categorical(vec![json!("adam"), json!("a|b")]).unwrap();
        t.params.insert("opt".into(), d.to_internal(&json!(opt)).unwrap());
        t.distributions.insert("opt".into(), d);
        Arc::new(t)
    }

    #[test]
    fn the_summary_lists_counts_best_top_trials_and_skipped_figures() {
        let trials = vec![
            trial(0, TrialState::Complete, Some(3.0), "adam"),
            trial(1, TrialState::Pruned, Some(9.0), "adam"),
            trial(2, TrialState::Complete, Some(1.5), "a|b"),
            trial(3, TrialState::Fail, None, "adam"),
        ];
        let imp = Err("needs at least 2 COMPLETE trials".to_string());
        let md = markdown(&Summary {
            study: "s",
            direction: Direction::Minimize,
            storage: Some("sqlite:///x.db"),
            trials: &trials,
            best: Some(&trials[2]),
            best_config: Some(Ok(json!({"lr": 0.1, "opt": "a|b"}))),
            importances: &imp,
            figures: &[
                ("history.png", "Optimisation history", None),
                ("intermediate.png", "Intermediate values", Some("no trial reported".into())),
            ],
            pbt: None,
        });
        assert!(md.contains("- Trials: 4 (2 complete, 1 pruned, 1 fail, 0 running, 0 waiting)"), "{md}");
        assert!(md.contains("- Best value: 1.5 (trial #2)"), "{md}");
        assert!(md.contains("| opt | a\\|b |"), "{md}");
        assert!(md.contains("```yaml\nlr: 0.1\nopt: a|b\n```"), "{md}");
        // Top trials: best first, only COMPLETE ones.
        let top = md.split("## Top 5 trials").nth(1).unwrap();
        assert!(top.find("| #2 |").unwrap() < top.find("| #0 |").unwrap(), "{md}");
        assert!(!top.split("## Parameter").next().unwrap().contains("| #1 |"), "{md}");
        assert!(md.contains("Not assessed: needs at least 2 COMPLETE trials."), "{md}");
        assert!(md.contains("![Optimisation history](history.png)"), "{md}");
        assert!(md.contains("Not drawn: no trial reported."), "{md}");
        assert!(md.contains("`optuna-dashboard sqlite:///x.db`"), "{md}");
    }

    #[test]
    fn a_study_without_complete_trials_says_so() {
        let trials = vec![trial(0, TrialState::Pruned, Some(2.0), "adam")];
        let imp = Err("needs at least 2 COMPLETE trials with a finite value, the study has 0".to_string());
        let md = markdown(&Summary {
            study: "s",
            direction: Direction::Maximize,
            storage: None,
            trials: &trials,
            best: None,
            best_config: None,
            importances: &imp,
            figures: &[],
            pbt: None,
        });
        assert!(md.contains("- Best value: none yet (no COMPLETE trial)"), "{md}");
        assert!(!md.contains("## Top"), "{md}");
        assert!(!md.contains("optuna-dashboard"), "{md}");
    }
}
