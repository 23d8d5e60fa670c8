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

use std::collections::BTreeMap;

use super::{trial_rng, RandomSampler, Sampler, SearchSpace, StudyView};
use crate::distribution::Distribution;
use crate::frozen::{Direction, FrozenTrial, TrialState};

mod parzen;
mod truncnorm;

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
#[derive(Debug, Clone)]
pub struct TpeSampler {
    config: TpeConfig,
    seed: u64,
    random: RandomSampler,
}

impl TpeSampler {
    /// A TPE sampler with `config`, drawing all its randomness from `seed`.
    pub fn new(config: TpeConfig, seed: u64) -> Self {
        TpeSampler { config, seed, random: RandomSampler::new(seed) }
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

    /// One TPE draw of the parameters `dims` (sorted by name) for `trial`.
    fn sample_tpe(
        &self,
        study: &StudyView,
        trial: &FrozenTrial,
        dims: &[(&str, &Distribution)],
        salt: &str,
    ) -> Vec<f64> {
        let (below, above) = split_trials(study, trial, self.config.constant_liar);
        let space: Vec<&Distribution> = dims.iter().map(|(_, d)| *d).collect();
        let params = self.parzen_params();
        let build = |group: &[&FrozenTrial]| {
            let obs = observations(group, dims);
            let n = obs.first().map_or(0, Vec::len);
            ParzenEstimator::new(&space, &obs, &default_weights(n), &params)
        };
        let (l, g) = (build(&below), build(&above));
        let mut rng = trial_rng(self.seed, trial.number, salt);
        let candidates = l.sample(&mut rng, self.config.n_ei_candidates.max(1));
        let (ll, lg) = (l.log_pdf(&candidates), g.log_pdf(&candidates));
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
        intersection_search_space(study.trials).into_iter().filter(|(_, d)| !d.single()).collect()
    }

    fn sample_relative(&self, study: &StudyView, trial: &FrozenTrial, space: &SearchSpace) -> BTreeMap<String, f64> {
        if space.is_empty() || Self::n_finished(study) < self.config.n_startup_trials {
            return BTreeMap::new();
        }
        let dims: Vec<(&str, &Distribution)> = space.iter().map(|(n, d)| (n.as_str(), d)).collect();
        let values = self.sample_tpe(study, trial, &dims, "tpe:relative");
        space.keys().cloned().zip(values).collect()
    }

    fn sample_independent(&self, study: &StudyView, trial: &FrozenTrial, name: &str, dist: &Distribution) -> f64 {
        if Self::n_finished(study) < self.config.n_startup_trials {
            return self.random.sample_independent(study, trial, name, dist);
        }
        if dist.single() {
            return super::random::sample_uniform(dist, &mut trial_rng(self.seed, trial.number, name));
        }
        self.sample_tpe(study, trial, &[(name, dist)], &format!("tpe:{name}"))[0]
    }
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
/// order (Optuna's `_split_trials`): the `γ(n)` best COMPLETE trials, then the remaining good
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
            TrialState::Pruned => pruned.push((pruned_score(t, study.direction), i)),
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
            Class::Below => below.push(t),
            Class::Above => above.push(t),
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

/// Optuna's `_get_pruned_trial_score`: trials that got further first, then by their value at
/// their last step (NaN last); trials without any report after all others.
fn pruned_score(t: &FrozenTrial, direction: Direction) -> (i64, f64) {
    match t.intermediate_values.iter().next_back() {
        Some((&step, &v)) if v.is_nan() => (-step, f64::INFINITY),
        Some((&step, &v)) => (-step, direction.to_loss(v)),
        None => (1, 0.0),
    }
}

/// The observation columns of `dims` over the trials that have all of them (Optuna's
/// `_get_internal_repr`). Log-scale values that are not positive (possible only for RUNNING
/// trials of an older range) are left out.
fn observations(trials: &[&FrozenTrial], dims: &[(&str, &Distribution)]) -> Vec<Vec<f64>> {
    let mut cols: Vec<Vec<f64>> = dims.iter().map(|_| Vec::with_capacity(trials.len())).collect();
    let mut row = vec![0.0; dims.len()];
    'trials: for t in trials {
        // Both the trial's params and `dims` are sorted by name: one merge pass.
        let mut params = t.params.iter();
        for (j, (name, dist)) in dims.iter().enumerate() {
            let v = loop {
                match params.next() {
                    Some((k, &v)) => match k.as_str().cmp(name) {
                        std::cmp::Ordering::Less => continue,
                        std::cmp::Ordering::Equal => break v,
                        std::cmp::Ordering::Greater => continue 'trials,
                    },
                    None => continue 'trials,
                }
            };
            let log = matches!(dist, Distribution::Float { log: true, .. } | Distribution::Int { log: true, .. });
            if !v.is_finite() || (log && v <= 0.0) {
                continue 'trials;
            }
            row[j] = v;
        }
        for (c, &v) in cols.iter_mut().zip(&row) {
            c.push(v);
        }
    }
    cols
}

/// The parameters every COMPLETE or PRUNED trial has with the same distribution (Optuna's
/// `IntersectionSearchSpace(include_pruned=True)`), sorted by name.
pub fn intersection_search_space(trials: &[FrozenTrial]) -> SearchSpace {
    let mut space: Option<Vec<(&String, &Distribution)>> = None;
    for t in trials.iter().filter(|t| matches!(t.state, TrialState::Complete | TrialState::Pruned)) {
        match &mut space {
            None => space = Some(t.distributions.iter().collect()),
            Some(s) => {
                // Merge pass over two name-sorted lists.
                let mut other = t.distributions.iter().peekable();
                s.retain(|(name, dist)| {
                    while let Some((k, _)) = other.peek() {
                        if k < name {
                            other.next();
                        } else {
                            break;
                        }
                    }
                    matches!(other.peek(), Some((k, d)) if k == name && d == dist)
                });
            }
        }
        if space.as_ref().is_some_and(Vec::is_empty) {
            break;
        }
    }
    space.unwrap_or_default().into_iter().map(|(n, d)| (n.clone(), d.clone())).collect()
}

#[cfg(test)]
mod tests;
