//! Acrobot (Sutton 1996; Sutton & Barto 2018, "book" dynamics) as Gymnasium 1.x's
//! `gymnasium/envs/classic_control/acrobot.py`: one RK4 step of 0.2 s per action.

use std::f64::consts::PI;

use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::render::{Canvas, Color};
use super::{reseed, unseeded_rng, ActionSpace, Env, Frame, Obs, ObsSpace, Step};

const DT: f64 = 0.2;
const LINK_LENGTH_1: f64 = 1.0;
const LINK_LENGTH_2: f64 = 1.0;
const LINK_MASS_1: f64 = 1.0;
const LINK_MASS_2: f64 = 1.0;
const LINK_COM_POS_1: f64 = 0.5;
const LINK_COM_POS_2: f64 = 0.5;
const LINK_MOI: f64 = 1.0;
const MAX_VEL_1: f64 = 4.0 * PI;
const MAX_VEL_2: f64 = 9.0 * PI;
const AVAIL_TORQUE: [f64; 3] = [-1.0, 0.0, 1.0];

/// Options of `Acrobot-v1` (none beyond Gymnasium's defaults; the struct keeps unknown keys an
/// error).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcrobotConfig {}

/// The two-link pendulum; wrap it in [`super::TimeLimit`] for the registered 500-step limit.
#[derive(Clone, Debug)]
pub struct Acrobot {
    state: [f64; 4],
    obs: [f32; 6],
    rng: StdRng,
    canvas: Option<Canvas>,
}

/// Gymnasium's `wrap`: brings `x` into `[m, M]` by whole turns.
fn wrap(mut x: f64, m: f64, big_m: f64) -> f64 {
    let diff = big_m - m;
    while x > big_m {
        x -= diff;
    }
    while x < m {
        x += diff;
    }
    x
}

/// Gymnasium's `_dsdt` ("book" variant) for state `s` and torque `a`.
fn dsdt(s: &[f64; 5]) -> [f64; 5] {
    let (m1, m2, l1, lc1, lc2, i1, i2) =
        (LINK_MASS_1, LINK_MASS_2, LINK_LENGTH_1, LINK_COM_POS_1, LINK_COM_POS_2, LINK_MOI, LINK_MOI);
    let g = 9.8;
    let a = s[4];
    let (theta1, theta2, dtheta1, dtheta2) = (s[0], s[1], s[2], s[3]);
    // Same operation order as Gymnasium, so results agree to the last bit where libm agrees.
    let d1 = m1 * (lc1 * lc1) + m2 * ((l1 * l1) + (lc2 * lc2) + 2.0 * l1 * lc2 * theta2.cos()) + i1 + i2;
    let d2 = m2 * ((lc2 * lc2) + l1 * lc2 * theta2.cos()) + i2;
    let phi2 = m2 * lc2 * g * (theta1 + theta2 - PI / 2.0).cos();
    let phi1 = -m2 * l1 * lc2 * (dtheta2 * dtheta2) * theta2.sin()
        - 2.0 * m2 * l1 * lc2 * dtheta2 * dtheta1 * theta2.sin()
        + (m1 * lc1 + m2 * l1) * g * (theta1 - PI / 2.0).cos()
        + phi2;
    let ddtheta2 = (a + d2 / d1 * phi1 - m2 * l1 * lc2 * (dtheta1 * dtheta1) * theta2.sin() - phi2)
        / (m2 * (lc2 * lc2) + i2 - (d2 * d2) / d1);
    let ddtheta1 = -(d2 * ddtheta2 + phi1) / d1;
    [dtheta1, dtheta2, ddtheta1, ddtheta2, 0.0]
}

/// Gymnasium's `rk4` over the two sample times `[0, dt]`.
fn rk4(y0: [f64; 5]) -> [f64; 5] {
    let dt = DT - 0.0;
    let dt2 = dt / 2.0;
    let add = |y: &[f64; 5], h: f64, k: &[f64; 5]| std::array::from_fn::<f64, 5, _>(|i| y[i] + h * k[i]);
    let k1 = dsdt(&y0);
    let k2 = dsdt(&add(&y0, dt2, &k1));
    let k3 = dsdt(&add(&y0, dt2, &k2));
    let k4 = dsdt(&add(&y0, dt, &k3));
    std::array::from_fn(|i| y0[i] + dt / 6.0 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i]))
}

impl Acrobot {
    /// A hanging acrobot; call `reset` before stepping.
    pub fn new(_config: AcrobotConfig) -> Self {
        Acrobot { state: [0.0; 4], obs: [0.0; 6], rng: unseeded_rng(), canvas: None }
    }

    /// The state `[theta1, theta2, dtheta1, dtheta2]`.
    pub fn state(&self) -> [f64; 4] {
        self.state
    }

    /// Sets the state as after a reset (parity tests start from Gymnasium's initial state).
    pub fn set_state(&mut self, state: [f64; 4]) -> &[f32] {
        self.state = state;
        self.observe()
    }

    fn observe(&mut self) -> &[f32] {
        let s = self.state;
        self.obs =
            [s[0].cos() as f32, s[0].sin() as f32, s[1].cos() as f32, s[1].sin() as f32, s[2] as f32, s[3] as f32];
        &self.obs
    }
}

impl Env for Acrobot {
    fn observation_space(&self) -> ObsSpace {
        let high = vec![1.0, 1.0, 1.0, 1.0, MAX_VEL_1 as f32, MAX_VEL_2 as f32];
        ObsSpace::Box { low: high.iter().map(|h| -h).collect(), high }
    }

    fn action_space(&self) -> ActionSpace {
        ActionSpace { n: 3 }
    }

    fn reset(&mut self, seed: Option<u64>) -> Obs<'_> {
        reseed(&mut self.rng, seed);
        // Gymnasium draws the initial state in float32.
        for s in &mut self.state {
            *s = self.rng.random_range(-0.1f64..0.1) as f32 as f64;
        }
        Obs::F32(self.observe())
    }

    fn step(&mut self, action: usize) -> Step<'_> {
        let torque = AVAIL_TORQUE[action];
        let [a, b, c, d] = self.state;
        let ns = rk4([a, b, c, d, torque]);
        self.state = [
            wrap(ns[0], -PI, PI),
            wrap(ns[1], -PI, PI),
            ns[2].clamp(-MAX_VEL_1, MAX_VEL_1),
            ns[3].clamp(-MAX_VEL_2, MAX_VEL_2),
        ];
        let s = self.state;
        let terminated = -s[0].cos() - (s[1] + s[0]).cos() > 1.0;
        let reward = if terminated { 0.0 } else { -1.0 };
        Step { obs: Obs::F32(self.observe()), reward, terminated, truncated: false }
    }

    fn render(&mut self) -> Frame<'_> {
        // Gymnasium's 500x500 picture: cyan links, yellow joints, a black target line.
        const DIM: usize = 500;
        let canvas = self.canvas.get_or_insert_with(|| Canvas::new(DIM, DIM));
        canvas.fill(Color::WHITE);
        let bound = LINK_LENGTH_1 + LINK_LENGTH_2 + 0.2;
        let scale = DIM as f64 / (bound * 2.0);
        let offset = DIM as f64 / 2.0;
        let s = self.state;
        canvas.hline_y_up((scale + offset) as usize, Color::rgb(0, 0, 0));
        let p1 = (LINK_LENGTH_1 * s[0].sin() * scale, -LINK_LENGTH_1 * s[0].cos() * scale);
        let joints = [(0.0, 0.0), p1];
        let thetas = [s[0] - PI / 2.0, s[0] + s[1] - PI / 2.0];
        for ((x, y), th) in joints.into_iter().zip(thetas) {
            let (x, y) = (x + offset, y + offset);
            let (l, r, t, b) = (0.0, LINK_LENGTH_1 * scale, 0.1 * scale, -0.1 * scale);
            let (sin, cos) = th.sin_cos();
            let link =
                [(l, b), (l, t), (r, t), (r, b)].map(|(px, py)| (px * cos - py * sin + x, px * sin + py * cos + y));
            canvas.fill_polygon_y_up(&link, Color::rgb(0, 204, 204));
            canvas.fill_circle_y_up(x.trunc(), y.trunc(), 0.1 * scale, Color::rgb(204, 204, 0));
        }
        canvas.frame()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_brings_angles_into_range() {
        assert!((wrap(3.0 * PI / 2.0, -PI, PI) + PI / 2.0).abs() < 1e-12);
        assert!((wrap(-3.0 * PI / 2.0, -PI, PI) - PI / 2.0).abs() < 1e-12);
    }

    #[test]
    fn hanging_still_without_torque_stays_still() {
        let mut env = Acrobot::new(AcrobotConfig::default());
        env.set_state([0.0; 4]);
        let step = env.step(1);
        assert_eq!((step.reward, step.terminated), (-1.0, false));
        assert!(env.state().iter().all(|v| v.abs() < 1e-12));
    }
}
