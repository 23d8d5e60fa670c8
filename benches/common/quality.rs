//! What the search-quality benches (`tpe_quality`, `gp_quality`) share: a study of a built-in
//! test function, the reference file Optuna's half wrote, and the statistics of the table.

use std::sync::Arc;

use serde_json::Value;
use tune::objective::functions::FunctionName;
use tune::sampler::Sampler;
use tune::{Direction, Study};

/// The best value of one study of `n_trials` on `name` in `dim` dimensions with `sampler`
/// (parameters `x.0`, `x.1`, ... as the Python scripts name them).
pub fn best_value(name: FunctionName, dim: usize, sampler: Arc<dyn Sampler>, n_trials: usize) -> f64 {
    let study = study_of(name, dim, sampler, n_trials, |_| {});
    study.best_trial().unwrap().and_then(|t| t.value).expect("a trial completed")
}

/// Runs a study on `name`, calling `after` with the number of finished trials after each.
pub fn study_of(
    name: FunctionName,
    dim: usize,
    sampler: Arc<dyn Sampler>,
    n_trials: usize,
    mut after: impl FnMut(usize),
) -> Study {
    let bounds = name.bounds(dim);
    let study = Study::in_memory("quality", Direction::Minimize, sampler).unwrap();
    for k in 0..n_trials {
        study
            .optimize(1, |trial| {
                let x = bounds
                    .iter()
                    .enumerate()
                    .map(|(i, &(lo, hi))| trial.suggest_float(&format!("x.{i}"), lo, hi))
                    .collect::<anyhow::Result<Vec<f64>>>()?;
                Ok(name.eval(&x))
            })
            .unwrap();
        after(k + 1);
    }
    study
}

/// The median (NumPy's `nanpercentile` at 50, as the pruners use it).
pub fn median(v: Vec<f64>) -> f64 {
    tune::pruner::nan_percentile(v, 50.0)
}

/// The reference file's results for `name`/`dim`: median best, the best value of each seed,
/// and seconds per study.
pub fn reference(optuna: &Option<Value>, name: FunctionName, dim: usize) -> Option<(f64, Vec<f64>, f64)> {
    let r =
        optuna.as_ref()?["results"].as_array()?.iter().find(|r| r["function"] == name.as_str() && r["dim"] == dim)?;
    let per_seed = r["best_per_seed"].as_array()?.iter().filter_map(Value::as_f64).collect();
    Some((r["median_best"].as_f64()?, per_seed, r["secs_per_study"].as_f64().unwrap_or(f64::NAN)))
}

/// The chance that one study of `ours` ends better (lower) than one of `theirs` (ties count
/// half): the Mann-Whitney common-language effect size. Medians of a few seeds are noisy; this
/// uses every pair of studies, and 0.5 means "no difference".
pub fn prob_better(ours: &[f64], theirs: &[f64]) -> f64 {
    let wins: f64 = ours
        .iter()
        .flat_map(|a| {
            theirs.iter().map(move |b| {
                if a < b {
                    1.0
                } else if a == b {
                    0.5
                } else {
                    0.0
                }
            })
        })
        .sum();
    wins / (ours.len() * theirs.len()) as f64
}

/// How many standard errors `p` (from `prob_better` over `n1` and `n2` studies) lies from 0.5,
/// the value when both samplers perform alike (the normal approximation of the Mann-Whitney U
/// statistic): below -1.64, ours is worse at the 5% level (one-sided).
pub fn z_score(p: f64, n1: usize, n2: usize) -> f64 {
    let (n1, n2) = (n1 as f64, n2 as f64);
    (p - 0.5) / ((n1 + n2 + 1.0) / (12.0 * n1 * n2)).sqrt()
}

/// Reads a reference file written by one of the Python scripts; `None` (with a note on how to
/// make it) when there is none.
pub fn read_reference(path: &std::path::Path, script: &str) -> Option<Value> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(serde_json::from_str(&text).expect("the reference file is JSON")),
        Err(_) => {
            eprintln!(
                "no Optuna reference at {} (run `.venv/bin/python scripts/{script}`); printing ours only",
                path.display()
            );
            None
        }
    }
}
