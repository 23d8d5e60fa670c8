//! The batched trainer: runs of trainer configs that differ only in seeds and scalar
//! hyperparameters, trained in lockstep by one [`BatchedDqn`] (a trial's `seeds: k`).
//!
//! Member `i` is the run [`crate::rl::train::train`] would make of `cfgs[i]`, stream for
//! stream: the same environment seeds, the same action-sampling stream (which also samples its
//! replay batches), the same evaluation seeds and the same initial weights, so that with the
//! same seed it makes the same updates (`tests/batched.rs` checks it). Every step, each live
//! member picks its action (the greedy ones from one forward pass for all), steps its own
//! environment and stores the transition in its own buffer; then the group takes its gradient
//! phase. Evaluations run all members' evaluation episodes side by side, one forward pass per
//! step, and go to a [`RoundObserver`] together, which may stop any member.
//!
//! With `env.num_envs: N` each member steps N copies as [`crate::rl::train::Trainer`] does:
//! all copies' actions first (one forward pass per copy for all members), then copy by copy a
//! step of every member, its transition and the group's gates at that step count.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::agent::batched::{group_key, BatchedDqn, Halt};
use super::agent::{AgentConfig, DqnConfig, Exploration, Progress};
use super::env::{Env, ObsBuf, VecEnv};
use super::train::{derive, mean_std, next_boundary, parse_device, Control, Evaluation, TrainConfig};
use crate::error::InputError;

/// Receives each evaluation round of a batched run.
pub trait RoundObserver {
    /// The evaluations `(member, evaluation)` of the members still training (`member`: the
    /// index of its run in the runs given), all at the same step; returns whether each goes on,
    /// in the same order.
    fn round(&mut self, evals: &[(usize, Evaluation)]) -> anyhow::Result<Vec<Control>>;

    /// Run `member` (its index among the runs: those given, then those `refill` returned, in
    /// order) ended: its budget ran out, the observer stopped it, or it failed. Called once per
    /// run, as soon as it ends.
    fn finished(&mut self, _member: usize, _outcome: &MemberOutcome) -> anyhow::Result<()> {
        Ok(())
    }

    /// Runs to start in `free` slots that ended members left, asked after an evaluation round at
    /// the learner's step `step`: at most `free`, each batchable with the runs given. By
    /// default none, and the slots are dropped when the learner compacts.
    fn refill(&mut self, _free: usize, _step: u64) -> anyhow::Result<Vec<TrainConfig>> {
        Ok(Vec::new())
    }
}

/// How one member's run ended.
#[derive(Clone, Debug)]
pub struct MemberOutcome {
    /// Its seed.
    pub seed: u64,
    /// Environment steps it took.
    pub steps: u64,
    /// Episodes it completed.
    pub episodes: u64,
    /// Its evaluations, in order (steps are its own, counted from when it joined).
    pub evaluations: Vec<Evaluation>,
    /// Why it stopped before its budget (`None`: it ran to the end).
    pub halt: Option<Halt>,
}

/// The outcome of [`train_batched`].
#[derive(Debug)]
pub struct BatchOutcome {
    /// Each member's run.
    pub members: Vec<MemberOutcome>,
    /// Seconds spent.
    pub wall_s: f64,
    /// The learner, trained (to save a member's weights).
    pub learner: BatchedDqn,
    /// Each run's member index in `learner` (`None`: it stopped and was compacted away).
    pub slots: Vec<Option<usize>>,
}

/// Why `cfgs` cannot train as one batched learner (`Ok`: they can): they must be `dqn` runs
/// with a step budget on the same environment, evaluation, device and schedule-free config,
/// in a network and head the batched learner has, differing in nothing but seeds and the
/// scalars [`group_key`] leaves out.
pub fn batchable(cfgs: &[TrainConfig]) -> Result<(), String> {
    let first = cfgs.first().ok_or("no runs to batch")?;
    for cfg in cfgs {
        let AgentConfig::Dqn(dqn) = &cfg.agent else {
            return Err("only `dqn` agents train batched".into());
        };
        if cfg.budget.steps.is_none() {
            return Err("batched runs need a budget in steps".into());
        }
        if !cfg.schedule.is_empty() {
            return Err("runs with a `schedule:` are not batched yet".into());
        }
        let same = |a: &TrainConfig| {
            (a.env == first.env)
                && (a.budget == first.budget)
                && (a.eval == first.eval)
                && (a.device == first.device)
                && (a.threads == first.threads)
        };
        let AgentConfig::Dqn(lead) = &first.agent else { unreachable!("checked above") };
        if !same(cfg) || group_key(dqn) != group_key(lead) {
            return Err("the runs differ in more than seeds and scalar hyperparameters".into());
        }
    }
    Ok(())
}

/// One member's environments, streams and counters.
struct Member {
    /// Its index among the runs: those given, then those [`RoundObserver::refill`] returned.
    index: usize,
    seed: u64,
    /// Its environment copies.
    envs: VecEnv,
    eval_env: Box<dyn Env>,
    eval_obs: ObsBuf,
    eval_seed: u64,
    exploration: Exploration,
    episode: u64,
    steps: u64,
    evaluations: Vec<Evaluation>,
    /// Evaluation episodes done, their returns and the one in progress.
    eval_done: u32,
    eval_returns: Vec<f64>,
    eval_return: f64,
    /// Why it stopped before its budget.
    halt: Option<Halt>,
    /// It ran its budget, or stopped: it learns no more and its outcome is out.
    over: bool,
}

impl Member {
    /// The member of run `index` with config `cfg`, joining at step `start`.
    fn new(index: usize, cfg: &TrainConfig) -> anyhow::Result<Self> {
        let copies = (0..cfg.env.num_envs).map(|_| cfg.env.make()).collect::<anyhow::Result<_>>()?;
        let envs = VecEnv::new(copies, cfg.seed);
        Ok(Member {
            index,
            seed: cfg.seed,
            eval_obs: ObsBuf::new(&envs.observation_space()),
            envs,
            eval_env: cfg.env.make()?,
            eval_seed: derive(cfg.seed, 2),
            exploration: cfg.agent.exploration().clone(),
            episode: 0,
            steps: 0,
            evaluations: Vec::new(),
            eval_done: 0,
            eval_returns: Vec::with_capacity(cfg.eval.episodes as usize),
            eval_return: 0.0,
            halt: None,
            over: false,
        })
    }

    /// Its outcome so far (its evaluations move out).
    fn outcome(&mut self) -> MemberOutcome {
        MemberOutcome {
            seed: self.seed,
            steps: self.steps,
            episodes: self.episode,
            evaluations: std::mem::take(&mut self.evaluations),
            halt: self.halt.clone(),
        }
    }
}

/// The DQN config of a run that [`batchable`] accepted.
fn dqn_of(cfg: &TrainConfig) -> &DqnConfig {
    let AgentConfig::Dqn(dqn) = &cfg.agent else { unreachable!("batchable checked it") };
    dqn
}

/// Trains the runs of `cfgs` (see [`batchable`]) as one batched learner.
///
/// Each member runs its own budget of steps from the step it joined, evaluating every
/// `eval.every` of its own steps and at its end. A member that ends (its budget, a stop, a
/// failure) is handed to [`RoundObserver::finished`] at once; after an evaluation round that
/// left slots free, [`RoundObserver::refill`] may give runs to start in them (a trial batch's
/// next trials), which then train from their step 0 beside the others.
pub fn train_batched(cfgs: &[TrainConfig], observer: &mut dyn RoundObserver) -> anyhow::Result<BatchOutcome> {
    batchable(cfgs).map_err(|e| InputError::new(format!("cannot train these runs batched: {e}")))?;
    for cfg in cfgs {
        cfg.validate().map_err(InputError::new)?;
    }
    let first = &cfgs[0];
    tch::set_num_threads(first.threads as i32);
    let start = Instant::now();
    crate::fault::maybe_panic("train.panic");
    if crate::fault::hit("train.diverge") {
        anyhow::bail!("training diverged: the loss became NaN (injected fault train.diverge)");
    }
    let device = parse_device(&first.device).map_err(InputError::new)?;
    let n_copies = first.env.num_envs as usize;
    let mut members = Vec::with_capacity(cfgs.len());
    for (index, cfg) in cfgs.iter().enumerate() {
        members.push(Member::new(index, cfg)?);
    }
    let mut rngs: Vec<StdRng> = cfgs.iter().map(|c| StdRng::seed_from_u64(derive(c.seed, 1))).collect();
    let dqns: Vec<DqnConfig> = cfgs.iter().map(|c| dqn_of(c).clone()).collect();
    let space = members[0].eval_env.observation_space();
    let actions = members[0].eval_env.action_space();
    let seeds: Vec<u64> = cfgs.iter().map(|c| c.seed).collect();
    let mut learner = BatchedDqn::new(&dqns, &seeds, &space, actions, device, n_copies)?;
    let steps = first.budget.steps.expect("batchable checked it");
    let every = first.eval.every;
    let fraction = |local: u64| first.budget.fraction(local, 0);
    // Every run's outcome, by run index, as each ends.
    let mut outcomes: Vec<Option<MemberOutcome>> = (0..cfgs.len()).map(|_| None).collect();
    let mut scratch = Scratch::new(members.len(), n_copies);
    let mut step = 0u64;
    while scratch.active.iter().any(|&a| a) {
        // As the trainer does, per member: the copies that reach its next evaluation or its end
        // (members that joined later keep their own boundaries).
        for ((limit, m), &active) in scratch.limit.iter_mut().zip(&members).zip(&scratch.active) {
            *limit = if active { n_copies.min((next_boundary(m.steps, steps, every) - m.steps) as usize) } else { 0 };
        }
        let stepping = scratch.limit.iter().copied().max().unwrap_or(0);
        for (e, m) in scratch.epsilon.iter_mut().zip(&members) {
            let local = m.steps;
            *e = m.exploration.epsilon(Progress { step: local, episode: m.episode, fraction: fraction(local) });
        }
        let k = members.len();
        for (c, chosen) in scratch.chosen.chunks_exact_mut(k).take(stepping).enumerate() {
            for (acting, &limit) in scratch.acting.iter_mut().zip(&scratch.limit) {
                *acting = c < limit;
            }
            learner.act(|i| members[i].envs.obs(c), &scratch.epsilon, &mut rngs, &scratch.acting, chosen, true);
        }
        let mut failed = Vec::new();
        for c in 0..stepping {
            step += 1;
            for (i, m) in members.iter_mut().enumerate() {
                scratch.acting[i] = scratch.active[i] && c < scratch.limit[i];
                if !scratch.acting[i] {
                    continue;
                }
                let a = scratch.chosen[c * k + i];
                scratch.done[i] = m.envs.step(c, a, |obs, s| {
                    learner.push(i, c, obs, a, s.reward as f32, s.obs, s.terminated, s.truncated);
                    s.done()
                });
                m.steps += 1;
            }
            for (p, m) in scratch.progress.iter_mut().zip(&members) {
                *p = Progress { step: m.steps, episode: m.episode, fraction: fraction(m.steps) };
            }
            let failed_now = learner.learn(&scratch.progress, &scratch.acting, &mut rngs);
            for &i in &failed_now {
                scratch.active[i] = false;
                members[i].halt = learner.halted(i).cloned();
            }
            failed.extend(failed_now);
            for (m, done) in members.iter_mut().zip(&mut scratch.done) {
                m.episode += u64::from(std::mem::take(done));
            }
        }
        // Members at an evaluation of theirs (every `every` of their steps, and their end).
        for (i, m) in members.iter().enumerate() {
            scratch.due[i] = scratch.active[i] && ((every > 0 && m.steps % every == 0) || m.steps == steps);
        }
        let round = scratch.due.iter().any(|&d| d);
        if round {
            evaluate_round(&mut learner, &mut members, &mut scratch.active, &scratch.due, first, observer)?;
        }
        for (i, m) in members.iter_mut().enumerate() {
            if scratch.active[i] && m.steps == steps {
                // Its budget is run: it learns no more, and its slot is free.
                scratch.active[i] = false;
                learner.stop(i);
            }
        }
        // Members that ended this step: their outcomes go out now.
        for (i, m) in members.iter_mut().enumerate() {
            if !scratch.active[i] && !m.over {
                m.over = true;
                let outcome = m.outcome();
                observer.finished(m.index, &outcome)?;
                outcomes[m.index] = Some(outcome);
            }
        }
        let free: Vec<usize> = (0..members.len()).filter(|&i| !scratch.active[i]).collect();
        let mut refilled = false;
        if round && !free.is_empty() {
            let runs = observer.refill(free.len(), step)?;
            anyhow::ensure!(runs.len() <= free.len(), "refill returned more runs than free slots");
            for (&slot, cfg) in free.iter().zip(&runs) {
                batchable(&[first.clone(), cfg.clone()])
                    .map_err(|e| anyhow::anyhow!("a refill run cannot join this learner: {e}"))?;
                cfg.validate().map_err(InputError::new)?;
                learner.replace(slot, dqn_of(cfg), cfg.seed)?;
                members[slot] = Member::new(outcomes.len(), cfg)?;
                rngs[slot] = StdRng::seed_from_u64(derive(cfg.seed, 1));
                scratch.active[slot] = true;
                outcomes.push(None);
                refilled = true;
            }
        }
        if (round || !failed.is_empty()) && !refilled {
            compact(&mut learner, &mut members, &mut rngs, &mut scratch);
        }
    }
    let mut slots = vec![None; outcomes.len()];
    for (position, m) in members.iter().enumerate() {
        slots[m.index] = Some(position);
    }
    let members = outcomes
        .into_iter()
        .map(|o| o.ok_or_else(|| anyhow::anyhow!("a member ended without an outcome")))
        .collect::<anyhow::Result<_>>()?;
    Ok(BatchOutcome { members, wall_s: start.elapsed().as_secs_f64(), learner, slots })
}

/// Per-member scratch of the loop, in the learner's order.
struct Scratch {
    epsilon: Vec<f64>,
    active: Vec<bool>,
    /// Each copy's actions, `[copy][member]`.
    chosen: Vec<usize>,
    progress: Vec<Progress>,
    done: Vec<bool>,
    /// Members at an evaluation of theirs this step.
    due: Vec<bool>,
    /// Copies each member steps in this vector step, and whether it steps the current one.
    limit: Vec<usize>,
    acting: Vec<bool>,
}

impl Scratch {
    fn new(k: usize, copies: usize) -> Self {
        Scratch {
            epsilon: vec![0.0; k],
            active: vec![true; k],
            chosen: vec![0; k * copies],
            progress: vec![Progress::default(); k],
            done: vec![false; k],
            due: vec![false; k],
            limit: vec![0; k],
            acting: vec![false; k],
        }
    }
}

/// Compacts the learner when worth it ([`BatchedDqn::compact`]) and the loop's members with it
/// (the dropped ones have handed out their outcomes).
fn compact(learner: &mut BatchedDqn, members: &mut Vec<Member>, rngs: &mut Vec<StdRng>, scratch: &mut Scratch) {
    let Some(keep) = learner.compact() else { return };
    let mut old: Vec<Option<(Member, StdRng)>> = members.drain(..).zip(rngs.drain(..)).map(Some).collect();
    for &i in &keep {
        let (m, rng) = old[i].take().expect("each member is kept once");
        members.push(m);
        rngs.push(rng);
    }
    let copies = members.first().map_or(1, |m| m.envs.len());
    *scratch = Scratch::new(members.len(), copies);
    for (active, m) in scratch.active.iter_mut().zip(members.iter()) {
        *active = !m.over;
    }
}

/// Evaluates the `due` members side by side and hands the round to `observer`; members it
/// stops are stopped in the learner.
fn evaluate_round(
    learner: &mut BatchedDqn,
    members: &mut [Member],
    active: &mut [bool],
    due: &[bool],
    cfg: &TrainConfig,
    observer: &mut dyn RoundObserver,
) -> anyhow::Result<()> {
    let k = members.len();
    let (episodes, eps) = (cfg.eval.episodes, cfg.eval.epsilon);
    // Each evaluation draws from its own stream, seeded as `train::evaluate` seeds it.
    let mut rngs: Vec<StdRng> = members.iter().map(|m| StdRng::seed_from_u64(derive(m.eval_seed, 7))).collect();
    let mut running = due.to_vec();
    for (m, _) in members.iter_mut().zip(&running).filter(|(_, &r)| r) {
        m.eval_obs.set(m.eval_env.reset(Some(m.eval_seed)));
        m.eval_done = 0;
        m.eval_returns.clear();
        m.eval_return = 0.0;
    }
    let epsilon = vec![eps; k];
    let mut chosen = vec![0usize; k];
    while running.iter().any(|&r| r) {
        learner.act(|i| members[i].eval_obs.as_obs(), &epsilon, &mut rngs, &running, &mut chosen, false);
        for i in 0..k {
            if !running[i] {
                continue;
            }
            let m = &mut members[i];
            let s = m.eval_env.step(chosen[i]);
            m.eval_return += s.reward;
            if !s.done() {
                m.eval_obs.set(s.obs);
                continue;
            }
            m.eval_returns.push(m.eval_return);
            m.eval_return = 0.0;
            m.eval_done += 1;
            if m.eval_done < episodes {
                m.eval_obs.set(m.eval_env.reset(None));
            } else {
                running[i] = false;
            }
        }
    }
    let mine: Vec<usize> = (0..k).filter(|&i| due[i]).collect();
    let evals: Vec<(usize, Evaluation)> = mine
        .iter()
        .map(|&i| {
            let m = &members[i];
            let (mean, std) = mean_std(&m.eval_returns);
            let eval = Evaluation { step: m.steps, episode: m.episode, mean, std, returns: m.eval_returns.clone() };
            (m.index, eval)
        })
        .collect();
    let controls = observer.round(&evals)?;
    for ((&i, (_, eval)), control) in mine.iter().zip(evals).zip(controls) {
        members[i].evaluations.push(eval);
        if control == Control::Stop {
            learner.stop(i);
            active[i] = false;
            members[i].halt = Some(Halt::Stopped);
        }
    }
    Ok(())
}
