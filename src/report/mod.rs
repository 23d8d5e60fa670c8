//! Study reports (`tune report`): PNG figures (optimisation history, intermediate values,
//! parameter importances), a Markdown summary with the best configs, and the config that
//! reproduces a trial (shared with `tune export`).

mod config;
mod fanova;
mod forest;
mod importance;
mod plots;
mod summary;

use std::path::{Path, PathBuf};

use anyhow::Context;

pub use config::{base_config, trial_config};
pub use forest::ForestConfig;
pub use importance::{intersection_search_space, param_importances, Importances};
pub use plots::{Plot, SIZE as FIGURE_SIZE};

use crate::study::Study;

/// File name of the optimisation-history figure.
pub const HISTORY_PNG: &str = "history.png";
/// File name of the intermediate-values figure.
pub const INTERMEDIATE_PNG: &str = "intermediate.png";
/// File name of the parameter-importances figure.
pub const IMPORTANCES_PNG: &str = "importances.png";
/// File name of the Markdown summary.
pub const SUMMARY_MD: &str = "summary.md";

/// What `write_report` wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// The files written, summary last.
    pub files: Vec<PathBuf>,
    /// One line per figure that was not drawn, with the reason.
    pub skipped: Vec<String>,
}

/// Writes the report of `study` into `dir` (created if needed): the figures that have data and
/// `summary.md`. `storage` is the study's storage URL, quoted in the summary for
/// optuna-dashboard. Importances use Optuna's fANOVA defaults with seed 0, so a report is
/// reproducible.
pub fn write_report(study: &Study, dir: &Path, storage: Option<&str>) -> anyhow::Result<Written> {
    let trials = study.trials()?;
    let best = study.best_trial()?;
    let importances = param_importances(&trials, &ForestConfig::default());
    let best_config = match (base_config(study)?, &best) {
        (Some(base), Some(b)) => Some(trial_config(base, b).map_err(|e| format!("{e:#}"))),
        _ => None,
    };

    let figures: [(&str, &str, Plot); 3] = [
        (HISTORY_PNG, "Optimisation history", plots::history(&trials, study.direction())?),
        (INTERMEDIATE_PNG, "Intermediate values", plots::intermediate(&trials)?),
        (
            IMPORTANCES_PNG,
            "Parameter importances",
            match &importances {
                Ok(imp) => Plot::Png(plots::importances(imp)?),
                Err(reason) => Plot::Skipped(format!("importances not assessed ({reason})")),
            },
        ),
    ];

    let pbt = pbt_figures(&trials)?;
    let figures: Vec<(&str, &str, Plot)> =
        figures.into_iter().chain(pbt.iter().map(|(f, t, p)| (f.as_str(), t.as_str(), p.clone()))).collect();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Written { files: Vec::new(), skipped: Vec::new() };
    let mut listed = Vec::new();
    for (file, title, plot) in &figures {
        match plot {
            Plot::Png(bytes) => {
                written.files.push(write_file(dir, file, bytes)?);
                listed.push((*file, *title, None));
            }
            Plot::Skipped(reason) => {
                written.skipped.push(format!("{file}: {reason}"));
                listed.push((*file, *title, Some(reason.clone())));
            }
        }
    }
    let md = summary::markdown(&summary::Summary {
        study: study.name(),
        direction: study.direction(),
        storage,
        trials: &trials,
        best: best.as_ref(),
        best_config,
        importances: &importances,
        figures: &listed,
        pbt: pbt_schedule_table(&trials, study.direction()),
    });
    written.files.push(write_file(dir, SUMMARY_MD, md.as_bytes())?);
    Ok(written)
}

/// For a PBT study, one figure per hyperparameter: its schedule over environment steps, one
/// colour per member (`pbt_<name>.png`); none for other studies.
fn pbt_figures(trials: &[std::sync::Arc<crate::frozen::FrozenTrial>]) -> anyhow::Result<Vec<(String, String, Plot)>> {
    let segs = crate::pbt::segments(trials);
    let settled: Vec<_> = segs.iter().filter(|(t, _)| t.state.is_finished() && !t.interrupted()).collect();
    let mut names: Vec<String> = settled.iter().flat_map(|(t, _)| t.params.keys().cloned()).collect();
    names.sort();
    names.dedup();
    let mut out = Vec::new();
    for name in names {
        let mut categories: Option<Vec<String>> = None;
        let mut values = Vec::new();
        for (t, s) in &settled {
            let (Some(v), Some(d)) = (t.params.get(&name), t.distributions.get(&name)) else { continue };
            // Categoricals are drawn at their choice index (the internal value).
            if let crate::distribution::Distribution::Categorical { choices } = d {
                categories.get_or_insert_with(|| choices.iter().map(crate::cli::fmt_value).collect());
            }
            values.push((s.member, s.start_step as i64, s.end_step as i64, *v, s.exploited));
        }
        let file = format!("pbt_{}.png", name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
        let title = format!("PBT schedule of {name}");
        out.push((file, title, plots::pbt_schedule(&name, &values, categories.as_deref())?));
    }
    Ok(out)
}

/// The best final member's schedule, `(first step, parameters, trial, value)` per segment.
fn pbt_schedule_table(
    trials: &[std::sync::Arc<crate::frozen::FrozenTrial>],
    direction: crate::frozen::Direction,
) -> Option<Vec<crate::pbt::ScheduleRow>> {
    let best = crate::pbt::final_best(trials, direction)?;
    Some(crate::pbt::schedule(&crate::pbt::chain(trials, best.number)))
}

/// Writes through a temporary file and a rename, so a failure never leaves half a file.
fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
