//! `tune export STUDY -o FILE`: the best (or a chosen) trial's parameters written into the
//! objective's base config at their dotted paths, saved as a complete YAML or JSON config.

use std::path::PathBuf;

use anyhow::Context;
use serde_json::Value;

use super::{fmt_f64, load_study, DEFAULT_STORAGE};
use crate::frozen::TrialState;
use crate::report;

/// Arguments of `tune export`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Study name.
    study: String,
    /// Output file: `.json` writes JSON, anything else YAML.
    #[arg(short, long)]
    output: PathBuf,
    /// Storage URL: sqlite:///FILE or postgresql://USER@HOST:PORT/DATABASE (password from
    /// PGPASSWORD or ~/.pgpass).
    #[arg(long, env = "TUNE_STORAGE", hide_env_values = true, default_value = DEFAULT_STORAGE)]
    storage: String,
    /// Export this trial instead of the best one.
    #[arg(long)]
    trial: Option<i64>,
}

/// Runs the subcommand.
pub fn run(a: Args) -> anyhow::Result<i32> {
    let study = load_study(&a.storage, &a.study)?;
    let all = study.trials()?;
    let pbt = !crate::pbt::segments(&all).is_empty();
    let trial = match a.trial {
        Some(n) => study.trials()?.into_iter().find(|t| t.number == n).map(|t| (*t).clone()).ok_or_else(|| {
            crate::input_err!("study `{}` has no trial #{n}; `tune show {}` lists them", a.study, a.study)
        })?,
        None if pbt => crate::pbt::final_best(&all, study.direction()).map(|t| (*t).clone()).ok_or_else(|| {
            crate::input_err!("PBT study `{}` has no COMPLETE segment to export yet; run it first", a.study)
        })?,
        None => study.best_trial()?.ok_or_else(|| {
            crate::input_err!("study `{}` has no COMPLETE trial to export yet; run it first", a.study)
        })?,
    };
    if trial.state != TrialState::Complete {
        eprintln!("warning: trial #{} is {}, not COMPLETE", trial.number, trial.state);
    }
    let base = report::base_config(&study)?.ok_or_else(|| {
        crate::input_err!("study `{}` was not created by `tune run`, so its base config is unknown", a.study)
    })?;
    let config = if pbt {
        // The schedule of hyperparameters along the chain of learners that ends at the trial.
        crate::pbt::export_config(base, &crate::pbt::chain(&all, trial.number))?
    } else {
        report::trial_config(base, &trial)?
    };
    let header = format!(
        "Exported by tune {} from study `{}`, trial #{} (value {}) on {} UTC.",
        env!("CARGO_PKG_VERSION"),
        a.study,
        trial.number,
        fmt_f64(trial.value),
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S")
    );
    let is_json = a.output.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let text = if is_json {
        let mut obj = serde_json::Map::new();
        obj.insert("_comment".into(), Value::from(header));
        match config {
            Value::Object(m) => obj.extend(m),
            other => {
                obj.insert("config".into(), other);
            }
        }
        serde_json::to_string_pretty(&Value::Object(obj))? + "\n"
    } else {
        format!("# {header}\n{}", serde_norway::to_string(&config)?)
    };
    // Write to a temporary file and rename, so a failure never leaves half a config behind.
    let tmp = a.output.with_extension("tmp-export");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &a.output).with_context(|| format!("writing {}", a.output.display()))?;
    println!("Wrote trial #{} of `{}` to {}", trial.number, a.study, a.output.display());
    Ok(0)
}
