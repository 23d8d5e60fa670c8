//! CartPole (Barto, Sutton & Anderson 1983) exactly as Gymnasium 1.x's
//! `gymnasium/envs/classic_control/cartpole.py`: explicit Euler, state in f64, observed as f32.

use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::render::{Canvas, Color};
use super::{reseed, unseeded_rng, ActionSpace, Env, Frame, Obs, ObsSpace, Step};

const GRAVITY: f64 = 9.8;
const MASS_CART: f64 = 1.0;
const MASS_POLE: f64 = 0.1;
const TOTAL_MASS: f64 = MASS_POLE + MASS_CART;
/// Half the pole's length, as Gymnasium's `length`.
const LENGTH: f64 = 0.5;
const POLEMASS_LENGTH: f64 = MASS_POLE * LENGTH;
const FORCE_MAG: f64 = 10.0;
const TAU: f64 = 0.02;
const X_THRESHOLD: f64 = 2.4;

/// 12 degrees, written as Gymnasium computes it so the comparison rounds the same way.
fn theta_threshold() -> f64 {
    12.0 * 2.0 * std::f64::consts::PI / 360.0
}

/// Options of `CartPole-v0` / `CartPole-v1` (Gymnasium's `CartPoleEnv` keyword arguments).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CartPoleConfig {
    /// Sutton & Barto's reward: 0 per step and -1 on failure, instead of +1 per step.
    #[serde(default)]
    pub sutton_barto_reward: bool,
}

/// The cart-pole system; wrap it in [`super::TimeLimit`] for the registered episode limits
/// (200 steps for v0, 500 for v1).
#[derive(Clone, Debug)]
pub struct CartPole {
    config: CartPoleConfig,
    state: [f64; 4],
    obs: [f32; 4],
    steps_beyond_terminated: Option<u32>,
    rng: StdRng,
    canvas: Option<Canvas>,
}

impl CartPole {
    /// A cart-pole at rest; call `reset` before stepping.
    pub fn new(config: CartPoleConfig) -> Self {
        CartPole {
            config,
            state: [0.0; 4],
            obs: [0.0; 4],
            steps_beyond_terminated: None,
            rng: unseeded_rng(),
            canvas: None,
        }
    }

    /// The state `[x, x_dot, theta, theta_dot]` in f64, as Gymnasium keeps it.
    pub fn state(&self) -> [f64; 4] {
        self.state
    }

    /// Sets the state as after a reset (parity tests start from Gymnasium's initial state).
    pub fn set_state(&mut self, state: [f64; 4]) -> &[f32] {
        self.state = state;
        self.steps_beyond_terminated = None;
        self.observe()
    }

    fn observe(&mut self) -> &[f32] {
        for (o, s) in self.obs.iter_mut().zip(self.state) {
            *o = s as f32;
        }
        &self.obs
    }
}

impl Env for CartPole {
    fn observation_space(&self) -> ObsSpace {
        // Gymnasium's bounds: twice the termination thresholds, infinite velocities.
        let high = [(X_THRESHOLD * 2.0) as f32, f32::INFINITY, (theta_threshold() * 2.0) as f32, f32::INFINITY];
        ObsSpace::Box { low: high.iter().map(|h| -h).collect(), high: high.to_vec() }
    }

    fn action_space(&self) -> ActionSpace {
        ActionSpace { n: 2 }
    }

    fn reset(&mut self, seed: Option<u64>) -> Obs<'_> {
        reseed(&mut self.rng, seed);
        for s in &mut self.state {
            *s = self.rng.random_range(-0.05..0.05);
        }
        self.steps_beyond_terminated = None;
        Obs::F32(self.observe())
    }

    fn step(&mut self, action: usize) -> Step<'_> {
        assert!(action < 2, "CartPole action {action} out of range 0..2");
        let [x, x_dot, theta, theta_dot] = self.state;
        let force = if action == 1 { FORCE_MAG } else { -FORCE_MAG };
        let costheta = theta.cos();
        let sintheta = theta.sin();
        // Same expression order as Gymnasium so every intermediate rounds identically.
        let temp = (force + POLEMASS_LENGTH * (theta_dot * theta_dot) * sintheta) / TOTAL_MASS;
        let thetaacc = (GRAVITY * sintheta - costheta * temp)
            / (LENGTH * (4.0 / 3.0 - MASS_POLE * (costheta * costheta) / TOTAL_MASS));
        let xacc = temp - POLEMASS_LENGTH * thetaacc * costheta / TOTAL_MASS;
        self.state = [x + TAU * x_dot, x_dot + TAU * xacc, theta + TAU * theta_dot, theta_dot + TAU * thetaacc];

        let [x, _, theta, _] = self.state;
        let limit = theta_threshold();
        // Gymnasium's four comparisons, kept literal rather than as range checks.
        #[allow(clippy::manual_range_contains)]
        let terminated = x < -X_THRESHOLD || x > X_THRESHOLD || theta < -limit || theta > limit;
        let sutton_barto = self.config.sutton_barto_reward;
        let reward = if !terminated {
            if sutton_barto {
                0.0
            } else {
                1.0
            }
        } else if self.steps_beyond_terminated.is_none() {
            self.steps_beyond_terminated = Some(0);
            if sutton_barto {
                -1.0
            } else {
                1.0
            }
        } else {
            // Stepping past termination is undefined behaviour in Gymnasium; it pays 0 (or -1).
            self.steps_beyond_terminated = self.steps_beyond_terminated.map(|n| n + 1);
            if sutton_barto {
                -1.0
            } else {
                0.0
            }
        };
        Step { obs: Obs::F32(self.observe()), reward, terminated, truncated: false }
    }

    fn render(&mut self) -> Frame<'_> {
        // Gymnasium's 600x400 picture: black cart, brown pole, blue axle, black track line.
        const WIDTH: usize = 600;
        const HEIGHT: usize = 400;
        let canvas = self.canvas.get_or_insert_with(|| Canvas::new(WIDTH, HEIGHT));
        canvas.fill(Color::WHITE);
        let scale = WIDTH as f64 / (X_THRESHOLD * 2.0);
        let pole_width = 10.0;
        let pole_len = scale * (2.0 * LENGTH);
        let (cart_width, cart_height) = (50.0, 30.0);
        let axle_offset = cart_height / 4.0;
        let cart_x = self.state[0] * scale + WIDTH as f64 / 2.0;
        let cart_y = 100.0;
        // Gymnasium draws with y up, then flips; our canvas flips y when rasterising.
        let (l, r, t, b) = (-cart_width / 2.0, cart_width / 2.0, cart_height / 2.0, -cart_height / 2.0);
        let cart = [(l, b), (l, t), (r, t), (r, b)].map(|(px, py)| (px + cart_x, py + cart_y));
        canvas.fill_polygon_y_up(&cart, Color::rgb(0, 0, 0));
        let (l, r, t, b) = (-pole_width / 2.0, pole_width / 2.0, pole_len - pole_width / 2.0, -pole_width / 2.0);
        let (sin, cos) = (-self.state[2]).sin_cos();
        let pole = [(l, b), (l, t), (r, t), (r, b)]
            .map(|(px, py)| (px * cos - py * sin + cart_x, px * sin + py * cos + cart_y + axle_offset));
        canvas.fill_polygon_y_up(&pole, Color::rgb(202, 152, 101));
        canvas.fill_circle_y_up(
            cart_x.trunc(),
            (cart_y + axle_offset).trunc(),
            pole_width / 2.0,
            Color::rgb(129, 132, 203),
        );
        canvas.hline_y_up(cart_y as usize, Color::rgb(0, 0, 0));
        canvas.frame()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_draws_the_state_in_the_gymnasium_range_and_seeds_reproducibly() {
        let mut a = CartPole::new(CartPoleConfig::default());
        let mut b = CartPole::new(CartPoleConfig::default());
        let first = match a.reset(Some(7)) {
            Obs::F32(o) => o.to_vec(),
            other => panic!("{other:?}"),
        };
        assert!(first.iter().all(|v| v.abs() < 0.05));
        b.reset(Some(7));
        assert_eq!(a.state(), b.state());
    }

    #[test]
    fn sutton_barto_reward_pays_minus_one_on_failure() {
        let mut env = CartPole::new(CartPoleConfig { sutton_barto_reward: true });
        env.set_state([0.0, 0.0, 0.2, 0.0]);
        let step = env.step(1);
        assert_eq!((step.reward, step.terminated), (0.0, false));
        env.set_state([0.0, 0.0, 0.25, 0.0]);
        let step = env.step(1);
        assert_eq!((step.reward, step.terminated), (-1.0, true));
        assert_eq!(env.step(1).reward, -1.0);
    }

    #[test]
    fn stepping_past_termination_pays_nothing() {
        let mut env = CartPole::new(CartPoleConfig::default());
        env.set_state([2.5, 0.0, 0.0, 0.0]);
        assert_eq!(env.step(0).reward, 1.0);
        assert_eq!(env.step(0).reward, 0.0);
    }
}
