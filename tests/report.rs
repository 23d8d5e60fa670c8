//! `tune report` end to end: a run study gives three PNGs and a summary; bad inputs exit 2;
//! sparse studies (no COMPLETE trial, no intermediate values, one trial) still get a report;
//! the importances rank parameters as Optuna's do; optuna-dashboard serves what tune wrote.
//!
//! The Python tests print "skipped: ..." and pass when the package they need is missing from
//! `.venv` (see scripts/setup.sh).

use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;
use std::sync::Arc;

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::{json, Value};
use tempfile::TempDir;
use tune::pruner::NopPruner;
use tune::report::{write_report, FIGURE_SIZE, HISTORY_PNG, IMPORTANCES_PNG, INTERMEDIATE_PNG, SUMMARY_MD};
use tune::sampler::RandomSampler;
use tune::storage::{SqliteStorage, Storage};
use tune::{Direction, Distribution, Outcome, Study};

fn tune(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("tune").unwrap();
    c.current_dir(dir);
    c
}

fn png_size(path: &Path) -> (u32, u32) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file)).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut buf).unwrap();
    (frame.width, frame.height)
}

fn manifest(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn report_of_a_run_study_has_three_figures_and_the_best_value() {
    let dir = TempDir::new().unwrap();
    let study_file = manifest("studies/learning_curve_median.yaml");
    tune(dir.path())
        .args(["run", study_file.to_str().unwrap(), "--storage", "sqlite:///lc.db", "--quiet"])
        .assert()
        .success();
    tune(dir.path())
        .args(["report", "learning-curve-median", "-o", "out", "--storage", "sqlite:///lc.db"])
        .assert()
        .success()
        .stdout(predicate::str::contains("summary.md"));
    let out = dir.path().join("out");
    for f in [HISTORY_PNG, INTERMEDIATE_PNG, IMPORTANCES_PNG] {
        assert_eq!(png_size(&out.join(f)), FIGURE_SIZE, "{f}");
    }

    let storage = SqliteStorage::open(&dir.path().join("lc.db")).unwrap();
    let id = storage.get_study_id_from_name("learning-curve-median").unwrap().unwrap();
    let best = storage.get_best_trial(id).unwrap().unwrap();
    let md = std::fs::read_to_string(out.join(SUMMARY_MD)).unwrap();
    let line = format!("- Best value: {} (trial #{})", best.value.unwrap(), best.number);
    assert!(md.contains(&line), "no `{line}` in\n{md}");
    for needle in ["(history.png)", "(intermediate.png)", "(importances.png)", "```yaml", "| optimizer |", "pruned"] {
        assert!(md.contains(needle), "no `{needle}` in\n{md}");
    }
    // The best config is the one `tune export` writes.
    tune(dir.path())
        .args(["export", "learning-curve-median", "-o", "best.yaml", "--storage", "sqlite:///lc.db"])
        .assert()
        .success();
    let exported: Value =
        serde_norway::from_str(&std::fs::read_to_string(dir.path().join("best.yaml")).unwrap()).unwrap();
    let yaml = md.split("```yaml\n").nth(1).unwrap().split("```").next().unwrap();
    assert_eq!(serde_norway::from_str::<Value>(yaml).unwrap(), exported);
}

#[test]
fn bad_inputs_exit_2_and_name_the_fix() {
    let dir = TempDir::new().unwrap();
    tune(dir.path())
        .args(["report", "nope", "-o", "out", "--storage", "sqlite:///missing.db"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("missing.db does not exist"));
    assert!(!dir.path().join("missing.db").exists());

    let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&dir.path().join("s.db")).unwrap());
    storage.create_new_study("alpha", Direction::Minimize).unwrap();
    storage.create_new_study("beta", Direction::Maximize).unwrap();
    tune(dir.path())
        .args(["report", "gamma", "-o", "out", "--storage", "sqlite:///s.db"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no study named `gamma`").and(predicate::str::contains("`alpha`, `beta`")));
    assert!(!dir.path().join("out").exists());
}

fn study(dir: &Path, name: &str, direction: Direction) -> Study {
    let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&dir.join("t.db")).unwrap());
    Study::create_or_load(storage, name, direction, Arc::new(RandomSampler::new(4)), Arc::new(NopPruner), 4).unwrap()
}

#[test]
fn sparse_studies_get_a_report_that_says_what_is_missing() {
    let dir = TempDir::new().unwrap();

    // Only pruned and failed trials: a history of pruned values, no best, no importances.
    let s = study(dir.path(), "no-complete", Direction::Maximize);
    for i in 0..3 {
        let mut t = s.ask().unwrap();
        t.suggest_float("x", 0.0, 1.0).unwrap();
        t.report(0, i as f64).unwrap();
        s.tell(t, Outcome::Pruned).unwrap();
    }
    let t = s.ask().unwrap();
    s.tell(t, Outcome::Fail("boom".into())).unwrap();
    let out = dir.path().join("no-complete");
    let w = write_report(&s, &out, None).unwrap();
    assert_eq!(w.skipped.len(), 1, "{w:?}");
    let md = std::fs::read_to_string(out.join(SUMMARY_MD)).unwrap();
    assert!(md.contains("- Trials: 4 (0 complete, 3 pruned, 1 fail, 0 running, 0 waiting)"), "{md}");
    assert!(md.contains("none yet (no COMPLETE trial)") && md.contains("Not drawn: importances not assessed"), "{md}");
    assert_eq!(png_size(&out.join(HISTORY_PNG)), FIGURE_SIZE);
    assert!(!out.join(IMPORTANCES_PNG).exists());

    // No intermediate values, a categorical parameter: no intermediate figure.
    let s = study(dir.path(), "no-curves", Direction::Minimize);
    let opt = Distribution::categorical(vec![json!("adam"), json!("sgd"), json!([64, 64])]).unwrap();
    for _ in 0..12 {
        let mut t = s.ask().unwrap();
        let x = t.suggest_float("x", -1.0, 1.0).unwrap();
        let o = t.suggest("opt", &opt).unwrap();
        s.tell(t, Outcome::Complete(x * x + if o == json!("sgd") { 1.0 } else { 0.0 })).unwrap();
    }
    let out = dir.path().join("no-curves");
    let w = write_report(&s, &out, Some("sqlite:///t.db")).unwrap();
    assert_eq!(w.skipped, vec![format!("{INTERMEDIATE_PNG}: no trial reported a finite intermediate value")]);
    let md = std::fs::read_to_string(out.join(SUMMARY_MD)).unwrap();
    assert!(md.contains("Not drawn: no trial reported a finite intermediate value."), "{md}");
    assert!(md.contains("| opt |") && md.contains("[64,64]"), "{md}");
    assert!(!md.contains("```yaml"), "no base config, no YAML block:\n{md}");
    assert_eq!(png_size(&out.join(IMPORTANCES_PNG)), FIGURE_SIZE);

    // One trial.
    let s = study(dir.path(), "one", Direction::Minimize);
    let mut t = s.ask().unwrap();
    t.suggest_int("n", 1, 4).unwrap();
    t.report(0, 1.0).unwrap();
    s.tell(t, Outcome::Complete(0.5)).unwrap();
    let out = dir.path().join("one");
    let w = write_report(&s, &out, None).unwrap();
    assert_eq!(w.skipped.len(), 1, "{w:?}");
    let md = std::fs::read_to_string(out.join(SUMMARY_MD)).unwrap();
    assert!(md.contains("- Best value: 0.5 (trial #0)") && md.contains("needs at least 2 COMPLETE trials"), "{md}");
    for f in [HISTORY_PNG, INTERMEDIATE_PNG] {
        assert_eq!(png_size(&out.join(f)), FIGURE_SIZE, "{f}");
    }
}

/// The project's Python if it has `module` installed, or `None` (and a note on stderr). Looks
/// the module up without importing it: importing sklearn or optuna_dashboard takes seconds.
fn python_with(module: &str) -> Option<PathBuf> {
    let py = manifest(".venv/bin/python");
    let check = format!("import importlib.util, sys; sys.exit(importlib.util.find_spec('{module}') is None)");
    let ok = StdCommand::new(&py).args(["-c", &check]).output().map(|o| o.status.success()).unwrap_or(false);
    if ok {
        Some(py)
    } else {
        eprintln!("skipped: {} has no `{module}` module (run scripts/setup.sh)", py.display());
        None
    }
}

/// Runs a script of tests/python and parses the JSON it prints.
fn run_script(py: &Path, script: &str, args: &[&str]) -> Value {
    let out = StdCommand::new(py).arg(manifest("tests/python").join(script)).args(args).output().expect("python runs");
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)))
}

/// Parameter names from most to least important.
fn ranking(importances: &Value) -> Vec<String> {
    let mut v: Vec<(String, f64)> =
        importances.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_f64().unwrap())).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.into_iter().map(|p| p.0).collect()
}

#[test]
fn importances_rank_parameters_as_optuna_does() {
    let Some(py) = python_with("optuna") else { return };
    let dir = TempDir::new().unwrap();
    // value = 10 x + 0.1 y; z (a categorical) is irrelevant. Ranges make y matter, but 100x
    // less than x in variance.
    let s = study(dir.path(), "xyz", Direction::Minimize);
    let choices = Distribution::categorical(vec![json!("a"), json!("b"), json!("c")]).unwrap();
    for _ in 0..80 {
        let mut t = s.ask().unwrap();
        let x = t.suggest_float("x", -10.0, 10.0).unwrap();
        let y = t.suggest_int("y", -100, 100).unwrap();
        t.suggest("z", &choices).unwrap();
        s.tell(t, Outcome::Complete(10.0 * x + 0.1 * y as f64)).unwrap();
    }
    let ours = tune::report::param_importances(&s.trials().unwrap(), &tune::report::ForestConfig::default()).unwrap();
    let ours_json: Value =
        ours.params.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>().into();
    assert_eq!(ranking(&ours_json), ["x", "y", "z"], "tune: {ours_json}");

    let db = dir.path().join("t.db");
    let theirs = run_script(&py, "optuna_importance.py", &[db.to_str().unwrap(), "xyz"]);
    eprintln!("tune fANOVA: {ours_json}\noptuna: {theirs}");
    // Optuna 5's default evaluator is PED-ANOVA, another method (it compares the best
    // trials' parameter distribution with all trials'): it agrees on the most important.
    assert_eq!(ranking(&theirs["default"])[0], "x", "optuna default: {}", theirs["default"]);
    match theirs["fanova"].as_object() {
        None => eprintln!("skipped the fANOVA comparison: {}", theirs["fanova_skipped"]),
        Some(fanova) => {
            assert_eq!(ranking(&theirs["fanova"]), ["x", "y", "z"], "optuna fANOVA: {}", theirs["fanova"]);
            // Same method, different random forests: close, not equal.
            for (k, v) in fanova {
                let d = (v.as_f64().unwrap() - ours_json[k].as_f64().unwrap()).abs();
                assert!(d < 0.01, "{k}: optuna {v} vs tune {}", ours_json[k]);
            }
        }
    }
}

#[test]
fn optuna_dashboard_serves_a_study_tune_wrote() {
    let Some(py) = python_with("optuna_dashboard") else { return };
    let dir = TempDir::new().unwrap();
    let s = study(dir.path(), "dash", Direction::Minimize);
    let opt = Distribution::categorical(vec![json!("adam"), json!("sgd")]).unwrap();
    for i in 0..6 {
        let mut t = s.ask().unwrap();
        let x = t.suggest_float("x", -1.0, 1.0).unwrap();
        t.suggest("opt", &opt).unwrap();
        for step in 0..4 {
            t.report(step, x * x + 1.0 / (step + 1) as f64).unwrap();
        }
        let outcome = if i % 3 == 2 { Outcome::Pruned } else { Outcome::Complete(x * x) };
        s.tell(t, outcome).unwrap();
    }
    let db = dir.path().join("t.db");
    let got = run_script(&py, "dashboard_api.py", &[db.to_str().unwrap(), "dash"]);
    assert_eq!(got["studies_status"], json!(200), "{got}");
    assert_eq!(got["study_names"], json!(["dash"]), "{got}");
    assert_eq!(got["detail_status"], json!(200), "{got}");
    assert_eq!(got["n_trials"], json!(6), "{got}");
    assert_eq!(got["states"], json!(["Complete", "Complete", "Pruned", "Complete", "Complete", "Pruned"]), "{got}");
    assert_eq!(got["has_intermediate_values"], json!(true), "{got}");
    assert_eq!(got["importances_status"], json!(200), "{got}");
}
