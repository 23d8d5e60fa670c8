//! Schedules for exploration, learning rate and the PER exponent `beta`: linear annealing
//! (Mnih et al. 2015: epsilon 1 -> 0.1 over the first million frames; Schaul et al. 2016: beta
//! annealed linearly to 1) and multiplicative decay with a floor, per episode
//! (`eps <- max(eps_min, eps * decay)` after each episode) or per step.
//!
//! All are pure functions of `(step, episode)`, so a resumed run gets the same values.

use serde::{Deserialize, Serialize};

/// `start + (end - start) * min(t / duration, 1)`: from `start` at `t = 0` to `end` at
/// `t = duration`, then constant (CleanRL's `linear_schedule`, for increasing schedules too).
pub fn linear_schedule(start: f64, end: f64, duration: u64, t: u64) -> f64 {
    if t >= duration {
        return end;
    }
    start + (end - start) * (t as f64 / duration as f64)
}

/// `max(floor, start * factor^t)`: what multiplying by `factor` after each of `t` steps or
/// episodes gives, with the floor applied (a decay, `factor < 1`).
pub fn exponential_decay(start: f64, factor: f64, floor: f64, t: u64) -> f64 {
    (start * factor.powf(t as f64)).max(floor)
}

/// What a schedule counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    /// Environment steps.
    #[default]
    Step,
    /// Completed episodes.
    Episode,
}

impl Per {
    fn pick(self, step: u64, episode: u64) -> u64 {
        match self {
            Per::Step => step,
            Per::Episode => episode,
        }
    }
}

/// A scheduled value, e.g. `epsilon: {type: exponential, start: 0.82, factor: 0.9675, floor: 0.013,
/// per: episode}` or `beta: {type: linear, start: 0.4, end: 1.0, duration: 100000}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// Always `value`.
    Constant {
        /// The value.
        value: f64,
    },
    /// [`linear_schedule`] over `duration` steps or episodes.
    Linear {
        /// Value at 0.
        start: f64,
        /// Value from `duration` on.
        end: f64,
        /// Steps or episodes to go from `start` to `end`.
        duration: u64,
        /// Whether `duration` counts steps (default) or episodes.
        #[serde(default)]
        per: Per,
    },
    /// [`exponential_decay`]: multiplied by `factor` per step or episode, never below `floor`.
    Exponential {
        /// Value at 0.
        start: f64,
        /// Multiplier per step or episode (lab 000: 0.9675 per episode; lab 002: 1 - 0.0005 per step).
        factor: f64,
        /// Lower bound.
        floor: f64,
        /// Whether `factor` applies per step (default) or per episode.
        #[serde(default)]
        per: Per,
    },
}

impl Schedule {
    /// The value after `step` environment steps and `episode` completed episodes.
    pub fn value(&self, step: u64, episode: u64) -> f64 {
        match *self {
            Schedule::Constant { value } => value,
            Schedule::Linear { start, end, duration, per } => {
                linear_schedule(start, end, duration, per.pick(step, episode))
            }
            Schedule::Exponential { start, factor, floor, per } => {
                exponential_decay(start, factor, floor, per.pick(step, episode))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn linear_points() {
        // CleanRL Atari: epsilon 1 -> 0.01 over 10% of 10M steps.
        assert_eq!(linear_schedule(1.0, 0.01, 1_000_000, 0), 1.0);
        assert!(close(linear_schedule(1.0, 0.01, 1_000_000, 500_000), 0.505));
        assert_eq!(linear_schedule(1.0, 0.01, 1_000_000, 1_000_000), 0.01);
        assert_eq!(linear_schedule(1.0, 0.01, 1_000_000, 5_000_000), 0.01);
        // Increasing: PER beta 0.4 -> 1.
        assert!(close(linear_schedule(0.4, 1.0, 100, 50), 0.7));
        assert_eq!(linear_schedule(0.4, 1.0, 100, 200), 1.0);
        assert_eq!(linear_schedule(0.4, 1.0, 0, 0), 1.0);
    }

    #[test]
    fn lab_000_per_episode_decays() {
        // Epsilon 0.82 x 0.9675 per episode down to 0.013; the lab's loop applies
        // `eps = max(eps_min, eps * decay)` after each episode, reproduced here step by step.
        let eps = Schedule::Exponential { start: 0.82, factor: 0.9675, floor: 0.013, per: Per::Episode };
        let mut lab = 0.82f64;
        for episode in 0..150 {
            assert!((eps.value(123_456, episode) - lab).abs() < 1e-12, "episode {episode}");
            lab = (lab * 0.9675).max(0.013);
        }
        assert!(close(eps.value(0, 10), 0.82 * 0.9675f64.powi(10)));
        assert_eq!(eps.value(0, 150), 0.013);
        // Learning rate 0.004 x 0.97 per episode, floor 1e-4 (MinimumExponentialLR).
        let lr = Schedule::Exponential { start: 0.004, factor: 0.97, floor: 1e-4, per: Per::Episode };
        assert!(close(lr.value(0, 1), 0.00388));
        assert_eq!(lr.value(0, 1000), 1e-4);
    }

    #[test]
    fn lab_002_per_step_decay() {
        let eps = Schedule::Exponential { start: 1.0, factor: 1.0 - 0.0005, floor: 0.05, per: Per::Step };
        assert_eq!(eps.value(0, 7), 1.0);
        assert!(close(eps.value(1000, 0), 0.9995f64.powi(1000)));
        // 0.9995^t = 0.05 at t = ln 0.05 / ln 0.9995 ~ 5990.
        assert!(eps.value(5980, 0) > 0.05);
        assert_eq!(eps.value(6000, 0), 0.05);
    }

    #[test]
    fn deserializes_from_yaml() {
        let s: Schedule =
            serde_norway::from_str("{type: exponential, start: 0.82, factor: 0.9675, floor: 0.013, per: episode}")
                .unwrap();
        assert_eq!(s, Schedule::Exponential { start: 0.82, factor: 0.9675, floor: 0.013, per: Per::Episode });
        let s: Schedule = serde_norway::from_str("{type: linear, start: 0.4, end: 1.0, duration: 1000}").unwrap();
        assert_eq!(s.value(500, 0), 0.7);
        let s: Schedule = serde_norway::from_str("{type: constant, value: 0.1}").unwrap();
        assert_eq!(s.value(9, 9), 0.1);
        assert!(serde_norway::from_str::<Schedule>("{type: linear, start: 1, end: 0, duration: 5, typo: 1}").is_err());
    }
}
