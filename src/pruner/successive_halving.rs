//! Asynchronous successive halving (ASHA; Li et al., "A System for Massively Parallel
//! Hyperparameter Tuning", MLSys 2020, arXiv:1810.05934), with the semantics of Optuna's
//! `SuccessiveHalvingPruner` (optuna/pruners/_successive_halving.py, 5.0).
//!
//! Rung `k` ends at step `min_resource * reduction_factor^(min_early_stopping_rate + k)`. When a
//! trial first reports at or past the end of a rung, its value there is compared with the values
//! every other trial had when it reached that rung; it goes on only if it is in the top
//! `1 / reduction_factor` of them (or the best, while fewer than `reduction_factor` trials
//! competed).
//!
//! Optuna records each trial's rung values as system attributes as it passes them; this pruner
//! is stateless and reads them back from the intermediate values instead: a trial's value at a
//! rung is its value at its first reported step at or past the rung's end. That is exactly what
//! Optuna records when the objective asks `should_prune` after every report, as ours do.
//! A PRUNED trial counts at the rungs it passed plus the one it was stopped at; when its last
//! report jumped past several rungs, which of them it passed is decided again against the
//! trials that finished before it, as Optuna decided it then (trials running at that moment,
//! which Optuna also counted, are not known afterwards).
//!
//! With `min_resource: auto`, trials that finished before the first trial completed (the one
//! the estimate comes from, itself included) count at no rung, as in Optuna, which had no rungs
//! to check them against. Trials running across that moment are read as if checked all along,
//! where Optuna judges the rungs they already passed at their next check, with that step's
//! value; a fixed `min_resource` avoids the difference.

use std::sync::Arc;

use chrono::NaiveDateTime;
use serde::Deserialize;

use super::{Pruner, StepsOrAuto};
use crate::frozen::{Direction, FrozenTrial, TrialState};
use crate::sampler::StudyView;

/// The resource (step count) at which the first rung ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "StepsOrAuto")]
pub enum MinResource {
    /// `max(last_step / 100, 1)` of the first trial to complete with intermediate values
    /// (Optuna's heuristic); no pruning until one has.
    #[default]
    Auto,
    /// A fixed number of steps (at least 1).
    Steps(i64),
}

impl TryFrom<StepsOrAuto> for MinResource {
    type Error = String;

    fn try_from(raw: StepsOrAuto) -> Result<Self, String> {
        match raw {
            StepsOrAuto::Steps(n) => Ok(MinResource::Steps(n)),
            StepsOrAuto::Text(s) if s == "auto" => Ok(MinResource::Auto),
            StepsOrAuto::Text(s) => Err(format!("`min_resource` must be an integer >= 1 or \"auto\" (got \"{s}\")")),
        }
    }
}

/// YAML settings of `pruner: {type: successive_halving, ...}` (Optuna's defaults).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SuccessiveHalvingConfig {
    /// Steps before the first rung ends: an integer >= 1, or `auto`.
    pub min_resource: MinResource,
    /// Keep the top `1 / reduction_factor` at each rung (at least 2).
    pub reduction_factor: i64,
    /// Skips the first rungs: the first one ends at `min_resource * reduction_factor^rate`.
    pub min_early_stopping_rate: i64,
    /// Trials that must reach a rung before any trial is promoted past it; a trial reaching
    /// it among the first `bootstrap_count` is pruned. Needs a fixed `min_resource`.
    pub bootstrap_count: usize,
}

impl Default for SuccessiveHalvingConfig {
    fn default() -> Self {
        SuccessiveHalvingConfig {
            min_resource: MinResource::Auto,
            reduction_factor: 4,
            min_early_stopping_rate: 0,
            bootstrap_count: 0,
        }
    }
}

impl SuccessiveHalvingConfig {
    /// Validates the settings (Optuna's rules) and builds the pruner.
    pub fn build(&self) -> Result<SuccessiveHalvingPruner, String> {
        if let MinResource::Steps(n) = self.min_resource {
            if n < 1 {
                return Err(format!("`min_resource` must be an integer >= 1 or \"auto\" (got {n})"));
            }
        }
        if self.reduction_factor < 2 {
            return Err(format!("`reduction_factor` must be >= 2 (got {})", self.reduction_factor));
        }
        if self.min_early_stopping_rate < 0 {
            return Err(format!("`min_early_stopping_rate` must be >= 0 (got {})", self.min_early_stopping_rate));
        }
        if self.bootstrap_count > 0 && self.min_resource == MinResource::Auto {
            return Err(format!(
                "`bootstrap_count: {}` needs a fixed `min_resource` (an integer), not \"auto\"",
                self.bootstrap_count
            ));
        }
        Ok(SuccessiveHalvingPruner { config: self.clone() })
    }
}

/// ASHA pruning; built from a validated [`SuccessiveHalvingConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct SuccessiveHalvingPruner {
    config: SuccessiveHalvingConfig,
}

impl Default for SuccessiveHalvingPruner {
    fn default() -> Self {
        SuccessiveHalvingConfig::default().build().expect("the default settings are valid")
    }
}

impl SuccessiveHalvingPruner {
    /// The validated settings.
    pub fn config(&self) -> &SuccessiveHalvingConfig {
        &self.config
    }

    /// The step at which rung `rung` ends; `i64::MAX` once it no longer fits.
    fn rung_end(&self, min_resource: i64, rung: usize) -> i64 {
        let exponent = self.config.min_early_stopping_rate.saturating_add(rung as i64);
        let factor =
            u32::try_from(exponent).ok().and_then(|e| self.config.reduction_factor.checked_pow(e)).unwrap_or(i64::MAX);
        min_resource.saturating_mul(factor)
    }

    /// The values a trial that was not pruned recorded at each rung it reached, by rung: its
    /// value at its first report at or past each rung's end (see the module notes).
    fn rung_values(&self, t: &FrozenTrial, min_resource: i64) -> Vec<f64> {
        let mut out = vec![];
        for rung in 0.. {
            let end = self.rung_end(min_resource, rung);
            let Some((_, &value)) = t.intermediate_values.range(end..).next() else {
                break;
            };
            // Optuna prunes a NaN value before recording it.
            if value.is_nan() {
                break;
            }
            out.push(value);
        }
        out
    }

    /// The values a PRUNED trial recorded: those of the rungs it passed before its last
    /// report, then, at its last report, each rung that report reached, up to and including
    /// the first where it was not promotable against `earlier` (the rung values of the trials
    /// that finished before it). A report that jumps past several rungs is judged at each in
    /// turn, so Optuna may have recorded more than the first.
    fn pruned_rung_values(
        &self,
        t: &FrozenTrial,
        min_resource: i64,
        earlier: &[Vec<f64>],
        direction: Direction,
    ) -> Vec<f64> {
        let mut out = self.rung_values(t, min_resource);
        let Some(last) = t.last_step() else { return out };
        let previous = second_last_step(t, last);
        let before = (0..).take_while(|&k| self.rung_end(min_resource, k) <= previous).count();
        if out.len() <= before {
            return out;
        }
        let value = out[before];
        for rung in before..out.len() {
            let mut competing: Vec<f64> = earlier.iter().filter_map(|v| v.get(rung).copied()).collect();
            competing.push(value);
            if competing.len() <= self.config.bootstrap_count
                || !is_promotable(value, competing, self.config.reduction_factor, direction)
            {
                out.truncate(rung + 1);
                break;
            }
        }
        out
    }

    /// The rung values of `trials` as Optuna recorded them, finished trials in the order they
    /// finished (a pruned trial's depend on those before it), then running ones.
    fn recorded_rung_values<'t>(
        &self,
        trials: impl Iterator<Item = &'t Arc<FrozenTrial>>,
        min_resource: i64,
        direction: Direction,
    ) -> Vec<Vec<f64>> {
        let mut order: Vec<&FrozenTrial> = trials.map(|t| &**t).collect();
        order.sort_by_key(|t| (!t.state.is_finished(), completion_key(t)));
        let mut done: Vec<Vec<f64>> = Vec::with_capacity(order.len());
        for t in order {
            let v = if t.state == TrialState::Pruned {
                self.pruned_rung_values(t, min_resource, &done, direction)
            } else {
                self.rung_values(t, min_resource)
            };
            done.push(v);
        }
        done
    }
}

/// The step reported before `last`, or -1 when there is none.
fn second_last_step(t: &FrozenTrial, last: i64) -> i64 {
    t.intermediate_values.range(..last).next_back().map_or(-1, |(&s, _)| s)
}

/// When a trial finished, and its number.
pub(super) type CompletionKey = (Option<NaiveDateTime>, i64);

/// When a trial finished, for ordering trials by completion (number breaks ties and stands in
/// for hand-built trials without times).
pub(super) fn completion_key(t: &FrozenTrial) -> CompletionKey {
    (t.datetime_complete, t.number)
}

/// Optuna's `auto` heuristic, from the first trial to complete with intermediate values:
/// `max(last_step / 100, 1)`, and that trial's completion key.
fn estimate_min_resource(trials: &[Arc<FrozenTrial>]) -> Option<(i64, (Option<NaiveDateTime>, i64))> {
    let first = trials
        .iter()
        .filter(|t| t.state == TrialState::Complete && t.last_step().is_some())
        .min_by_key(|t| completion_key(t))?;
    Some((first.last_step()?.div_euclid(100).max(1), completion_key(first)))
}

/// True when `value` is in the top `1 / reduction_factor` of `competing` (which includes it);
/// while fewer than `reduction_factor` competed, only the best goes on (Optuna's rule, since
/// it cannot pause a trial to wait for more competitors).
fn is_promotable(value: f64, mut competing: Vec<f64>, reduction_factor: i64, direction: Direction) -> bool {
    let promotable_idx = (competing.len() / reduction_factor as usize).saturating_sub(1);
    competing.sort_by(f64::total_cmp);
    match direction {
        Direction::Maximize => value >= competing[competing.len() - 1 - promotable_idx],
        Direction::Minimize => value <= competing[promotable_idx],
    }
}

impl Pruner for SuccessiveHalvingPruner {
    fn prune(&self, study: &StudyView, trial: &FrozenTrial) -> bool {
        let Some(step) = trial.last_step() else {
            return false;
        };
        let (min_resource, known_since) = match self.config.min_resource {
            MinResource::Steps(n) => (n, None),
            MinResource::Auto => match estimate_min_resource(study.trials) {
                Some((n, key)) => (n, Some(key)),
                None => return false,
            },
        };
        let value = trial.intermediate_values[&step];
        // Rungs ended at or before the previous report were passed at earlier checks.
        let previous = second_last_step(trial, step);
        let mut rung = (0..).take_while(|&k| self.rung_end(min_resource, k) <= previous).count();
        let others = self.recorded_rung_values(
            study
                .trials
                .iter()
                .filter(|t| t.trial_id != trial.trial_id)
                // With `auto`, trials that finished before `min_resource` was known were never
                // checked against a rung, so Optuna recorded nothing for them.
                .filter(|t| !(t.state.is_finished() && known_since.is_some_and(|k| completion_key(t) <= k))),
            min_resource,
            study.direction,
        );
        loop {
            if step < self.rung_end(min_resource, rung) {
                return false;
            }
            if value.is_nan() {
                return true;
            }
            let mut competing: Vec<f64> = others.iter().filter_map(|v| v.get(rung).copied()).collect();
            competing.push(value);
            if competing.len() <= self.config.bootstrap_count {
                return true;
            }
            if !is_promotable(value, competing, self.config.reduction_factor, study.direction) {
                return true;
            }
            rung += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(number: i64, state: TrialState, curve: &[(i64, f64)]) -> FrozenTrial {
        let mut t = FrozenTrial::new(number, number, state);
        t.intermediate_values.extend(curve.iter().copied());
        if state == TrialState::Complete {
            t.value = curve.last().map(|&(_, v)| v);
        }
        t
    }

    fn fixed(min_resource: i64, reduction_factor: i64) -> SuccessiveHalvingPruner {
        SuccessiveHalvingConfig {
            min_resource: MinResource::Steps(min_resource),
            reduction_factor,
            ..SuccessiveHalvingConfig::default()
        }
        .build()
        .unwrap()
    }

    fn prune_with(
        pruner: &SuccessiveHalvingPruner,
        direction: Direction,
        others: &[FrozenTrial],
        t: &FrozenTrial,
    ) -> bool {
        let mut trials = others.to_vec();
        trials.push(t.clone());
        pruner.prune(&StudyView { direction, trials: &crate::sampler::shared(&trials) }, t)
    }

    #[test]
    fn no_pruning_before_the_first_rung_ends() {
        let pruner = fixed(3, 2);
        let others: Vec<FrozenTrial> = (0..4).map(|i| trial(i, TrialState::Complete, &[(3, 0.0)])).collect();
        let t = trial(9, TrialState::Running, &[(0, 9.0), (1, 9.0), (2, 9.0)]);
        assert!(!prune_with(&pruner, Direction::Minimize, &others, &t));
        let mut t = t;
        t.intermediate_values.insert(3, 9.0);
        assert!(prune_with(&pruner, Direction::Minimize, &others, &t));
    }

    #[test]
    fn the_first_trials_go_on_only_if_best_so_far() {
        // With eta = 4 and fewer than 4 competitors, only the best value is promoted.
        let pruner = fixed(1, 4);
        let first = trial(0, TrialState::Running, &[(1, 5.0)]);
        assert!(!prune_with(&pruner, Direction::Minimize, &[], &first));
        let worse = trial(1, TrialState::Running, &[(1, 6.0)]);
        assert!(prune_with(&pruner, Direction::Minimize, std::slice::from_ref(&first), &worse));
        assert!(!prune_with(&pruner, Direction::Maximize, std::slice::from_ref(&first), &worse));
        let tie = trial(1, TrialState::Running, &[(1, 5.0)]);
        assert!(!prune_with(&pruner, Direction::Minimize, &[first], &tie));
    }

    #[test]
    fn promotes_the_top_fraction_at_each_rung() {
        let pruner = fixed(1, 2);
        // Seven trials reached rung 0 (step 1) with values 0..7; with the current one, 8 compete
        // and the top 8 / 2 = 4 go on: values <= 3.
        let others: Vec<FrozenTrial> = (0..7).map(|i| trial(i, TrialState::Complete, &[(1, i as f64)])).collect();
        for (v, pruned) in [(2.5, false), (3.0, false), (3.5, true)] {
            let t = trial(9, TrialState::Running, &[(1, v)]);
            assert_eq!(prune_with(&pruner, Direction::Minimize, &others, &t), pruned, "value {v}");
        }
        // Maximising keeps the four largest: values >= 3 (sorted 0,1,2,3,4,5,6,v; 4th from top).
        for (v, pruned) in [(3.5, false), (2.5, true)] {
            let t = trial(9, TrialState::Running, &[(1, v)]);
            assert_eq!(prune_with(&pruner, Direction::Maximize, &others, &t), pruned, "value {v}");
        }
    }

    #[test]
    fn a_rung_value_is_the_first_report_at_or_past_its_end() {
        let pruner = fixed(2, 2); // rungs end at 2, 4, 8
                                  // Trial 0 reported at steps 1, 3 and 5 only: its rung-0 value is the one at step 3
                                  // (10.0), its rung-1 value the one at step 5 (0.0).
        let a = trial(0, TrialState::Complete, &[(1, 0.0), (3, 10.0), (5, 0.0)]);
        // The current trial reports 5.0 at step 2: better than 10.0, promoted.
        let t = trial(1, TrialState::Running, &[(2, 5.0)]);
        assert!(!prune_with(&pruner, Direction::Minimize, std::slice::from_ref(&a), &t));
        let t = trial(1, TrialState::Running, &[(2, 11.0)]);
        assert!(prune_with(&pruner, Direction::Minimize, std::slice::from_ref(&a), &t));
        // At rung 1 (step 4) the trial meets trial 0's value at step 5, 0.0.
        let t = trial(1, TrialState::Running, &[(2, 5.0), (4, 1.0)]);
        assert!(prune_with(&pruner, Direction::Minimize, &[a], &t));
    }

    #[test]
    fn passed_rungs_are_not_judged_again() {
        let pruner = fixed(1, 2); // rungs end at 1, 2, 4, 8
                                  // The trial passed rung 0 at step 1 (alone); a better trial arrived at rung 0 since.
        let better = trial(0, TrialState::Running, &[(1, 0.0)]);
        let t = trial(1, TrialState::Running, &[(1, 5.0), (2, 4.0)]);
        // At step 2 only rung 1 is judged, where nobody else competes: promoted.
        assert!(!prune_with(&pruner, Direction::Minimize, std::slice::from_ref(&better), &t));
        // Between rung ends nothing is judged at all.
        let t = trial(1, TrialState::Running, &[(1, 5.0), (2, 4.0), (3, 4.0)]);
        assert!(!prune_with(&pruner, Direction::Minimize, &[better], &t));
    }

    #[test]
    fn a_jump_past_several_rungs_judges_each_with_the_current_value() {
        let pruner = fixed(1, 2); // rungs end at 1, 2, 4
                                  // Two trials at rung 0 with 0.0 and 10.0, one at rung 1 with 0.0 (the first).
        let a = trial(0, TrialState::Complete, &[(1, 0.0), (2, 0.0)]);
        let b = trial(1, TrialState::Pruned, &[(1, 10.0)]);
        // 5.0 at step 4 is second of three at rung 0 (3 / 2 = 1 promotable: must be best): pruned.
        let t = trial(2, TrialState::Running, &[(4, 5.0)]);
        assert!(prune_with(&pruner, Direction::Minimize, &[a.clone(), b.clone()], &t));
        // -1.0 beats both at rung 0 and a at rung 1, and is alone at rung 2.
        let t = trial(2, TrialState::Running, &[(4, -1.0)]);
        assert!(!prune_with(&pruner, Direction::Minimize, &[a, b], &t));
    }

    #[test]
    fn a_pruned_trial_counts_only_up_to_the_rung_it_was_stopped_at() {
        let pruner = fixed(1, 2); // rungs end at 1, 2, 4
                                  // Pruned at its first check, at step 4: Optuna recorded only rung 0.
        let pruned =
            |t: &FrozenTrial, earlier: &[Vec<f64>]| pruner.pruned_rung_values(t, 1, earlier, Direction::Minimize);
        let p = trial(0, TrialState::Pruned, &[(4, 0.0)]);
        // Alone it would have been promoted everywhere; pruned, it must have failed at rung 0
        // against a better earlier trial there.
        assert_eq!(pruned(&p, &[vec![-1.0]]), vec![0.0]);
        // Promoted at rung 0 (best of two) but not at rung 1, where an earlier trial was better:
        // rungs 0 and 1 recorded from the one report.
        assert_eq!(pruned(&p, &[vec![1.0, -1.0]]), vec![0.0, 0.0]);
        // Passed rung 0 at step 1, pruned at rung 1 at step 3: rungs 0 and 1 recorded.
        let p = trial(0, TrialState::Pruned, &[(1, 1.0), (3, 2.0)]);
        assert_eq!(pruned(&p, &[vec![0.0, 0.0]]), vec![1.0, 2.0]);
        // A completed trial that jumped records every rung it passed.
        let c = trial(0, TrialState::Complete, &[(4, 0.0)]);
        assert_eq!(pruner.rung_values(&c, 1), vec![0.0, 0.0, 0.0]);
        // NaN is never recorded.
        let n = trial(0, TrialState::Pruned, &[(1, f64::NAN)]);
        assert!(pruned(&n, &[]).is_empty());
    }

    #[test]
    fn nan_is_pruned_at_a_rung_end_only() {
        let pruner = fixed(2, 2);
        assert!(!prune_with(&pruner, Direction::Minimize, &[], &trial(0, TrialState::Running, &[(1, f64::NAN)])));
        assert!(prune_with(&pruner, Direction::Minimize, &[], &trial(0, TrialState::Running, &[(2, f64::NAN)])));
    }

    #[test]
    fn min_early_stopping_rate_moves_the_first_rung() {
        let pruner = SuccessiveHalvingConfig {
            min_resource: MinResource::Steps(2),
            reduction_factor: 3,
            min_early_stopping_rate: 1,
            ..SuccessiveHalvingConfig::default()
        }
        .build()
        .unwrap();
        // First rung ends at 2 * 3 = 6.
        let other = trial(0, TrialState::Complete, &[(6, 0.0)]);
        assert!(!prune_with(
            &pruner,
            Direction::Minimize,
            std::slice::from_ref(&other),
            &trial(1, TrialState::Running, &[(5, 9.0)])
        ));
        assert!(prune_with(&pruner, Direction::Minimize, &[other], &trial(1, TrialState::Running, &[(6, 9.0)])));
    }

    #[test]
    fn bootstrap_count_prunes_the_first_arrivals() {
        let pruner = SuccessiveHalvingConfig {
            min_resource: MinResource::Steps(1),
            reduction_factor: 2,
            bootstrap_count: 2,
            ..SuccessiveHalvingConfig::default()
        }
        .build()
        .unwrap();
        let a = trial(0, TrialState::Pruned, &[(1, 1.0)]);
        // Second to arrive: 2 competitors <= 2, pruned even though best.
        assert!(prune_with(
            &pruner,
            Direction::Minimize,
            std::slice::from_ref(&a),
            &trial(1, TrialState::Running, &[(1, 0.0)])
        ));
        let b = trial(1, TrialState::Pruned, &[(1, 2.0)]);
        assert!(!prune_with(&pruner, Direction::Minimize, &[a, b], &trial(2, TrialState::Running, &[(1, 0.0)])));
    }

    #[test]
    fn auto_min_resource_waits_for_the_first_complete_trial() {
        let pruner = SuccessiveHalvingPruner::default();
        let t = trial(5, TrialState::Running, &[(0, 9.0), (1, 9.0)]);
        let running = trial(0, TrialState::Running, &[(0, 0.0), (1, 0.0)]);
        assert!(!prune_with(&pruner, Direction::Minimize, std::slice::from_ref(&running), &t));
        // First complete trial ran to step 250: min_resource = 2, so step 1 is not a rung end.
        let curve: Vec<(i64, f64)> = (0..=250).map(|s| (s, 0.0)).collect();
        let done = trial(1, TrialState::Complete, &curve);
        assert_eq!(
            estimate_min_resource(&crate::sampler::shared(&[running.clone(), done.clone()])).map(|e| e.0),
            Some(2)
        );
        assert!(!prune_with(&pruner, Direction::Minimize, &[running.clone(), done.clone()], &t));
        let mut t = t;
        t.intermediate_values.insert(2, 9.0);
        // The trial the estimate came from was never checked against a rung (Optuna did not
        // know min_resource while it ran), so it does not compete: 9.0 is alone at rung 0.
        assert!(!prune_with(&pruner, Direction::Minimize, &[running.clone(), done.clone()], &t));
        // A trial that completed later did compete.
        let later = trial(2, TrialState::Complete, &[(2, 0.0)]);
        assert!(prune_with(&pruner, Direction::Minimize, &[running, done, later], &t));
    }

    #[test]
    fn configs_validate_and_deserialize() {
        let bad = |c: SuccessiveHalvingConfig| c.build().is_err();
        let d = SuccessiveHalvingConfig::default;
        assert!(bad(SuccessiveHalvingConfig { min_resource: MinResource::Steps(0), ..d() }));
        assert!(bad(SuccessiveHalvingConfig { reduction_factor: 1, ..d() }));
        assert!(bad(SuccessiveHalvingConfig { min_early_stopping_rate: -1, ..d() }));
        assert!(bad(SuccessiveHalvingConfig { bootstrap_count: 1, ..d() }));
        assert!(!bad(SuccessiveHalvingConfig { bootstrap_count: 1, min_resource: MinResource::Steps(1), ..d() }));
        let c: SuccessiveHalvingConfig = serde_norway::from_str("min_resource: 5\nreduction_factor: 3").unwrap();
        assert_eq!(c.min_resource, MinResource::Steps(5));
        assert_eq!(c.reduction_factor, 3);
        let c: SuccessiveHalvingConfig = serde_norway::from_str("min_resource: auto").unwrap();
        assert_eq!(c.min_resource, MinResource::Auto);
        let e = serde_norway::from_str::<SuccessiveHalvingConfig>("min_resource: often").unwrap_err();
        assert!(e.to_string().contains("\"auto\""), "{e}");
        assert!(serde_norway::from_str::<SuccessiveHalvingConfig>("eta: 3").is_err());
    }

    /// A simulated sequential study, run identically through Optuna 5.0.0 to produce the
    /// expected prune steps: trial `i` reports `curve(i, s)` for `s` in `0..steps(i)`, asking
    /// the pruner after each report; `i % 11 == 7` reports NaN from step 5 on.
    fn curve(i: i64, s: i64) -> f64 {
        if i % 11 == 7 && s >= 5 {
            return f64::NAN;
        }
        ((i * 7919) % 101) as f64 / 100.0 + 3.0 / (s + 1) as f64 + 0.2 * (((i * 31 + s * 17) % 13) - 6) as f64 / 6.0
    }

    fn steps(i: i64) -> i64 {
        if i % 5 == 0 {
            120
        } else {
            40 + 7 * (i % 4)
        }
    }

    fn simulate(pruner: &dyn Pruner, direction: Direction, n_trials: i64) -> Vec<i64> {
        let mut trials: Vec<FrozenTrial> = vec![];
        let mut out = vec![];
        for i in 0..n_trials {
            let mut t = FrozenTrial::new(i, i, TrialState::Running);
            let mut pruned_at = -1;
            for s in 0..steps(i) {
                t.intermediate_values.insert(s, curve(i, s));
                trials.push(t.clone());
                let prune = pruner.prune(&StudyView { direction, trials: &crate::sampler::shared(&trials) }, &t);
                trials.pop();
                if prune {
                    pruned_at = s;
                    break;
                }
            }
            t.value = t.intermediate_values.values().last().copied();
            t.state = match (pruned_at >= 0, t.value) {
                (true, _) => TrialState::Pruned,
                (false, Some(v)) if v.is_nan() => TrialState::Fail,
                (false, _) => TrialState::Complete,
            };
            trials.push(t);
            out.push(pruned_at);
        }
        out
    }

    // Produced with optuna 5.0.0 (.venv/bin/python), the same loop in Python:
    //
    //   def simulate(pruner, direction, n=40):
    //       study = optuna.create_study(direction=direction, pruner=pruner)
    //       out = []
    //       for i in range(n):
    //           t = study.ask(); at = -1
    //           for s in range(steps(i)):
    //               t.report(curve(i, s), s)
    //               if t.should_prune(): at = s; break
    //           if at >= 0: study.tell(t, state=optuna.trial.TrialState.PRUNED)
    //           else: study.tell(t, curve(i, steps(i) - 1))
    //           out.append(at)
    //       return out
    #[test]
    fn simulated_studies_match_optuna() {
        let sha = |min_resource, reduction_factor, min_early_stopping_rate, bootstrap_count| SuccessiveHalvingConfig {
            min_resource,
            reduction_factor,
            min_early_stopping_rate,
            bootstrap_count,
        };
        let cases: Vec<(SuccessiveHalvingConfig, Direction, &[i64])> = vec![
            // SuccessiveHalvingPruner(), minimize
            (SuccessiveHalvingConfig::default(), Direction::Minimize, &OPTUNA_DEFAULT_MIN),
            // SuccessiveHalvingPruner(), maximize
            (SuccessiveHalvingConfig::default(), Direction::Maximize, &OPTUNA_DEFAULT_MAX),
            // SuccessiveHalvingPruner(min_resource=2, reduction_factor=2), minimize
            (sha(MinResource::Steps(2), 2, 0, 0), Direction::Minimize, &OPTUNA_R2_ETA2_MIN),
            // SuccessiveHalvingPruner(min_resource=1, reduction_factor=3, min_early_stopping_rate=1,
            //                         bootstrap_count=2), maximize
            (sha(MinResource::Steps(1), 3, 1, 2), Direction::Maximize, &OPTUNA_R1_ETA3_S1_B2_MAX),
        ];
        for (config, direction, expected) in cases {
            let got = simulate(&config.build().unwrap(), direction, expected.len() as i64);
            assert_eq!(got, expected, "{config:?} {direction:?}");
        }
    }

    const OPTUNA_DEFAULT_MIN: [i64; 40] = [
        -1, -1, 1, -1, 1, 16, 1, 1, 4, 1, 16, 1, 1, 4, 1, 16, 1, 1, 4, 1, 4, 1, 1, 4, 1, 1, 1, 1, 4, 1, 1, 1, 1, 4, 1,
        1, 1, 4, 1, 1,
    ];
    const OPTUNA_DEFAULT_MAX: [i64; 40] = [
        -1, -1, -1, 1, 16, 1, 1, 1, 1, 4, 1, 1, 16, 1, 1, 1, 1, 4, 1, 1, 1, 1, 4, 1, 1, 1, 1, 4, 1, 1, 1, 1, 4, 1, 1,
        1, 1, 1, 1, 1,
    ];
    const OPTUNA_R2_ETA2_MIN: [i64; 40] = [
        -1, 2, 2, 2, 2, -1, 2, 2, 4, 2, -1, 2, 2, 4, 2, -1, 2, 2, 4, 2, 4, 2, 2, 4, 2, 4, 2, 2, 8, 2, 4, 2, 2, 4, 2, 4,
        2, 8, 4, 2,
    ];
    const OPTUNA_R1_ETA3_S1_B2_MAX: [i64; 40] = [
        3, 3, 9, 3, 3, 3, 3, 9, 3, 3, 3, 3, 9, 3, 3, 3, 3, 9, 3, 3, 3, 3, 9, 3, 3, 3, 9, 9, 3, 3, 3, 9, 9, 3, 3, 3, 9,
        3, 3, 27,
    ];
}
