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
fn members_with_environment_copies_make_the_updates_of_agents_alone() {
    use serde_json::json;
    // 3 copies per member (item 7): evaluations every 100 steps cut vector steps short, and
    // n-step windows and PER run per copy's stream.
    let runs: Vec<TrainConfig> = (0..3)
        .map(|s| {
            let mut v = variant("", 40 + s, &[("agent.n_step", json!(2)), ("agent.lr", json!(0.001 * (s + 1) as f64))])
                .to_value();
            v["env"]["num_envs"] = json!(3);
            TrainConfig::from_value(&v).unwrap()
        })
        .collect();
    batched_matches_unbatched(&runs);
}

#[test]
fn members_with_frozen_pretrained_layers_make_the_updates_of_agents_alone() {
    use serde_json::json;
    // Pretrained weights with their first layer frozen, under AdamW's weight decay (which would
    // move a frozen weight the optimizer touched) and gradient clipping (whose norm leaves the
    // frozen layer out). Frozen weights stay bit for bit the pretrained ones.
    let dir = tempfile::TempDir::new().unwrap();
    let weights = dir.path().join("pretrained.safetensors");
    train(&variant("", 90, &[]), &mut ()).unwrap().agent.save(&weights).unwrap();
    let runs: Vec<TrainConfig> = (0..3)
        .map(|s| {
            variant(
                "",
                70 + s,
                &[
                    ("agent.optimizer", json!({"type": "adamw", "weight_decay": 0.1})),
                    // Uniform replay: with PER, a float-level difference in a TD error can move a
                    // sampled index across a sum-tree boundary and the runs part ways.
                    ("agent.replay", json!({"type": "uniform", "size": 1000})),
                    ("agent.max_grad_norm", json!(0.5)),
                    ("agent.lr", json!(0.002 * (s + 1) as f64)),
                ],
            )
        })
        .map(|cfg| {
            let mut v = cfg.to_value();
            v["agent"]["pretrained"] = json!({"path": weights, "freeze": ["0"]});
            TrainConfig::from_value(&v).unwrap()
        })
        .collect();
    batchable(&runs).unwrap();
    let outcome = train_batched(&runs, &mut Rounds::default()).unwrap();
    let pretrained = Tensor::read_safetensors(&weights).unwrap();
    for (i, cfg) in runs.iter().enumerate() {
        let (mine, theirs) =
            (dir.path().join(format!("m{i}.safetensors")), dir.path().join(format!("a{i}.safetensors")));
        outcome.learner.save(i, &mine).unwrap();
        train(cfg, &mut ()).unwrap().agent.save(&theirs).unwrap();
        let read = |p: &std::path::Path| {
            let mut named = Tensor::read_safetensors(p).unwrap();
            named.sort_by(|a, b| a.0.cmp(&b.0));
            named
        };
        let (mine, theirs) = (read(&mine), read(&theirs));
        assert_eq!(mine.len(), theirs.len());
        for ((name, a), (other, b)) in mine.iter().zip(&theirs) {
            assert_eq!(name, other);
            // The agent trains a frozen net through autograd, which sums in another order
            // than the batched backward: equal to float tolerance, as for dueling.
            let (diff, scale) = (max_abs_diff(a, b), b.abs().max().double_value(&[]));
            println!("member {i}: {name} differs by {diff:e} (scale {scale})");
            assert!(diff <= 1e-4 * scale.max(1.0), "member {i}: {name} differs by {diff}");
            let start = &pretrained.iter().find(|(n, _)| n == name).unwrap().1;
            let moved = max_abs_diff(a, start);
            if name.starts_with("0.") {
                assert_eq!(moved, 0.0, "member {i}: frozen {name} moved");
            } else {
                assert!(moved > 0.0, "member {i}: trainable {name} did not learn");
            }
        }
    }
}

#[test]
fn a_member_whose_buffer_fills_first_updates_first_as_it_would_alone() {
    use serde_json::json;
    // 20-step returns from step 0: a transition is sampleable once 20 more steps are stored or
    // its episode ended, which happens at a different step for each seed.
    let runs: Vec<TrainConfig> = (0..4)
        .map(|s| {
            variant(
                "",
                60 + s,
                &[
                    ("agent.n_step", json!(20)),
                    ("agent.learning_starts", json!(0)),
                    ("agent.exploration", json!({"type": "constant", "epsilon": 1.0})),
                ],
            )
        })
        .collect();
    let outcome = train_batched(&runs, &mut Rounds::default()).unwrap();
    for (i, cfg) in runs.iter().enumerate() {
        let alone = train(cfg, &mut ()).unwrap();
        let state = alone.agent.learner_state().unwrap();
        let diff = max_abs_diff(outcome.learner.parameters(i), state.get("online").unwrap());
        assert_eq!(diff, 0.0, "member {i}");
        assert_eq!(state.ints("opt.t").unwrap(), vec![outcome.learner.optimizer_steps(i) as i64], "member {i}");
    }
    let steps: std::collections::BTreeSet<u64> = (0..4).map(|i| outcome.learner.optimizer_steps(i)).collect();
    assert!(steps.len() > 1, "the members' buffers filled at different steps: {steps:?}");
}

/// Stops member 0 at the first evaluation.
struct StopFirst;

impl RoundObserver for StopFirst {
    fn round(&mut self, evals: &[(usize, Evaluation)]) -> anyhow::Result<Vec<Control>> {
        Ok(evals.iter().map(|(m, _)| if *m == 0 { Control::Stop } else { Control::Continue }).collect())
    }
}

#[test]
fn a_stopped_member_costs_no_updates_and_leaves_the_others_as_they_were() {
    use serde_json::json;
    let runs: Vec<TrainConfig> =
        (0..3).map(|s| variant("", 40 + s, &[("agent.lr", json!(0.001 * (s + 1) as f64))])).collect();
    let outcome = train_batched(&runs, &mut StopFirst).unwrap();
    assert_eq!(outcome.members[0].halt, Some(Halt::Stopped));
    assert_eq!((outcome.members[0].steps, outcome.members[0].evaluations.len()), (100, 1));
    let at_stop = train_batched(&runs[..1], &mut StopFirst).unwrap();
    let diff = max_abs_diff(outcome.learner.parameters(0), at_stop.learner.parameters(0));
    assert_eq!(diff, 0.0, "member 0 took no update after it stopped");
    for (i, run) in runs.iter().enumerate().skip(1) {
        let alone = train(run, &mut ()).unwrap();
        let state = alone.agent.learner_state().unwrap();
        assert_eq!(max_abs_diff(outcome.learner.parameters(i), state.get("online").unwrap()), 0.0, "member {i}");
        assert_eq!(outcome.members[i].evaluations.len(), 2);
    }
}

/// Stops every member but the last at the first evaluation.
struct KeepLast(usize);

impl RoundObserver for KeepLast {
    fn round(&mut self, evals: &[(usize, Evaluation)]) -> anyhow::Result<Vec<Control>> {
        Ok(evals.iter().map(|(m, _)| if *m + 1 < self.0 { Control::Stop } else { Control::Continue }).collect())
    }
}

#[test]
fn stopped_members_are_compacted_away_and_the_rest_trains_on_unchanged() {
    use serde_json::json;
    let runs: Vec<TrainConfig> =
        (0..4).map(|s| variant("", 50 + s, &[("agent.lr", json!(0.001 * (s + 1) as f64))])).collect();
    let outcome = train_batched(&runs, &mut KeepLast(4)).unwrap();
    assert_eq!(outcome.slots, vec![None, None, None, Some(0)], "three of four stopped: compacted to one");
    assert_eq!(outcome.learner.members(), 1);
    for m in &outcome.members[..3] {
        assert_eq!((m.halt.clone(), m.steps, m.evaluations.len()), (Some(Halt::Stopped), 100, 1));
    }
    let alone = train(&runs[3], &mut ()).unwrap();
    let state = alone.agent.learner_state().unwrap();
    assert_eq!(max_abs_diff(outcome.learner.parameters(0), state.get("online").unwrap()), 0.0);
    let returns = |e: &[Evaluation]| e.iter().map(|e| e.returns.clone()).collect::<Vec<_>>();
    assert_eq!(returns(&outcome.members[3].evaluations), returns(&alone.evaluations));
}

/// Stops run 0 at its first evaluation and gives the freed slot to the runs in `next`, one per
/// refill; records the order in which runs end.
struct Refill {
    next: Vec<TrainConfig>,
    ended: Vec<usize>,
}

impl RoundObserver for Refill {
    fn round(&mut self, evals: &[(usize, Evaluation)]) -> anyhow::Result<Vec<Control>> {
        Ok(evals.iter().map(|(m, _)| if *m == 0 { Control::Stop } else { Control::Continue }).collect())
    }

    fn finished(&mut self, member: usize, _outcome: &tune::rl::batched::MemberOutcome) -> anyhow::Result<()> {
        self.ended.push(member);
        Ok(())
    }

    fn refill(&mut self, free: usize, _step: u64) -> anyhow::Result<Vec<TrainConfig>> {
        let n = free.min(self.next.len()).min(1);
        Ok(self.next.drain(..n).collect())
    }
}

#[test]
fn a_freed_slot_takes_the_next_run_which_trains_as_it_would_alone() {
    use serde_json::json;
    // Run 0 stops at step 100; run 3 takes its slot there and runs its own 200 steps beside
    // runs 1 and 2, which end at step 200; run 4 takes a slot freed then and trains alone in
    // the learner up to step 400.
    let runs: Vec<TrainConfig> =
        (0..3).map(|s| variant("", 60 + s, &[("agent.lr", json!(0.001 * (s + 1) as f64))])).collect();
    let next: Vec<TrainConfig> =
        (3..5).map(|s| variant("", 60 + s, &[("agent.gamma", json!(0.95)), ("agent.lr", json!(0.002))])).collect();
    let mut observer = Refill { next: next.clone(), ended: Vec::new() };
    let outcome = train_batched(&runs, &mut observer).unwrap();
    assert_eq!(observer.ended, vec![0, 1, 2, 3, 4], "each run is handed out once, as it ends");
    assert_eq!(outcome.members.len(), 5);
    assert_eq!((outcome.members[0].halt.clone(), outcome.members[0].steps), (Some(Halt::Stopped), 100));
    let returns = |e: &[Evaluation]| e.iter().map(|e| (e.step, e.returns.clone())).collect::<Vec<_>>();
    for (index, run) in runs.iter().chain(&next).enumerate().skip(1) {
        let alone = train(run, &mut ()).unwrap();
        let member = &outcome.members[index];
        assert_eq!((member.halt.clone(), member.steps, member.episodes), (None, 200, alone.episodes), "run {index}");
        assert_eq!(returns(&member.evaluations), returns(&alone.evaluations), "run {index}: evaluations");
    }
    // The last run still holds its slot: its weights are those of its run alone, bit for bit.
    let slot = outcome.slots[4].expect("run 4 ends in the learner");
    let alone = train(&next[1], &mut ()).unwrap().agent.learner_state().unwrap();
    assert_eq!(max_abs_diff(outcome.learner.parameters(slot), alone.get("online").unwrap()), 0.0);
}

#[test]
fn a_refilled_member_with_environment_copies_keeps_its_own_vector_steps() {
    use serde_json::json;
    // 3 copies and a budget of 250 steps with evaluations every 100: run 3 joins at step 100,
    // so the others' end (their step 250) falls inside its vector steps. It must step exactly
    // as alone: full vector steps except at its own evaluations and end.
    let with_copies = |s: u64, lr: f64| {
        let mut v = variant("", 110 + s, &[("agent.lr", json!(lr))]).to_value();
        v["env"]["num_envs"] = json!(3);
        v["budget"]["steps"] = json!(250);
        TrainConfig::from_value(&v).unwrap()
    };
    let runs: Vec<TrainConfig> = (0..3).map(|s| with_copies(s, 0.001 * (s + 1) as f64)).collect();
    let next = vec![with_copies(3, 0.002)];
    let mut observer = Refill { next: next.clone(), ended: Vec::new() };
    let outcome = train_batched(&runs, &mut observer).unwrap();
    let alone = train(&next[0], &mut ()).unwrap();
    let member = &outcome.members[3];
    let returns = |e: &[Evaluation]| e.iter().map(|e| (e.step, e.returns.clone())).collect::<Vec<_>>();
    assert_eq!((member.steps, member.episodes), (250, alone.episodes));
    assert_eq!(returns(&member.evaluations), returns(&alone.evaluations));
    let slot = outcome.slots[3].expect("run 3 ends last, in the learner");
    let state = alone.agent.learner_state().unwrap();
    assert_eq!(max_abs_diff(outcome.learner.parameters(slot), state.get("online").unwrap()), 0.0);
}

#[test]
fn c51_and_qr_members_make_the_updates_of_agents_alone() {
    use serde_json::json;
    for head in [json!({"type": "c51", "atoms": 21, "v_min": 0, "v_max": 100}), json!({"type": "qr", "quantiles": 16})]
    {
        let runs: Vec<TrainConfig> = (0..3)
            .map(|s| {
                variant(
                    "",
                    70 + s,
                    &[
                        ("agent.head", head.clone()),
                        ("agent.loss", Value::Null),
                        ("agent.double", json!(s == 1)),
                        ("agent.lr", json!(0.001 * (s + 1) as f64)),
                    ],
                )
            })
            .collect();
        // Double DQN is a group option: the double member trains in a group of its own.
        let groups = [vec![runs[0].clone(), runs[2].clone()], vec![runs[1].clone()]];
        for group in groups.iter().filter(|g| g.len() > 1) {
            batched_matches_unbatched(group);
        }
        let mut doubles = vec![runs[1].clone()];
        let mut again = runs[1].clone();
        again.seed = 99;
        doubles.push(again);
        batched_matches_unbatched(&doubles);
    }
}

#[test]
fn dueling_c51_and_qr_members_make_the_updates_of_agents_alone() {
    use serde_json::json;
    // The dueling streams combined per atom (value + advantage - mean advantage), as the
    // agent's `dueling_aggregate_atoms` does; the agent's side is autograd.
    for head in [json!({"type": "c51", "atoms": 11, "v_min": 0, "v_max": 100}), json!({"type": "qr", "quantiles": 8})] {
        let runs: Vec<TrainConfig> = (0..3)
            .map(|s| {
                variant(
                    "",
                    80 + s,
                    &[
                        ("agent.head", head.clone()),
                        ("agent.loss", Value::Null),
                        ("agent.net", json!({"type": "mlp", "hidden": [32, 32], "dueling": true})),
                        ("agent.replay", json!({"type": "uniform", "size": 1000})),
                        ("agent.lr", json!(0.001 * (s + 1) as f64)),
                    ],
                )
            })
            .collect();
        batched_matches_unbatched(&runs);
    }
}

#[test]
fn munchausen_members_with_their_own_alpha_tau_and_clip_make_the_updates_of_agents_alone() {
    use serde_json::json;
    let runs: Vec<TrainConfig> = [(0.9, 0.03, -1.0), (0.5, 0.1, -0.5), (0.9, 0.01, -2.0)]
        .into_iter()
        .enumerate()
        .map(|(s, (alpha, tau, clip))| {
            let mut v = variant("", 100 + s as u64, &[("agent.lr", json!(0.001 * (s + 1) as f64))]).to_value();
            v["agent"]["munchausen"] = json!({"alpha": alpha, "tau": tau, "clip": clip});
            TrainConfig::from_value(&v).unwrap()
        })
        .collect();
    batched_matches_unbatched(&runs);
}

#[test]
fn noisy_members_make_the_updates_of_agents_alone() {
    use serde_json::json;
    // NoisyNets (Fortunato et al. 2018): each member draws its own noise from its own stream
    // before each greedy action and each gradient step, as its agent; evaluations use the
    // means. On CPU each member runs the agent's own operations: bit for bit.
    let noisy = |seed: u64, sigma0: f64, set: &[(&str, Value)]| {
        let mut v = variant("", seed, set).to_value();
        v["agent"]["noisy"] = json!({ "sigma0": sigma0 });
        v["agent"]["exploration"] = json!({"type": "constant", "epsilon": 0.0});
        TrainConfig::from_value(&v).unwrap()
    };
    let plain: Vec<TrainConfig> = [(0.5, 0.001), (0.4, 0.002), (0.6, 0.0005)]
        .iter()
        .enumerate()
        .map(|(s, &(sigma0, lr))| noisy(130 + s as u64, sigma0, &[("agent.lr", json!(lr))]))
        .collect();
    batched_matches_unbatched(&plain);
    let c51 = json!({"type": "c51", "atoms": 11, "v_min": 0, "v_max": 100});
    let dueling: Vec<TrainConfig> = (0..2)
        .map(|s| {
            noisy(
                140 + s,
                0.5,
                &[
                    ("agent.net", json!({"type": "mlp", "hidden": [32, 32], "dueling": true})),
                    ("agent.head", c51.clone()),
                    ("agent.loss", Value::Null),
                    ("agent.double", json!(true)),
                ],
            )
        })
        .collect();
    batched_matches_unbatched(&dueling);
}

#[test]
fn iqn_and_distributional_munchausen_members_make_the_updates_of_agents_alone() {
    use serde_json::json;
    // The agent's own target and loss maths on every member's rows at once: IQN with each
    // member's fractions from its own stream, and Munchausen's soft target on C51 and QR-DQN
    // with each member's alpha, tau and clip.
    let with = |seed: u64, set: &[(&str, Value)], munchausen: Option<(f64, f64, f64)>| {
        let mut v = variant("", seed, set).to_value();
        if let Some((alpha, tau, clip)) = munchausen {
            v["agent"]["munchausen"] = json!({"alpha": alpha, "tau": tau, "clip": clip});
        }
        TrainConfig::from_value(&v).unwrap()
    };
    let iqn = json!({"type": "iqn", "n_tau": 8, "n_tau_prime": 8, "k_policy": 8, "embedding": 16});
    let runs: Vec<TrainConfig> = (0..3)
        .map(|s| {
            with(
                150 + s,
                &[
                    ("agent.head", iqn.clone()),
                    ("agent.loss", Value::Null),
                    ("agent.lr", json!(0.001 * (s + 1) as f64)),
                ],
                None,
            )
        })
        .collect();
    batched_matches_unbatched(&runs);
    let scalars = [(0.9, 0.03, -1.0), (0.5, 0.1, -0.5), (0.9, 0.01, -2.0)];
    for head in [json!({"type": "c51", "atoms": 11, "v_min": 0, "v_max": 100}), json!({"type": "qr", "quantiles": 8})] {
        let runs: Vec<TrainConfig> = scalars
            .iter()
            .enumerate()
            .map(|(s, &m)| {
                with(
                    160 + s as u64,
                    &[
                        ("agent.head", head.clone()),
                        ("agent.loss", Value::Null),
                        ("agent.net", json!({"type": "mlp", "hidden": [32, 32], "dueling": true})),
                    ],
                    Some(m),
                )
            })
            .collect();
        batched_matches_unbatched(&runs);
    }
}

/// A Nature CNN run on Breakout, its frames shrunk to 36x36 (the smallest the convolutions
/// take) and its episodes cut at 100 steps, so that the whole comparison takes seconds.
#[cfg(feature = "atari")]
fn breakout(seed: u64, set: &[(&str, Value)]) -> TrainConfig {
    use serde_json::json;
    let mut all = vec![
        ("env", json!({"id": "ALE/Breakout-v5", "screen_size": 36, "max_episode_steps": 100})),
        ("agent.net", json!({"type": "nature_cnn"})),
        // Uniform replay: with PER, a float-level difference in a TD error can move a sampled
        // index across a sum-tree boundary and the runs part ways.
        ("agent.replay", json!({"type": "uniform", "size": 1000})),
        ("eval", json!({"every": 100, "episodes": 1})),
    ];
    all.extend(set.iter().cloned());
    variant("", seed, &all)
}

#[test]
#[cfg(feature = "atari")]
fn nature_cnn_members_make_the_updates_of_agents_alone() {
    use serde_json::json;
    // On CPU each member's convolutions and dense layers run as the agent's own, through
    // autograd (the GPU's grouped convolution is compared in the learner's unit tests): greedy
    // actions, evaluations and updates are the agent's.
    let plain: Vec<TrainConfig> = (0..3)
        .map(|s| {
            breakout(
                110 + s,
                &[("agent.lr", json!(0.0005 * (s + 1) as f64)), ("agent.gamma", json!(0.97 + 0.01 * s as f64))],
            )
        })
        .collect();
    batched_matches_unbatched(&plain);
    let dueling: Vec<TrainConfig> = (0..2)
        .map(|s| {
            breakout(
                120 + s,
                &[
                    ("agent.net", json!({"type": "nature_cnn", "dueling": true})),
                    ("agent.double", json!(true)),
                    ("agent.max_grad_norm", json!(1.0 + s as f64)),
                ],
            )
        })
        .collect();
    batched_matches_unbatched(&dueling);
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
    let iqn = variant("", 1, &[("agent.head", json!({"type": "iqn"})), ("agent.loss", Value::Null)]);
    batchable(&[iqn.clone(), iqn]).unwrap();
    let episodes = variant("", 1, &[("budget", json!({"episodes": 20}))]);
    let err = batchable(&[episodes.clone(), episodes]).unwrap_err();
    assert!(err.contains("budget in steps"), "{err}");
    let c51 = variant("", 1, &[("agent.head", json!({"type": "c51"})), ("agent.loss", Value::Null)]);
    assert!(batchable(&[a.clone(), c51]).is_err(), "heads of different widths do not share a learner");
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

/// Two-sided p-value of the Mann-Whitney U test (normal approximation with tie correction).
fn mann_whitney_p(a: &[f64], b: &[f64]) -> f64 {
    let mut all: Vec<(f64, usize)> = a.iter().map(|&x| (x, 0)).chain(b.iter().map(|&x| (x, 1))).collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    let (n1, n2, n) = (a.len() as f64, b.len() as f64, all.len() as f64);
    let (mut rank_a, mut ties) = (0.0, 0.0);
    let mut i = 0;
    while i < all.len() {
        let j = (i..all.len()).take_while(|&j| all[j].0 == all[i].0).last().unwrap() + 1;
        let rank = (i + j + 1) as f64 / 2.0;
        rank_a += all[i..j].iter().filter(|x| x.1 == 0).count() as f64 * rank;
        let t = (j - i) as f64;
        ties += t * t * t - t;
        i = j;
    }
    let u = rank_a - n1 * (n1 + 1.0) / 2.0;
    let var = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    if var <= 0.0 {
        return 1.0;
    }
    let z = (u - n1 * n2 / 2.0).abs() / var.sqrt();
    // 2 (1 - Phi(z)), Phi by the complementary error function (Abramowitz-Stegun 7.1.26).
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    (poly * (-x * x).exp()).min(1.0)
}

#[test]
fn mann_whitney_matches_scipy() {
    // scipy.stats.mannwhitneyu(a, b, use_continuity=False, method="asymptotic").pvalue
    let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
    let b = [5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0];
    assert!((mann_whitney_p(&a, &b) - 0.011_473_1).abs() < 1e-5, "{}", mann_whitney_p(&a, &b));
    assert!((mann_whitney_p(&a, &a) - 1.0).abs() < 1e-6);
}

/// Item 4: over 20 seeds, the final returns (last evaluation, 20 greedy episodes) of
/// `configs/per_cartpole.yaml` trained batched and one agent at a time are not significantly
/// different (two-sided Mann-Whitney U test, 5%).
#[test]
fn final_returns_of_batched_and_unbatched_per_cartpole_runs_do_not_differ() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/per_cartpole.yaml");
    let base = TrainConfig::load(&path).unwrap();
    let runs: Vec<TrainConfig> = (0..20u64)
        .map(|seed| {
            let mut c = base.clone();
            c.seed = 1000 + seed;
            c
        })
        .collect();
    let batched: Vec<f64> = train_batched(&runs, &mut Rounds::default())
        .unwrap()
        .members
        .iter()
        .map(|m| m.evaluations.last().unwrap().mean)
        .collect();
    // One agent at a time, two at once on the two cores CI has.
    let alone: Vec<f64> = std::thread::scope(|s| {
        let halves: Vec<_> = runs
            .chunks(10)
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|c| train(c, &mut ()).unwrap().evaluations.last().unwrap().mean)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        halves.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let p = mann_whitney_p(&batched, &alone);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!("final returns, batched:   {batched:?} (mean {:.1})", mean(&batched));
    println!("final returns, unbatched: {alone:?} (mean {:.1})", mean(&alone));
    println!("two-sided Mann-Whitney U p = {p:.3}");
    assert!(p > 0.05, "batched and unbatched final returns differ (p = {p:.3})");
}

/// Item 6: `parallelism: {batch: 4}` asks four trials at once and trains compatible ones as one
/// learner (a member per trial and seed); each trial reports its own evaluations, is pruned on
/// its own, and is an ordinary trial to Optuna.
/// Runs the study file `yaml` (study `name`) with `tune run` into a fresh SQLite file and
/// returns its folder (holding `s.db`) and trials.
fn run_study(name: &str, yaml: &str) -> (tempfile::TempDir, Vec<std::sync::Arc<tune::frozen::FrozenTrial>>) {
    let dir = tempfile::TempDir::new().unwrap();
    let study = dir.path().join("study.yaml");
    std::fs::write(&study, yaml).unwrap();
    let url = format!("sqlite:///{}", dir.path().join("s.db").display());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tune"))
        .args(["run", study.to_str().unwrap(), "--storage", &url, "--plain"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let storage = tune::storage::open(&url).unwrap();
    let id = storage.get_study_id_from_name(name).unwrap().unwrap();
    (dir, storage.get_all_trials(id, None).unwrap())
}

#[test]
fn trials_asked_together_train_as_one_learner_and_stay_ordinary_trials() {
    let (dir, trials) = run_study(
        "batched-trials",
        "name: batched-trials
direction: maximize
n_trials: 8
seed: 3
sampler: {type: random}
pruner: {type: median, n_startup_trials: 2}
parallelism: {jobs: 1, batch: 4}
objective:
  type: rl
  seeds: 2
  config:
    env: {id: CartPole-v1}
    budget: {steps: 1500}
    eval: {every: 500, episodes: 2}
    agent: {type: dqn, learning_starts: 200, train_freq: 8, gradient_steps: 2, replay: {type: prioritized, size: 5000}}
search_space:
  agent.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  agent.batch_size: {type: categorical, choices: [32, 64]}
",
    );
    assert_eq!(trials.len(), 8);
    let mut members = std::collections::BTreeMap::new();
    for t in &trials {
        assert!(t.state.is_finished(), "trial {} is {:?}", t.number, t.state);
        assert_eq!(t.user_attrs["batched"], serde_json::json!(true), "trial {}", t.number);
        assert_eq!(t.user_attrs["per_seed"].as_array().unwrap().len(), 2);
        let steps: Vec<i64> = t.intermediate_values.keys().copied().collect();
        let expected: Vec<i64> = (1..=steps.len() as i64).map(|i| 500 * i).collect();
        assert_eq!(steps, expected, "trial {}: its own evaluations, every 500 steps", t.number);
        if t.state == tune::frozen::TrialState::Complete {
            assert_eq!(steps.len(), 3);
        }
        *members.entry(t.params["agent.batch_size"].to_string()).or_insert(0) += 1;
        assert!(t.user_attrs["batch_members"].as_u64().unwrap() >= 2);
    }
    // Each group holds trials of one batch size: a group's member count is twice its trials.
    for t in &trials {
        let m = t.user_attrs["batch_members"].as_u64().unwrap();
        assert_eq!(m % 2, 0, "two seeds per trial");
    }
    assert!(members.len() == 2, "both batch sizes were sampled: {members:?}");
    // Optuna reads the study as it reads any other.
    let py = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let script = format!(
        "import optuna\ns = optuna.load_study(study_name='batched-trials', storage='sqlite:///{}')\n\
         print(len(s.trials), sum(len(t.intermediate_values) > 0 for t in s.trials), s.best_trial.number)",
        dir.path().join("s.db").display()
    );
    match std::process::Command::new(&py).args(["-c", &script]).output() {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            assert!(text.starts_with("8 8 "), "{text}");
        }
        _ => eprintln!("skipped the Optuna check: {} cannot import optuna (run scripts/setup.sh)", py.display()),
    }
}

#[test]
fn pruned_trials_give_their_slots_to_the_next_trials() {
    // Every trial is pruned at its first evaluation: each freed slot takes the next trial at
    // that step of the learner (item 6), and the trials stay ordinary ones.
    let (_dir, trials) = run_study(
        "refilled",
        "name: refilled
direction: maximize
n_trials: 6
seed: 5
sampler: {type: random}
pruner: {type: threshold, lower: 1.0e9}
parallelism: {jobs: 1, batch: 2}
objective:
  type: rl
  seeds: 1
  config:
    env: {id: CartPole-v1}
    budget: {steps: 1000}
    eval: {every: 300, episodes: 2}
    agent: {type: dqn, learning_starts: 100, train_freq: 4, replay: {type: uniform, size: 5000}}
search_space:
  agent.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
",
    );
    assert_eq!(trials.len(), 6);
    let mut joined: Vec<(i64, u64)> = Vec::new();
    for t in &trials {
        assert_eq!(t.state, tune::frozen::TrialState::Pruned, "trial {}", t.number);
        let steps: Vec<i64> = t.intermediate_values.keys().copied().collect();
        assert_eq!(steps, vec![300], "trial {}: pruned at its own first evaluation", t.number);
        assert_eq!(t.user_attrs["batched"], serde_json::json!(true), "trial {}", t.number);
        assert_eq!(t.user_attrs["batch_members"], serde_json::json!(2));
        joined.push((t.number, t.user_attrs["batch_joined_step"].as_u64().unwrap()));
    }
    // Two trials start the learner; each pair after them takes the two freed slots 300 steps on.
    assert_eq!(joined, vec![(0, 0), (1, 0), (2, 300), (3, 300), (4, 600), (5, 600)], "{joined:?}");
}

#[test]
fn a_batch_of_single_run_trials_resolves_a_relative_pretrained_path_once() {
    // Two trials of different batch sizes asked together train alone, each from its own
    // config; the pretrained path is relative to the study file's folder, and the study is
    // run from its parent (a relative base), where resolving it twice would point nowhere.
    let dir = tempfile::TempDir::new().unwrap();
    let studies = dir.path().join("studies");
    std::fs::create_dir(&studies).unwrap();
    let mut source = variant("", 0, &[("agent.net", serde_json::json!({"type": "mlp", "hidden": [16]}))]);
    source.budget.steps = Some(50);
    train(&source, &mut ()).unwrap().agent.save(&studies.join("w.safetensors")).unwrap();
    std::fs::write(
        studies.join("s.yaml"),
        "name: relative
direction: maximize
n_trials: 2
sampler: {type: random}
parallelism: {jobs: 1, batch: 2}
objective:
  type: rl
  config:
    env: {id: CartPole-v1}
    budget: {steps: 300}
    eval: {every: 150, episodes: 1}
    agent:
      type: dqn
      net: {type: mlp, hidden: [16]}
      learning_starts: 50
      replay: {type: uniform, size: 1000}
      pretrained: {path: w.safetensors}
search_space:
  agent.batch_size: {type: categorical, choices: [16, 32]}
",
    )
    .unwrap();
    let tune = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tune"))
            .current_dir(dir.path())
            .args(args)
            .args(["--storage", "sqlite:///r.db"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    // Enqueued, so that the two trials asked together surely differ in shape.
    for size in ["16", "32"] {
        tune(&["enqueue", "studies/s.yaml", "--param", &format!("agent.batch_size={size}")]);
    }
    tune(&["run", "studies/s.yaml", "--plain"]);
    let storage = tune::storage::open(&format!("sqlite:///{}", dir.path().join("r.db").display())).unwrap();
    let id = storage.get_study_id_from_name("relative").unwrap().unwrap();
    let trials = storage.get_all_trials(id, None).unwrap();
    let sizes: std::collections::BTreeSet<String> =
        trials.iter().map(|t| t.params["agent.batch_size"].to_string()).collect();
    assert_eq!(sizes.len(), 2, "the enqueued trials have different batch sizes");
    for t in &trials {
        assert_eq!(t.state, tune::frozen::TrialState::Complete, "trial {}: {:?}", t.number, t.system_attrs);
        assert_eq!(t.user_attrs.get("batch_members"), None, "trial {} trained alone", t.number);
    }
}
