//! Environments for value-based RL: the [`Env`] trait, its spaces, and [`EnvSpec`], the
//! Gymnasium-style `env: {id: CartPole-v1, ...}` section that builds one.
//!
//! Dynamics follow Gymnasium 1.x (`gymnasium/envs/classic_control/*.py`,
//! `gymnasium/envs/toy_text/frozen_lake.py`) and are checked against it by `tests/gym_parity.rs`;
//! Atari runs on ALE behind the `atari` feature with the DQN preprocessing stack of Mnih et al.
//! (2015) and Machado et al. (2018).
//!
//! Observations are borrowed: [`Obs`] is an enum of a discrete index, an `f32` slice (classic
//! control, one-hot FrozenLake) or a `u8` slice (Atari pixels). An enum rather than an associated
//! type keeps `Box<dyn Env>` possible, so a trainer picks the environment from its config at run
//! time; borrowing keeps `step` allocation-free; and Atari frames stay `u8`, stored oldest to
//! newest, so a replay buffer can keep only the newest frame (the last `height * width` bytes)
//! instead of copying every stacked frame four times.

mod acrobot;
#[cfg(feature = "atari")]
pub mod atari;
mod cartpole;
mod frozen_lake;
mod gif;
mod mountain_car;
mod render;
mod spec;
mod vector;

pub use acrobot::{Acrobot, AcrobotConfig};
pub use cartpole::{CartPole, CartPoleConfig};
pub use frozen_lake::{FrozenLake, FrozenLakeConfig, FrozenLakeObs, Transition};
pub use gif::{save_gif, GifWriter};
pub use mountain_car::{MountainCar, MountainCarConfig};
pub use render::{Canvas, Color, RgbImage};
pub use spec::{EnvOptions, EnvSpec, MAX_NUM_ENVS};
pub use vector::{ObsBuf, VecEnv};

use rand::rngs::StdRng;
use rand::SeedableRng;

/// An observation, borrowed from the environment until its next `reset` or `step`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Obs<'a> {
    /// A discrete state index (FrozenLake for tabular agents).
    Index(usize),
    /// A float vector (classic control, one-hot FrozenLake).
    F32(&'a [f32]),
    /// Pixels in `0..=255`, laid out as [`ObsSpace::Pixels`] says.
    U8(&'a [u8]),
}

/// What `reset` and `step` return, enough to size a network or a Q-table.
#[derive(Clone, Debug, PartialEq)]
pub enum ObsSpace {
    /// `n` states observed as [`Obs::Index`].
    Discrete {
        /// Number of states.
        n: usize,
    },
    /// A float vector observed as [`Obs::F32`], with Gymnasium's `Box` bounds (possibly infinite).
    Box {
        /// Lower bound per component.
        low: Vec<f32>,
        /// Upper bound per component.
        high: Vec<f32>,
    },
    /// `frames` images of `height x width x channels` bytes, oldest first, observed as [`Obs::U8`].
    Pixels {
        /// Number of stacked frames (1 without frame stacking).
        frames: usize,
        /// Rows per frame.
        height: usize,
        /// Columns per frame.
        width: usize,
        /// 1 for grayscale, 3 for RGB (interleaved).
        channels: usize,
    },
}

impl ObsSpace {
    /// The tensor shape a network sees: `[n]` one-hot for discrete spaces, `[dim]` for vectors,
    /// `[frames, height, width]` for grayscale pixels and `[frames, height, width, 3]` for RGB.
    pub fn shape(&self) -> Vec<usize> {
        match self {
            ObsSpace::Discrete { n } => vec![*n],
            ObsSpace::Box { low, .. } => vec![low.len()],
            ObsSpace::Pixels { frames, height, width, channels: 1 } => vec![*frames, *height, *width],
            ObsSpace::Pixels { frames, height, width, channels } => vec![*frames, *height, *width, *channels],
        }
    }

    /// Number of scalars in one observation (`shape().iter().product()`).
    pub fn flat_dim(&self) -> usize {
        self.shape().iter().product()
    }
}

/// The actions: `0..n`, as Gymnasium's `Discrete(n)` (value-based agents need nothing else).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActionSpace {
    /// Number of actions.
    pub n: usize,
}

/// The outcome of one [`Env::step`], as Gymnasium's `(obs, reward, terminated, truncated)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step<'a> {
    /// The next observation.
    pub obs: Obs<'a>,
    /// The reward for this transition.
    pub reward: f64,
    /// The MDP ended (pole fell, hole or goal, game over): do not bootstrap.
    pub terminated: bool,
    /// The episode was cut by a time or frame limit: bootstrap from `obs`.
    pub truncated: bool,
}

impl Step<'_> {
    /// `terminated || truncated`: time to call `reset`.
    pub fn done(&self) -> bool {
        self.terminated || self.truncated
    }
}

/// An RGB frame (`height * width * 3` bytes, row-major), borrowed from the environment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Frame<'a> {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// Interleaved RGB bytes.
    pub rgb: &'a [u8],
}

impl Frame<'_> {
    /// Copies the frame, e.g. to collect an episode for [`save_gif`].
    pub fn to_image(&self) -> RgbImage {
        RgbImage { width: self.width, height: self.height, rgb: self.rgb.to_vec() }
    }
}

/// A Gymnasium-style environment with discrete actions.
///
/// Environments are seeded only through `reset(Some(seed))`; `reset(None)` continues the current
/// random stream (seeded from the OS until the first seeded reset), as in Gymnasium. Classic
/// environments are `Send`; Atari ones are not (ALE), so build environments inside the thread that
/// steps them.
pub trait Env {
    /// The observation space.
    fn observation_space(&self) -> ObsSpace;

    /// The action space.
    fn action_space(&self) -> ActionSpace;

    /// Starts an episode, reseeding the environment's random stream when `seed` is given.
    fn reset(&mut self, seed: Option<u64>) -> Obs<'_>;

    /// Applies `action` (in `0..action_space().n`; panics otherwise, as Gymnasium asserts).
    fn step(&mut self, action: usize) -> Step<'_>;

    /// Draws the current state as an RGB frame.
    fn render(&mut self) -> Frame<'_>;
}

impl<E: Env + ?Sized> Env for Box<E> {
    fn observation_space(&self) -> ObsSpace {
        (**self).observation_space()
    }
    fn action_space(&self) -> ActionSpace {
        (**self).action_space()
    }
    fn reset(&mut self, seed: Option<u64>) -> Obs<'_> {
        (**self).reset(seed)
    }
    fn step(&mut self, action: usize) -> Step<'_> {
        (**self).step(action)
    }
    fn render(&mut self) -> Frame<'_> {
        (**self).render()
    }
}

/// Gymnasium's `TimeLimit`: truncates an episode after `max_episode_steps` steps (the limit
/// registered with the id, e.g. 500 for CartPole-v1).
#[derive(Clone, Debug)]
pub struct TimeLimit<E> {
    env: E,
    max_episode_steps: u32,
    elapsed: u32,
}

impl<E: Env> TimeLimit<E> {
    /// Wraps `env`.
    pub fn new(env: E, max_episode_steps: u32) -> Self {
        TimeLimit { env, max_episode_steps, elapsed: 0 }
    }

    /// The wrapped environment (e.g. to set a state in parity tests).
    pub fn inner(&self) -> &E {
        &self.env
    }

    /// The wrapped environment, mutably.
    pub fn inner_mut(&mut self) -> &mut E {
        &mut self.env
    }

    /// Steps taken in the current episode.
    pub fn elapsed_steps(&self) -> u32 {
        self.elapsed
    }

    /// The step limit.
    pub fn max_episode_steps(&self) -> u32 {
        self.max_episode_steps
    }
}

impl<E: Env> Env for TimeLimit<E> {
    fn observation_space(&self) -> ObsSpace {
        self.env.observation_space()
    }
    fn action_space(&self) -> ActionSpace {
        self.env.action_space()
    }
    fn reset(&mut self, seed: Option<u64>) -> Obs<'_> {
        self.elapsed = 0;
        self.env.reset(seed)
    }
    fn step(&mut self, action: usize) -> Step<'_> {
        self.elapsed += 1;
        let limit_reached = self.elapsed >= self.max_episode_steps;
        let mut step = self.env.step(action);
        step.truncated |= limit_reached;
        step
    }
    fn render(&mut self) -> Frame<'_> {
        self.env.render()
    }
}

/// The random stream of a fresh environment: from the OS, as Gymnasium does before the first
/// seeded reset (runs that must be reproducible pass a seed to `reset`).
fn unseeded_rng() -> StdRng {
    StdRng::from_os_rng()
}

/// Reseeds `rng` when a seed is given (Gymnasium's `super().reset(seed=seed)`).
fn reseed(rng: &mut StdRng, seed: Option<u64>) {
    if let Some(seed) = seed {
        *rng = StdRng::seed_from_u64(seed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_limit_truncates_at_the_registered_step() {
        let mut env = TimeLimit::new(MountainCar::new(MountainCarConfig::default()), 3);
        env.reset(Some(0));
        assert!(!env.step(1).truncated);
        assert!(!env.step(1).truncated);
        assert!(env.step(1).truncated);
        env.reset(None);
        assert!(!env.step(1).truncated);
    }

    #[test]
    fn classic_environments_are_send() {
        fn is_send<T: Send>() {}
        is_send::<TimeLimit<CartPole>>();
        is_send::<TimeLimit<FrozenLake>>();
        is_send::<TimeLimit<Acrobot>>();
        is_send::<TimeLimit<MountainCar>>();
    }

    #[test]
    fn spaces_size_networks() {
        assert_eq!(ObsSpace::Discrete { n: 16 }.shape(), vec![16]);
        let pixels = ObsSpace::Pixels { frames: 4, height: 84, width: 84, channels: 1 };
        assert_eq!(pixels.shape(), vec![4, 84, 84]);
        assert_eq!(pixels.flat_dim(), 4 * 84 * 84);
    }

    /// Writes `frame` as a PNG, to look at a render by eye.
    fn save_png(path: &std::path::Path, frame: Frame<'_>) {
        let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
        let mut encoder = png::Encoder::new(file, frame.width as u32, frame.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.write_header().unwrap().write_image_data(frame.rgb).unwrap();
    }

    #[test]
    fn renders_draw_the_state() {
        let dir = std::env::temp_dir();
        let mut cartpole = CartPole::new(CartPoleConfig::default());
        cartpole.set_state([0.5, 0.0, 0.15, 0.0]);
        let frame = cartpole.render();
        assert_eq!((frame.width, frame.height), (600, 400));
        // The cart is black at its centre (x = 0.5 m -> column 362, 100 px above the bottom
        // edge, minus half the cart), the pole brown above the axle, tilted right.
        let px = |f: &Frame<'_>, x: usize, y: usize| f.rgb[(y * f.width + x) * 3..][..3].to_vec();
        assert_eq!(px(&frame, 362, 400 - 95), vec![0, 0, 0]);
        assert_eq!(px(&frame, 362 + 10, 400 - 150), vec![202, 152, 101]);
        assert_eq!(px(&frame, 10, 10), vec![255, 255, 255]);
        save_png(&dir.join("tune_cartpole.png"), frame);

        let config = FrozenLakeConfig {
            map: Some(["SFFF", "FFFF", "HHFF", "HHFG"].map(String::from).to_vec()),
            ..Default::default()
        };
        let mut lake = FrozenLake::new(config).unwrap();
        lake.set_state(6);
        let frame = lake.render();
        assert_eq!((frame.width, frame.height), (256, 256));
        assert_eq!(px(&frame, 2 * 64 + 32, 64 + 32), vec![200, 40, 40], "agent on state 6");
        assert_eq!(px(&frame, 32, 2 * 64 + 32), vec![24, 54, 105], "hole on state 8");
        save_png(&dir.join("tune_frozen_lake.png"), frame);

        let mut acrobot = Acrobot::new(AcrobotConfig::default());
        acrobot.set_state([0.8, 0.6, 0.0, 0.0]);
        save_png(&dir.join("tune_acrobot.png"), acrobot.render());
        let mut car = MountainCar::new(MountainCarConfig::default());
        car.set_state([-0.5, 0.0]);
        save_png(&dir.join("tune_mountain_car.png"), car.render());
    }
}
