//! Reliability of DQN studies (issue 5, items 3 and 6): a `kill -9` in the middle of a study
//! loses no finished trial and leaves a sound database; diverging and panicking trials are FAIL
//! with their reason while the study goes on; trials are placed on the listed devices; a GPU out
//! of memory fails only its trial (run only where a GPU is present).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use tune::frozen::{TrialState, FAIL_REASON_KEY};

fn tune(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tune"));
    c.current_dir(dir);
    c
}

/// A study of short DQN + PER trials on CartPole-v1 (about a second each), with `extra` lines
/// appended (sections not given here).
fn study(dir: &Path, name: &str, n_trials: u64, search_space: &str, extra: &str) -> String {
    let text = format!(
        "\
name: {name}
direction: maximize
n_trials: {n_trials}
seed: 2
heartbeat: {{interval: 0.5, grace: 2, retries: 2}}
objective:
  type: rl
  config:
    env: {{id: CartPole-v1}}
    budget: {{steps: 3000}}
    eval: {{every: 1000, episodes: 3}}
    agent:
      type: dqn
      learning_starts: 500
      train_freq: 16
      gradient_steps: 8
      loss: mse
      replay: {{type: prioritized, size: 5000}}
search_space:
{search_space}{extra}"
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// Every trial of study `name` in the storage at `url`.
fn trials_of(url: &str, name: &str) -> Vec<std::sync::Arc<tune::FrozenTrial>> {
    let storage = tune::storage::open(url).unwrap();
    let id = storage.get_study_id_from_name(name).unwrap().unwrap();
    storage.get_all_trials(id, None).unwrap()
}

/// Runs study file `file` to its end on the SQLite file `db` in `dir`, which must exit 0;
/// returns the storage URL and the trials of study `name`.
fn run_to_end(dir: &Path, file: &str, db: &str, name: &str) -> (String, Vec<std::sync::Arc<tune::FrozenTrial>>) {
    let url = format!("sqlite:///{}", dir.join(db).display());
    let out = tune(dir).args(["run", file, "--storage", &url, "--quiet"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let trials = trials_of(&url, name);
    (url, trials)
}

/// Finished trials in `db`, `None` while its schema is not yet written.
fn finished_count(db: &Path) -> Option<i64> {
    let conn = rusqlite::Connection::open(db).ok()?;
    conn.query_row("SELECT COUNT(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')", [], |r| r.get(0)).ok()
}

/// (finished trials as (number, state, value), RUNNING count, PRAGMA integrity_check).
fn snapshot(db: &Path) -> (Vec<(i64, String, Option<f64>)>, i64, String) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let integrity: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT t.number, t.state, v.value FROM trials t LEFT JOIN trial_values v ON v.trial_id = t.trial_id
             WHERE t.state IN ('COMPLETE', 'PRUNED') ORDER BY t.number",
        )
        .unwrap();
    let finished = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect();
    let running = conn.query_row("SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'", [], |r| r.get(0)).unwrap();
    (finished, running, integrity)
}

#[test]
fn kill_9_during_a_dqn_study_then_resume_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = study(
        dir.path(),
        "killed",
        8,
        "  agent.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n",
        "parallelism: {jobs: 2}\npruner: {type: none}\n",
    );
    let db = dir.path().join("tune.db");
    let mut child = tune(dir.path()).args(["run", &file, "--quiet"]).spawn().unwrap();
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < Duration::from_secs(120), "no trial finished within 2 minutes");
        // The file exists a moment before its tables do: count only once they are there.
        if db.exists() && finished_count(&db).is_some_and(|n| n >= 2) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap(); // SIGKILL, in the middle of the next trials' training
    child.wait().unwrap();
    let (before, running, integrity) = snapshot(&db);
    assert_eq!(integrity, "ok");
    assert!(running >= 1, "the kill should leave RUNNING trials behind");

    let out = tune(dir.path()).args(["run", &file, "--plain"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("no heartbeat"), "the killed trials are recovered: {stderr}");
    let (after, running, integrity) = snapshot(&db);
    assert_eq!((after.len(), running, integrity.as_str()), (8, 0, "ok"));
    for t in &before {
        assert!(after.contains(t), "finished trial {t:?} changed or was lost");
    }
}

#[test]
fn diverging_and_panicking_dqn_trials_fail_and_the_study_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    // A reward scale of 1e38 makes the MSE loss overflow: that trial diverges.
    let file = study(
        dir.path(),
        "faults",
        2,
        "  agent.reward_scale: {type: categorical, choices: [1.0, 1.0e38]}\n",
        "sampler: {type: grid}\n",
    );
    let (_, trials) = run_to_end(dir.path(), &file, "f.db", "faults");
    assert_eq!(trials.len(), 2);
    for t in &trials {
        let reason = t.system_attrs.get(FAIL_REASON_KEY).and_then(|v| v.as_str()).unwrap_or("");
        if t.external_params()["agent.reward_scale"] == json!(1.0) {
            assert_eq!(t.state, TrialState::Complete, "{reason}");
        } else {
            assert_eq!(t.state, TrialState::Fail);
            assert!(reason.contains("training diverged"), "{reason}");
        }
    }

    // A panic inside a DQN trial (as tch raises for libtorch errors) fails that trial only.
    use tune::objective::{BuildContext, ObjectiveSpec};
    let spec = tune::spec::StudySpec::load(Path::new(&file)).unwrap();
    let ctx = BuildContext { base_dir: dir.path().into(), log_dir: dir.path().join("logs") };
    let objective = spec.objective.build(&ctx).unwrap();
    assert!(matches!(spec.objective, ObjectiveSpec::Rl(_)));
    let s = tune::Study::create_or_load(
        std::sync::Arc::new(tune::storage::InMemoryStorage::new()),
        "panics",
        tune::Direction::Maximize,
        std::sync::Arc::new(tune::sampler::RandomSampler::new(0)),
        std::sync::Arc::new(tune::pruner::NopPruner),
        0,
    )
    .unwrap();
    let opts = tune::executor::RunOptions { n_trials: Some(3), jobs: 1, ..Default::default() };
    tune::executor::run_study(&s, &opts, |trial| {
        let mut config = objective.base_config().clone();
        config["agent"]["reward_scale"] = json!(1.0);
        let value = objective.run(&config, trial)?;
        if trial.number() == 1 {
            panic!("CUDA out of memory (simulated after training)");
        }
        Ok(value)
    })
    .unwrap();
    let states: Vec<TrialState> = s.trials().unwrap().iter().map(|t| t.state).collect();
    assert_eq!(states, [TrialState::Complete, TrialState::Fail, TrialState::Complete]);
    let reason = s.trials().unwrap()[1].system_attrs[FAIL_REASON_KEY].as_str().unwrap().to_string();
    assert!(reason.contains("panicked") && reason.contains("CUDA out of memory"), "{reason}");
}

#[test]
fn rl_trials_run_on_the_listed_devices() {
    let dir = tempfile::tempdir().unwrap();
    let space = "  agent.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n";
    let file = study(dir.path(), "placed", 3, space, "parallelism: {jobs: 2, devices: [cpu]}\n");
    let (_, trials) = run_to_end(dir.path(), &file, "p.db", "placed");
    assert!(trials.len() == 3 && trials.iter().all(|t| t.user_attrs["device"] == json!("cpu")));

    // A GPU listed in `devices`: trials train there when it exists; otherwise the file is
    // refused before anything is written.
    let gpu = study(dir.path(), "gpu", 2, space, "parallelism: {devices: [cuda:0], trials_per_device: 2}\n");
    let gpu_db = dir.path().join("gpu.db");
    let gpu_url = format!("sqlite:///{}", gpu_db.display());
    let out = tune(dir.path()).args(["run", &gpu, "--storage", &gpu_url, "--quiet"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !tch::Cuda::is_available() {
        eprintln!("GPU half skipped: no CUDA device here (tch::Cuda::is_available() is false)");
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("parallelism.devices[0]") && stderr.contains("no CUDA device"), "{stderr}");
        assert!(!gpu_db.exists(), "nothing is written for a refused file");
        return;
    }
    assert!(out.status.success(), "{stderr}");
    let trials = trials_of(&gpu_url, "gpu");
    assert!(trials.iter().all(|t| t.state == TrialState::Complete && t.user_attrs["device"] == json!("cuda:0")));
}

#[test]
fn gpu_out_of_memory_fails_only_its_trial() {
    if !tch::Cuda::is_available() {
        eprintln!("skipped: no CUDA device here (tch::Cuda::is_available() is false)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Two hidden layers of 2^20 units need 4 TiB of weights: that trial cannot allocate them.
    let file = study(
        dir.path(),
        "oom",
        2,
        "  agent.net.hidden: {type: categorical, choices: [[64, 64], [1048576, 1048576]]}\n",
        "sampler: {type: grid}\nparallelism: {devices: [cuda:0], trials_per_device: 2}\n",
    );
    let (_, trials) = run_to_end(dir.path(), &file, "o.db", "oom");
    let states: Vec<TrialState> = trials.iter().map(|t| t.state).collect();
    assert!(states.contains(&TrialState::Complete) && states.contains(&TrialState::Fail), "{states:?}");
    let failed = trials.iter().find(|t| t.state == TrialState::Fail).unwrap();
    let reason = failed.system_attrs[FAIL_REASON_KEY].as_str().unwrap().to_lowercase();
    assert!(reason.contains("memory"), "{reason}");
}

#[test]
fn exported_best_trial_retrains_to_the_same_evaluation_curve() {
    let dir = tempfile::tempdir().unwrap();
    let space = "  agent.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n  agent.gamma: {type: float, low: 0.9, high: 0.999}\n";
    let file = study(dir.path(), "export", 3, space, "sampler: {type: random}\npruner: {type: none}\n");
    let (url, _) = run_to_end(dir.path(), &file, "e.db", "export");
    let best = dir.path().join("best.yaml");
    let out = tune(dir.path()).args(["export", "export", "--storage", &url, "-o"]).arg(&best).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = dir.path().join("run");
    let out = tune(dir.path()).args(["train", best.to_str().unwrap(), "--quiet", "--out"]).arg(&run).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let storage = tune::storage::open(&url).unwrap();
    let id = storage.get_study_id_from_name("export").unwrap().unwrap();
    let trial = storage
        .get_all_trials(id, Some(&[TrialState::Complete]))
        .unwrap()
        .into_iter()
        .max_by(|a, b| a.value.partial_cmp(&b.value).unwrap().then(b.number.cmp(&a.number)))
        .unwrap();
    let evals = std::fs::read_to_string(run.join("evals.csv")).unwrap();
    let retrained: Vec<(i64, f64)> = evals
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].parse().unwrap(), f[2].parse().unwrap())
        })
        .collect();
    let tuned: Vec<(i64, f64)> = trial.intermediate_values.iter().map(|(&s, &v)| (s, v)).collect();
    assert_eq!(retrained, tuned, "trial {}'s curve", trial.number);
}
