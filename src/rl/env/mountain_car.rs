//! MountainCar (Moore 1990; Sutton & Barto 2018) as Gymnasium 1.x's
//! `gymnasium/envs/classic_control/mountain_car.py`.

use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::render::{Canvas, Color};
use super::{reseed, unseeded_rng, ActionSpace, Env, Frame, Obs, ObsSpace, Step};

const MIN_POSITION: f64 = -1.2;
const MAX_POSITION: f64 = 0.6;
const MAX_SPEED: f64 = 0.07;
const GOAL_POSITION: f64 = 0.5;
const FORCE: f64 = 0.001;
const GRAVITY: f64 = 0.0025;

/// Options of `MountainCar-v0` (Gymnasium's `MountainCarEnv` keyword arguments).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountainCarConfig {
    /// The episode ends at the flag only when the velocity is at least this.
    #[serde(default)]
    pub goal_velocity: f64,
}

/// The car in the valley; wrap it in [`super::TimeLimit`] for the registered 200-step limit.
#[derive(Clone, Debug)]
pub struct MountainCar {
    config: MountainCarConfig,
    state: [f64; 2],
    obs: [f32; 2],
    rng: StdRng,
    canvas: Option<Canvas>,
}

impl MountainCar {
    /// A car at the bottom; call `reset` before stepping.
    pub fn new(config: MountainCarConfig) -> Self {
        MountainCar { config, state: [-0.5, 0.0], obs: [0.0; 2], rng: unseeded_rng(), canvas: None }
    }

    /// The state `[position, velocity]`.
    pub fn state(&self) -> [f64; 2] {
        self.state
    }

    /// Sets the state as after a reset (parity tests start from Gymnasium's initial state).
    pub fn set_state(&mut self, state: [f64; 2]) -> &[f32] {
        self.state = state;
        self.observe()
    }

    fn observe(&mut self) -> &[f32] {
        self.obs = [self.state[0] as f32, self.state[1] as f32];
        &self.obs
    }
}

impl Env for MountainCar {
    fn observation_space(&self) -> ObsSpace {
        ObsSpace::Box {
            low: vec![MIN_POSITION as f32, -MAX_SPEED as f32],
            high: vec![MAX_POSITION as f32, MAX_SPEED as f32],
        }
    }

    fn action_space(&self) -> ActionSpace {
        ActionSpace { n: 3 }
    }

    fn reset(&mut self, seed: Option<u64>) -> Obs<'_> {
        reseed(&mut self.rng, seed);
        self.state = [self.rng.random_range(-0.6..-0.4), 0.0];
        Obs::F32(self.observe())
    }

    fn step(&mut self, action: usize) -> Step<'_> {
        assert!(action < 3, "MountainCar action {action} out of range 0..3");
        let [mut position, mut velocity] = self.state;
        velocity += (action as f64 - 1.0) * FORCE + (3.0 * position).cos() * (-GRAVITY);
        velocity = velocity.clamp(-MAX_SPEED, MAX_SPEED);
        position += velocity;
        position = position.clamp(MIN_POSITION, MAX_POSITION);
        if position == MIN_POSITION && velocity < 0.0 {
            velocity = 0.0;
        }
        let terminated = position >= GOAL_POSITION && velocity >= self.config.goal_velocity;
        self.state = [position, velocity];
        Step { obs: Obs::F32(self.observe()), reward: -1.0, terminated, truncated: false }
    }

    fn render(&mut self) -> Frame<'_> {
        // Gymnasium's 600x400 picture: the hill curve, the car as a box, the flag at the goal.
        const WIDTH: usize = 600;
        const HEIGHT: usize = 400;
        let canvas = self.canvas.get_or_insert_with(|| Canvas::new(WIDTH, HEIGHT));
        canvas.fill(Color::WHITE);
        let scale = WIDTH as f64 / (MAX_POSITION - MIN_POSITION);
        let height = |x: f64| (3.0 * x).sin() * 0.45 + 0.55;
        for px in 0..WIDTH {
            let x = px as f64 / scale + MIN_POSITION;
            let y = height(x) * scale;
            canvas.fill_circle_y_up(px as f64, y, 1.5, Color::rgb(0, 0, 0));
        }
        let pos = self.state[0];
        let (cx, cy) = ((pos - MIN_POSITION) * scale, height(pos) * scale + 10.0);
        let (sin, cos) = (3.0 * pos).cos().atan().sin_cos();
        let car = [(-20.0, 0.0), (-20.0, 20.0), (20.0, 20.0), (20.0, 0.0)]
            .map(|(px, py): (f64, f64)| (px * cos - py * sin + cx, px * sin + py * cos + cy));
        canvas.fill_polygon_y_up(&car, Color::rgb(0, 0, 0));
        let flag_x = (GOAL_POSITION - MIN_POSITION) * scale;
        let flag_y = height(GOAL_POSITION) * scale;
        canvas.fill_polygon_y_up(
            &[(flag_x, flag_y), (flag_x, flag_y + 50.0), (flag_x + 2.0, flag_y + 50.0), (flag_x + 2.0, flag_y)],
            Color::rgb(0, 0, 0),
        );
        canvas.fill_polygon_y_up(
            &[(flag_x, flag_y + 50.0), (flag_x, flag_y + 40.0), (flag_x + 25.0, flag_y + 45.0)],
            Color::rgb(204, 204, 0),
        );
        canvas.frame()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_left_wall_stops_the_car() {
        let mut env = MountainCar::new(MountainCarConfig::default());
        env.set_state([-1.19, -0.05]);
        let step = env.step(0);
        assert_eq!(step.obs, Obs::F32(&[-1.2, 0.0]));
        assert_eq!((step.reward, step.terminated), (-1.0, false));
    }

    #[test]
    fn reaching_the_flag_terminates() {
        let mut env = MountainCar::new(MountainCarConfig::default());
        env.set_state([0.49, 0.05]);
        assert!(env.step(2).terminated);
    }
}
