//! The Parzen estimator of TPE (Bergstra et al., "Algorithms for Hyper-Parameter
//! Optimization", NeurIPS 2011, section 4; Optuna's `_ParzenEstimator` and
//! `_MixtureOfProductDistribution`): a mixture with one product kernel per observation plus a
//! prior kernel.
//!
//! Per dimension, numbers live in a transformed space (log for log ranges; ints and stepped
//! floats widened by half a step at each end). A kernel is a normal truncated to the range,
//! centred on its observation, as wide as the larger gap to its sorted neighbours and clipped to
//! `[range / min(100, n + 2), range]` ("magic clip"); the prior kernel sits at the centre with
//! the width of the range. Stepped dimensions use the kernel's mass on each value's rounding
//! interval. A categorical kernel puts `prior_weight / (n + 1)` on every choice plus 1 on the
//! observed one, normalised.
//!
//! Speed: the bad model of a large study has a kernel per trial, and in several dimensions a
//! point is within reach of only some of them. Each kernel's constant terms (log width and
//! truncation normaliser per dimension) are summed once per estimator (and remembered between
//! asks by the caller, keyed on the kernel's width); a log-density then runs one vectorised
//! pass over the kernels for the continuous dimensions (four points at a time, so that each
//! kernel's centre and width are read once for all four), and adds the rest (categorical terms,
//! log weight, interval masses of stepped values) only for kernels within `NEGLIGIBLE` nats of
//! the best one, computing a mass only when a cheap bound of it does not already rule the
//! kernel out. The others weigh less than `e^-35` of it each, so the result is the log-sum-exp
//! over all kernels to about 1e-12.

use rand::Rng;

use super::truncnorm::{self, LN_SQRT_2PI};
use crate::distribution::Distribution;

/// Kernels whose log term is this far below the largest one are left out of a log-density:
/// each weighs less than `e^-35 ≈ 6e-16` of the largest, so even a thousand of them change it
/// by less than `1e-12` (relative), far below any difference that decides between candidates.
const NEGLIGIBLE: f64 = 35.0;

/// The smallest kernel width without the magic clip (Optuna's `EPS`).
const EPS: f64 = 1e-12;

/// Marks a kernel without an id in a `ConstantCache` (the prior, RUNNING trials).
pub(crate) const NO_ID: u32 = u32::MAX;

/// Settings shared by every estimator of a sampler (Optuna's `_ParzenEstimatorParameters`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParzenParams {
    /// Weight of the prior kernel relative to an observation of weight 1.
    pub prior_weight: f64,
    /// Floor kernel widths at `range / min(100, n + 2)`.
    pub consider_magic_clip: bool,
    /// Let the range ends count as neighbours of the outermost observations.
    pub consider_endpoints: bool,
}

/// Kernel constants remembered between estimators over the same dimensions: per dimension and
/// observation id, the kernel width they were computed for and the constant. An observation's
/// centre never changes and its width rarely does, so a large study recomputes only a few
/// constants per ask.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConstantCache {
    dims: Vec<Vec<(f64, Constants)>>,
}

/// A kernel's constant log term in one dimension (`constant_term`) and `ln σ`.
type Constants = (f64, f64);

/// One numeric dimension: kernels in the transformed space.
#[derive(Debug, Clone, PartialEq)]
struct NumDim {
    log: bool,
    /// Grid step of ints and stepped floats, whose values are then discrete.
    step: Option<f64>,
    /// The distribution's bounds in its own scale, to round and clip samples.
    low: f64,
    high: f64,
    /// Truncation bounds in the transformed space.
    lo: f64,
    hi: f64,
    mu: Vec<f64>,
    sigma: Vec<f64>,
    /// Per kernel, `√½ / σ` for a continuous dimension (its exponent is `-((t - μ) · unit)²`),
    /// `1 / σ` for a stepped one (standardising interval ends).
    unit: Vec<f64>,
    /// Each kernel's constant log term (`constant_term`).
    constant: Vec<f64>,
    /// Each kernel's `ln σ`.
    log_sigma: Vec<f64>,
    /// The observation kernels sorted by (centre, index), for the widths.
    order: Vec<u32>,
}

impl NumDim {
    /// One draw from kernel `k`, back in the distribution's own scale.
    fn sample<R: Rng + ?Sized>(&self, rng: &mut R, k: usize) -> f64 {
        let (m, s) = (self.mu[k], self.sigma[k]);
        let z = truncnorm::sample(rng, (self.lo - m) / s, (self.hi - m) / s);
        let t = (m + s * z).clamp(self.lo, self.hi);
        let x = if self.log { t.exp() } else { t };
        match self.step {
            // numpy's round is half-to-even.
            Some(step) => (self.low + ((x - self.low) / step).round_ties_even() * step).clamp(self.low, self.high),
            None => x.clamp(self.low, self.high),
        }
    }
}

/// A kernel's constant log term in a numeric dimension: `-ln σ - ln √(2π) - ln mass` for a
/// density, `-ln mass` for the probabilities of a stepped dimension, where `mass` is the
/// kernel's mass on `[lo, hi]`.
fn constant_term(m: f64, s: f64, lo: f64, hi: f64, stepped: bool) -> Constants {
    let neg_log_mass = -truncnorm::log_gauss_mass((lo - m) / s, (hi - m) / s);
    let log_sigma = s.ln();
    if stepped {
        (neg_log_mass, log_sigma)
    } else {
        (neg_log_mass - log_sigma - LN_SQRT_2PI, log_sigma)
    }
}

/// One categorical dimension. Every observation kernel has the same two probabilities (its
/// observed choice, any other), the prior kernel a uniform one.
#[derive(Debug, Clone, PartialEq)]
struct CatDim {
    n_choices: usize,
    /// The observed choice of each observation kernel (the prior kernel, last, has none).
    obs: Vec<u32>,
    hit: f64,
    miss: f64,
    prior: f64,
    log_hit: f64,
    log_miss: f64,
    log_prior: f64,
}

impl CatDim {
    /// The probabilities for the current observations.
    fn set_probs(&mut self, prior_weight: f64) {
        let n_kernels = self.obs.len() + 1;
        let uniform = 1.0 / self.n_choices as f64;
        let smooth = prior_weight / n_kernels as f64;
        let total = smooth * self.n_choices as f64 + 1.0;
        (self.hit, self.miss) = ((smooth + 1.0) / total, smooth / total);
        self.prior = if self.obs.is_empty() || prior_weight > 0.0 { uniform } else { 0.0 };
        (self.log_hit, self.log_miss, self.log_prior) = (self.hit.ln(), self.miss.ln(), self.prior.ln());
    }

    fn prob(&self, k: usize, c: usize) -> f64 {
        match self.obs.get(k) {
            None => self.prior,
            Some(&o) if o as usize == c => self.hit,
            Some(_) => self.miss,
        }
    }

    #[inline]
    fn log_prob(&self, k: usize, c: usize) -> f64 {
        match self.obs.get(k) {
            None => self.log_prior,
            Some(&o) if o as usize == c => self.log_hit,
            Some(_) => self.log_miss,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Dim {
    Num(NumDim),
    Cat(CatDim),
}

/// A mixture of product kernels over a search space (one column per parameter).
#[derive(Debug, Clone, PartialEq)]
pub struct ParzenEstimator {
    n_kernels: usize,
    /// Normalised mixture weights, the prior last.
    weights: Vec<f64>,
    cum_weights: Vec<f64>,
    log_max_weight: f64,
    dims: Vec<Dim>,
    /// Per kernel, the sum of its numeric dimensions' constant terms.
    constant: Vec<f64>,
    /// Each observation kernel's id in the `ConstantCache` it was built with (`NO_ID`: none).
    ids: Vec<u32>,
    /// Dimensions of the pass over all kernels: the continuous ones (their exponents, exactly),
    /// or when there are none the stepped ones (a bound of their masses).
    dense: Vec<usize>,
    dense_exact: bool,
    categorical: Vec<usize>,
    stepped: Vec<usize>,
}

impl ParzenEstimator {
    /// Builds the estimator of `obs` (one column per dimension of `space`, internal values:
    /// numbers as such, categoricals as indices) with observation weights `weights` (one per
    /// row). All columns must have `weights.len()` rows.
    pub fn new(space: &[&Distribution], obs: &[Vec<f64>], weights: &[f64], params: &ParzenParams) -> Self {
        let mus: Vec<Vec<f64>> = space.iter().zip(obs).map(|(d, col)| transform(d, col)).collect();
        let orders: Vec<Vec<u32>> =
            space.iter().zip(&mus).map(|(d, mu)| if is_numeric(d) { sorted_order(mu) } else { Vec::new() }).collect();
        Self::from_transformed(space, mus, orders, weights, params, None)
    }

    /// Builds the estimator from observations already in the transformed space (`transform`),
    /// with, for each numeric dimension, the observation indices sorted by (value, index)
    /// (`sorted_order`; empty for categoricals). With `cache`, kernel constants are looked up
    /// by each observation's id (`NO_ID`: none) and remembered.
    pub(crate) fn from_transformed(
        space: &[&Distribution],
        mus: Vec<Vec<f64>>,
        orders: Vec<Vec<u32>>,
        weights: &[f64],
        params: &ParzenParams,
        mut cache: Option<(&mut ConstantCache, &[u32])>,
    ) -> Self {
        let n = weights.len();
        debug_assert!(mus.iter().all(|c| c.len() == n));
        let (w, cum_weights, log_max_weight) = mixture_weights(weights, params.prior_weight);
        if let Some((c, _)) = &mut cache {
            c.dims.resize(space.len(), Vec::new());
        }
        let ids: Vec<u32> = match &cache {
            Some((_, ids)) => ids.to_vec(),
            None => vec![NO_ID; n],
        };
        let mut constant = vec![0.0; n + 1];
        let dims: Vec<Dim> = space
            .iter()
            .zip(mus)
            .zip(orders)
            .enumerate()
            .map(|(d, ((dist, mu), order))| match dist {
                Distribution::Categorical { choices } => Dim::Cat(categorical(choices.len(), &mu, params.prior_weight)),
                _ => {
                    let nd = numeric(dist, mu, order, params, cache.as_mut().map(|(c, _)| &mut c.dims[d]), &ids);
                    constant.iter_mut().zip(&nd.constant).for_each(|(c, x)| *c += x);
                    Dim::Num(nd)
                }
            })
            .collect();

        let is_cont = |d: &usize| matches!(dims[*d], Dim::Num(NumDim { step: None, .. }));
        let is_stepped = |d: &usize| matches!(dims[*d], Dim::Num(NumDim { step: Some(_), .. }));
        let all = 0..dims.len();
        let stepped: Vec<usize> = all.clone().filter(is_stepped).collect();
        let mut dense: Vec<usize> = all.clone().filter(is_cont).collect();
        let dense_exact = !dense.is_empty() || stepped.is_empty();
        if dense.is_empty() {
            dense = stepped.clone();
        }
        ParzenEstimator {
            n_kernels: n + 1,
            weights: w,
            cum_weights,
            log_max_weight,
            categorical: all.filter(|d| matches!(dims[*d], Dim::Cat(_))).collect(),
            dims,
            constant,
            ids,
            dense,
            dense_exact,
            stepped,
        }
    }

    /// Turns this estimator into the one `from_transformed` would build after inserting
    /// observations (`new`: one column per dimension, transformed; `new_ids`: their cache ids)
    /// among its own, so that they end up as kernels `at` (ascending), with `weights` for all
    /// of them: only the new kernels and their sorted neighbours get new widths. This is how
    /// the bad model follows a sequential study, where an ask adds the last trial to it, or a
    /// trial that a better one pushed out of the good group. Returns false, changing nothing,
    /// where the widths' clip still depends on the number of observations; the caller then
    /// builds afresh.
    pub(crate) fn insert(
        &mut self,
        new: &[Vec<f64>],
        new_ids: &[u32],
        at: &[usize],
        weights: &[f64],
        params: &ParzenParams,
        cache: &mut ConstantCache,
    ) -> bool {
        let old = self.n_kernels - 1;
        let n = old + new_ids.len();
        debug_assert_eq!(weights.len(), n);
        debug_assert!(at.len() == new_ids.len() && at.windows(2).all(|w| w[0] < w[1]) && at.last() < Some(&n));
        if old < 2 || (params.consider_magic_clip && old < 98) {
            return false;
        }
        cache.dims.resize(self.dims.len(), Vec::new());
        (self.weights, self.cum_weights, self.log_max_weight) = mixture_weights(weights, params.prior_weight);
        // Where each old kernel moves to (nowhere when all the new ones come last).
        let mut moved_to = Vec::new();
        if at.first().is_some_and(|&k| k < old) {
            let mut inserted = at.iter().peekable();
            moved_to.extend((0..n).filter(|k| inserted.next_if_eq(&k).is_none()).map(|k| k as u32));
        }
        insert_at(&mut self.ids, at, new_ids);
        // Kernels whose constant changed in some dimension get their sum recomputed.
        let mut changed: Vec<usize> = at.to_vec();
        for ((dim, col), remembered) in self.dims.iter_mut().zip(new).zip(&mut cache.dims) {
            match dim {
                Dim::Cat(cd) => {
                    let obs: Vec<u32> = col.iter().map(|&c| (c as usize).min(cd.n_choices - 1) as u32).collect();
                    insert_at(&mut cd.obs, at, &obs);
                    cd.set_probs(params.prior_weight);
                }
                Dim::Num(nd) => nd.insert(col, at, &moved_to, &self.ids, params, remembered, &mut changed),
            }
        }
        // The prior stays last.
        let prior = self.constant.pop().expect("an estimator has its prior kernel");
        insert_at(&mut self.constant, at, &vec![0.0; at.len()]);
        self.constant.push(prior);
        changed.sort_unstable();
        changed.dedup();
        for &k in &changed {
            let mut c = 0.0;
            for dim in &self.dims {
                if let Dim::Num(nd) = dim {
                    c += nd.constant[k];
                }
            }
            self.constant[k] = c;
        }
        self.n_kernels = n + 1;
        true
    }

    /// Number of kernels (observations plus the prior).
    pub fn n_kernels(&self) -> usize {
        self.n_kernels
    }

    /// The normalised mixture weights, the prior's last.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// Kernel centres and widths of numeric dimension `d` (transformed space), or `None` for a
    /// categorical one.
    pub fn mus_sigmas(&self, d: usize) -> Option<(&[f64], &[f64])> {
        match &self.dims[d] {
            Dim::Num(nd) => Some((&nd.mu, &nd.sigma)),
            Dim::Cat(_) => None,
        }
    }

    /// Kernel-major choice probabilities of categorical dimension `d`.
    pub fn choice_probs(&self, d: usize) -> Option<Vec<f64>> {
        match &self.dims[d] {
            Dim::Cat(cd) => {
                Some((0..self.n_kernels).flat_map(|k| (0..cd.n_choices).map(move |c| cd.prob(k, c))).collect())
            }
            Dim::Num(_) => None,
        }
    }

    /// Draws `size` points: a kernel by mixture weight, then each dimension from it. Returns one
    /// column per dimension, in the internal representation (ints and stepped floats on their
    /// grid, categoricals as indices).
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R, size: usize) -> Vec<Vec<f64>> {
        let last = self.n_kernels - 1;
        let active: Vec<usize> = (0..size)
            .map(|_| {
                let u = rng.random::<f64>() * self.cum_weights[last];
                self.cum_weights.partition_point(|&c| c <= u).min(last)
            })
            .collect();
        self.dims
            .iter()
            .map(|dim| match dim {
                Dim::Cat(cd) => active
                    .iter()
                    .map(|&k| {
                        let u = rng.random::<f64>();
                        let mut acc = 0.0;
                        let mut choice = cd.n_choices - 1;
                        for c in 0..cd.n_choices - 1 {
                            acc += cd.prob(k, c);
                            if u < acc {
                                choice = c;
                                break;
                            }
                        }
                        choice as f64
                    })
                    .collect(),
                Dim::Num(nd) => active.iter().map(|&k| nd.sample(rng, k)).collect(),
            })
            .collect()
    }

    /// The mixture's log-density at each point of `samples` (one column per dimension, as
    /// `sample` returns them; points must lie in the distributions). Log ranges are densities
    /// in log space, stepped ranges probabilities of the value, as in Optuna.
    pub fn log_pdf(&self, samples: &[Vec<f64>]) -> Vec<f64> {
        self.log_pdf_at(&Points::new(self, samples))
    }

    /// `log_pdf` at points prepared by `Points::new` for an estimator over the same space.
    pub(crate) fn log_pdf_at(&self, points: &Points) -> Vec<f64> {
        SCRATCH.with_borrow_mut(|scratch| self.log_pdf_with(points, scratch))
    }

    fn log_pdf_with(&self, points: &Points, scratch: &mut Scratch) -> Vec<f64> {
        let kn = self.n_kernels;
        let dims = self.dim_views();
        let Scratch { memo, acc, terms, near } = scratch;
        memo.start(kn, points.n_slots);
        acc.iter_mut().for_each(|a| a.resize(kn, 0.0));
        let mut out = Vec::with_capacity(points.size);
        for first in (0..points.size).step_by(POINTS) {
            let group = first..(first + POINTS).min(points.size);
            let tops = self.dense_pass(&dims, points, group.clone(), acc);
            for (i, (top, acc)) in group.zip(tops.into_iter().zip(acc.iter())) {
                let point = points.point(i);
                // Categorical terms and interval masses are at most 0: `acc[k] + ln(max
                // weight)` bounds kernel k's total. The kernel with the largest bound gives a
                // first total to measure the others against.
                let mut best = self.kernel_total(&dims, top, acc[top], &point, memo, f64::NEG_INFINITY);
                terms.clear();
                terms.push(best);
                indices_at_least(acc, best - NEGLIGIBLE - self.log_max_weight, near);
                for &k in near.iter() {
                    let k = k as usize;
                    if k != top {
                        let v = self.kernel_total(&dims, k, acc[k], &point, memo, best - NEGLIGIBLE);
                        if v > f64::NEG_INFINITY {
                            best = best.max(v);
                            terms.push(v);
                        }
                    }
                }
                out.push(log_sum_exp(terms));
            }
        }
        out
    }

    /// The dimensions by role, resolved once per `log_pdf` call.
    fn dim_views(&self) -> DimViews<'_> {
        let num = |d: &usize| match &self.dims[*d] {
            Dim::Num(nd) => nd,
            Dim::Cat(_) => unreachable!("dense and stepped dimensions are numeric"),
        };
        DimViews {
            dense: self.dense.iter().map(num).collect(),
            stepped: self.stepped.iter().map(num).collect(),
            categorical: self
                .categorical
                .iter()
                .map(|d| match &self.dims[*d] {
                    Dim::Cat(cd) => cd,
                    Dim::Num(_) => unreachable!("categorical dimensions are categorical"),
                })
                .collect(),
        }
    }

    /// For each point `i` of `group` (at most `POINTS`), sets `acc[i - group.start][k]` to
    /// kernel `k`'s constant terms plus its terms in the dense dimensions at the point (exact
    /// for continuous ones, an upper bound for stepped ones), for every kernel, and returns the
    /// first kernel with the largest (NaN never wins; 0 when none is a number).
    fn dense_pass(
        &self,
        dims: &DimViews,
        points: &Points,
        group: std::ops::Range<usize>,
        acc: &mut [Vec<f64>; POINTS],
    ) -> Vec<usize> {
        if !self.dense_exact {
            // Stepped dimensions only: mass <= min(1, width * density at the interval's point
            // nearest the centre), with the narrowest width standing in for each kernel's.
            return group
                .zip(acc.iter_mut())
                .map(|(i, acc)| {
                    acc.copy_from_slice(&self.constant);
                    for (nd, iv) in dims.dense.iter().zip(points.point(i).intervals) {
                        // The narrowest width bounds every kernel's `ln(1/σ)`.
                        let log_min_sigma = nd.sigma.iter().copied().fold(f64::INFINITY, f64::min).ln();
                        let lw = iv.log_width - LN_SQRT_2PI - log_min_sigma;
                        for ((a, &m), &is) in acc.iter_mut().zip(&nd.mu).zip(&nd.unit) {
                            let (zl, zr) = ((iv.left - m) * is, (iv.right - m) * is);
                            let zc = if zl > 0.0 {
                                zl
                            } else if zr < 0.0 {
                                zr
                            } else {
                                0.0
                            };
                            *a += (lw - 0.5 * zc * zc).min(0.0);
                        }
                    }
                    let m = max_of(acc);
                    acc.iter().position(|&a| a == m).unwrap_or(0)
                })
                .collect();
        }
        let mus: Vec<&[f64]> = dims.dense.iter().map(|nd| &nd.mu[..]).collect();
        let units: Vec<&[f64]> = dims.dense.iter().map(|nd| &nd.unit[..]).collect();
        // Per dimension, the group's coordinates; missing points repeat the last one.
        let ts: Vec<[f64; POINTS]> = (0..mus.len())
            .map(|d| std::array::from_fn(|p| points.point((group.start + p).min(group.end - 1)).cont[d]))
            .collect();
        let args = DenseArgs { constant: &self.constant, mus: &mus, units: &units, ts: &ts };
        let best = dense_exponents(&args, acc);
        group
            .zip(best.iter().zip(acc.iter()))
            .map(|(_, (&(m, k), acc))| match k {
                Some(k) if acc[k] == m => k,
                // Only negative infinities or NaNs.
                _ => acc.iter().position(|&a| a == m).unwrap_or(0),
            })
            .collect()
    }

    /// Kernel `k`'s log term at `point`, given its dense-pass value `dense`: constants and
    /// continuous exponents (that value, when exact), categorical terms, the log weight, then
    /// interval masses, always summed in that order. Gives up (negative infinity) as soon as
    /// what is left (all at most 0) cannot lift it to `threshold`.
    #[inline(always)]
    fn kernel_total(
        &self,
        dims: &DimViews,
        k: usize,
        dense: f64,
        point: &Point<'_>,
        memo: &mut Memo,
        threshold: f64,
    ) -> f64 {
        let mut s = if self.dense_exact { dense } else { self.constant[k] };
        for (cd, &c) in dims.categorical.iter().zip(point.choices) {
            s += cd.log_prob(k, c as usize);
        }
        if s + self.log_max_weight < threshold {
            return f64::NEG_INFINITY;
        }
        s += memo.log_weight(k, || self.weights[k].ln());
        for (nd, iv) in dims.stepped.iter().zip(point.intervals) {
            if s < threshold {
                return f64::NEG_INFINITY;
            }
            let slot = memo.mass_slot(k, iv.slot);
            let mass = match memo.mass(slot) {
                Some(mass) => mass,
                None => {
                    let (m, is, ls) = (nd.mu[k], nd.unit[k], nd.log_sigma[k]);
                    if s + mass_bound(iv, m, is, ls) < threshold {
                        return f64::NEG_INFINITY;
                    }
                    let key = [m, nd.sigma[k], iv.left, iv.right, iv.half_width];
                    let mass = memo.known.get_or_insert(key, || interval_log_mass(iv, m, is, ls));
                    memo.set_mass(slot, mass);
                    mass
                }
            };
            s += mass;
        }
        s
    }
}

/// The numeric and categorical dimensions of an estimator by the role they play in `log_pdf`.
struct DimViews<'a> {
    dense: Vec<&'a NumDim>,
    stepped: Vec<&'a NumDim>,
    categorical: Vec<&'a CatDim>,
}

/// Points for `log_pdf`, prepared once per dimension role (the good and bad estimators of a
/// search space share them): continuous values in the transformed space (of the dense
/// dimensions, when those are continuous), stepped values' intervals, categorical choices.
pub(crate) struct Points {
    size: usize,
    cont: Vec<f64>,
    intervals: Vec<Interval>,
    choices: Vec<u32>,
    n_cont: usize,
    n_stepped: usize,
    n_cat: usize,
    /// Distinct stepped values, each with its own slot of remembered masses.
    n_slots: usize,
}

/// One point of `Points`.
struct Point<'a> {
    cont: &'a [f64],
    intervals: &'a [Interval],
    choices: &'a [u32],
}

impl Points {
    /// Prepares `samples` (one column per dimension of `pe`'s space, as `sample` returns them).
    pub(crate) fn new(pe: &ParzenEstimator, samples: &[Vec<f64>]) -> Self {
        let size = samples.first().map_or(0, Vec::len);
        let dims = pe.dim_views();
        let n_cont = if pe.dense_exact { pe.dense.len() } else { 0 };
        let mut points = Points {
            size,
            cont: Vec::with_capacity(size * n_cont),
            intervals: Vec::with_capacity(size * pe.stepped.len()),
            choices: Vec::with_capacity(size * pe.categorical.len()),
            n_cont,
            n_stepped: pe.stepped.len(),
            n_cat: pe.categorical.len(),
            n_slots: 0,
        };
        // Per stepped dimension, the distinct values among the points and their memo slots.
        let mut slots: Vec<(usize, Vec<u64>)> = Vec::with_capacity(pe.stepped.len());
        for &d in &pe.stepped {
            let mut values: Vec<u64> = samples[d].iter().map(|x| x.to_bits()).collect();
            values.sort_unstable();
            values.dedup();
            slots.push((points.n_slots, values));
            points.n_slots += slots.last().map_or(0, |s| s.1.len());
        }
        // Columns in, rows out: `i` indexes every column.
        #[allow(clippy::needless_range_loop)]
        for i in 0..size {
            if pe.dense_exact {
                for (nd, &d) in dims.dense.iter().zip(&pe.dense) {
                    let x = samples[d][i];
                    points.cont.push(if nd.log { x.ln() } else { x });
                }
            }
            for ((nd, &d), (base, values)) in dims.stepped.iter().zip(&pe.stepped).zip(&slots) {
                let x = samples[d][i];
                let slot = base + values.binary_search(&x.to_bits()).unwrap_or(0);
                points.intervals.push(Interval::new(x, nd.step.expect("a stepped dimension"), nd.log, slot));
            }
            for (cd, &d) in dims.categorical.iter().zip(&pe.categorical) {
                points.choices.push((samples[d][i] as usize).min(cd.n_choices - 1) as u32);
            }
        }
        points
    }

    fn point(&self, i: usize) -> Point<'_> {
        Point {
            cont: &self.cont[i * self.n_cont..(i + 1) * self.n_cont],
            intervals: &self.intervals[i * self.n_stepped..(i + 1) * self.n_stepped],
            choices: &self.choices[i * self.n_cat..(i + 1) * self.n_cat],
        }
    }
}

/// A stepped value's rounding interval `[left, right]` in the transformed space.
#[derive(Debug, Clone, Copy)]
struct Interval {
    left: f64,
    right: f64,
    /// Its centre.
    mid: f64,
    /// `ln(right - left)`, computed without cancellation.
    log_width: f64,
    /// Half its width.
    half_width: f64,
    /// Where this value's kernel masses are remembered: points share them when they share the
    /// value, which candidates drawn near the good trials often do (Optuna's `np.unique`).
    slot: usize,
}

impl Interval {
    /// The interval of value `x` of a dimension with grid `step`, in log space if `log`.
    fn new(x: f64, step: f64, log: bool, slot: usize) -> Self {
        let (l, r) = (x - 0.5 * step, x + 0.5 * step);
        let (left, right, width) = if log {
            // ln(r) - ln(l) = ln(1 + step / l), without the cancellation of the difference.
            (l.ln(), r.ln(), (step / l).ln_1p())
        } else {
            (l, r, step)
        };
        Interval { left, right, mid: 0.5 * (left + right), log_width: width.ln(), half_width: 0.5 * width, slot }
    }
}

/// An upper bound of `interval_log_mass` that needs no transcendental function: the mass is
/// at most 1, at most the interval's width times the density at its point nearest the centre
/// (`z` standard units away), and, beyond the centre, at most the tail `Φ(-z) <= φ(z) / z`
/// (Mills' ratio), where `-ln z <= 1/z - 1`. Most kernels that get this far in `kernel_total`
/// then fall short without their mass being computed.
#[inline]
fn mass_bound(iv: &Interval, m: f64, unit: f64, log_sigma: f64) -> f64 {
    let (zl, zr) = ((iv.left - m) * unit, (iv.right - m) * unit);
    let z = if zl > 0.0 {
        zl
    } else if zr < 0.0 {
        -zr
    } else {
        return (iv.log_width - log_sigma - LN_SQRT_2PI).min(0.0);
    };
    let log_density = -0.5 * z * z - LN_SQRT_2PI;
    (log_density + (iv.log_width - log_sigma).min(1.0 / z - 1.0)).min(0.0)
}

/// The log of a kernel's mass (centre `m`, `1/σ` = `unit`, `ln σ` = `log_sigma`) on a stepped
/// value's interval. Intervals narrow against the kernel (half-width `δ ≤ 0.1` and
/// `|c|·δ ≤ 0.05` in units of σ, `c` the centre's offset) take the midpoint series
/// `2δ φ(c) Σ_j He_2j(c) δ^2j / (2j+1)!` (the Taylor expansion of `φ` integrated over the
/// interval; the first term left out is below `3e-15` relative), which needs no error function
/// and has no cancellation; others the difference of normal CDFs.
#[inline]
fn interval_log_mass(iv: &Interval, m: f64, unit: f64, log_sigma: f64) -> f64 {
    let delta = iv.half_width * unit;
    let c = (iv.mid - m) * unit;
    if delta <= 0.1 && (c * delta).abs() <= 0.05 {
        let (c2, d2) = (c * c, delta * delta);
        let he2 = c2 - 1.0;
        let he4 = (c2 - 6.0) * c2 + 3.0;
        let he6 = ((c2 - 15.0) * c2 + 45.0) * c2 - 15.0;
        let he8 = (((c2 - 28.0) * c2 + 210.0) * c2 - 420.0) * c2 + 105.0;
        let series = d2 * (he2 / 6.0 + d2 * (he4 / 120.0 + d2 * (he6 / 5040.0 + d2 * (he8 / 362_880.0))));
        return iv.log_width - log_sigma - LN_SQRT_2PI - 0.5 * c2 + series.ln_1p();
    }
    truncnorm::log_gauss_mass((iv.left - m) * unit, (iv.right - m) * unit)
}

// The loops over every kernel: most of a large study's sampling time. On x86-64 CPUs with
// AVX2 they are compiled a second time for it (four values per instruction instead of two) and
// chosen at run time; the arithmetic is the same IEEE operations either way (no fused
// multiply-add), so results do not depend on the machine.

/// Runs `$plain(args)` through its AVX2 build `$avx2` when the CPU has AVX2.
macro_rules! dispatch {
    ($plain:ident, $avx2:ident, $($arg:expr),*) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2, checked just above.
                return unsafe { $avx2($($arg),*) };
            }
        }
        $plain($($arg),*)
    }};
}

/// Points per call of `dense_exponents`: the kernels' centres and widths are read once for all
/// of them, which halves the time of the pass (it is bound by reading them, not by arithmetic).
pub(crate) const POINTS: usize = 4;

/// The kernels' dense-pass inputs and one group of up to `POINTS` points.
struct DenseArgs<'a> {
    constant: &'a [f64],
    mus: &'a [&'a [f64]],
    units: &'a [&'a [f64]],
    /// Per dimension, the points' coordinates (unused slots repeat a used one).
    ts: &'a [[f64; POINTS]],
}

/// For each point `p` of `args.ts` and kernel `k`:
/// `acc[p][k] = constant[k] - Σ_d ((t[d][p] - mus[d][k]) · units[d][k])²`, summed over `d` in
/// order; returns per point the largest value (NaN never wins) and the first `k` holding it
/// (`None` if no value exceeds negative infinity).
fn dense_exponents(args: &DenseArgs<'_>, acc: &mut [Vec<f64>; POINTS]) -> [(f64, Option<usize>); POINTS] {
    dispatch!(dense_exponents_plain, dense_exponents_avx2, args, acc)
}

/// The larger of two (value, first index) maxima; on equal values the smaller index.
#[inline(always)]
fn larger(x: (f64, Option<usize>), y: (f64, Option<usize>)) -> (f64, Option<usize>) {
    match (x.1, y.1) {
        (None, _) => y,
        (_, None) => x,
        (Some(i), Some(j)) if y.0 > x.0 || (y.0 == x.0 && j < i) => y,
        _ => x,
    }
}

/// `dense_exponents` with blocks of `B` kernels whose running sums stay in registers (`B` is
/// chosen per instruction set: `POINTS × B` sums must fit).
#[inline(always)]
fn dense_exponents_plain_with<const B: usize>(
    args: &DenseArgs<'_>,
    acc: &mut [Vec<f64>; POINTS],
) -> [(f64, Option<usize>); POINTS] {
    let n = args.constant.len();
    let full = n - n % B;
    let mut best = dense_blocks::<B>(0..full, args, acc);
    // Small estimators (the good model) are mostly tail: blocks of 2 there, then one.
    let pairs = n - (n - full) % 2;
    let more = dense_blocks::<2>(full..pairs, args, acc);
    let last = dense_blocks::<1>(pairs..n, args, acc);
    for p in 0..POINTS {
        best[p] = larger(larger(best[p], more[p]), last[p]);
    }
    best
}

#[inline(always)]
fn dense_exponents_plain(args: &DenseArgs<'_>, acc: &mut [Vec<f64>; POINTS]) -> [(f64, Option<usize>); POINTS] {
    dense_exponents_plain_with::<4>(args, acc)
}

/// `dense_exponents` over the kernels of `range`, `B` at a time (`range` a multiple of `B`).
#[inline(always)]
fn dense_blocks<const B: usize>(
    range: std::ops::Range<usize>,
    args: &DenseArgs<'_>,
    acc: &mut [Vec<f64>; POINTS],
) -> [(f64, Option<usize>); POINTS] {
    // Per point, the largest value so far and the first block holding it; the block is
    // searched at the end (an index per lane would not fit in the registers).
    let mut best = [(f64::NEG_INFINITY, None::<usize>); POINTS];
    for start in range.step_by(B) {
        let c: &[f64; B] = args.constant[start..start + B].try_into().expect("a block");
        let mut a = [*c; POINTS];
        for ((mu, u), ts) in args.mus.iter().zip(args.units).zip(args.ts) {
            let mu: &[f64; B] = mu[start..start + B].try_into().expect("a block");
            let u: &[f64; B] = u[start..start + B].try_into().expect("a block");
            for p in 0..POINTS {
                for j in 0..B {
                    let z = (ts[p] - mu[j]) * u[j];
                    a[p][j] -= z * z;
                }
            }
        }
        for p in 0..POINTS {
            let m = a[p].iter().copied().fold(f64::NEG_INFINITY, |x, y| if y > x { y } else { x });
            if m > best[p].0 {
                best[p] = (m, Some(start));
            }
            acc[p][start..start + B].copy_from_slice(&a[p]);
        }
    }
    let mut out = [(f64::NEG_INFINITY, None); POINTS];
    for p in 0..POINTS {
        if let (m, Some(start)) = best[p] {
            out[p] = (m, acc[p][start..start + B].iter().position(|&a| a == m).map(|j| start + j));
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dense_exponents_avx2(args: &DenseArgs<'_>, acc: &mut [Vec<f64>; POINTS]) -> [(f64, Option<usize>); POINTS] {
    // 4 points x 8 kernels: 8 of the 16 vector registers.
    dense_exponents_plain_with::<8>(args, acc)
}

/// The largest value (NaN never wins; negative infinity for none).
fn max_of(xs: &[f64]) -> f64 {
    dispatch!(max_of_plain, max_of_avx2, xs)
}

#[inline(always)]
fn max_of_plain(xs: &[f64]) -> f64 {
    // Eight independent running maxima let the compiler vectorise the scan.
    let mut lanes = [f64::NEG_INFINITY; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l = if x > *l { x } else { *l };
        }
    }
    lanes.iter().chain(tail).copied().fold(f64::NEG_INFINITY, |a, b| if b > a { b } else { a })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn max_of_avx2(xs: &[f64]) -> f64 {
    max_of_plain(xs)
}

/// The indices of the values at least `threshold`, in order, into `out`.
fn indices_at_least(xs: &[f64], threshold: f64, out: &mut Vec<u32>) {
    dispatch!(indices_at_least_plain, indices_at_least_avx2, xs, threshold, out)
}

#[inline(always)]
fn indices_at_least_plain(xs: &[f64], threshold: f64, out: &mut Vec<u32>) {
    out.clear();
    // Whole chunks are tested at once; few contain a hit.
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for (c, chunk) in chunks.enumerate() {
        let chunk: &[f64; 8] = chunk.try_into().expect("chunks of 8");
        if chunk.iter().fold(false, |any, &x| any | (x >= threshold)) {
            for (j, &x) in chunk.iter().enumerate() {
                if x >= threshold {
                    out.push((c * 8 + j) as u32);
                }
            }
        }
    }
    let base = xs.len() - tail.len();
    for (j, &x) in tail.iter().enumerate() {
        if x >= threshold {
            out.push((base + j) as u32);
        }
    }
}

/// For each 4-bit mask of values at least the threshold, the lanes set, in order (then padding).
#[cfg(target_arch = "x86_64")]
const LANES_OF_MASK: [[u32; 4]; 16] = {
    let mut table = [[0u32; 4]; 16];
    let mut mask = 0;
    while mask < 16 {
        let (mut n, mut lane) = (0, 0);
        while lane < 4 {
            if mask & (1 << lane) != 0 {
                table[mask][n] = lane as u32;
                n += 1;
            }
            lane += 1;
        }
        mask += 1;
    }
    table
};

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn indices_at_least_avx2(xs: &[f64], threshold: f64, out: &mut Vec<u32>) {
    use std::arch::x86_64::{
        _mm256_cmp_pd, _mm256_loadu_pd, _mm256_movemask_pd, _mm256_set1_pd, _mm_add_epi32, _mm_loadu_si128,
        _mm_set1_epi32, _mm_storeu_si128, _CMP_GE_OQ,
    };
    out.clear();
    // Every chunk of 4 stores 4 lanes (the hits first) and keeps as many as it has hits: no
    // branch per hit. Room for the last chunk's 4.
    out.reserve(xs.len() + 4);
    let th = _mm256_set1_pd(threshold);
    let chunks = xs.chunks_exact(4);
    let tail = chunks.remainder();
    let mut len = 0;
    let dst = out.as_mut_ptr();
    for (c, chunk) in chunks.enumerate() {
        // SAFETY: `chunk` holds 4 values; AVX2 is enabled for this function; `dst` has room for
        // `len + 4 <= xs.len() + 4` values.
        let v = _mm256_loadu_pd(chunk.as_ptr());
        let mask = _mm256_movemask_pd(_mm256_cmp_pd::<_CMP_GE_OQ>(v, th)) as usize;
        let lanes = _mm_loadu_si128(LANES_OF_MASK[mask].as_ptr().cast());
        _mm_storeu_si128(dst.add(len).cast(), _mm_add_epi32(lanes, _mm_set1_epi32((c * 4) as i32)));
        len += mask.count_ones() as usize;
    }
    // SAFETY: the first `len` values were written above.
    out.set_len(len);
    let base = xs.len() - tail.len();
    for (j, &x) in tail.iter().enumerate() {
        if x >= threshold {
            out.push((base + j) as u32);
        }
    }
}

/// Buffers of `log_pdf`, kept per thread so that a call allocates nothing but its result.
#[derive(Default)]
struct Scratch {
    memo: Memo,
    /// Per point of a group, every kernel's dense-pass value.
    acc: [Vec<f64>; POINTS],
    /// One point's kernel totals.
    terms: Vec<f64>,
    /// The kernels within reach of one point.
    near: Vec<u32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Per-kernel terms computed so far during one `log_pdf` call, shared by its points: the log
/// weights, and the interval masses of each distinct stepped value. An entry counts only when
/// its stamp is the current call's, so a call starts without clearing the tables (the masses
/// of a large estimator take a few hundred kilobytes).
#[derive(Default)]
struct Memo {
    n_kernels: usize,
    call: u32,
    log_weights: Vec<(u32, f64)>,
    masses: Vec<(u32, f64)>,
    /// Interval masses from earlier calls, which the next asks mostly need again.
    known: KnownMasses,
}

/// A direct-mapped memo of `interval_log_mass`, keyed on every bit of what its inputs are
/// computed from (centre, `σ`, interval ends and half-width; `1/σ`, `ln σ`, the interval's
/// centre and log-width follow from them): a kept bad
/// model's kernels and the few stepped values that candidates near the good trials take recur
/// from ask to ask, and an entry costs a hash where the mass costs two normal CDFs. Being keyed
/// on the inputs, it gives exactly what the computation gives, whatever estimator asks.
struct KnownMasses {
    entries: Vec<([u64; 5], f64)>,
}

impl KnownMasses {
    /// 4096 entries (192 KB): a large study's asks use a few hundred.
    const BITS: u32 = 12;
}

impl Default for KnownMasses {
    fn default() -> Self {
        KnownMasses { entries: vec![([u64::MAX; 5], f64::NAN); 1 << Self::BITS] }
    }
}

impl KnownMasses {
    #[inline]
    fn get_or_insert(&mut self, key: [f64; 5], f: impl FnOnce() -> f64) -> f64 {
        let bits = key.map(f64::to_bits);
        // Multiply-xor hashing of the words; the top bits index the table.
        let h = bits.iter().fold(0u64, |h, &b| (h ^ b).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29));
        let entry = &mut self.entries[(h >> (64 - Self::BITS)) as usize];
        if entry.0 != bits {
            *entry = (bits, f());
        }
        entry.1
    }
}

impl Memo {
    /// Forgets every entry and makes room for `n_kernels` kernels and `n_slots` values.
    fn start(&mut self, n_kernels: usize, n_slots: usize) {
        self.call = self.call.wrapping_add(1);
        if self.call == 0 {
            // Stamps have wrapped around: clear them once.
            self.log_weights.iter_mut().for_each(|e| e.0 = 0);
            self.masses.iter_mut().for_each(|e| e.0 = 0);
            self.call = 1;
        }
        self.n_kernels = n_kernels;
        if self.log_weights.len() < n_kernels {
            self.log_weights.resize(n_kernels, (0, 0.0));
        }
        if self.masses.len() < n_kernels * n_slots {
            self.masses.resize(n_kernels * n_slots, (0, 0.0));
        }
    }

    #[inline]
    fn log_weight(&mut self, k: usize, f: impl FnOnce() -> f64) -> f64 {
        let e = &mut self.log_weights[k];
        if e.0 != self.call {
            *e = (self.call, f());
        }
        e.1
    }

    /// Where the log mass of kernel `k` on the interval remembered in `slot` goes in `masses`.
    #[inline]
    fn mass_slot(&self, k: usize, slot: usize) -> usize {
        slot * self.n_kernels + k
    }

    #[inline]
    fn mass(&self, at: usize) -> Option<f64> {
        let (stamp, mass) = self.masses[at];
        (stamp == self.call).then_some(mass)
    }

    #[inline]
    fn set_mass(&mut self, at: usize, mass: f64) {
        self.masses[at] = (self.call, mass);
    }
}

/// Kernels of a numeric dimension (Optuna's `_calculate_numerical_distributions`), from the
/// transformed observations `mu` and their sorted order; `cache`: the dimension's remembered
/// `(width, constant)` pairs, looked up by each observation's id in `ids`.
fn numeric(
    dist: &Distribution,
    mut mu: Vec<f64>,
    order: Vec<u32>,
    params: &ParzenParams,
    mut cache: Option<&mut Vec<(f64, Constants)>>,
    ids: &[u32],
) -> NumDim {
    let (low, high, log, step) = match *dist {
        Distribution::Float { low, high, log, step } => (low, high, log, step),
        Distribution::Int { low, high, log, step } => (low as f64, high as f64, log, Some(step as f64)),
        Distribution::Categorical { .. } => unreachable!("numeric() is only called for numbers"),
    };
    let (mut lo, mut hi) = match step {
        Some(s) => (low - 0.5 * s, high + 0.5 * s),
        None => (low, high),
    };
    if log {
        lo = lo.ln();
        hi = hi.ln();
    }
    let mut sigma = kernel_widths(&mu, &order, lo, hi, params);
    mu.push(0.5 * (lo + hi));
    sigma.push(hi - lo);
    let stepped = step.is_some();
    let unit_scale = if stepped { 1.0 } else { std::f64::consts::FRAC_1_SQRT_2 };
    let unit: Vec<f64> = sigma.iter().map(|s| unit_scale / s).collect();
    let (constant, log_sigma): (Vec<f64>, Vec<f64>) = (0..mu.len())
        .map(|k| {
            let id = ids.get(k).copied().unwrap_or(NO_ID);
            kernel_constant(cache.as_deref_mut(), id, mu[k], sigma[k], lo, hi, stepped)
        })
        .unzip();
    NumDim { log, step, low, high, lo, hi, mu, sigma, unit, constant, log_sigma, order }
}

/// A kernel's `constant_term`, remembered by `id` (unless `NO_ID`) for as long as its width
/// stays the same.
fn kernel_constant(
    cache: Option<&mut Vec<(f64, Constants)>>,
    id: u32,
    m: f64,
    s: f64,
    lo: f64,
    hi: f64,
    stepped: bool,
) -> Constants {
    let Some(remembered) = cache.filter(|_| id != NO_ID) else {
        return constant_term(m, s, lo, hi, stepped);
    };
    let id = id as usize;
    if id >= remembered.len() {
        remembered.resize(id + 1, (f64::NAN, (0.0, 0.0)));
    }
    match remembered[id] {
        (w, c) if w == s => c,
        _ => {
            let c = constant_term(m, s, lo, hi, stepped);
            remembered[id] = (s, c);
            c
        }
    }
}

impl NumDim {
    /// Inserts observation kernels (transformed centres `col`) so that they become kernels
    /// `at`, the old ones moving to `moved_to` (empty: staying where they are), keeping every array as `numeric` would build
    /// it: each new kernel goes into the sorted order by (centre, index), and it and its sorted
    /// neighbours get their widths anew. Kernels whose constant changed are added to `changed`.
    #[allow(clippy::too_many_arguments)]
    fn insert(
        &mut self,
        col: &[f64],
        at: &[usize],
        moved_to: &[u32],
        ids: &[u32],
        params: &ParzenParams,
        cache: &mut Vec<(f64, Constants)>,
        changed: &mut Vec<usize>,
    ) {
        let stepped = self.step.is_some();
        let unit_scale = if stepped { 1.0 } else { std::f64::consts::FRAC_1_SQRT_2 };
        let prior = (self.mu.pop(), self.sigma.pop(), self.unit.pop(), self.constant.pop(), self.log_sigma.pop());
        let unset = vec![f64::NAN; at.len()];
        insert_at(&mut self.mu, at, col);
        for v in [&mut self.sigma, &mut self.unit, &mut self.constant, &mut self.log_sigma] {
            insert_at(v, at, &unset);
        }
        if !moved_to.is_empty() {
            self.order.iter_mut().for_each(|k| *k = moved_to[*k as usize]);
        }
        for &k in at {
            let v = self.mu[k];
            let q =
                self.order.partition_point(|&i| self.mu[i as usize].total_cmp(&v).then((i as usize).cmp(&k)).is_lt());
            self.order.insert(q, k as u32);
            for p in q.saturating_sub(1)..(q + 2).min(self.order.len()) {
                let j = self.order[p] as usize;
                let s = width_at(&self.mu, &self.order, p, self.lo, self.hi, params);
                if s == self.sigma[j] {
                    continue;
                }
                self.sigma[j] = s;
                self.unit[j] = unit_scale / s;
                (self.constant[j], self.log_sigma[j]) =
                    kernel_constant(Some(&mut *cache), ids[j], self.mu[j], s, self.lo, self.hi, stepped);
                changed.push(j);
            }
        }
        if let (Some(m), Some(s), Some(u), Some(c), Some(ls)) = prior {
            self.mu.push(m);
            self.sigma.push(s);
            self.unit.push(u);
            self.constant.push(c);
            self.log_sigma.push(ls);
        }
    }
}

/// Inserts `new[j]` into `v` so that it lands at index `at[j]` (ascending) of the result. Only
/// the values after the first insertion move: appending costs nothing more than a push.
fn insert_at<T: Copy>(v: &mut Vec<T>, at: &[usize], new: &[T]) {
    debug_assert_eq!(at.len(), new.len());
    let Some(&first) = at.first() else { return };
    let mut src = v.len();
    v.extend_from_slice(new);
    let mut placed = new.len();
    for dst in (first..v.len()).rev() {
        if placed > 0 && at[placed - 1] == dst {
            placed -= 1;
            v[dst] = new[placed];
        } else {
            src -= 1;
            v[dst] = v[src];
        }
    }
}

/// Kernels of a categorical dimension (Optuna's `_calculate_categorical_distributions`): each
/// observation's row is `prior_weight / n_kernels` everywhere plus 1 on the observed choice,
/// normalised; the prior's row is uniform (all zero if `prior_weight` is 0, as Optuna leaves a
/// zero row unnormalised).
fn categorical(n_choices: usize, col: &[f64], prior_weight: f64) -> CatDim {
    let mut cd = CatDim {
        n_choices,
        obs: col.iter().map(|&c| (c as usize).min(n_choices - 1) as u32).collect(),
        hit: 0.0,
        miss: 0.0,
        prior: 0.0,
        log_hit: 0.0,
        log_miss: 0.0,
        log_prior: 0.0,
    };
    cd.set_probs(prior_weight);
    cd
}

/// Normalised mixture weights (observations', then the prior's `prior_weight`; the prior alone
/// without observations), their running sums, and the log of the largest.
fn mixture_weights(weights: &[f64], prior_weight: f64) -> (Vec<f64>, Vec<f64>, f64) {
    let mut w: Vec<f64> = if weights.is_empty() {
        vec![1.0]
    } else {
        weights.iter().copied().chain(std::iter::once(prior_weight)).collect()
    };
    let total: f64 = w.iter().sum();
    w.iter_mut().for_each(|x| *x /= total);
    let mut cum = 0.0;
    let cum_weights: Vec<f64> = w
        .iter()
        .map(|x| {
            cum += x;
            cum
        })
        .collect();
    let log_max_weight = w.iter().copied().fold(0.0, f64::max).ln();
    (w, cum_weights, log_max_weight)
}

/// `ln Σ e^x`, leaving out terms more than `NEGLIGIBLE` below the largest.
fn log_sum_exp(xs: &[f64]) -> f64 {
    let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY || m.is_nan() {
        return m;
    }
    let cut = m - NEGLIGIBLE;
    let sum: f64 = xs.iter().filter(|&&x| x >= cut).map(|&x| (x - m).exp()).sum();
    m + sum.ln()
}

/// True for the dimensions modelled by truncated normals.
pub(crate) fn is_numeric(dist: &Distribution) -> bool {
    !matches!(dist, Distribution::Categorical { .. })
}

/// True for the dimensions modelled in log space.
pub(crate) fn is_log(dist: &Distribution) -> bool {
    matches!(dist, Distribution::Float { log: true, .. } | Distribution::Int { log: true, .. })
}

/// Internal values mapped to the space the kernels live in (log for log ranges).
pub(crate) fn transform(dist: &Distribution, col: &[f64]) -> Vec<f64> {
    if is_log(dist) {
        col.iter().map(|x| x.ln()).collect()
    } else {
        col.to_vec()
    }
}

/// Indices of `mu` sorted by (value, index): ties keep observation order, so the kernel widths
/// do not depend on the sort algorithm.
pub(crate) fn sorted_order(mu: &[f64]) -> Vec<u32> {
    let mut keyed: Vec<(f64, u32)> = mu.iter().enumerate().map(|(i, &m)| (m, i as u32)).collect();
    keyed.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    keyed.into_iter().map(|(_, i)| i).collect()
}

/// Each observation's kernel width: the larger gap to its neighbours in `order` (the range
/// ends included), clipped to `[min_sigma, hi - lo]`.
fn kernel_widths(mu: &[f64], order: &[u32], lo: f64, hi: f64, params: &ParzenParams) -> Vec<f64> {
    let mut sigma = Vec::with_capacity(mu.len() + 1);
    sigma.resize(mu.len(), 0.0);
    for (p, &k) in order.iter().enumerate() {
        sigma[k as usize] = width_at(mu, order, p, lo, hi, params);
    }
    sigma
}

/// The width of the kernel at position `p` of `order` (observations sorted by centre, `mu[..n]`
/// with `n = order.len()`): the larger gap to its sorted neighbours, the range ends included
/// (the outermost ones ignore their outer end unless `consider_endpoints`), clipped to
/// `[range / min(100, n + 2), range]` (`[EPS, range]` without the magic clip).
#[inline]
fn width_at(mu: &[f64], order: &[u32], p: usize, lo: f64, hi: f64, params: &ParzenParams) -> f64 {
    let n = order.len();
    let m = mu[order[p] as usize];
    let prev = if p == 0 { lo } else { mu[order[p - 1] as usize] };
    let next = if p + 1 == n { hi } else { mu[order[p + 1] as usize] };
    let s = if !params.consider_endpoints && n >= 2 && p == 0 {
        next - m
    } else if !params.consider_endpoints && n >= 2 && p + 1 == n {
        m - prev
    } else {
        (m - prev).max(next - m)
    };
    let (min_sigma, max_sigma) =
        (if params.consider_magic_clip { (hi - lo) / (100f64).min(n as f64 + 2.0) } else { EPS }, hi - lo);
    if s < min_sigma {
        min_sigma
    } else if s > max_sigma {
        max_sigma
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use serde_json::json;

    const OPTUNA: ParzenParams =
        ParzenParams { prior_weight: 1.0, consider_magic_clip: true, consider_endpoints: false };

    fn close(got: &[f64], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= tol * w.abs().max(1.0), "{got:?}\n vs {want:?}");
        }
    }

    #[test]
    fn kernel_widths_follow_optuna_rules() {
        // Neighbour gaps, the outermost ones ignoring the range ends, clipped to range/min(100, n+2).
        let mu = [0.5, 0.1, 0.52];
        let order = sorted_order(&mu);
        assert_eq!(order, [1, 0, 2]);
        close(&kernel_widths(&mu, &order, 0.0, 1.0, &OPTUNA), &[0.4, 0.4, 0.2], 1e-15);
        close(&kernel_widths(&[0.3], &[0], 0.0, 1.0, &OPTUNA), &[0.7], 1e-15);
        let ends = ParzenParams { consider_endpoints: true, ..OPTUNA };
        close(&kernel_widths(&mu, &order, 0.0, 1.0, &ends), &[0.4, 0.4, 0.48], 1e-15);
        // Ties keep observation order: the earlier one sees the gap below, the later the gap above.
        let mu = [0.5, 0.2, 0.5, 0.9];
        close(&kernel_widths(&mu, &sorted_order(&mu), 0.0, 1.0, &ends), &[0.3, 0.3, 0.4, 0.4], 1e-15);
    }

    /// Log masses of kernels on the rounding intervals of a log-scale int (step 1), against
    /// `mpmath` at 50 digits: `log(ncdf(b) - ncdf(a))` with `a, b = (log(x ∓ 1/2) - m) / σ`
    /// (exact logs, the f64 centre `m` and width `σ`), printed by a short script over
    /// `x ∈ {2, 3, 17, 100, 999}`, `σ ∈ {0.08, 0.5, 3}` and centres 0, 0.3, -2, 5, -9 widths
    /// below `log x`. Both the midpoint series and the CDF difference are exercised.
    #[test]
    fn interval_masses_match_high_precision_values() {
        let cases: [(f64, f64, f64, f64); 75] = [
            (2.0, 0.6931471805599453, 0.08, -0.002806644015126743),
            (2.0, 0.6691471805599453, 0.08, -0.0014945938343468874),
            (2.0, 0.8531471805599453, 0.08, -0.24203333635053123),
            (2.0, 0.29314718055994526, 0.08, -2.5236897000060505),
            (2.0, 1.4131471805599451, 0.08, -22.05607232245355),
            (2.0, 0.6931471805599453, 0.5, -0.9421662843368983),
            (2.0, 0.5431471805599453, 0.5, -0.9656523256232797),
            (2.0, 1.6931471805599454, 0.5, -2.898247595787417),
            (2.0, -1.8068528194400546, 0.5, -12.24594952513554),
            (2.0, 5.193147180559945, 0.5, -39.66162059662123),
            (2.0, 0.6931471805599453, 3.0, -2.6905430095772136),
            (2.0, -0.20685281944005462, 3.0, -2.7322152535896915),
            (2.0, 6.693147180559945, 3.0, -4.707181065832187),
            (2.0, -14.306852819440055, 3.0, -15.106896521077042),
            (2.0, 27.693147180559944, 3.0, -43.19120844801719),
            (3.0, 1.0986122886681098, 0.08, -0.03908395320879811),
            (3.0, 1.0746122886681098, 0.08, -0.03758187248498691),
            (3.0, 1.2586122886681097, 0.08, -0.7532214008546639),
            (3.0, 0.6986122886681098, 0.08, -5.727738241625475),
            (3.0, 1.8186122886681098, 0.08, -27.908804368576),
            (3.0, 1.0986122886681098, 0.5, -1.3341400697369876),
            (3.0, 0.9486122886681098, 0.5, -1.3693306149779045),
            (3.0, 2.09861228866811, 0.5, -3.3151665557054604),
            (3.0, -1.4013877113318902, 0.5, -13.269538799610473),
            (3.0, 5.59861228866811, 0.5, -40.86908412156683),
            (3.0, 1.0986122886681098, 3.0, -3.107325499152425),
            (3.0, 0.19861228866810987, 3.0, -3.150871279099601),
            (3.0, 7.09861228866811, 3.0, -5.114611169070082),
            (3.0, -13.90138771133189, 3.0, -15.570810439621582),
            (3.0, 28.09861228866811, 3.0, -43.60745532781594),
            (17.0, 2.833213344056216, 0.08, -1.2484867988281594),
            (17.0, 2.809213344056216, 0.08, -1.2899443995237805),
            (17.0, 2.9932133440562163, 0.08, -3.1717895719348594),
            (17.0, 2.4332133440562163, 0.08, -13.219216034240343),
            (17.0, 3.553213344056216, 0.08, -40.39382730836954),
            (17.0, 2.833213344056216, 0.5, -3.0592935128697896),
            (17.0, 2.6832133440562163, 0.5, -3.1039822759124567),
            (17.0, 3.833213344056216, 0.5, -5.058716362851062),
            (17.0, 0.33321334405621617, 0.5, -15.540593490261795),
            (17.0, 7.333213344056216, 0.5, -43.520784082085456),
            (17.0, 2.833213344056216, 3.0, -4.850491746170795),
            (17.0, 1.9332133440562163, 3.0, -4.895447033677853),
            (17.0, 8.833213344056215, 3.0, -6.850716099095983),
            (17.0, -12.166786655943785, 3.0, -17.349369899863046),
            (17.0, 29.833213344056215, 3.0, -45.3504918709262),
            (100.0, 4.605170185988092, 0.08, -2.999022636643192),
            (100.0, 4.581170185988092, 0.08, -3.0439172585329355),
            (100.0, 4.765170185988092, 0.08, -4.996733233354366),
            (100.0, 4.2051701859880914, 0.08, -15.482027129445513),
            (100.0, 5.3251701859880916, 0.08, -43.448263803444746),
            (100.0, 4.605170185988092, 0.5, -4.830969872355039),
            (100.0, 4.4551701859880914, 0.5, -4.875960872506742),
            (100.0, 5.605170185988092, 0.5, -6.83095320531338),
            (100.0, 2.105170185988092, 0.5, -17.330428241619565),
            (100.0, 9.105170185988092, 0.5, -45.32984522748253),
            (100.0, 4.605170185988092, 3.0, -6.622713137416535),
            (100.0, 3.705170185988092, 3.0, -6.667711845734722),
            (100.0, 10.605170185988092, 3.0, -8.622719618964977),
            (100.0, -10.394829814011908, 3.0, -19.12268072960617),
            (100.0, 31.605170185988094, 3.0, -47.12271313752071),
            (999.0, 6.906754778648554, 0.08, -5.299971107487061),
            (999.0, 6.882754778648554, 0.08, -5.344970050696121),
            (999.0, 7.066754778648554, 0.08, -7.299948145145767),
            (999.0, 6.506754778648554, 0.08, -17.799800199156202),
            (999.0, 7.626754778648554, 0.08, -45.799456856449254),
            (999.0, 6.906754778648554, 0.5, -7.13254621479357),
            (999.0, 6.756754778648554, 0.5, -7.177546124613315),
            (999.0, 7.906754778648554, 0.5, -9.132546047793033),
            (999.0, 4.406754778648554, 0.5, -19.632540787280902),
            (999.0, 11.406754778648555, 0.5, -47.63253494229547),
            (999.0, 6.906754778648554, 3.0, -8.924305521659981),
            (999.0, 6.0067547786485544, 3.0, -8.96930550871744),
            (999.0, 12.906754778648555, 3.0, -10.924305586604628),
            (999.0, -8.093245221351445, 3.0, -21.424305196936743),
            (999.0, 33.906754778648555, 3.0, -49.424305521659996),
        ];
        let (mut series, mut cdf) = (0, 0);
        for (x, m, sigma, want) in cases {
            let iv = Interval::new(x, 1.0, true, 0);
            let got = interval_log_mass(&iv, m, 1.0 / sigma, sigma.ln());
            let (delta, c) = (iv.half_width / sigma, (iv.mid - m) / sigma);
            if delta <= 0.1 && (c * delta).abs() <= 0.05 {
                series += 1;
            } else {
                cdf += 1;
            }
            // The interval ends are rounded to f64 (as in Optuna): ~1e-12 relative for the
            // narrowest intervals through the difference of CDFs, far less through the series.
            assert!((got - want).abs() <= 2e-12 * want.abs().max(1.0), "x={x} m={m} σ={sigma}: {got} vs {want}");
        }
        assert!(series >= 20 && cdf >= 20, "series {series}, cdf {cdf}");
    }

    #[test]
    fn vectorised_scans_agree_with_plain_ones() {
        use rand::Rng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for n in [0, 1, 3, 4, 7, 8, 33, 200] {
            let mut xs: Vec<f64> = (0..n).map(|_| rng.random::<f64>() * 10.0 - 5.0).collect();
            if n > 2 {
                xs[1] = f64::NAN;
                xs[2] = f64::NEG_INFINITY;
            }
            for threshold in [-6.0, 0.0, 4.0, 6.0] {
                let (mut fast, mut plain) = (Vec::new(), Vec::new());
                indices_at_least(&xs, threshold, &mut fast);
                indices_at_least_plain(&xs, threshold, &mut plain);
                assert_eq!(fast, plain, "n={n} threshold={threshold}");
            }
        }
    }

    #[test]
    fn samples_lie_in_the_distributions() {
        let dists = [
            Distribution::float(-1.0, 2.0, false, None).unwrap(),
            Distribution::float(1e-5, 1.0, true, None).unwrap(),
            Distribution::int(1, 512, true, 1).unwrap(),
            Distribution::int(0, 9, false, 3).unwrap(),
            Distribution::float(0.0, 1.0, false, Some(0.1)).unwrap(),
            Distribution::categorical(vec![json!(1), json!(2), json!(3)]).unwrap(),
        ];
        let space: Vec<&Distribution> = dists.iter().collect();
        let obs = vec![
            vec![-1.0, 2.0, 0.5],
            vec![1e-5, 0.3, 1.0],
            vec![1.0, 512.0, 7.0],
            vec![0.0, 9.0, 3.0],
            vec![0.0, 1.0, 0.3],
            vec![0.0, 2.0, 2.0],
        ];
        let pe = ParzenEstimator::new(&space, &obs, &[1.0; 3], &OPTUNA);
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let xs = pe.sample(&mut rng, 500);
        for (d, col) in dists.iter().zip(&xs) {
            assert!(col.iter().all(|&x| d.contains(x)), "{d:?}");
        }
        assert!(pe.log_pdf(&xs).iter().all(|v| v.is_finite()));
    }
}
