//! Population-Based Training (Jaderberg et al. 2017) for the `rl` objective, with Ray Tune's
//! `PopulationBasedTraining` rules for exploit and explore, run synchronously (Ray's
//! `synch=True`; the paper's Appendix A.1): the population trains one interval, then every
//! member of the bottom quantile copies the learner of a random member of the top quantile and
//! perturbs its hyperparameters, and the next interval starts.
//!
//! ```yaml
//! scheduler:
//!   type: pbt
//!   population: 8               # members training at once
//!   interval: 5000              # environment steps between perturbations
//!   quantile_fraction: 0.25     # bottom / top share of the population (at most 0.5)
//!   resample_probability: 0.25  # a value is redrawn from the search space, else perturbed
//!   perturbation_factors: [0.8, 1.2]
//!   burn_in: 0                  # no perturbation before this many steps
//!   copy_replay: false          # exploit also copies the replay buffer
//! ```
//!
//! Storage: each member's segment between two perturbations is one ordinary trial (Optuna and
//! optuna-dashboard read it as such): its parameters are the hyperparameters in force, its
//! intermediate values the segment's evaluations (at global environment steps), its value the
//! last of them. User attributes `pbt_member`, `pbt_generation`, `pbt_parent` (the trial whose
//! checkpoint it started from), `pbt_start_step`, `pbt_end_step` and `pbt_checkpoint` give the
//! lineage. The driver keeps what it planned in the system attribute [`SEGMENT_KEY`], so a
//! study stopped at any point (Ctrl-C, `kill -9`) resumes where it was: finished segments
//! stay, their checkpoints are on disk, and the plan of the next generation is a pure function
//! of the last one's results and the study's seed.
//!
//! Segments run as enqueued trials on the executor's workers (`jobs`, `devices`), so heartbeats,
//! stale-trial recovery and Ctrl-C behave as in any study.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::distribution::Distribution;
use crate::error::{InputError, Interrupted};
use crate::executor::{run_study, RunOptions, RunSummary};
use crate::frozen::{Direction, FrozenTrial, TrialState};
use crate::objective::rl::RlObjective;
use crate::rl::record::write_atomic;
use crate::rl::state::State;
use crate::rl::train::{derive, Control, Evaluation, Observer, Resume, Trainer};
use crate::sampler::random::sample_uniform;
use crate::spec::ParamSpec;
use crate::study::{Study, Trial};

/// System attribute of a segment trial: its [`Segment`], as the driver planned it.
pub const SEGMENT_KEY: &str = "tune:pbt_segment";

/// The `scheduler: {type: pbt, ...}` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PbtConfig {
    /// Members trained at once.
    pub population: usize,
    /// Environment steps between perturbations.
    pub interval: u64,
    /// Share of the population in the bottom (and top) quantile, in `[0, 0.5]`.
    #[serde(default = "quarter")]
    pub quantile_fraction: f64,
    /// Probability that explore redraws a value from the search space.
    #[serde(default = "quarter")]
    pub resample_probability: f64,
    /// Factors a continuous value is multiplied by (one drawn at random).
    #[serde(default = "factors")]
    pub perturbation_factors: Vec<f64>,
    /// Steps before the first perturbation.
    #[serde(default)]
    pub burn_in: u64,
    /// Exploit also copies the chosen member's replay buffer (default: each keeps its own).
    #[serde(default)]
    pub copy_replay: bool,
}

fn quarter() -> f64 {
    0.25
}
fn factors() -> Vec<f64> {
    vec![0.8, 1.2]
}

impl PbtConfig {
    /// Checks the ranges; the message starts with the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if !(2..=crate::spec::MAX_JOBS).contains(&self.population) {
            return Err(format!(
                "population must be from 2 to {} (got {}): PBT needs members to compare",
                crate::spec::MAX_JOBS,
                self.population
            ));
        }
        if self.interval == 0 {
            return Err("interval must be at least 1 environment step".into());
        }
        if !(0.0..=0.5).contains(&self.quantile_fraction) {
            return Err(format!("quantile_fraction must be in [0, 0.5] (got {})", self.quantile_fraction));
        }
        if !(0.0..=1.0).contains(&self.resample_probability) {
            return Err(format!("resample_probability must be in [0, 1] (got {})", self.resample_probability));
        }
        if self.perturbation_factors.is_empty()
            || self.perturbation_factors.iter().any(|f| !(*f > 0.0 && f.is_finite()))
        {
            return Err(format!(
                "perturbation_factors must be a non-empty list of positive numbers (got {:?})",
                self.perturbation_factors
            ));
        }
        Ok(())
    }

    /// Generations (segments per member) for a budget of `steps`.
    pub fn generations(&self, steps: u64) -> u64 {
        steps.div_ceil(self.interval)
    }
}

/// What the driver planned for one trial: a member's training from `start_step` to `end_step`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// The member, `0..population`.
    pub member: usize,
    /// The generation, from 0.
    pub generation: u64,
    /// The first step.
    pub start_step: u64,
    /// The step it stops at (and checkpoints).
    pub end_step: u64,
    /// The member's seed (its environment, exploration and initial weights).
    pub seed: u64,
    /// The trial whose checkpoint gives the learner (network, target, optimizer); `None` for
    /// generation 0.
    pub parent: Option<i64>,
    /// The trial whose checkpoint gives the replay buffer.
    pub replay_from: Option<i64>,
    /// True when the learner came from another member (exploit).
    pub exploited: bool,
}

/// One member's outcome in a finished generation.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The member.
    pub member: usize,
    /// Its COMPLETE trial's number and value; `None` when the segment failed.
    pub result: Option<(i64, f64)>,
    /// The hyperparameters in force (user-facing values).
    pub params: BTreeMap<String, Value>,
}

/// The plan of one member for the next generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The member.
    pub member: usize,
    /// Its hyperparameters.
    pub params: BTreeMap<String, Value>,
    /// The trial whose learner it continues.
    pub parent: Option<i64>,
    /// The trial whose replay buffer it continues.
    pub replay_from: Option<i64>,
    /// The learner came from another member.
    pub exploited: bool,
}

/// The bottom and top quantiles of the members in `ranked` (sorted from worst to best), as
/// Ray's `_quantiles`: `ceil(n q)` each, at most `floor(n / 2)`; none for fewer than 2.
pub fn quantiles(ranked: &[usize], fraction: f64) -> (Vec<usize>, Vec<usize>) {
    let n = ranked.len();
    if n <= 1 {
        return (Vec::new(), Vec::new());
    }
    let mut k = (n as f64 * fraction).ceil() as usize;
    if k as f64 > n as f64 / 2.0 {
        k = n / 2;
    }
    (ranked[..k].to_vec(), ranked[n - k..].to_vec())
}

/// Ray's `_explore` for one parameter, kept inside the search space: a categorical moves to a
/// neighbouring choice (clamped at the ends) or, with `resample_probability`, is redrawn; a
/// number is redrawn with that probability, else multiplied by a random factor (integers cast
/// back, as Ray does), then clamped to its range and snapped to its grid.
pub fn explore_value(dist: &Distribution, value: &Value, cfg: &PbtConfig, rng: &mut StdRng) -> Value {
    match dist {
        Distribution::Categorical { choices } => {
            let current = dist.to_internal(value).ok().map(|i| i as usize);
            match current {
                Some(i) if rng.random::<f64>() >= cfg.resample_probability => {
                    let shift: i64 = if rng.random::<bool>() { 1 } else { -1 };
                    let j = (i as i64 + shift).clamp(0, choices.len() as i64 - 1) as usize;
                    choices[j].clone()
                }
                _ => dist.to_external(sample_uniform(dist, rng)),
            }
        }
        Distribution::Float { .. } | Distribution::Int { .. } => {
            let current = dist.to_internal(value).ok();
            let Some(x) = current.filter(|_| rng.random::<f64>() >= cfg.resample_probability) else {
                return dist.to_external(sample_uniform(dist, rng));
            };
            let factor = cfg.perturbation_factors[rng.random_range(0..cfg.perturbation_factors.len())];
            let mut y = x * factor;
            if matches!(dist, Distribution::Int { .. }) {
                y = y.trunc();
            }
            dist.to_external(snap(dist, y))
        }
    }
}

/// `x` clamped into the range of `dist` and rounded to its grid.
fn snap(dist: &Distribution, x: f64) -> f64 {
    match *dist {
        Distribution::Float { low, high, step, .. } => {
            let x = x.clamp(low, high);
            match step {
                Some(s) => (((x - low) / s).round() * s + low).clamp(low, high),
                None => x,
            }
        }
        Distribution::Int { low, high, step, .. } => {
            let x = x.clamp(low as f64, high as f64);
            let k = ((x - low as f64) / step as f64).round();
            (low as f64 + k * step as f64).clamp(low as f64, high as f64)
        }
        Distribution::Categorical { .. } => x,
    }
}

/// The initial population: each member's values drawn uniformly from the search space.
pub fn initial_plan(params: &[ParamSpec], cfg: &PbtConfig, seed: u64) -> Vec<Plan> {
    let mut rng = StdRng::seed_from_u64(derive(seed, 0x9B7_0000));
    (0..cfg.population)
        .map(|member| Plan {
            member,
            params: params
                .iter()
                .map(|p| (p.name.clone(), p.distribution.to_external(sample_uniform(&p.distribution, &mut rng))))
                .collect(),
            parent: None,
            replay_from: None,
            exploited: false,
        })
        .collect()
}

/// The plan of generation `generation` (starting at `start_step`) from the outcomes of the one
/// before, in member order. Failed members always exploit; before `burn_in`, nobody else does.
/// Deterministic in `(outcomes, seed, generation)`, so a resumed study plans the same.
pub fn next_plan(
    params: &[ParamSpec],
    cfg: &PbtConfig,
    direction: Direction,
    outcomes: &[Outcome],
    seed: u64,
    generation: u64,
    start_step: u64,
) -> anyhow::Result<Vec<Plan>> {
    let mut rng = StdRng::seed_from_u64(derive(seed, 0x9B7_0000 + generation));
    let score = |v: f64| if direction == Direction::Maximize { v } else { -v };
    let mut ranked: Vec<usize> = (0..outcomes.len()).filter(|&i| outcomes[i].result.is_some()).collect();
    if ranked.is_empty() {
        return Err(anyhow::anyhow!(
            "every member of PBT generation {} failed; `tune show` lists the reasons (a diverging loss: narrow the learning rate's range or set max_grad_norm; a write error: free space where the checkpoints go)",
            generation - 1
        ));
    }
    // Worst first; ties by member number, so the order never depends on the storage's.
    ranked.sort_by(|&a, &b| {
        let (va, vb) = (score(outcomes[a].result.unwrap().1), score(outcomes[b].result.unwrap().1));
        va.total_cmp(&vb).then(a.cmp(&b))
    });
    let (mut lower, mut upper) =
        if start_step >= cfg.burn_in { quantiles(&ranked, cfg.quantile_fraction) } else { (Vec::new(), Vec::new()) };
    if upper.is_empty() {
        // Failed members still need a learner: the best one there is.
        upper = vec![*ranked.last().unwrap()];
    }
    lower.extend((0..outcomes.len()).filter(|&i| outcomes[i].result.is_none()));
    let mut plans = Vec::with_capacity(outcomes.len());
    for (i, o) in outcomes.iter().enumerate() {
        let own = o.result.map(|(n, _)| n);
        if !lower.contains(&i) {
            plans.push(Plan {
                member: o.member,
                params: o.params.clone(),
                parent: own,
                replay_from: own,
                exploited: false,
            });
            continue;
        }
        let donor = &outcomes[upper[rng.random_range(0..upper.len())]];
        let donor_trial = donor.result.map(|(n, _)| n);
        let mut new = donor.params.clone();
        for p in params {
            if let Some(v) = donor.params.get(&p.name) {
                new.insert(p.name.clone(), explore_value(&p.distribution, v, cfg, &mut rng));
            }
        }
        plans.push(Plan {
            member: o.member,
            params: new,
            parent: donor_trial,
            replay_from: if cfg.copy_replay { donor_trial } else { own.or(donor_trial) },
            exploited: true,
        });
    }
    Ok(plans)
}

/// The segment of a trial, if it is one.
pub fn segment_of(t: &FrozenTrial) -> Option<Segment> {
    t.system_attrs.get(SEGMENT_KEY).and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// Where a study's checkpoints go: `<log_dir>/pbt/` (`tune-logs/<study>/pbt/` in the working
/// directory), unless `TUNE_CHECKPOINTS` names another folder; made absolute, as trials record it.
pub fn checkpoint_root(log_dir: &Path) -> PathBuf {
    let dir = match std::env::var_os("TUNE_CHECKPOINTS") {
        Some(dir) => PathBuf::from(dir),
        None => log_dir.join("pbt"),
    };
    std::path::absolute(&dir).unwrap_or(dir)
}

/// The checkpoint folder of trial `number`.
pub fn checkpoint_dir(root: &Path, number: i64) -> PathBuf {
    root.join(format!("trial-{number}"))
}

/// What a checkpoint folder records besides the tensors.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    step: u64,
    episode: u64,
    trial: i64,
    member: usize,
    generation: u64,
}

/// Runs one segment trial: resume the learner (and replay) its plan names, train to its end
/// step, report every evaluation, checkpoint, and return the last evaluation's mean.
pub fn run_segment(
    objective: &RlObjective,
    config: &Value,
    trial: &mut Trial,
    seg: &Segment,
    root: &Path,
) -> anyhow::Result<f64> {
    let mut cfg = objective.trial_config(config, trial)?;
    cfg.seed = seg.seed;
    let load = |number: Option<i64>, part: &str| -> anyhow::Result<Option<(State, Meta)>> {
        let Some(n) = number else { return Ok(None) };
        let dir = checkpoint_dir(root, n);
        let meta: Meta = serde_json::from_slice(
            &std::fs::read(dir.join("meta.json"))
                .with_context(|| format!("PBT checkpoint of trial {n} is missing ({}); was tune-logs/ moved or deleted? Set TUNE_CHECKPOINTS to its folder", dir.display()))?,
        )
        .with_context(|| format!("reading {}", dir.join("meta.json").display()))?;
        Ok(Some((State::load(&dir.join(format!("{part}.safetensors")))?, meta)))
    };
    let learner = load(seg.parent, "learner")?;
    let replay = load(seg.replay_from, "replay")?;
    let episode = learner.as_ref().map(|(_, m)| m.episode).unwrap_or(0);
    if let Some((_, m)) = &learner {
        anyhow::ensure!(
            m.step == seg.start_step,
            "checkpoint of trial {} is at step {}, not {}",
            m.trial,
            m.step,
            seg.start_step
        );
    }
    trial.set_user_attr("pbt_member", json!(seg.member))?;
    trial.set_user_attr("pbt_generation", json!(seg.generation))?;
    trial.set_user_attr("pbt_parent", json!(seg.parent))?;
    trial.set_user_attr("pbt_exploited", json!(seg.exploited))?;
    trial.set_user_attr("pbt_start_step", json!(seg.start_step))?;
    trial.set_user_attr("pbt_end_step", json!(seg.end_step))?;
    trial.set_user_attr("device", json!(cfg.device))?;
    let start = Instant::now();
    let mut trainer = Trainer::resume(
        &cfg,
        Resume {
            step: seg.start_step,
            episode,
            segment: seg.generation,
            learner: learner.as_ref().map(|(s, _)| s),
            replay: replay.as_ref().map(|(s, _)| s),
        },
    )?;
    let mut observer = Reporter { trial, error: None };
    let mut stopped = trainer.advance(seg.end_step, &mut observer)?;
    if !stopped {
        stopped = trainer.evaluate_if_due(&mut observer)?;
    }
    if let Some(e) = observer.error {
        return Err(e);
    }
    if stopped {
        return Err(Interrupted.into());
    }
    let (learner, replay) = trainer.checkpoint()?;
    let dir = checkpoint_dir(root, trial.number());
    write_checkpoint(
        &dir,
        &learner,
        &replay,
        &Meta {
            step: trainer.step(),
            episode: trainer.episode(),
            trial: trial.number(),
            member: seg.member,
            generation: seg.generation,
        },
    )?;
    let wall_s = start.elapsed().as_secs_f64();
    let steps = trainer.step() - seg.start_step;
    trial.set_user_attr("pbt_checkpoint", json!(dir.display().to_string()))?;
    trial.set_user_attr("wall_s", json!(wall_s))?;
    trial.set_user_attr("env_steps", json!(steps))?;
    trial.set_user_attr("steps_per_s", json!(steps as f64 / wall_s.max(1e-9)))?;
    let last = trainer.evaluations().last().map(|e| e.mean);
    last.ok_or_else(|| anyhow::anyhow!("the segment ended without an evaluation"))
}

/// Writes a checkpoint folder whole or not at all: into a temporary folder, then renamed.
fn write_checkpoint(dir: &Path, learner: &State, replay: &State, meta: &Meta) -> anyhow::Result<()> {
    let parent = dir.parent().expect("checkpoint folders have a parent");
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let tmp = parent.join(format!(".{}.tmp", dir.file_name().unwrap().to_string_lossy()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    learner.save(&tmp.join("learner.safetensors"))?;
    replay.save(&tmp.join("replay.safetensors"))?;
    write_atomic(&tmp.join("meta.json"), serde_json::to_string_pretty(meta)?.as_bytes())?;
    // A folder left by an attempt that died after writing it is replaced.
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).with_context(|| format!("cannot write {}", dir.display()))?;
    Ok(())
}

/// Reports a segment's evaluations as the trial's intermediate values; stops on Ctrl-C.
struct Reporter<'a> {
    trial: &'a mut Trial,
    error: Option<anyhow::Error>,
}

impl Observer for Reporter<'_> {
    fn evaluation(&mut self, eval: &Evaluation, _agent: &dyn crate::rl::agent::Agent) -> anyhow::Result<Control> {
        if let Err(e) = self.trial.report(eval.step as i64, eval.mean) {
            self.error = Some(e);
            return Ok(Control::Stop);
        }
        Ok(if self.trial.interrupted() { Control::Stop } else { Control::Continue })
    }
}

/// What [`run`] did.
#[derive(Debug, Default)]
pub struct PbtSummary {
    /// Summed over the generations this run worked on.
    pub run: RunSummary,
    /// True when every generation is done.
    pub finished: bool,
}

/// The members' state in one generation, read from the storage.
struct Generation {
    /// Per member: its outcome once settled (COMPLETE, or failed with no attempt pending).
    settled: Vec<Option<Outcome>>,
    /// Per member: a trial exists for it (in any state).
    planned: Vec<bool>,
    /// WAITING or RUNNING trials.
    pending: usize,
}

impl Generation {
    fn read(trials: &[Arc<FrozenTrial>], g: u64, population: usize) -> Generation {
        let mut complete: Vec<Option<Outcome>> = vec![None; population];
        let mut planned: Vec<Option<BTreeMap<String, Value>>> = vec![None; population];
        let mut pending = vec![false; population];
        for t in trials {
            let Some(seg) = segment_of(t) else { continue };
            // An attempt stopped by an interruption (Ctrl-C, a dead process) is not the member's
            // failure: its re-queued copy stands for it, and without one (retries used up) the
            // member is planned again, the same way.
            if seg.generation != g || seg.member >= population || t.interrupted() {
                continue;
            }
            let params = planned_params(t);
            match t.state {
                TrialState::Waiting | TrialState::Running => pending[seg.member] = true,
                TrialState::Complete => {
                    let result = Some((t.number, t.value.unwrap_or(f64::NAN)));
                    complete[seg.member] = Some(Outcome { member: seg.member, result, params: params.clone() });
                }
                _ => {}
            }
            planned[seg.member].get_or_insert(params);
        }
        let settled = (0..population)
            .map(|m| match (&complete[m], &planned[m]) {
                (Some(o), _) => Some(o.clone()),
                // Failed (a NaN loss, a panic): replaced at the next boundary.
                (None, Some(params)) if !pending[m] => {
                    Some(Outcome { member: m, result: None, params: params.clone() })
                }
                _ => None,
            })
            .collect();
        Generation {
            settled,
            planned: planned.iter().map(Option::is_some).collect(),
            pending: pending.iter().filter(|&&p| p).count(),
        }
    }

    fn outcomes(&self) -> Vec<Outcome> {
        self.settled
            .iter()
            .enumerate()
            .map(|(m, o)| o.clone().unwrap_or(Outcome { member: m, result: None, params: BTreeMap::new() }))
            .collect()
    }
}

/// Runs (or resumes) a PBT study to its last generation. `opts.n_trials` is ignored: the budget
/// is `population` x generations segments. `note` receives one line per finished generation.
#[allow(clippy::too_many_arguments)]
pub fn run(
    study: &Study,
    cfg: &PbtConfig,
    params: &[ParamSpec],
    objective: &RlObjective,
    opts: &RunOptions,
    root: &Path,
    seed: u64,
    mut note: impl FnMut(&str),
) -> anyhow::Result<PbtSummary> {
    let steps = objective.budget_steps();
    let generations = cfg.generations(steps);
    let start = Instant::now();
    let mut summary = PbtSummary::default();
    let member_seed = |m: usize| derive(seed, 0x9B7_1000 + m as u64);
    let mut waited_for = None;
    loop {
        let trials = study.trials()?;
        let mut g = trials.iter().filter_map(|t| segment_of(t)).map(|s| s.generation).max().unwrap_or(0);
        let mut gen = Generation::read(&trials, g, cfg.population);
        let done = gen.settled.iter().all(Option::is_some);
        if done && g + 1 >= generations {
            summary.finished = true;
            summary.run.elapsed = start.elapsed();
            return Ok(summary);
        }
        if done {
            let values: Vec<String> = gen
                .settled
                .iter()
                .flatten()
                .map(|o| match o.result {
                    Some((n, v)) => format!("#{n} {}", crate::cli::fmt_f64(Some(v))),
                    None => "failed".into(),
                })
                .collect();
            note(&format!(
                "PBT generation {} of {generations} done at step {}: {}",
                g + 1,
                ((g + 1) * cfg.interval).min(steps),
                values.join(", ")
            ));
            g += 1;
            gen = Generation::read(&trials, g, cfg.population);
        }
        // Plan the members without a trial (all of a new generation; after a crash while
        // enqueueing, the rest of it: the plan is the same whenever it is made).
        if gen.planned.iter().any(|p| !p) {
            let start_step = g * cfg.interval;
            let plans = if g == 0 {
                initial_plan(params, cfg, seed)
            } else {
                let prev = Generation::read(&trials, g - 1, cfg.population).outcomes();
                next_plan(params, cfg, study.direction(), &prev, seed, g, start_step)?
            };
            for plan in plans.into_iter().filter(|p| !gen.planned[p.member]) {
                let seg = Segment {
                    member: plan.member,
                    generation: g,
                    start_step,
                    end_step: ((g + 1) * cfg.interval).min(steps),
                    seed: member_seed(plan.member),
                    parent: plan.parent,
                    replay_from: plan.replay_from,
                    exploited: plan.exploited,
                };
                study.enqueue_with(&plan.params, &[(SEGMENT_KEY, serde_json::to_value(&seg)?)])?;
            }
            continue;
        }
        check_checkpoints(&trials, g, root)?;
        prune_checkpoints(&trials, g, root);
        if waited_for == Some(g) {
            // The workers returned with segments still pending: they are RUNNING in another
            // process whose heartbeats are fresh.
            return Err(InputError::new(format!(
                "PBT generation {g} has {} segment(s) running in another process; a PBT study is driven by one `tune run` at a time: wait for it, or stop it and run again",
                gen.pending
            ))
            .into());
        }
        let mut o = opts.clone();
        o.n_trials = None;
        o.enqueued_only = true;
        o.timeout = match opts.timeout {
            Some(t) if start.elapsed() >= t => return Ok(summary),
            Some(t) => Some(t - start.elapsed()),
            None => None,
        };
        let r = run_study(study, &o, |trial| {
            let seg = segment_of(trial.frozen()).ok_or_else(|| {
                anyhow::anyhow!("trial {} is not a PBT segment (was it enqueued by hand?)", trial.number())
            })?;
            let config = crate::spec::sample_config(params, objective.base_config_value(), trial)?;
            run_segment(objective, &config, trial, &seg, root)
        })?;
        let idle = r.complete + r.pruned + r.failed + r.recovered + r.interrupted_trials == 0;
        waited_for = idle.then_some(g);
        summary.run.complete += r.complete;
        summary.run.pruned += r.pruned;
        summary.run.failed += r.failed;
        summary.run.recovered += r.recovered;
        summary.run.interrupted_trials += r.interrupted_trials;
        summary.run.elapsed = start.elapsed();
        if r.interrupted || opts.timeout.is_some_and(|t| start.elapsed() >= t) {
            summary.run.interrupted = r.interrupted;
            return Ok(summary);
        }
    }
}

/// Refuses to run generation `g` when a checkpoint its segments start from is not under `root`
/// (the study resumed from another folder, or a wrong `TUNE_CHECKPOINTS`): the trials would
/// fail for a reason that is not theirs.
fn check_checkpoints(trials: &[Arc<FrozenTrial>], g: u64, root: &Path) -> anyhow::Result<()> {
    for (t, s) in segments(trials) {
        if s.generation != g || t.state.is_finished() {
            continue;
        }
        for n in [s.parent, s.replay_from].into_iter().flatten() {
            let dir = checkpoint_dir(root, n);
            if !dir.join("meta.json").exists() {
                return Err(InputError::new(format!(
                    "PBT generation {g} continues from the checkpoint of trial {n}, which is not in {}: run `tune run` from the folder the study started in (its checkpoints are in tune-logs/<study>/pbt/ there), or set TUNE_CHECKPOINTS to the folder that holds trial-{n}/",
                    root.display()
                ))
                .into());
            }
        }
    }
    Ok(())
}

/// Deletes the checkpoints of generations before `g - 1` (generation `g` starts from those of
/// `g - 1`, and nothing reads older ones: the lineage and the schedule live in the storage) and
/// folders left half-written by a crash. The last two generations' stay, the final members'
/// learners among them.
fn prune_checkpoints(trials: &[Arc<FrozenTrial>], g: u64, root: &Path) {
    for (t, s) in segments(trials) {
        if s.generation + 1 < g {
            let dir = checkpoint_dir(root, t.number);
            if dir.exists() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
    // Half-written folders of attempts that died (no segment runs while the driver is here).
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".trial-") && name.ends_with(".tmp") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Every segment trial of a study with its segment, by trial number.
pub fn segments(trials: &[Arc<FrozenTrial>]) -> Vec<(Arc<FrozenTrial>, Segment)> {
    trials.iter().filter_map(|t| segment_of(t).map(|s| (t.clone(), s))).collect()
}

/// The best COMPLETE segment of the latest generation that has one: the population's final
/// best member. `None` for a study that is not PBT or has no COMPLETE segment.
pub fn final_best(trials: &[Arc<FrozenTrial>], direction: Direction) -> Option<Arc<FrozenTrial>> {
    let segs = segments(trials);
    let complete = || segs.iter().filter(|(t, _)| t.state == TrialState::Complete && t.value.is_some());
    let last = complete().map(|(_, s)| s.generation).max()?;
    complete()
        .filter(|(_, s)| s.generation == last)
        .min_by(|(a, _), (b, _)| {
            direction
                .to_loss(a.value.unwrap())
                .total_cmp(&direction.to_loss(b.value.unwrap()))
                .then(a.number.cmp(&b.number))
        })
        .map(|(t, _)| t.clone())
}

/// The chain of segments that trained the learner of trial `last`: from generation 0, each the
/// parent (learner source) of the next.
pub fn chain(trials: &[Arc<FrozenTrial>], last: i64) -> Vec<(Arc<FrozenTrial>, Segment)> {
    let segs = segments(trials);
    let mut out = Vec::new();
    let mut next = Some(last);
    while let Some(n) = next {
        let Some((t, s)) = segs.iter().find(|(t, _)| t.number == n) else { break };
        next = s.parent;
        out.push((t.clone(), s.clone()));
        if out.len() > segs.len() {
            break;
        }
    }
    out.reverse();
    out
}

/// One segment of a schedule: its first step, the hyperparameters in force, its trial's number
/// and value.
pub type ScheduleRow = (u64, BTreeMap<String, Value>, i64, Option<f64>);

/// The hyperparameters in force along a chain, one row per segment.
pub fn schedule(chain: &[(Arc<FrozenTrial>, Segment)]) -> Vec<ScheduleRow> {
    chain.iter().map(|(t, s)| (s.start_step, planned_params(t), t.number, t.value)).collect()
}

/// The hyperparameters the driver planned for a segment trial (its fixed parameters as
/// enqueued), else those it stored.
fn planned_params(t: &FrozenTrial) -> BTreeMap<String, Value> {
    t.system_attrs
        .get(crate::frozen::FIXED_PARAMS_KEY)
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_else(|| t.external_params())
}

/// `base` (a trainer config) with a chain's schedule written in: the first segment's values at
/// their dotted paths, then a `schedule:` entry at each later segment's first step with the
/// values that changed there (maybe none: the entry still starts a segment, as each generation
/// did), and the first segment's member seed. `tune train` of the result trains one agent under
/// the hyperparameter schedule the population found, in the same segments; the weights the
/// chain copied between members and their replay buffers are not replayed.
pub fn export_config(mut base: Value, chain: &[(Arc<FrozenTrial>, Segment)]) -> anyhow::Result<Value> {
    let steps = schedule(chain);
    let Some((_, first, _, _)) = steps.first() else {
        anyhow::bail!("the PBT chain is empty");
    };
    for (name, v) in first {
        crate::spec::path::set(&mut base, name, v.clone()).map_err(|e| crate::input_err!("parameter `{name}`: {e}"))?;
    }
    let mut entries = Vec::new();
    let mut current = first.clone();
    for (step, params, _, _) in &steps[1..] {
        let changed: serde_json::Map<String, Value> =
            params.iter().filter(|(k, v)| current.get(*k) != Some(*v)).map(|(k, v)| (k.clone(), v.clone())).collect();
        entries.push(json!({"step": step, "set": changed}));
        current = params.clone();
    }
    if let Some(map) = base.as_object_mut() {
        map.insert("seed".into(), json!(chain[0].1.seed));
        if entries.is_empty() {
            map.remove("schedule");
        } else {
            map.insert("schedule".into(), Value::Array(entries));
        }
    }
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PbtConfig {
        PbtConfig {
            population: 4,
            interval: 100,
            quantile_fraction: 0.25,
            resample_probability: 0.25,
            perturbation_factors: vec![0.8, 1.2],
            burn_in: 0,
            copy_replay: false,
        }
    }

    fn param(name: &str, d: Distribution) -> ParamSpec {
        ParamSpec { name: name.into(), distribution: d, when: Vec::new(), grid: None }
    }

    #[test]
    fn quantiles_follow_rays_rule() {
        let ranked: Vec<usize> = (0..8).collect();
        assert_eq!(quantiles(&ranked, 0.25), (vec![0, 1], vec![6, 7]));
        // ceil(3 * 0.5) = 2 > 3 / 2: floor(3 / 2) = 1.
        assert_eq!(quantiles(&[4, 5, 6], 0.5), (vec![4], vec![6]));
        assert_eq!(quantiles(&[4], 0.5), (vec![], vec![]));
        assert_eq!(quantiles(&ranked, 0.0), (vec![], vec![]));
        // ceil(5 * 0.25) = 2.
        assert_eq!(quantiles(&[0, 1, 2, 3, 4], 0.25), (vec![0, 1], vec![3, 4]));
    }

    #[test]
    fn explore_moves_categoricals_to_a_neighbour_and_scales_numbers_within_their_range() {
        let mut c = cfg();
        c.resample_probability = 0.0;
        let mut rng = StdRng::seed_from_u64(1);
        let cat = Distribution::categorical(vec![json!(32), json!(64), json!(128), json!(256)]).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            seen.insert(explore_value(&cat, &json!(64), &c, &mut rng).as_i64().unwrap());
        }
        assert_eq!(seen, [32, 128].into_iter().collect());
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            seen.insert(explore_value(&cat, &json!(32), &c, &mut rng).as_i64().unwrap());
        }
        assert_eq!(seen, [32, 64].into_iter().collect(), "clamped at the first choice");

        let lr = Distribution::float(1e-4, 1e-2, true, None).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            seen.insert(format!("{:.6}", explore_value(&lr, &json!(0.001), &c, &mut rng).as_f64().unwrap()));
        }
        assert_eq!(seen, ["0.000800", "0.001200"].into_iter().map(String::from).collect());
        for _ in 0..50 {
            let v = explore_value(&lr, &json!(0.0099), &c, &mut rng).as_f64().unwrap();
            assert!(v == 0.0099 * 0.8 || v == 1e-2, "kept inside the range: {v}");
        }
        // Integers are cast back as Ray does (int(3 * 1.2) = 3), then kept on their grid.
        let every = Distribution::int(1, 1000, false, 1).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            seen.insert(explore_value(&every, &json!(10), &c, &mut rng).as_i64().unwrap());
        }
        assert_eq!(seen, [8, 12].into_iter().collect());
        assert!((0..50).all(|_| explore_value(&every, &json!(1), &c, &mut rng) == json!(1)));
        let stepped = Distribution::float(0.0, 1.0, false, Some(0.1)).unwrap();
        for _ in 0..50 {
            let v = explore_value(&stepped, &json!(0.5), &c, &mut rng).as_f64().unwrap();
            assert!((v - 0.4).abs() < 1e-9 || (v - 0.6).abs() < 1e-9, "{v}");
        }
        // Resampling always: anywhere in the range.
        c.resample_probability = 1.0;
        let values: Vec<f64> =
            (0..200).map(|_| explore_value(&lr, &json!(0.001), &c, &mut rng).as_f64().unwrap()).collect();
        assert!(values.iter().all(|v| (1e-4..=1e-2).contains(v)));
        assert!(values.iter().any(|&v| v < 5e-4) && values.iter().any(|&v| v > 5e-3));
    }

    fn outcomes(values: &[Option<f64>]) -> Vec<Outcome> {
        values
            .iter()
            .enumerate()
            .map(|(m, v)| Outcome {
                member: m,
                result: v.map(|v| (10 + m as i64, v)),
                params: [("agent.lr".to_string(), json!(0.001 * (m + 1) as f64))].into_iter().collect(),
            })
            .collect()
    }

    /// `next_plan` for generation 1 (from step `start`) after members scored `values`.
    fn plan(c: &PbtConfig, direction: Direction, values: &[Option<f64>], start: u64) -> anyhow::Result<Vec<Plan>> {
        let params = [param("agent.lr", Distribution::float(1e-4, 1e-1, true, None).unwrap())];
        next_plan(&params, c, direction, &outcomes(values), 7, 1, start)
    }

    #[test]
    fn the_bottom_quantile_takes_a_top_learner_and_explores_its_values() {
        let mut c = cfg();
        c.resample_probability = 0.0;
        let plans = plan(&c, Direction::Maximize, &[Some(1.0), Some(4.0), Some(3.0), Some(2.0)], 100).unwrap();
        // ceil(4 * 0.25) = 1 each: member 0 (worst) copies member 1 (best).
        assert_eq!(plans[0].parent, Some(11));
        assert!(plans[0].exploited);
        assert_eq!(plans[0].replay_from, Some(10), "the member keeps its own replay buffer");
        let lr = plans[0].params["agent.lr"].as_f64().unwrap();
        assert!((lr - 0.002 * 0.8).abs() < 1e-12 || (lr - 0.002 * 1.2).abs() < 1e-12, "{lr}");
        for (m, plan) in plans.iter().enumerate().skip(1) {
            assert_eq!((plan.parent, plan.exploited), (Some(10 + m as i64), false));
            assert_eq!(plan.params, outcomes(&[None; 4])[m].params);
        }
        // Minimizing, member 1 is the worst and copies member 0.
        let plans = plan(&c, Direction::Minimize, &[Some(1.0), Some(4.0), Some(3.0), Some(2.0)], 100).unwrap();
        assert_eq!((plans[1].parent, plans[1].exploited), (Some(10), true));
        // The same inputs plan the same generation (a resumed study re-plans it so).
        let again = plan(&c, Direction::Minimize, &[Some(1.0), Some(4.0), Some(3.0), Some(2.0)], 100).unwrap();
        assert_eq!(plans, again);
        c.copy_replay = true;
        let plans = plan(&c, Direction::Maximize, &[Some(1.0), Some(4.0), Some(3.0), Some(2.0)], 100).unwrap();
        assert_eq!(plans[0].replay_from, Some(11));
    }

    #[test]
    fn failed_members_always_exploit_and_burn_in_holds_the_rest() {
        let params = [param("agent.lr", Distribution::float(1e-4, 1e-1, true, None).unwrap())];
        let mut c = cfg();
        c.burn_in = 500;
        let plans = plan(&c, Direction::Maximize, &[Some(1.0), None, Some(3.0), Some(2.0)], 100).unwrap();
        assert!(plans[1].exploited);
        assert_eq!(plans[1].parent, Some(12), "the failed member takes the best learner");
        assert_eq!(plans[1].replay_from, Some(12), "it has no replay of its own to keep");
        assert!(!plans[0].exploited && !plans[2].exploited && !plans[3].exploited, "burn-in: nobody else moves");
        // After burn-in the worst valid member exploits too.
        let plans = plan(&c, Direction::Maximize, &[Some(1.0), None, Some(3.0), Some(2.0)], 500).unwrap();
        assert!(plans[0].exploited && plans[1].exploited && !plans[2].exploited);
        assert!(next_plan(&params, &c, Direction::Maximize, &outcomes(&[None, None, None, None]), 7, 3, 300)
            .unwrap_err()
            .to_string()
            .contains("every member of PBT generation 2 failed"));
    }

    #[test]
    fn the_initial_population_is_drawn_from_the_space_and_reproducible() {
        let params = [
            param("agent.lr", Distribution::float(1e-4, 1e-1, true, None).unwrap()),
            param("agent.batch_size", Distribution::categorical(vec![json!(32), json!(64)]).unwrap()),
        ];
        let a = initial_plan(&params, &cfg(), 3);
        assert_eq!(a, initial_plan(&params, &cfg(), 3));
        assert_ne!(a, initial_plan(&params, &cfg(), 4));
        assert_eq!(a.len(), 4);
        for p in &a {
            assert!((1e-4..=1e-1).contains(&p.params["agent.lr"].as_f64().unwrap()));
            assert!(p.parent.is_none() && !p.exploited);
        }
    }

    fn trial(number: i64, member: usize, state: TrialState, interrupted: bool) -> Arc<FrozenTrial> {
        let mut t = FrozenTrial::new(number, number, state);
        let seg = Segment {
            member,
            generation: 1,
            start_step: 100,
            end_step: 200,
            seed: 0,
            parent: Some(0),
            replay_from: Some(0),
            exploited: false,
        };
        t.system_attrs.insert(SEGMENT_KEY.into(), serde_json::to_value(&seg).unwrap());
        t.system_attrs.insert(crate::frozen::FIXED_PARAMS_KEY.into(), json!({"agent.lr": 0.001}));
        if interrupted {
            t.system_attrs.insert(crate::frozen::INTERRUPTED_KEY.into(), json!(true));
        }
        if state == TrialState::Complete {
            t.value = Some(number as f64);
        }
        Arc::new(t)
    }

    #[test]
    fn an_interrupted_attempt_is_planned_again_and_a_failed_one_settles_the_member() {
        let trials = vec![
            trial(10, 0, TrialState::Fail, true),  // killed, retries used up: planned again
            trial(11, 1, TrialState::Fail, false), // diverged: failed
            trial(12, 2, TrialState::Fail, true),  // killed, then re-queued and completed
            trial(13, 2, TrialState::Complete, false),
            trial(14, 3, TrialState::Fail, true), // killed and re-queued: pending
            trial(15, 3, TrialState::Waiting, false),
        ];
        let g = Generation::read(&trials, 1, 4);
        assert_eq!(g.planned, vec![false, true, true, true]);
        assert_eq!(g.pending, 1);
        assert!(g.settled[0].is_none() && g.settled[3].is_none());
        assert_eq!(g.settled[1].as_ref().unwrap().result, None);
        assert_eq!(g.settled[2].as_ref().unwrap().result, Some((13, 13.0)));
        assert_eq!(g.settled[1].as_ref().unwrap().params["agent.lr"], json!(0.001));
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = cfg();
        c.population = 1;
        assert!(c.validate().unwrap_err().starts_with("population"));
        let mut c = cfg();
        c.quantile_fraction = 0.6;
        assert!(c.validate().unwrap_err().starts_with("quantile_fraction"));
        let mut c = cfg();
        c.perturbation_factors = vec![];
        assert!(c.validate().unwrap_err().starts_with("perturbation_factors"));
        assert_eq!(cfg().generations(450), 5);
    }
}
