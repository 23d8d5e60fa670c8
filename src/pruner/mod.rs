//! Pruners decide from intermediate values whether a running trial should stop early
//! (Optuna's `BasePruner.prune`).

use crate::frozen::FrozenTrial;
use crate::sampler::StudyView;

mod nop;
mod percentile;
mod successive_halving;

pub use nop::NopPruner;
pub use percentile::{nan_percentile, MedianConfig, PercentileConfig, PercentilePruner};
pub use successive_halving::{MinResource, SuccessiveHalvingConfig, SuccessiveHalvingPruner};

/// Answers one question: should this trial stop now?
pub trait Pruner: Send + Sync {
    /// True when `trial` (RUNNING, with its latest intermediate values) should be pruned.
    fn prune(&self, study: &StudyView, trial: &FrozenTrial) -> bool;
}
