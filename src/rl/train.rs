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
//! With `env: {num_envs: N}` the loop steps N copies of the environment together, as
//! Gymnasium's `SyncVectorEnv` does with same-step autoreset: copy `i` is seeded `seed + i`,
//! every copy acts on its own observation (one epsilon per vector step), a copy whose episode
//! ends stores its true final observation and resets at once, and each transition feeds the one
//! replay buffer (a stream per copy). Every count stays in environment steps, summed over the
//! copies (budget, `eval.every`, `learning_starts`, `train_freq`, target periods), so a config's
//! replay ratio means the same with one copy or many; a vector step that would cross an
//! evaluation, a schedule entry or the budget steps only the copies that reach it, so those
//! happen at exactly the step they name.
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

use super::agent::{Agent, AgentConfig, Progress, ReplaySpec, Transition};
pub use super::env::ObsBuf;
use super::env::{Env, EnvSpec, VecEnv};
use super::state::State;
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
    /// Hyperparameters that change during the run (what `tune export` writes for a PBT study):
    /// from each entry's `step` on, its values replace the config's at their dotted paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedule: Vec<ScheduleEntry>,
}

/// `schedule: [{step: 12500, set: {agent.lr: 0.0012, agent.gamma: 0.985}}, ...]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleEntry {
    /// The first environment step the values apply to.
    pub step: u64,
    /// Dotted paths under `agent.` and their values.
    pub set: serde_json::Map<String, Value>,
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
        self.agent.validate(&env.observation_space()).map_err(|e| format!("agent: {e}"))?;
        self.validate_copies()?;
        self.validate_schedule()
    }

    /// Checks that the agent can learn from `env.num_envs` copies: a `dqn` agent whose replay
    /// buffer holds a few n-step windows per copy.
    fn validate_copies(&self) -> Result<(), String> {
        let copies = self.env.num_envs as usize;
        if copies == 1 {
            return Ok(());
        }
        let AgentConfig::Dqn(dqn) = &self.agent else {
            return Err(format!(
                "env.num_envs is {copies}, but only `dqn` agents learn from several environment copies; use num_envs: 1"
            ));
        };
        if let ReplaySpec::Uniform { size } | ReplaySpec::Prioritized { size, .. } = dqn.replay {
            let min = copies * (2 * (dqn.n_step + 4) + 1);
            if size < min {
                return Err(format!(
                    "agent.replay.size {size} is too small for env.num_envs {copies}: each copy keeps size / num_envs slots and needs {}; raise replay.size to at least {min} or lower num_envs",
                    min / copies
                ));
            }
        }
        Ok(())
    }

    /// Checks the `schedule:` entries: increasing steps within a step budget, paths under
    /// `agent.`, and configs that are valid and can take over the learner's state.
    fn validate_schedule(&self) -> Result<(), String> {
        if self.schedule.is_empty() {
            return Ok(());
        }
        let Some(steps) = self.budget.steps else {
            return Err("schedule: needs a budget in steps (`budget: {steps: N}`)".into());
        };
        let mut last = 0;
        for (i, entry) in self.schedule.iter().enumerate() {
            if entry.step <= last || entry.step >= steps {
                return Err(format!(
                    "schedule[{i}].step must be above the previous entry's (or 0) and below the budget of {steps} steps, got {}",
                    entry.step
                ));
            }
            last = entry.step;
            if let Some(key) = entry.set.keys().find(|k| !k.starts_with("agent.")) {
                return Err(format!(
                    "schedule[{i}].set: `{key}`: only agent hyperparameters (`agent.*`) can change during a run"
                ));
            }
        }
        let mut previous = self.scheduled(0)?;
        for i in 1..=self.schedule.len() {
            let next = self.scheduled(i).map_err(|e| format!("schedule[{}]: {e}", i - 1))?;
            previous.agent.continues_as(&next.agent).map_err(|e| format!("schedule[{}]: {e}", i - 1))?;
            previous = next;
        }
        Ok(())
    }

    /// The config in force after the first `entries` schedule entries (without its schedule).
    pub fn scheduled(&self, entries: usize) -> Result<TrainConfig, String> {
        let mut base = self.clone();
        base.schedule.clear();
        if entries == 0 {
            return Ok(base);
        }
        let mut value = base.to_value();
        for entry in &self.schedule[..entries] {
            for (path, v) in &entry.set {
                crate::spec::path::set(&mut value, path, v.clone()).map_err(|e| format!("set `{path}`: {e}"))?;
            }
        }
        let cfg: TrainConfig =
            serde_path_to_error::deserialize(value).map_err(|e| format!("at `{}`: {}", e.path(), e.inner()))?;
        let env = cfg.env.make().map_err(|e| format!("env: {e}"))?;
        cfg.agent.validate(&env.observation_space()).map_err(|e| format!("agent: {e}"))?;
        Ok(cfg)
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

/// The first step after `step` at which a run with `eval.every: every` (0: none) must stop a
/// vector step: its next evaluation, or `end`.
pub fn next_boundary(step: u64, end: u64, every: u64) -> u64 {
    step.checked_div(every).map_or(end, |q| end.min((q + 1) * every))
}

/// Seed of an independent stream for `purpose` (SplitMix64 of the run seed).
pub fn derive(seed: u64, purpose: u64) -> u64 {
    let mut z = seed.wrapping_add(purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Builds one environment and the agent of `cfg` (for one environment, whatever `num_envs`
/// says: what evaluating or watching a trained agent needs), checking the agent against the
/// spaces.
pub fn build(cfg: &TrainConfig) -> anyhow::Result<(Box<dyn Env>, Box<dyn Agent>)> {
    let (mut envs, agent) = build_seeded(cfg, cfg.seed, 1)?;
    Ok((envs.remove(0), agent))
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
    let mut trainer = Trainer::new(cfg)?;
    let stopped = trainer.advance(u64::MAX, observer)?;
    trainer.finish(stopped, observer)
}

/// The seed of segment `segment` of a run seeded with `seed`: the run's own for the first, an
/// independent stream for each later one (PBT's generations, a `schedule:` step).
pub fn segment_seed(seed: u64, segment: u64) -> u64 {
    if segment == 0 {
        seed
    } else {
        derive(seed, 0x5E6_0000 + segment)
    }
}

/// The training loop, resumable: [`Trainer::advance`] runs it up to a step, so that a run can
/// stop at a boundary, be checkpointed ([`Agent::learner_state`], [`Agent::replay_state`]) and
/// continue there, in this process or another, under the same or new hyperparameters.
///
/// A run is a chain of segments. Segment `k` starts with a fresh reset of the environment
/// seeded by [`segment_seed`], its own action-sampling stream and (for `k > 0`) the learner and
/// replay state the previous segment left; schedules (epsilon, learning rate, PER's beta) go
/// on from the step count. A `schedule:` entry of the config starts a new segment at its step,
/// as each of PBT's generations does, so that `tune train` of an exported PBT schedule trains
/// in the same segments under the same values.
pub struct Trainer {
    cfg: TrainConfig,
    /// The config with the schedule entries applied so far.
    current: TrainConfig,
    /// The environment copies (`env.num_envs`).
    envs: VecEnv,
    /// Return and length of each copy's episode in progress.
    episodes: Vec<(f64, u64)>,
    /// Each copy's action of the vector step in progress.
    actions: Vec<usize>,
    eval_env: Box<dyn Env>,
    agent: Box<dyn Agent>,
    rng: StdRng,
    eval_seed: u64,
    step: u64,
    episode: u64,
    segment: u64,
    /// Index of the next `schedule:` entry.
    next_entry: usize,
    evaluations: Vec<Evaluation>,
    start: Instant,
}

impl Trainer {
    /// A run of `cfg` from its first step.
    pub fn new(cfg: &TrainConfig) -> anyhow::Result<Self> {
        Self::resume(cfg, Resume::default())
    }

    /// A run of `cfg` that continues from `from` (a checkpoint's step, episode count and state).
    pub fn resume(cfg: &TrainConfig, from: Resume<'_>) -> anyhow::Result<Self> {
        cfg.validate().map_err(InputError::new)?;
        tch::set_num_threads(cfg.threads as i32);
        let start = Instant::now();
        // The schedule's entries up to the starting step are in force.
        let next_entry = cfg.schedule.iter().take_while(|e| e.step <= from.step).count();
        let current = cfg.scheduled(next_entry).map_err(InputError::new)?;
        let seed = segment_seed(cfg.seed, from.segment);
        let (envs, mut agent) = build_seeded(&current, seed, cfg.env.num_envs as usize)?;
        crate::fault::maybe_panic("train.panic");
        if let Some(learner) = from.learner {
            agent.load_learner_state(learner)?;
        }
        if let Some(replay) = from.replay {
            agent.load_replay_state(replay)?;
        }
        let eval_env = cfg.env.make()?;
        let n = envs.len();
        Ok(Trainer {
            cfg: cfg.clone(),
            current,
            envs: VecEnv::new(envs, seed),
            episodes: vec![(0.0, 0); n],
            actions: vec![0; n],
            eval_env,
            agent,
            rng: StdRng::seed_from_u64(derive(seed, 1)),
            eval_seed: derive(cfg.seed, 2),
            step: from.step,
            episode: from.episode,
            segment: from.segment,
            next_entry,
            evaluations: Vec::new(),
            start,
        })
    }

    /// Environment steps taken (counting those before a resume).
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Episodes completed (counting those before a resume).
    pub fn episode(&self) -> u64 {
        self.episode
    }

    /// The agent.
    pub fn agent(&self) -> &dyn Agent {
        self.agent.as_ref()
    }

    /// The evaluations of this run so far.
    pub fn evaluations(&self) -> &[Evaluation] {
        &self.evaluations
    }

    /// Trains until `until` steps (or the budget) are reached, evaluating every `eval.every`
    /// steps; true when the observer stopped the run.
    pub fn advance(&mut self, until: u64, observer: &mut dyn Observer) -> anyhow::Result<bool> {
        if crate::fault::hit("train.diverge") {
            anyhow::bail!("training diverged: the loss became NaN (injected fault train.diverge)");
        }
        let budget = self.cfg.budget.clone();
        let every = self.cfg.eval.every;
        let mut exploration = self.current.agent.exploration().clone();
        while self.step < until && !budget.done(self.step, self.episode) {
            if self.cfg.schedule.get(self.next_entry).is_some_and(|e| e.step == self.step) {
                self.next_segment()?;
                exploration = self.current.agent.exploration().clone();
            }
            // The copies that step now: all of them, or those that reach the next step at which
            // something happens (the end, an evaluation, a schedule entry) exactly.
            let mut boundary = next_boundary(self.step, until.min(budget.steps.unwrap_or(u64::MAX)), every);
            if let Some(entry) = self.cfg.schedule.get(self.next_entry) {
                boundary = boundary.min(entry.step);
            }
            let stepping = self.envs.len().min((boundary - self.step) as usize);
            let (step, episode) = (self.step, self.episode);
            let before = Progress { step, episode, fraction: budget.fraction(step, episode) };
            let epsilon = exploration.epsilon(before);
            for (i, action) in self.actions[..stepping].iter_mut().enumerate() {
                *action = self.agent.act(self.envs.obs(i), epsilon, &mut self.rng);
            }
            for i in 0..stepping {
                self.step_copy(i, epsilon, &budget, observer)?;
                if budget.done(self.step, self.episode) {
                    break;
                }
            }
            if every > 0 && self.step % every == 0 && self.evaluate(observer)? == Control::Stop {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Steps copy `i` with its action, hands the transition to the agent and, when the episode
    /// ends, reports it and resets the copy.
    fn step_copy(
        &mut self,
        i: usize,
        epsilon: f64,
        budget: &Budget,
        observer: &mut dyn Observer,
    ) -> anyhow::Result<()> {
        let (action, episode) = (self.actions[i], self.episode);
        self.step += 1;
        let step = self.step;
        let p = Progress { step, episode, fraction: budget.fraction(step, episode) };
        let (agent, rng) = (&mut self.agent, &mut self.rng);
        let (learned, reward, done) = self.envs.step(i, action, |obs, s| {
            let t = Transition {
                obs,
                action,
                reward: s.reward as f32,
                next_obs: s.obs,
                terminated: s.terminated,
                truncated: s.truncated,
                env: i,
            };
            (agent.observe(t, p, rng), s.reward, s.done())
        });
        learned?;
        let (ret, len) = &mut self.episodes[i];
        *ret += reward;
        *len += 1;
        if done {
            let record = EpisodeRecord {
                step,
                episode,
                ret: std::mem::take(ret),
                length: std::mem::take(len),
                epsilon,
                lr: self.agent.learning_rate(),
                loss: self.agent.take_mean_loss()?,
            };
            observer.episode(&record)?;
            self.episode += 1;
        }
        Ok(())
    }

    /// Evaluates the agent now and hands the result to `observer`.
    pub fn evaluate(&mut self, observer: &mut dyn Observer) -> anyhow::Result<Control> {
        let eval = &self.cfg.eval;
        let results =
            evaluate(self.agent.as_mut(), self.eval_env.as_mut(), eval.episodes, eval.epsilon, self.eval_seed);
        let returns: Vec<f64> = results.iter().map(|r| r.0).collect();
        let (mean, std) = mean_std(&returns);
        let eval = Evaluation { step: self.step, episode: self.episode, mean, std, returns };
        let control = observer.evaluation(&eval, self.agent.as_ref());
        self.evaluations.push(eval);
        control
    }

    /// Evaluates now unless the last evaluation was at this step; true when the observer stopped
    /// the run.
    pub fn evaluate_if_due(&mut self, observer: &mut dyn Observer) -> anyhow::Result<bool> {
        if self.evaluations.last().is_some_and(|e| e.step == self.step) {
            return Ok(false);
        }
        Ok(self.evaluate(observer)? == Control::Stop)
    }

    /// Ends the episode in progress (the agent's replay closes it as truncated) and returns the
    /// learner's and the replay's state, for a checkpoint at this step.
    pub fn checkpoint(&mut self) -> anyhow::Result<(State, State)> {
        self.agent.cut_episode();
        let learner = self.agent.learner_state();
        let replay = self.agent.replay_state();
        match (learner, replay) {
            (Some(l), Some(r)) => Ok((l, r)),
            _ => Err(InputError::new("only `dqn` agents can be checkpointed during a run (PBT, schedule:)").into()),
        }
    }

    /// Starts the next segment at a `schedule:` entry: the learner and replay state move to an
    /// agent built under the entry's values, and the environment is reset.
    fn next_segment(&mut self) -> anyhow::Result<()> {
        self.next_entry += 1;
        self.segment += 1;
        self.current = self.cfg.scheduled(self.next_entry).map_err(InputError::new)?;
        let (learner, replay) = self.checkpoint()?;
        let seed = segment_seed(self.cfg.seed, self.segment);
        let (envs, mut agent) = build_seeded(&self.current, seed, self.envs.len())?;
        agent.load_learner_state(&learner)?;
        agent.load_replay_state(&replay)?;
        self.envs = VecEnv::new(envs, seed);
        self.episodes.fill((0.0, 0));
        self.agent = agent;
        self.rng = StdRng::seed_from_u64(derive(seed, 1));
        Ok(())
    }

    /// Evaluates once more at the last step unless the run was stopped or just evaluated, and
    /// returns the outcome.
    pub fn finish(mut self, stopped: bool, observer: &mut dyn Observer) -> anyhow::Result<TrainOutcome> {
        let stopped = stopped || self.evaluate_if_due(observer)?;
        Ok(TrainOutcome {
            agent: self.agent,
            evaluations: self.evaluations,
            steps: self.step,
            episodes: self.episode,
            wall_s: self.start.elapsed().as_secs_f64(),
            stopped,
        })
    }
}

/// Where [`Trainer::resume`] starts: step and episode counts, the segment's index (which seeds
/// it) and the states to load. The default is a run's start.
#[derive(Default)]
pub struct Resume<'a> {
    /// Environment steps already taken.
    pub step: u64,
    /// Episodes already completed.
    pub episode: u64,
    /// The segment's index in its chain.
    pub segment: u64,
    /// The network, target network and optimizer to start from.
    pub learner: Option<&'a State>,
    /// The replay buffer's contents to start from.
    pub replay: Option<&'a State>,
}

/// Environment copies and an agent, as a run builds them.
type Built = (Vec<Box<dyn Env>>, Box<dyn Agent>);

/// `copies` environments of `cfg` and its agent, with the agent's initial weights and noise
/// seeded by `seed`.
fn build_seeded(cfg: &TrainConfig, seed: u64, copies: usize) -> anyhow::Result<Built> {
    let envs = (0..copies).map(|_| cfg.env.make()).collect::<anyhow::Result<Vec<_>>>()?;
    let space = envs[0].observation_space();
    cfg.agent.validate(&space).map_err(|e| InputError::new(format!("agent: {e}")))?;
    let device = parse_device(&cfg.device).map_err(InputError::new)?;
    let agent = cfg.agent.build(&space, envs[0].action_space(), device, seed, copies)?;
    Ok((envs, agent))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> TrainConfig {
        let yaml = format!(
            "env: {{id: CartPole-v1}}
seed: 3
budget: {{steps: 1200}}
eval: {{every: 400, episodes: 2}}
agent:
  type: dqn
  net: {{type: mlp, hidden: [16]}}
  lr: 0.001
  learning_starts: 100
  batch_size: 16
  replay: {{type: prioritized, size: 2000}}
  target: {{type: hard, every: 50}}
  exploration: {{type: linear, start: 1.0, end: 0.05, fraction: 0.5}}
{extra}"
        );
        TrainConfig::from_value(&serde_norway::from_str(&yaml).unwrap()).unwrap()
    }

    /// Records each episode's last-step learning rate.
    #[derive(Default)]
    struct Lrs(Vec<(u64, f64)>);

    impl Observer for Lrs {
        fn episode(&mut self, r: &EpisodeRecord) -> anyhow::Result<()> {
            self.0.push((r.step, r.lr.unwrap()));
            Ok(())
        }
    }

    #[test]
    fn a_schedule_changes_hyperparameters_from_its_steps_on() {
        let cfg = config(
            "schedule:
  - {step: 400, set: {agent.lr: 0.002, agent.gamma: 0.95}}
  - {step: 800, set: {agent.lr: 0.0005}}",
        );
        let mut lrs = Lrs::default();
        let outcome = train(&cfg, &mut lrs).unwrap();
        assert_eq!(outcome.steps, 1200);
        assert_eq!(outcome.evaluations.iter().map(|e| e.step).collect::<Vec<_>>(), vec![400, 800, 1200]);
        for &(step, lr) in &lrs.0 {
            let expected = match step {
                0..400 => 0.001,
                400..800 => 0.002,
                _ => 0.0005,
            };
            assert_eq!(lr, expected, "episode ending at step {step}");
        }
        assert!(lrs.0.iter().any(|e| e.0 > 800));
        let AgentConfig::Dqn(second) = cfg.scheduled(1).unwrap().agent else { unreachable!() };
        assert_eq!((second.lr, second.gamma), (0.002, 0.95));
    }

    #[test]
    fn a_run_split_at_a_checkpoint_continues_as_one_run() {
        // Two stretches with a checkpoint between them train the same as a schedule boundary
        // at that step with unchanged values.
        let cfg = config("");
        let mut first = Trainer::new(&cfg).unwrap();
        assert!(!first.advance(600, &mut ()).unwrap());
        let (learner, replay) = first.checkpoint().unwrap();
        let mut second = Trainer::resume(
            &cfg,
            Resume { step: 600, episode: first.episode(), segment: 1, learner: Some(&learner), replay: Some(&replay) },
        )
        .unwrap();
        assert!(!second.advance(u64::MAX, &mut ()).unwrap());
        let split = second.finish(false, &mut ()).unwrap();
        let scheduled = config("schedule:\n  - {step: 600, set: {agent.lr: 0.001}}");
        let whole = train(&scheduled, &mut ()).unwrap();
        assert_eq!(split.steps, whole.steps);
        let means = |o: &TrainOutcome| o.evaluations.iter().map(|e| (e.step, e.mean)).collect::<Vec<_>>();
        assert_eq!(means(&split)[..], means(&whole)[1..]);
    }

    #[test]
    fn environment_copies_train_with_evaluations_and_schedule_entries_at_their_steps() {
        // 3 copies against an evaluation every 500 steps, a schedule entry at 700 and a budget of
        // 1300: none is a multiple of 3, and each happens at exactly its step.
        let cfg = config("schedule:\n  - {step: 700, set: {agent.lr: 0.002}}");
        let mut value = cfg.to_value();
        value["env"]["num_envs"] = 3.into();
        value["budget"]["steps"] = 1300.into();
        value["eval"]["every"] = 500.into();
        let cfg = TrainConfig::from_value(&value).unwrap();
        let mut lrs = Lrs::default();
        let outcome = train(&cfg, &mut lrs).unwrap();
        assert_eq!(outcome.steps, 1300);
        assert_eq!(outcome.evaluations.iter().map(|e| e.step).collect::<Vec<_>>(), vec![500, 1000, 1300]);
        assert_eq!(outcome.episodes as usize, lrs.0.len());
        for &(step, lr) in &lrs.0 {
            if step != 700 {
                assert_eq!(lr, if step < 700 { 0.001 } else { 0.002 }, "episode ending at step {step}");
            }
        }
        // Three copies end episodes at steps one copy never would (several per vector step).
        assert!(lrs.0.windows(2).any(|w| w[1].0 - w[0].0 < 3), "{:?}", lrs.0);
        let again = train(&cfg, &mut ()).unwrap();
        let means = |o: &TrainOutcome| o.evaluations.iter().map(|e| (e.step, e.mean)).collect::<Vec<_>>();
        assert_eq!(means(&again), means(&outcome), "a run with copies is reproducible");
    }

    #[test]
    fn environment_copies_need_a_dqn_agent_and_room_in_its_buffer() {
        let refused = |yaml: &str| TrainConfig::from_value(&serde_norway::from_str(yaml).unwrap()).unwrap_err();
        let err = refused("env: {id: FrozenLake-v1, num_envs: 2}\nbudget: {steps: 100}\nagent: {type: q_learning}");
        assert!(err.contains("only `dqn` agents learn from several environment copies"), "{err}");
        let err = refused(
            "env: {id: CartPole-v1, num_envs: 8}\nbudget: {steps: 100}\nagent: {type: dqn, batch_size: 16, replay: {type: uniform, size: 80}}",
        );
        assert!(err.contains("replay.size 80 is too small for env.num_envs 8") && err.contains("at least 88"), "{err}");
    }

    #[test]
    fn impossible_schedules_are_refused_naming_the_rule() {
        let refused = |extra: &str| {
            let yaml: Value = serde_norway::from_str(&format!(
                "env: {{id: CartPole-v1}}\nbudget: {{steps: 1000}}\nagent: {{type: dqn}}\n{extra}"
            ))
            .unwrap();
            TrainConfig::from_value(&yaml).unwrap_err()
        };
        assert!(refused("schedule: [{step: 1000, set: {agent.lr: 0.1}}]").contains("below the budget"));
        assert!(refused("schedule: [{step: 500, set: {seed: 3}}]").contains("only agent hyperparameters"));
        assert!(refused("schedule: [{step: 500, set: {agent.net.hidden: [8]}}]").contains("agent.net"));
        assert!(refused("schedule: [{step: 500, set: {agent.lr: -1}}]").contains("lr must be a positive number"));
        assert!(refused("schedule: [{step: 500, set: {agent.lr: 0.1}}, {step: 400, set: {agent.lr: 0.2}}]")
            .contains("schedule[1].step"));
    }
}
