//! [`VecEnv`]: copies of one environment stepped together, with the semantics of Gymnasium's
//! `SyncVectorEnv` under `autoreset_mode=SAME_STEP`: `reset(seed)` seeds copy `i` with
//! `seed + i`, and a copy whose episode ends (terminated or truncated per copy) hands out its
//! final observation with that step and resets at once, so its next action is taken in the
//! first observation of a new episode (`tests/gym_parity.rs` replays a Gymnasium run).
//!
//! Copies are stepped one at a time ([`VecEnv::step`]) so that a learner can take each
//! transition, borrowed and never copied, before the copy moves on.

use super::{Env, Obs, ObsSpace, Step};

/// An observation owned by its holder (environments lend theirs only until the next step).
#[derive(Clone, Debug)]
pub enum ObsBuf {
    /// A discrete state.
    Index(usize),
    /// A float vector.
    F32(Vec<f32>),
    /// Pixels.
    U8(Vec<u8>),
}

impl ObsBuf {
    /// A buffer for observations of `space`.
    pub fn new(space: &ObsSpace) -> Self {
        match space {
            ObsSpace::Discrete { .. } => ObsBuf::Index(0),
            ObsSpace::Box { low, .. } => ObsBuf::F32(vec![0.0; low.len()]),
            ObsSpace::Pixels { .. } => ObsBuf::U8(vec![0; space.flat_dim()]),
        }
    }

    /// Copies `obs` in without allocating.
    pub fn set(&mut self, obs: Obs<'_>) {
        match (self, obs) {
            (ObsBuf::Index(i), Obs::Index(j)) => *i = j,
            (ObsBuf::F32(v), Obs::F32(x)) => v.copy_from_slice(x),
            (ObsBuf::U8(v), Obs::U8(x)) => v.copy_from_slice(x),
            (buf, obs) => panic!("observation {obs:?} does not fit buffer {buf:?}"),
        }
    }

    /// The observation.
    pub fn as_obs(&self) -> Obs<'_> {
        match self {
            ObsBuf::Index(i) => Obs::Index(*i),
            ObsBuf::F32(v) => Obs::F32(v),
            ObsBuf::U8(v) => Obs::U8(v),
        }
    }
}

/// Copies of one environment stepped together, each holding the observation its next action
/// is taken in.
pub struct VecEnv {
    envs: Vec<Box<dyn Env>>,
    obs: Vec<ObsBuf>,
}

impl VecEnv {
    /// Takes the copies (at least one, of one environment) and resets them, copy `i` with
    /// `seed + i`.
    pub fn new(mut envs: Vec<Box<dyn Env>>, seed: u64) -> Self {
        assert!(!envs.is_empty(), "a vector environment needs at least one copy");
        let obs = envs
            .iter_mut()
            .enumerate()
            .map(|(i, env)| {
                let mut buf = ObsBuf::new(&env.observation_space());
                buf.set(env.reset(Some(seed.wrapping_add(i as u64))));
                buf
            })
            .collect();
        VecEnv { envs, obs }
    }

    /// Number of copies.
    pub fn len(&self) -> usize {
        self.envs.len()
    }

    /// Always false: a vector environment has at least one copy.
    pub fn is_empty(&self) -> bool {
        self.envs.is_empty()
    }

    /// The observation copy `i` acts in next.
    pub fn obs(&self, i: usize) -> Obs<'_> {
        self.obs[i].as_obs()
    }

    /// The observation space of every copy.
    pub fn observation_space(&self) -> ObsSpace {
        self.envs[0].observation_space()
    }

    /// Steps copy `i` with `action` and hands `learn` the observation it acted in and the step
    /// (whose `obs` is the final observation when the episode ended); then the copy moves to
    /// the next observation, resetting first when the episode ended. Returns what `learn`
    /// returned.
    pub fn step<R>(&mut self, i: usize, action: usize, learn: impl FnOnce(Obs<'_>, Step<'_>) -> R) -> R {
        let (env, obs) = (&mut self.envs[i], &mut self.obs[i]);
        let step = env.step(action);
        let out = learn(obs.as_obs(), step);
        if step.done() {
            obs.set(env.reset(None));
        } else {
            obs.set(step.obs);
        }
        out
    }
}
