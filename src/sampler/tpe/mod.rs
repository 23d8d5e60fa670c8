//! The Tree-structured Parzen Estimator sampler (Bergstra et al., "Algorithms for
//! Hyper-Parameter Optimization", NeurIPS 2011; multivariate TPE after Falkner et al., BOHB,
//! ICML 2018), following Optuna 5.0's `TPESampler` with its defaults.
//!
//! After `n_startup_trials` random trials, the trials seen so far are split into the `γ(n)`
//! best ("below", model `l(x)`) and the rest ("above", model `g(x)`), each modelled by a
//! Parzen estimator; `n_ei_candidates` points are drawn from `l` and the one maximising
//! `log l(x) - log g(x)` (the expected-improvement criterion of the paper, equation 4) wins.
//! Multivariate mode models the parameters that every finished trial shares jointly; other
//! parameters get univariate TPE. With the constant liar, RUNNING trials count as bad so that
//! parallel workers spread out.
//!
//! All randomness comes from `trial_rng(seed, trial number, ..)`: the same seed and history
//! give the same suggestions whatever the order in which workers ask.
//!
//! Speed: finished trials never change, so the sampler keeps a memo of what it read from them
//! (split rankings, observation columns, sorted orders, kernel constants, and the last bad
//! model, into which an ask that only adds trials to it inserts them instead of rebuilding; see
//! `history` and `ParzenEstimator::insert`). An ask then costs a few linear passes over the
//! trials plus one pass over the bad model's kernels per candidate (see `parzen`). The memo is
//! a pure cache: results never depend on it (tests compare it with fresh computations).
//!
//! Differences from Optuna: the sampler cannot write to storage, so RUNNING trials count as bad
//! (constant liar) with the parameters they have suggested so far, where Optuna also shares a
//! relative sample through the `tpe:relative_params` system attribute; ties in kernel order
//! are broken by trial number.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};

use super::{trial_rng, RandomSampler, Sampler, SearchSpace, StudyView};
use crate::distribution::Distribution;
use crate::frozen::{FrozenTrial, TrialState};

mod history;
mod parzen;
mod truncnorm;

use history::{History, Intersection};
pub use parzen::{ParzenEstimator, ParzenParams};

/// TPE settings; the defaults are Optuna 5.0's.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TpeConfig {
    /// Trials sampled at random before TPE starts, counting COMPLETE and PRUNED ones.
    pub n_startup_trials: usize,
    /// Candidates drawn from the good model per suggestion; the best by `l(x)/g(x)` is taken.
    pub n_ei_candidates: usize,
    /// Model the parameters all finished trials share jointly (multivariate TPE).
    pub multivariate: bool,
    /// Count RUNNING trials as bad, so parallel workers do not all probe the same region.
    pub constant_liar: bool,
    /// Weight of the prior kernel, and the smoothing of categorical kernels.
    pub prior_weight: f64,
    /// Accepted for Optuna configs; as in Optuna since 4.3, the prior is always used.
    pub consider_prior: bool,
    /// Floor kernel widths at `range / min(100, n + 2)`.
    pub consider_magic_clip: bool,
    /// Let the range ends count as neighbours of the outermost observations.
    pub consider_endpoints: bool,
}

impl Default for TpeConfig {
    fn default() -> Self {
        TpeConfig {
            n_startup_trials: 10,
            n_ei_candidates: 24,
            multivariate: true,
            constant_liar: true,
            prior_weight: 1.0,
            consider_prior: true,
            consider_magic_clip: true,
            consider_endpoints: false,
        }
    }
}

impl TpeConfig {
    /// Checks the values a user may get wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.n_ei_candidates == 0 {
            return Err("n_ei_candidates must be at least 1".into());
        }
        if !(self.prior_weight >= 0.0 && self.prior_weight.is_finite()) {
            return Err(format!("prior_weight must be a finite number >= 0 (got {})", self.prior_weight));
        }
        Ok(())
    }
}

/// The TPE sampler.
pub struct TpeSampler {
    config: TpeConfig,
    seed: u64,
    random: RandomSampler,
    /// What the last ask digested of the study; a pure cache, so results never depend on it.
    memo: Mutex<Memo>,
}

#[derive(Default)]
struct Memo {
    intersection: Option<Intersection>,
    history: Option<History>,
}

impl Clone for TpeSampler {
    fn clone(&self) -> Self {
        TpeSampler::new(self.config.clone(), self.seed)
    }
}

impl std::fmt::Debug for TpeSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpeSampler").field("config", &self.config).field("seed", &self.seed).finish()
    }
}

impl TpeSampler {
    /// A TPE sampler with `config`, drawing all its randomness from `seed`.
    pub fn new(config: TpeConfig, seed: u64) -> Self {
        TpeSampler { config, seed, random: RandomSampler::new(seed), memo: Mutex::new(Memo::default()) }
    }

    /// The settings this sampler runs with.
    pub fn config(&self) -> &TpeConfig {
        &self.config
    }

    fn parzen_params(&self) -> ParzenParams {
        ParzenParams {
            prior_weight: self.config.prior_weight,
            consider_magic_clip: self.config.consider_magic_clip,
            consider_endpoints: self.config.consider_endpoints,
        }
    }

    /// The memo. Its parts are taken out while in use, so parallel asks never wait on each
    /// other (one that finds a part taken starts from scratch).
    fn memo(&self) -> std::sync::MutexGuard<'_, Memo> {
        self.memo.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One TPE draw for `trial` of the parameters `history` was built for.
    fn sample_tpe(&self, study: &StudyView, trial: &FrozenTrial, history: &mut History, salt: &str) -> Vec<f64> {
        let split = history.split(study.trials, trial, self.config.constant_liar);
        let params = self.parzen_params();
        // The bad group keeps its kernels from one ask to the next: insert the new ones into
        // the last estimator when the group only gained trials, else build it again
        // remembering kernel constants.
        let mut constants = std::mem::take(&mut history.constants);
        let previous = history.above_model.take();
        let weights = default_weights(split.above.len());
        let extended = match previous {
            Some((mut g, rows)) if split.extra_numbers.is_empty() => match insertions(&rows, &split.above) {
                Some(at) => {
                    let new: Vec<u32> = at.iter().map(|&k| split.above[k]).collect();
                    g.insert(&history.values(&new), &new, &at, &weights, &params, &mut constants).then_some(g)
                }
                None => None,
            },
            _ => None,
        };
        let space = history.space();
        let g = extended.unwrap_or_else(|| {
            let above = history.above_group(&split);
            let cache = Some((&mut constants, &above.ids[..]));
            ParzenEstimator::from_transformed(&space, above.mus, above.orders, &weights, &params, cache)
        });
        let l = {
            // A trial's kernel constants depend on its width, not on its group: one cache.
            let below = history.below_group(&split);
            let weights = default_weights(below.n_observations());
            let cache = Some((&mut constants, &below.ids[..]));
            ParzenEstimator::from_transformed(&space, below.mus, below.orders, &weights, &params, cache)
        };
        drop(space);
        history.constants = constants;
        let mut rng = trial_rng(self.seed, trial.number, salt);
        let candidates = l.sample(&mut rng, self.config.n_ei_candidates.max(1));
        let points = parzen::Points::new(&l, &candidates);
        let (ll, lg) = (l.log_pdf_at(&points), g.log_pdf_at(&points));
        if split.extra_numbers.is_empty() {
            history.above_model = Some((g, split.above));
        }
        // First maximum, as numpy's argmax; NaN never wins.
        let mut best = 0;
        let mut best_score = f64::NEG_INFINITY;
        for (i, (a, b)) in ll.iter().zip(&lg).enumerate() {
            let score = a - b;
            if score > best_score {
                best = i;
                best_score = score;
            }
        }
        candidates.iter().map(|col| col[best]).collect()
    }

    fn n_finished(study: &StudyView) -> usize {
        study.trials.iter().filter(|t| matches!(t.state, TrialState::Complete | TrialState::Pruned)).count()
    }
}

impl Sampler for TpeSampler {
    fn infer_relative_search_space(&self, study: &StudyView, _trial: &FrozenTrial) -> SearchSpace {
        if !self.config.multivariate {
            return SearchSpace::new();
        }
        let mut inter = self.memo().intersection.take().unwrap_or_default();
        inter.update(study.trials);
        let space = inter.space().into_iter().filter(|(_, d)| !d.single()).collect();
        self.memo().intersection = Some(inter);
        space
    }

    fn sample_relative(&self, study: &StudyView, trial: &FrozenTrial, space: &SearchSpace) -> BTreeMap<String, f64> {
        if space.is_empty() {
            return BTreeMap::new();
        }
        let dims: Vec<(&str, &Distribution)> = space.iter().map(|(n, d)| (n.as_str(), d)).collect();
        let mut history = match self.memo().history.take() {
            Some(h) if h.is_for(&dims, study.direction) => h,
            _ => History::new(&dims, study.direction),
        };
        history.update(study.trials);
        let values = if history.n_finished() < self.config.n_startup_trials {
            Vec::new()
        } else {
            self.sample_tpe(study, trial, &mut history, "tpe:relative")
        };
        self.memo().history = Some(history);
        space.keys().cloned().zip(values).collect()
    }

    fn sample_independent(&self, study: &StudyView, trial: &FrozenTrial, name: &str, dist: &Distribution) -> f64 {
        if Self::n_finished(study) < self.config.n_startup_trials {
            return self.random.sample_independent(study, trial, name, dist);
        }
        if dist.single() {
            return super::random::sample_uniform(dist, &mut trial_rng(self.seed, trial.number, name));
        }
        let mut history = History::new(&[(name, dist)], study.direction);
        history.update(study.trials);
        self.sample_tpe(study, trial, &mut history, &format!("tpe:{name}"))[0]
    }
}

/// Where `new` holds the entries that `old` lacks, when `new` is `old` with entries inserted
/// (`old` a subsequence of it; entries are unique), else `None`.
fn insertions(old: &[u32], new: &[u32]) -> Option<Vec<usize>> {
    let mut at = Vec::with_capacity(new.len().saturating_sub(old.len()));
    let mut old = old.iter().peekable();
    for (k, x) in new.iter().enumerate() {
        if old.next_if_eq(&x).is_none() {
            at.push(k);
        }
    }
    old.peek().is_none().then_some(at)
}

/// Optuna's `default_gamma`: how many trials form the good model, `min(⌈0.1 n⌉, 25)`.
pub fn gamma(n: usize) -> usize {
    // In floating point, as Optuna computes it.
    ((0.1 * n as f64).ceil() as usize).min(25)
}

/// Optuna's `default_weights`: ones for fewer than 25 observations, else a ramp from `1/n` to
/// 1 over the oldest `n - 25` (numpy's `linspace`) followed by 25 ones.
pub fn default_weights(n: usize) -> Vec<f64> {
    if n < 25 {
        return vec![1.0; n];
    }
    let num = n - 25;
    let start = 1.0 / n as f64;
    let mut w: Vec<f64> = match num {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (1.0 - start) / (num - 1) as f64;
            let mut ramp: Vec<f64> = (0..num).map(|i| start + i as f64 * step).collect();
            ramp[num - 1] = 1.0;
            ramp
        }
    };
    w.resize(n, 1.0);
    w
}

/// Splits the trials TPE learns from into below (good) and above (bad), each in trial-number
/// order (Optuna's `_split_trials`; the sampler uses the equivalent incremental `History`): the `γ(n)` best COMPLETE trials, then the remaining good
/// slots to PRUNED trials ranked by the last step they reached and their value there; with
/// the constant liar, RUNNING trials other than `current` join the bad ones. FAIL and WAITING
/// trials are ignored.
pub fn split_trials<'a>(
    study: &StudyView<'a>,
    current: &FrozenTrial,
    constant_liar: bool,
) -> (Vec<&'a FrozenTrial>, Vec<&'a FrozenTrial>) {
    let loss = |v: f64| {
        let l = study.direction.to_loss(v);
        if l.is_nan() {
            f64::INFINITY
        } else {
            l
        }
    };
    let mut complete: Vec<(f64, usize)> = Vec::new();
    let mut pruned: Vec<((i64, f64), usize)> = Vec::new();
    let mut class = vec![Class::Ignored; study.trials.len()];
    for (i, t) in study.trials.iter().enumerate() {
        match t.state {
            TrialState::Complete => complete.push((t.value.map_or(f64::INFINITY, loss), i)),
            TrialState::Pruned => pruned.push((history::pruned_score(t, study.direction), i)),
            TrialState::Running if constant_liar && t.number != current.number => class[i] = Class::Above,
            _ => {}
        }
    }
    let mut n_below = gamma(complete.len() + pruned.len());
    // Stable sorts: ties keep trial order, as Python's `sorted`.
    complete.sort_by(|a, b| a.0.total_cmp(&b.0));
    pruned.sort_by(|a, b| a.0 .0.cmp(&b.0 .0).then(a.0 .1.total_cmp(&b.0 .1)));
    for (j, &(_, i)) in complete.iter().enumerate() {
        class[i] = if j < n_below { Class::Below } else { Class::Above };
    }
    n_below = n_below.saturating_sub(complete.len());
    for (j, &(_, i)) in pruned.iter().enumerate() {
        class[i] = if j < n_below { Class::Below } else { Class::Above };
    }
    let mut below = Vec::new();
    let mut above = Vec::new();
    for (t, c) in study.trials.iter().zip(&class) {
        match c {
            Class::Below => below.push(&**t),
            Class::Above => above.push(&**t),
            Class::Ignored => {}
        }
    }
    (below, above)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Class {
    Ignored,
    Below,
    Above,
}

/// The parameters every COMPLETE or PRUNED trial has with the same distribution (Optuna's
/// `IntersectionSearchSpace(include_pruned=True)`), sorted by name.
pub fn intersection_search_space(trials: &[Arc<FrozenTrial>]) -> SearchSpace {
    let mut inter = Intersection::default();
    inter.update(trials);
    inter.space()
}

#[cfg(test)]
mod tests;
