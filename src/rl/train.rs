//! The trainer: a config ([`TrainConfig`], the YAML `tune train` reads and `tune export`
//! writes) and one loop ([`train`]) for every agent.
//!
//! ```yaml
//! env: {id: CartPole-v1}
//! seed: 0
//! budget: {steps: 50000}           # or {episodes: 150}
//! eval: {every: 5000, episodes: 20, epsilon: 0.0}
//! device: cpu                      # cuda, cuda:1
//! threads: 1                       # libtorch intra-op threads
//! agent: {type: dqn, lr: 0.001, replay: {type: prioritized}, target: {type: hard, every: 500}}
//! ```
//!
//! Evaluations run `eval.episodes` episodes with `eval.epsilon` on a second environment whose
//! first reset of every evaluation uses the same seed (so successive evaluations compare the
//! policy on the same start states), and are handed to an [`Observer`], which may stop training
//! (a pruned trial).

use std::path::Path;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::Device;

use super::agent::{Agent, AgentConfig, Progress, Transition};
use super::env::{Env, EnvSpec, Obs, ObsSpace};
use crate::error::InputError;

/// A trainer config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Free text (`tune export` writes where a config comes from here, in JSON files).
    #[serde(rename = "_comment", default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// The environment.
    pub env: EnvSpec,
    /// The agent and its hyperparameters.
    pub agent: AgentConfig,
    /// Seeds the environment, the agent's initial weights and its exploration.
    #[serde(default)]
    pub seed: u64,
    /// How long to train.
    pub budget: Budget,
    /// How and how often to evaluate.
    #[serde(default)]
    pub eval: EvalSpec,
    /// `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// libtorch intra-op threads for this run.
    #[serde(default = "default_threads")]
    pub threads: usize,
}

fn default_device() -> String {
    "cpu".into()
}
fn default_threads() -> usize {
    1
}

/// `budget: {steps: N}` or `budget: {episodes: N}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Environment steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
    /// Completed episodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub episodes: Option<u64>,
}

impl Budget {
    /// Fraction used after `step` steps and `episode` episodes, in `[0, 1]`.
    pub fn fraction(&self, step: u64, episode: u64) -> f64 {
        match (self.steps, self.episodes) {
            (Some(n), _) => (step as f64 / n as f64).min(1.0),
            (None, Some(n)) => (episode as f64 / n as f64).min(1.0),
            (None, None) => 1.0,
        }
    }

    fn done(&self, step: u64, episode: u64) -> bool {
        self.steps.is_some_and(|n| step >= n) || self.episodes.is_some_and(|n| episode >= n)
    }

    fn validate(&self) -> Result<(), String> {
        match (self.steps, self.episodes) {
            (Some(0), _) | (_, Some(0)) => Err("budget must be at least 1 step or episode".into()),
            (Some(_), Some(_)) => Err("budget: give either `steps` or `episodes`, not both".into()),
            (None, None) => Err("budget needs `steps: N` or `episodes: N`".into()),
            _ => Ok(()),
        }
    }
}

/// The `eval:` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSpec {
    /// Environment steps between evaluations (0: only at the end).
    pub every: u64,
    /// Episodes per evaluation.
    pub episodes: u32,
    /// Epsilon while evaluating (0: greedy; DQN papers use 0.05 on Atari).
    pub epsilon: f64,
}

impl Default for EvalSpec {
    fn default() -> Self {
        EvalSpec { every: 5000, episodes: 10, epsilon: 0.0 }
    }
}

impl TrainConfig {
    /// Reads a trainer config from a YAML (or JSON) file, with errors that name the file and
    /// the key.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            InputError::new(format!("cannot read config {}: {e}; pass the path of a trainer config", path.display()))
        })?;
        let value: Value = serde_norway::from_str(&text)
            .map_err(|e| InputError::new(format!("{}: invalid YAML: {e}", path.display())))?;
        Self::from_value(&value).map_err(|e| InputError::new(format!("{}: {e}", path.display())).into())
    }

    /// Builds a config from a JSON value (a trial's resolved config), checking every field.
    pub fn from_value(value: &Value) -> Result<Self, String> {
        let cfg: TrainConfig = serde_path_to_error::deserialize(value.clone()).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.inner().to_string();
            if path == "." || inner.starts_with("at `") {
                inner
            } else {
                format!("at `{path}`: {}", e.inner())
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what does not need the environment built.
    pub fn validate(&self) -> Result<(), String> {
        self.budget.validate()?;
        if self.eval.episodes == 0 {
            return Err("eval.episodes must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.eval.epsilon) {
            return Err(format!("eval.epsilon must be in [0, 1], got {}", self.eval.epsilon));
        }
        if self.threads == 0 {
            return Err("threads must be at least 1".into());
        }
        parse_device(&self.device)?;
        let env = self.env.make().map_err(|e| format!("env: {e}"))?;
        self.agent.validate(&env.observation_space()).map_err(|e| format!("agent: {e}"))
    }

    /// Makes relative file paths in the config (pretrained weights) relative to `base` instead,
    /// the folder of the file the config came from.
    pub fn resolve_paths(&mut self, base: &Path) {
        if let AgentConfig::Dqn(dqn) = &mut self.agent {
            if let Some(p) = &mut dqn.pretrained {
                if p.path.is_relative() && !base.as_os_str().is_empty() {
                    p.path = base.join(&p.path);
                }
            }
        }
    }

    /// The config as a JSON value (what `config.yaml` of a run holds).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("configs serialise")
    }
}

/// Parses `cpu`, `cuda` or `cuda:N`, checking that the device exists.
pub fn parse_device(name: &str) -> Result<Device, String> {
    let device = match name {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => n,
            None => return Err(format!("device must be cpu, cuda or cuda:N, got `{name}`")),
        },
    };
    let count = tch::Cuda::device_count() as usize;
    if device >= count {
        return Err(if count == 0 {
            format!("device {name}: no CUDA device is available here; use device: cpu")
        } else {
            format!("device {name}: only {count} CUDA device(s) here (cuda:0..cuda:{})", count - 1)
        });
    }
    Ok(Device::Cuda(device))
}

/// One finished training episode.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EpisodeRecord {
    /// Environment steps so far.
    pub step: u64,
    /// Episode number, from 0.
    pub episode: u64,
    /// Undiscounted, unscaled return.
    pub ret: f64,
    /// Steps in the episode.
    pub length: u64,
    /// Epsilon at its last step.
    pub epsilon: f64,
    /// Learning rate at its last step.
    pub lr: Option<f64>,
    /// Mean loss of the gradient steps during the episode.
    pub loss: Option<f64>,
}

/// One evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Environment steps of training so far.
    pub step: u64,
    /// Training episodes so far.
    pub episode: u64,
    /// Mean return.
    pub mean: f64,
    /// Standard deviation of the returns.
    pub std: f64,
    /// Each episode's return.
    pub returns: Vec<f64>,
}

/// What to do after an evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Keep training.
    Continue,
    /// Stop now (e.g. the trial was pruned).
    Stop,
}

/// Receives the run's events.
pub trait Observer {
    /// After each training episode.
    fn episode(&mut self, _record: &EpisodeRecord) -> anyhow::Result<()> {
        Ok(())
    }

    /// After each evaluation of `agent`; `Control::Stop` ends training.
    fn evaluation(&mut self, _eval: &Evaluation, _agent: &dyn Agent) -> anyhow::Result<Control> {
        Ok(Control::Continue)
    }
}

/// Observes nothing.
impl Observer for () {}

/// The outcome of [`train`].
pub struct TrainOutcome {
    /// The trained agent.
    pub agent: Box<dyn Agent>,
    /// Every evaluation, in order.
    pub evaluations: Vec<Evaluation>,
    /// Environment steps taken.
    pub steps: u64,
    /// Episodes completed.
    pub episodes: u64,
    /// Seconds spent.
    pub wall_s: f64,
    /// True when the observer stopped training.
    pub stopped: bool,
}

/// An observation owned by the loop (environments lend theirs only until the next step).
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

/// Seed of an independent stream for `purpose` (SplitMix64 of the run seed).
pub fn derive(seed: u64, purpose: u64) -> u64 {
    let mut z = seed.wrapping_add(purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Builds the environment and the agent of `cfg`, checking the agent against the spaces.
pub fn build(cfg: &TrainConfig) -> anyhow::Result<(Box<dyn Env>, Box<dyn Agent>)> {
    let env = cfg.env.make()?;
    let space = env.observation_space();
    cfg.agent.validate(&space).map_err(|e| InputError::new(format!("agent: {e}")))?;
    let device = parse_device(&cfg.device).map_err(InputError::new)?;
    let agent = cfg.agent.build(&space, env.action_space(), device, cfg.seed)?;
    Ok((env, agent))
}

/// Runs `episodes` episodes of `agent` on `env` with exploration `epsilon`; the first reset
/// uses `seed`. Returns each episode's return and length.
pub fn evaluate(agent: &mut dyn Agent, env: &mut dyn Env, episodes: u32, epsilon: f64, seed: u64) -> Vec<(f64, u64)> {
    let mut rng = StdRng::seed_from_u64(derive(seed, 7));
    let mut obs = ObsBuf::new(&env.observation_space());
    let mut results = Vec::with_capacity(episodes as usize);
    for e in 0..episodes {
        obs.set(env.reset(if e == 0 { Some(seed) } else { None }));
        let (mut ret, mut len) = (0.0, 0u64);
        loop {
            let action = agent.act_eval(obs.as_obs(), epsilon, &mut rng);
            let step = env.step(action);
            ret += step.reward;
            len += 1;
            if step.done() {
                break;
            }
            obs.set(step.obs);
        }
        results.push((ret, len));
    }
    results
}

/// Mean and (population) standard deviation.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Trains the agent of `cfg`, reporting episodes and evaluations to `observer`.
pub fn train(cfg: &TrainConfig, observer: &mut dyn Observer) -> anyhow::Result<TrainOutcome> {
    cfg.validate().map_err(InputError::new)?;
    tch::set_num_threads(cfg.threads as i32);
    let start = Instant::now();
    let (mut env, mut agent) = build(cfg)?;
    crate::fault::maybe_panic("train.panic");
    let mut eval_env = cfg.env.make()?;
    let eval_seed = derive(cfg.seed, 2);
    let exploration = cfg.agent.exploration().clone();
    let mut rng = StdRng::seed_from_u64(derive(cfg.seed, 1));
    let mut obs = ObsBuf::new(&env.observation_space());
    obs.set(env.reset(Some(cfg.seed)));

    let (mut step, mut episode) = (0u64, 0u64);
    let (mut ep_return, mut ep_len) = (0.0f64, 0u64);
    let mut evaluations = Vec::new();
    let mut stopped = false;
    let mut run_eval =
        |agent: &mut dyn Agent, observer: &mut dyn Observer, step, episode, evaluations: &mut Vec<Evaluation>| {
            let results = evaluate(agent, eval_env.as_mut(), cfg.eval.episodes, cfg.eval.epsilon, eval_seed);
            let returns: Vec<f64> = results.iter().map(|r| r.0).collect();
            let (mean, std) = mean_std(&returns);
            let eval = Evaluation { step, episode, mean, std, returns };
            let control = observer.evaluation(&eval, agent);
            evaluations.push(eval);
            control
        };
    while !cfg.budget.done(step, episode) {
        let before = Progress { step, episode, fraction: cfg.budget.fraction(step, episode) };
        let epsilon = exploration.epsilon(before);
        let action = agent.act(obs.as_obs(), epsilon, &mut rng);
        step += 1;
        let (reward, done) = {
            let s = env.step(action);
            let p = Progress { step, episode, fraction: cfg.budget.fraction(step, episode) };
            let t = Transition {
                obs: obs.as_obs(),
                action,
                reward: s.reward as f32,
                next_obs: s.obs,
                terminated: s.terminated,
                truncated: s.truncated,
            };
            agent.observe(t, p, &mut rng)?;
            if !s.done() {
                obs.set(s.obs);
            }
            (s.reward, s.done())
        };
        ep_return += reward;
        ep_len += 1;
        if done {
            let record = EpisodeRecord {
                step,
                episode,
                ret: ep_return,
                length: ep_len,
                epsilon,
                lr: agent.learning_rate(),
                loss: agent.take_mean_loss()?,
            };
            observer.episode(&record)?;
            episode += 1;
            ep_return = 0.0;
            ep_len = 0;
            obs.set(env.reset(None));
        }
        if cfg.eval.every > 0 && step % cfg.eval.every == 0 {
            if run_eval(agent.as_mut(), observer, step, episode, &mut evaluations)? == Control::Stop {
                stopped = true;
                break;
            }
        }
    }
    if !stopped && evaluations.last().is_none_or(|e| e.step != step) {
        stopped = run_eval(agent.as_mut(), observer, step, episode, &mut evaluations)? == Control::Stop;
    }
    Ok(TrainOutcome {
        agent,
        evaluations,
        steps: step,
        episodes: episode,
        wall_s: start.elapsed().as_secs_f64(),
        stopped,
    })
}
