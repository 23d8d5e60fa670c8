//! Learning and reproducibility of the trainer (issue 4, items 6, 8 and 9), on CPU with the
//! configs users run from `configs/`.

use std::path::Path;
use std::process::Command;

use tune::rl::train::{train, TrainConfig};

fn config(name: &str) -> TrainConfig {
    TrainConfig::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("configs").join(name)).unwrap()
}

fn best_eval(cfg: &TrainConfig) -> f64 {
    let outcome = train(cfg, &mut ()).unwrap();
    let means: Vec<f64> = outcome.evaluations.iter().map(|e| e.mean).collect();
    println!("{}: evaluation means {means:?}", cfg.env.id);
    assert!(outcome.evaluations.iter().all(|e| e.returns.len() == 20 && e.step <= 50_000));
    means.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// Trains `name` and requires a best evaluation of at least 475 (CartPole-v1's "solved").
fn solves_cartpole(name: &str) {
    let best = best_eval(&config(name));
    assert!(best >= 475.0, "{name}: best evaluation {best} < 475");
}

#[test]
fn dqn2015_solves_cartpole_within_50k_steps() {
    solves_cartpole("dqn2015_cartpole.yaml");
}

#[test]
fn dqn_with_prioritized_replay_solves_cartpole_within_50k_steps() {
    solves_cartpole("per_cartpole.yaml");
}

/// The distributional heads and Munchausen's target on the DQN 2015 config (issue 15, item 6).
#[test]
fn c51_solves_cartpole_within_50k_steps() {
    solves_cartpole("c51_cartpole.yaml");
}

#[test]
fn qr_dqn_solves_cartpole_within_50k_steps() {
    solves_cartpole("qr_cartpole.yaml");
}

#[test]
fn munchausen_dqn_solves_cartpole_within_50k_steps() {
    solves_cartpole("mdqn_cartpole.yaml");
}

#[test]
fn iqn_solves_cartpole_within_50k_steps() {
    solves_cartpole("iqn_cartpole.yaml");
}

#[test]
fn noisy_dqn_solves_cartpole_within_50k_steps() {
    solves_cartpole("noisy_cartpole.yaml");
}

/// Rainbow: C51 + noisy + dueling + double + PER + 3-step, options only (issue 15, item 4).
#[test]
fn rainbow_solves_cartpole_within_50k_steps() {
    solves_cartpole("rainbow_cartpole.yaml");
}

#[test]
fn q_learning_and_sarsa_solve_deterministic_frozenlake() {
    for name in ["qlearning_frozenlake.yaml", "sarsa_frozenlake.yaml"] {
        let outcome = train(&config(name), &mut ()).unwrap();
        let last = outcome.evaluations.last().unwrap();
        assert_eq!(last.mean, 1.0, "{name}: the greedy policy must reach the goal every time");
    }
}

fn tune() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tune"))
}

/// A short PER run with evaluations, for the file-level checks.
fn short_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/per_cartpole.yaml"))
        .unwrap()
        .replace("budget: {steps: 50000}", "budget: {steps: 3000}")
        .replace("eval: {every: 2500, episodes: 20, epsilon: 0.0}", "eval: {every: 1000, episodes: 3, epsilon: 0.0}")
        .replace("learning_starts: 1000", "learning_starts: 500")
        .replace("train_freq: 256", "train_freq: 16")
        .replace("gradient_steps: 128", "gradient_steps: 8")
        + extra;
    let path = dir.join("short.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn same_config_and_seed_give_identical_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = short_config(dir.path(), "");
    for (run, seed) in [("a", "3"), ("b", "3"), ("c", "4")] {
        let out = tune()
            .args(["train", cfg.to_str().unwrap(), "--seed", seed, "--quiet", "--out"])
            .arg(dir.path().join(run))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let read = |run: &str, file: &str| std::fs::read_to_string(dir.path().join(run).join(file)).unwrap();
    for file in ["episodes.csv", "evals.csv", "config.yaml"] {
        assert_eq!(read("a", file), read("b", file), "{file} differs between two runs with seed 3");
    }
    assert_ne!(read("a", "episodes.csv"), read("c", "episodes.csv"), "seed 4 gives another run");
    assert!(read("a", "episodes.csv").lines().count() > 10);
    assert!(read("a", "config.yaml").contains("seed: 3"));
    for file in ["weights.safetensors", "best_weights.safetensors", "summary.json"] {
        assert!(dir.path().join("a").join(file).exists(), "{file}");
    }

    // The run folder evaluates, and saves a GIF.
    let gif = dir.path().join("episode.gif");
    let out = tune().args(["eval", "--episodes", "3", "--gif"]).arg(&gif).arg(dir.path().join("a")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("mean return") && stdout.contains("over 3 episodes"), "{stdout}");
    assert_eq!(&std::fs::read(&gif).unwrap()[..6], b"GIF89a");
}

#[test]
fn diverging_runs_stop_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = short_config(dir.path(), "  reward_scale: 1.0e38\n").to_str().unwrap().to_string();
    let text = std::fs::read_to_string(&cfg).unwrap().replace("loss: huber", "loss: mse");
    std::fs::write(&cfg, text).unwrap();
    let out = tune().args(["train", &cfg, "--quiet", "--out"]).arg(dir.path().join("r")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("training diverged") && !stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_configs_exit_2_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("agent:\n  type: dqn\n  lr: fast\n", "agent.lr"),
        ("env: {id: CartPole-v9}\nbudget: {steps: 10}\nagent: {type: dqn}\n", "unknown env id"),
        (
            "env: {id: CartPole-v1}\nbudget: {steps: 10}\nagent: {type: dqn, replay: {type: prioritized, alpha: 2}}\n",
            "alpha",
        ),
        ("env: {id: CartPole-v1}\nbudget: {steps: 10}\nagent: {type: q_learning}\n", "discrete observations"),
        ("env: {id: CartPole-v1}\nbudget: {steps: 10}\ndevice: tpu\nagent: {type: dqn}\n", "device"),
        ("env: {id: CartPole-v1}\nbudget: {}\nagent: {type: dqn}\n", "budget"),
        ("env: [\n", "invalid YAML"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(&path, text).unwrap();
        let out = tune().args(["train", path.to_str().unwrap(), "--out"]).arg(dir.path().join("out")).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
        assert!(stderr.contains(expected) && stderr.contains(&format!("bad{i}.yaml")), "{text}: {stderr}");
    }
    let out = tune().args(["train", "missing.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = tune().args(["eval"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a folder without config.yaml");
}

#[test]
fn cuda_configs_train_when_a_gpu_is_present() {
    if !tch::Cuda::is_available() {
        eprintln!("skipped: no CUDA device here (tch::Cuda::is_available() is false)");
        return;
    }
    let mut cfg = config("per_cartpole.yaml");
    cfg.device = "cuda".into();
    let best = best_eval(&cfg);
    assert!(best >= 475.0, "best evaluation on CUDA {best} < 475");
}

#[test]
fn rl_study_trains_each_trial_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let study = dir.path().join("study.yaml");
    std::fs::write(
        &study,
        "name: tiny-rl
direction: maximize
n_trials: 3
seed: 1
sampler: {type: random}
pruner: {type: median, n_startup_trials: 1}
parallelism: {jobs: 2}
objective:
  type: rl
  value: mean_last_k
  k: 2
  seeds: 2
  config:
    env: {id: CartPole-v1}
    budget: {steps: 1500}
    eval: {every: 500, episodes: 2}
    agent: {type: dqn, learning_starts: 200, train_freq: 8, gradient_steps: 2, replay: {type: prioritized, size: 5000}}
search_space:
  agent.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  agent.replay.alpha: {type: float, low: 0.2, high: 1.0}
",
    )
    .unwrap();
    let url = format!("sqlite:///{}", dir.path().join("rl.db").display());
    let out = tune().args(["run", study.to_str().unwrap(), "--storage", &url, "--plain"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let storage = tune::storage::open(&url).unwrap();
    let id = storage.get_study_id_from_name("tiny-rl").unwrap().unwrap();
    let trials = storage.get_all_trials(id, None).unwrap();
    assert_eq!(trials.len(), 3);
    for t in &trials {
        for key in ["seeds", "device", "wall_s", "env_steps", "steps_per_s", "episodes", "per_seed"] {
            assert!(t.user_attrs.contains_key(key), "trial {} lacks {key}: {:?}", t.number, t.user_attrs);
        }
        assert_eq!(t.user_attrs["per_seed"].as_array().unwrap().len(), 2, "two seeds per trial");
        assert_eq!(t.user_attrs["batched"], serde_json::json!(true), "the seeds train as one batched learner");
        assert!(!t.intermediate_values.is_empty(), "evaluations are reported");
        if t.state == tune::frozen::TrialState::Complete {
            assert_eq!(t.user_attrs["env_steps"], serde_json::json!(3000));
            let curve: Vec<f64> = t.intermediate_values.values().copied().collect();
            let expected = (curve[curve.len() - 1] + curve[curve.len() - 2]) / 2.0;
            assert!((t.value.unwrap() - expected).abs() < 1e-9, "mean of the last 2 evaluations");
        }
    }
    // The exported config trains with the best trial's values and seed.
    let best = dir.path().join("best.yaml");
    let out = tune().args(["export", "tiny-rl", "--storage", &url, "-o"]).arg(&best).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exported = TrainConfig::load(&best).unwrap();
    let seeds: Vec<u64> = trials.iter().map(|t| t.user_attrs["seeds"][0].as_u64().unwrap()).collect();
    assert!(seeds.contains(&exported.seed), "exported seed {} is a trial's seed {seeds:?}", exported.seed);
}
