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
//! asks by the caller, keyed on the kernel's width); a log-density then runs one vectorisable
//! pass over the kernels for the continuous dimensions, and adds the rest (categorical terms,
//! log weight, `erfc`-based interval masses of stepped values) only for kernels within
//! `NEGLIGIBLE` nats of the best one. The others weigh less than `e^-35` of it each, so the
//! result is the log-sum-exp over all kernels to about 1e-12.

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
    dims: Vec<Vec<(f64, f64)>>,
}

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
    /// The observation kernels sorted by (centre, index), for the widths.
    order: Vec<u32>,
    /// `ln` of the narrowest width, bounding every kernel's `ln(1/σ)`.
    log_min_sigma: f64,
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
fn constant_term(m: f64, s: f64, lo: f64, hi: f64, stepped: bool) -> f64 {
    let neg_log_mass = -truncnorm::log_gauss_mass((lo - m) / s, (hi - m) / s);
    if stepped {
        neg_log_mass
    } else {
        neg_log_mass - s.ln() - LN_SQRT_2PI
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

/// A point of `log_pdf`, prepared per dimension: a continuous value in the transformed space, a
/// choice, or a stepped value's interval in the transformed space.
#[derive(Debug, Clone, Copy)]
enum Coord {
    Cont(f64),
    Choice(usize),
    Interval(Interval),
}

/// A stepped value's rounding interval `[left, right]` in the transformed space.
#[derive(Debug, Clone, Copy)]
struct Interval {
    left: f64,
    right: f64,
    /// `ln(width / √(2π))`, for the bound of masses.
    log_width: f64,
    /// Where this value's kernel masses are remembered: points share them when they share the
    /// value, which candidates drawn near the good trials often do (Optuna's `np.unique`).
    slot: usize,
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

    /// Turns this estimator into the one `from_transformed` would build after appending
    /// observations (`new`: one column per dimension, transformed; `new_ids`: their cache ids)
    /// to its own, with `weights` for all of them: only the new kernels and their sorted
    /// neighbours get new widths. This is how the bad model follows a sequential study, where
    /// each ask adds one trial to it. Returns false, changing nothing, where the widths' clip
    /// still depends on the number of observations; the caller then builds afresh.
    pub(crate) fn extend(
        &mut self,
        new: &[Vec<f64>],
        new_ids: &[u32],
        weights: &[f64],
        params: &ParzenParams,
        cache: &mut ConstantCache,
    ) -> bool {
        let old = self.n_kernels - 1;
        let n = old + new_ids.len();
        debug_assert_eq!(weights.len(), n);
        if old < 2 || (params.consider_magic_clip && old < 98) {
            return false;
        }
        cache.dims.resize(self.dims.len(), Vec::new());
        (self.weights, self.cum_weights, self.log_max_weight) = mixture_weights(weights, params.prior_weight);
        self.ids.extend_from_slice(new_ids);
        // Kernels whose constant changed in some dimension get their sum recomputed.
        let mut changed: Vec<usize> = (old..n).collect();
        for ((dim, col), remembered) in self.dims.iter_mut().zip(new).zip(&mut cache.dims) {
            match dim {
                Dim::Cat(cd) => {
                    cd.obs.extend(col.iter().map(|&c| (c as usize).min(cd.n_choices - 1) as u32));
                    cd.set_probs(params.prior_weight);
                }
                Dim::Num(nd) => nd.extend(col, &self.ids, params, remembered, &mut changed),
            }
        }
        // The prior stays last.
        let prior = self.constant.pop().expect("an estimator has its prior kernel");
        self.constant.resize(n, 0.0);
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
        let size = samples.first().map_or(0, Vec::len);
        let kn = self.n_kernels;
        // Per stepped dimension, the distinct values among the points and their memo slots.
        let mut slots: Vec<Vec<(u64, usize)>> = vec![Vec::new(); self.dims.len()];
        let mut n_slots = 0;
        for &d in &self.stepped {
            let mut values: Vec<u64> = samples[d].iter().map(|x| x.to_bits()).collect();
            values.sort_unstable();
            values.dedup();
            slots[d] = values.into_iter().zip(n_slots..).collect();
            n_slots += slots[d].len();
        }
        let mut memo = Memo::new(kn, n_slots);
        let mut acc = vec![0.0; kn];
        let mut terms = Vec::new();
        let mut near = Vec::new();
        let mut point = Vec::with_capacity(self.dims.len());
        (0..size)
            .map(|i| {
                point.clear();
                point.extend(self.dims.iter().zip(samples).zip(&slots).map(|((dim, col), sl)| {
                    let x = col[i];
                    let slot = sl.binary_search_by_key(&x.to_bits(), |e| e.0).map_or(0, |j| sl[j].1);
                    coord(dim, x, slot)
                }));
                self.dense_pass(&point, &mut acc);
                // Categorical terms and interval masses are at most 0: `acc[k] + ln(max weight)`
                // bounds kernel k's total. The kernel with the largest bound gives a first
                // total to measure the others against.
                let m = max_of(&acc);
                let top = acc.iter().position(|&a| a == m).unwrap_or(0);
                let mut best = self.kernel_total(top, acc[top], &point, &mut memo, f64::NEG_INFINITY);
                terms.clear();
                terms.push(best);
                indices_at_least(&acc, best - NEGLIGIBLE - self.log_max_weight, &mut near);
                for &k in &near {
                    let k = k as usize;
                    if k != top {
                        let v = self.kernel_total(k, acc[k], &point, &mut memo, best - NEGLIGIBLE);
                        if v > f64::NEG_INFINITY {
                            best = best.max(v);
                            terms.push(v);
                        }
                    }
                }
                log_sum_exp(&terms)
            })
            .collect()
    }

    /// `acc[k]`: kernel `k`'s constant terms plus its terms in the dense dimensions at `point`
    /// (exact for continuous ones, an upper bound for stepped ones), for every kernel.
    fn dense_pass(&self, point: &[Coord], acc: &mut [f64]) {
        acc.copy_from_slice(&self.constant);
        for &d in &self.dense {
            let Dim::Num(nd) = &self.dims[d] else { unreachable!("dense dimensions are numeric") };
            match point[d] {
                Coord::Cont(t) => add_exponents(acc, &nd.mu, &nd.unit, t),
                Coord::Interval(Interval { left, right, log_width, .. }) => {
                    // mass <= min(1, width * density at the interval's point nearest the centre).
                    let lw = log_width - nd.log_min_sigma;
                    for ((a, &m), &is) in acc.iter_mut().zip(&nd.mu).zip(&nd.unit) {
                        let (zl, zr) = ((left - m) * is, (right - m) * is);
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
                Coord::Choice(_) => unreachable!("dense dimensions are numeric"),
            }
        }
    }

    /// Kernel `k`'s log term at `point`, given its dense-pass value `dense`: constants and
    /// continuous exponents (that value, when exact), categorical terms, the log weight, then
    /// interval masses, always summed in that order. Gives up (negative infinity) as soon as
    /// what is left (all at most 0) cannot lift it to `threshold`.
    fn kernel_total(&self, k: usize, dense: f64, point: &[Coord], memo: &mut Memo, threshold: f64) -> f64 {
        let mut s = if self.dense_exact { dense } else { self.constant[k] };
        for &d in &self.categorical {
            let (Dim::Cat(cd), Coord::Choice(c)) = (&self.dims[d], point[d]) else {
                unreachable!("points are prepared per dimension")
            };
            s += cd.log_prob(k, c);
            if s + self.log_max_weight < threshold {
                return f64::NEG_INFINITY;
            }
        }
        s += memo.log_weight(k, || self.weights[k].ln());
        for &d in &self.stepped {
            if s < threshold {
                return f64::NEG_INFINITY;
            }
            let (Dim::Num(nd), Coord::Interval(iv)) = (&self.dims[d], point[d]) else {
                unreachable!("points are prepared per dimension")
            };
            s += memo.mass(k, iv.slot, || {
                let (m, is) = (nd.mu[k], nd.unit[k]);
                truncnorm::log_gauss_mass((iv.left - m) * is, (iv.right - m) * is)
            });
        }
        s
    }
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

/// `acc[k] -= ((t - mu[k]) · scale[k])²` for every kernel.
fn add_exponents(acc: &mut [f64], mu: &[f64], scale: &[f64], t: f64) {
    dispatch!(add_exponents_plain, add_exponents_avx2, acc, mu, scale, t)
}

#[inline(always)]
fn add_exponents_plain(acc: &mut [f64], mu: &[f64], scale: &[f64], t: f64) {
    for ((a, &m), &sc) in acc.iter_mut().zip(mu).zip(scale) {
        let z = (t - m) * sc;
        *a -= z * z;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn add_exponents_avx2(acc: &mut [f64], mu: &[f64], scale: &[f64], t: f64) {
    add_exponents_plain(acc, mu, scale, t)
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn indices_at_least_avx2(xs: &[f64], threshold: f64, out: &mut Vec<u32>) {
    indices_at_least_plain(xs, threshold, out)
}

/// Per-kernel terms computed so far during one `log_pdf` call, shared by its points: the log
/// weights, and the interval masses of each distinct stepped value.
struct Memo {
    n_kernels: usize,
    log_weights: Vec<f64>,
    masses: Vec<f64>,
}

impl Memo {
    fn new(n_kernels: usize, n_slots: usize) -> Self {
        Memo { n_kernels, log_weights: vec![f64::NAN; n_kernels], masses: vec![f64::NAN; n_kernels * n_slots] }
    }

    #[inline]
    fn log_weight(&mut self, k: usize, f: impl FnOnce() -> f64) -> f64 {
        let v = &mut self.log_weights[k];
        if v.is_nan() {
            *v = f();
        }
        *v
    }

    /// The log mass of kernel `k` on the interval remembered in `slot`.
    #[inline]
    fn mass(&mut self, k: usize, slot: usize, f: impl FnOnce() -> f64) -> f64 {
        let v = &mut self.masses[slot * self.n_kernels + k];
        if v.is_nan() {
            *v = f();
        }
        *v
    }
}

/// A point's coordinate in dimension `dim`, prepared for `kernel_total` (`slot`: where a
/// stepped value's masses are remembered).
fn coord(dim: &Dim, x: f64, slot: usize) -> Coord {
    match dim {
        Dim::Cat(cd) => Coord::Choice((x as usize).min(cd.n_choices - 1)),
        Dim::Num(nd) => match nd.step {
            None => Coord::Cont(if nd.log { x.ln() } else { x }),
            Some(step) => {
                let (l, r) = (x - 0.5 * step, x + 0.5 * step);
                let (left, right) = if nd.log { (l.ln(), r.ln()) } else { (l, r) };
                Coord::Interval(Interval { left, right, log_width: (right - left).ln() - LN_SQRT_2PI, slot })
            }
        },
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
    mut cache: Option<&mut Vec<(f64, f64)>>,
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
    let min_sigma = sigma.iter().copied().fold(f64::INFINITY, f64::min);
    let constant: Vec<f64> = (0..mu.len())
        .map(|k| {
            let id = ids.get(k).copied().unwrap_or(NO_ID);
            kernel_constant(cache.as_deref_mut(), id, mu[k], sigma[k], lo, hi, stepped)
        })
        .collect();
    NumDim { log, step, low, high, lo, hi, mu, sigma, unit, constant, order, log_min_sigma: min_sigma.ln() }
}

/// A kernel's `constant_term`, remembered by `id` (unless `NO_ID`) for as long as its width
/// stays the same.
fn kernel_constant(
    cache: Option<&mut Vec<(f64, f64)>>,
    id: u32,
    m: f64,
    s: f64,
    lo: f64,
    hi: f64,
    stepped: bool,
) -> f64 {
    let Some(remembered) = cache.filter(|_| id != NO_ID) else {
        return constant_term(m, s, lo, hi, stepped);
    };
    let id = id as usize;
    if id >= remembered.len() {
        remembered.resize(id + 1, (f64::NAN, 0.0));
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
    /// Appends observation kernels (transformed centres `col`) before the prior, keeping every
    /// array as `numeric` would build it: each new kernel goes into the sorted order (after
    /// equal centres, as it has the largest index), and it and its sorted neighbours get their
    /// widths anew. Kernels whose constant changed are added to `changed`.
    fn extend(
        &mut self,
        col: &[f64],
        ids: &[u32],
        params: &ParzenParams,
        cache: &mut Vec<(f64, f64)>,
        changed: &mut Vec<usize>,
    ) {
        let stepped = self.step.is_some();
        let unit_scale = if stepped { 1.0 } else { std::f64::consts::FRAC_1_SQRT_2 };
        let prior = (self.mu.pop(), self.sigma.pop(), self.unit.pop(), self.constant.pop());
        for &v in col {
            let k = self.mu.len();
            self.mu.push(v);
            self.sigma.push(f64::NAN);
            self.unit.push(f64::NAN);
            self.constant.push(f64::NAN);
            let q = self.order.partition_point(|&i| self.mu[i as usize].total_cmp(&v) != std::cmp::Ordering::Greater);
            self.order.insert(q, k as u32);
            for p in q.saturating_sub(1)..(q + 2).min(self.order.len()) {
                let j = self.order[p] as usize;
                let s = width_at(&self.mu, &self.order, p, self.lo, self.hi, params);
                if s == self.sigma[j] {
                    continue;
                }
                self.sigma[j] = s;
                self.unit[j] = unit_scale / s;
                self.constant[j] = kernel_constant(Some(&mut *cache), ids[j], self.mu[j], s, self.lo, self.hi, stepped);
                changed.push(j);
            }
        }
        if let (Some(m), Some(s), Some(u), Some(c)) = prior {
            self.mu.push(m);
            self.sigma.push(s);
            self.unit.push(u);
            self.constant.push(c);
        }
        self.log_min_sigma = self.sigma.iter().copied().fold(f64::INFINITY, f64::min).ln();
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
