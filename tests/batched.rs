//! The batched learner (issue 14): member `i` of a batch trains exactly as one agent with its
//! seed and hyperparameters (items 1, 2 and 4), failed members never touch the others (item 3),
//! and the final returns of batched and unbatched runs do not differ (item 4).

use serde_json::Value;
use tch::Tensor;
use tune::rl::agent::batched::Halt;
use tune::rl::batched::{batchable, train_batched, RoundObserver};
use tune::rl::train::{train, Control, Evaluation, TrainConfig};

/// A short PER run with an update every step from step 100: 101 updates in 200 steps.
fn base(extra: &str) -> Value {
    let yaml = format!(
        "env: {{id: CartPole-v1}}
seed: 0
budget: {{steps: 200}}
eval: {{every: 100, episodes: 3}}
agent:
  type: dqn
  net: {{type: mlp, hidden: [64, 64]}}
  replay: {{type: prioritized, size: 1000, alpha: 0.6, beta: 0.4}}
  target: {{type: hard, every: 10}}
  batch_size: 32
  learning_starts: 100
  train_freq: 1
  gradient_steps: 1
  lr: 0.0023
  exploration: {{type: linear, start: 1.0, end: 0.04, fraction: 0.16}}
{extra}"
    );
    serde_norway::from_str(&yaml).unwrap()
}

/// `base` with `set` applied at dotted paths.
fn variant(extra: &str, seed: u64, set: &[(&str, Value)]) -> TrainConfig {
    let mut v = base(extra);
    v["seed"] = seed.into();
    for (path, value) in set {
        tune::spec::path::set(&mut v, path, value.clone()).unwrap();
    }
    TrainConfig::from_value(&v).unwrap()
}

/// Records every round and goes on.
#[derive(Default)]
struct Rounds(Vec<Vec<(usize, Evaluation)>>);

impl RoundObserver for Rounds {
    fn round(&mut self, evals: &[(usize, Evaluation)]) -> anyhow::Result<Vec<Control>> {
        self.0.push(evals.to_vec());
        Ok(vec![Control::Continue; evals.len()])
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Trains `runs` batched and each one alone, and requires the same parameters (to float
/// tolerance) and the same evaluations.
fn batched_matches_unbatched(runs: &[TrainConfig]) {
    batchable(runs).unwrap();
    let mut rounds = Rounds::default();
    let outcome = train_batched(runs, &mut rounds).unwrap();
    assert_eq!(outcome.learner.updates(), 101);
    for (i, cfg) in runs.iter().enumerate() {
        let alone = train(cfg, &mut ()).unwrap();
        let state = alone.agent.learner_state().unwrap();
        let diff = max_abs_diff(outcome.learner.parameters(i), state.get("online").unwrap());
        let scale = state.get("online").unwrap().abs().max().double_value(&[]);
        println!("member {i}: max abs difference {diff:e} over 101 updates");
        assert!(diff <= 1e-4 * scale.max(1.0), "member {i}: parameters differ by {diff} (scale {scale})");
        if let Some(target) = outcome.learner.target_parameters(i) {
            let diff = max_abs_diff(&target, state.get("target").unwrap());
            assert!(diff <= 1e-4 * scale.max(1.0), "member {i}: target parameters differ by {diff}");
        }
        let member = &outcome.members[i];
        assert_eq!(member.halt, None);
        assert_eq!((member.steps, member.episodes), (alone.steps, alone.episodes), "member {i}");
        let means = |e: &[Evaluation]| e.iter().map(|e| (e.step, e.returns.clone())).collect::<Vec<_>>();
        assert_eq!(means(&member.evaluations), means(&alone.evaluations), "member {i}: evaluations");
    }
    assert_eq!(rounds.0.len(), 2);
}

#[test]
fn members_make_the_updates_of_agents_alone_with_their_own_hyperparameters() {
    use serde_json::json;
    let runs = vec![
        variant("", 0, &[]),
        variant("", 1, &[("agent.lr", json!(0.001)), ("agent.gamma", json!(0.95))]),
        variant("", 2, &[("agent.replay.alpha", json!(0.3)), ("agent.replay.beta", json!(0.9))]),
        variant("", 3, &[("agent.target.every", json!(7)), ("agent.exploration.end", json!(0.2))]),
        variant("", 4, &[("agent.loss", json!("mse")), ("agent.reward_scale", json!(0.1))]),
        variant("", 5, &[("agent.max_grad_norm", json!(0.5))]),
        variant("", 6, &[("agent.optimizer", json!({"type": "rmsprop"})), ("agent.lr", json!(0.0005))]),
        variant("", 7, &[("agent.optimizer", json!({"type": "adam", "betas": [0.8, 0.99]}))]),
    ];
    batched_matches_unbatched(&runs);
}

#[test]
fn double_dueling_n_step_soft_target_and_uniform_replay_batch_too() {
    use serde_json::json;
    let group = |seed: u64, set: &[(&str, Value)]| -> Vec<TrainConfig> {
        (0..3)
            .map(|s| {
                let mut set = set.to_vec();
                set.push(("agent.gamma", json!(0.97 + 0.01 * s as f64)));
                variant("", seed + s, &set)
            })
            .collect()
    };
    batched_matches_unbatched(&group(10, &[("agent.double", json!(true)), ("agent.n_step", json!(3))]));
    let mut soft = group(20, &[("agent.net", json!({"type": "mlp", "hidden": [32], "dueling": true}))]);
    for (s, run) in soft.iter_mut().enumerate() {
        let mut v = run.to_value();
        v["agent"]["target"] = json!({"type": "soft", "tau": 0.05 * (s + 1) as f64});
        *run = TrainConfig::from_value(&v).unwrap();
    }
    batched_matches_unbatched(&soft);
    batched_matches_unbatched(&group(
        30,
        &[
            ("agent.replay", json!({"type": "uniform", "size": 1000})),
            ("agent.target", json!({"type": "none"})),
            ("agent.net", json!({"type": "mlp", "hidden": []})),
        ],
    ));
}

#[test]
fn configs_that_differ_in_shapes_or_gates_are_not_batched_together() {
    use serde_json::json;
    let a = variant("", 0, &[]);
    for (path, value) in [
        ("agent.batch_size", json!(64)),
        ("agent.net.hidden", json!([32, 32])),
        ("agent.n_step", json!(3)),
        ("agent.train_freq", json!(4)),
        ("agent.double", json!(true)),
        ("agent.replay.size", json!(2000)),
    ] {
        let b = variant("", 1, &[(path, value.clone())]);
        assert!(batchable(&[a.clone(), b]).is_err(), "{path}: {value}");
    }
    let c51 = variant("", 1, &[("agent.head", json!({"type": "c51"})), ("agent.loss", Value::Null)]);
    let err = batchable(&[c51.clone(), c51]).unwrap_err();
    assert!(err.contains("c51"), "{err}");
}

#[test]
fn a_diverging_member_fails_alone() {
    use serde_json::json;
    // lr 1e6 without clipping blows member 1 up; members 0 and 2 train as they would alone.
    let runs = vec![
        variant("", 0, &[]),
        variant(
            "",
            1,
            &[("agent.lr", json!(1.0e6)), ("agent.max_grad_norm", Value::Null), ("agent.loss", json!("mse"))],
        ),
        variant("", 2, &[]),
    ];
    let mut rounds = Rounds::default();
    let outcome = train_batched(&runs, &mut rounds).unwrap();
    assert!(
        matches!(&outcome.members[1].halt, Some(Halt::Failed(why)) if why.contains("diverged")),
        "{:?}",
        outcome.members[1].halt
    );
    let alone = train(&runs[1], &mut ());
    assert!(alone.is_err(), "alone, member 1 diverges too");
    for i in [0, 2] {
        let alone = train(&runs[i], &mut ()).unwrap();
        let state = alone.agent.learner_state().unwrap();
        let diff = max_abs_diff(outcome.learner.parameters(i), state.get("online").unwrap());
        assert!(diff < 1e-4, "member {i} was touched by the failed one: {diff}");
        assert!(outcome.learner.parameters(i).isfinite().all().int64_value(&[]) == 1);
    }
}
