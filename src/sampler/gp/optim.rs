//! Maximising the acquisition over a mixed space (Optuna's `optuna/_gp/optim_mixed.py`):
//! 2048 scrambled Sobol candidates; local searches from the best of them, 8 more drawn with
//! probability `exp(acq - max)`, and the best trial so far; each search alternates L-BFGS on
//! the continuous coordinates with a search of each discrete coordinate (every choice of a
//! categorical or of a grid of at most 16 values, else Brent's method on the values
//! interpolated along the grid) until a full round changes nothing.
//!
//! argmin's L-BFGS is unconstrained, so the continuous coordinates are searched through
//! `x = (1 - cos w) / 2`: a smooth map of the whole line onto `[0, 1]` that reaches both
//! bounds at finite `w`, so every point of the box is reachable, no step can leave it, and a
//! maximum on a bound (common for EI) is a smooth stationary point in `w` rather than a kink
//! to stop at, as clamping or reflection would give. `w` is scaled by each coordinate's
//! lengthscale (Optuna's preconditioning). A start exactly on a bound, where the map is flat,
//! is moved 1e-6 inside.

use std::cell::RefCell;

use argmin::core::{CostFunction, Error as ArgminError, Executor, Gradient, State};
use argmin::solver::brent::BrentOpt;
use rand::rngs::StdRng;
use rand::Rng;
use rayon::prelude::*;

use super::acqf::Acquisition;
use super::lbfgs;
use super::space::{Dim, Kind};

/// Sobol candidates scored before the local searches (Optuna's `n_preliminary_samples`).
pub(super) const PRELIMINARY_SAMPLES: usize = 2048;
/// Local searches per proposal, the best trial's included (Optuna's `n_local_search`).
const LOCAL_SEARCHES: usize = 10;
/// Rounds of a local search before it stops anyway.
const MAX_ROUNDS: usize = 100;
/// Grids up to this many values are searched exhaustively.
const MAX_EXHAUSTIVE: usize = 16;
/// L-BFGS stopping gradient (Optuna's `pgtol = sqrt(tol)`, `tol = 1e-4`) and iterations.
const LBFGS_GRAD_TOL: f64 = 1e-2;
const LBFGS_MAX_ITERS: u64 = 200;
/// How far inside a bound a continuous start is moved.
const BOUND_NUDGE: f64 = 1e-6;

/// Scrambled Sobol points in the GP's coordinates, discrete ones rounded onto their grid and
/// categoricals floored to an index (`m x d`, row-major).
pub(super) fn candidates(dims: &[Dim], m: usize, seed: u32) -> Vec<f64> {
    let d = dims.len();
    let mut xs = vec![0.0; m * d];
    for (i, dim) in dims.iter().enumerate() {
        // sobol_burley has 256 dimensions; beyond them, another seed gives independent ones.
        let (sd, ss) = ((i % 256) as u32, seed.wrapping_add((i / 256) as u32 * 0x9e37_79b9));
        let choices = dim.choices().len();
        for a in 0..m {
            let u = sobol_burley::sample(a as u32, sd, ss) as f64;
            xs[a * d + i] = match dim.kind {
                Kind::Continuous => u,
                Kind::Categorical => (u * choices as f64).floor().min((choices - 1) as f64),
                Kind::Discrete => dim.round(u),
            };
        }
    }
    xs
}

/// The acquisition's maximiser: candidates, then local searches. `best_x` is the best trial's
/// coordinates.
pub(super) fn maximise(acq: &Acquisition, dims: &[Dim], best_x: &[f64], rng: &mut StdRng) -> (Vec<f64>, f64) {
    let d = dims.len();
    let xs = candidates(dims, PRELIMINARY_SAMPLES, rng.random());
    let f = acq.values(&xs);
    let top = argmax(&f);
    let mut starts = vec![top];
    // Roulette over exp(f - max), without replacement, the top excluded.
    let weights: Vec<f64> =
        f.iter().enumerate().map(|(i, &v)| if i == top { 0.0 } else { (v - f[top]).exp() }).collect();
    let positive = weights.iter().filter(|w| **w > 0.0 && w.is_finite()).count();
    let extra = (LOCAL_SEARCHES - 2).min(positive);
    if extra > 0 {
        if let Ok(picked) = rand::seq::index::sample_weighted(rng, weights.len(), |i| weights[i], extra) {
            starts.extend(picked.iter());
        }
    }
    let mut begin: Vec<Vec<f64>> = starts.iter().map(|&i| xs[i * d..(i + 1) * d].to_vec()).collect();
    begin.push(best_x.to_vec());
    let search = LocalSearch::new(acq, dims);
    // The searches are independent: spread over rayon's threads, taken in order.
    let found: Vec<(Vec<f64>, f64)> = begin.into_par_iter().map(|x| search.run(x)).collect();
    let mut best = (found[0].0.clone(), f64::NEG_INFINITY);
    for (x, v) in found {
        if v > best.1 || best.1.is_nan() {
            best = (x, v);
        }
    }
    best
}

/// Index of the first largest value (NaN never wins).
fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] || v[best].is_nan() {
            best = i;
        }
    }
    best
}

/// One start's coordinate-block ascent.
struct LocalSearch<'a> {
    acq: &'a Acquisition<'a>,
    dims: &'a [Dim],
    continuous: Vec<usize>,
    /// Discrete coordinates with their grids and Brent tolerances.
    discrete: Vec<(usize, Vec<f64>, f64)>,
    lengthscales: Vec<f64>,
}

impl<'a> LocalSearch<'a> {
    fn new(acq: &'a Acquisition<'a>, dims: &'a [Dim]) -> Self {
        let continuous = (0..dims.len()).filter(|&i| dims[i].kind == Kind::Continuous).collect();
        let discrete = (0..dims.len())
            .filter(|&i| dims[i].kind != Kind::Continuous)
            .map(|i| {
                let c = dims[i].choices();
                let tol = c.windows(2).map(|w| w[1] - w[0]).fold(f64::INFINITY, f64::min) / 4.0;
                (i, c, tol)
            })
            .collect();
        LocalSearch { acq, dims, continuous, discrete, lengthscales: acq.gp().lengthscales() }
    }

    fn run(&self, mut x: Vec<f64>) -> (Vec<f64>, f64) {
        let mut f = self.acq.value(&x);
        // The block that last changed x: None for the continuous one.
        let mut last: Option<usize> = None;
        for _ in 0..MAX_ROUNDS {
            if self.continuous_step(&mut x, &mut f) {
                last = None;
            }
            for (i, choices, tol) in &self.discrete {
                if last == Some(*i) {
                    return (x, f);
                }
                if self.discrete_step(&mut x, &mut f, *i, choices, *tol) {
                    last = Some(*i);
                }
            }
            if last.is_none() {
                return (x, f);
            }
        }
        (x, f)
    }

    /// L-BFGS over the continuous coordinates; true when it improved `f`.
    fn continuous_step(&self, x: &mut [f64], f: &mut f64) -> bool {
        if self.continuous.is_empty() {
            return false;
        }
        let scale: Vec<f64> = self.continuous.iter().map(|&i| 2.0 * self.lengthscales[i]).collect();
        let v0: Vec<f64> = self
            .continuous
            .iter()
            .zip(&scale)
            .map(|(&i, s)| (1.0 - 2.0 * x[i].clamp(BOUND_NUDGE, 1.0 - BOUND_NUDGE)).acos() / s)
            .collect();
        let problem = Ascent { search: self, base: x.to_vec(), scale: scale.clone(), last: RefCell::new(None) };
        let Some((v, iters)) = lbfgs::minimise(problem, v0, LBFGS_GRAD_TOL, LBFGS_MAX_ITERS) else { return false };
        if iters == 0 {
            return false;
        }
        let mut candidate = x.to_vec();
        for ((&i, s), vi) in self.continuous.iter().zip(&scale).zip(&v) {
            candidate[i] = (1.0 - (vi * s).cos()) / 2.0;
        }
        let value = self.acq.value(&candidate);
        if value > *f {
            x.copy_from_slice(&candidate);
            *f = value;
            true
        } else {
            false
        }
    }

    /// Searches discrete coordinate `i` with the others fixed; true when it improved `f`.
    fn discrete_step(&self, x: &mut [f64], f: &mut f64, i: usize, choices: &[f64], tol: f64) -> bool {
        if choices.len() <= 1 {
            return false;
        }
        let mut probe = x.to_vec();
        let mut at = |u: f64| {
            probe[i] = u;
            self.acq.value(&probe)
        };
        let (best_u, best_f) = if self.dims[i].kind == Kind::Categorical || choices.len() <= MAX_EXHAUSTIVE {
            let mut best = (x[i], f64::NEG_INFINITY);
            for &c in choices.iter().filter(|&&c| c != x[i]) {
                let v = at(c);
                if v > best.1 {
                    best = (c, v);
                }
            }
            best
        } else {
            let cache = RefCell::new(std::collections::HashMap::new());
            let value_at = |k: usize| -> f64 {
                *cache.borrow_mut().entry(k).or_insert_with(|| {
                    let mut p = x.to_vec();
                    p[i] = choices[k];
                    -self.acq.value(&p)
                })
            };
            let line = GridLine { choices, value_at: &value_at };
            let solver = BrentOpt::new(choices[0], choices[choices.len() - 1]).set_tolerance(1e-8, tol);
            let Ok(result) = Executor::new(line, solver).configure(|s| s.max_iters(500)).run() else {
                return false;
            };
            let Some(&u) = result.state().get_best_param() else { return false };
            let k = nearest(choices, u);
            (choices[k], -value_at(k))
        };
        if best_u != x[i] && best_f > *f {
            x[i] = best_u;
            *f = best_f;
            true
        } else {
            false
        }
    }
}

/// The index of the grid value nearest `u`.
fn nearest(choices: &[f64], u: f64) -> usize {
    let j = choices.partition_point(|&c| c < u).clamp(1, choices.len() - 1);
    if (u - choices[j - 1]).abs() < (choices[j] - u).abs() {
        j - 1
    } else {
        j
    }
}

/// The negated acquisition along one discrete coordinate, linearly interpolated between grid
/// values (evaluated lazily).
struct GridLine<'a, F: Fn(usize) -> f64> {
    choices: &'a [f64],
    value_at: &'a F,
}

impl<F: Fn(usize) -> f64> CostFunction for GridLine<'_, F> {
    type Param = f64;
    type Output = f64;

    fn cost(&self, u: &f64) -> Result<f64, ArgminError> {
        let g = self.choices;
        if *u < g[0] || *u > g[g.len() - 1] {
            return Ok(f64::INFINITY);
        }
        let r = g.partition_point(|&c| c < *u).clamp(1, g.len() - 1);
        let l = r - 1;
        let w = (g[r] - u) / (g[r] - g[l]);
        Ok(w * (self.value_at)(l) + (1.0 - w) * (self.value_at)(r))
    }
}

/// `-acq` over the continuous coordinates, through the cosine map.
struct Ascent<'a> {
    search: &'a LocalSearch<'a>,
    base: Vec<f64>,
    scale: Vec<f64>,
    last: RefCell<lbfgs::LastEval>,
}

impl Ascent<'_> {
    fn evaluate(&self, v: &[f64]) -> Result<(f64, Vec<f64>), ArgminError> {
        if let Some((p, f, g)) = self.last.borrow().as_ref() {
            if p.as_slice() == v {
                return Ok((*f, g.clone()));
            }
        }
        let mut x = self.base.clone();
        for ((&i, s), vi) in self.search.continuous.iter().zip(&self.scale).zip(v) {
            x[i] = (1.0 - (vi * s).cos()) / 2.0;
        }
        let mut grad = vec![0.0; x.len()];
        let value = self.search.acq.value_grad(&x, &mut grad);
        if !value.is_finite() {
            return Err(argmin::argmin_error!(ConditionViolated, "the acquisition is not finite"));
        }
        // dx/dv = sin(v s) / 2 * s.
        let g: Vec<f64> = self
            .search
            .continuous
            .iter()
            .zip(&self.scale)
            .zip(v)
            .map(|((&i, s), vi)| -grad[i] * (vi * s).sin() * 0.5 * s)
            .collect();
        *self.last.borrow_mut() = Some((v.to_vec(), -value, g.clone()));
        Ok((-value, g))
    }
}

impl CostFunction for Ascent<'_> {
    type Param = Vec<f64>;
    type Output = f64;

    fn cost(&self, v: &Vec<f64>) -> Result<f64, ArgminError> {
        self.evaluate(v).map(|(f, _)| f)
    }
}

impl Gradient for Ascent<'_> {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;

    fn gradient(&self, v: &Vec<f64>) -> Result<Vec<f64>, ArgminError> {
        self.evaluate(v).map(|(_, g)| g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distribution::Distribution;

    #[test]
    fn candidates_lie_on_each_coordinates_values() {
        let dims = vec![
            Dim::new(&Distribution::float(0.0, 1.0, false, None).unwrap()),
            Dim::new(&Distribution::int(1, 5, false, 1).unwrap()),
            Dim::new(&Distribution::categorical(vec!["a".into(), "b".into()]).unwrap()),
        ];
        let xs = candidates(&dims, 256, 7);
        let grid = dims[1].choices();
        let mut seen_cat = [0; 2];
        for x in xs.chunks(3) {
            assert!((0.0..1.0).contains(&x[0]));
            assert!(grid.iter().any(|g| (g - x[1]).abs() < 1e-12), "{}", x[1]);
            seen_cat[x[2] as usize] += 1;
        }
        // Stratified: the categorical halves are exactly balanced.
        assert_eq!(seen_cat, [128, 128]);
        assert_ne!(candidates(&dims, 4, 8), candidates(&dims, 4, 7));
    }

    #[test]
    fn nearest_grid_value() {
        let g = [0.1, 0.3, 0.5, 0.7];
        assert_eq!(nearest(&g, 0.0), 0);
        assert_eq!(nearest(&g, 0.21), 1);
        assert_eq!(nearest(&g, 0.19), 0);
        assert_eq!(nearest(&g, 0.9), 3);
    }
}
