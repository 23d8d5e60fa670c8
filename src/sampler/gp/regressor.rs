//! The Gaussian process (Optuna's `optuna/_gp/gp.py` and `prior.py`): a Matérn 5/2 kernel with
//! one inverse squared lengthscale per coordinate, a kernel scale and a noise variance, fitted
//! by maximising the marginal log-likelihood plus Optuna's log prior with argmin's L-BFGS, with
//! analytic gradients. The n^3 steps (Cholesky factor, inverse, triangular solves of the
//! candidates) are faer's blocked kernels; the rest is nalgebra's.
//!
//! At 300 trials a fit takes about 15 likelihood evaluations (as many as Optuna's scipy fit
//! takes), each a factorisation and an inverse of the 300 x 300 covariance: 27 Mflop that
//! faer does in about 1.4 ms on one core here. The elementwise passes around them (kernel,
//! derivatives, the gradient's contraction) touch only the lower triangle and run in blocks
//! on rayon's threads; faer's own parallelism was slower at these sizes, so it runs
//! sequentially.

use std::cell::RefCell;

use argmin::core::{CostFunction, Error as ArgminError, Gradient};
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

/// `scale * matern52(r2)` in place of each `r2`, and `scale * matern52_grad(r2)` into `grad`
/// when given: the kernel over a row or a column of the covariance at once. The loop is
/// compiled for AVX2 and FMA where the CPU has them (pulp's `V3`, detected at run time) and
/// plainly elsewhere; with [`exp_nonpositive`] instead of libm's scalar `exp` it vectorises,
/// some 2.5 times faster per value than [`matern52`] here.
pub(super) fn matern52_in_place(r2: &mut [f64], scale: f64, grad: Option<&mut [f64]>) {
    debug_assert!(grad.as_ref().is_none_or(|g| g.len() == r2.len()));
    #[cfg(target_arch = "x86_64")]
    if let Some(v3) = pulp::x86::V3::try_new() {
        return v3.vectorize(
            #[inline(always)]
            || matern52_lanes::<true>(r2, scale, grad),
        );
    }
    matern52_lanes::<false>(r2, scale, grad)
}

#[inline(always)]
fn matern52_lanes<const FMA: bool>(r2: &mut [f64], scale: f64, grad: Option<&mut [f64]>) {
    match grad {
        Some(grad) => {
            for (v, g) in r2.iter_mut().zip(grad) {
                let s = (5.0 * *v).sqrt();
                let e = exp_nonpositive::<FMA>(-s);
                *g = scale * -5.0 / 6.0 * (1.0 + s) * e;
                *v = scale * e * (5.0 / 3.0 * *v + s + 1.0);
            }
        }
        None => {
            for v in r2.iter_mut() {
                let s = (5.0 * *v).sqrt();
                *v = scale * exp_nonpositive::<FMA>(-s) * (5.0 / 3.0 * *v + s + 1.0);
            }
        }
    }
}

/// `exp(x)` for `x <= 0` in `f64`, written so that a loop of it vectorises: `x = n ln 2 + r`
/// with `|r| <= ln 2 / 2` (fdlibm's two-part `ln 2`), `e^r` by its Taylor polynomial of degree
/// 13 (truncation below `1e-17`), `2^n` put into the exponent bits; within one `f64::EPSILON`
/// of libm's over `[-708, 0]` (tested). Below -708 it gives `e^-708`, which the kernel's
/// polynomial factor cannot lift above rounding noise; NaN stays NaN. `FMA` fuses the
/// multiply-adds (only where the CPU has FMA: elsewhere `mul_add` is a slow library call).
#[inline(always)]
pub(super) fn exp_nonpositive<const FMA: bool>(x: f64) -> f64 {
    #[inline(always)]
    fn fmadd<const FMA: bool>(a: f64, b: f64, c: f64) -> f64 {
        if FMA {
            a.mul_add(b, c)
        } else {
            a * b + c
        }
    }
    // 1.5 * 2^52: adding it rounds to an integer, left in the low bits of the mantissa.
    const ROUND: f64 = 6_755_399_441_055_744.0;
    const INV_FACTORIALS: [f64; 13] = [
        1.0 / 479_001_600.0,
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
    let c = x.max(-708.0);
    let t = fmadd::<FMA>(c, std::f64::consts::LOG2_E, ROUND);
    let n = t - ROUND;
    let r = fmadd::<FMA>(n, -6.931_471_803_691_238_2e-1, c);
    let r = fmadd::<FMA>(n, -1.908_214_929_270_587_7e-10, r);
    let mut p = 1.0 / 6_227_020_800.0;
    for k in INV_FACTORIALS {
        p = fmadd::<FMA>(p, r, k);
    }
    let bits = (t.to_bits() as i64 - ROUND.to_bits() as i64 + 1023) << 52;
    let y = p * f64::from_bits(bits as u64);
    if x.is_nan() {
        x
    } else {
        y
    }
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
    /// The Cholesky factor `L` of `C` (lower triangle).
    l: faer::Mat<f64>,
}

/// A Cholesky factorisation `C = L L^T` with `C^-1`, by faer: its blocked factorisation and
/// inverse take 2 ms at n = 300 where nalgebra's unblocked triangular solves take 10 ms.
struct Factor {
    llt: faer::linalg::solvers::Llt<f64>,
    inverse: DMatrix<f64>,
}

/// Training points from which the likelihood's elementwise passes run on rayon's threads,
/// in this many blocks of columns (fixed, so sums do not depend on the thread count).
const PARALLEL_FROM: usize = 128;
const PAIR_BLOCKS: usize = 8;

/// Column ranges `[b0, b1)` of the strict lower triangle of an `n x n` matrix with about
/// equal numbers of pairs, and their pairs' range `[p0, p1)` in column order.
fn column_blocks(n: usize, blocks: usize) -> Vec<(usize, usize, usize, usize)> {
    let total = n * n.saturating_sub(1) / 2;
    let mut out = Vec::with_capacity(blocks);
    let (mut b0, mut p0, mut p) = (0, 0, 0);
    for b in 0..n {
        p += n - 1 - b;
        if b + 1 == n || (p < total && p * blocks >= total * (out.len() + 1)) {
            out.push((b0, b + 1, p0, p));
            (b0, p0) = (b + 1, p);
        }
    }
    out
}

/// Candidates per block of [`Regressor::posterior_batch`]: blocks run on rayon's threads.
const POSTERIOR_BLOCK: usize = 256;

impl Factor {
    /// `None` when `c` is not positive definite.
    fn new(c: &DMatrix<f64>) -> Option<Factor> {
        use faer::linalg::solvers::DenseSolveCore;
        let n = c.nrows();
        let llt = faer::MatRef::from_column_major_slice(c.as_slice(), n, n).llt(faer::Side::Lower).ok()?;
        let inv = llt.inverse();
        let inverse = DMatrix::from_fn(n, n, |i, j| inv[(i, j)]);
        Some(Factor { llt, inverse })
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
///
/// The covariance is symmetric, so every evaluation works on the pairs below the diagonal
/// only, in one pass that builds the kernel and its derivative and one pass that contracts
/// them with `W = alpha alpha^T - C^-1` for the gradient. faer factors and inverts in place,
/// reading and writing lower triangles; the buffers live across evaluations.
struct Likelihood<'a> {
    /// Squared differences of the pairs `a > b` of training points, `d` per pair, pairs
    /// ordered column by column as faer stores the lower triangle.
    sqd: Vec<f64>,
    d: usize,
    y: &'a [f64],
    deterministic: bool,
    /// [`column_blocks`] of the covariance: the units of the parallel passes.
    blocks: Vec<(usize, usize, usize, usize)>,
    work: RefCell<Work>,
}

/// Buffers of [`Likelihood::evaluate`] and its last result (argmin asks for the cost and the
/// gradient of the same point separately).
struct Work {
    /// `C` (column-major), factored in place into `L`.
    c: Vec<f64>,
    /// The lower triangle of `C^-1` (column-major).
    inv: Vec<f64>,
    /// Kernel value and its derivative in `r2`, per pair.
    kv: Vec<f64>,
    dv: Vec<f64>,
    alpha: Vec<f64>,
    stack: faer::dyn_stack::MemBuffer,
    last: super::lbfgs::LastEval,
}

impl<'a> Likelihood<'a> {
    fn new(x: &[f64], d: usize, is_categorical: &[bool], y: &'a [f64], deterministic: bool) -> Self {
        use faer::linalg::cholesky::llt;
        let n = y.len();
        let mut sqd = Vec::with_capacity(n * n.saturating_sub(1) / 2 * d);
        for b in 0..n {
            for a in b + 1..n {
                sqd.extend((0..d).map(|i| sq_diff(x[a * d + i], x[b * d + i], is_categorical[i])));
            }
        }
        let par = faer::Par::Seq;
        let req = llt::factor::cholesky_in_place_scratch::<f64>(n, par, Default::default())
            .or(llt::inverse::inverse_scratch::<f64>(n, par))
            .or(llt::solve::solve_in_place_scratch::<f64>(n, 1, par));
        let work = Work {
            c: vec![0.0; n * n],
            inv: vec![0.0; n * n],
            kv: vec![0.0; n * n.saturating_sub(1) / 2],
            dv: vec![0.0; n * n.saturating_sub(1) / 2],
            alpha: vec![0.0; n],
            stack: faer::dyn_stack::MemBuffer::new(req),
            last: None,
        };
        let blocks = column_blocks(n, if n >= PARALLEL_FROM { PAIR_BLOCKS } else { 1 });
        Likelihood { sqd, d, y, deterministic, blocks, work: RefCell::new(work) }
    }

    fn unpack(&self, theta: &[f64]) -> (Vec<f64>, f64, f64, f64) {
        let d = self.d;
        let isl: Vec<f64> = theta[..d].iter().map(|t| t.exp()).collect();
        let scale = theta[d].exp();
        let (noise, dnoise) =
            if self.deterministic { (MIN_NOISE, 0.0) } else { (MIN_NOISE + theta[d + 1].exp(), theta[d + 1].exp()) };
        (isl, scale, noise, dnoise)
    }

    /// The negative log posterior (up to a constant) and its gradient; `None` when the
    /// covariance is not positive definite or a value is not finite.
    fn evaluate(&self, theta: &[f64]) -> Option<(f64, Vec<f64>)> {
        use faer::linalg::cholesky::llt;
        use rayon::prelude::*;
        let mut work = self.work.borrow_mut();
        if let Some((t, f, g)) = work.last.as_ref() {
            if t.as_slice() == theta {
                return Some((*f, g.clone()));
            }
        }
        let Work { c, inv, kv, dv, alpha, stack, last } = &mut *work;
        let (d, n) = (self.d, self.y.len());
        let (isl, scale, noise, dnoise) = self.unpack(theta);
        let (blocks, sqd) = (&self.blocks, self.sqd.as_slice());
        // The kernel and its derivative in r2, sharing one sqrt and one exp per pair; blocks
        // of columns on rayon's threads.
        let mut parts = Vec::with_capacity(blocks.len());
        let (mut c_rest, mut kv_rest, mut dv_rest) = (c.as_mut_slice(), kv.as_mut_slice(), dv.as_mut_slice());
        for &(b0, b1, p0, p1) in blocks {
            let (cb, cr) = c_rest.split_at_mut((b1 - b0) * n);
            let (kb, kr) = kv_rest.split_at_mut(p1 - p0);
            let (db, dr) = dv_rest.split_at_mut(p1 - p0);
            parts.push((b0, p0, cb, kb, db));
            (c_rest, kv_rest, dv_rest) = (cr, kr, dr);
        }
        parts.into_par_iter().for_each(|(b0, p0, cb, kb, db)| {
            let mut p = p0;
            for (b, col) in (b0..).zip(cb.chunks_mut(n)) {
                col[b] = scale + noise;
                let below = &mut col[b + 1..];
                for v in below.iter_mut() {
                    let q = &sqd[p * d..(p + 1) * d];
                    *v = q.iter().zip(&isl).map(|(q, l)| q * l).sum();
                    p += 1;
                }
                let span = p - p0 - below.len()..p - p0;
                matern52_in_place(below, scale, Some(&mut db[span.clone()]));
                kb[span].copy_from_slice(below);
            }
        });
        let par = faer::Par::Seq;
        let stack = faer::dyn_stack::MemStack::new(stack);
        let mut cm = faer::MatMut::from_column_major_slice_mut(c.as_mut_slice(), n, n);
        llt::factor::cholesky_in_place(cm.as_mut(), Default::default(), par, stack, Default::default()).ok()?;
        let half_logdet: f64 = (0..n).map(|i| cm[(i, i)].ln()).sum();
        alpha.copy_from_slice(self.y);
        llt::solve::solve_in_place(cm.as_ref(), faer::MatMut::from_column_major_slice_mut(alpha, n, 1), par, stack);
        let mll = -half_logdet - 0.5 * self.y.iter().zip(alpha.iter()).map(|(y, a)| y * a).sum::<f64>();
        llt::inverse::inverse(faer::MatMut::from_column_major_slice_mut(inv, n, n), cm.as_ref(), par, stack);
        // d mll / d theta_j = 1/2 tr(W dC/dtheta_j), W = alpha alpha^T - C^-1: each pair below
        // the diagonal counts twice, and the diagonal of dC is 0 for the lengthscales. Blocks
        // are summed in a fixed order, so the result does not depend on the threads.
        let (inv, kv, dv, alpha) = (&*inv, &*kv, &*dv, &*alpha);
        let sums: Vec<Vec<f64>> = blocks
            .par_iter()
            .map(|&(b0, b1, p0, _)| {
                // [lengthscales.., d/dscale, trace of W]
                let mut acc = vec![0.0; d + 2];
                let mut p = p0;
                for b in b0..b1 {
                    let col = &inv[b * n..(b + 1) * n];
                    let w_bb = alpha[b] * alpha[b] - col[b];
                    acc[d + 1] += w_bb;
                    acc[d] += 0.5 * w_bb * scale;
                    for (a, &inv_ab) in col.iter().enumerate().skip(b + 1) {
                        let w = alpha[a] * alpha[b] - inv_ab;
                        acc[d] += w * kv[p];
                        let wd = w * dv[p];
                        for (g, q) in acc[..d].iter_mut().zip(&sqd[p * d..(p + 1) * d]) {
                            *g += wd * q;
                        }
                        p += 1;
                    }
                }
                acc
            })
            .collect();
        let mut grad = vec![0.0; d + 2];
        for acc in &sums {
            grad.iter_mut().zip(acc).for_each(|(g, a)| *g += a);
        }
        let (dscale, dtrace) = (grad[d], grad[d + 1]);
        for (g, l) in grad[..d].iter_mut().zip(&isl) {
            *g *= l;
        }
        grad[d] = dscale;
        grad[d + 1] = 0.5 * dtrace * dnoise;
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
        *last = Some((theta.to_vec(), loss, grad.clone()));
        Some((loss, grad))
    }
}

impl CostFunction for &Likelihood<'_> {
    type Param = Vec<f64>;
    type Output = f64;

    fn cost(&self, theta: &Vec<f64>) -> Result<f64, ArgminError> {
        self.evaluate(theta)
            .map(|(f, _)| f)
            .ok_or_else(|| argmin::argmin_error!(ConditionViolated, "the covariance is not positive definite"))
    }
}

impl Gradient for &Likelihood<'_> {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;

    fn gradient(&self, theta: &Vec<f64>) -> Result<Vec<f64>, ArgminError> {
        self.evaluate(theta)
            .map(|(_, g)| g)
            .ok_or_else(|| argmin::argmin_error!(ConditionViolated, "the covariance is not positive definite"))
    }
}

impl Likelihood<'_> {
    /// L-BFGS from `start`; `None` when it fails.
    fn optimise(&self, start: &KernelParams) -> Option<KernelParams> {
        let mut theta0: Vec<f64> = start.inverse_squared_lengthscales.iter().map(|v| v.ln()).collect();
        theta0.push(start.scale.ln());
        theta0.push((start.noise - 0.99 * MIN_NOISE).ln());
        // Optuna's gtol.
        let (theta, _) = super::lbfgs::minimise(self, theta0, 1e-2, 1000)?;
        let (isl, scale, noise, _) = self.unpack(&theta);
        let params = KernelParams { inverse_squared_lengthscales: isl, scale, noise };
        params.is_finite().then_some(params)
    }
}

impl Regressor {
    /// Fits the kernel to `(x, y)` starting from `start` (the previous fit, or the defaults),
    /// then from the defaults if that fails; if both fail, keeps the defaults unfitted
    /// (Optuna's `fit_kernel_params`). `None` only when even the defaults cannot be factored
    /// (inputs that are not finite).
    pub fn fit(
        x: Vec<f64>,
        d: usize,
        y: &[f64],
        is_categorical: &[bool],
        start: Option<&KernelParams>,
        deterministic: bool,
    ) -> Option<Regressor> {
        let problem = Likelihood::new(&x, d, is_categorical, y, deterministic);
        let y = DVector::from_column_slice(y);
        let defaults = KernelParams::defaults(d);
        let starts = [start.filter(|p| p.inverse_squared_lengthscales.len() == d).unwrap_or(&defaults), &defaults];
        for s in starts {
            if let Some(params) = problem.optimise(s) {
                if let Some(r) = Regressor::new(x.clone(), d, &y, is_categorical, params) {
                    return Some(r);
                }
            }
        }
        Regressor::new(x, d, &y, is_categorical, defaults)
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
            l: faer::Mat::zeros(0, 0),
        };
        let mut c = DMatrix::from_fn(n, n, |a, b| r.kernel(r.row(a), r.row(b)));
        for i in 0..n {
            c[(i, i)] += r.params.noise;
        }
        let f = Factor::new(&c)?;
        r.alpha = f.solve(y);
        r.c_inv = f.inverse;
        r.l = f.llt.L().to_owned();
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
            out[j] = self.r2(x, self.row(j));
        }
        matern52_in_place(&mut out.as_mut_slice()[..self.n], self.params.scale, None);
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
        self.posterior_of_row(&kx)
    }

    /// Posterior mean and variance from `k(x, X)`.
    pub fn posterior_of_row(&self, kx: &DVector<f64>) -> (f64, f64) {
        let mean = kx.dot(&self.alpha);
        let var = self.params.scale - kx.dot(&(&self.c_inv * kx));
        (mean, var.max(0.0))
    }

    /// Posterior mean and variance at `x` with their gradients in `x`, and `k(x, X)`.
    pub fn posterior_with_grad(&self, x: &[f64], dmean: &mut [f64], dvar: &mut [f64]) -> (f64, f64, DVector<f64>) {
        let mut kx = DVector::zeros(self.n);
        // c_j = d k(x, X_j) / d r2 * 2: dk_j/dx_i = c_j isl_i (x_i - X_ji).
        let mut c = DVector::zeros(self.n);
        for j in 0..self.n {
            kx[j] = self.r2(x, self.row(j));
        }
        matern52_in_place(kx.as_mut_slice(), self.params.scale, Some(c.as_mut_slice()));
        c *= 2.0;
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

    /// Posterior means and variances of many points (rows of `xs`, `m x d`) at once, in
    /// blocks spread over rayon's threads. The variance is `scale - |L^-1 k|^2`: one blocked
    /// triangular solve (faer), half the work of multiplying by `C^-1`.
    pub fn posterior_batch(&self, xs: &[f64]) -> (Vec<f64>, Vec<f64>) {
        use rayon::prelude::*;
        let blocks: Vec<(Vec<f64>, Vec<f64>)> =
            xs.par_chunks(POSTERIOR_BLOCK * self.d).map(|block| self.posterior_block(block)).collect();
        blocks.into_iter().fold((vec![], vec![]), |(mut means, mut vars), (m, v)| {
            means.extend(m);
            vars.extend(v);
            (means, vars)
        })
    }

    fn posterior_block(&self, xs: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let m = xs.len() / self.d;
        // One column per point, so each point's kernel values are contiguous.
        let mut kc = faer::Mat::<f64>::zeros(self.n, m);
        let mut means = Vec::with_capacity(m);
        for a in 0..m {
            let x = &xs[a * self.d..(a + 1) * self.d];
            let col = kc.col_as_slice_mut(a);
            for (j, v) in col.iter_mut().enumerate() {
                *v = self.r2(x, self.row(j));
            }
            matern52_in_place(col, self.params.scale, None);
            means.push(col.iter().zip(self.alpha.iter()).map(|(k, a)| k * a).sum::<f64>());
        }
        faer::linalg::triangular_solve::solve_lower_triangular_in_place(self.l.as_ref(), kc.as_mut(), faer::Par::Seq);
        let vars = (0..m)
            .map(|a| (self.params.scale - kc.col_as_slice(a).iter().map(|v| v * v).sum::<f64>()).max(0.0))
            .collect();
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
        problem_data_of(12)
    }

    /// `n` points in 3 coordinates (the last categorical with 3 choices), standardised values.
    fn problem_data_of(n: usize) -> (Vec<f64>, Vec<f64>, Vec<bool>) {
        let mut x = vec![];
        let mut y = vec![];
        for k in 0..n {
            let a = ((k * 7) % n) as f64 / (n - 1) as f64;
            let b = ((k * 5 + 3) % n) as f64 / (n - 1) as f64;
            let c = (k % 3) as f64;
            x.extend([a, b, c]);
            y.push((3.0 * a).sin() + b * b - 0.3 * c);
        }
        let mean = y.iter().sum::<f64>() / n as f64;
        let sd = (y.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64).sqrt();
        (x, y.iter().map(|v| (v - mean) / sd).collect(), vec![false, false, true])
    }

    #[test]
    fn vectorised_kernel_matches_the_libm_one() {
        let mut worst = 0.0f64;
        for i in 0..=1_000_000 {
            let x = -708.0 * i as f64 / 1e6;
            for e in [exp_nonpositive::<false>(x), exp_nonpositive::<true>(x)] {
                worst = worst.max((e - x.exp()).abs() / x.exp());
            }
        }
        assert!(worst <= f64::EPSILON, "exp: relative error {worst}");
        assert!(exp_nonpositive::<false>(f64::NAN).is_nan() && exp_nonpositive::<true>(f64::NAN).is_nan());
        assert!(exp_nonpositive::<false>(-1e6) > 0.0);
        let r2: Vec<f64> = (0..1003).map(|i| ((i * 7919) % 1000) as f64 / 50.0).collect();
        let (mut k, mut g) = (r2.clone(), vec![0.0; r2.len()]);
        matern52_in_place(&mut k, 1.7, Some(&mut g));
        let mut k_only = r2.clone();
        matern52_in_place(&mut k_only, 1.7, None);
        for (j, &r) in r2.iter().enumerate() {
            let close = |a: f64, b: f64| (a - b).abs() <= 4.0 * f64::EPSILON * b.abs().max(1e-300);
            assert!(close(k[j], 1.7 * matern52(r)) && close(k_only[j], k[j]), "k at r2 = {r}");
            assert!(close(g[j], 1.7 * matern52_grad(r)), "grad at r2 = {r}");
        }
    }

    #[test]
    fn column_blocks_cover_the_triangle_in_order() {
        for (n, blocks) in [(1, 1), (2, 8), (12, 1), (150, 8), (301, 8)] {
            let b = column_blocks(n, blocks);
            assert!(b.len() <= blocks.max(1) && !b.is_empty(), "{n}: {b:?}");
            assert_eq!((b[0].0, b[0].2), (0, 0));
            assert_eq!((b[b.len() - 1].1, b[b.len() - 1].3), (n, n * (n - 1) / 2));
            for w in b.windows(2) {
                assert_eq!((w[0].1, w[0].3), (w[1].0, w[1].2));
            }
            for &(b0, b1, p0, p1) in &b {
                assert_eq!(p1 - p0, (b0..b1).map(|c| n - 1 - c).sum::<usize>());
            }
            if n >= 150 {
                let total = n * (n - 1) / 2;
                assert!(b.iter().all(|&(_, _, p0, p1)| (p1 - p0) <= total / blocks + n), "{n}: {b:?}");
            }
        }
    }

    #[test]
    fn likelihood_in_parallel_blocks_matches_the_whole_matrix_and_its_gradient() {
        let n = PARALLEL_FROM + 22;
        let (x, y, cat) = problem_data_of(n);
        let p = Likelihood::new(&x, 3, &cat, &y, false);
        let theta = vec![1.2, -0.7, 0.3, -0.4, -3.0];
        let (loss, g) = p.evaluate(&theta).unwrap();
        let theirs = naive_loss(&x, 3, &cat, &y, &theta, false);
        assert!((loss - theirs).abs() <= 1e-9 * (1.0 + theirs.abs()), "{loss} vs {theirs}");
        for j in 0..theta.len() {
            let h = 1e-6;
            let (mut up, mut down) = (theta.clone(), theta.clone());
            up[j] += h;
            down[j] -= h;
            let fd = (p.evaluate(&up).unwrap().0 - p.evaluate(&down).unwrap().0) / (2.0 * h);
            assert!((fd - g[j]).abs() <= 1e-4 * (1.0 + fd.abs()), "[{j}]: {fd} vs {}", g[j]);
        }
    }

    #[test]
    fn likelihood_gradient_matches_finite_differences() {
        let (x, y, cat) = problem_data();
        for deterministic in [false, true] {
            let p = Likelihood::new(&x, 3, &cat, &y, deterministic);
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

    /// The loss from the whole matrix by nalgebra's Cholesky, as the equations read.
    fn naive_loss(x: &[f64], d: usize, cat: &[bool], y: &[f64], theta: &[f64], deterministic: bool) -> f64 {
        let n = y.len();
        let isl: Vec<f64> = theta[..d].iter().map(|t| t.exp()).collect();
        let scale = theta[d].exp();
        let noise = if deterministic { MIN_NOISE } else { MIN_NOISE + theta[d + 1].exp() };
        let c = DMatrix::from_fn(n, n, |a, b| {
            let r2: f64 = (0..d).map(|i| sq_diff(x[a * d + i], x[b * d + i], cat[i]) * isl[i]).sum();
            scale * matern52(r2) + if a == b { noise } else { 0.0 }
        });
        let yv = DVector::from_column_slice(y);
        let chol = c.clone().cholesky().unwrap();
        let logdet: f64 = chol.l().diagonal().iter().map(|v| 2.0 * v.ln()).sum();
        let mll = -0.5 * logdet - 0.5 * yv.dot(&chol.solve(&yv));
        let prior: f64 =
            isl.iter().map(|l| -0.1 / l - 0.1 * l).sum::<f64>() + scale.ln() - scale + 0.1 * noise.ln() - 30.0 * noise;
        -(mll + prior)
    }

    #[test]
    fn likelihood_matches_the_whole_matrix_computation() {
        let (x, y, cat) = problem_data();
        for deterministic in [false, true] {
            let p = Likelihood::new(&x, 3, &cat, &y, deterministic);
            for theta in [vec![0.0; 5], vec![1.2, -0.7, 0.3, -0.4, -3.0], vec![-2.0, 2.0, 0.5, 1.0, -8.0]] {
                let ours = p.evaluate(&theta).unwrap().0;
                let theirs = naive_loss(&x, 3, &cat, &y, &theta, deterministic);
                assert!((ours - theirs).abs() <= 1e-9 * (1.0 + theirs.abs()), "{theta:?}: {ours} vs {theirs}");
            }
        }
    }

    #[test]
    fn fitting_raises_the_likelihood_and_interpolates() {
        let (x, y, cat) = problem_data();
        let gp = Regressor::fit(x.clone(), 3, &y, &cat, None, false).unwrap();
        let p = Likelihood::new(&x, 3, &cat, &y, false);
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
