//! Study-file tests: one good file read field by field, one test per mistake a user can make
//! (each message must name the file, the YAML path and the fix), and conditional sampling.

use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::distribution::Distribution;
use crate::sampler::RandomSampler;
use crate::study::Study;

const GOOD: &str = "\
name: sphere-tpe
direction: minimize
storage: sqlite:///tune.db
n_trials: 100
timeout: 600
seed: 42
sampler: {type: tpe, n_startup_trials: 5}
pruner: {type: median, n_warmup_steps: 5}
parallelism: {jobs: 2, devices: [cuda:0], trials_per_device: 1}
heartbeat: {interval: 5, grace: 30, retries: 2}
objective:
  type: function
  name: sphere
  dim: 2
  config:
    agent:
      batch: 32
      net: [64, 64]
      replay: {type: uniform, alpha: 0.6}
search_space:
  x.0: {type: float, low: -5, high: 5}
  x.1: {type: float, low: 1e-5, high: 1, log: true}
  agent.batch: {type: int, low: 16, high: 256, step: 16}
  agent.net: {type: categorical, choices: [[64, 64], [256, 256]]}
  agent.replay.type: {type: categorical, choices: [uniform, prioritized]}
  agent.replay.alpha: {type: float, low: 0.2, high: 1.0, when: {agent.replay.type: prioritized}}
";

/// A minimal valid file; tests replace or append lines to make it invalid.
const MINIMAL: &str = "\
name: s
direction: minimize
n_trials: 10
objective: {type: function, name: sphere, dim: 2}
search_space:
  x.0: {type: float, low: -5, high: 5}
";

/// Writes `text` as `study.yaml` in a fresh folder and loads it.
fn load(text: &str) -> (tempfile::TempDir, anyhow::Result<StudySpec>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("study.yaml");
    std::fs::write(&file, text).unwrap();
    let spec = StudySpec::load(&file);
    (dir, spec)
}

/// Loads `text`, expects an input error, checks nothing was written next to the file, and
/// returns the message.
fn err(text: &str) -> String {
    let (dir, spec) = load(text);
    let e = spec.expect_err("the file should be refused");
    assert_eq!(crate::error::exit_code(&e), 2, "not an input error: {e:#}");
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|f| f.unwrap().file_name()).collect();
    assert_eq!(files, ["study.yaml"], "an invalid file must not write anything");
    let msg = format!("{e:#}");
    assert!(msg.contains("study.yaml"), "the message must name the file: {msg}");
    msg
}

/// Asserts that `msg` contains every one of `parts`.
fn has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "expected `{p}` in: {msg}");
    }
}

#[test]
fn good_file_loads_into_the_expected_spec() {
    let (_dir, spec) = load(GOOD);
    let spec = spec.unwrap();
    assert!(spec.path.ends_with("study.yaml"));
    assert_eq!(spec.name, "sphere-tpe");
    assert_eq!(spec.direction, Direction::Minimize);
    assert_eq!(spec.storage.as_deref(), Some("sqlite:///tune.db"));
    assert_eq!(spec.n_trials, Some(100));
    assert_eq!(spec.timeout, Some(600.0));
    assert_eq!(spec.seed, Some(42));
    match &spec.sampler {
        SamplerSpec::Tpe(c) => assert_eq!(*c, TpeConfig { n_startup_trials: 5, ..TpeConfig::default() }),
        other => panic!("expected tpe, got {other:?}"),
    }
    match &spec.pruner {
        PrunerSpec::Median(c) => assert_eq!(*c, MedianConfig { n_warmup_steps: 5, ..MedianConfig::default() }),
        other => panic!("expected median, got {other:?}"),
    }
    assert_eq!(
        spec.parallelism,
        Parallelism { jobs: 2, devices: vec!["cuda:0".into()], trials_per_device: 1, batch: 1 }
    );
    assert_eq!(spec.heartbeat, Heartbeat { interval: 5.0, grace: 30.0, retries: 2 });
    assert!(matches!(spec.objective, ObjectiveSpec::Function(_)));
    let names: Vec<&str> = spec.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["x.0", "x.1", "agent.batch", "agent.net", "agent.replay.type", "agent.replay.alpha"]);
    assert_eq!(spec.params[1].distribution, Distribution::float(1e-5, 1.0, true, None).unwrap());
    assert_eq!(spec.params[2].distribution, Distribution::int(16, 256, false, 16).unwrap());
    assert_eq!(
        spec.params[5],
        ParamSpec {
            name: "agent.replay.alpha".into(),
            distribution: Distribution::float(0.2, 1.0, false, None).unwrap(),
            when: vec![Condition { param: "agent.replay.type".into(), values: vec![json!("prioritized")] }],
            grid: None,
        }
    );
    spec.build_sampler(1).unwrap();
    spec.build_pruner().unwrap();
}

#[test]
fn defaults_fill_what_is_left_out() {
    let (_dir, spec) = load(MINIMAL);
    let spec = spec.unwrap();
    assert_eq!(spec.storage, None);
    assert_eq!(spec.timeout, None);
    assert_eq!(spec.seed, None);
    assert!(matches!(&spec.sampler, SamplerSpec::Tpe(c) if *c == TpeConfig::default()));
    assert!(matches!(&spec.pruner, PrunerSpec::Median(c) if *c == MedianConfig::default()));
    assert_eq!(spec.parallelism, Parallelism { jobs: 1, devices: vec![], trials_per_device: 1, batch: 1 });
    assert_eq!(spec.heartbeat, Heartbeat { interval: 10.0, grace: 60.0, retries: 1 });
}

#[test]
fn other_samplers_and_pruners_load() {
    for (sampler, pruner) in [
        ("{type: random}", "{type: none}"),
        ("random", "none"),
        ("{type: grid}", "{type: percentile, percentile: 25}"),
        ("grid", "{type: successive_halving, min_resource: 3, reduction_factor: 3}"),
        ("random", "{type: threshold, lower: 0.0}"),
        ("random", "{type: threshold, upper: 1.0e6, n_warmup_steps: 3, interval_steps: 2}"),
        ("random", "{type: patient, patience: 3}"),
        ("random", "{type: patient, patience: 2, min_delta: 0.5, wrapped: {type: median, n_warmup_steps: 2}}"),
        ("random", "{type: patient, patience: 1, wrapped: {type: patient, patience: 2, wrapped: threshold_none}}"),
    ] {
        let pruner = pruner.replace("threshold_none", "none");
        let text = MINIMAL.replace("low: -5, high: 5}", "low: -5, high: 5, step: 1}")
            + &format!("sampler: {sampler}\npruner: {pruner}\n");
        let (_dir, spec) = load(&text);
        let spec = spec.unwrap_or_else(|e| panic!("{sampler} / {pruner}: {e:#}"));
        spec.build_sampler(3).unwrap();
        spec.build_pruner().unwrap();
    }
}

#[test]
fn shipped_studies_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("studies");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let spec = match StudySpec::load(&path) {
                // GPU-sized studies (dqn_breakout.yaml) need a CUDA device to load.
                Err(e) if format!("{e:#}").contains("no CUDA device is available") => {
                    eprintln!("skipped {}: no CUDA device here", path.display());
                    continue;
                }
                other => other.unwrap_or_else(|e| panic!("{e:#}")),
            };
            spec.build_sampler(0).unwrap();
            spec.build_pruner().unwrap();
        }
    }
}

#[test]
fn malformed_yaml() {
    let e = err("name: s\ndirection: minimize\n  n_trials: 10\n");
    has(&e, &["study.yaml", "(line 3, column 11)", "invalid YAML", "mapping values are not allowed"]);
}

#[test]
fn empty_file() {
    let e = err("# nothing yet\n");
    has(&e, &["the file is empty", "`name`"]);
}

#[test]
fn unknown_top_level_key() {
    let e = err(&format!("{MINIMAL}samplr: {{type: random}}\n"));
    has(
        &e,
        &[
            "study.yaml: samplr (line 7, column 9)",
            "unknown key `samplr`",
            "expected one of: name, direction",
            "did you mean `sampler`?",
        ],
    );
}

#[test]
fn unknown_nested_key() {
    let e = err(&format!("{MINIMAL}sampler: {{type: tpe, n_startup_trial: 3}}\n"));
    has(&e, &["sampler.n_startup_trial (line 7", "unknown key `n_startup_trial`", "did you mean `n_startup_trials`?"]);
    let e = err(&format!("{MINIMAL}parallelism:\n  job: 2\n"));
    has(
        &e,
        &[
            "parallelism.job (line 8, column 8)",
            "unknown key `job`",
            "expected one of: jobs, devices, trials_per_device",
        ],
    );
    let e = err(&format!("{MINIMAL}sampler: {{type: random, seed: 3}}\n"));
    has(&e, &["sampler.seed (line 7", "the random sampler takes no settings besides `type`"]);
}

#[test]
fn wrong_type() {
    let e = err(&MINIMAL.replace("n_trials: 10", "n_trials: many"));
    has(&e, &["study.yaml: n_trials (line 3, column 11)", "expected a whole number >= 0, got string \"many\""]);
    let e = err(&format!("{MINIMAL}heartbeat: {{grace: soon}}\n"));
    has(&e, &["heartbeat.grace (line 7, column 20)", "expected a number"]);
}

#[test]
fn low_above_high() {
    let e = err(&MINIMAL.replace("low: -5, high: 5", "low: 1, high: 0"));
    has(&e, &["search_space.x.0.low (line 6, column 27)", "low must be <= high (got low=1, high=0)"]);
}

#[test]
fn log_with_nonpositive_low() {
    let e = err(&MINIMAL.replace("low: -5, high: 5", "low: 0, high: 1, log: true"));
    has(&e, &["search_space.x.0.log (line 6", "`log: true` needs low > 0"]);
}

#[test]
fn log_with_step() {
    let e = err(&MINIMAL.replace("low: -5, high: 5", "low: 0.1, high: 1, log: true, step: 0.1"));
    has(&e, &["search_space.x.0.log (line 6", "`step` and `log: true` cannot be used together"]);
}

#[test]
fn unknown_sampler() {
    let e = err(&format!("{MINIMAL}sampler: {{type: tpee}}\n"));
    has(
        &e,
        &[
            "sampler.type (line 7, column 17)",
            "unknown sampler type `tpee`; expected one of: tpe, gp, random, grid (did you mean `tpe`?)",
        ],
    );
    let e = err(&format!("{MINIMAL}sampler: cmaes\n"));
    has(&e, &["sampler (line 7", "unknown sampler type `cmaes`; expected one of: tpe, gp, random, grid"]);
}

#[test]
fn unknown_pruner() {
    let e = err(&format!("{MINIMAL}pruner: {{type: hyperbnad}}\n"));
    has(
        &e,
        &[
            "pruner.type (line 7",
            "unknown pruner type `hyperbnad`; expected one of: none, median, percentile, successive_halving, hyperband, threshold, patient",
            "did you mean `hyperband`?",
        ],
    );
}

#[test]
fn bad_pruner_setting() {
    let e = err(&format!("{MINIMAL}pruner: {{type: percentile, percentile: 150}}\n"));
    has(&e, &["pruner.percentile (line 7, column 40)", "between 0 and 100"]);
}

#[test]
fn bad_threshold_and_patient_settings() {
    let e = err(&format!("{MINIMAL}pruner: {{type: threshold}}\n"));
    has(&e, &["pruner (line 7", "Neither `lower` nor `upper` is given"]);
    let e = err(&format!("{MINIMAL}pruner: {{type: threshold, lower: 3, upper: 1}}\n"));
    has(&e, &["pruner.lower (line 7", "must not be above `upper`"]);
    let e = err(&format!("{MINIMAL}pruner: {{type: threshold, lower: 0, interval_steps: 0}}\n"));
    has(&e, &["pruner.interval_steps (line 7", ">= 1"]);
    let e = err(&format!("{MINIMAL}pruner: {{type: patient}}\n"));
    has(&e, &["pruner", "missing required key `patience`"]);
    let e = err(&format!("{MINIMAL}pruner: {{type: patient, patience: -1}}\n"));
    has(&e, &["pruner.patience (line 7", "is out of range"]);
    let e = err(&format!("{MINIMAL}pruner: {{type: patient, patience: 2, min_delta: -0.5}}\n"));
    has(&e, &["pruner.min_delta (line 7", "must be a number >= 0"]);
    // A wrapped pruner's mistakes are reported at its own path.
    let e = err(&format!(
        "{MINIMAL}pruner:\n  type: patient\n  patience: 2\n  wrapped: {{type: percentile, percentile: 150}}\n"
    ));
    has(&e, &["pruner.wrapped.percentile (line 10", "between 0 and 100"]);
    let e = err(&format!("{MINIMAL}pruner: {{type: patient, patience: 2, wrapped: {{type: medain}}}}\n"));
    has(&e, &["pruner.wrapped.type (line 7", "unknown pruner type `medain`", "did you mean `median`?"]);
}

#[test]
fn bad_hyperband_and_gp_settings() {
    let e = err(&format!("{MINIMAL}pruner: {{type: hyperband, min_resource: 0}}\n"));
    has(&e, &["pruner.min_resource (line 7", "must be an integer >= 1"]);
    let e = err(&format!("{MINIMAL}pruner: {{type: hyperband, min_resource: 10, max_resource: 5}}\n"));
    has(&e, &["pruner.max_resource (line 7", "must be an integer >= min_resource (10)"]);
    let e = err(&format!("{MINIMAL}pruner: {{type: hyperband, max_resource: all}}\n"));
    has(&e, &["pruner", "`max_resource` must be an integer >= min_resource or \"auto\" (got \"all\")"]);
    let e = err(&format!("{MINIMAL}pruner: {{type: hyperband, reduction_factor: 1}}\n"));
    has(&e, &["pruner.reduction_factor (line 7", ">= 2"]);
    let e = err(&format!("{MINIMAL}pruner: {{type: hyperband, bootstrap_count: 2}}\n"));
    has(&e, &["pruner.bootstrap_count (line 7", "needs a fixed `max_resource`"]);
    let e = err(&format!("{MINIMAL}pruner: {{type: hyperband, max_resource: 9000000000000000000}}\n"));
    has(&e, &["pruner.max_resource (line 7", "gives 40 brackets, too many", "raise `reduction_factor`"]);
    let e = err(&format!("{MINIMAL}sampler: {{type: gp, n_startup: 3}}\n"));
    has(&e, &["sampler", "n_startup", "n_startup_trials"]);
    let e = err(&format!("{MINIMAL}sampler: {{type: gp, n_startup_trials: -1}}\n"));
    has(&e, &["sampler.n_startup_trials (line 7", "out of range"]);
    let e = err(&format!("{MINIMAL}sampler: {{type: gp, deterministic_objective: maybe}}\n"));
    has(&e, &["sampler.deterministic_objective (line 7"]);
    for ok in [
        "pruner: {type: hyperband}\n",
        "pruner: {type: hyperband, min_resource: 2, max_resource: 64, reduction_factor: 2, bootstrap_count: 1}\n",
        "sampler: {type: gp, n_startup_trials: 3, deterministic_objective: true}\n",
    ] {
        let (_dir, spec) = load(&format!("{MINIMAL}{ok}"));
        let spec = spec.unwrap_or_else(|e| panic!("{ok}: {e:#}"));
        spec.build_pruner().unwrap();
        spec.build_sampler(1).unwrap();
    }
}

#[test]
fn bad_tpe_setting() {
    let e = err(&format!("{MINIMAL}sampler: {{type: tpe, n_ei_candidates: 0}}\n"));
    has(&e, &["sampler.n_ei_candidates (line 7", "at least 1"]);
}

#[test]
fn unknown_objective_type() {
    let e = err(&MINIMAL.replace("type: function", "type: funktion"));
    has(
        &e,
        &[
            "objective.type (line 4",
            "unknown objective type `funktion`; expected one of: function, command, rl (did you mean `function`?)",
        ],
    );
}

#[test]
fn bad_objective_settings() {
    let e = err(&MINIMAL.replace("dim: 2", "dims: 2"));
    has(&e, &["objective.dims (line 4", "unknown key `dims`", "did you mean `dim`?"]);
    let e = err(&MINIMAL.replace("name: sphere, dim: 2", "name: branin, dim: 3"));
    has(&e, &["objective.dim (line 4, column 48)", "branin is 2-dimensional"]);
}

#[test]
fn missing_dotted_path() {
    let e = err(&MINIMAL.replace("x.0:", "x.2:"));
    has(
        &e,
        &[
            "search_space.x.2 (line 6, column 8)",
            "`x.2` does not exist in the objective's base config",
            "index 2 is out of range",
        ],
    );
    let e = err(&MINIMAL.replace("x.0:", "agent.lr:"));
    has(&e, &["search_space.agent.lr (line 6", "no key `agent` at the top level; keys there: x"]);
}

#[test]
fn condition_on_undeclared_parameter() {
    let e = err(&format!("{MINIMAL}  x.1: {{type: float, low: 0, high: 1, when: {{x.3: 1}}}}\n"));
    has(
        &e,
        &[
            "search_space.x.1.when.x.3 (line 7",
            "`x.1` depends on `x.3`, which is not a parameter of the search space",
            "declared above it: x.0",
        ],
    );
}

#[test]
fn condition_value_not_among_choices() {
    let text = MINIMAL.replace("dim: 2", "dim: 2, config: {kind: a}")
        + "  kind: {type: categorical, choices: [a, b]}\n  x.1: {type: float, low: 0, high: 1, when: {kind: c}}\n";
    let e = err(&text);
    has(&e, &["search_space.x.1.when.kind (line 8", "`c` is not a value `kind` can take; its choices are: a, b"]);
}

#[test]
fn no_budget() {
    let e = err(&MINIMAL.replace("n_trials: 10\n", ""));
    has(&e, &["study.yaml: the study has no budget", "`n_trials`", "`timeout`"]);
    let (_dir, spec) = load(&MINIMAL.replace("n_trials: 10", "timeout: 60"));
    assert_eq!(spec.unwrap().timeout, Some(60.0));
}

#[test]
fn zero_jobs() {
    let e = err(&format!("{MINIMAL}parallelism: {{jobs: 0}}\n"));
    has(&e, &["parallelism.jobs (line 7, column 21)", "jobs must be from 1 to 1024 (got 0)"]);
}

#[test]
fn bad_devices_and_heartbeat() {
    let e = err(&format!("{MINIMAL}parallelism: {{devices: [cuda:0, gpu1]}}\n"));
    has(&e, &["parallelism.devices[1] (line 7", "unknown device `gpu1`"]);
    let e = err(&format!("{MINIMAL}heartbeat: {{interval: 30, grace: 20}}\n"));
    has(&e, &["heartbeat.grace (line 7", "must be longer than interval"]);
}

#[test]
fn bad_direction_and_name() {
    let e = err(&MINIMAL.replace("minimize", "minimise"));
    has(
        &e,
        &[
            "direction (line 2, column 12)",
            "unknown value `minimise`; expected one of: minimize, maximize (did you mean `minimize`?)",
        ],
    );
    let e = err(&MINIMAL.replace("name: s\n", "name: ''\n"));
    has(&e, &["name (line 1", "must not be empty"]);
    let e = err(&MINIMAL.replace("name: s\n", ""));
    has(&e, &["missing required key `name`"]);
}

#[test]
fn grid_needs_finite_values() {
    let e = err(&format!("{MINIMAL}sampler: {{type: grid}}\n"));
    has(&e, &["search_space.x.0 (line 6", "grid sampler needs a finite set", "`step`", "`grid: [...]`"]);
    let (_dir, spec) = load(&(MINIMAL.replace("high: 5}", "high: 5, grid: [-1, 0, 1]}") + "sampler: grid\n"));
    spec.unwrap().build_sampler(0).unwrap();
}

#[test]
fn missing_file() {
    let e = StudySpec::load(Path::new("no/such/study.yaml")).unwrap_err();
    assert_eq!(crate::error::exit_code(&e), 2);
    has(&format!("{e:#}"), &["cannot read study file no/such/study.yaml"]);
}

/// Runs `n` trials of the GOOD space with random sampling and returns (params, config) pairs.
fn sampled(n: usize) -> Vec<(std::collections::BTreeMap<String, f64>, Value)> {
    let (_dir, spec) = load(GOOD);
    let spec = spec.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ctx = BuildContext { base_dir: dir.path().into(), log_dir: dir.path().join("logs") };
    let objective = spec.objective.build(&ctx).unwrap();
    let study = Study::in_memory("s", Direction::Minimize, Arc::new(RandomSampler::new(7))).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let mut trial = study.ask().unwrap();
        let config = sample_config(&spec.params, objective.base_config(), &mut trial).unwrap();
        out.push((trial.frozen().params.clone(), config));
        study.tell(trial, crate::study::Outcome::Complete(0.0)).unwrap();
    }
    out
}

use serde_json::Value;

#[test]
fn sample_config_writes_values_at_their_paths() {
    for (params, config) in sampled(20) {
        assert_eq!(config["x"].as_array().unwrap().len(), 2);
        let x1 = config["x"][1].as_f64().unwrap();
        assert!((1e-5..=1.0).contains(&x1));
        let batch = config["agent"]["batch"].as_i64().unwrap();
        assert!(batch % 16 == 0 && (16..=256).contains(&batch));
        assert!(config["agent"]["net"] == json!([64, 64]) || config["agent"]["net"] == json!([256, 256]));
        assert!(params.contains_key("x.0") && params.contains_key("agent.net"));
    }
}

#[test]
fn conditional_parameters_follow_their_condition() {
    let (mut on, mut off) = (0, 0);
    for (params, config) in sampled(40) {
        let replay = &config["agent"]["replay"];
        if replay["type"] == "prioritized" {
            on += 1;
            assert!(params.contains_key("agent.replay.alpha"));
            let alpha = replay["alpha"].as_f64().unwrap();
            assert!((0.2..=1.0).contains(&alpha));
            assert_eq!(params["agent.replay.alpha"], alpha);
        } else {
            off += 1;
            assert!(!params.contains_key("agent.replay.alpha"), "inactive parameters are not suggested");
            assert_eq!(replay["alpha"], json!(0.6), "an inactive parameter keeps its base value");
        }
    }
    assert!(on > 0 && off > 0, "both branches should occur in 40 trials ({on} on, {off} off)");
}

#[test]
fn conditions_chain_through_inactive_parameters() {
    // `c` depends on `b`, which depends on `a`: when `a` switches `b` off, `c` is off too,
    // even though `b`'s base value would match `c`'s condition.
    let text = "\
name: s
direction: minimize
n_trials: 1
objective: {type: function, name: sphere, dim: 2, config: {a: 0, b: 1, c: 0}}
search_space:
  a: {type: int, low: 0, high: 1}
  b: {type: int, low: 1, high: 1, when: {a: 1}}
  c: {type: int, low: 5, high: 6, when: {b: 1}}
";
    let (_dir, spec) = load(text);
    let spec = spec.unwrap();
    let base = json!({"x": [0.0, 0.0], "a": 0, "b": 1, "c": 0});
    let study = Study::in_memory("s", Direction::Minimize, Arc::new(RandomSampler::new(1))).unwrap();
    let (mut seen_on, mut seen_off) = (false, false);
    for _ in 0..30 {
        let mut trial = study.ask().unwrap();
        let config = sample_config(&spec.params, &base, &mut trial).unwrap();
        if config["a"] == 1 {
            seen_on = true;
            assert!((5..=6).contains(&config["c"].as_i64().unwrap()));
        } else {
            seen_off = true;
            assert_eq!(config["c"], 0);
            assert!(!trial.frozen().params.contains_key("b") && !trial.frozen().params.contains_key("c"));
        }
        study.tell(trial, crate::study::Outcome::Complete(0.0)).unwrap();
    }
    assert!(seen_on && seen_off);
}

#[test]
fn bad_fixtures_are_refused_with_their_expected_message() {
    // Each file under tests/fixtures/bad starts with `# expect: <part of the message>`.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text.lines().next().and_then(|l| l.strip_prefix("# expect: ")).expect("an `# expect:` first line");
        let e = StudySpec::load(&path).expect_err("a bad fixture should be refused");
        assert_eq!(crate::error::exit_code(&e), 2);
        has(&format!("{e:#}"), &[path.file_name().unwrap().to_str().unwrap(), expect]);
        n += 1;
    }
    assert!(n >= 8);
}

#[test]
fn parallelism_slots() {
    let p = |devices: &[&str], per: usize| Parallelism {
        jobs: 9,
        devices: devices.iter().map(|d| d.to_string()).collect(),
        trials_per_device: per,
        batch: 1,
    };
    assert_eq!(p(&[], 2).slots(3), vec![None; 3], "no devices: `jobs` unplaced workers");
    let some = |v: &[&str]| v.iter().map(|d| Some(d.to_string())).collect::<Vec<_>>();
    assert_eq!(p(&["cuda:0", "cuda:1"], 2).slots(3), some(&["cuda:0", "cuda:0", "cuda:1", "cuda:1"]));
    assert_eq!(p(&["cuda:0", "cpu"], 2).slots(3), some(&["cuda:0", "cuda:0", "cpu", "cpu", "cpu"]));
}

/// The trainer config every rl case below starts from.
fn rl_study(space: &str) -> String {
    format!(
        "name: s\ndirection: maximize\nn_trials: 10\nobjective: {{type: rl, config: {}/configs/per_cartpole.yaml}}\nsearch_space:\n{space}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn search_space_edges_the_objective_refuses_are_caught_at_load() {
    // rl: a range whose high end breaks a rule of the agent.
    let e = err(&rl_study("  agent.gamma: {type: float, low: 0.5, high: 3.0}\n"));
    has(
        &e,
        &["search_space.agent.gamma (line 6", "`agent.gamma` = 3.0 (its high end)", "gamma must be in [0, 1], got 3"],
    );
    // rl: a low end, an int, a categorical choice with a zero size.
    let e = err(&rl_study("  agent.lr: {type: float, low: 1e-4, high: 1e-2, log: true}\n  agent.batch_size: {type: int, low: 0, high: 64}\n"));
    has(&e, &["search_space.agent.batch_size (line 7", "= 0 (its low end)", "batch_size must be at least 1"]);
    let e = err(&rl_study("  agent.net.hidden: {type: categorical, choices: [[64, 64], [0]]}\n"));
    has(&e, &["search_space.agent.net.hidden", "= [0] (one of its choices)", "net.hidden[0] must be at least 1"]);
    let e = err(&rl_study("  agent.replay.type: {type: categorical, choices: [prioritized, uniformm]}\n"));
    has(&e, &["search_space.agent.replay.type", "\"uniformm\" (one of its choices)"]);
    // function: `x` of learning_curve is a list of numbers, not one.
    let e = err("name: s\ndirection: minimize\nn_trials: 400\nobjective: {type: function, name: learning_curve}\nsearch_space:\n  x: {type: float, low: -1, high: 1}\n");
    has(&e, &["search_space.x (line 6", "`x` must be a list of 2 numbers"]);
    // A conditional parameter is checked with its condition met, and says so.
    let e = err("name: s\ndirection: minimize\nn_trials: 4\nobjective: {type: function, name: learning_curve, config: {opt: adam}}\nsearch_space:\n  opt: {type: categorical, choices: [adam, sgd]}\n  lr: {type: float, low: 0.0, high: 1.0, when: {opt: sgd}}\n");
    has(
        &e,
        &[
            "search_space.lr (line 7",
            "`lr` = 0.0 (its low end), with `opt` = \"sgd\" to make it active",
            "`lr` must be a number > 0",
        ],
    );
    // command: a value keeps the kind it has in the base config.
    let e = err("name: s\ndirection: minimize\nn_trials: 4\nobjective: {type: command, command: [true], config: {x: [1, 2], o: {lr: 0.1}}}\nsearch_space:\n  x: {type: float, low: -1, high: 1}\n");
    has(&e, &["search_space.x (line 6", "`x` is a list in the base config, so it cannot become a number"]);
    let e = err("name: s\ndirection: minimize\nn_trials: 4\nobjective: {type: command, command: [true], config: {x: [1, 2], o: {lr: 0.1}}}\nsearch_space:\n  o.lr: {type: categorical, choices: [0.1, fast]}\n");
    has(&e, &["search_space.o.lr", "`o.lr` is a number in the base config, so it cannot become a string"]);
    // What the objectives take still loads.
    let (_d, ok) = load("name: s\ndirection: minimize\nn_trials: 4\nobjective: {type: command, command: [true], config: {x: [1, 2], o: {lr: 0.1}}}\nsearch_space:\n  x: {type: categorical, choices: [[0, 1], [2, 3, 4]]}\n  o.lr: {type: int, low: 1, high: 3}\n");
    ok.unwrap();
    let (_d, ok) = load(&rl_study("  agent.gamma: {type: float, low: 0.5, high: 1.0}\n  agent.net.hidden: {type: categorical, choices: [[64, 64], [32]]}\n"));
    ok.unwrap();
}

#[test]
fn numbers_beyond_64_bits_name_their_key_line_and_range() {
    let big = |line: &str| err(&MINIMAL.replace("n_trials: 10\n", line));
    has(
        &big("n_trials: 99999999999999999999999\n"),
        &["n_trials (line 3, column 11)", "99999999999999999999999 is out of range", "1 to 18446744073709551615"],
    );
    has(&big("n_trials: 10\nseed: 18446744073709551616\n"), &["seed (line 4, column 7)", "0 to 18446744073709551615"]);
    has(
        &big("n_trials: 10\nseed: -1\n"),
        &["seed (line 4", "-1 is out of range; expected a whole number from 0 to 18446744073709551615"],
    );
    has(&big("n_trials: -99999999999999999999\n"), &["n_trials (line 3", "is out of range"]);
    has(&big("n_trials: 10\nheartbeat: {retries: 99999999999}\n"), &["heartbeat.retries (line 4", "0 to 4294967295"]);
    // The number is the very end of the file.
    let e = err(&format!("{MINIMAL}seed: 99999999999999999999"));
    has(&e, &["seed (line 7", "99999999999999999999 is out of range"]);
    let space = |entry: &str| err(&MINIMAL.replace("  x.0: {type: float, low: -5, high: 5}\n", entry));
    has(
        &space("  x.0: {type: int, low: -5, high: 5, step: 99999999999999999999}\n"),
        &["search_space.x.0.step (line 6", "is out of range", "for an int parameter"],
    );
    has(
        &space("  x.0: {type: int, low: 0, high: 18446744073709551615}\n"),
        &["search_space.x.0.high (line 6", "from -9223372036854775808 to 9223372036854775807"],
    );
    has(
        &space("  x.0: {type: int, low: -9000000000000000000, high: 9000000000000000000}\n"),
        &["search_space.x.0.low", "wider than 64-bit integers allow"],
    );
    has(
        &space("  x.0: {type: float, low: -5, high: 5, step: 1e400}\n"),
        &["search_space.x.0.step (line 6", "1e400 is out of range"],
    );
    has(&big("n_trials: 10\nparallelism: {jobs: 100000}\n"), &["parallelism.jobs (line 4", "from 1 to 1024"]);
}

#[test]
fn resuming_with_an_incompatible_search_space_is_refused_up_front() {
    use crate::storage::{InMemoryStorage, Storage};
    let storage: Arc<dyn Storage> = Arc::new(InMemoryStorage::new());
    let first = "name: s\ndirection: minimize\nn_trials: 4\nobjective: {type: function, name: sphere, dim: 2}\nsearch_space:\n  x.0: {type: float, low: -5, high: 5}\n  x.1: {type: categorical, choices: [-1, 0, 1]}\n";
    let (_d, spec) = load(first);
    let spec = spec.unwrap();
    spec.check_against(storage.as_ref()).unwrap(); // no study yet
    let study = Study::create_or_load(
        storage.clone(),
        "s",
        spec.direction,
        Arc::new(RandomSampler::new(1)),
        spec.build_pruner().unwrap(),
        1,
    )
    .unwrap();
    let objective =
        spec.objective.build(&crate::objective::BuildContext { base_dir: ".".into(), log_dir: "/tmp".into() }).unwrap();
    for _ in 0..2 {
        let mut t = study.ask().unwrap();
        let config = sample_config(&spec.params, objective.base_config(), &mut t).unwrap();
        let v = objective.run(&config, &mut t);
        study.tell(t, crate::study::outcome_of(v)).unwrap();
    }
    let check = |text: &str| {
        let (_d, spec) = load(text);
        spec.unwrap().check_against(storage.as_ref())
    };
    // Compatible, as in Optuna: a range moved, a step added.
    check(&first.replace("low: -5, high: 5}", "low: -2, high: 8, step: 0.5}")).unwrap();
    let refused = |text: String, parts: &[&str]| {
        let e = check(&text).unwrap_err();
        assert_eq!(crate::error::exit_code(&e), 2);
        has(&format!("{e:#}"), parts);
    };
    refused(
        first.replace("x.0: {type: float, low: -5, high: 5}", "x.0: {type: int, low: -5, high: 5}"),
        &[
            "search_space.x.0 (line 6",
            "study `s` already has trials",
            "{type: float, low: -5, high: 5}",
            "{type: int, low: -5, high: 5}",
            "keeps its type",
            "new `name:`",
        ],
    );
    refused(first.replace("low: -5, high: 5}", "low: 0.1, high: 5, log: true}"), &["x.0", "keeps its log setting"]);
    refused(
        first.replace("choices: [-1, 0, 1]", "choices: [-1, 1]"),
        &["search_space.x.1 (line 7", "keeps its choices", "[-1, 0, 1]"],
    );
}

#[test]
fn durations_and_counts_too_large_to_run_are_refused() {
    let with = |line: &str| err(&MINIMAL.replace("n_trials: 10\n", &format!("n_trials: 10\n{line}\n")));
    has(&with("timeout: 1.0e300"), &["timeout (line 4", "at most 1e9"]);
    has(&with("heartbeat: {interval: 1.0e300, grace: 1.0e301}"), &["heartbeat.interval (line 4", "at most 1e9"]);
    has(&with("heartbeat: {interval: 10, grace: 1.0e300}"), &["heartbeat.grace (line 4", "at most 1e9"]);
    let e = err(&MINIMAL.replace("name: sphere, dim: 2}", "name: sphere, dim: 1000000000}"));
    has(&e, &["objective.dim", "at most 100000 dimensions"]);
    let e = err(&rl_study("  agent.lr: {type: float, low: 1e-4, high: 1e-2}\n")
        .replace("type: rl,", "type: rl, seeds: 100000,"));
    has(&e, &["objective", "seeds must be from 1 to 1024"]);
    let e = err("name: s\ndirection: minimize\nn_trials: 4\nobjective: {type: command, command: [true], timeout: 1.0e300, config: {x: 1}}\nsearch_space:\n  x: {type: float, low: -1, high: 1}\n");
    has(&e, &["objective.timeout", "at most 1e9"]);
}
