//! GPU checks of the batched learner (issue 14, item 8). Every test skips, saying why, when no
//! CUDA device is present (CI has none); on a machine with one, `cargo test --release --test
//! cuda -- --nocapture` runs them:
//!
//! - members trained batched on the GPU make the updates their runs make alone on the GPU, and
//!   stay close to the CPU's (float tolerance: cuBLAS sums in another order);
//! - acting copies the observations of all members to the device once per step, whatever K;
//! - C51, QR-DQN and IQN members on the GPU (the agent's tensor maths on all members' rows)
//!   make the updates their runs make alone on the GPU.

use serde_json::{json, Value};
use tch::Tensor;
use tune::rl::batched::{batchable, train_batched, RoundObserver};
use tune::rl::train::{train, Control, Evaluation, TrainConfig};

/// True when a CUDA device is present; otherwise prints why the test is skipped.
fn cuda_or_skip(test: &str) -> bool {
    if tch::Cuda::is_available() {
        return true;
    }
    eprintln!("{test}: skipped: no CUDA device here (tch::Cuda::is_available() is false)");
    false
}

/// A short PER run on `device` with an update every step from step 100: 101 updates.
fn run(seed: u64, lr: f64, device: &str) -> TrainConfig {
    let yaml = format!(
        "env: {{id: CartPole-v1}}
seed: {seed}
budget: {{steps: 200}}
eval: {{every: 100, episodes: 3}}
device: {device}
agent:
  type: dqn
  net: {{type: mlp, hidden: [64, 64]}}
  replay: {{type: prioritized, size: 1000}}
  target: {{type: hard, every: 10}}
  batch_size: 32
  learning_starts: 100
  train_freq: 1
  lr: {lr}
  exploration: {{type: linear, start: 1.0, end: 0.04, fraction: 0.16}}"
    );
    TrainConfig::from_value(&serde_norway::from_str::<Value>(&yaml).unwrap()).unwrap()
}

struct Continue;

impl RoundObserver for Continue {
    fn round(&mut self, evals: &[(usize, Evaluation)]) -> anyhow::Result<Vec<Control>> {
        Ok(vec![Control::Continue; evals.len()])
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_device(tch::Device::Cpu) - b.to_device(tch::Device::Cpu)).abs().max().double_value(&[])
}

#[test]
fn members_on_the_gpu_make_the_updates_of_agents_alone_on_the_gpu() {
    if !cuda_or_skip("members_on_the_gpu_make_the_updates_of_agents_alone_on_the_gpu") {
        return;
    }
    let runs: Vec<TrainConfig> = (0..4).map(|s| run(s, 0.001 * (s + 1) as f64, "cuda")).collect();
    batchable(&runs).unwrap();
    let outcome = train_batched(&runs, &mut Continue).unwrap();
    assert_eq!(outcome.learner.updates(), 101);
    for (i, cfg) in runs.iter().enumerate() {
        let alone = train(cfg, &mut ()).unwrap();
        let state = alone.agent.learner_state().unwrap();
        let diff = max_abs_diff(outcome.learner.parameters(i), state.get("online").unwrap());
        println!("member {i}: max abs difference {diff:e} from its run alone on the GPU");
        assert!(diff <= 1e-3, "member {i}: parameters differ by {diff}");
        let mut on_cpu = cfg.clone();
        on_cpu.device = "cpu".into();
        let cpu = train(&on_cpu, &mut ()).unwrap().agent.learner_state().unwrap();
        let diff = max_abs_diff(outcome.learner.parameters(i), cpu.get("online").unwrap());
        println!("member {i}: max abs difference {diff:e} from its run alone on the CPU");
        assert!(diff <= 1e-2, "member {i}: parameters differ from the CPU's by {diff}");
    }
}

#[test]
fn acting_copies_all_members_observations_to_the_gpu_once_per_step() {
    if !cuda_or_skip("acting_copies_all_members_observations_to_the_gpu_once_per_step") {
        return;
    }
    for k in [1u64, 8, 64] {
        let runs: Vec<TrainConfig> = (0..k).map(|s| run(s, 0.001, "cuda")).collect();
        let outcome = train_batched(&runs, &mut Continue).unwrap();
        // 200 training steps plus the evaluation steps (members evaluate side by side, so as
        // many as the longest member's; CartPole's return is its length), at most one upload
        // each for all K.
        let eval_steps: u64 = outcome
            .members
            .iter()
            .map(|m| m.evaluations.iter().flat_map(|e| &e.returns).map(|&r| r as u64).sum())
            .max()
            .unwrap();
        let uploads = outcome.learner.act_uploads();
        println!("K = {k}: {uploads} uploads for 200 training steps and about {eval_steps} evaluation steps");
        assert!(uploads > 0, "greedy actions on the GPU upload observations");
        assert!(uploads <= 200 + eval_steps, "K = {k}: {uploads} uploads is more than one per step");
    }
}

#[test]
fn distributional_members_on_the_gpu_make_the_updates_of_agents_alone_on_the_gpu() {
    if !cuda_or_skip("distributional_members_on_the_gpu_make_the_updates_of_agents_alone_on_the_gpu") {
        return;
    }
    for head in [
        json!({"type": "c51", "atoms": 51, "v_min": 0.0, "v_max": 100.0}),
        json!({"type": "qr", "quantiles": 32}),
        json!({"type": "iqn", "n_tau": 16, "n_tau_prime": 16, "k_policy": 16, "embedding": 32}),
    ] {
        let runs: Vec<TrainConfig> = (0..3)
            .map(|s| {
                let mut v = run(s, 0.001 * (s + 1) as f64, "cuda").to_value();
                v["agent"]["head"] = head.clone();
                v["agent"]["replay"] = json!({"type": "uniform", "size": 1000});
                TrainConfig::from_value(&v).unwrap()
            })
            .collect();
        batchable(&runs).unwrap();
        let outcome = train_batched(&runs, &mut Continue).unwrap();
        for (i, cfg) in runs.iter().enumerate() {
            let alone = train(cfg, &mut ()).unwrap().agent.learner_state().unwrap();
            let diff = max_abs_diff(outcome.learner.parameters(i), alone.get("online").unwrap());
            println!("{}: member {i}: max abs difference {diff:e} from its run alone on the GPU", head["type"]);
            assert!(diff <= 1e-3, "{}: member {i}: parameters differ by {diff}", head["type"]);
        }
    }
}
