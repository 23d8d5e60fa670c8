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

use super::agent::batched::{group_key, unsupported, BatchedDqn, Halt};
use super::agent::{AgentConfig, Exploration, Progress};
use super::env::{Env, ObsBuf, VecEnv};
use super::train::{derive, mean_std, next_boundary, parse_device, Control, Evaluation, TrainConfig};
use crate::error::InputError;

/// Receives each evaluation round of a batched run.
pub trait RoundObserver {
    /// The evaluations `(member, evaluation)` of the members still training (`member`: the
    /// index of its run in the runs given), all at the same step; returns whether each goes on,
    /// in the same order.
    fn round(&mut self, evals: &[(usize, Evaluation)]) -> anyhow::Result<Vec<Control>>;
}

/// How one member's run ended.
#[derive(Debug)]
pub struct MemberOutcome {
    /// Its seed.
    pub seed: u64,
    /// Environment steps it took.
    pub steps: u64,
    /// Episodes it completed.
    pub episodes: u64,
    /// Its evaluations, in order.
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
    let space = first.env.make().map_err(|e| format!("env: {e}"))?.observation_space();
    for cfg in cfgs {
        let AgentConfig::Dqn(dqn) = &cfg.agent else {
            return Err("only `dqn` agents train batched".into());
        };
        if let Some(why) = unsupported(dqn, &space) {
            return Err(why);
        }
        if cfg.budget.steps.is_none() {
            return Err("batched runs need a budget in steps".into());
        }
        if !cfg.schedule.is_empty() {
            return Err("runs with a `schedule:` are not batched yet".into());
        }
        if dqn.head.is_distributional() && cfg.device != "cpu" {
            return Err(format!(
                "head type {} trains batched on CPU only (its loss runs on the host)",
                dqn.head.name()
            ));
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
    /// Its index in the runs given.
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
}

/// Trains the runs of `cfgs` (see [`batchable`]) as one batched learner.
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
    let mut members = Vec::with_capacity(cfgs.len());
    let mut rngs = Vec::with_capacity(cfgs.len());
    let mut dqns = Vec::with_capacity(cfgs.len());
    let n_copies = first.env.num_envs as usize;
    for (index, cfg) in cfgs.iter().enumerate() {
        let envs = VecEnv::new((0..n_copies).map(|_| cfg.env.make()).collect::<anyhow::Result<_>>()?, cfg.seed);
        let eval_env = cfg.env.make()?;
        let AgentConfig::Dqn(dqn) = &cfg.agent else { unreachable!("batchable checked it") };
        dqns.push((**dqn).clone());
        rngs.push(StdRng::seed_from_u64(derive(cfg.seed, 1)));
        members.push(Member {
            index,
            seed: cfg.seed,
            eval_obs: ObsBuf::new(&envs.observation_space()),
            envs,
            eval_env,
            eval_seed: derive(cfg.seed, 2),
            exploration: cfg.agent.exploration().clone(),
            episode: 0,
            steps: 0,
            evaluations: Vec::new(),
            eval_done: 0,
            eval_returns: Vec::with_capacity(cfg.eval.episodes as usize),
            eval_return: 0.0,
            halt: None,
        });
    }
    let space = members[0].eval_env.observation_space();
    let actions = members[0].eval_env.action_space();
    let seeds: Vec<u64> = cfgs.iter().map(|c| c.seed).collect();
    let mut learner = BatchedDqn::new(&dqns, &seeds, &space, actions, device, n_copies)?;
    let budget = first.budget.clone();
    let steps = budget.steps.expect("batchable checked it");
    let every = first.eval.every;
    // Per member, in the learner's order (compaction drops the stopped ones from both).
    let mut finished: Vec<Member> = Vec::new();
    let mut scratch = Scratch::new(members.len(), n_copies);
    let mut step = 0u64;
    let mut last_eval = None;
    while step < steps && scratch.active.iter().any(|&a| a) {
        // As the trainer does: the copies that reach the next evaluation or the end step.
        let boundary = next_boundary(step, steps, every);
        let stepping = n_copies.min((boundary - step) as usize);
        let fraction = budget.fraction(step, 0);
        for (e, m) in scratch.epsilon.iter_mut().zip(&members) {
            *e = m.exploration.epsilon(Progress { step, episode: m.episode, fraction });
        }
        let k = members.len();
        for (c, chosen) in scratch.chosen.chunks_exact_mut(k).take(stepping).enumerate() {
            learner.act(|i| members[i].envs.obs(c), &scratch.epsilon, &mut rngs, &scratch.active, chosen);
        }
        let mut failed = Vec::new();
        for c in 0..stepping {
            step += 1;
            let fraction = budget.fraction(step, 0);
            for (i, m) in members.iter_mut().enumerate() {
                if !scratch.active[i] {
                    continue;
                }
                let a = scratch.chosen[c * k + i];
                scratch.done[i] = m.envs.step(c, a, |obs, s| {
                    learner.push(i, c, obs, a, s.reward as f32, s.obs, s.terminated, s.truncated);
                    s.done()
                });
                m.steps = step;
            }
            // Every member's progress, stopped ones too: the group's gates read the shared step.
            for (p, m) in scratch.progress.iter_mut().zip(&members) {
                *p = Progress { step, episode: m.episode, fraction };
            }
            let failed_now = learner.learn(&scratch.progress, &mut rngs);
            for &i in &failed_now {
                scratch.active[i] = false;
                members[i].halt = learner.halted(i).cloned();
            }
            failed.extend(failed_now);
            for (m, done) in members.iter_mut().zip(&mut scratch.done) {
                m.episode += u64::from(std::mem::take(done));
            }
        }
        let due = every > 0 && step % every == 0;
        if due {
            evaluate_round(&mut learner, &mut members, &mut scratch.active, first, step, observer)?;
            last_eval = Some(step);
        }
        if due || !failed.is_empty() {
            compact(&mut learner, &mut members, &mut rngs, &mut finished, &mut scratch);
        }
    }
    if last_eval != Some(step) && scratch.active.iter().any(|&a| a) {
        evaluate_round(&mut learner, &mut members, &mut scratch.active, first, step, observer)?;
    }
    let mut slots = vec![None; cfgs.len()];
    for (position, m) in members.iter().enumerate() {
        slots[m.index] = Some(position);
    }
    finished.extend(members);
    finished.sort_by_key(|m| m.index);
    let members = finished
        .into_iter()
        .map(|m| MemberOutcome {
            seed: m.seed,
            steps: m.steps,
            episodes: m.episode,
            evaluations: m.evaluations,
            halt: m.halt,
        })
        .collect();
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
}

impl Scratch {
    fn new(k: usize, copies: usize) -> Self {
        Scratch {
            epsilon: vec![0.0; k],
            active: vec![true; k],
            chosen: vec![0; k * copies],
            progress: vec![Progress::default(); k],
            done: vec![false; k],
        }
    }
}

/// Compacts the learner when worth it ([`BatchedDqn::compact`]) and the loop's members with it;
/// the dropped members go to `finished`.
fn compact(
    learner: &mut BatchedDqn,
    members: &mut Vec<Member>,
    rngs: &mut Vec<StdRng>,
    finished: &mut Vec<Member>,
    scratch: &mut Scratch,
) {
    let Some(keep) = learner.compact() else { return };
    let mut old: Vec<Option<(Member, StdRng)>> = members.drain(..).zip(rngs.drain(..)).map(Some).collect();
    for &i in &keep {
        let (m, rng) = old[i].take().expect("each member is kept once");
        members.push(m);
        rngs.push(rng);
    }
    finished.extend(old.into_iter().flatten().map(|(m, _)| m));
    let copies = members.first().map_or(1, |m| m.envs.len());
    *scratch = Scratch::new(members.len(), copies);
}

/// Evaluates every active member side by side and hands the round to `observer`; members it
/// stops are stopped in the learner.
fn evaluate_round(
    learner: &mut BatchedDqn,
    members: &mut [Member],
    active: &mut [bool],
    cfg: &TrainConfig,
    step: u64,
    observer: &mut dyn RoundObserver,
) -> anyhow::Result<()> {
    let k = members.len();
    let (episodes, eps) = (cfg.eval.episodes, cfg.eval.epsilon);
    // Each evaluation draws from its own stream, seeded as `train::evaluate` seeds it.
    let mut rngs: Vec<StdRng> = members.iter().map(|m| StdRng::seed_from_u64(derive(m.eval_seed, 7))).collect();
    let mut running = active.to_vec();
    for (m, _) in members.iter_mut().zip(&running).filter(|(_, &r)| r) {
        m.eval_obs.set(m.eval_env.reset(Some(m.eval_seed)));
        m.eval_done = 0;
        m.eval_returns.clear();
        m.eval_return = 0.0;
    }
    let epsilon = vec![eps; k];
    let mut chosen = vec![0usize; k];
    while running.iter().any(|&r| r) {
        learner.act(|i| members[i].eval_obs.as_obs(), &epsilon, &mut rngs, &running, &mut chosen);
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
    let mine: Vec<usize> = (0..k).filter(|&i| active[i]).collect();
    let evals: Vec<(usize, Evaluation)> = mine
        .iter()
        .map(|&i| {
            let m = &members[i];
            let (mean, std) = mean_std(&m.eval_returns);
            (m.index, Evaluation { step, episode: m.episode, mean, std, returns: m.eval_returns.clone() })
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
