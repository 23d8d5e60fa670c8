//! The DQN training step on CartPole-v1 and where its time goes (issue 4, item 10): MLP 64-64,
//! batch 64, one gradient step per environment step, target copied every 500 steps, uniform
//! replay, Adam, 1 libtorch thread.
//!
//! - `dqn/act`: the greedy action for one observation (forward pass, Q-values to the host);
//! - `dqn/env_step`: one CartPole step;
//! - `dqn/replay_sample`: a batch of 64 drawn from 50k transitions into the preallocated batch;
//! - `dqn/gradient_step`: sample + TD targets + loss + backward + clipping + Adam;
//! - `dqn/gradient_step/{c51_51, qr_32, qr_200, munchausen, iqn_16, noisy, rainbow}`: the same
//!   with a C51 head (51 atoms), a QR-DQN head (32 and 200 quantiles), Munchausen's target, an
//!   IQN head (16 fractions each), noisy layers, and Rainbow's options together, same hidden
//!   layers;
//! - `dqn/train_10k`: the whole loop, 10,000 environment steps after 1,000 warm-up steps
//!   (reported as time per 10k steps; steps/s = 10,000 / time).
//!
//! Run: `cargo bench --bench dqn` (`-- --bench` is implied by cargo bench; without it, as in
//! `cargo test --all-targets`, each part runs once as a smoke test).

#[path = "common/obs.rs"]
mod obs;
use criterion::{criterion_group, criterion_main, Criterion};
use obs::ToOwnedF32;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::hint::black_box;
use tune::rl::agent::{Agent, DqnAgent, DqnConfig, HeadSpec, Munchausen, Noisy, Progress, ReplaySpec, Transition};
use tune::rl::env::Env;
use tune::rl::net::NetSpec;
use tune::rl::train::{train, TrainConfig};

fn config(steps: u64) -> TrainConfig {
    let yaml = format!(
        "env: {{id: CartPole-v1}}
seed: 0
budget: {{steps: {steps}}}
eval: {{every: 0, episodes: 1}}
agent:
  type: dqn
  net: {{type: mlp, hidden: [64, 64]}}
  batch_size: 64
  learning_starts: 1000
  train_freq: 1
  gradient_steps: 1
  target: {{type: hard, every: 500}}
  replay: {{type: uniform, size: 100000}}
  exploration: {{type: linear, start: 1.0, end: 0.05, fraction: 0.1}}
"
    );
    let value: serde_json::Value = serde_norway::from_str(&yaml).unwrap();
    TrainConfig::from_value(&value).unwrap()
}

/// A change to the bench's DQN config.
type Edit = Box<dyn Fn(&mut DqnConfig)>;

/// A DQN agent with `n` CartPole transitions in its buffer, its config changed by `edit`.
fn filled_agent(n: u64, edit: impl Fn(&mut DqnConfig)) -> (DqnAgent, Box<dyn Env>) {
    let cfg = config(n);
    let tune::rl::agent::AgentConfig::Dqn(dqn) = &cfg.agent else { unreachable!() };
    let mut dqn = DqnConfig { learning_starts: u64::MAX, ..(**dqn).clone() };
    edit(&mut dqn);
    let mut env = cfg.env.make().unwrap();
    let mut agent = DqnAgent::new(&dqn, &env.observation_space(), env.action_space(), tch::Device::Cpu, 0).unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    let mut obs = env.reset(Some(0)).to_owned_f32();
    for t in 1..=n {
        let a = agent.act(tune::rl::env::Obs::F32(&obs), 1.0, &mut rng);
        let s = env.step(a);
        let next = s.obs.to_owned_f32();
        let (terminated, truncated) = (s.terminated, s.truncated);
        let tr = Transition {
            obs: tune::rl::env::Obs::F32(&obs),
            action: a,
            reward: s.reward as f32,
            next_obs: tune::rl::env::Obs::F32(&next),
            terminated,
            truncated,
            env: 0,
        };
        agent.observe(tr, Progress { step: t, episode: 0, fraction: 0.0 }, &mut rng).unwrap();
        obs = if terminated || truncated { env.reset(None).to_owned_f32() } else { next };
    }
    (agent, env)
}

fn bench(c: &mut Criterion) {
    tch::set_num_threads(1);
    let (mut agent, mut env) = filled_agent(50_000, |_| {});
    let mut rng = StdRng::seed_from_u64(1);
    let obs = [0.01f32, -0.02, 0.03, 0.04];
    c.bench_function("dqn/act", |b| b.iter(|| black_box(agent.act(tune::rl::env::Obs::F32(&obs), 0.0, &mut rng))));
    env.reset(Some(0));
    c.bench_function("dqn/env_step", |b| {
        b.iter(|| {
            if env.step(black_box(0)).done() {
                env.reset(None);
            }
        })
    });
    c.bench_function("dqn/gradient_step", |b| b.iter(|| agent.gradient_step(&mut rng).unwrap()));
    // The same update with each head and with Munchausen's target (issue 15, item 7), on the
    // configs/*_cartpole.yaml sizes, plus QR-DQN at the paper's 200 quantiles.
    let c51 = || HeadSpec::C51 { atoms: 51, v_min: 0.0, v_max: 100.0 };
    let variants: [(&str, Edit); 7] = [
        ("c51_51", Box::new(move |c| c.head = c51())),
        ("qr_32", Box::new(|c| c.head = HeadSpec::Qr { quantiles: 32, kappa: 1.0 })),
        ("qr_200", Box::new(|c| c.head = HeadSpec::Qr { quantiles: 200, kappa: 1.0 })),
        ("munchausen", Box::new(|c| c.munchausen = Some(Munchausen::default()))),
        (
            "iqn_16",
            Box::new(|c| {
                c.head = HeadSpec::Iqn { n_tau: 16, n_tau_prime: 16, k_policy: 16, kappa: 1.0, embedding: 64 }
            }),
        ),
        ("noisy", Box::new(|c| c.noisy = Some(Noisy::default()))),
        (
            "rainbow",
            Box::new(move |c| {
                c.head = c51();
                c.noisy = Some(Noisy::default());
                c.net = Some(NetSpec::Mlp { hidden: vec![64, 64], dueling: true });
                c.double = true;
                c.n_step = 3;
                c.replay =
                    ReplaySpec::Prioritized { size: 100_000, alpha: 0.5, beta: 0.4, beta_fraction: 1.0, epsilon: 1e-6 };
            }),
        ),
    ];
    for (name, edit) in &variants {
        let (mut agent, _) = filled_agent(10_000, edit);
        c.bench_function(&format!("dqn/gradient_step/{name}"), |b| b.iter(|| agent.gradient_step(&mut rng).unwrap()));
    }
    let mut group = c.benchmark_group("dqn");
    group.sample_size(10);
    group.bench_function("train_10k", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            for _ in 0..iters {
                // Time 10k steps after the 1k warm-up: run 11k, subtract a 1k run.
                let full = train(&config(11_000), &mut ()).unwrap();
                let warm = train(&config(1_000), &mut ()).unwrap();
                total += std::time::Duration::from_secs_f64((full.wall_s - warm.wall_s).max(0.0));
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
