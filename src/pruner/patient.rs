//! Spares a trial until its curve has turned back, then defers to a wrapped pruner, or prunes
//! by itself without one (Optuna's `PatientPruner`): the trial has stalled when the best of its
//! last `patience + 1` reports is worse than its best before them by more than `min_delta`
//! (Optuna's exact rule; a flat curve with `min_delta: 0` has not stalled).

use serde::Deserialize;

use super::Pruner;
use crate::frozen::{Direction, FrozenTrial};
use crate::sampler::StudyView;

/// YAML settings of `pruner: {type: patient, patience: 3, min_delta: 0.0, wrapped: {...}}`,
/// without `wrapped` (the study-file loader reads it as a pruner section of its own).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatientConfig {
    /// Reports after the best one that are tolerated.
    pub patience: usize,
    /// How much worse than the earlier best the recent best may be (>= 0).
    #[serde(default)]
    pub min_delta: f64,
}

impl PatientConfig {
    /// Validates the settings and builds the pruner around `wrapped` (`None`: prune once the
    /// trial has stalled).
    pub fn build(&self, wrapped: Option<Box<dyn Pruner>>) -> Result<PatientPruner, String> {
        if !(self.min_delta >= 0.0 && self.min_delta.is_finite()) {
            return Err(format!("`min_delta` must be a number >= 0 (got {})", self.min_delta));
        }
        Ok(PatientPruner { patience: self.patience, min_delta: self.min_delta, wrapped })
    }
}

/// Built from a validated [`PatientConfig`].
pub struct PatientPruner {
    patience: usize,
    min_delta: f64,
    wrapped: Option<Box<dyn Pruner>>,
}

/// The best of `values` ignoring NaN, NaN when all are (NumPy's `nanmin` / `nanmax`).
fn nan_best(values: impl Iterator<Item = f64>, direction: Direction) -> f64 {
    values.filter(|v| !v.is_nan()).fold(f64::NAN, |best, v| match direction {
        _ if best.is_nan() => v,
        Direction::Minimize => best.min(v),
        Direction::Maximize => best.max(v),
    })
}

impl Pruner for PatientPruner {
    fn prune(&self, study: &StudyView, trial: &FrozenTrial) -> bool {
        let values = &trial.intermediate_values;
        if values.len() <= self.patience + 1 {
            return false;
        }
        // `intermediate_values` is ordered by step.
        let split = values.len() - self.patience - 1;
        let before = nan_best(values.values().take(split).copied(), study.direction);
        let after = nan_best(values.values().skip(split).copied(), study.direction);
        // A NaN on either side compares false, as in NumPy: no verdict of stalling.
        let stalled = match study.direction {
            Direction::Minimize => before + self.min_delta < after,
            Direction::Maximize => before - self.min_delta > after,
        };
        stalled && self.wrapped.as_ref().is_none_or(|w| w.prune(study, trial))
    }
}
