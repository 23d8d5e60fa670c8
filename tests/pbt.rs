//! Population-Based Training through the binary (issue 17): a small CartPole population runs,
//! stores one ordinary trial per member and segment with its lineage, is shown, reported and
//! exported as a schedule `tune train` runs; Optuna reads the study; a `kill -9` in the middle
//! loses no finished segment; a diverged member is replaced by an exploit; impossible files are
//! refused with exit code 2.

use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use serde_json::Value;
use tempfile::TempDir;
use tune::frozen::{FrozenTrial, TrialState};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tune(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("tune").unwrap();
    c.current_dir(dir).env_remove("TUNE_FAULT").env_remove("RUST_BACKTRACE").timeout(Duration::from_secs(300));
    c
}

/// `configs/per_cartpole.yaml` cut down to `steps` steps, evaluating every 250 steps.
fn trainer(dir: &Path, steps: u64) {
    let text = std::fs::read_to_string(repo().join("configs/per_cartpole.yaml"))
        .unwrap()
        .replace("budget: {steps: 50000}", &format!("budget: {{steps: {steps}}}"))
        .replace("eval: {every: 2500, episodes: 20, epsilon: 0.0}", "eval: {every: 250, episodes: 3, epsilon: 0.0}")
        .replace("learning_starts: 1000", "learning_starts: 200")
        .replace("train_freq: 256", "train_freq: 16")
        .replace("gradient_steps: 128", "gradient_steps: 8")
        .replace("size: 100000", "size: 5000");
    std::fs::write(dir.join("trainer.yaml"), text).unwrap();
}

/// A PBT study of 4 members over `steps` steps in intervals of 500.
fn study(dir: &Path, name: &str, steps: u64, extra: &str) -> String {
    trainer(dir, steps);
    let text = format!(
        "name: {name}
direction: maximize
seed: 5
parallelism: {{jobs: 2}}
heartbeat: {{interval: 0.3, grace: 2, retries: 1}}
scheduler: {{type: pbt, population: 4, interval: 500, quantile_fraction: 0.25, resample_probability: 0.25}}
{extra}objective:
  type: rl
  config: trainer.yaml
search_space:
  agent.lr: {{type: float, low: 1.0e-4, high: 5.0e-3, log: true}}
  agent.gamma: {{type: float, low: 0.95, high: 0.999}}
  agent.batch_size: {{type: categorical, choices: [32, 64, 128]}}
  agent.target.every: {{type: int, low: 1, high: 500, log: true}}
"
    );
    let file = format!("{name}.yaml");
    std::fs::write(dir.join(&file), text).unwrap();
    file
}

fn trials(dir: &Path, name: &str) -> Vec<FrozenTrial> {
    let storage = tune::storage::open(&dir.join("tune.db").display().to_string()).unwrap();
    let id = storage.get_study_id_from_name(name).unwrap().unwrap();
    storage.get_all_trials(id, None).unwrap().iter().map(|t| (**t).clone()).collect()
}

/// The settled segment of each (generation, member): COMPLETE, or FAIL when none completed.
fn settled(ts: &[FrozenTrial]) -> std::collections::BTreeMap<(u64, usize), FrozenTrial> {
    let mut out = std::collections::BTreeMap::new();
    for t in ts {
        let Some(seg) = tune::pbt::segment_of(t) else { continue };
        if t.state == TrialState::Complete || (t.state == TrialState::Fail && !t.interrupted()) {
            let slot = out.entry((seg.generation, seg.member)).or_insert_with(|| t.clone());
            if t.state == TrialState::Complete {
                *slot = t.clone();
            }
        }
    }
    out
}

#[test]
fn a_pbt_study_stores_ordinary_trials_with_their_lineage_and_exports_a_schedule() {
    let dir = TempDir::new().unwrap();
    let file = study(dir.path(), "pbt", 2000, "");
    let out = tune(dir.path()).args(["run", &file, "--plain"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("PBT lineage") && stdout.contains("Best final member"), "{stdout}");

    let ts = trials(dir.path(), "pbt");
    let segs = settled(&ts);
    assert_eq!(segs.len(), 16, "4 members x 4 generations");
    assert!(segs.values().all(|t| t.state == TrialState::Complete));
    let space = [("agent.lr", 1e-4, 5e-3), ("agent.gamma", 0.95, 0.999), ("agent.target.every", 1.0, 500.0)];
    let mut exploits = 0;
    for ((g, m), t) in &segs {
        let seg = tune::pbt::segment_of(t).unwrap();
        assert_eq!((seg.start_step, seg.end_step), (g * 500, (g + 1) * 500));
        assert_eq!(t.user_attrs["pbt_member"], Value::from(*m));
        assert_eq!(t.user_attrs["pbt_generation"], Value::from(*g));
        // Checkpoints of the last two generations are kept, older ones deleted.
        let kept = Path::new(t.user_attrs["pbt_checkpoint"].as_str().unwrap()).join("learner.safetensors").exists();
        assert_eq!(kept, *g >= 2, "checkpoint of generation {g}");
        // Its value is its last evaluation, reported at the segment's last step.
        let (&last_step, &last) = t.intermediate_values.iter().next_back().unwrap();
        assert_eq!((last_step as u64, Some(last)), ((g + 1) * 500, t.value));
        for (name, lo, hi) in space {
            let v = t.param(name).unwrap().as_f64().unwrap();
            assert!((lo..=hi).contains(&v), "{name} = {v} left its range");
        }
        match seg.parent {
            None => assert_eq!(*g, 0),
            Some(p) => {
                let parent = ts.iter().find(|x| x.number == p).unwrap();
                let pseg = tune::pbt::segment_of(parent).unwrap();
                assert_eq!(pseg.generation + 1, *g, "the learner comes from the previous generation");
                assert_eq!(pseg.member == *m, !seg.exploited);
                exploits += seg.exploited as usize;
            }
        }
    }
    // ceil(4 x 0.25) = 1 member exploits at each of the 3 boundaries.
    assert_eq!(exploits, 3);

    let show = tune(dir.path()).args(["show", "pbt"]).output().unwrap();
    assert!(String::from_utf8_lossy(&show.stdout).contains("<-#"), "the lineage marks exploits");

    tune(dir.path()).args(["report", "pbt", "-o", "report"]).assert().success();
    for f in ["pbt_agent_lr.png", "pbt_agent_batch_size.png", "summary.md"] {
        assert!(dir.path().join("report").join(f).exists(), "{f}");
    }
    let md = std::fs::read_to_string(dir.path().join("report/summary.md")).unwrap();
    assert!(md.contains("the best final member's schedule"), "{md}");

    tune(dir.path()).args(["export", "pbt", "-o", "best.yaml"]).assert().success();
    let exported: Value =
        serde_norway::from_str(&std::fs::read_to_string(dir.path().join("best.yaml")).unwrap()).unwrap();
    let best = tune::pbt::final_best(
        &ts.iter().cloned().map(std::sync::Arc::new).collect::<Vec<_>>(),
        tune::frozen::Direction::Maximize,
    )
    .unwrap();
    let chain = tune::pbt::chain(&ts.iter().cloned().map(std::sync::Arc::new).collect::<Vec<_>>(), best.number);
    assert_eq!(chain.len(), 4);
    let first = &chain[0].0;
    assert_eq!(exported["agent"]["lr"], first.param("agent.lr").unwrap());
    let entries = exported["schedule"].as_array().cloned().unwrap_or_default();
    for e in &entries {
        let step = e["step"].as_u64().unwrap();
        assert!(step % 500 == 0 && step > 0 && step < 2000);
        let seg = chain.iter().find(|(_, s)| s.start_step == step).unwrap();
        for (k, v) in e["set"].as_object().unwrap() {
            assert_eq!(&seg.0.param(k).unwrap(), v, "{k} at step {step}");
        }
    }
    // `tune train` runs the schedule as-is.
    tune(dir.path()).args(["train", "best.yaml", "--out", "run"]).assert().success();
    assert!(dir.path().join("run/weights.safetensors").exists());
}

#[test]
fn optuna_reads_a_pbt_study() {
    let py = repo().join(".venv/bin/python");
    if !StdCommand::new(&py).args(["-c", "import optuna"]).output().is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: .venv/bin/python cannot import optuna (run scripts/setup.sh)");
        return;
    }
    let dir = TempDir::new().unwrap();
    let file = study(dir.path(), "pbt-optuna", 1000, "");
    tune(dir.path()).args(["run", &file, "--quiet"]).assert().success();
    let script = "import optuna, json, sys
s = optuna.load_study(study_name='pbt-optuna', storage='sqlite:///' + sys.argv[1])
ts = s.get_trials(states=[optuna.trial.TrialState.COMPLETE])
print(json.dumps({'n': len(ts), 'members': sorted({t.user_attrs['pbt_member'] for t in ts}),
  'gens': sorted({t.user_attrs['pbt_generation'] for t in ts}), 'params': sorted(ts[0].params),
  'steps': [sorted(t.intermediate_values)[-1] for t in ts], 'best': s.best_value}))";
    let out =
        StdCommand::new(&py).args(["-c", script, &dir.path().join("tune.db").display().to_string()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["n"], 8);
    assert_eq!(v["members"], serde_json::json!([0, 1, 2, 3]));
    assert_eq!(v["gens"], serde_json::json!([0, 1]));
    assert_eq!(v["params"], serde_json::json!(["agent.batch_size", "agent.gamma", "agent.lr", "agent.target.every"]));
    assert!(v["steps"].as_array().unwrap().iter().all(|s| s == 500 || s == 1000));

    // optuna-dashboard's API serves it as any study.
    if !StdCommand::new(&py).args(["-c", "import optuna_dashboard"]).output().is_ok_and(|o| o.status.success()) {
        eprintln!("skipped the dashboard check: optuna_dashboard is not installed in .venv");
        return;
    }
    let out = StdCommand::new(&py)
        .arg(repo().join("tests/python/dashboard_api.py"))
        .args([&dir.path().join("tune.db").display().to_string(), "pbt-optuna"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((got["studies_status"].as_i64(), got["detail_status"].as_i64()), (Some(200), Some(200)), "{got}");
    assert_eq!(got["n_trials"], 8, "{got}");
    assert_eq!(got["has_intermediate_values"], true, "{got}");
}

#[test]
fn kill_9_in_a_pbt_study_then_resume_loses_no_finished_segment() {
    let dir = TempDir::new().unwrap();
    let file = study(dir.path(), "pbt-kill", 3000, "");
    let db = dir.path().join("tune.db");
    let mut child = StdCommand::new(assert_cmd::cargo::cargo_bin("tune"))
        .current_dir(dir.path())
        .args(["run", &file, "--quiet"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < Duration::from_secs(240), "no segment of generation 1 finished in time");
        let done = db.exists()
            && rusqlite::Connection::open(&db)
                .and_then(|c| {
                    c.query_row(
                        "SELECT COUNT(*) FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id \
                         WHERE t.state = 'COMPLETE' AND a.key = 'pbt_generation' AND a.value_json != '0'",
                        [],
                        |r| r.get::<_, i64>(0),
                    )
                })
                .is_ok_and(|n| n >= 1);
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL, mid-generation
    child.wait().unwrap();
    let before: Vec<(i64, Option<f64>)> = trials(dir.path(), "pbt-kill")
        .into_iter()
        .filter(|t| t.state == TrialState::Complete)
        .map(|t| (t.number, t.value))
        .collect();
    assert!(before.len() >= 5);

    // Resumed where its checkpoints are not: refused before any segment runs, nothing lost.
    let out =
        tune(dir.path()).args(["run", &file]).env("TUNE_CHECKPOINTS", dir.path().join("elsewhere")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("set TUNE_CHECKPOINTS to the folder that holds trial-"), "{err}");

    let out = tune(dir.path()).args(["run", &file, "--plain"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Resuming PBT study"), "{stdout}");
    let ts = trials(dir.path(), "pbt-kill");
    for (n, v) in &before {
        assert!(
            ts.iter().any(|t| t.number == *n && t.state == TrialState::Complete && t.value == *v),
            "finished segment #{n} changed or was lost"
        );
    }
    let segs = settled(&ts);
    assert_eq!(segs.len(), 24, "4 members x 6 generations");
    assert!(segs.values().all(|t| t.state == TrialState::Complete));
    assert!(ts.iter().all(|t| t.state != TrialState::Running && t.state != TrialState::Waiting));

    // Every segment resumed from its checkpoints as if nothing had happened: the same study run
    // without a kill ends with the same value for every member in every generation.
    let clean = TempDir::new().unwrap();
    let file = study(clean.path(), "pbt-kill", 3000, "");
    tune(clean.path()).args(["run", &file, "--quiet"]).assert().success();
    let values = |segs: &std::collections::BTreeMap<(u64, usize), FrozenTrial>| -> Vec<Option<f64>> {
        segs.values().map(|t| t.value).collect()
    };
    assert_eq!(values(&segs), values(&settled(&trials(clean.path(), "pbt-kill"))));
    // Only the last two generations' checkpoints are kept.
    let kept = std::fs::read_dir(dir.path().join("tune-logs/pbt-kill/pbt")).unwrap().count();
    assert_eq!(kept, 8, "4 members x 2 generations");
}

#[test]
fn a_diverged_member_is_replaced_by_an_exploit_at_the_next_boundary() {
    let dir = TempDir::new().unwrap();
    let file = study(dir.path(), "pbt-nan", 1500, "");
    // The second training stretch (a segment of generation 0) diverges.
    let out = tune(dir.path()).args(["run", &file, "--plain"]).env("TUNE_FAULT", "train.diverge:2").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ts = trials(dir.path(), "pbt-nan");
    let segs = settled(&ts);
    let failed: Vec<_> = segs.iter().filter(|(_, t)| t.state == TrialState::Fail).collect();
    assert_eq!(failed.len(), 1, "one segment failed");
    let (&(g, m), t) = failed[0];
    assert_eq!(g, 0);
    assert!(t.system_attrs["fail_reason"].as_str().unwrap().contains("diverged"));
    let next = tune::pbt::segment_of(&segs[&(1, m)]).unwrap();
    assert!(next.exploited, "the failed member takes another's learner");
    let parent = ts.iter().find(|x| Some(x.number) == next.parent).unwrap();
    assert_eq!(parent.state, TrialState::Complete);
    assert_eq!(segs.len(), 12);
    assert!(segs.iter().filter(|((g, _), _)| *g > 0).all(|(_, t)| t.state == TrialState::Complete));
}

#[test]
fn impossible_pbt_files_are_refused_with_exit_code_2() {
    let dir = TempDir::new().unwrap();
    let base = study(dir.path(), "bad", 2000, "");
    let text = std::fs::read_to_string(dir.path().join(&base)).unwrap();
    let cases = [
        (text.replace("population: 4", "population: 1"), "population must be from 2"),
        (text.replace("seed: 5", "seed: 5\nn_trials: 10"), "remove n_trials"),
        (text.replace("seed: 5", "seed: 5\nsampler: {type: tpe}"), "remove `sampler`"),
        (text.replace("interval: 500", "interval: 2000"), "must be below the trainer's budget"),
        (
            text.replace("search_space:\n", "search_space:\n  agent.net.hidden.0: {type: int, low: 16, high: 64}\n"),
            "PBT cannot change this during a run",
        ),
        (
            text.replace("search_space:\n", "search_space:\n  agent.replay.size: {type: int, low: 1000, high: 5000}\n"),
            "PBT cannot change this during a run",
        ),
        (text.replace("  config: trainer.yaml", "  config: trainer.yaml\n  seeds: 3"), "Remove `seeds`"),
        (text.replace("type: pbt", "type: asha"), "scheduler"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let name = format!("bad{i}.yaml");
        std::fs::write(dir.path().join(&name), text).unwrap();
        let out = tune(dir.path()).args(["run", &name]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(expected), "{name}: expected `{expected}` in: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!dir.path().join("tune.db").exists() || trials_count(dir.path()) == 0, "nothing was written");
}

fn trials_count(dir: &Path) -> i64 {
    let conn = rusqlite::Connection::open(dir.join("tune.db")).unwrap();
    conn.query_row("SELECT COUNT(*) FROM trials", [], |r| r.get(0)).unwrap_or(0)
}

#[test]
fn a_pbt_study_resumes_only_with_the_settings_that_planned_it() {
    let dir = TempDir::new().unwrap();
    let file = study(dir.path(), "pbt-resume", 1000, "");
    tune(dir.path()).args(["run", &file, "--quiet"]).assert().success();
    let text = std::fs::read_to_string(dir.path().join(&file)).unwrap();
    let before = trials(dir.path(), "pbt-resume").len();
    for (changed, expected) in [
        (text.replace("population: 4", "population: 6"), "cannot change"),
        (text.replace("seed: 5", "seed: 6"), "cannot change"),
        (
            text.replace("scheduler: {type: pbt, population: 4, interval: 500, quantile_fraction: 0.25, resample_probability: 0.25}\n", "n_trials: 20\n"),
            "no `scheduler: {type: pbt}`",
        ),
    ] {
        std::fs::write(dir.path().join("changed.yaml"), changed).unwrap();
        let out = tune(dir.path()).args(["run", "changed.yaml"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(expected), "expected `{expected}` in: {err}");
    }
    assert_eq!(trials(dir.path(), "pbt-resume").len(), before, "nothing was written");
    // Run again as it was: nothing left to do.
    let out = tune(dir.path()).args(["run", &file]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(trials(dir.path(), "pbt-resume").len(), before);
}

#[test]
fn a_pbt_study_runs_on_postgresql_and_resumes_there() {
    let Some(admin) = tune::storage::postgres::testing::admin_url() else { return };
    let url = tune::storage::postgres::testing::fresh_database(&admin, "pbt");
    let dir = TempDir::new().unwrap();
    let file = study(dir.path(), "pbt-pg", 1500, "");
    // Stopped by its timeout after the first generations, then resumed to the end.
    let out = tune(dir.path()).args(["run", &file, "--storage", &url, "--quiet", "--timeout", "0.1"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("Stopped (timeout): resume with"), "{err}");
    tune(dir.path()).args(["run", &file, "--storage", &url, "--quiet"]).assert().success();
    let storage = tune::storage::open(&url).unwrap();
    let id = storage.get_study_id_from_name("pbt-pg").unwrap().unwrap();
    let ts: Vec<FrozenTrial> = storage.get_all_trials(id, None).unwrap().iter().map(|t| (**t).clone()).collect();
    let segs = settled(&ts);
    assert_eq!(segs.len(), 12, "4 members x 3 generations");
    assert!(segs.values().all(|t| t.state == TrialState::Complete && t.user_attrs.contains_key("pbt_parent")));
    // The same study on SQLite ends with the same values.
    let sqlite = TempDir::new().unwrap();
    let file = study(sqlite.path(), "pbt-pg", 1500, "");
    tune(sqlite.path()).args(["run", &file, "--quiet"]).assert().success();
    let values =
        |s: &std::collections::BTreeMap<(u64, usize), FrozenTrial>| s.values().map(|t| t.value).collect::<Vec<_>>();
    assert_eq!(values(&segs), values(&settled(&trials(sqlite.path(), "pbt-pg"))));
}
