//! The Gaussian process (Optuna's `optuna/_gp/gp.py` and `prior.py`): a Matérn 5/2 kernel with
//! one inverse squared lengthscale per coordinate, a kernel scale and a noise variance, fitted
//! by maximising the marginal log-likelihood plus Optuna's log prior with argmin's L-BFGS, with
//! analytic gradients. Linear algebra is nalgebra's (Cholesky factor, solves, products).

use std::cell::RefCell;

use argmin::core::{CostFunction, Error as ArgminError, Executor, Gradient, State};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;
use nalgebra::{DMatrix, DVector};

/// The smallest noise variance (Optuna's `DEFAULT_MINIMUM_NOISE_VAR`).
pub(super) const MIN_NOISE: f64 = 1e-6;

/// Kernel hyperparameters.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelParams {
    /// One per coordinate: `1 / lengthscale^2`.
    pub inverse_squared_lengthscales: Vec<f64>,
    /// The kernel's variance, `k(x, x)`.
    pub scale: f64,
    /// Observation noise variance (at least [`MIN_NOISE`]).
    pub noise: f64,
}

impl KernelParams {
    /// Optuna's starting point and fallback: every value 1.
    pub fn defaults(d: usize) -> KernelParams {
        KernelParams { inverse_squared_lengthscales: vec![1.0; d], scale: 1.0, noise: 1.0 }
    }
}

/// Matérn 5/2 of the scaled squared distance `r2`.
#[inline]
pub(super) fn matern52(r2: f64) -> f64 {
    let s = (5.0 * r2).sqrt();
    (-s).exp() * (5.0 / 3.0 * r2 + s + 1.0)
}

/// `d matern52 / d r2`, finite at 0.
#[inline]
pub(super) fn matern52_grad(r2: f64) -> f64 {
    let s = (5.0 * r2).sqrt();
    -5.0 / 6.0 * (1.0 + s) * (-s).exp()
}

/// A fitted GP over training points `x` (rows, GP coordinates) with standardised targets.
#[derive(Debug, Clone)]
pub(super) struct Regressor {
    /// Training inputs, `n x d`, row-major.
    x: Vec<f64>,
    n: usize,
    d: usize,
    is_categorical: Vec<bool>,
    pub params: KernelParams,
    /// `C^-1 y`, with `C = K + noise I`.
    alpha: DVector<f64>,
    /// `C^-1`.
    c_inv: DMatrix<f64>,
}

/// A Cholesky factorisation `C = L L^T` with `C^-1` and `log det C / 2`, by faer: its
/// blocked factorisation and inverse take 2 ms at n = 300 where nalgebra's unblocked
/// triangular solves take 10 ms, and the kernel fit does this at every likelihood evaluation.
/// Sequential (faer without rayon): trials are the unit of parallelism.
struct Factor {
    llt: faer::linalg::solvers::Llt<f64>,
    inverse: DMatrix<f64>,
    half_logdet: f64,
}

impl Factor {
    /// `None` when `c` is not positive definite.
    fn new(c: &DMatrix<f64>) -> Option<Factor> {
        use faer::linalg::solvers::DenseSolveCore;
        let n = c.nrows();
        let llt = faer::MatRef::from_column_major_slice(c.as_slice(), n, n).llt(faer::Side::Lower).ok()?;
        let l = llt.L();
        let half_logdet = (0..n).map(|i| l[(i, i)].ln()).sum();
        let inv = llt.inverse();
        let inverse = DMatrix::from_fn(n, n, |i, j| inv[(i, j)]);
        Some(Factor { llt, inverse, half_logdet })
    }

    /// `C^-1 y` by the triangular solves.
    fn solve(&self, y: &DVector<f64>) -> DVector<f64> {
        use faer::linalg::solvers::Solve;
        let x = self.llt.solve(faer::MatRef::from_column_major_slice(y.as_slice(), y.len(), 1));
        DVector::from_fn(y.len(), |i, _| x[(i, 0)])
    }
}

/// The per-coordinate squared difference of two coordinates (Hamming for categoricals).
#[inline]
fn sq_diff(a: f64, b: f64, categorical: bool) -> f64 {
    if categorical {
        if a != b {
            1.0
        } else {
            0.0
        }
    } else {
        (a - b) * (a - b)
    }
}

/// The marginal log-likelihood problem, in Optuna's parameters
/// `[log isl_1..d, log scale, log(noise - MIN_NOISE)]`.
struct Likelihood<'a> {
    /// `sqd[i]`: squared differences of coordinate `i` between every pair of training points.
    sqd: &'a [DMatrix<f64>],
    y: &'a DVector<f64>,
    deterministic: bool,
    /// The last evaluation, shared by argmin's separate cost and gradient calls.
    last: RefCell<Option<(Vec<f64>, f64, Vec<f64>)>>,
}

impl Likelihood<'_> {
    fn unpack(&self, theta: &[f64]) -> (Vec<f64>, f64, f64, f64) {
        let d = self.sqd.len();
        let isl: Vec<f64> = theta[..d].iter().map(|t| t.exp()).collect();
        let scale = theta[d].exp();
        let (noise, dnoise) =
            if self.deterministic { (MIN_NOISE, 0.0) } else { (MIN_NOISE + theta[d + 1].exp(), theta[d + 1].exp()) };
        (isl, scale, noise, dnoise)
    }

    /// The negative log posterior (up to a constant) and its gradient; `None` when the
    /// covariance is not positive definite or a value is not finite.
    fn evaluate(&self, theta: &[f64]) -> Option<(f64, Vec<f64>)> {
        if let Some((t, f, g)) = self.last.borrow().as_ref() {
            if t.as_slice() == theta {
                return Some((*f, g.clone()));
            }
        }
        let d = self.sqd.len();
        let n = self.y.len();
        let (isl, scale, noise, dnoise) = self.unpack(theta);
        let mut r2 = DMatrix::<f64>::zeros(n, n);
        for (sqd, &l) in self.sqd.iter().zip(&isl) {
            r2.zip_apply(sqd, |r, q| *r += l * q);
        }
        // The kernel and its derivative in r2, sharing one sqrt and one exp per pair.
        let mut k = DMatrix::<f64>::zeros(n, n);
        let mut dk = DMatrix::<f64>::zeros(n, n);
        for ((r, kv), dv) in r2.iter().zip(k.iter_mut()).zip(dk.iter_mut()) {
            let s = (5.0 * r).sqrt();
            let e = (-s).exp();
            *kv = scale * e * (5.0 / 3.0 * r + s + 1.0);
            *dv = scale * -5.0 / 6.0 * (1.0 + s) * e;
        }
        let mut c = k.clone();
        for i in 0..n {
            c[(i, i)] += noise;
        }
        let f = Factor::new(&c)?;
        let alpha = f.solve(self.y);
        let mll = -f.half_logdet - 0.5 * self.y.dot(&alpha);
        // d mll / d theta_j = 1/2 tr(W dC/dtheta_j), W = alpha alpha^T - C^-1.
        let mut w = f.inverse;
        w.ger(1.0, &alpha, &alpha, -1.0);
        let mut grad = vec![0.0; d + 2];
        let g = w.zip_map(&dk, |wv, dv| 0.5 * wv * dv);
        for i in 0..d {
            grad[i] = g.dot(&self.sqd[i]) * isl[i];
        }
        grad[d] = 0.5 * w.dot(&k);
        grad[d + 1] = 0.5 * w.trace() * dnoise;
        // Optuna's default log prior.
        let mut prior = 0.0;
        for (i, &l) in isl.iter().enumerate() {
            prior -= 0.1 / l + 0.1 * l;
            grad[i] += 0.1 / l - 0.1 * l;
        }
        prior += scale.ln() - scale;
        grad[d] += 1.0 - scale;
        prior += 0.1 * noise.ln() - 30.0 * noise;
        grad[d + 1] += (0.1 / noise - 30.0) * dnoise;
        let loss = -(mll + prior);
        grad.iter_mut().for_each(|v| *v = -*v);
        if !loss.is_finite() || grad.iter().any(|v| !v.is_finite()) {
            return None;
        }
        *self.last.borrow_mut() = Some((theta.to_vec(), loss, grad.clone()));
        Some((loss, grad))
    }
}

impl CostFunction for Likelihood<'_> {
    type Param = Vec<f64>;
    type Output = f64;

    fn cost(&self, theta: &Vec<f64>) -> Result<f64, ArgminError> {
        self.evaluate(theta)
            .map(|(f, _)| f)
            .ok_or_else(|| argmin::argmin_error!(ConditionViolated, "the covariance is not positive definite"))
    }
}

impl Gradient for Likelihood<'_> {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;

    fn gradient(&self, theta: &Vec<f64>) -> Result<Vec<f64>, ArgminError> {
        self.evaluate(theta)
            .map(|(_, g)| g)
            .ok_or_else(|| argmin::argmin_error!(ConditionViolated, "the covariance is not positive definite"))
    }
}

impl Regressor {
    /// Fits the kernel to `(x, y)` starting from `start` (the previous fit, or the defaults),
    /// then from the defaults if that fails; if both fail, keeps the defaults unfitted
    /// (Optuna's `fit_kernel_params`).
    pub fn fit(
        x: Vec<f64>,
        d: usize,
        y: &[f64],
        is_categorical: &[bool],
        start: Option<&KernelParams>,
        deterministic: bool,
    ) -> Regressor {
        let n = y.len();
        let sqd: Vec<DMatrix<f64>> = (0..d)
            .map(|i| DMatrix::from_fn(n, n, |a, b| sq_diff(x[a * d + i], x[b * d + i], is_categorical[i])))
            .collect();
        let y = DVector::from_column_slice(y);
        let defaults = KernelParams::defaults(d);
        let starts = [start.filter(|p| p.inverse_squared_lengthscales.len() == d).unwrap_or(&defaults), &defaults];
        for s in starts {
            if let Some(params) = Self::optimise(&sqd, &y, s, deterministic) {
                if let Some(r) = Regressor::new(x.clone(), d, &y, is_categorical, params) {
                    return r;
                }
            }
        }
        Regressor::new(x, d, &y, is_categorical, defaults).expect("K + I is positive definite")
    }

    /// L-BFGS from `start`; `None` when it fails.
    fn optimise(
        sqd: &[DMatrix<f64>],
        y: &DVector<f64>,
        start: &KernelParams,
        deterministic: bool,
    ) -> Option<KernelParams> {
        let problem = Likelihood { sqd, y, deterministic, last: RefCell::new(None) };
        let mut theta0: Vec<f64> = start.inverse_squared_lengthscales.iter().map(|v| v.ln()).collect();
        theta0.push(start.scale.ln());
        theta0.push((start.noise - 0.99 * MIN_NOISE).ln());
        // scipy's L-BFGS-B stops at a gradient of 1e-2 (Optuna's gtol) or a relative cost
        // change of 2.2e-9; argmin's tests are the gradient's L2 norm and an absolute change.
        let solver = LBFGS::new(MoreThuenteLineSearch::new(), 10)
            .with_tolerance_grad(1e-2)
            .ok()?
            .with_tolerance_cost(1e-9 * (y.len() as f64).max(1.0))
            .ok()?;
        let result = Executor::new(problem, solver).configure(|s| s.param(theta0).max_iters(1000)).run().ok()?;
        let theta = result.state().get_best_param()?.clone();
        let (isl, scale, noise, _) = Likelihood { sqd, y, deterministic, last: RefCell::new(None) }.unpack(&theta);
        let params = KernelParams { inverse_squared_lengthscales: isl, scale, noise };
        params.is_finite().then_some(params)
    }

    /// The GP with fixed `params`; `None` when the covariance cannot be factored.
    fn new(
        x: Vec<f64>,
        d: usize,
        y: &DVector<f64>,
        is_categorical: &[bool],
        params: KernelParams,
    ) -> Option<Regressor> {
        let n = y.len();
        let mut r = Regressor {
            x,
            n,
            d,
            is_categorical: is_categorical.to_vec(),
            params,
            alpha: DVector::zeros(n),
            c_inv: DMatrix::zeros(n, n),
        };
        let mut c = DMatrix::from_fn(n, n, |a, b| r.kernel(r.row(a), r.row(b)));
        for i in 0..n {
            c[(i, i)] += r.params.noise;
        }
        let f = Factor::new(&c)?;
        r.alpha = f.solve(y);
        r.c_inv = f.inverse;
        Some(r)
    }

    pub fn d(&self) -> usize {
        self.d
    }

    fn row(&self, i: usize) -> &[f64] {
        &self.x[i * self.d..(i + 1) * self.d]
    }

    /// `1 / sqrt(isl)`: the lengthscale of each coordinate.
    pub fn lengthscales(&self) -> Vec<f64> {
        self.params.inverse_squared_lengthscales.iter().map(|l| 1.0 / l.sqrt()).collect()
    }

    /// The kernel's scaled squared distance.
    #[inline]
    fn r2(&self, a: &[f64], b: &[f64]) -> f64 {
        let isl = &self.params.inverse_squared_lengthscales;
        (0..self.d).map(|i| sq_diff(a[i], b[i], self.is_categorical[i]) * isl[i]).sum()
    }

    /// `k(a, b)`.
    #[inline]
    pub fn kernel(&self, a: &[f64], b: &[f64]) -> f64 {
        self.params.scale * matern52(self.r2(a, b))
    }

    /// `k(x, X_j)` for every training point, into `out`.
    pub fn kernel_row(&self, x: &[f64], out: &mut DVector<f64>) {
        for j in 0..self.n {
            out[j] = self.kernel(x, self.row(j));
        }
    }

    /// `k(x, b)` and its gradient in `x` (zero on categorical coordinates) added to `grad`
    /// times `weight`.
    pub fn kernel_with_grad(&self, x: &[f64], b: &[f64], weight: f64, grad: &mut [f64]) -> f64 {
        let r2 = self.r2(x, b);
        let c = weight * self.params.scale * matern52_grad(r2) * 2.0;
        for i in 0..self.d {
            if !self.is_categorical[i] {
                grad[i] += c * self.params.inverse_squared_lengthscales[i] * (x[i] - b[i]);
            }
        }
        self.params.scale * matern52(r2)
    }

    /// Posterior mean and (latent, clamped at 0) variance at `x`.
    pub fn posterior(&self, x: &[f64]) -> (f64, f64) {
        let mut kx = DVector::zeros(self.n);
        self.kernel_row(x, &mut kx);
        let mean = kx.dot(&self.alpha);
        let var = self.params.scale - kx.dot(&(&self.c_inv * &kx));
        (mean, var.max(0.0))
    }

    /// Posterior mean and variance at `x` with their gradients in `x`, and `k(x, X)`.
    pub fn posterior_with_grad(&self, x: &[f64], dmean: &mut [f64], dvar: &mut [f64]) -> (f64, f64, DVector<f64>) {
        let mut kx = DVector::zeros(self.n);
        // c_j = d k(x, X_j) / d r2 * 2: dk_j/dx_i = c_j isl_i (x_i - X_ji).
        let mut c = DVector::zeros(self.n);
        for j in 0..self.n {
            let r2 = self.r2(x, self.row(j));
            kx[j] = self.params.scale * matern52(r2);
            c[j] = self.params.scale * matern52_grad(r2) * 2.0;
        }
        let u = &self.c_inv * &kx;
        let mean = kx.dot(&self.alpha);
        let var = self.params.scale - kx.dot(&u);
        for i in 0..self.d {
            let (mut gm, mut gv) = (0.0, 0.0);
            if !self.is_categorical[i] {
                for j in 0..self.n {
                    let dk = c[j] * (x[i] - self.x[j * self.d + i]);
                    gm += self.alpha[j] * dk;
                    gv -= 2.0 * u[j] * dk;
                }
            }
            let l = self.params.inverse_squared_lengthscales[i];
            dmean[i] = gm * l;
            dvar[i] = if var > 0.0 { gv * l } else { 0.0 };
        }
        (mean, var.max(0.0), kx)
    }

    /// Posterior means and variances of many points (rows of `xs`, `m x d`) at once.
    pub fn posterior_batch(&self, xs: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let m = xs.len() / self.d;
        // One column per point, so each point's kernel values and C^-1 k are contiguous.
        let kc = DMatrix::from_fn(self.n, m, |j, a| self.kernel(&xs[a * self.d..(a + 1) * self.d], self.row(j)));
        let u = &self.c_inv * &kc;
        let means: Vec<f64> = kc.tr_mul(&self.alpha).iter().copied().collect();
        let vars: Vec<f64> =
            kc.column_iter().zip(u.column_iter()).map(|(k, u)| (self.params.scale - k.dot(&u)).max(0.0)).collect();
        (means, vars)
    }

    /// `C^-1`, for the posterior covariance of running trials.
    pub fn c_inv(&self) -> &DMatrix<f64> {
        &self.c_inv
    }

    /// Training point `j`.
    pub fn point(&self, j: usize) -> &[f64] {
        self.row(j)
    }

    pub fn n(&self) -> usize {
        self.n
    }
}

impl KernelParams {
    fn is_finite(&self) -> bool {
        self.scale.is_finite()
            && self.noise.is_finite()
            && self.inverse_squared_lengthscales.iter().all(|v| v.is_finite() && *v > 0.0)
            && self.scale > 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem_data() -> (Vec<f64>, Vec<f64>, Vec<bool>) {
        // 12 points in 3 coordinates (the last categorical with 3 choices).
        let mut x = vec![];
        let mut y = vec![];
        for k in 0..12 {
            let a = ((k * 7) % 12) as f64 / 11.0;
            let b = ((k * 5 + 3) % 12) as f64 / 11.0;
            let c = (k % 3) as f64;
            x.extend([a, b, c]);
            y.push((3.0 * a).sin() + b * b - 0.3 * c);
        }
        let mean = y.iter().sum::<f64>() / 12.0;
        let sd = (y.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / 12.0).sqrt();
        (x, y.iter().map(|v| (v - mean) / sd).collect(), vec![false, false, true])
    }

    #[test]
    fn likelihood_gradient_matches_finite_differences() {
        let (x, y, cat) = problem_data();
        let (n, d) = (12, 3);
        let sqd: Vec<DMatrix<f64>> =
            (0..d).map(|i| DMatrix::from_fn(n, n, |a, b| sq_diff(x[a * d + i], x[b * d + i], cat[i]))).collect();
        let y = DVector::from_column_slice(&y);
        for deterministic in [false, true] {
            let p = Likelihood { sqd: &sqd, y: &y, deterministic, last: RefCell::new(None) };
            for theta in
                [vec![0.0, 0.0, 0.0, 0.0, 0.0], vec![1.2, -0.7, 0.3, -0.4, -3.0], vec![-2.0, 2.0, 0.5, 1.0, -8.0]]
            {
                let (_, g) = p.evaluate(&theta).unwrap();
                for j in 0..theta.len() {
                    let h = 1e-6;
                    let mut up = theta.clone();
                    let mut down = theta.clone();
                    up[j] += h;
                    down[j] -= h;
                    let fd = (p.evaluate(&up).unwrap().0 - p.evaluate(&down).unwrap().0) / (2.0 * h);
                    assert!((fd - g[j]).abs() <= 1e-5 * (1.0 + fd.abs()), "theta {theta:?} [{j}]: {fd} vs {}", g[j]);
                }
            }
        }
    }

    #[test]
    fn fitting_raises_the_likelihood_and_interpolates() {
        let (x, y, cat) = problem_data();
        let gp = Regressor::fit(x.clone(), 3, &y, &cat, None, false);
        let sqd: Vec<DMatrix<f64>> =
            (0..3).map(|i| DMatrix::from_fn(12, 12, |a, b| sq_diff(x[a * 3 + i], x[b * 3 + i], cat[i]))).collect();
        let yv = DVector::from_column_slice(&y);
        let p = Likelihood { sqd: &sqd, y: &yv, deterministic: false, last: RefCell::new(None) };
        let at = |k: &KernelParams| {
            let mut t: Vec<f64> = k.inverse_squared_lengthscales.iter().map(|v| v.ln()).collect();
            t.push(k.scale.ln());
            t.push((k.noise - MIN_NOISE).ln());
            p.evaluate(&t).unwrap().0
        };
        assert!(at(&gp.params) < at(&KernelParams::defaults(3)) - 1.0, "{:?}", gp.params);
        assert_ne!(gp.params, KernelParams::defaults(3));
        for j in 0..12 {
            let (m, v) = gp.posterior(&x[j * 3..j * 3 + 3]);
            assert!((m - y[j]).abs() < 0.3, "point {j}: {m} vs {}", y[j]);
            assert!(v < 0.2);
        }
        // The gradients of the posterior match finite differences.
        let q = [0.31, 0.62, 1.0];
        let (mut dm, mut dv) = (vec![0.0; 3], vec![0.0; 3]);
        gp.posterior_with_grad(&q, &mut dm, &mut dv);
        for i in 0..2 {
            let h = 1e-6;
            let (mut up, mut down) = (q, q);
            up[i] += h;
            down[i] -= h;
            let (mu, vu) = gp.posterior(&up);
            let (md, vd) = gp.posterior(&down);
            assert!(((mu - md) / (2.0 * h) - dm[i]).abs() < 1e-5, "mean [{i}]");
            assert!(((vu - vd) / (2.0 * h) - dv[i]).abs() < 1e-5, "var [{i}]");
        }
        let (means, vars) = gp.posterior_batch(&q);
        let (m, v) = gp.posterior(&q);
        assert!((means[0] - m).abs() < 1e-12 && (vars[0] - v).abs() < 1e-12);
    }
}
