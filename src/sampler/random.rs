//! Random search (Optuna's `RandomSampler`): every parameter uniform over its distribution,
//! log ranges uniform in log space, stepped floats and ints uniform over their grid (via
//! Optuna's `_SearchSpaceTransform`: a uniform draw on the range widened by half a step, then
//! rounded), categoricals a uniform index.

use rand::Rng;

use super::{trial_rng, Sampler, StudyView};
use crate::distribution::Distribution;
use crate::frozen::FrozenTrial;

/// Samples every parameter independently and uniformly.
#[derive(Debug, Clone)]
pub struct RandomSampler {
    seed: u64,
}

impl RandomSampler {
    /// A random sampler whose draws depend only on `seed`, the trial number and the parameter
    /// name, so parallel workers reproduce a sequential run.
    pub fn new(seed: u64) -> Self {
        RandomSampler { seed }
    }
}

impl Sampler for RandomSampler {
    fn sample_independent(&self, _study: &StudyView, trial: &FrozenTrial, name: &str, dist: &Distribution) -> f64 {
        let mut rng = trial_rng(self.seed, trial.number, &format!("random:{name}"));
        sample_uniform(dist, &mut rng)
    }
}

/// One uniform draw from `dist`, in the internal representation (Optuna's
/// `_SearchSpaceTransform` bounds, then its `untransform`).
pub(crate) fn sample_uniform<R: Rng + ?Sized>(dist: &Distribution, rng: &mut R) -> f64 {
    match *dist {
        Distribution::Float { low, high, log, step } => {
            if low == high {
                return low;
            }
            match step {
                Some(s) => {
                    let x = uniform(rng, low - 0.5 * s, high + 0.5 * s);
                    (((x - low) / s).round_ties_even() * s + low).clamp(low, high)
                }
                None if log => uniform(rng, low.ln(), high.ln()).exp().clamp(low, next_below(high)),
                // numpy's uniform is half-open; Optuna still clips to just below `high`.
                None => uniform(rng, low, high).min(next_below(high)),
            }
        }
        Distribution::Int { low, high, log, step } => {
            let (lo, hi, s) = (low as f64, high as f64, step as f64);
            if log {
                // Optuna's log-int rule: uniform in log space over [low - 1/2, high + 1/2], so
                // every integer keeps the mass of its rounding interval.
                let x = uniform(rng, (lo - 0.5 * s).ln(), (hi + 0.5 * s).ln()).exp();
                x.round_ties_even().clamp(lo, hi)
            } else {
                let x = uniform(rng, lo - 0.5 * s, hi + 0.5 * s);
                (((x - lo) / s + 0.5).floor() * s + lo).clamp(lo, hi)
            }
        }
        Distribution::Categorical { ref choices } => rng.random_range(0..choices.len()) as f64,
    }
}

/// A uniform draw from `[low, high)`.
#[inline]
fn uniform<R: Rng + ?Sized>(rng: &mut R, low: f64, high: f64) -> f64 {
    low + (high - low) * rng.random::<f64>()
}

/// The largest float below `x` (numpy's `nextafter(x, x - 1)`), for finite `x`.
fn next_below(x: f64) -> f64 {
    if x == 0.0 {
        return -f64::from_bits(1);
    }
    let bits = x.to_bits();
    f64::from_bits(if x > 0.0 { bits - 1 } else { bits + 1 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frozen::{Direction, TrialState};
    use serde_json::json;

    fn draw(s: &RandomSampler, number: i64, name: &str, d: &Distribution) -> f64 {
        let t = FrozenTrial::new(number, number, TrialState::Running);
        let view = StudyView { direction: Direction::Minimize, trials: &[] };
        s.sample_independent(&view, &t, name, d)
    }

    #[test]
    fn draws_lie_in_their_distribution_and_cover_it() {
        let s = RandomSampler::new(7);
        let dists = [
            Distribution::float(-2.0, 3.0, false, None).unwrap(),
            Distribution::float(1e-5, 1e-1, true, None).unwrap(),
            Distribution::float(0.0, 1.0, false, Some(0.25)).unwrap(),
            Distribution::int(-3, 3, false, 1).unwrap(),
            Distribution::int(1, 1000, true, 1).unwrap(),
            Distribution::int(0, 10, false, 5).unwrap(),
            Distribution::categorical(vec![json!("a"), json!(1), json!(null)]).unwrap(),
        ];
        for (i, d) in dists.iter().enumerate() {
            let xs: Vec<f64> = (0..2000).map(|n| draw(&s, n, &format!("p{i}"), d)).collect();
            assert!(xs.iter().all(|&x| d.contains(x)), "{d:?}");
            match d {
                Distribution::Int { low, high, log: false, step } => {
                    for v in (*low..=*high).step_by(*step as usize) {
                        assert!(xs.contains(&(v as f64)), "{v} never drawn from {d:?}");
                    }
                }
                Distribution::Categorical { choices } => {
                    for c in 0..choices.len() {
                        let n = xs.iter().filter(|&&x| x == c as f64).count();
                        assert!((550..=780).contains(&n), "choice {c} drawn {n} times");
                    }
                }
                _ => {}
            }
        }
    }

    #[test]
    fn log_float_is_uniform_in_log_space() {
        let s = RandomSampler::new(1);
        let d = Distribution::float(1e-4, 1.0, true, None).unwrap();
        let below = (0..4000).filter(|&n| draw(&s, n, "lr", &d) < 1e-2).count();
        // Half the log range lies below 1e-2.
        assert!((1800..=2200).contains(&below), "{below}");
    }

    #[test]
    fn log_int_gives_small_values_more_mass() {
        let s = RandomSampler::new(2);
        let d = Distribution::int(1, 100, true, 1).unwrap();
        let ones = (0..4000).filter(|&n| draw(&s, n, "k", &d) == 1.0).count() as f64 / 4000.0;
        // P(1) = (ln 1.5 - ln 0.5) / (ln 100.5 - ln 0.5).
        let want = (1.5f64 / 0.5).ln() / (100.5f64 / 0.5).ln();
        assert!((ones - want).abs() < 0.03, "{ones} vs {want}");
    }

    #[test]
    fn same_seed_same_draws_other_seed_other_draws() {
        let d = Distribution::float(0.0, 1.0, false, None).unwrap();
        let a: Vec<f64> = (0..20).map(|n| draw(&RandomSampler::new(3), n, "x", &d)).collect();
        let b: Vec<f64> = (0..20).map(|n| draw(&RandomSampler::new(3), n, "x", &d)).collect();
        let c: Vec<f64> = (0..20).map(|n| draw(&RandomSampler::new(4), n, "x", &d)).collect();
        let y: Vec<f64> = (0..20).map(|n| draw(&RandomSampler::new(3), n, "y", &d)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, y);
    }

    #[test]
    fn next_below_steps_one_ulp() {
        assert!(next_below(1.0) < 1.0 && next_below(1.0) > 0.9999999999999998);
        assert!(next_below(-1.0) < -1.0);
        assert!(next_below(0.0) < 0.0);
    }
}
