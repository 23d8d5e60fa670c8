//! The `rl` objective: train a DQN-family agent (or a tabular one) per trial.
//!
//! ```yaml
//! objective:
//!   type: rl
//!   config: ../configs/per_cartpole.yaml   # a trainer config file, or an inline mapping
//!   value: best                            # last | best | mean_last_k
//!   k: 3                                   # for mean_last_k
//!   seeds: 3                               # independent seeds per trial
//!   batched: true                           # train seeds (and batched trials) as one model
//! ```
//!
//! The search space's dotted paths point into the trainer config (`agent.lr`,
//! `agent.replay.alpha`). Every evaluation's mean return, averaged over the seeds, is reported as
//! the intermediate value at its environment step, and the pruner is asked after each; the trial
//! value reduces that averaged curve. The seeds train as one batched learner
//! ([`crate::rl::batched`]: one model with a member per seed, on one thread) when their config
//! allows it, and one agent per thread otherwise (`batched: false` asks for that); the
//! `batched` user attribute says which, and why not. With `parallelism.batch: P`, the trials a
//! worker asks together are grouped by what they must share ([`batchable`]) and each group
//! trains as one learner, a member per trial and seed; each trial gets its own evaluations,
//! pruning decisions and attributes, and its members stop when it is pruned. A trial placed on a device by `parallelism.devices` trains
//! there, whatever its config says. Each trial stores its seeds, device, wall time, environment
//! steps, steps/s, episodes and per-seed results as user attributes.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Instant;

use serde::Deserialize;
use serde_json::{json, Value};

use super::{BatchFeed, BuildContext, Objective};
use crate::error::{panic_message, InputError, Interrupted, TrialPruned};
use crate::rl::agent::batched::Halt;
use crate::rl::agent::Agent;
use crate::rl::batched::{batchable, train_batched, RoundObserver};
use crate::rl::train::{derive, train, Control, Evaluation, Observer, TrainConfig};
use crate::study::Trial;

/// How a trial's evaluation curve becomes its value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reduce {
    /// The last evaluation (rl-baselines3-zoo's choice).
    Last,
    /// The best evaluation.
    #[default]
    Best,
    /// The mean of the last `k` evaluations.
    MeanLastK,
}

/// The `objective: {type: rl, ...}` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlSpec {
    /// A trainer config file (relative to the study file) or an inline trainer config.
    pub config: Value,
    /// How the evaluation curve becomes the trial value.
    #[serde(default)]
    pub value: Reduce,
    /// Evaluations averaged by `mean_last_k`.
    #[serde(default = "default_k")]
    pub k: usize,
    /// Independent training runs per trial (their mean is reported).
    #[serde(default = "default_seeds")]
    pub seeds: usize,
    /// Train the seeds, and trials asked together, as one batched learner where the configs
    /// allow it.
    #[serde(default = "default_true")]
    pub batched: bool,
}

fn default_true() -> bool {
    true
}

fn default_k() -> usize {
    3
}
fn default_seeds() -> usize {
    1
}

/// Trains the config of each trial.
pub struct RlObjective {
    base: Value,
    spec: RlSpec,
    base_dir: PathBuf,
}

impl RlObjective {
    /// Reads and checks the base config.
    pub fn new(spec: &RlSpec, ctx: &BuildContext) -> anyhow::Result<Self> {
        if !(1..=crate::spec::MAX_JOBS).contains(&spec.seeds) {
            return Err(InputError::new(format!("objective.seeds must be from 1 to {}", crate::spec::MAX_JOBS)).into());
        }
        if spec.k == 0 {
            return Err(InputError::new("objective.k must be at least 1").into());
        }
        let (base, base_dir) = match &spec.config {
            Value::String(file) => {
                let path = ctx.base_dir.join(file);
                let cfg = TrainConfig::load(&path).map_err(|e| {
                    InputError::new(format!(
                        "objective.config: {e}; give a trainer config file (see configs/) or a mapping"
                    ))
                })?;
                (cfg.to_value(), crate::spec::folder_of(&path))
            }
            Value::Object(_) => {
                let cfg = TrainConfig::from_value(&spec.config)
                    .map_err(|e| InputError::new(format!("objective.config: {e}")))?;
                (cfg.to_value(), ctx.base_dir.clone())
            }
            other => {
                return Err(InputError::new(format!(
                    "objective.config must be a trainer config file name or mapping, got {other}"
                ))
                .into())
            }
        };
        Ok(RlObjective { base, spec: spec.clone(), base_dir })
    }
}

impl RlObjective {
    /// The trainer config of a trial: `config` read and checked, relative paths resolved, and
    /// the trial's device (if placed) in force.
    pub fn trial_config(&self, config: &Value, trial: &Trial) -> anyhow::Result<TrainConfig> {
        let mut cfg = TrainConfig::from_value(config).map_err(|e| anyhow::anyhow!("invalid trial config: {e}"))?;
        cfg.resolve_paths(&self.base_dir);
        if let Some(device) = trial.device() {
            cfg.device = device.to_string();
        }
        Ok(cfg)
    }

    /// The base config's budget in steps (0 for an episode budget).
    pub fn budget_steps(&self) -> u64 {
        TrainConfig::from_value(&self.base).ok().and_then(|c| c.budget.steps).unwrap_or(0)
    }

    /// The base config.
    pub fn base_config_value(&self) -> &Value {
        &self.base
    }

    /// The `objective:` section it was built from.
    pub fn spec(&self) -> &RlSpec {
        &self.spec
    }
}

/// Forwards one training run's evaluations to the trial's thread and waits for its verdict.
struct SeedObserver {
    index: usize,
    to_trial: mpsc::Sender<(usize, Option<Evaluation>)>,
    verdict: mpsc::Receiver<Control>,
}

impl Observer for SeedObserver {
    fn evaluation(&mut self, eval: &Evaluation, _agent: &dyn Agent) -> anyhow::Result<Control> {
        if self.to_trial.send((self.index, Some(eval.clone()))).is_err() {
            return Ok(Control::Stop);
        }
        Ok(self.verdict.recv().unwrap_or(Control::Stop))
    }
}

/// Tells the trial's thread that a seed stopped training when dropped: after it returned, and
/// also when it panicked, so that the other seeds' rounds never wait for it.
struct SeedDone {
    index: usize,
    to_trial: mpsc::Sender<(usize, Option<Evaluation>)>,
}

impl Drop for SeedDone {
    fn drop(&mut self) {
        let _ = self.to_trial.send((self.index, None));
    }
}

/// What one seed's run ended with.
struct SeedRun {
    seed: u64,
    steps: u64,
    episodes: u64,
    wall_s: f64,
    curve: Vec<f64>,
}

impl Objective for RlObjective {
    fn base_config(&self) -> &Value {
        &self.base
    }

    fn check(&self, config: &Value) -> Result<(), String> {
        TrainConfig::from_value(config).map(|_| ())
    }

    fn run_batch(&self, batch: Vec<(Trial, anyhow::Result<Value>)>, feed: &mut dyn BatchFeed) {
        if batch.len() == 1 || !self.spec.batched {
            for (mut trial, config) in batch {
                let result = config.and_then(|c| self.run_alone(&c, &mut trial));
                feed.tell(trial, result);
            }
            return;
        }
        // Trials that train alone, and groups of trials whose runs can share one learner.
        let mut alone: Vec<(Trial, Value)> = Vec::new();
        let mut groups: Vec<Vec<(Trial, Value, Vec<TrainConfig>)>> = Vec::new();
        for (mut trial, config) in batch {
            let prepared = config.and_then(|value| {
                let runs = self.prepare(&value, &mut trial)?;
                Ok((value, runs))
            });
            let (value, runs) = match prepared {
                Ok(p) => p,
                Err(e) => {
                    feed.tell(trial, Err(e));
                    continue;
                }
            };
            if batchable(&runs).is_err() {
                alone.push((trial, value));
                continue;
            }
            let fits = |g: &Vec<(Trial, Value, Vec<TrainConfig>)>| {
                let all: Vec<TrainConfig> = g.iter().flat_map(|(.., r)| r.iter()).chain(&runs).cloned().collect();
                batchable(&all).is_ok()
            };
            match groups.iter_mut().find(|g| fits(g)) {
                Some(g) => g.push((trial, value, runs)),
                None => groups.push(vec![(trial, value, runs)]),
            }
        }
        let mut later = Vec::new();
        for group in groups {
            if group.len() == 1 && group[0].2.len() == 1 {
                // One run: the agent alone is the same run, on its fastest path (from the
                // trial's own config: `run` resolves its paths once).
                let (trial, value, _) = group.into_iter().next().expect("one trial");
                alone.push((trial, value));
                continue;
            }
            if group[0].0.interrupted() {
                for (trial, ..) in group {
                    feed.tell(trial, Err(Interrupted.into()));
                }
                continue;
            }
            let group = group.into_iter().map(|(t, _, runs)| (Held::Owned(Box::new(t)), runs)).collect();
            later.extend(self.train_together(group, feed).0);
        }
        for (mut trial, value) in alone {
            let result = if trial.interrupted() { Err(Interrupted.into()) } else { self.run_alone(&value, &mut trial) };
            feed.tell(trial, result);
        }
        if !later.is_empty() {
            // Trials asked for freed slots that did not fit their group: a batch of their own.
            self.run_batch(later.into_iter().map(|(t, v)| (t, Ok(v))).collect(), feed);
        }
    }

    fn run(&self, config: &Value, trial: &mut Trial) -> anyhow::Result<f64> {
        let cfg = self.trial_config(config, trial)?;
        let runs = self.seed_runs(&cfg, trial)?;
        if runs.len() > 1 {
            let batched = if self.spec.batched { batchable(&runs) } else { Err("batched: false".into()) };
            trial.set_user_attr("batched", batched.as_ref().map_or_else(|why| json!(why), |_| json!(true)))?;
            if batched.is_ok() {
                let (_, mut results) = self.train_together(vec![(Held::Borrowed(trial), runs)], &mut NoMore);
                return results.remove(0).unwrap_or_else(|| Err(anyhow::anyhow!("the trial was not run")));
            }
        }
        let seeds: Vec<u64> = runs.iter().map(|r| r.seed).collect();
        let start = Instant::now();
        let (to_trial, from_seeds) = mpsc::channel();
        let mut verdicts = Vec::new();
        let mut curve = Vec::new();
        let mut pruned = false;
        // A storage error while reporting stops every seed and ends the trial with it.
        let mut failure: Option<anyhow::Error> = None;
        let runs: Vec<anyhow::Result<SeedRun>> = std::thread::scope(|scope| {
            let mut handles = Vec::new();
            for (index, &seed) in seeds.iter().enumerate() {
                let (tx, rx) = mpsc::channel();
                verdicts.push(tx);
                let done = SeedDone { index, to_trial: to_trial.clone() };
                let mut observer = SeedObserver { index, to_trial: to_trial.clone(), verdict: rx };
                let mut cfg = cfg.clone();
                cfg.seed = seed;
                handles.push(scope.spawn(move || -> anyhow::Result<SeedRun> {
                    let outcome = train(&cfg, &mut observer);
                    drop(done);
                    let outcome = outcome?;
                    Ok(SeedRun {
                        seed,
                        steps: outcome.steps,
                        episodes: outcome.episodes,
                        wall_s: outcome.wall_s,
                        curve: outcome.evaluations.iter().map(|e| e.mean).collect(),
                    })
                }));
            }
            drop(to_trial);
            // Each seed's evaluations arrive in order; a round takes the next one of every seed
            // still training, reports their mean and sends every one of them the verdict.
            let mut pending: Vec<std::collections::VecDeque<Evaluation>> = vec![Default::default(); seeds.len()];
            let mut finished = vec![false; seeds.len()];
            while let Ok((index, message)) = from_seeds.recv() {
                match message {
                    Some(eval) => pending[index].push_back(eval),
                    None => finished[index] = true,
                }
                while pending.iter().any(|p| !p.is_empty())
                    && pending.iter().zip(&finished).all(|(p, &f)| f || !p.is_empty())
                {
                    let round: Vec<(usize, Evaluation)> =
                        pending.iter_mut().enumerate().filter_map(|(i, p)| p.pop_front().map(|e| (i, e))).collect();
                    let mean = round.iter().map(|(_, e)| e.mean).sum::<f64>() / round.len() as f64;
                    let step = round.iter().map(|(_, e)| e.step).max().unwrap_or(0);
                    curve.push(mean);
                    let verdict = match trial.report(step as i64, mean).and_then(|_| trial.should_prune()) {
                        Ok(false) if !pruned => Control::Continue,
                        Ok(_) => {
                            pruned = true;
                            Control::Stop
                        }
                        Err(e) => {
                            failure.get_or_insert(e);
                            Control::Stop
                        }
                    };
                    for (i, _) in &round {
                        let _ = verdicts[*i].send(verdict);
                    }
                }
            }
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|p| Err(anyhow::anyhow!("training panicked: {}", panic_message(p.as_ref()))))
                })
                .collect()
        });
        if let Some(e) = failure {
            return Err(e);
        }
        let runs: Vec<SeedRun> = runs.into_iter().collect::<anyhow::Result<_>>()?;
        let wall_s = start.elapsed().as_secs_f64();
        self.finish(trial, &runs, wall_s, &curve, pruned)
    }
}

impl RlObjective {
    /// [`Objective::run`] of one trial of a batch, a panic failing only that trial.
    fn run_alone(&self, config: &Value, trial: &mut Trial) -> anyhow::Result<f64> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(config, trial)))
            .unwrap_or_else(|p| Err(anyhow::anyhow!("the objective panicked: {}", panic_message(p.as_ref()))))
    }

    /// Stores a trial's run attributes and reduces its averaged curve to its value.
    fn finish(
        &self,
        trial: &mut Trial,
        runs: &[SeedRun],
        wall_s: f64,
        curve: &[f64],
        pruned: bool,
    ) -> anyhow::Result<f64> {
        let steps: u64 = runs.iter().map(|r| r.steps).sum();
        trial.set_user_attr("wall_s", json!(wall_s))?;
        trial.set_user_attr("env_steps", json!(steps))?;
        trial.set_user_attr("steps_per_s", json!(steps as f64 / wall_s.max(1e-9)))?;
        trial.set_user_attr("episodes", json!(runs.iter().map(|r| r.episodes).sum::<u64>()))?;
        let per_seed: Vec<Value> = runs
            .iter()
            .map(|r| {
                json!({"seed": r.seed, "steps": r.steps, "episodes": r.episodes, "wall_s": r.wall_s,
                       "last": r.curve.last(), "best": r.curve.iter().copied().fold(f64::NEG_INFINITY, f64::max)})
            })
            .collect();
        trial.set_user_attr("per_seed", json!(per_seed))?;
        if pruned {
            return Err(TrialPruned.into());
        }
        if curve.is_empty() {
            anyhow::bail!("training ended without an evaluation");
        }
        Ok(match self.spec.value {
            Reduce::Last => *curve.last().unwrap(),
            Reduce::Best => curve.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Reduce::MeanLastK => {
                let k = self.spec.k.min(curve.len());
                curve[curve.len() - k..].iter().sum::<f64>() / k as f64
            }
        })
    }

    /// The runs of a trial's seeds (the trial's own seed first), recording them and the device.
    fn seed_runs(&self, cfg: &TrainConfig, trial: &mut Trial) -> anyhow::Result<Vec<TrainConfig>> {
        let seeds: Vec<u64> =
            (0..self.spec.seeds).map(|i| if i == 0 { trial.seed() } else { derive(trial.seed(), i as u64) }).collect();
        trial.set_user_attr("seeds", json!(seeds))?;
        trial.set_user_attr("device", json!(cfg.device))?;
        Ok(seeds
            .into_iter()
            .map(|seed| {
                let mut c = cfg.clone();
                c.seed = seed;
                c
            })
            .collect())
    }

    /// The runs of a trial's config, one per seed (checked, its seeds and device recorded).
    fn prepare(&self, value: &Value, trial: &mut Trial) -> anyhow::Result<Vec<TrainConfig>> {
        let cfg = self.trial_config(value, trial)?;
        self.seed_runs(&cfg, trial)
    }

    /// Trains the trials of `group` (their seeds' runs batchable together) as one batched
    /// learner, telling `feed` each owned trial's outcome as its last member ends, and giving
    /// the slots of ended trials to the next trials `feed` has. Returns the trials asked for
    /// freed slots that could not join the learner (a different shape), with their configs, and
    /// the outcomes of the borrowed trials of `group` (`None` for the owned ones, told).
    #[allow(clippy::type_complexity)]
    fn train_together<'t>(
        &self,
        group: Vec<(Held<'t>, Vec<TrainConfig>)>,
        feed: &mut dyn BatchFeed,
    ) -> (Vec<(Trial, Value)>, Vec<Option<anyhow::Result<f64>>>) {
        let members: Vec<TrainConfig> = group.iter().flat_map(|(_, runs)| runs.iter().cloned()).collect();
        let mut rounds = TrialRounds {
            objective: self,
            feed,
            lead: members[0].clone(),
            slots: members.len(),
            owners: Vec::new(),
            trials: Vec::new(),
            later: Vec::new(),
            interrupted: false,
            failed_report: false,
        };
        let given = group.len();
        for (trial, runs) in group {
            rounds.join(trial, runs.len(), 0);
        }
        // A panic in training fails the trials with its message, as a seed's thread would.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| train_batched(&members, &mut rounds)))
            .unwrap_or_else(|p| Err(anyhow::anyhow!("training panicked: {}", panic_message(p.as_ref()))));
        let error = outcome.err();
        let message = error.as_ref().map(|e| format!("{e:#}"));
        let mut first = error;
        for o in 0..rounds.trials.len() {
            if rounds.trials[o].trial.is_none() || rounds.trials[o].result.is_some() {
                continue;
            }
            // Training ended with an error before this trial's members did: a storage error met
            // reporting outranks it.
            let result = match rounds.trials[o].error.take() {
                Some(storage) => Err(storage),
                None => Err(first.take().unwrap_or_else(|| {
                    anyhow::anyhow!("{}", message.as_deref().unwrap_or("training ended without this trial's outcome"))
                })),
            };
            rounds.settle(o, result);
        }
        let results = rounds.trials.iter_mut().take(given).map(|slot| slot.result.take()).collect();
        (rounds.later, results)
    }
}

/// A trial of a batched learner: owned (its outcome is told to the feed) or borrowed from
/// [`Objective::run`] (its outcome is returned).
enum Held<'t> {
    Owned(Box<Trial>),
    Borrowed(&'t mut Trial),
}

impl Held<'_> {
    fn get(&mut self) -> &mut Trial {
        match self {
            Held::Owned(t) => t,
            Held::Borrowed(t) => t,
        }
    }
}

/// The feed of a lone trial: nothing more to ask, nothing told (its trial is borrowed).
struct NoMore;

impl BatchFeed for NoMore {
    fn more(&mut self) -> Option<(Trial, anyhow::Result<Value>)> {
        None
    }

    fn tell(&mut self, _trial: Trial, _result: anyhow::Result<f64>) {
        unreachable!("a lone trial is borrowed: its outcome is returned, not told")
    }
}

/// One trial of a batched learner: its members' curve and outcomes so far.
struct TrialSlot<'t> {
    /// `None` once its outcome is told (owned) or settled (borrowed).
    trial: Option<Held<'t>>,
    /// A borrowed trial's outcome.
    result: Option<anyhow::Result<f64>>,
    /// Its members still training.
    remaining: usize,
    outcomes: Vec<crate::rl::batched::MemberOutcome>,
    curve: Vec<f64>,
    pruned: bool,
    /// A storage error met reporting for it (it stops the whole group).
    error: Option<anyhow::Error>,
    joined: Instant,
    /// The learner's step when it joined (0, or the step at which it took a freed slot).
    joined_step: u64,
}

/// Reports the evaluation rounds of the trials trained in one batched learner, tells each
/// trial's outcome as it ends, and brings the next trials into freed slots.
struct TrialRounds<'o, 'f, 't> {
    objective: &'o RlObjective,
    feed: &'f mut dyn BatchFeed,
    /// The learner's first run: new trials must be batchable with it.
    lead: TrainConfig,
    /// The learner's member count when it started.
    slots: usize,
    /// Each run's trial (index into `trials`), runs in the learner's order of arrival.
    owners: Vec<usize>,
    trials: Vec<TrialSlot<'t>>,
    /// Trials asked for freed slots that could not join.
    later: Vec<(Trial, Value)>,
    /// The run is stopping (Ctrl-C): every member stops and every trial goes back to the queue.
    interrupted: bool,
    /// A trial met a storage error: the group stops, the others are re-queued.
    failed_report: bool,
}

impl<'t> TrialRounds<'_, '_, 't> {
    /// Adds `trial`, whose `members` runs come next in the learner's order, joining at the
    /// learner's step `step`.
    fn join(&mut self, trial: Held<'t>, members: usize, step: u64) {
        self.owners.extend(std::iter::repeat_n(self.trials.len(), members));
        self.trials.push(TrialSlot {
            trial: Some(trial),
            result: None,
            remaining: members,
            outcomes: Vec::with_capacity(members),
            curve: Vec::new(),
            pruned: false,
            error: None,
            joined: Instant::now(),
            joined_step: step,
        });
    }

    /// The outcome of trial `o`, whose members have all ended.
    fn result(&mut self, o: usize) -> anyhow::Result<f64> {
        let slot = &mut self.trials[o];
        if let Some(e) = slot.error.take() {
            return Err(e);
        }
        if self.interrupted || self.failed_report {
            // The run is stopping, or another trial of the group met a storage error and
            // stopped the group: this one was cut short, not at fault, and is re-queued.
            return Err(Interrupted.into());
        }
        if let Some(Halt::Failed(why)) =
            slot.outcomes.iter().find_map(|m| m.halt.as_ref().filter(|h| matches!(h, Halt::Failed(_))))
        {
            return Err(anyhow::anyhow!("{why}"));
        }
        let wall_s = slot.joined.elapsed().as_secs_f64();
        let seeds: Vec<SeedRun> = slot
            .outcomes
            .iter()
            .map(|m| SeedRun {
                seed: m.seed,
                steps: m.steps,
                episodes: m.episodes,
                wall_s,
                curve: m.evaluations.iter().map(|e| e.mean).collect(),
            })
            .collect();
        let trial = slot.trial.as_mut().expect("told once").get();
        trial.set_user_attr("batched", json!(true))?;
        trial.set_user_attr("batch_members", json!(self.slots))?;
        trial.set_user_attr("batch_joined_step", json!(slot.joined_step))?;
        self.objective.finish(trial, &seeds, wall_s, &slot.curve, slot.pruned)
    }

    /// Trial `o` ended with `result`: told to the feed (owned) or kept (borrowed).
    fn settle(&mut self, o: usize, result: anyhow::Result<f64>) {
        match self.trials[o].trial.take().expect("a trial settles once") {
            Held::Owned(trial) => self.feed.tell(*trial, result),
            Held::Borrowed(trial) => {
                self.trials[o].result = Some(result);
                self.trials[o].trial = Some(Held::Borrowed(trial));
            }
        }
    }
}

impl RoundObserver for TrialRounds<'_, '_, '_> {
    fn round(&mut self, evals: &[(usize, Evaluation)]) -> anyhow::Result<Vec<Control>> {
        for o in 0..self.trials.len() {
            let mine: Vec<&Evaluation> = evals.iter().filter(|(m, _)| self.owners[*m] == o).map(|(_, e)| e).collect();
            if mine.is_empty() || self.failed_report {
                continue;
            }
            let mean = mine.iter().map(|e| e.mean).sum::<f64>() / mine.len() as f64;
            let step = mine.iter().map(|e| e.step).max().unwrap_or(0);
            let slot = &mut self.trials[o];
            slot.curve.push(mean);
            let Some(trial) = slot.trial.as_mut().map(Held::get) else { continue };
            match trial.report(step as i64, mean).and_then(|_| trial.should_prune()) {
                Ok(prune) => slot.pruned |= prune,
                Err(e) => {
                    slot.error = Some(e);
                    self.failed_report = true;
                }
            }
            if trial.interrupted() {
                self.interrupted = true;
            }
        }
        let abort = self.interrupted || self.failed_report;
        Ok(evals
            .iter()
            .map(|(m, _)| if abort || self.trials[self.owners[*m]].pruned { Control::Stop } else { Control::Continue })
            .collect())
    }

    fn finished(&mut self, member: usize, outcome: &crate::rl::batched::MemberOutcome) -> anyhow::Result<()> {
        let o = self.owners[member];
        let slot = &mut self.trials[o];
        slot.outcomes.push(outcome.clone());
        slot.remaining -= 1;
        if slot.remaining == 0 {
            let result = self.result(o);
            self.settle(o, result);
        }
        Ok(())
    }

    fn refill(&mut self, free: usize, step: u64) -> anyhow::Result<Vec<TrainConfig>> {
        let mut runs = Vec::new();
        let per_trial = self.objective.spec.seeds.max(1);
        while !(self.interrupted || self.failed_report) && free - runs.len() >= per_trial {
            let Some((mut trial, config)) = self.feed.more() else { break };
            let prepared = config.and_then(|value| {
                let seeds = self.objective.prepare(&value, &mut trial)?;
                Ok((value, seeds))
            });
            let (value, seeds) = match prepared {
                Ok(p) => p,
                Err(e) => {
                    self.feed.tell(trial, Err(e));
                    continue;
                }
            };
            let all: Vec<TrainConfig> = std::iter::once(self.lead.clone()).chain(seeds.iter().cloned()).collect();
            if batchable(&all).is_err() {
                // A different shape: it trains after this learner, and the slots stay free.
                self.later.push((trial, value));
                break;
            }
            self.join(Held::Owned(Box::new(trial)), seeds.len(), step);
            runs.extend(seeds);
        }
        Ok(runs)
    }
}
