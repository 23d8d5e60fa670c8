//! Hyperband (Li et al., JMLR 18(185), 2018) as Optuna 5.0's `HyperbandPruner` runs it: several
//! brackets of asynchronous successive halving, bracket `s` starting its first rung at
//! `min_resource * reduction_factor^s`, so that some brackets judge early and others give every
//! trial a long run before the first cut.
//!
//! A trial's bracket is fixed by its number: `crc32("{study_name}_{number}")` modulo the total
//! budget, walked through the brackets' budgets `ceil(n_brackets * eta^(n-1-s) / (s+1))`. Each
//! bracket's halving compares a trial only with the trials of its own bracket, and the sampler
//! is shown only those trials too ([`Pruner::sampler_trials`]), as Optuna filters the study.
//!
//! With `max_resource: auto`, the number of brackets comes from the first trial to complete
//! with intermediate values (`last_step + 1`); until then nothing is pruned and samplers see the
//! whole study, and the trials finished by then compete at no rung (Optuna's pruner never
//! checked them, so it recorded no rung values for them). Optuna takes it from every trial complete at its first check after that, which
//! is the same trial when trials run one at a time, and keeps it for the process; this pruner
//! reads it back from the study instead, so a resumed run gets the same brackets. Optuna also
//! shows samplers the whole study until its pruner's first check in the process; a fixed
//! `max_resource` filters from the first trial on here.

use std::sync::Arc;

use serde::Deserialize;

use super::successive_halving::{completion_key, CompletionKey};
use super::{MinResource, StepsOrAuto};
use super::{Pruner, SuccessiveHalvingConfig, SuccessiveHalvingPruner};
use crate::frozen::{FrozenTrial, TrialState};
use crate::sampler::StudyView;

/// The largest step a trial may run for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "StepsOrAuto")]
pub enum MaxResource {
    /// `last_step + 1` of the first trial to complete with intermediate values.
    #[default]
    Auto,
    /// A fixed number of steps (at least `min_resource`).
    Steps(i64),
}

impl TryFrom<StepsOrAuto> for MaxResource {
    type Error = String;

    fn try_from(raw: StepsOrAuto) -> Result<Self, String> {
        match raw {
            StepsOrAuto::Steps(n) => Ok(MaxResource::Steps(n)),
            StepsOrAuto::Text(s) if s == "auto" => Ok(MaxResource::Auto),
            StepsOrAuto::Text(s) => {
                Err(format!("`max_resource` must be an integer >= min_resource or \"auto\" (got \"{s}\")"))
            }
        }
    }
}

/// YAML settings of `pruner: {type: hyperband, ...}` (Optuna's defaults).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HyperbandConfig {
    /// Steps before the first rung of the most aggressive bracket ends (at least 1).
    pub min_resource: i64,
    /// The largest step a trial runs for, or `auto`.
    pub max_resource: MaxResource,
    /// Each rung keeps the top `1 / reduction_factor` (at least 2).
    pub reduction_factor: i64,
    /// Trials that must reach a rung before any is promoted past it. Needs a fixed
    /// `max_resource`.
    pub bootstrap_count: usize,
}

impl Default for HyperbandConfig {
    fn default() -> Self {
        HyperbandConfig { min_resource: 1, max_resource: MaxResource::Auto, reduction_factor: 3, bootstrap_count: 0 }
    }
}

impl HyperbandConfig {
    /// Validates the settings and builds the pruner of study `study_name` (the name chooses
    /// each trial's bracket, as in Optuna, so a study is reproducible only under its own name).
    pub fn build(&self, study_name: &str) -> Result<HyperbandPruner, String> {
        if self.min_resource < 1 {
            return Err(format!("`min_resource` must be an integer >= 1 (got {})", self.min_resource));
        }
        if self.reduction_factor < 2 {
            return Err(format!("`reduction_factor` must be >= 2 (got {})", self.reduction_factor));
        }
        match self.max_resource {
            MaxResource::Steps(n) if n < self.min_resource => {
                return Err(format!(
                    "`max_resource` must be an integer >= min_resource ({}) or \"auto\" (got {n})",
                    self.min_resource
                ));
            }
            MaxResource::Auto if self.bootstrap_count > 0 => {
                return Err(format!(
                    "`bootstrap_count: {}` needs a fixed `max_resource` (an integer), not \"auto\"",
                    self.bootstrap_count
                ));
            }
            _ => {}
        }
        if let MaxResource::Steps(n) = self.max_resource {
            if Brackets::new(n, self).is_none() {
                return Err(format!(
                    "`max_resource / min_resource` = {n} / {} gives {} brackets, too many to share trials among; raise `reduction_factor` or `min_resource` (4 to 6 brackets is usual)",
                    self.min_resource,
                    Brackets::count(n, self.min_resource, self.reduction_factor)
                ));
            }
        }
        Ok(HyperbandPruner { config: self.clone(), study_name: study_name.to_string() })
    }

    /// Bracket `s`'s successive halving: `min_early_stopping_rate = s`.
    fn halving(&self, bracket: usize) -> SuccessiveHalvingPruner {
        SuccessiveHalvingConfig {
            min_resource: MinResource::Steps(self.min_resource),
            reduction_factor: self.reduction_factor,
            min_early_stopping_rate: bracket as i64,
            bootstrap_count: self.bootstrap_count,
        }
        .build()
        .expect("validated with the Hyperband settings")
    }
}

/// Built from a validated [`HyperbandConfig`].
#[derive(Debug, Clone)]
pub struct HyperbandPruner {
    config: HyperbandConfig,
    study_name: String,
}

/// The brackets of a study once `max_resource` is known.
#[derive(Debug, Clone, PartialEq)]
struct Brackets {
    /// Each bracket's share of trials (Optuna's trial allocation budgets).
    budgets: Vec<u64>,
    total: u64,
}

impl Brackets {
    /// `floor(log_eta(max / min)) + 1`, in floating point as Optuna computes it (0 or less
    /// when `max < min`, which gives no brackets).
    fn count(max_resource: i64, min_resource: i64, eta: i64) -> i64 {
        ((max_resource as f64 / min_resource as f64).ln() / (eta as f64).ln()).floor() as i64 + 1
    }

    /// The brackets for `max_resource`; `None` when there are none (`max < min`) or so many
    /// that their budgets leave f64's exact integers (Optuna computes them in floating point;
    /// they agree below 2^52).
    fn new(max_resource: i64, config: &HyperbandConfig) -> Option<Brackets> {
        let n = Brackets::count(max_resource, config.min_resource, config.reduction_factor);
        if !(1..=64).contains(&n) {
            return None;
        }
        let eta = config.reduction_factor as f64;
        let budgets: Vec<f64> = (0..n)
            .map(|s| {
                let rest = n - 1 - s;
                (n as f64 * eta.powi(rest as i32) / (rest + 1) as f64).ceil()
            })
            .collect();
        let total: f64 = budgets.iter().sum();
        if total > 2f64.powi(52) {
            return None;
        }
        Some(Brackets { budgets: budgets.iter().map(|&b| b as u64).collect(), total: total as u64 })
    }

    /// The bracket of trial `number` of study `study_name`.
    fn of(&self, study_name: &str, number: i64) -> usize {
        let mut n = crc32fast::hash(format!("{study_name}_{number}").as_bytes()) as u64 % self.total;
        for (s, &b) in self.budgets.iter().enumerate() {
            if n < b {
                return s;
            }
            n -= b;
        }
        unreachable!("the budgets sum to the modulus")
    }
}

impl HyperbandPruner {
    /// The validated settings.
    pub fn config(&self) -> &HyperbandConfig {
        &self.config
    }

    /// The brackets, once `max_resource` is known, and with `auto`, the completion key of the
    /// trial it was taken from.
    fn brackets(&self, trials: &[Arc<FrozenTrial>]) -> Option<(Brackets, Option<CompletionKey>)> {
        let (max_resource, known_since) = match self.config.max_resource {
            MaxResource::Steps(n) => (n, None),
            MaxResource::Auto => {
                let first = trials
                    .iter()
                    .filter(|t| t.state == TrialState::Complete && t.last_step().is_some())
                    .min_by_key(|t| completion_key(t))?;
                (first.last_step()?.saturating_add(1), Some(completion_key(first)))
            }
        };
        Some((Brackets::new(max_resource, &self.config)?, known_since))
    }

    /// The bracket of trial `number` (`None` until the brackets are known): for tests and
    /// reports.
    pub fn bracket_of(&self, study: &StudyView, number: i64) -> Option<usize> {
        Some(self.brackets(study.trials)?.0.of(&self.study_name, number))
    }

    /// `trial`'s bracket and the trials in it, once there are brackets.
    fn bracket_trials(
        &self,
        study: &StudyView,
        trial: &FrozenTrial,
    ) -> Option<(usize, Vec<Arc<FrozenTrial>>, Option<CompletionKey>)> {
        let (brackets, known_since) = self.brackets(study.trials)?;
        let mine = brackets.of(&self.study_name, trial.number);
        let same = study.trials.iter().filter(|t| brackets.of(&self.study_name, t.number) == mine).cloned().collect();
        Some((mine, same, known_since))
    }
}

impl Pruner for HyperbandPruner {
    fn prune(&self, study: &StudyView, trial: &FrozenTrial) -> bool {
        let Some((bracket, mut trials, known_since)) = self.bracket_trials(study, trial) else {
            return false;
        };
        // With `auto`, trials that finished before the brackets existed were never checked at
        // a rung, so Optuna recorded no rung values for them: they do not compete.
        if let Some(key) = known_since {
            trials.retain(|t| !(t.state.is_finished() && completion_key(t) <= key));
        }
        self.config.halving(bracket).prune(&StudyView { direction: study.direction, trials: &trials }, trial)
    }

    fn sampler_trials(&self, study: &StudyView, trial: &FrozenTrial) -> Option<Vec<Arc<FrozenTrial>>> {
        self.bracket_trials(study, trial).map(|(_, trials, _)| trials)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frozen::Direction;

    fn config(max_resource: MaxResource, reduction_factor: i64) -> HyperbandConfig {
        HyperbandConfig { max_resource, reduction_factor, ..HyperbandConfig::default() }
    }

    #[test]
    fn bracket_budgets_are_optunas() {
        // Optuna: HyperbandPruner(min_resource=1, max_resource=81, reduction_factor=3) has 5
        // brackets with budgets ceil(5 * 3^s / (s + 1)) for s = 4..0: 81, 34, 15, 8, 5 (as
        // printed by its `_trial_allocation_budgets`).
        let b = Brackets::new(81, &config(MaxResource::Steps(81), 3)).unwrap();
        assert_eq!(b.budgets, vec![81, 34, 15, 8, 5]);
        assert_eq!(b.total, 143);
        // log_3(100) = 4.19: still 5 brackets. log(243) / log(3) rounds to 4.999999999999999,
        // so 243 = 3^5 gives 5 brackets too, in Python as here.
        assert_eq!(Brackets::count(100, 1, 3), 5);
        assert_eq!(Brackets::count(243, 1, 3), 5);
        assert_eq!(Brackets::count(244, 1, 3), 6);
        assert_eq!(Brackets::count(1, 1, 3), 1);
        assert!(Brackets::new(1, &config(MaxResource::Steps(1), 3)).is_some());
        assert!(Brackets::new(0, &config(MaxResource::Auto, 3)).is_none());
    }

    #[test]
    fn bracket_ids_walk_the_budgets_by_crc32() {
        // CRC-32 (IEEE), as Python's binascii.crc32: the standard check value.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        let b = Brackets::new(81, &config(MaxResource::Steps(81), 3)).unwrap();
        // Bracket shares over many numbers follow the budgets 81 : 34 : 15 : 8 : 5.
        let mut seen = [0usize; 5];
        for number in 0..143_000 {
            seen[b.of("study", number)] += 1;
        }
        for (s, &budget) in b.budgets.iter().enumerate() {
            let share = seen[s] as f64 / 143_000.0;
            assert!((share - budget as f64 / 143.0).abs() < 0.01, "bracket {s}: {share}");
        }
    }

    #[test]
    fn settings_are_checked() {
        let bad = [
            HyperbandConfig { min_resource: 0, ..HyperbandConfig::default() },
            HyperbandConfig { reduction_factor: 1, ..HyperbandConfig::default() },
            HyperbandConfig { min_resource: 10, max_resource: MaxResource::Steps(5), ..HyperbandConfig::default() },
            HyperbandConfig { bootstrap_count: 2, ..HyperbandConfig::default() },
            HyperbandConfig {
                max_resource: MaxResource::Steps(i64::MAX),
                reduction_factor: 2,
                ..HyperbandConfig::default()
            },
            HyperbandConfig {
                max_resource: MaxResource::Steps(i64::MAX),
                reduction_factor: 3,
                ..HyperbandConfig::default()
            },
        ];
        for c in bad {
            assert!(c.build("s").is_err(), "{c:?}");
        }
        let ok =
            HyperbandConfig { max_resource: MaxResource::Steps(100), bootstrap_count: 2, ..HyperbandConfig::default() };
        ok.build("s").unwrap();
    }

    #[test]
    fn nothing_is_pruned_or_filtered_before_max_resource_is_known() {
        let pruner = HyperbandConfig::default().build("s").unwrap();
        let mut t = FrozenTrial::new(0, 0, TrialState::Running);
        t.intermediate_values.insert(5, f64::NAN);
        let trials = vec![Arc::new(t.clone())];
        let view = StudyView { direction: Direction::Minimize, trials: &trials };
        assert!(!pruner.prune(&view, &t));
        assert!(pruner.sampler_trials(&view, &t).is_none());
    }
}
