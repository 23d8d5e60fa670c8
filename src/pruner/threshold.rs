//! Prunes a trial whose latest intermediate value leaves `[lower, upper]` or is NaN (Optuna's
//! `ThresholdPruner`): a diverging RL run (NaN loss, exploding or collapsed return) stops at
//! its next check instead of using up its budget.

use serde::Deserialize;

use super::{is_first_in_interval_step, Pruner};
use crate::frozen::FrozenTrial;
use crate::sampler::StudyView;

/// YAML settings of `pruner: {type: threshold, lower: 10, upper: 1.0e6, ...}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThresholdConfig {
    /// Prune below this value (at least one of `lower` and `upper` is required).
    pub lower: Option<f64>,
    /// Prune above this value.
    pub upper: Option<f64>,
    /// No pruning before this step; the earliest prune is at `step == n_warmup_steps`.
    pub n_warmup_steps: i64,
    /// Steps between checks, counted from `n_warmup_steps` (at least 1).
    pub interval_steps: i64,
}

impl Default for ThresholdConfig {
    fn default() -> Self {
        ThresholdConfig { lower: None, upper: None, n_warmup_steps: 0, interval_steps: 1 }
    }
}

impl ThresholdConfig {
    /// Validates the settings (Optuna's rules) and builds the pruner.
    pub fn build(&self) -> Result<ThresholdPruner, String> {
        if self.lower.is_none() && self.upper.is_none() {
            return Err("Neither `lower` nor `upper` is given; the threshold pruner needs one or both".into());
        }
        for (name, v) in [("lower", self.lower), ("upper", self.upper)] {
            if v.is_some_and(f64::is_nan) {
                return Err(format!("`{name}` must be a number, not NaN"));
            }
        }
        let lower = self.lower.unwrap_or(f64::NEG_INFINITY);
        let upper = self.upper.unwrap_or(f64::INFINITY);
        if lower > upper {
            return Err(format!("`lower` ({lower}) must not be above `upper` ({upper})"));
        }
        if self.n_warmup_steps < 0 {
            return Err(format!("`n_warmup_steps` must be >= 0 (got {})", self.n_warmup_steps));
        }
        if self.interval_steps < 1 {
            return Err(format!("`interval_steps` must be >= 1 (got {})", self.interval_steps));
        }
        Ok(ThresholdPruner { lower, upper, n_warmup_steps: self.n_warmup_steps, interval_steps: self.interval_steps })
    }
}

/// Built from a validated [`ThresholdConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdPruner {
    lower: f64,
    upper: f64,
    n_warmup_steps: i64,
    interval_steps: i64,
}

impl Pruner for ThresholdPruner {
    fn prune(&self, _study: &StudyView, trial: &FrozenTrial) -> bool {
        let Some(step) = trial.last_step() else { return false };
        if step < self.n_warmup_steps
            || !is_first_in_interval_step(step, trial, self.n_warmup_steps, self.interval_steps)
        {
            return false;
        }
        let latest = trial.intermediate_values[&step];
        latest.is_nan() || latest < self.lower || latest > self.upper
    }
}
