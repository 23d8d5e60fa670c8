//! Pruners decide from intermediate values whether a running trial should stop early
//! (Optuna's `BasePruner.prune`).

use std::sync::Arc;

use crate::frozen::FrozenTrial;
use crate::sampler::StudyView;

mod hyperband;
mod nop;
mod patient;
mod percentile;
mod successive_halving;
mod threshold;

pub use hyperband::{HyperbandConfig, HyperbandPruner, MaxResource};
pub use nop::NopPruner;
pub use patient::{PatientConfig, PatientPruner};
pub use percentile::{nan_percentile, MedianConfig, PercentileConfig, PercentilePruner};
pub use successive_halving::{MinResource, SuccessiveHalvingConfig, SuccessiveHalvingPruner};
pub use threshold::{ThresholdConfig, ThresholdPruner};

/// How a step count that may be estimated is written in YAML: an integer or the string `auto`
/// (`min_resource` of successive halving, `max_resource` of Hyperband).
#[derive(serde::Deserialize)]
#[serde(untagged)]
pub(crate) enum StepsOrAuto {
    Steps(i64),
    Text(String),
}

/// Answers one question: should this trial stop now?
pub trait Pruner: Send + Sync {
    /// True when `trial` (RUNNING, with its latest intermediate values) should be pruned.
    fn prune(&self, study: &StudyView, trial: &FrozenTrial) -> bool;

    /// The trials the sampler should learn from for `trial`, when the pruner narrows them
    /// (Hyperband shows a trial only its own bracket, as Optuna's `_filter_study` does);
    /// `None`, the default, shows the whole study. Like Optuna, only the study's own pruner is
    /// asked: a pruner wrapped by `patient` does not narrow the sampler's view.
    fn sampler_trials(&self, _study: &StudyView, _trial: &FrozenTrial) -> Option<Vec<Arc<FrozenTrial>>> {
        None
    }
}

/// True when `step` is the first step the trial reported inside its current check window:
/// a trial that reports every 3 steps with `interval_steps = 5` is still checked once per
/// window, at the first report after the window opens (Optuna's `_is_first_in_interval_step`).
pub(crate) fn is_first_in_interval_step(
    step: i64,
    trial: &FrozenTrial,
    n_warmup_steps: i64,
    interval_steps: i64,
) -> bool {
    let nearest_lower_pruning_step =
        (step - n_warmup_steps).div_euclid(interval_steps) * interval_steps + n_warmup_steps;
    let second_last_step = trial.intermediate_values.keys().copied().filter(|&s| s != step).max().unwrap_or(-1);
    second_last_step < nearest_lower_pruning_step
}
