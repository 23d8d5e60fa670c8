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
//! Speed: the estimator is stored as struct-of-arrays over kernels with every per-kernel
//! constant (mixture log weight, log widths, truncation normalisers) folded into one base
//! term, so a log-density is a few tight loops over contiguous arrays. Interval masses of
//! stepped dimensions (two `erfc`s each) are only computed for the kernels that can matter: a
//! cheap upper bound of each mass first, then the exact value where the bound comes within
//! `NEGLIGIBLE` nats of the best kernel.

use rand::Rng;

use super::truncnorm::{self, LN_SQRT_2PI};
use crate::distribution::Distribution;

/// A kernel whose log term is this far below the largest one contributes less than
/// `e^-50 ≈ 2e-22` of it: below rounding for any realistic number of kernels.
const NEGLIGIBLE: f64 = 50.0;

/// The smallest kernel width without the magic clip (Optuna's `EPS`).
const EPS: f64 = 1e-12;

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

/// One numeric dimension: kernels in the transformed space.
#[derive(Debug, Clone)]
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
    inv_sigma: Vec<f64>,
    /// `ln(1/σ)`: folded into the base term (continuous dimensions) or used by the bound on
    /// interval masses (stepped ones).
    log_inv_sigma: Vec<f64>,
    /// Log of each kernel's mass on `[lo, hi]`.
    log_mass: Vec<f64>,
}

/// One categorical dimension.
#[derive(Debug, Clone)]
struct CatDim {
    n_choices: usize,
    /// Kernel-major probabilities (`p[k * n_choices + c]`), for sampling.
    p: Vec<f64>,
    /// Choice-major log probabilities (`log_p[c * n_kernels + k]`), for log-densities.
    log_p: Vec<f64>,
}

#[derive(Debug, Clone)]
enum Dim {
    Num(NumDim),
    Cat(CatDim),
}

/// A mixture of product kernels over a search space (one column per parameter).
#[derive(Debug, Clone)]
pub struct ParzenEstimator {
    n_kernels: usize,
    /// Normalised mixture weights, the prior last.
    weights: Vec<f64>,
    cum_weights: Vec<f64>,
    /// Per kernel: `ln w_k` minus the log normalisers of its numeric dimensions.
    base: Vec<f64>,
    dims: Vec<Dim>,
    has_discrete: bool,
}

impl ParzenEstimator {
    /// Builds the estimator of `obs` (one column per dimension of `space`, internal values:
    /// numbers as such, categoricals as indices) with observation weights `weights` (one per
    /// row). All columns must have `weights.len()` rows.
    pub fn new(space: &[&Distribution], obs: &[Vec<f64>], weights: &[f64], params: &ParzenParams) -> Self {
        let n = weights.len();
        debug_assert!(obs.iter().all(|c| c.len() == n));
        let n_kernels = n + 1;
        let mut w: Vec<f64> = if n == 0 {
            vec![1.0]
        } else {
            weights.iter().copied().chain(std::iter::once(params.prior_weight)).collect()
        };
        let total: f64 = w.iter().sum();
        w.iter_mut().for_each(|x| *x /= total);
        let mut cum = 0.0;
        let cum_weights = w.iter().map(|x| {
            cum += x;
            cum
        });
        let cum_weights: Vec<f64> = cum_weights.collect();
        let mut base: Vec<f64> = w.iter().map(|x| x.ln()).collect();

        let mut dims = Vec::with_capacity(space.len());
        let mut has_discrete = false;
        for (dist, col) in space.iter().zip(obs) {
            match dist {
                Distribution::Categorical { choices } => {
                    dims.push(Dim::Cat(categorical(choices.len(), col, params.prior_weight)));
                }
                Distribution::Float { .. } | Distribution::Int { .. } => {
                    let d = numeric(dist, col, params);
                    for (k, b) in base.iter_mut().enumerate() {
                        *b -= d.log_mass[k];
                        if d.step.is_none() {
                            *b += d.log_inv_sigma[k] - LN_SQRT_2PI;
                        }
                    }
                    has_discrete |= d.step.is_some();
                    dims.push(Dim::Num(d));
                }
            }
        }
        ParzenEstimator { n_kernels, weights: w, cum_weights, base, dims, has_discrete }
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
    pub fn choice_probs(&self, d: usize) -> Option<&[f64]> {
        match &self.dims[d] {
            Dim::Cat(cd) => Some(&cd.p),
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
                        let row = &cd.p[k * cd.n_choices..(k + 1) * cd.n_choices];
                        let mut acc = 0.0;
                        let mut choice = cd.n_choices - 1;
                        for (c, &p) in row.iter().enumerate().take(cd.n_choices - 1) {
                            acc += p;
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
        let mut acc = vec![0.0; kn];
        let mut scratch = Scratch::new(if self.has_discrete { kn } else { 0 });
        (0..size)
            .map(|i| {
                acc.copy_from_slice(&self.base);
                for (dim, col) in self.dims.iter().zip(samples) {
                    let x = col[i];
                    match dim {
                        Dim::Num(nd) if nd.step.is_none() => {
                            let t = if nd.log { x.ln() } else { x };
                            for ((a, &m), &is) in acc.iter_mut().zip(&nd.mu).zip(&nd.inv_sigma) {
                                let z = (t - m) * is;
                                *a -= 0.5 * z * z;
                            }
                        }
                        Dim::Num(_) => {}
                        Dim::Cat(cd) => {
                            let c = (x as usize).min(cd.n_choices - 1);
                            for (a, &l) in acc.iter_mut().zip(&cd.log_p[c * kn..(c + 1) * kn]) {
                                *a += l;
                            }
                        }
                    }
                }
                if self.has_discrete {
                    self.finish_discrete(samples, i, &acc, &mut scratch)
                } else {
                    log_sum_exp(&acc)
                }
            })
            .collect()
    }

    /// Adds the stepped dimensions' interval masses to `acc` for point `i` and returns the
    /// log-sum-exp, computing exact masses only for kernels within `NEGLIGIBLE` of the best.
    fn finish_discrete(&self, samples: &[Vec<f64>], i: usize, acc: &[f64], s: &mut Scratch) -> f64 {
        // Interval edges of the point in each stepped dimension, in the transformed space.
        s.edges.clear();
        for (d, dim) in self.dims.iter().enumerate() {
            if let Dim::Num(nd @ NumDim { step: Some(step), .. }) = dim {
                let x = samples[d][i];
                let (l, r) = (x - 0.5 * step, x + 0.5 * step);
                let (tl, tr) = if nd.log { (l.ln(), r.ln()) } else { (l, r) };
                s.edges.push((d, tl, tr, (tr - tl).ln()));
            }
        }
        // Upper bounds: mass <= min(1, width * φ(point of the interval nearest the centre)).
        s.value.copy_from_slice(acc);
        for &(d, tl, tr, log_width) in &s.edges {
            let Dim::Num(nd) = &self.dims[d] else { unreachable!("edges are numeric") };
            for (((v, &m), &is), &lis) in s.value.iter_mut().zip(&nd.mu).zip(&nd.inv_sigma).zip(&nd.log_inv_sigma) {
                let (zl, zr) = ((tl - m) * is, (tr - m) * is);
                let zc = if zl > 0.0 {
                    zl
                } else if zr < 0.0 {
                    zr
                } else {
                    0.0
                };
                *v += (log_width + lis - 0.5 * zc * zc - LN_SQRT_2PI).min(0.0);
            }
        }
        s.done.iter_mut().for_each(|d| *d = false);
        let mut threshold = max_of(&s.value) - NEGLIGIBLE;
        let mut best = f64::NEG_INFINITY;
        // Exact masses where the bound is within reach of the best; a second pass only if the
        // best exact value fell below the first threshold.
        loop {
            for k in 0..self.n_kernels {
                if s.done[k] || !(s.value[k] >= threshold) {
                    continue;
                }
                let mut v = acc[k];
                for &(d, tl, tr, _) in &s.edges {
                    let Dim::Num(nd) = &self.dims[d] else { unreachable!("edges are numeric") };
                    let (m, is) = (nd.mu[k], nd.inv_sigma[k]);
                    v += truncnorm::log_gauss_mass((tl - m) * is, (tr - m) * is);
                }
                s.value[k] = v;
                s.done[k] = true;
                best = best.max(v);
            }
            let next = best - NEGLIGIBLE;
            if !(next < threshold) {
                break;
            }
            threshold = next;
        }
        if best == f64::NEG_INFINITY {
            return best;
        }
        let sum: f64 = s
            .value
            .iter()
            .zip(&s.done)
            .filter(|(v, done)| **done && **v >= best - NEGLIGIBLE)
            .map(|(v, _)| (v - best).exp())
            .sum();
        best + sum.ln()
    }
}

/// Buffers reused across the points of one `log_pdf` call.
struct Scratch {
    value: Vec<f64>,
    done: Vec<bool>,
    edges: Vec<(usize, f64, f64, f64)>,
}

impl Scratch {
    fn new(n: usize) -> Self {
        Scratch { value: vec![0.0; n], done: vec![false; n], edges: Vec::new() }
    }
}

impl NumDim {
    /// One draw from kernel `k`, back in the distribution's own scale.
    fn sample<R: Rng + ?Sized>(&self, rng: &mut R, k: usize) -> f64 {
        let (m, s) = (self.mu[k], self.sigma[k]);
        let z = truncnorm::sample(rng, (self.lo - m) / s, (self.hi - m) / s, self.log_mass[k]);
        let t = (m + s * z).clamp(self.lo, self.hi);
        let x = if self.log { t.exp() } else { t };
        match self.step {
            // numpy's round is half-to-even.
            Some(step) => (self.low + ((x - self.low) / step).round_ties_even() * step).clamp(self.low, self.high),
            None => x.clamp(self.low, self.high),
        }
    }
}

/// Kernels of a numeric dimension (Optuna's `_calculate_numerical_distributions`).
fn numeric(dist: &Distribution, col: &[f64], params: &ParzenParams) -> NumDim {
    let (low, high, log, step) = match *dist {
        Distribution::Float { low, high, log, step } => (low, high, log, step),
        Distribution::Int { low, high, log, step } => (low as f64, high as f64, log, Some(step as f64)),
        Distribution::Categorical { .. } => unreachable!("numeric() is only called for numbers"),
    };
    let (mut lo, mut hi) = match step {
        Some(s) => (low - 0.5 * s, high + 0.5 * s),
        None => (low, high),
    };
    let mut mu: Vec<f64> = Vec::with_capacity(col.len() + 1);
    if log {
        lo = lo.ln();
        hi = hi.ln();
        mu.extend(col.iter().map(|x| x.ln()));
    } else {
        mu.extend_from_slice(col);
    }
    let mut sigma = kernel_widths(&mu, lo, hi, params);
    mu.push(0.5 * (lo + hi));
    sigma.push(hi - lo);

    let mut inv_sigma = Vec::with_capacity(sigma.len());
    let mut log_inv_sigma = Vec::with_capacity(sigma.len());
    let mut log_mass = Vec::with_capacity(sigma.len());
    // Most widths of a large study equal the clip floor: reuse the last logarithm.
    let mut last = (f64::NAN, 0.0);
    for (&m, &s) in mu.iter().zip(&sigma) {
        let is = 1.0 / s;
        inv_sigma.push(is);
        if s != last.0 {
            last = (s, -s.ln());
        }
        log_inv_sigma.push(last.1);
        log_mass.push(truncnorm::log_gauss_mass((lo - m) * is, (hi - m) * is));
    }
    NumDim { log, step, low, high, lo, hi, mu, sigma, inv_sigma, log_inv_sigma, log_mass }
}

/// Each observation's kernel width: the larger gap to its sorted neighbours (the range ends
/// included), clipped to `[min_sigma, hi - lo]`.
fn kernel_widths(mu: &[f64], lo: f64, hi: f64, params: &ParzenParams) -> Vec<f64> {
    let n = mu.len();
    let mut sigma = vec![0.0; n];
    if n == 0 {
        return sigma;
    }
    // Sort by value, ties by position, so the result does not depend on the sort algorithm.
    let mut order: Vec<(f64, u32)> = mu.iter().enumerate().map(|(i, &m)| (m, i as u32)).collect();
    order.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let max_sigma = hi - lo;
    let min_sigma = if params.consider_magic_clip { (hi - lo) / (100f64).min(n as f64 + 2.0) } else { EPS };
    for p in 0..n {
        let m = order[p].0;
        let prev = if p == 0 { lo } else { order[p - 1].0 };
        let next = if p + 1 == n { hi } else { order[p + 1].0 };
        let mut s = (m - prev).max(next - m);
        if !params.consider_endpoints && n >= 2 {
            // The outermost observations ignore the range end on their outer side.
            if p == 0 {
                s = next - m;
            } else if p + 1 == n {
                s = m - prev;
            }
        }
        sigma[order[p].1 as usize] = s.max(min_sigma).min(max_sigma);
    }
    sigma
}

/// Kernels of a categorical dimension (Optuna's `_calculate_categorical_distributions`).
fn categorical(n_choices: usize, col: &[f64], prior_weight: f64) -> CatDim {
    let n_kernels = col.len() + 1;
    let mut p = vec![0.0; n_kernels * n_choices];
    if col.is_empty() {
        p.iter_mut().for_each(|x| *x = 1.0 / n_choices as f64);
    } else {
        let smooth = prior_weight / n_kernels as f64;
        for (k, row) in p.chunks_mut(n_choices).enumerate() {
            row.iter_mut().for_each(|x| *x = smooth);
            if let Some(&c) = col.get(k) {
                row[(c as usize).min(n_choices - 1)] += 1.0;
            }
            let total: f64 = row.iter().sum();
            if total > 0.0 {
                row.iter_mut().for_each(|x| *x /= total);
            }
        }
    }
    let mut log_p = vec![0.0; n_kernels * n_choices];
    for k in 0..n_kernels {
        for c in 0..n_choices {
            log_p[c * n_kernels + k] = p[k * n_choices + c].ln();
        }
    }
    CatDim { n_choices, p, log_p }
}

fn max_of(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// `ln Σ e^x`, skipping terms too small to change the sum.
fn log_sum_exp(xs: &[f64]) -> f64 {
    let m = max_of(xs);
    if m == f64::NEG_INFINITY || m.is_nan() {
        return m;
    }
    let cut = m - NEGLIGIBLE;
    let sum: f64 = xs.iter().filter(|&&x| x >= cut).map(|&x| (x - m).exp()).sum();
    m + sum.ln()
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
        let s = kernel_widths(&[0.5, 0.1, 0.52], 0.0, 1.0, &OPTUNA);
        close(&s, &[0.4, 0.4, 0.2], 1e-15);
        let s = kernel_widths(&[0.3], 0.0, 1.0, &OPTUNA);
        close(&s, &[0.7], 1e-15);
        let s = kernel_widths(&[0.5, 0.1, 0.52], 0.0, 1.0, &ParzenParams { consider_endpoints: true, ..OPTUNA });
        close(&s, &[0.4, 0.4, 0.48], 1e-15);
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
