//! Many agents as one model on one CPU core (issue 14, item 9): aggregate agent-steps/s of
//! `K` members trained as one batched learner, against the same runs trained one agent at a
//! time (what `seeds: K` cost before: on one core, K independent agents take K times one).
//!
//! Two configs, one libtorch thread, evaluations as configured:
//! - `per_cartpole`: `configs/per_cartpole.yaml` (128 gradient steps every 256 environment
//!   steps, batch 64, PER) for its first 10,000 steps;
//! - `every_step`: the same with one gradient step per environment step (`train_freq: 1,
//!   gradient_steps: 1`), 5,000 steps.
//!
//! The unbatched baseline trains `min(K, 8)` agents one after the other and scales their time
//! to `K` (independent runs: the cost is linear). Members get seeds `0..K` and, as in a study,
//! their own learning rates.
//!
//! Run: `cargo bench --bench batched` (add `-- --members 1,8` to choose `K`, `--batched-only`
//! to skip the baseline when profiling, `--cnn` for the Nature CNN's gradient step alone:
//! `-- --cnn --members 1,4,8`). Without
//! `--bench` (as in `cargo test --all-targets`) it runs once, small, as a smoke test.

#[path = "common/obs.rs"]
mod obs;
use obs::ToOwnedF32;
use std::time::Instant;

use serde_json::json;
use tune::rl::batched::{train_batched, RoundObserver};
use tune::rl::train::{train, Control, Evaluation, TrainConfig};

/// Goes on after every evaluation.
struct Continue;

impl RoundObserver for Continue {
    fn round(&mut self, evals: &[(usize, Evaluation)]) -> anyhow::Result<Vec<Control>> {
        Ok(vec![Control::Continue; evals.len()])
    }
}

fn config(every_step: bool, steps: u64, member: usize) -> TrainConfig {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/per_cartpole.yaml");
    let mut v = TrainConfig::load(&path).unwrap().to_value();
    v["budget"] = json!({ "steps": steps });
    v["seed"] = json!(member);
    v["threads"] = json!(1);
    // Learning rates spread over the study's range, so members differ as a study's trials do.
    v["agent"]["lr"] = json!(0.0023 * (1.0 + 0.05 * (member % 8) as f64));
    if every_step {
        v["agent"]["train_freq"] = json!(1);
        v["agent"]["gradient_steps"] = json!(1);
    }
    TrainConfig::from_value(&v).unwrap()
}

/// Seconds per gradient step of `k` members (a batched learner) and of one agent, on buffers
/// filled with 5,000 CartPole transitions.
fn gradient_steps(k: usize, steps: u32) -> (f64, f64) {
    use rand::{Rng, SeedableRng};
    use tune::rl::agent::batched::BatchedDqn;
    use tune::rl::agent::{Agent, AgentConfig, DqnAgent, Progress, Transition};
    let cfgs: Vec<TrainConfig> = (0..k).map(|m| config(false, 50_000, m)).collect();
    let dqns: Vec<_> = cfgs
        .iter()
        .map(|c| match &c.agent {
            AgentConfig::Dqn(d) => tune::rl::agent::DqnConfig { learning_starts: u64::MAX, ..(**d).clone() },
            _ => unreachable!(),
        })
        .collect();
    let mut env = cfgs[0].env.make().unwrap();
    let (space, actions) = (env.observation_space(), env.action_space());
    let seeds: Vec<u64> = (0..k as u64).collect();
    let mut learner = BatchedDqn::new(&dqns, &seeds, &space, actions, tch::Device::Cpu, 1).unwrap();
    let mut agent = DqnAgent::new(&dqns[0], &space, actions, tch::Device::Cpu, 0).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut obs = env.reset(Some(0)).to_owned_f32();
    for step in 1..=5_000u64 {
        let a = rng.random_range(0..2);
        let s = env.step(a);
        let next = s.obs.to_owned_f32();
        let t = Transition {
            obs: tune::rl::env::Obs::F32(&obs),
            action: a,
            reward: s.reward as f32,
            next_obs: tune::rl::env::Obs::F32(&next),
            terminated: s.terminated,
            truncated: s.truncated,
            env: 0,
        };
        for i in 0..k {
            learner.push(i, 0, t.obs, a, t.reward, t.next_obs, t.terminated, t.truncated);
        }
        agent.observe(t, Progress { step, episode: 0, fraction: 0.0 }, &mut rng).unwrap();
        obs = if s.done() { env.reset(None).to_owned_f32() } else { next };
    }
    time_steps(&mut learner, &mut agent, k, steps)
}

/// Seconds per gradient step of `learner` (`k` members) and of `agent`, after one untimed step
/// each (libtorch picks its convolution kernels on first use).
fn time_steps(
    learner: &mut tune::rl::agent::batched::BatchedDqn,
    agent: &mut tune::rl::agent::DqnAgent,
    k: usize,
    steps: u32,
) -> (f64, f64) {
    use rand::SeedableRng;
    let mut rngs: Vec<_> = (0..k as u64).map(rand::rngs::StdRng::seed_from_u64).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(u64::MAX);
    learner.gradient_step(&mut rngs);
    agent.gradient_step(&mut rng).unwrap();
    let start = Instant::now();
    for _ in 0..steps {
        learner.gradient_step(&mut rngs);
    }
    let batched = start.elapsed().as_secs_f64() / steps as f64;
    let start = Instant::now();
    for _ in 0..steps {
        agent.gradient_step(&mut rng).unwrap();
    }
    (batched, start.elapsed().as_secs_f64() / steps as f64)
}

/// Seconds per gradient step of `k` Nature CNN members (`configs/dqn_breakout.yaml`'s agent:
/// batch 32, 4 stacked 84x84 frames, Adam, clipping) and of one agent, on buffers of 500
/// transitions of random frames (the cost of a step does not depend on what the pixels show).
fn cnn_gradient_steps(k: usize, steps: u32) -> (f64, f64) {
    use rand::{Rng, SeedableRng};
    use tune::rl::agent::batched::BatchedDqn;
    use tune::rl::agent::{Agent, AgentConfig, DqnAgent, Progress, Transition};
    use tune::rl::env::{ActionSpace, Obs, ObsSpace};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/dqn_breakout.yaml");
    let mut v: serde_json::Value = serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["device"] = json!("cpu");
    v["agent"]["replay"] = json!({"type": "uniform", "size": 1000});
    let AgentConfig::Dqn(d) = TrainConfig::from_value(&v).unwrap().agent else { unreachable!() };
    let dqns: Vec<_> = (0..k)
        .map(|m| tune::rl::agent::DqnConfig {
            learning_starts: u64::MAX,
            lr: 1e-4 * (1.0 + 0.05 * m as f64),
            ..(*d).clone()
        })
        .collect();
    let space = ObsSpace::Pixels { frames: 4, height: 84, width: 84, channels: 1 };
    let actions = ActionSpace { n: 4 };
    let seeds: Vec<u64> = (0..k as u64).collect();
    let mut learner = BatchedDqn::new(&dqns, &seeds, &space, actions, tch::Device::Cpu, 1).unwrap();
    let mut agent = DqnAgent::new(&dqns[0], &space, actions, tch::Device::Cpu, 0).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let frame = |rng: &mut rand::rngs::StdRng| (0..space.flat_dim()).map(|_| rng.random::<u8>()).collect::<Vec<_>>();
    let mut obs = frame(&mut rng);
    for step in 1..=500u64 {
        let (a, next, done) = (rng.random_range(0..4), frame(&mut rng), rng.random::<f64>() < 0.01);
        for i in 0..k {
            learner.push(i, 0, Obs::U8(&obs), a, 0.0, Obs::U8(&next), done, false);
        }
        let t = Transition {
            obs: Obs::U8(&obs),
            action: a,
            reward: 0.0,
            next_obs: Obs::U8(&next),
            terminated: done,
            truncated: false,
            env: 0,
        };
        agent.observe(t, Progress { step, episode: 0, fraction: 0.0 }, &mut rng).unwrap();
        obs = next;
    }
    time_steps(&mut learner, &mut agent, k, steps)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let members: Vec<usize> = std::env::args()
        .skip_while(|a| a != "--members")
        .nth(1)
        .map(|s| s.split(',').map(|k| k.parse().expect("--members takes K,K,...")).collect())
        .unwrap_or_else(|| if bench { vec![1, 8, 32, 128] } else { vec![2] });
    tch::set_num_threads(1);
    println!("gradient step of K members (per_cartpole: batch 64, PER, 64-64 MLP) against one agent's");
    for &k in &members {
        let (batched, alone) = gradient_steps(k, if bench { 2_000 } else { 20 });
        println!(
            "  K = {k:>4}: {:>8.1} us ({:>6.1} us per member), one agent {:>6.1} us: {:.2}x one agent's time",
            batched * 1e6,
            batched * 1e6 / k as f64,
            alone * 1e6,
            batched / alone
        );
    }
    if std::env::args().any(|a| a == "--cnn") {
        println!("gradient step of K Nature CNN members (dqn_breakout: batch 32, 4x84x84 frames) against one agent's");
        for &k in &members {
            let (batched, alone) = cnn_gradient_steps(k, if bench { 20 } else { 1 });
            println!(
                "  K = {k:>4}: {:>8.1} ms ({:>6.1} ms per member), one agent {:>6.1} ms: {:.2}x one agent's time",
                batched * 1e3,
                batched * 1e3 / k as f64,
                alone * 1e3,
                batched / alone
            );
        }
        return;
    }
    if std::env::args().any(|a| a == "--gradient-only") {
        return;
    }
    println!("batched learner on one core: aggregate agent-steps/s (speed-up over one agent at a time)");
    println!(
        "{:<11} {:>5} {:>8} {:>14} {:>14} {:>9} {:>14}",
        "config", "K", "steps", "unbatched/s", "batched/s", "speed-up", "wall / 1 agent"
    );
    for (name, every_step, steps) in [("per_cartpole", false, 10_000), ("every_step", true, 5_000)] {
        let steps = if bench { steps } else { 1_200 };
        // One agent at a time: time per agent from up to 8 runs.
        // `--batched-only` skips the baseline (for profiling the batched learner).
        let alone = if std::env::args().any(|a| a == "--batched-only") {
            0
        } else {
            members.iter().copied().max().unwrap_or(1).min(8)
        };
        let start = Instant::now();
        for m in 0..alone {
            let outcome = train(&config(every_step, steps, m), &mut ()).unwrap();
            assert_eq!(outcome.steps, steps);
        }
        let per_agent = start.elapsed().as_secs_f64() / alone.max(1) as f64;
        for &k in &members {
            let runs: Vec<TrainConfig> = (0..k).map(|m| config(every_step, steps, m)).collect();
            let start = Instant::now();
            let outcome = train_batched(&runs, &mut Continue).unwrap();
            let wall = start.elapsed().as_secs_f64();
            assert!(outcome.members.iter().all(|m| m.steps == steps && m.halt.is_none()));
            let agent_steps = (k as u64 * steps) as f64;
            println!(
                "{:<11} {:>5} {:>8} {:>14.0} {:>14.0} {:>8.1}x {:>14.2}",
                name,
                k,
                steps,
                steps as f64 / per_agent,
                agent_steps / wall,
                per_agent * k as f64 / wall,
                wall / per_agent
            );
        }
        println!("{name}: one agent alone took {per_agent:.2} s for {steps} steps");
    }
}
