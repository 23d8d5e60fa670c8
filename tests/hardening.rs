//! The binary keeps its promises when things go wrong: a storage failure in any phase ends the
//! run promptly with the error and its exit code, and a rerun finishes the study with nothing
//! lost; panics inside trials become FAIL reasons with no panic text on the terminal; study
//! and trainer files named without a folder work for every objective and subcommand.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use predicates::prelude::*;
use tempfile::TempDir;

mod common;
use common::db_counts;

fn tune(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("tune").unwrap();
    c.current_dir(dir).env_remove("TUNE_FAULT").env_remove("RUST_BACKTRACE").timeout(Duration::from_secs(120));
    c
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A study whose trials report every step, two at a time, with fast heartbeats.
const CURVE: &str = "\
name: curve
direction: minimize
n_trials: 8
seed: 3
pruner: {type: median, n_startup_trials: 2}
parallelism: {jobs: 2}
heartbeat: {interval: 0.2, grace: 5, retries: 1}
objective:
  type: function
  name: learning_curve
  config: {steps: 6, step_sleep_ms: 15}
search_space:
  x.0: {type: float, low: -5, high: 5}
  lr: {type: float, low: 1.0e-4, high: 1.0, log: true}
";

/// `configs/per_cartpole.yaml` cut down to `steps` steps with quick evaluations.
fn small_trainer(steps: u64) -> String {
    std::fs::read_to_string(repo().join("configs/per_cartpole.yaml"))
        .unwrap()
        .replace("budget: {steps: 50000}", &format!("budget: {{steps: {steps}}}"))
        .replace("eval: {every: 2500, episodes: 20, epsilon: 0.0}", "eval: {every: 300, episodes: 2, epsilon: 0.0}")
        .replace("learning_starts: 1000", "learning_starts: 100")
}

fn no_panic_text() -> impl Predicate<str> {
    predicate::str::contains("panicked at").not().and(predicate::str::contains("RUST_BACKTRACE=1` environment").not())
}

#[test]
fn a_storage_failure_in_any_phase_ends_the_run_with_its_exit_code_and_loses_nothing() {
    let cases = [
        ("storage.set_study_system_attr:1:locked", 2),
        ("storage.fail_stale_trials:1", 1),
        ("storage.start_next_trial:4", 1),
        ("storage.set_trial_user_attr:3:locked", 2),
        ("storage.set_trial_param:5", 1),
        ("storage.set_trial_intermediate_values:2:locked", 2),
        ("storage.set_trial_state_values:3", 1),
        // The first trial panics, so that its FAIL reason is the failing write.
        ("trial.panic:1,storage.set_trial_system_attr:1", 1),
    ];
    for (fault, code) in cases {
        let dir = TempDir::new().unwrap();
        write(dir.path(), "curve.yaml", CURVE);
        let start = Instant::now();
        let mut cmd = tune(dir.path());
        cmd.env("TUNE_FAULT", fault).args(["run", "curve.yaml", "--plain"]);
        cmd.assert().code(code).stderr(predicate::str::contains("injected fault").and(no_panic_text()));
        assert!(start.elapsed() < Duration::from_secs(30), "{fault}: the run took {:?}", start.elapsed());
        let db = dir.path().join("tune.db");
        if db.exists() {
            let (_, running, integrity) = db_counts(&db);
            assert_eq!((running, integrity.as_str()), (0, "ok"), "{fault}: a trial was left RUNNING");
        }
        // Without the fault, the same command finishes the study: nothing was lost or stuck.
        tune(dir.path()).args(["run", "curve.yaml", "--quiet"]).assert().success();
        let (finished, running, integrity) = db_counts(&db);
        assert_eq!((finished, running, integrity.as_str()), (8, 0, "ok"), "{fault}");
    }
}

/// Batched trials whose slots are refilled: every trial is pruned at its first evaluation, so
/// each one ends inside a running learner and the next one is asked there.
const REFILLED: &str = "\
name: refilled
direction: maximize
n_trials: 6
seed: 3
sampler: {type: random}
pruner: {type: threshold, lower: 1.0e9}
parallelism: {jobs: 1, batch: 2}
objective:
  type: rl
  config:
    env: {id: CartPole-v1}
    budget: {steps: 600}
    eval: {every: 200, episodes: 1}
    agent: {type: dqn, learning_starts: 50, train_freq: 4, replay: {type: uniform, size: 2000}}
search_space:
  agent.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
";

#[test]
fn a_storage_failure_or_panic_in_a_refilled_batch_loses_nothing() {
    let cases = [
        // The ask for a freed slot fails.
        ("storage.start_next_trial:3", 1),
        // Reporting, and telling a pruned trial mid-learner, fail.
        ("storage.set_trial_intermediate_values:4:locked", 2),
        ("storage.set_trial_state_values:2", 1),
        // The whole batch panics before training.
        ("trial.panic:1", 0),
    ];
    for (fault, code) in cases {
        let dir = TempDir::new().unwrap();
        write(dir.path(), "refilled.yaml", REFILLED);
        let mut cmd = tune(dir.path());
        cmd.env("TUNE_FAULT", fault).args(["run", "refilled.yaml", "--plain"]);
        cmd.timeout(Duration::from_secs(120)).assert().code(code).stderr(no_panic_text());
        let db = dir.path().join("tune.db");
        let (_, running, integrity) = db_counts(&db);
        assert_eq!((running, integrity.as_str()), (0, "ok"), "{fault}: a trial was left RUNNING");
        // Without the fault, the same command finishes the study.
        tune(dir.path()).args(["run", "refilled.yaml", "--quiet"]).timeout(Duration::from_secs(120)).assert().success();
        let (finished, running, integrity) = db_counts(&db);
        assert_eq!((running, integrity.as_str()), (0, "ok"), "{fault}");
        assert!(finished >= 6, "{fault}: {finished} finished");
    }
}

#[test]
fn a_panic_inside_a_trial_is_its_fail_reason_and_prints_no_panic_text() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "curve.yaml", CURVE);
    tune(dir.path())
        .env("TUNE_FAULT", "trial.panic:2")
        .args(["run", "curve.yaml", "--plain"])
        .assert()
        .success()
        .stderr(no_panic_text())
        .stdout(no_panic_text());
    let conn = rusqlite::Connection::open(dir.path().join("tune.db")).unwrap();
    let reason: String = conn
        .query_row("SELECT value_json FROM trial_system_attributes WHERE key = 'fail_reason'", [], |r| r.get(0))
        .unwrap();
    assert!(reason.contains("panicked") && reason.contains("injected fault: trial.panic"), "{reason}");

    // In a training thread of the rl objective, with two seeds.
    write(dir.path(), "small.yaml", &small_trainer(600));
    write(
        dir.path(),
        "rl.yaml",
        "name: rl\ndirection: maximize\nn_trials: 2\nseed: 1\npruner: none\nobjective: {type: rl, seeds: 2, config: small.yaml}\nsearch_space:\n  agent.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n",
    );
    tune(dir.path())
        .env("TUNE_FAULT", "train.panic:1")
        .args(["run", "rl.yaml", "--plain"])
        .assert()
        .success()
        .stderr(no_panic_text());
    let conn = rusqlite::Connection::open(dir.path().join("tune.db")).unwrap();
    let reasons: Vec<String> = conn
        .prepare("SELECT value_json FROM trial_system_attributes WHERE key = 'fail_reason'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(reasons.iter().any(|r| r.contains("training panicked: injected fault: train.panic")), "{reasons:?}");
}

#[test]
fn files_named_without_a_folder_work_for_every_objective_and_subcommand() {
    let dir = TempDir::new().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("scripts")).unwrap();
    std::fs::copy(repo().join("scripts/quadratic_objective.py"), root.join("scripts/quadratic_objective.py")).unwrap();
    let command = std::fs::read_to_string(repo().join("studies/command_quadratic.yaml"))
        .unwrap()
        .replace("n_trials: 30", "n_trials: 3");
    write(root, "studies/command_quadratic.yaml", &command);
    let studies = root.join("studies");
    tune(&studies).args(["run", "command_quadratic.yaml", "--quiet"]).assert().success();
    tune(&studies).args(["enqueue", "command_quadratic.yaml", "-p", "x=1.5"]).assert().success();
    tune(&studies).args(["run", "command_quadratic.yaml", "--quiet", "--n-trials", "4"]).assert().success();
    assert!(studies.join("tune-logs/command-quadratic/trial-3/config.json").exists());

    write(root, "studies/curve.yaml", CURVE);
    tune(&studies).args(["run", "curve.yaml", "--quiet"]).assert().success();

    // rl: the trainer config next to the study, named bare, with pretrained weights named bare.
    let small = small_trainer(400);
    let configs = root.join("configs");
    write(root, "configs/small.yaml", &small);
    tune(&configs).args(["train", "small.yaml", "--quiet", "--out", "run0"]).assert().success();
    std::fs::copy(configs.join("run0/weights.safetensors"), configs.join("w.safetensors")).unwrap();
    write(root, "configs/pre.yaml", &format!("{small}  pretrained: {{path: w.safetensors}}\n"));
    tune(&configs).args(["train", "pre.yaml", "--quiet", "--out", "run1"]).assert().success();
    write(
        root,
        "configs/rl.yaml",
        "name: rl\ndirection: maximize\nn_trials: 1\nseed: 1\nobjective: {type: rl, config: pre.yaml}\nsearch_space:\n  agent.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n",
    );
    tune(&configs).args(["run", "rl.yaml", "--quiet"]).assert().success();
    let conn = rusqlite::Connection::open(configs.join("tune.db")).unwrap();
    let complete: i64 =
        conn.query_row("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'", [], |r| r.get(0)).unwrap();
    assert_eq!(complete, 1);
}

/// Every whole number in every shipped trainer config, set to 0 and to -1, is either refused
/// by validation (the message `tune` prints, exit 2) or trains without a panic: sizes and
/// counts of zero (hidden widths, batch, buffer, frame stack, evaluation episodes, ...) never
/// reach tch or an index. Atari configs are validated only (their episodes are long).
#[test]
fn every_count_at_zero_is_refused_or_trains_without_panicking() {
    use serde_json::Value;
    use tune::rl::train::{train, TrainConfig};

    fn leaves(v: &Value, at: String, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                m.iter().for_each(|(k, v)| leaves(v, if at.is_empty() { k.clone() } else { format!("{at}.{k}") }, out))
            }
            Value::Array(a) => a.iter().enumerate().for_each(|(i, v)| leaves(v, format!("{at}.{i}"), out)),
            Value::Number(n) if n.is_u64() || n.is_i64() => out.push(at),
            _ => {}
        }
    }
    let mut checked = 0;
    let mut refused = Vec::new();
    for entry in std::fs::read_dir(repo().join("configs")).unwrap() {
        let path = entry.unwrap().path();
        // Every config on the CPU (the Breakout one asks for a GPU).
        let mut raw: Value = serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        raw["device"] = Value::from("cpu");
        let base = TrainConfig::from_value(&raw).unwrap().to_value();
        let atari = base["env"]["id"].as_str().is_some_and(|id| id.starts_with("ALE/") || id.contains("NoFrameskip"));
        let mut paths = Vec::new();
        leaves(&base, String::new(), &mut paths);
        for p in &paths {
            for bad in [0i64, -1] {
                let mut v = base.clone();
                tune::spec::path::set(&mut v, p, Value::from(bad)).unwrap();
                let cfg = match TrainConfig::from_value(&v) {
                    Err(_) => {
                        refused.push(format!("{p}={bad}"));
                        continue;
                    }
                    Ok(c) => c,
                };
                checked += 1;
                if atari {
                    continue;
                }
                let mut cfg = cfg;
                if !p.starts_with("budget") {
                    cfg.budget.steps = Some(300);
                    cfg.budget.episodes = None;
                }
                cfg.eval.episodes = cfg.eval.episodes.min(2);
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| train(&cfg, &mut ())));
                assert!(outcome.is_ok(), "{}: {p} = {bad} passed validation, then training panicked", path.display());
            }
        }
    }
    assert!(checked > 20, "too few configs were trained: {checked}");
    for must in [
        "agent.net.hidden.0=0",
        "agent.batch_size=0",
        "agent.replay.size=0",
        "eval.episodes=0",
        "frame_stack=0",
        "threads=0",
    ] {
        assert!(refused.iter().any(|r| r.ends_with(must)), "{must} was not refused; refused: {refused:?}");
    }
}

#[test]
fn resuming_with_an_incompatible_search_space_exits_2_and_writes_nothing() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "curve.yaml", CURVE);
    tune(dir.path()).args(["run", "curve.yaml", "--quiet", "--n-trials", "3"]).assert().success();
    let db = dir.path().join("tune.db");
    let before = std::fs::read(&db).unwrap();
    let changed = CURVE.replace("x.0: {type: float, low: -5, high: 5}", "x.0: {type: int, low: -5, high: 5}");
    write(dir.path(), "curve.yaml", &changed);
    tune(dir.path()).args(["run", "curve.yaml", "--quiet"]).assert().code(2).stderr(
        predicate::str::contains("search_space.x.0 (line 13")
            .and(predicate::str::contains("{type: float, low: -5, high: 5}"))
            .and(predicate::str::contains("{type: int, low: -5, high: 5}"))
            .and(predicate::str::contains("new `name:`")),
    );
    tune(dir.path()).args(["enqueue", "curve.yaml", "-p", "x.0=1"]).assert().code(2);
    assert_eq!(std::fs::read(&db).unwrap(), before, "a refused resume must not write");
    // A moved range is compatible, as in Optuna.
    write(dir.path(), "curve.yaml", &CURVE.replace("low: -5, high: 5}", "low: -2, high: 9}"));
    tune(dir.path()).args(["run", "curve.yaml", "--quiet", "--n-trials", "5"]).assert().success();
}
