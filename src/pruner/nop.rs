//! The pruner that never prunes (Optuna's `NopPruner`): every trial runs to completion.

use super::Pruner;
use crate::frozen::FrozenTrial;
use crate::sampler::StudyView;

/// Never prunes; the default when a study names no pruner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NopPruner;

impl Pruner for NopPruner {
    fn prune(&self, _study: &StudyView, _trial: &FrozenTrial) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frozen::{Direction, TrialState};

    #[test]
    fn never_prunes_even_a_hopeless_trial() {
        let mut done = FrozenTrial::new(0, 0, TrialState::Complete);
        done.intermediate_values.insert(0, 0.0);
        let mut bad = FrozenTrial::new(1, 1, TrialState::Running);
        bad.intermediate_values.insert(0, f64::NAN);
        let trials = vec![done, bad.clone()];
        let view = StudyView { direction: Direction::Minimize, trials: &crate::sampler::shared(&trials) };
        assert!(!NopPruner.prune(&view, &bad));
    }
}
