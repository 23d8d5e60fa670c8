//! Interoperability with Optuna itself (optuna 5.0 from `.venv`): Optuna loads studies tune
//! wrote, tune reads studies Optuna wrote, and Optuna can add a trial to a tune study. Both
//! sides are dumped to the same JSON shape (`tests/python/_dump.py`) and compared.
//!
//! Each test runs on an SQLite file and, when the test server of `scripts/test.sh` is up, on a
//! PostgreSQL database (Optuna's `postgresql+psycopg2` RDBStorage on the other side).
//!
//! Each test prints "skipped: ..." and passes when `.venv/bin/python -c "import optuna"` fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use tune::pruner::NopPruner;
use tune::sampler::RandomSampler;
use tune::storage::postgres::testing;
use tune::storage::Storage;
use tune::{Direction, Distribution, FrozenTrial, Outcome, Study, Trial};

/// The project's Python with optuna, or `None` (and a note on stderr) when it is missing.
fn python() -> Option<PathBuf> {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let ok = Command::new(&py).args(["-c", "import optuna"]).output().map(|o| o.status.success()).unwrap_or(false);
    if ok {
        Some(py)
    } else {
        eprintln!("skipped: `{} -c \"import optuna\"` failed (run scripts/setup.sh)", py.display());
        None
    }
}

/// Where a test's study lives, as the scripts take it: an SQLite file in `dir`, then a fresh
/// PostgreSQL database when there is a test server.
fn backends(dir: &Path, name: &str) -> Vec<String> {
    let mut out = vec![dir.join(format!("{name}.db")).display().to_string()];
    if let Some(admin) = testing::admin_url() {
        out.push(testing::fresh_database(&admin, "compat"));
    }
    out
}

fn open(db: &str) -> Arc<dyn Storage> {
    tune::storage::open(db).unwrap()
}

/// Runs a script of tests/python and parses the JSON it prints.
fn run_script(py: &Path, script: &str, args: &[&str]) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(script);
    let out = Command::new(py).arg(&path).args(args).output().expect("python runs");
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)))
}

/// A float the way `_dump.py` writes it: non-finite values as strings.
fn number(v: f64) -> Value {
    if v.is_nan() {
        json!("nan")
    } else if v.is_infinite() {
        json!(if v > 0.0 { "inf" } else { "-inf" })
    } else {
        json!(v)
    }
}

/// Python's `datetime.isoformat()`: microseconds only when not zero.
fn iso(t: Option<chrono::NaiveDateTime>) -> Value {
    match t {
        None => Value::Null,
        Some(t) => {
            let micros = t.and_utc().timestamp_subsec_micros();
            let base = t.format("%Y-%m-%dT%H:%M:%S").to_string();
            if micros == 0 {
                json!(base)
            } else {
                json!(format!("{base}.{micros:06}"))
            }
        }
    }
}

fn trial_json(t: &FrozenTrial) -> Value {
    let params: Map<String, Value> = t.external_params().into_iter().collect();
    let dists: Map<String, Value> = t.distributions.iter().map(|(k, d)| (k.clone(), d.to_optuna_json())).collect();
    let ivs: Map<String, Value> = t.intermediate_values.iter().map(|(s, v)| (s.to_string(), number(*v))).collect();
    json!({
        "number": t.number,
        "state": t.state.as_str(),
        "value": t.value.map(number),
        "params": params,
        "distributions": dists,
        "intermediate_values": ivs,
        "user_attrs": t.user_attrs,
        "system_attrs": t.system_attrs,
        "datetime_start": iso(t.datetime_start),
        "datetime_complete": iso(t.datetime_complete),
    })
}

/// A study as tune's storage sees it, in `_dump.py`'s shape.
fn dump(storage: &dyn Storage, name: &str) -> Value {
    let id = storage.get_study_id_from_name(name).unwrap().expect("the study exists");
    let trials: Vec<Value> = storage.get_all_trials(id, None).unwrap().iter().map(|t| trial_json(t)).collect();
    json!({
        "direction": storage.get_study_direction(id).unwrap().as_str(),
        "user_attrs": storage.get_study_user_attrs(id).unwrap(),
        "best_trial": storage.get_best_trial(id).unwrap().map(|t| t.number),
        "trials": trials,
    })
}

/// JSON equality where numbers may differ in their last bits (the text round trip through
/// Python's repr and serde_json's parser) and `3` equals `3.0`.
fn assert_same(ours: &Value, theirs: &Value, at: &str) {
    match (ours, theirs) {
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!((a - b).abs() <= 1e-12 * a.abs().max(1.0), "{at}: tune {a} vs optuna {b}");
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{at}: tune {ours} vs optuna {theirs}");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_same(x, y, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            let ka: Vec<&String> = a.keys().collect();
            let mut kb: Vec<&String> = b.keys().collect();
            let mut ka_sorted = ka.clone();
            ka_sorted.sort();
            kb.sort();
            assert_eq!(ka_sorted, kb, "{at}: keys differ\ntune:   {ours}\noptuna: {theirs}");
            for (k, x) in a {
                assert_same(x, &b[k], &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(ours, theirs, "{at}"),
    }
}

fn choices() -> Vec<Value> {
    vec![json!("adam"), json!(3), json!(2.5), json!(null), json!(true), json!([64, 64]), json!([256, 256])]
}

/// Suggests one parameter of every kind.
fn every_kind(t: &mut Trial) {
    let dists = [
        ("float", Distribution::float(-1.5, 2.5, false, None).unwrap()),
        ("log_float", Distribution::float(1e-5, 1e-1, true, None).unwrap()),
        ("step_float", Distribution::float(0.0, 1.0, false, Some(0.25)).unwrap()),
        ("int", Distribution::int(-10, 10, false, 1).unwrap()),
        ("log_int", Distribution::int(1, 1024, true, 1).unwrap()),
        ("step_int", Distribution::int(2, 11, false, 3).unwrap()),
        ("cat", Distribution::categorical(choices()).unwrap()),
    ];
    for (name, d) in &dists {
        t.suggest(name, d).unwrap();
    }
}

fn study(storage: Arc<dyn Storage>, name: &str, direction: Direction) -> Study {
    Study::create_or_load(storage, name, direction, Arc::new(RandomSampler::new(3)), Arc::new(NopPruner), 3).unwrap()
}

#[test]
fn optuna_loads_what_tune_wrote() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    for db in backends(dir.path(), "tune") {
        optuna_loads_what_tune_wrote_in(&py, &db);
    }
}

fn optuna_loads_what_tune_wrote_in(py: &Path, db: &str) {
    let storage = open(db);
    let s = study(storage.clone(), "tune-made", Direction::Minimize);
    storage.set_study_user_attr(s.study_id(), "env", &json!({"id": "CartPole-v1", "steps": [1, 2]})).unwrap();
    // Enqueued trials pin the categorical, so that every kind of choice is stored somewhere.
    for cat in [json!(null), json!(true), json!([64, 64]), json!(2.5), json!("adam")] {
        s.enqueue(&BTreeMap::from([("cat".to_string(), cat)])).unwrap();
    }

    let mut t = s.ask().unwrap();
    every_kind(&mut t);
    for (step, v) in [(0, 1.0), (1, f64::NAN), (2, f64::INFINITY), (3, f64::NEG_INFINITY)] {
        t.report(step, v).unwrap();
    }
    t.set_user_attr("returns", json!([1.5, 2.5, null])).unwrap();
    t.set_user_attr("note", json!("ünïcode \"quoted\"")).unwrap();
    t.set_system_attr("tune:device", json!("cpu")).unwrap();
    s.tell(t, Outcome::Complete(0.5)).unwrap();

    let mut t = s.ask().unwrap();
    every_kind(&mut t);
    s.tell(t, Outcome::Complete(f64::INFINITY)).unwrap();

    let mut t = s.ask().unwrap();
    every_kind(&mut t);
    s.tell(t, Outcome::Complete(f64::NEG_INFINITY)).unwrap();

    let mut t = s.ask().unwrap();
    every_kind(&mut t);
    for (step, v) in [(0, 3.0), (5, 2.0), (10, f64::NAN)] {
        t.report(step, v).unwrap();
    }
    assert_eq!(s.tell(t, Outcome::Pruned).unwrap().value, Some(2.0));

    let mut t = s.ask().unwrap();
    every_kind(&mut t);
    s.tell(t, Outcome::Fail("boom".into())).unwrap();

    let mut running = s.ask().unwrap();
    every_kind(&mut running);
    running.report(0, 7.0).unwrap();
    s.enqueue(&BTreeMap::from([("cat".to_string(), json!([256, 256])), ("int".to_string(), json!(4))])).unwrap();

    let ours = dump(storage.as_ref(), "tune-made");
    let states: Vec<&str> = ours["trials"].as_array().unwrap().iter().map(|t| t["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"]);
    assert_eq!(ours["best_trial"], json!(2));
    let theirs = run_script(py, "optuna_read.py", &[db, "tune-made"]);
    assert_same(&ours, &theirs, db);
}

#[test]
fn tune_reads_what_optuna_wrote() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    for db in backends(dir.path(), "optuna") {
        tune_reads_what_optuna_wrote_in(&py, &db);
    }
}

fn tune_reads_what_optuna_wrote_in(py: &Path, db: &str) {
    let theirs = run_script(py, "optuna_write.py", &[db, "optuna-made"]);
    let storage = open(db);
    let ours = dump(storage.as_ref(), "optuna-made");
    let states: Vec<&str> = ours["trials"].as_array().unwrap().iter().map(|t| t["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["COMPLETE", "COMPLETE", "PRUNED", "FAIL", "COMPLETE", "WAITING"]);
    assert_same(&ours, &theirs, db);
    // And tune can go on with the study: the WAITING trial first, with Optuna's fixed params.
    let s = Study::load(storage, "optuna-made", Arc::new(RandomSampler::new(1)), Arc::new(NopPruner), 1).unwrap();
    let mut t = s.ask().unwrap();
    assert_eq!(t.number(), 5);
    let cat = t.suggest(
        "cat",
        &Distribution::categorical(vec![json!("adam"), json!(3), json!(2.5), json!(null), json!(true)]).unwrap(),
    );
    assert_eq!(cat.unwrap(), json!(true));
    assert_eq!(t.suggest_float("float", -1.5, 2.5).unwrap(), 1.0);
    s.tell(t, Outcome::Complete(9.0)).unwrap();
    assert_eq!(s.best_trial().unwrap().unwrap().number, 5);
}

#[test]
fn optuna_adds_a_trial_to_a_tune_study() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    for db in backends(dir.path(), "mixed") {
        optuna_adds_a_trial_to_a_tune_study_in(&py, &db);
    }
}

fn optuna_adds_a_trial_to_a_tune_study_in(py: &Path, db: &str) {
    let storage = open(db);
    let s = study(storage.clone(), "mixed", Direction::Maximize);
    for _ in 0..3 {
        let mut t = s.ask().unwrap();
        let x = t.suggest_float("x", 0.0, 1.0).unwrap();
        let n = t.suggest_int("n", 1, 8).unwrap();
        t.report(0, x).unwrap();
        s.tell(t, Outcome::Complete(x * n as f64)).unwrap();
    }
    // Read once, so that this handle has the study cached when Optuna adds to it.
    assert_eq!(s.trials().unwrap().len(), 3);
    let theirs = run_script(py, "optuna_read.py", &[db, "mixed", "--add-trial"]);
    let ours = dump(storage.as_ref(), "mixed");
    assert_same(&ours, &theirs, db);
    let added = &ours["trials"][3];
    assert_eq!((added["number"].clone(), added["state"].clone()), (json!(3), json!("COMPLETE")));
    assert_eq!(added["user_attrs"]["by"], json!("optuna"));
    // Numbering goes on after Optuna's trial.
    let t = s.ask().unwrap();
    assert_eq!(t.number(), 4);
}

#[test]
fn stepped_float_ranges_read_back_the_same_in_optuna() {
    // A range that is not a whole number of steps: Optuna snaps `high` down with decimal
    // arithmetic on the shortest repr of each float (0.9 for [0, 1] step 0.3) and snaps again
    // whenever it reads a distribution back, so what we store must already be its fixed point.
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    for db in backends(dir.path(), "step") {
        stepped_float_ranges_in(&py, &db);
    }
}

fn stepped_float_ranges_in(py: &Path, db: &str) {
    let storage = open(db);
    let s = study(storage.clone(), "step", Direction::Minimize);
    for (low, high, step) in [(0.0, 1.0, 0.3), (0.1, 1.0, 0.2), (-1.0, 1.0, 0.7), (0.0, 0.5, 0.1)] {
        let mut t = s.ask().unwrap();
        let d = Distribution::float(low, high, false, Some(step)).unwrap();
        t.suggest("x", &d).unwrap();
        s.tell(t, Outcome::Complete(1.0)).unwrap();
    }
    let theirs = run_script(py, "optuna_read.py", &[db, "step"]);
    assert_same(&dump(storage.as_ref(), "step"), &theirs, db);
}
