//! Agents: one value-based deep agent ([`DqnAgent`]) whose config selects every DQN variant of
//! the labs, and tabular Q-learning / SARSA ([`TabularAgent`]) for discrete observations.
//!
//! Both sit behind [`Agent`], which the training loop in [`crate::rl::train`] drives the same way:
//! `act` on an observation, `observe` the transition. Variants are options, never copies of the
//! loop (HOUSE_STYLE.md): naive online Q-learning is `replay: {type: none}, target: {type: none}`,
//! DQN 2013 adds uniform replay, DQN 2015 a hard target, Double DQN `double: true`, and so on.

pub mod batched;
mod dqn;
mod head;
mod host_mlp;
mod optim;
mod tabular;

pub use dqn::{DqnAgent, DqnConfig, LossKind, Munchausen, Noisy, ReplaySpec, TargetSpec};
pub use head::HeadSpec;
pub use optim::{FlatOptimizer, LrSchedule, OptimizerSpec};
pub use tabular::{TabularAgent, TabularConfig, TabularKind};

use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::rl::env::{ActionSpace, Obs, ObsSpace};
use crate::rl::schedule::{exponential_decay, linear_schedule, Per};
use crate::rl::state::State;

/// One environment transition as the agent learns from it.
#[derive(Clone, Copy, Debug)]
pub struct Transition<'a> {
    /// `s_t`.
    pub obs: Obs<'a>,
    /// `a_t`.
    pub action: usize,
    /// `r_{t+1}`, already scaled by the config's `reward_scale`.
    pub reward: f32,
    /// `s_{t+1}`.
    pub next_obs: Obs<'a>,
    /// The MDP ended: do not bootstrap.
    pub terminated: bool,
    /// A time limit cut the episode: bootstrap from `next_obs`.
    pub truncated: bool,
    /// The environment copy it came from (`0..env.num_envs`; 0 for a single environment).
    pub env: usize,
}

/// Where the run stands, for schedules and update intervals.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Progress {
    /// Environment steps taken so far, this one included.
    pub step: u64,
    /// Episodes completed so far.
    pub episode: u64,
    /// Fraction of the budget used, in `[0, 1]`.
    pub fraction: f64,
}

/// A learning agent with discrete actions.
pub trait Agent {
    /// The action to take in `obs` while training, exploring with probability `epsilon` (or by
    /// the agent's own rule, e.g. UCB).
    fn act(&mut self, obs: Obs<'_>, epsilon: f64, rng: &mut StdRng) -> usize;

    /// The greedy action, or a random one with probability `epsilon` (evaluation).
    fn act_eval(&mut self, obs: Obs<'_>, epsilon: f64, rng: &mut StdRng) -> usize;

    /// Learns from one transition; `progress` counts this step.
    fn observe(&mut self, t: Transition<'_>, progress: Progress, rng: &mut StdRng) -> anyhow::Result<()>;

    /// Mean training loss since the last call, `None` when no update ran. An error when it is
    /// NaN or infinite (the run diverged).
    fn take_mean_loss(&mut self) -> anyhow::Result<Option<f64>>;

    /// The current learning rate (`None` for agents without one).
    fn learning_rate(&self) -> Option<f64>;

    /// Writes the learned parameters to `path` (safetensors for networks, JSON for Q-tables).
    fn save(&self, path: &std::path::Path) -> anyhow::Result<()>;

    /// Loads parameters written by [`Agent::save`].
    fn load(&mut self, path: &std::path::Path) -> anyhow::Result<()>;

    /// File name [`Agent::save`] uses in a run folder.
    fn weights_file(&self) -> &'static str;

    /// The learner's state (network, target network, optimizer, counters) for a checkpoint;
    /// `None` for agents that cannot be checkpointed mid-run.
    fn learner_state(&self) -> Option<State> {
        None
    }

    /// Restores a learner state written by [`Agent::learner_state`] (maybe by an agent with
    /// other hyperparameters, as [`AgentConfig::continues_as`] allows).
    fn load_learner_state(&mut self, _state: &State) -> anyhow::Result<()> {
        anyhow::bail!("this agent cannot resume from a checkpoint (only `dqn` agents can)")
    }

    /// The replay buffer's contents for a checkpoint; `None` for agents without one.
    fn replay_state(&self) -> Option<State> {
        None
    }

    /// Restores replay contents written by [`Agent::replay_state`].
    fn load_replay_state(&mut self, _state: &State) -> anyhow::Result<()> {
        anyhow::bail!("this agent has no replay buffer to restore")
    }

    /// Ends the episode in progress in the agent's memory as a time-limit cut would (the
    /// environment is about to be reset mid-episode).
    fn cut_episode(&mut self) {}
}

/// The `agent:` section of a trainer config, tagged by `type`.
///
/// Deserialised by hand (not `#[serde(tag)]`) so that errors name the full key, e.g.
/// ``at `agent.replay.alpha`: invalid type``, where serde's buffered tagged enums lose the path.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentConfig {
    /// Deep Q-learning with every variant as an option.
    Dqn(Box<DqnConfig>),
    /// Tabular Q-learning (off-policy, `max_a' Q(s', a')`).
    QLearning(TabularConfig),
    /// Tabular SARSA (on-policy, `Q(s', a')` with `a'` the next action taken).
    Sarsa(TabularConfig),
}

/// The agent types, as error messages list them.
const AGENT_TYPES: &str = "dqn, q_learning, sarsa";

impl<'de> Deserialize<'de> for AgentConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut map = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        let kind = match map.remove("type") {
            Some(serde_json::Value::String(s)) => s,
            Some(other) => {
                return Err(D::Error::custom(format!("at `agent.type`: expected one of {AGENT_TYPES}, got {other}")))
            }
            None => return Err(D::Error::custom(format!("agent needs a `type`: one of {AGENT_TYPES}"))),
        };
        fn parse<T: serde::de::DeserializeOwned, E: Error>(
            map: serde_json::Map<String, serde_json::Value>,
        ) -> Result<T, E> {
            serde_path_to_error::deserialize(serde_json::Value::Object(map)).map_err(|e| {
                let path = e.path().to_string();
                let key = if path == "." { "agent".to_string() } else { format!("agent.{path}") };
                E::custom(format!("at `{key}`: {}", e.inner()))
            })
        }
        match kind.as_str() {
            "dqn" => Ok(AgentConfig::Dqn(Box::new(parse(map)?))),
            "q_learning" => Ok(AgentConfig::QLearning(parse(map)?)),
            "sarsa" => Ok(AgentConfig::Sarsa(parse(map)?)),
            other => Err(D::Error::custom(format!(
                "at `agent.type`: unknown agent type `{other}`; expected one of {AGENT_TYPES}"
            ))),
        }
    }
}

impl AgentConfig {
    /// The exploration schedule.
    pub fn exploration(&self) -> &Exploration {
        match self {
            AgentConfig::Dqn(c) => &c.exploration,
            AgentConfig::QLearning(c) | AgentConfig::Sarsa(c) => &c.exploration,
        }
    }

    /// Checks values serde cannot (ranges, combinations) against the environment's spaces.
    pub fn validate(&self, space: &ObsSpace) -> Result<(), String> {
        self.exploration().validate()?;
        match self {
            AgentConfig::Dqn(c) => c.validate(space),
            AgentConfig::QLearning(c) | AgentConfig::Sarsa(c) => c.validate(space),
        }
    }

    /// Why a learner trained under this config cannot go on under `other` (PBT's explore, a
    /// config's `schedule:`): what shapes the network, the optimizer's state or the replay
    /// buffer must stay the same; scalars (learning rate, discount, exploration, target period,
    /// PER exponents, batch size, update schedule) may change.
    pub fn continues_as(&self, other: &AgentConfig) -> Result<(), String> {
        let (AgentConfig::Dqn(a), AgentConfig::Dqn(b)) = (self, other) else {
            return Err("only `dqn` agents can change hyperparameters during a run (PBT, schedule:)".into());
        };
        a.continues_as(b)
    }

    /// Builds the agent for an environment with these spaces, stepped in `copies` copies.
    pub fn build(
        &self,
        space: &ObsSpace,
        actions: ActionSpace,
        device: tch::Device,
        seed: u64,
        copies: usize,
    ) -> anyhow::Result<Box<dyn Agent>> {
        if copies > 1 && !matches!(self, AgentConfig::Dqn(_)) {
            return Err(crate::error::InputError::new(
                "env.num_envs above 1 needs a `dqn` agent (tabular agents learn from one environment)",
            )
            .into());
        }
        Ok(match self {
            AgentConfig::Dqn(c) => Box::new(DqnAgent::with_env_copies(c, space, actions, device, seed, copies)?),
            AgentConfig::QLearning(c) => Box::new(TabularAgent::new(c, TabularKind::QLearning, space, actions)?),
            AgentConfig::Sarsa(c) => Box::new(TabularAgent::new(c, TabularKind::Sarsa, space, actions)?),
        })
    }
}

/// How the agent explores while training.
///
/// `{type: linear, start: 1.0, end: 0.05, fraction: 0.1}` anneals epsilon over the first 10% of
/// the budget (CleanRL, lab 003); `{type: exponential, start: 0.82, factor: 0.9675, floor: 0.013,
/// per: episode}` multiplies it after each episode (lab 000) or step (lab 002);
/// `{type: constant, epsilon: 0.1}`; `{type: ucb, c: 2.0}` is tabular UCB,
/// `argmax_a Q(s, a) + c sqrt(ln N(s) / N(s, a))` (lab 003).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Exploration {
    /// Linear from `start` to `end` over `fraction` of the budget, then `end`.
    Linear {
        /// Epsilon at the first step.
        #[serde(default = "one")]
        start: f64,
        /// Final epsilon.
        end: f64,
        /// Fraction of the budget (steps, or episodes for episode budgets) spent annealing.
        fraction: f64,
    },
    /// `max(floor, start * factor^t)`, `t` counting steps or episodes.
    Exponential {
        /// Epsilon at `t = 0`.
        #[serde(default = "one")]
        start: f64,
        /// Multiplier per step or episode.
        factor: f64,
        /// Lower bound.
        floor: f64,
        /// What `t` counts.
        #[serde(default)]
        per: Per,
    },
    /// A fixed epsilon.
    Constant {
        /// The exploration probability.
        epsilon: f64,
    },
    /// Upper-confidence-bound action selection (tabular agents only).
    Ucb {
        /// Exploration weight.
        #[serde(default = "two")]
        c: f64,
    },
}

fn one() -> f64 {
    1.0
}

fn two() -> f64 {
    2.0
}

impl Exploration {
    /// Epsilon at `progress` (0 for UCB, which explores by its bonus instead).
    pub fn epsilon(&self, p: Progress) -> f64 {
        match *self {
            Exploration::Linear { start, end, fraction } => {
                // Scaled to 1e6 ticks so the linear schedule's integer clock can count fractions.
                const TICKS: f64 = 1e6;
                linear_schedule(start, end, (fraction * TICKS) as u64, (p.fraction * TICKS) as u64)
            }
            Exploration::Exponential { start, factor, floor, per } => {
                exponential_decay(start, factor, floor, if per == Per::Step { p.step } else { p.episode })
            }
            Exploration::Constant { epsilon } => epsilon,
            Exploration::Ucb { .. } => 0.0,
        }
    }

    fn validate(&self) -> Result<(), String> {
        let prob = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("exploration.{name} must be in [0, 1], got {v}"))
            }
        };
        match *self {
            Exploration::Linear { start, end, fraction } => {
                prob("start", start)?;
                prob("end", end)?;
                prob("fraction", fraction)
            }
            Exploration::Exponential { start, factor, floor, .. } => {
                prob("start", start)?;
                prob("floor", floor)?;
                if factor > 0.0 && factor <= 1.0 {
                    Ok(())
                } else {
                    Err(format!("exploration.factor must be in (0, 1], got {factor}"))
                }
            }
            Exploration::Constant { epsilon } => prob("epsilon", epsilon),
            Exploration::Ucb { c } if c >= 0.0 && c.is_finite() => Ok(()),
            Exploration::Ucb { c } => Err(format!("exploration.c must be a finite number >= 0, got {c}")),
        }
    }
}

/// Index of the largest value, the first one on ties (NumPy's `argmax`).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate().skip(1) {
        if v > values[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(step: u64, episode: u64, fraction: f64) -> Progress {
        Progress { step, episode, fraction }
    }

    #[test]
    fn exploration_schedules() {
        let lin: Exploration = serde_norway::from_str("{type: linear, start: 1.0, end: 0.05, fraction: 0.5}").unwrap();
        assert_eq!(lin.epsilon(at(0, 0, 0.0)), 1.0);
        assert!((lin.epsilon(at(0, 0, 0.25)) - 0.525).abs() < 1e-9);
        assert_eq!(lin.epsilon(at(0, 0, 0.9)), 0.05);
        let exp: Exploration =
            serde_norway::from_str("{type: exponential, start: 0.82, factor: 0.9675, floor: 0.013, per: episode}")
                .unwrap();
        assert!((exp.epsilon(at(999, 2, 0.0)) - 0.82 * 0.9675f64.powi(2)).abs() < 1e-12);
        let ucb: Exploration = serde_norway::from_str("{type: ucb}").unwrap();
        assert_eq!(ucb, Exploration::Ucb { c: 2.0 });
        assert!(Exploration::Constant { epsilon: 1.5 }.validate().is_err());
        assert!(Exploration::Linear { start: 1.0, end: 0.0, fraction: 2.0 }.validate().is_err());
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[0.0]), 0);
    }
}
