//! The GP's coordinates (Optuna's `optuna/_gp/search_space.py`): each numeric parameter is
//! scaled to `[0, 1]` over its range widened by half a step on each side (log ranges in log
//! space), so that every value of an int or stepped range owns an interval of the same width;
//! a categorical parameter stays its choice index, and the kernel compares indices by equality.

use crate::distribution::Distribution;

/// How a coordinate is searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A float without a step: local search by L-BFGS.
    Continuous,
    /// An int or a stepped float: a grid of values.
    Discrete,
    /// A choice index; distances are 0 (same) or 1 (different).
    Categorical,
}

/// One coordinate of the GP's space.
#[derive(Debug, Clone)]
pub(super) struct Dim {
    pub kind: Kind,
    low: f64,
    high: f64,
    step: f64,
    log: bool,
    is_int: bool,
    n_choices: usize,
}

impl Dim {
    pub fn new(dist: &Distribution) -> Dim {
        match *dist {
            Distribution::Float { low, high, log, step } => Dim {
                kind: if step.is_some() { Kind::Discrete } else { Kind::Continuous },
                low,
                high,
                step: step.unwrap_or(0.0),
                log,
                is_int: false,
                n_choices: 0,
            },
            Distribution::Int { low, high, log, step } => Dim {
                kind: Kind::Discrete,
                low: low as f64,
                high: high as f64,
                step: step as f64,
                log,
                is_int: true,
                n_choices: 0,
            },
            Distribution::Categorical { ref choices } => Dim {
                kind: Kind::Categorical,
                low: 0.0,
                high: choices.len() as f64,
                step: 1.0,
                log: false,
                is_int: false,
                n_choices: choices.len(),
            },
        }
    }

    /// The widened bounds, in log space for log ranges.
    fn bounds(&self) -> (f64, f64) {
        let (lo, hi) = (self.low - 0.5 * self.step, self.high + 0.5 * self.step);
        if self.log {
            (lo.ln(), hi.ln())
        } else {
            (lo, hi)
        }
    }

    /// A value in the internal representation (categorical: index) to the GP's coordinate.
    pub fn normalize(&self, v: f64) -> f64 {
        if self.kind == Kind::Categorical {
            return v;
        }
        let (lo, hi) = self.bounds();
        if hi == lo {
            return 0.5;
        }
        let v = if self.log { v.ln() } else { v };
        (v - lo) / (hi - lo)
    }

    /// A coordinate back to a value on the (widened) range.
    fn unnormalize(&self, u: f64) -> f64 {
        if self.kind == Kind::Categorical {
            return u;
        }
        let (lo, hi) = self.bounds();
        let v = u * (hi - lo) + lo;
        if self.log {
            v.exp()
        } else {
            v
        }
    }

    /// Snaps a coordinate of a discrete parameter to its nearest grid value.
    pub fn round(&self, u: f64) -> f64 {
        match self.kind {
            Kind::Continuous => u,
            Kind::Categorical => u.floor().clamp(0.0, (self.n_choices - 1) as f64),
            Kind::Discrete => {
                let v = self.unnormalize(u);
                let v = (((v - self.low + 0.5 * self.step) / self.step).floor() * self.step + self.low)
                    .clamp(self.low, self.high);
                self.normalize(v)
            }
        }
    }

    /// The coordinates of every value of a discrete or categorical parameter, ascending.
    pub fn choices(&self) -> Vec<f64> {
        match self.kind {
            Kind::Continuous => vec![],
            Kind::Categorical => (0..self.n_choices).map(|i| i as f64).collect(),
            Kind::Discrete => {
                let n = ((self.high - self.low) / self.step + 0.5).floor() as usize + 1;
                (0..n).map(|k| self.normalize(self.low + k as f64 * self.step)).collect()
            }
        }
    }

    /// A coordinate to the parameter's internal value: clipped to the range, ints rounded
    /// half to even, stepped floats put exactly on their grid, categoricals an index.
    pub fn to_internal(&self, u: f64) -> f64 {
        match self.kind {
            Kind::Categorical => u.floor().clamp(0.0, (self.n_choices - 1) as f64),
            _ => {
                let v = self.unnormalize(u).clamp(self.low, self.high);
                if self.is_int {
                    v.round_ties_even().clamp(self.low, self.high)
                } else if self.step > 0.0 {
                    (((v - self.low) / self.step).round() * self.step + self.low).clamp(self.low, self.high)
                } else {
                    v
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_own_equal_widths_and_round_back() {
        let d = Dim::new(&Distribution::int(0, 4, false, 1).unwrap());
        // [-0.5, 4.5]: value k sits at (k + 0.5) / 5.
        let c = d.choices();
        assert_eq!(c.len(), 5);
        for (k, u) in c.iter().enumerate() {
            assert!((u - (k as f64 + 0.5) / 5.0).abs() < 1e-12);
            assert_eq!(d.to_internal(*u), k as f64);
        }
        assert!((d.round(0.39) - 0.3).abs() < 1e-12);
        assert!((d.round(0.41) - 0.5).abs() < 1e-12);
        assert_eq!(d.to_internal(0.0), 0.0);
        assert_eq!(d.to_internal(1.0), 4.0);
    }

    #[test]
    fn log_and_stepped_ranges() {
        let d = Dim::new(&Distribution::float(1e-4, 1e-1, true, None).unwrap());
        assert!((d.normalize(1e-4)).abs() < 1e-12 && (d.normalize(1e-1) - 1.0).abs() < 1e-12);
        assert!((d.to_internal(0.5) - (1e-4f64.ln() * 0.5 + 1e-1f64.ln() * 0.5).exp()).abs() < 1e-15);
        let s = Dim::new(&Distribution::float(0.0, 1.0, false, Some(0.25)).unwrap());
        assert_eq!(s.choices().len(), 5);
        for u in [0.0, 0.13, 0.5, 0.77, 1.0] {
            let v = s.to_internal(s.round(u));
            assert_eq!((v / 0.25).fract(), 0.0, "{u} -> {v}");
        }
        let l = Dim::new(&Distribution::int(1, 1024, true, 1).unwrap());
        assert_eq!(l.to_internal(l.normalize(37.0)), 37.0);
        assert_eq!(l.choices().len(), 1024);
    }

    #[test]
    fn categoricals_stay_indices() {
        let d = Dim::new(&Distribution::categorical(vec!["a".into(), "b".into(), "c".into()]).unwrap());
        assert_eq!(d.normalize(2.0), 2.0);
        assert_eq!(d.choices(), vec![0.0, 1.0, 2.0]);
        assert_eq!(d.round(2.7), 2.0);
        assert_eq!(d.to_internal(3.0), 2.0);
    }
}
