//! Acquisition functions (Optuna's `optuna/_gp/acqf.py`), in the standardised, maximising
//! space: log expected improvement over the best observed value, and, while other trials are
//! running, its batch form qLogEI: the expected improvement of `max(f(running), f(x))` over 128
//! quasi-random joint draws of the running trials' values, so that a new trial is not sent
//! where a running one already looks.

use nalgebra::{DMatrix, DVector};
use rayon::prelude::*;
use statrs::function::erf::{erfc, erfc_inv};

use super::regressor::Regressor;

/// Added to the posterior variance before its square root (Optuna's `stabilizing_noise`).
const STABILIZING_NOISE: f64 = 1e-12;
/// Floor of an improvement in qLogEI, so its log is finite.
const MIN_IMPROVEMENT: f64 = 1e-12;
/// Quasi-random draws of the running trials' values (Optuna's `n_qmc_samples`).
pub(super) const QMC_SAMPLES: usize = 128;
/// Most running trials taken into account (the draws are Sobol points of one dimension per
/// running trial, plus the candidate's).
pub(super) const MAX_RUNNING: usize = 255;

const LOG_SQRT_2PI: f64 = 0.918_938_533_204_672_8;
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// `log E[max(0, u + z)]` for `u ~ N(0, 1)`, i.e. `log(z Phi(z) + phi(z))`, and its
/// derivatives' factors `Phi(z) / ei(z)` and `phi(z) / ei(z)`. Below `z = -25` the closed form
/// cancels to nothing, so the asymptotic series `ei(z) = phi(z) / z^2 (1 - 3/z^2 + 15/z^4 - ...)`
/// is used (as Optuna switches to its `erfcx` form there).
pub(super) fn standard_log_ei(z: f64) -> (f64, f64, f64) {
    if z >= -25.0 {
        let phi = (-0.5 * z * z).exp() * INV_SQRT_2PI;
        let cdf = 0.5 * erfc(-z * std::f64::consts::FRAC_1_SQRT_2);
        let ei = z * cdf + phi;
        (ei.ln(), cdf / ei, phi / ei)
    } else {
        let w = 1.0 / (z * z);
        // ei = phi w S(w); Phi = phi / (-z) M(w) (Mills' ratio).
        let s_coef = [1.0, -3.0, 15.0, -105.0, 945.0, -10395.0, 135135.0, -2027025.0, 34459425.0];
        let m_coef = [1.0, -1.0, 3.0, -15.0, 105.0, -945.0, 10395.0, -135135.0, 2027025.0];
        let series = |c: &[f64]| c.iter().rev().fold(0.0, |acc, k| acc * w + k);
        let (s, m) = (series(&s_coef), series(&m_coef));
        let log_ei = -0.5 * z * z - LOG_SQRT_2PI + w.ln() + s.ln();
        (log_ei, -z * m / s, 1.0 / (w * s))
    }
}

/// What is maximised over the GP's coordinates.
pub(super) enum Acquisition<'a> {
    LogEi { gp: &'a Regressor, best: f64 },
    QLogEi(QLogEi<'a>),
}

impl Acquisition<'_> {
    pub fn gp(&self) -> &Regressor {
        match self {
            Acquisition::LogEi { gp, .. } => gp,
            Acquisition::QLogEi(q) => q.gp,
        }
    }

    /// The value at `x`.
    pub fn value(&self, x: &[f64]) -> f64 {
        match self {
            Acquisition::LogEi { gp, best } => {
                let (mean, var) = gp.posterior(x);
                log_ei_of(mean, var, *best).0
            }
            Acquisition::QLogEi(q) => q.value(x, None),
        }
    }

    /// The value at `x` and its gradient in `x` (zero on categorical coordinates).
    pub fn value_grad(&self, x: &[f64], grad: &mut [f64]) -> f64 {
        match self {
            Acquisition::LogEi { gp, best } => {
                let d = gp.d();
                let (mut dm, mut dv) = (vec![0.0; d], vec![0.0; d]);
                let (mean, var, _) = gp.posterior_with_grad(x, &mut dm, &mut dv);
                let (value, d_mean, d_var) = log_ei_of(mean, var, *best);
                for i in 0..d {
                    grad[i] = d_mean * dm[i] + d_var * dv[i];
                }
                value
            }
            Acquisition::QLogEi(q) => q.value(x, Some(grad)),
        }
    }

    /// Values at many points (rows of `xs`).
    pub fn values(&self, xs: &[f64]) -> Vec<f64> {
        match self {
            Acquisition::LogEi { gp, best } => {
                let (means, vars) = gp.posterior_batch(xs);
                means.iter().zip(&vars).map(|(&m, &v)| log_ei_of(m, v, *best).0).collect()
            }
            Acquisition::QLogEi(q) => xs.par_chunks(q.gp.d()).map(|x| q.value(x, None)).collect(),
        }
    }
}

/// Log EI of a posterior `(mean, var)` over `best`, with `d/d mean` and `d/d var`.
fn log_ei_of(mean: f64, var: f64, best: f64) -> (f64, f64, f64) {
    let sigma = (var + STABILIZING_NOISE).sqrt();
    let z = (mean - best) / sigma;
    let (log_ei, cdf_ratio, pdf_ratio) = standard_log_ei(z);
    // d/d sigma = phi / (sigma ei); d sigma / d var = 1 / (2 sigma).
    (log_ei + sigma.ln(), cdf_ratio / sigma, pdf_ratio / sigma / (2.0 * sigma))
}

/// qLogEI with the running trials' values drawn jointly and held fixed (Optuna's `qLogEI`
/// over a `ConditionalGPRegressor`).
pub(super) struct QLogEi<'a> {
    gp: &'a Regressor,
    best: f64,
    /// The running trials' coordinates, `R x d` row-major.
    xr: Vec<f64>,
    /// Cholesky factor of their posterior covariance (plus stabilising noise), `R x R`.
    lr: DMatrix<f64>,
    /// `S_rr^-1 (F - mu_r)^T`, `R x S`.
    b: DMatrix<f64>,
    /// `C^-1 k(X, X_r)`, `n x R`.
    vr: DMatrix<f64>,
    /// The candidate's standard normal draws, one per sample.
    z: Vec<f64>,
    /// Per sample, the best improvement among the running trials' draws.
    running_best: Vec<f64>,
}

impl<'a> QLogEi<'a> {
    /// `None` when the running trials' posterior covariance cannot be factored (then plain
    /// log EI is used).
    pub fn new(gp: &'a Regressor, best: f64, xr: Vec<f64>, seed: u32) -> Option<QLogEi<'a>> {
        let d = gp.d();
        let r = xr.len() / d;
        let n = gp.n();
        let mut k_xr = DMatrix::zeros(n, r);
        let mut mu = DVector::zeros(r);
        let mut kj = DVector::zeros(n);
        for a in 0..r {
            gp.kernel_row(&xr[a * d..(a + 1) * d], &mut kj);
            k_xr.set_column(a, &kj);
        }
        let vr = gp.c_inv() * &k_xr;
        for a in 0..r {
            mu[a] = gp.posterior(&xr[a * d..(a + 1) * d]).0;
        }
        let mut srr = DMatrix::from_fn(r, r, |a, b| {
            gp.kernel(&xr[a * d..(a + 1) * d], &xr[b * d..(b + 1) * d]) - k_xr.column(a).dot(&vr.column(b))
        });
        for a in 0..r {
            srr[(a, a)] = srr[(a, a)].max(0.0) + STABILIZING_NOISE;
        }
        let chol = srr.cholesky()?;
        let lr = chol.l();
        // Standard normals from a scrambled Sobol set, one dimension per running trial plus
        // the candidate's (the last).
        let normal = |i: usize, dim: usize| -> f64 {
            let u = sobol_burley::sample(i as u32, dim as u32, seed) as f64 + 0.5f64.powi(25);
            -std::f64::consts::SQRT_2 * erfc_inv(2.0 * u)
        };
        let zr = DMatrix::from_fn(QMC_SAMPLES, r, &normal);
        let z: Vec<f64> = (0..QMC_SAMPLES).map(|s| normal(s, r)).collect();
        let mut fantasies = &zr * lr.transpose();
        for mut row in fantasies.row_iter_mut() {
            row += mu.transpose();
        }
        let centred = DMatrix::from_fn(r, QMC_SAMPLES, |a, s| fantasies[(s, a)] - mu[a]);
        let b = chol.solve(&centred);
        let running_best = (0..QMC_SAMPLES)
            .map(|s| fantasies.row(s).iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v)) - best)
            .collect();
        Some(QLogEi { gp, best, xr, lr, b, vr, z, running_best })
    }

    /// The value at `x`, and its gradient into `grad` when asked.
    fn value(&self, x: &[f64], grad: Option<&mut [f64]>) -> f64 {
        let gp = self.gp;
        let d = gp.d();
        let r = self.xr.len() / d;
        let want_grad = grad.is_some();
        let (mut dm, mut dv) = (vec![0.0; d], vec![0.0; d]);
        let (mean, var, kx) = if want_grad {
            gp.posterior_with_grad(x, &mut dm, &mut dv)
        } else {
            let mut kx = DVector::zeros(gp.n());
            gp.kernel_row(x, &mut kx);
            let (m, v) = gp.posterior_of_row(&kx);
            (m, v, kx)
        };
        // Posterior cross-covariance with the running trials: k(x, X_r) - k(x, X) V_r.
        let mut c = DVector::zeros(r);
        let mut dc = DMatrix::zeros(r, d);
        for a in 0..r {
            let xa = &self.xr[a * d..(a + 1) * d];
            let mut g = vec![0.0; d];
            let k = if want_grad { gp.kernel_with_grad(x, xa, 1.0, &mut g) } else { gp.kernel(x, xa) };
            c[a] = k - kx.dot(&self.vr.column(a));
            if want_grad {
                // d/dx of k(x, X) V_r[:, a] = sum_j V_r[j, a] dk(x, X_j).
                for j in 0..gp.n() {
                    gp.kernel_with_grad(x, gp.point(j), -self.vr[(j, a)], &mut g);
                }
                dc.set_row(a, &nalgebra::RowDVector::from_row_slice(&g));
            }
        }
        let q = self.lr.solve_lower_triangular(&c).unwrap_or_else(|| DVector::zeros(r));
        let cond_var_raw = var + STABILIZING_NOISE - q.norm_squared();
        let cond_var = cond_var_raw.max(0.0);
        let sd = cond_var.sqrt();
        let shift = self.b.transpose() * &c; // per sample: c . B[:, s]
                                             // log(mean_s max(eps, max(running_best_s, y_s - best))).
        let mut total = 0.0;
        let mut active = vec![];
        for s in 0..QMC_SAMPLES {
            let y = mean + shift[s] + sd * self.z[s] - self.best;
            let u = self.running_best[s].max(y).max(MIN_IMPROVEMENT);
            if y >= self.running_best[s] && y > MIN_IMPROVEMENT {
                active.push(s);
            }
            total += u;
        }
        let value = (total / QMC_SAMPLES as f64).ln();
        if let Some(grad) = grad {
            // S_rr^-1 c, for d cond_var = d var - 2 (S_rr^-1 c) . dc.
            let sinv_c = self.lr.transpose().solve_upper_triangular(&q).unwrap_or_else(|| DVector::zeros(r));
            for i in 0..d {
                let dci = dc.column(i);
                let dcond_var = dv[i] - 2.0 * sinv_c.dot(&dci);
                let dsd = if cond_var_raw > 0.0 && sd > 0.0 { dcond_var / (2.0 * sd) } else { 0.0 };
                let db = self.b.transpose() * dci;
                let sum: f64 = active.iter().map(|&s| dm[i] + db[s] + self.z[s] * dsd).sum();
                grad[i] = sum / total;
            }
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GP fitted to 10 points of a smooth function of 3 coordinates (the last categorical).
    fn fitted() -> Regressor {
        let mut x = vec![];
        let mut y = vec![];
        for k in 0..10 {
            let (a, b, c) = (((k * 7) % 10) as f64 / 9.0, ((k * 3 + 1) % 10) as f64 / 9.0, (k % 2) as f64);
            x.extend([a, b, c]);
            y.push(-(a - 0.4).powi(2) - (b - 0.6).powi(2) + 0.1 * c);
        }
        let mean = y.iter().sum::<f64>() / 10.0;
        let sd = (y.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 10.0).sqrt();
        let y: Vec<f64> = y.iter().map(|v| (v - mean) / sd).collect();
        Regressor::fit(x, 3, &y, &[false, false, true], None, false).unwrap()
    }

    /// Checks `value_grad` against central differences on the numeric coordinates.
    fn check_gradient(acq: &Acquisition, points: &[[f64; 3]]) {
        for x in points {
            let mut g = [0.0; 3];
            let v = acq.value_grad(x, &mut g);
            assert!((v - acq.value(x)).abs() < 1e-12, "value_grad and value disagree at {x:?}");
            assert_eq!(g[2], 0.0, "no gradient on a categorical coordinate");
            for i in 0..2 {
                let h = 1e-6;
                let (mut up, mut down) = (*x, *x);
                up[i] += h;
                down[i] -= h;
                let fd = (acq.value(&up) - acq.value(&down)) / (2.0 * h);
                assert!((fd - g[i]).abs() < 1e-4 * (1.0 + fd.abs()), "at {x:?} [{i}]: {fd} vs {}", g[i]);
            }
        }
    }

    #[test]
    fn log_ei_and_q_log_ei_gradients_match_finite_differences() {
        let gp = fitted();
        let best = 1.5;
        let points = [[0.2, 0.3, 0.0], [0.45, 0.55, 1.0], [0.9, 0.1, 0.0], [0.05, 0.95, 1.0]];
        check_gradient(&Acquisition::LogEi { gp: &gp, best }, &points);
        let running = vec![0.4, 0.6, 1.0, 0.7, 0.2, 0.0];
        let q = QLogEi::new(&gp, best, running, 11).expect("two distinct running points factor");
        check_gradient(&Acquisition::QLogEi(q), &points);
    }

    #[test]
    fn q_log_ei_is_low_where_a_trial_already_runs_and_batches_agree() {
        let gp = fitted();
        let best = 1.5;
        let plain = Acquisition::LogEi { gp: &gp, best };
        let at = [0.4, 0.6, 1.0];
        let q = Acquisition::QLogEi(QLogEi::new(&gp, best, at.to_vec(), 3).unwrap());
        // The improvement of max(f(running), f(x)) is never below the running trial's own, and
        // equals it at the running trial's point (the draws there are its draws): qLogEI is
        // lowest where a trial already runs.
        let floor = q.value(&at);
        for k in 0..50 {
            let x = [(k * 7 % 50) as f64 / 49.0, (k * 13 % 50) as f64 / 49.0, (k % 2) as f64];
            // (The stabilising noise gives the candidate at `at` a spread of 1e-6.)
            assert!(q.value(&x) >= floor - 1e-4, "{x:?}: {} below {floor}", q.value(&x));
        }
        let far = [0.95, 0.05, 0.0];
        // The batch values are the pointwise ones.
        let xs: Vec<f64> = [at, far].concat();
        for acq in [&plain, &q] {
            let b = acq.values(&xs);
            assert!((b[0] - acq.value(&at)).abs() < 1e-10 && (b[1] - acq.value(&far)).abs() < 1e-10);
        }
    }

    #[test]
    fn log_ei_is_smooth_across_the_branches_and_matches_closed_forms() {
        // ei(0) = phi(0).
        assert!((standard_log_ei(0.0).0 - (INV_SQRT_2PI).ln()).abs() < 1e-14);
        // Large z: ei(z) -> z.
        assert!((standard_log_ei(30.0).0 - 30f64.ln()).abs() < 1e-12);
        // The two forms agree at the switch.
        let (a, ga, pa) = standard_log_ei(-25.0);
        let (b, gb, pb) = standard_log_ei(-25.0 - 1e-9);
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        assert!((ga - gb).abs() / ga < 1e-6 && (pa - pb).abs() / pa < 1e-6);
        // Derivative factor Phi/ei is d log ei / dz.
        for z in [-40.0, -26.0, -10.0, -1.0, 0.5, 4.0] {
            let h = 1e-6;
            let fd = (standard_log_ei(z + h).0 - standard_log_ei(z - h).0) / (2.0 * h);
            let g = standard_log_ei(z).1;
            assert!((fd - g).abs() < 1e-5 * (1.0 + g.abs()), "z {z}: {fd} vs {g}");
        }
        assert!(standard_log_ei(-1e3).0.is_finite());
    }
}
