//! End-to-end tests of the `tune` binary: run, resume, ls/show/best/export/enqueue, bad input,
//! several processes on one SQLite file, `kill -9` recovery and Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use predicates::prelude::*;
use tempfile::TempDir;

mod common;
use common::db_counts;

fn tune(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("tune").unwrap();
    c.current_dir(dir);
    c
}

fn tune_std(dir: &Path, args: &[&str]) -> StdCommand {
    let mut c = StdCommand::new(assert_cmd::cargo::cargo_bin("tune"));
    c.current_dir(dir).args(args);
    c
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const SPHERE: &str = "\
name: sphere
direction: minimize
n_trials: 12
seed: 7
sampler: {type: tpe, n_startup_trials: 5}
objective: {type: function, name: sphere, dim: 2}
search_space:
  x.0: {type: float, low: -5, high: 5}
  x.1: {type: float, low: -5, high: 5}
";

/// A study whose trials take `sleep` ms per step for `steps` steps.
fn slow_study(n_trials: u64, steps: u64, sleep: u64) -> String {
    format!(
        "\
name: slow
direction: minimize
n_trials: {n_trials}
seed: 3
pruner: {{type: none}}
parallelism: {{jobs: 2}}
heartbeat: {{interval: 0.5, grace: 2, retries: 2}}
objective:
  type: function
  name: learning_curve
  config: {{steps: {steps}, step_sleep_ms: {sleep}}}
search_space:
  x.0: {{type: float, low: -5, high: 5}}
"
    )
}

#[test]
fn run_show_best_export_and_resume() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "sphere.yaml", SPHERE);
    tune(dir.path())
        .args(["run", "sphere.yaml", "--plain"])
        .assert()
        .success()
        .stdout(predicate::str::contains("[12/12]"));
    assert!(dir.path().join("tune.db").exists());

    tune(dir.path()).args(["ls"]).assert().success().stdout(predicate::str::contains("sphere"));
    tune(dir.path())
        .args(["show", "sphere", "--sort", "value", "--top", "3"])
        .assert()
        .success()
        .stdout(predicate::str::contains("COMPLETE").and(predicate::str::contains("x.0=")));
    let out = tune(dir.path()).args(["best", "sphere", "--json"]).output().unwrap();
    let best: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(best["value"].as_f64().unwrap() < 25.0);

    tune(dir.path()).args(["export", "sphere", "-o", "best.yaml"]).assert().success();
    let text = std::fs::read_to_string(dir.path().join("best.yaml")).unwrap();
    assert!(text.starts_with("# Exported by tune"), "{text}");
    let cfg: serde_json::Value = serde_norway::from_str(&text).unwrap();
    assert_eq!(cfg["x"][0], best["params"]["x.0"]);
    assert_eq!(cfg["x"][1], best["params"]["x.1"]);

    // Resume: same file with a larger budget continues the same study.
    tune(dir.path()).args(["run", "sphere.yaml", "--n-trials", "15", "--quiet"]).assert().success();
    let (finished, running, _) = db_counts(&dir.path().join("tune.db"));
    assert_eq!((finished, running), (15, 0));
    // Already done: nothing to run.
    tune(dir.path())
        .args(["run", "sphere.yaml", "--n-trials", "15"])
        .assert()
        .success()
        .stdout(predicate::str::contains("nothing to run"));
}

#[test]
fn invalid_files_exit_2_and_write_nothing() {
    let dir = TempDir::new().unwrap();
    let cases = [
        ("malformed.yaml", "name: [unclosed\n", "malformed.yaml"),
        ("lowhigh.yaml", &SPHERE.replace("low: -5, high: 5}\n  x.1", "low: 5, high: -5}\n  x.1"), "low"),
        ("sampler.yaml", &SPHERE.replace("type: tpe", "type: tpee"), "tpee"),
        ("path.yaml", &SPHERE.replace("x.1:", "y.1:"), "y.1"),
        ("unknown.yaml", &format!("{SPHERE}colour: blue\n"), "colour"),
    ];
    for (name, text, needle) in cases {
        write(dir.path(), name, text);
        tune(dir.path())
            .args(["run", name])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(needle).and(predicate::str::contains(name)));
    }
    tune(dir.path()).args(["run", "missing.yaml"]).assert().code(2).stderr(predicate::str::contains("missing.yaml"));
    assert!(!dir.path().join("tune.db").exists(), "an invalid file must not create the storage");
    tune(dir.path()).args(["show", "nope"]).assert().code(2);
}

#[test]
fn corrupt_database_is_a_clear_input_error() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "sphere.yaml", SPHERE);
    write(dir.path(), "tune.db", "this is not a database, just text that happens to be long enough to matter\n");
    tune(dir.path()).args(["run", "sphere.yaml"]).assert().code(2).stderr(predicate::str::contains("tune.db"));
    let after = std::fs::read_to_string(dir.path().join("tune.db")).unwrap();
    assert!(after.starts_with("this is not a database"), "the file must be left untouched");
}

#[test]
fn enqueued_parameters_run_first() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "sphere.yaml", SPHERE);
    tune(dir.path()).args(["enqueue", "sphere.yaml", "-p", "x.0=1.5", "-p", "x.1=-2"]).assert().success();
    tune(dir.path()).args(["enqueue", "sphere.yaml", "-p", "x.0=99"]).assert().code(2);
    tune(dir.path()).args(["enqueue", "sphere.yaml", "-p", "z=1"]).assert().code(2);
    tune(dir.path()).args(["run", "sphere.yaml", "--n-trials", "2", "--quiet"]).assert().success();
    let out = tune(dir.path()).args(["show", "sphere"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let first = text.lines().nth(1).unwrap();
    assert!(first.contains("x.0=1.5") && first.contains("x.1=-2"), "{text}");
}

#[test]
fn four_processes_share_one_sqlite_file() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "study.yaml", &slow_study(40, 3, 5));
    let children: Vec<Child> = (0..4)
        .map(|_| tune_std(dir.path(), &["run", "study.yaml", "--quiet"]).stderr(Stdio::piped()).spawn().unwrap())
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "a worker process failed: {err}");
        assert!(!err.contains("locked"), "{err}");
    }
    let conn = rusqlite::Connection::open(dir.path().join("tune.db")).unwrap();
    let (n, distinct, complete): (i64, i64, i64) = conn
        .query_row("SELECT COUNT(*), COUNT(DISTINCT number), SUM(state = 'COMPLETE') FROM trials", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!((n, distinct, complete), (40, 40, 40));
}

fn wait_for_finished(db: &Path, at_least: i64, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if db.exists() {
            if let Ok(conn) = rusqlite::Connection::open(db) {
                let n: i64 = conn
                    .query_row("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'", [], |r| r.get(0))
                    .unwrap_or(0);
                if n >= at_least {
                    return;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no progress within {limit:?}");
}

#[test]
fn kill_9_then_resume_loses_nothing() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "study.yaml", &slow_study(10, 10, 30));
    let db = dir.path().join("tune.db");
    let mut child = tune_std(dir.path(), &["run", "study.yaml", "--quiet"]).spawn().unwrap();
    wait_for_finished(&db, 2, Duration::from_secs(60));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let (finished_before, running, integrity) = db_counts(&db);
    assert_eq!(integrity, "ok");
    assert!(running >= 1, "the kill should leave RUNNING trials behind");

    tune(dir.path())
        .args(["run", "study.yaml", "--plain"])
        .timeout(Duration::from_secs(120))
        .assert()
        .success()
        .stderr(predicate::str::contains("no heartbeat"));
    let (finished, running, integrity) = db_counts(&db);
    assert_eq!((finished, running, integrity.as_str()), (10, 0, "ok"));
    assert!(finished >= finished_before);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let retried: i64 = conn
        .query_row("SELECT COUNT(*) FROM trial_system_attributes WHERE key = 'tune:retry_of'", [], |r| r.get(0))
        .unwrap();
    assert!(retried >= 1, "the killed trials' parameters are re-enqueued");
}

#[test]
fn ctrl_c_stops_cleanly_and_says_how_to_resume() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "study.yaml", &slow_study(20, 100, 20));
    let db = dir.path().join("tune.db");
    let child = tune_std(dir.path(), &["run", "study.yaml", "--quiet"]).stderr(Stdio::piped()).spawn().unwrap();
    wait_for_finished(&db, 1, Duration::from_secs(60));
    StdCommand::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let start = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(start.elapsed() < Duration::from_secs(10), "Ctrl-C must stop promptly");
    assert_eq!(out.status.code(), Some(130));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Resume with: tune run study.yaml"), "{err}");
    let (_, running, integrity) = db_counts(&db);
    assert_eq!((running, integrity.as_str()), (0, "ok"));
    let conn = rusqlite::Connection::open(&db).unwrap();
    let waiting: i64 = conn.query_row("SELECT COUNT(*) FROM trials WHERE state = 'WAITING'", [], |r| r.get(0)).unwrap();
    assert!(waiting >= 1, "interrupted trials are re-queued");
}
