//! Percentile and median pruning, after Optuna's `PercentilePruner` / `MedianPruner`
//! (optuna/pruners/_percentile.py, 5.0): a trial stops when its best intermediate value so far
//! is worse than the given percentile of the COMPLETE trials' values at the same step.
//!
//! The rules, in Optuna's order: no pruning before `n_startup_trials` trials are COMPLETE, nor
//! before step `n_warmup_steps`; checks happen once per `interval_steps` window counted from
//! `n_warmup_steps`; a trial whose values are all NaN is pruned; fewer than `n_min_trials`
//! COMPLETE trials reporting at the step means no pruning. The threshold uses the COMPLETE
//! trials' raw values *at that step* (not their best so far), with NumPy's linear
//! `nanpercentile`, and `100 - percentile` when maximising.

use serde::Deserialize;

use super::is_first_in_interval_step;
use super::Pruner;
use crate::frozen::{Direction, FrozenTrial, TrialState};
use crate::sampler::StudyView;

/// YAML settings of `pruner: {type: percentile, ...}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PercentileConfig {
    /// Percentile in `[0, 100]` of trials to keep: 25 keeps a trial only while its best value
    /// is within the best 25% of the COMPLETE trials at the same step.
    pub percentile: f64,
    /// No pruning until this many trials are COMPLETE.
    pub n_startup_trials: usize,
    /// No pruning before this step; the earliest prune is at `step == n_warmup_steps`.
    pub n_warmup_steps: i64,
    /// Steps between pruning checks, counted from `n_warmup_steps` (at least 1).
    pub interval_steps: i64,
    /// Fewer COMPLETE trials than this reporting at the step means no pruning (at least 1).
    pub n_min_trials: usize,
}

impl Default for PercentileConfig {
    fn default() -> Self {
        // Optuna makes `percentile` mandatory; 25 is the value of its own documentation example.
        PercentileConfig {
            percentile: 25.0,
            n_startup_trials: 5,
            n_warmup_steps: 0,
            interval_steps: 1,
            n_min_trials: 1,
        }
    }
}

impl PercentileConfig {
    /// Validates the settings (Optuna's rules) and builds the pruner.
    pub fn build(&self) -> Result<PercentilePruner, String> {
        if !(0.0..=100.0).contains(&self.percentile) {
            return Err(format!("`percentile` must be between 0 and 100 inclusive (got {})", self.percentile));
        }
        if self.n_warmup_steps < 0 {
            return Err(format!("`n_warmup_steps` must be >= 0 (got {})", self.n_warmup_steps));
        }
        if self.interval_steps < 1 {
            return Err(format!("`interval_steps` must be >= 1 (got {})", self.interval_steps));
        }
        if self.n_min_trials < 1 {
            return Err(format!("`n_min_trials` must be >= 1 (got {})", self.n_min_trials));
        }
        Ok(PercentilePruner { config: self.clone() })
    }
}

/// YAML settings of `pruner: {type: median, ...}`: a percentile pruner at 50.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MedianConfig {
    /// No pruning until this many trials are COMPLETE.
    pub n_startup_trials: usize,
    /// No pruning before this step; the earliest prune is at `step == n_warmup_steps`.
    pub n_warmup_steps: i64,
    /// Steps between pruning checks, counted from `n_warmup_steps` (at least 1).
    pub interval_steps: i64,
    /// Fewer COMPLETE trials than this reporting at the step means no pruning (at least 1).
    pub n_min_trials: usize,
}

impl Default for MedianConfig {
    fn default() -> Self {
        MedianConfig { n_startup_trials: 5, n_warmup_steps: 0, interval_steps: 1, n_min_trials: 1 }
    }
}

impl MedianConfig {
    /// Validates the settings and builds a percentile pruner at 50 (Optuna's `MedianPruner`).
    pub fn build(&self) -> Result<PercentilePruner, String> {
        PercentileConfig {
            percentile: 50.0,
            n_startup_trials: self.n_startup_trials,
            n_warmup_steps: self.n_warmup_steps,
            interval_steps: self.interval_steps,
            n_min_trials: self.n_min_trials,
        }
        .build()
    }
}

/// Prunes trials whose best value so far falls outside a percentile of the COMPLETE trials
/// at the same step. Built from a validated [`PercentileConfig`] or [`MedianConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct PercentilePruner {
    config: PercentileConfig,
}

impl PercentilePruner {
    /// Optuna's `MedianPruner()` with its defaults.
    pub fn median() -> Self {
        MedianConfig::default().build().expect("the default median settings are valid")
    }

    /// The validated settings.
    pub fn config(&self) -> &PercentileConfig {
        &self.config
    }
}

impl Pruner for PercentilePruner {
    fn prune(&self, study: &StudyView, trial: &FrozenTrial) -> bool {
        let c = &self.config;
        let completed: Vec<&FrozenTrial> =
            study.trials.iter().filter(|t| t.state == TrialState::Complete).map(|t| &**t).collect();
        if completed.is_empty() || completed.len() < c.n_startup_trials {
            return false;
        }
        let Some(step) = trial.last_step() else {
            return false;
        };
        if step < c.n_warmup_steps {
            return false;
        }
        if !is_first_in_interval_step(step, trial, c.n_warmup_steps, c.interval_steps) {
            return false;
        }
        let best = best_intermediate_value(trial, study.direction);
        if best.is_nan() {
            return true;
        }
        let threshold = percentile_over_trials(&completed, study.direction, step, c.percentile, c.n_min_trials);
        if threshold.is_nan() {
            return false;
        }
        match study.direction {
            Direction::Maximize => best < threshold,
            Direction::Minimize => best > threshold,
        }
    }
}

/// The trial's best intermediate value, ignoring NaN; NaN when every value is NaN
/// (NumPy's `nanmin` / `nanmax`).
fn best_intermediate_value(trial: &FrozenTrial, direction: Direction) -> f64 {
    let finite_or_inf = trial.intermediate_values.values().copied().filter(|v| !v.is_nan());
    match direction {
        Direction::Minimize => finite_or_inf.fold(f64::NAN, f64::min),
        Direction::Maximize => finite_or_inf.fold(f64::NAN, f64::max),
    }
}

/// The threshold at `step`: NaN (no pruning) when fewer than `n_min_trials` COMPLETE trials
/// reported there (NaN reports count, as in Optuna) or all of their values are NaN.
fn percentile_over_trials(
    completed: &[&FrozenTrial],
    direction: Direction,
    step: i64,
    percentile: f64,
    n_min_trials: usize,
) -> f64 {
    let values: Vec<f64> = completed.iter().filter_map(|t| t.intermediate_values.get(&step).copied()).collect();
    if values.len() < n_min_trials {
        return f64::NAN;
    }
    // When maximising, "keep the top p%" means the (100 - p)th percentile from below.
    let percentile = match direction {
        Direction::Maximize => 100.0 - percentile,
        Direction::Minimize => percentile,
    };
    nan_percentile(values, percentile)
}

/// NumPy's `nanpercentile(values, q)` with the default linear method, including its
/// interpolation formula, so thresholds agree with Optuna to the last bit.
pub fn nan_percentile(mut values: Vec<f64>, q: f64) -> f64 {
    values.retain(|v| !v.is_nan());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let virtual_index = (n - 1) as f64 * (q / 100.0);
    if virtual_index >= (n - 1) as f64 {
        return values[n - 1];
    }
    let previous = virtual_index.floor();
    let (a, b) = (values[previous as usize], values[previous as usize + 1]);
    let t = virtual_index - previous;
    let diff = b - a;
    // NumPy's `_lerp` interpolates from the nearer end to stay exact at t = 0 and t = 1.
    if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
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

    /// `n` COMPLETE trials whose value at every step in `0..steps` is their index: 0, 1, ...
    fn ladder(n: usize, steps: i64) -> Vec<FrozenTrial> {
        (0..n)
            .map(|i| {
                let curve: Vec<(i64, f64)> = (0..steps).map(|s| (s, i as f64)).collect();
                trial(i as i64, TrialState::Complete, &curve)
            })
            .collect()
    }

    fn prune_with(
        pruner: &PercentilePruner,
        direction: Direction,
        done: &[FrozenTrial],
        current: &FrozenTrial,
    ) -> bool {
        let mut trials = done.to_vec();
        trials.push(current.clone());
        pruner.prune(&StudyView { direction, trials: &crate::sampler::shared(&trials) }, current)
    }

    fn config(percentile: f64) -> PercentileConfig {
        PercentileConfig { percentile, ..PercentileConfig::default() }
    }

    #[test]
    fn nan_percentile_matches_numpy() {
        // np.percentile([1, 2, 3, 4], q) for q = 0, 25, 50, 75, 90, 100.
        let v = vec![4.0, 1.0, 3.0, 2.0];
        let got: Vec<f64> =
            [0.0, 25.0, 50.0, 75.0, 90.0, 100.0].iter().map(|&q| nan_percentile(v.clone(), q)).collect();
        assert_eq!(got, vec![1.0, 1.75, 2.5, 3.25, 3.7, 4.0]);
        assert_eq!(nan_percentile(vec![f64::NAN, 5.0, f64::NAN], 50.0), 5.0);
        assert!(nan_percentile(vec![f64::NAN], 50.0).is_nan());
    }

    #[test]
    fn no_pruning_before_n_startup_trials_complete() {
        let pruner = PercentilePruner::median();
        let bad = trial(9, TrialState::Running, &[(0, 100.0)]);
        let mut done = ladder(4, 1);
        // Pruned and failed trials do not count as started-up.
        done.push(trial(4, TrialState::Pruned, &[(0, 0.0)]));
        done.push(trial(5, TrialState::Fail, &[(0, 0.0)]));
        assert!(!prune_with(&pruner, Direction::Minimize, &done, &bad));
        done.push(trial(6, TrialState::Complete, &[(0, 4.0)]));
        assert!(prune_with(&pruner, Direction::Minimize, &done, &bad));
        // n_startup_trials = 0 still needs one COMPLETE trial to compare with.
        let eager = MedianConfig { n_startup_trials: 0, ..MedianConfig::default() }.build().unwrap();
        assert!(!prune_with(&eager, Direction::Minimize, &[], &bad));
    }

    #[test]
    fn no_pruning_before_warmup_and_none_without_reports() {
        let pruner = MedianConfig { n_warmup_steps: 3, ..MedianConfig::default() }.build().unwrap();
        let done = ladder(5, 10);
        let mut t = trial(5, TrialState::Running, &[]);
        assert!(!prune_with(&pruner, Direction::Minimize, &done, &t));
        for s in 0..3 {
            t.intermediate_values.insert(s, 100.0);
            assert!(!prune_with(&pruner, Direction::Minimize, &done, &t), "step {s} is in warm-up");
        }
        t.intermediate_values.insert(3, 100.0);
        assert!(prune_with(&pruner, Direction::Minimize, &done, &t));
    }

    #[test]
    fn checks_once_per_interval_counted_from_warmup() {
        let pruner = MedianConfig { n_warmup_steps: 2, interval_steps: 3, ..MedianConfig::default() }.build().unwrap();
        let done = ladder(5, 20);
        let mut t = trial(5, TrialState::Running, &[]);
        let mut checked = vec![];
        for s in 0..12 {
            t.intermediate_values.insert(s, 100.0);
            if prune_with(&pruner, Direction::Minimize, &done, &t) {
                checked.push(s);
            }
        }
        assert_eq!(checked, vec![2, 5, 8, 11]);
        // Reporting every 4 steps: the check happens at the first report of each window.
        let mut sparse = trial(5, TrialState::Running, &[]);
        let mut checked = vec![];
        for s in (0..16).step_by(4) {
            sparse.intermediate_values.insert(s, 100.0);
            if prune_with(&pruner, Direction::Minimize, &done, &sparse) {
                checked.push(s);
            }
        }
        // Windows open at 2, 5, 8, 11, 14: reports at 4, 8, 12 are the first in theirs.
        assert_eq!(checked, vec![4, 8, 12]);
    }

    #[test]
    fn score_is_the_best_value_so_far_and_threshold_the_values_at_this_step() {
        let pruner = PercentilePruner::median();
        // Complete trials: values 0..5 at step 0 and 10..15 at step 1; medians 2 and 12.
        let done: Vec<FrozenTrial> =
            (0..5).map(|i| trial(i, TrialState::Complete, &[(0, i as f64), (1, 10.0 + i as f64)])).collect();
        // 3 at step 0 is worse than the median 2: pruned.
        assert!(prune_with(&pruner, Direction::Minimize, &done, &trial(5, TrialState::Running, &[(0, 3.0)])));
        // At step 1 the trial's best so far (3) beats the median there (12): kept, even though
        // its value at step 1 is worse.
        let t = trial(5, TrialState::Running, &[(0, 3.0), (1, 20.0)]);
        assert!(!prune_with(&pruner, Direction::Minimize, &done, &t));
        // Equal to the threshold is not worse.
        assert!(!prune_with(&pruner, Direction::Minimize, &done, &trial(5, TrialState::Running, &[(0, 2.0)])));
    }

    #[test]
    fn maximize_flips_both_score_and_percentile() {
        let done = ladder(5, 1); // values 0, 1, 2, 3, 4
        let low = trial(5, TrialState::Running, &[(0, 1.5)]);
        let high = trial(5, TrialState::Running, &[(0, 3.5)]);
        let median = PercentilePruner::median();
        assert!(prune_with(&median, Direction::Maximize, &done, &low));
        assert!(!prune_with(&median, Direction::Maximize, &done, &high));
        assert!(!prune_with(&median, Direction::Minimize, &done, &low));
        assert!(prune_with(&median, Direction::Minimize, &done, &high));
        // Maximising with percentile 25 keeps the top quarter: threshold is the 75th
        // percentile, 3.0; 2.5 is pruned, 3.5 kept.
        let p25 = config(25.0).build().unwrap();
        assert!(prune_with(&p25, Direction::Maximize, &done, &trial(5, TrialState::Running, &[(0, 2.5)])));
        assert!(!prune_with(&p25, Direction::Maximize, &done, &high));
    }

    #[test]
    fn percentile_25_is_stricter_than_75() {
        let done = ladder(5, 1); // values 0..4: 25th percentile 1.0, 75th 3.0
        let t = trial(5, TrialState::Running, &[(0, 2.0)]);
        assert!(prune_with(&config(25.0).build().unwrap(), Direction::Minimize, &done, &t));
        assert!(!prune_with(&config(75.0).build().unwrap(), Direction::Minimize, &done, &t));
        // The extremes: 0 prunes all but the best, 100 prunes nothing that is not worse than the worst.
        let best = trial(5, TrialState::Running, &[(0, 0.0)]);
        assert!(!prune_with(&config(0.0).build().unwrap(), Direction::Minimize, &done, &best));
        assert!(prune_with(&config(0.0).build().unwrap(), Direction::Minimize, &done, &t));
        assert!(!prune_with(&config(100.0).build().unwrap(), Direction::Minimize, &done, &t));
    }

    #[test]
    fn n_min_trials_counts_complete_trials_reporting_at_the_step() {
        let pruner = MedianConfig { n_min_trials: 3, ..MedianConfig::default() }.build().unwrap();
        // Five COMPLETE trials, but only two reached step 5.
        let mut done = ladder(3, 2);
        done.push(trial(3, TrialState::Complete, &[(0, 0.0), (5, 0.0)]));
        done.push(trial(4, TrialState::Complete, &[(0, 0.0), (5, 1.0)]));
        let t = trial(5, TrialState::Running, &[(5, 9.0)]);
        assert!(!prune_with(&pruner, Direction::Minimize, &done, &t));
        // A running or pruned trial at step 5 does not count.
        done.push(trial(6, TrialState::Pruned, &[(5, 0.0)]));
        assert!(!prune_with(&pruner, Direction::Minimize, &done, &t));
        done.push(trial(7, TrialState::Complete, &[(5, 2.0)]));
        assert!(prune_with(&pruner, Direction::Minimize, &done, &t));
    }

    #[test]
    fn nan_values() {
        let pruner = PercentilePruner::median();
        let done = ladder(5, 3);
        // All NaN: pruned at the first check.
        let all_nan = trial(5, TrialState::Running, &[(0, f64::NAN), (1, f64::NAN)]);
        assert!(prune_with(&pruner, Direction::Minimize, &done, &all_nan));
        // One finite value is enough to be judged on it.
        let some = trial(5, TrialState::Running, &[(0, 0.5), (1, f64::NAN)]);
        assert!(!prune_with(&pruner, Direction::Minimize, &done, &some));
        // COMPLETE trials that reported NaN at the step: ignored by the percentile, and no
        // threshold at all when every one of them is NaN.
        let nan_done: Vec<FrozenTrial> = (0..5).map(|i| trial(i, TrialState::Complete, &[(0, f64::NAN)])).collect();
        assert!(!prune_with(&pruner, Direction::Minimize, &nan_done, &trial(5, TrialState::Running, &[(0, 1e9)])));
    }

    #[test]
    fn configs_validate_and_deserialize() {
        assert!(config(-1.0).build().is_err());
        assert!(config(100.5).build().is_err());
        assert!(config(f64::NAN).build().is_err());
        assert!(PercentileConfig { interval_steps: 0, ..config(50.0) }.build().is_err());
        assert!(PercentileConfig { n_warmup_steps: -1, ..config(50.0) }.build().is_err());
        assert!(PercentileConfig { n_min_trials: 0, ..config(50.0) }.build().is_err());
        let m: MedianConfig = serde_norway::from_str("n_warmup_steps: 10\ninterval_steps: 5").unwrap();
        assert_eq!(m, MedianConfig { n_warmup_steps: 10, interval_steps: 5, ..MedianConfig::default() });
        assert_eq!(m.build().unwrap().config().percentile, 50.0);
        let p: PercentileConfig = serde_norway::from_str("percentile: 10").unwrap();
        assert_eq!(p.percentile, 10.0);
        assert_eq!(p.n_startup_trials, 5);
        assert!(serde_norway::from_str::<MedianConfig>("percentile: 10").is_err());
    }

    /// A simulated sequential study, run identically through Optuna 5.0.0 to produce the
    /// expected prune steps below. Trial `i` has `10 + 5 * (i % 3)` steps; its value at step
    /// `s` is `curve(i, s)`; trials with `i % 9 == 4` report NaN throughout. Each step: report,
    /// then ask the pruner; a pruned trial stops there, the others complete with their last value.
    fn curve(i: i64, s: i64) -> f64 {
        if i % 9 == 4 {
            return f64::NAN;
        }
        ((i * 7919) % 101) as f64 / 100.0 + 2.0 / (s + 1) as f64 + 0.05 * (((i * 31 + s * 17) % 13) - 6) as f64
    }

    /// For each trial, the step at which it was pruned, or -1 when it completed.
    fn simulate(pruner: &dyn Pruner, direction: Direction, n_trials: i64) -> Vec<i64> {
        let mut trials: Vec<FrozenTrial> = vec![];
        let mut out = vec![];
        for i in 0..n_trials {
            let mut t = FrozenTrial::new(i, i, TrialState::Running);
            let mut pruned_at = -1;
            for s in 0..10 + 5 * (i % 3) {
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
                // Optuna fails a trial whose objective returns NaN.
                (false, Some(v)) if v.is_nan() => TrialState::Fail,
                (false, _) => TrialState::Complete,
            };
            trials.push(t);
            out.push(pruned_at);
        }
        out
    }

    // Produced with optuna 5.0.0 (.venv/bin/python):
    //
    //   def curve(i, s):
    //       if i % 9 == 4: return float("nan")
    //       return ((i * 7919) % 101) / 100.0 + 2.0 / (s + 1) + 0.05 * (((i * 31 + s * 17) % 13) - 6)
    //   def simulate(pruner, direction, n=30):
    //       study = optuna.create_study(direction=direction, pruner=pruner)
    //       out = []
    //       for i in range(n):
    //           t = study.ask(); at = -1
    //           for s in range(10 + 5 * (i % 3)):
    //               t.report(curve(i, s), s)
    //               if t.should_prune(): at = s; break
    //           if at >= 0: study.tell(t, state=optuna.trial.TrialState.PRUNED)
    //           else: study.tell(t, curve(i, 10 + 5 * (i % 3) - 1))
    //           out.append(at)
    //       return out
    //
    #[test]
    fn simulated_studies_match_optuna() {
        let cases: Vec<(PercentileConfig, Direction, Vec<i64>)> = vec![
            // MedianPruner(), minimize
            (
                MedianConfig::default().build().unwrap().config().clone(),
                Direction::Minimize,
                OPTUNA_MEDIAN_MIN.to_vec(),
            ),
            // MedianPruner(), maximize
            (
                MedianConfig::default().build().unwrap().config().clone(),
                Direction::Maximize,
                OPTUNA_MEDIAN_MAX.to_vec(),
            ),
            // PercentilePruner(25.0, n_startup_trials=3, n_warmup_steps=3, interval_steps=2), minimize
            (
                PercentileConfig {
                    percentile: 25.0,
                    n_startup_trials: 3,
                    n_warmup_steps: 3,
                    interval_steps: 2,
                    n_min_trials: 1,
                },
                Direction::Minimize,
                OPTUNA_P25_MIN.to_vec(),
            ),
            // PercentilePruner(75.0, n_startup_trials=2, n_min_trials=4), maximize
            (
                PercentileConfig {
                    percentile: 75.0,
                    n_startup_trials: 2,
                    n_warmup_steps: 0,
                    interval_steps: 1,
                    n_min_trials: 4,
                },
                Direction::Maximize,
                OPTUNA_P75_MAX.to_vec(),
            ),
        ];
        for (config, direction, expected) in cases {
            let got = simulate(&config.build().unwrap(), direction, expected.len() as i64);
            assert_eq!(got, expected, "{config:?} {direction:?}");
        }
    }

    const OPTUNA_MEDIAN_MIN: [i64; 30] =
        [-1, -1, -1, -1, -1, -1, 0, 0, 2, 0, -1, 1, 0, 0, 0, -1, 1, 0, 0, 0, 4, 1, 0, 0, 0, 1, 1, 0, 0, 0];
    const OPTUNA_MEDIAN_MAX: [i64; 30] =
        [-1, -1, -1, -1, -1, -1, -1, -1, 0, -1, 0, 0, -1, 0, -1, 0, 0, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, -1, 0, 0];
    const OPTUNA_P25_MIN: [i64; 30] =
        [-1, -1, -1, -1, 3, 3, 3, 3, 7, 3, 3, 3, 3, 3, 3, -1, 3, 3, 3, 3, -1, 3, 3, 3, 3, -1, 3, 3, 3, 3];
    const OPTUNA_P75_MAX: [i64; 30] =
        [-1, -1, -1, -1, 0, -1, -1, -1, 0, -1, -1, -1, -1, 0, -1, 0, 0, -1, -1, -1, 0, 0, 0, -1, -1, 0, 0, -1, -1, -1];
}
