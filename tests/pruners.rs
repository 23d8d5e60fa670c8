//! tune's threshold and patient pruners against Optuna 5.0's own decisions: the same curves
//! (irregular steps, NaN, infinities), the pruner asked after every report.
//! `tests/fixtures/pruners/optuna_decisions.json` was written by
//! `.venv/bin/python tests/python/pruner_decisions.py` (see that script).

use std::sync::Arc;

use serde_json::Value;
use tune::pruner::{HyperbandConfig, MaxResource, MedianConfig, PatientConfig, Pruner, ThresholdConfig};
use tune::sampler::StudyView;
use tune::{Direction, FrozenTrial, TrialState};

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pruners/optuna_decisions.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn number(v: &Value) -> f64 {
    match v.as_str() {
        Some("nan") => f64::NAN,
        Some("inf") => f64::INFINITY,
        Some("-inf") => f64::NEG_INFINITY,
        _ => v.as_f64().unwrap(),
    }
}

fn points(v: &Value) -> Vec<(i64, f64)> {
    v.as_array().unwrap().iter().map(|p| (p[0].as_i64().unwrap(), number(&p[1]))).collect()
}

fn trial(number: i64, state: TrialState, points: &[(i64, f64)]) -> FrozenTrial {
    let mut t = FrozenTrial::new(number, number, state);
    t.intermediate_values.extend(points.iter().copied());
    if state == TrialState::Complete {
        t.value = Some(0.0);
    }
    t
}

/// The pruner's answer after each report of `curve`, with `completed` trials in the study.
fn replay(pruner: &dyn Pruner, direction: Direction, completed: &[FrozenTrial], curve: &[(i64, f64)]) -> Vec<bool> {
    (1..=curve.len())
        .map(|k| {
            let me = trial(completed.len() as i64, TrialState::Running, &curve[..k]);
            let mut all: Vec<Arc<FrozenTrial>> = completed.iter().cloned().map(Arc::new).collect();
            all.push(Arc::new(me.clone()));
            pruner.prune(&StudyView { direction, trials: &all }, &me)
        })
        .collect()
}

#[test]
fn threshold_pruner_decides_as_optuna() {
    let f = fixture();
    let cases = f["threshold"].as_array().unwrap();
    let mut pruned = 0;
    for (i, c) in cases.iter().enumerate() {
        let cfg = &c["config"];
        let pruner = ThresholdConfig {
            lower: cfg["lower"].as_f64(),
            upper: cfg["upper"].as_f64(),
            n_warmup_steps: cfg["n_warmup_steps"].as_i64().unwrap(),
            interval_steps: cfg["interval_steps"].as_i64().unwrap(),
        }
        .build()
        .unwrap();
        let want: Vec<bool> = serde_json::from_value(c["decisions"].clone()).unwrap();
        let curve = points(&c["curve"]);
        assert_eq!(replay(&pruner, Direction::Minimize, &[], &curve), want, "case {i}: {c}");
        pruned += want.iter().filter(|d| **d).count();
    }
    assert!(cases.len() >= 100 && pruned > 50, "the fixture must exercise pruning: {pruned}");
}

#[test]
fn patient_pruner_alone_and_wrapping_median_decides_as_optuna() {
    let f = fixture();
    let cases = f["patient"].as_array().unwrap();
    let (mut alone, mut wrapped) = (0, 0);
    for (i, c) in cases.iter().enumerate() {
        let direction = if c["direction"] == "maximize" { Direction::Maximize } else { Direction::Minimize };
        let inner: Option<Box<dyn Pruner>> = match c["wrapped"].as_str() {
            Some("median") => Some(Box::new(
                MedianConfig { n_startup_trials: 2, n_warmup_steps: 0, ..MedianConfig::default() }.build().unwrap(),
            )),
            _ => None,
        };
        let is_wrapped = inner.is_some();
        let cfg = &c["config"];
        let pruner = PatientConfig {
            patience: cfg["patience"].as_u64().unwrap() as usize,
            min_delta: cfg["min_delta"].as_f64().unwrap(),
        }
        .build(inner)
        .unwrap();
        let completed: Vec<FrozenTrial> = c["completed"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(n, p)| trial(n as i64, TrialState::Complete, &points(p)))
            .collect();
        let want: Vec<bool> = serde_json::from_value(c["decisions"].clone()).unwrap();
        assert_eq!(replay(&pruner, direction, &completed, &points(&c["curve"])), want, "case {i}: {c}");
        let n = want.iter().filter(|d| **d).count();
        if is_wrapped {
            wrapped += n;
        } else {
            alone += n;
        }
    }
    assert!(alone > 20 && wrapped > 5, "the fixture must exercise both forms: {alone} / {wrapped}");
}

/// Replays studies that Optuna ran one trial at a time with its `HyperbandPruner`: each trial
/// must stop at the same report, fall in the same bracket, and its sampler must be shown the
/// same trials (wherever Optuna's pruner had set up its brackets by then; see
/// `src/pruner/hyperband.rs` for why tune filters from the start).
#[test]
fn hyperband_pruner_decides_and_filters_as_optuna() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pruners/optuna_hyperband.json");
    let f: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (mut pruned, mut compared_views, mut brackets_used) = (0, 0, std::collections::BTreeSet::new());
    for case in f["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let direction = if case["direction"] == "maximize" { Direction::Maximize } else { Direction::Minimize };
        let cfg = &case["config"];
        let config = HyperbandConfig {
            min_resource: cfg.get("min_resource").map_or(1, |v| v.as_i64().unwrap()),
            max_resource: match cfg.get("max_resource") {
                Some(v) if v.is_i64() => MaxResource::Steps(v.as_i64().unwrap()),
                _ => MaxResource::Auto,
            },
            reduction_factor: cfg.get("reduction_factor").map_or(3, |v| v.as_i64().unwrap()),
            bootstrap_count: cfg.get("bootstrap_count").map_or(0, |v| v.as_u64().unwrap() as usize),
        };
        let pruner = config.build(name).unwrap();
        let mut done: Vec<Arc<FrozenTrial>> = vec![];
        for t in case["trials"].as_array().unwrap() {
            let number = t["number"].as_i64().unwrap();
            let curve = points(&t["curve"]);
            let at = |k: usize, state| {
                let mut all = done.clone();
                all.push(Arc::new(trial(number, state, &curve[..k])));
                all
            };
            // The sampler's view, as the trial starts.
            let all = at(0, TrialState::Running);
            let view = StudyView { direction, trials: &all };
            let saw = &t["sampler_saw"];
            if saw["initialized"].as_bool().unwrap() {
                let want: Vec<i64> = serde_json::from_value(saw["numbers"].clone()).unwrap();
                let got: Vec<i64> = match pruner.sampler_trials(&view, all.last().unwrap()) {
                    Some(ts) => ts.iter().map(|t| t.number).collect(),
                    None => all.iter().map(|t| t.number).collect(),
                };
                assert_eq!(got, want, "{name}: trial {number}'s sampler view");
                compared_views += 1;
            }
            // Ask after every report until pruned.
            let (mut reports, mut state) = (curve.len(), TrialState::Complete);
            for k in 1..=curve.len() {
                let all = at(k, TrialState::Running);
                if pruner.prune(&StudyView { direction, trials: &all }, all.last().unwrap()) {
                    (reports, state) = (k, TrialState::Pruned);
                    break;
                }
            }
            let want = (t["reports"].as_u64().unwrap() as usize, t["state"].as_str().unwrap());
            assert_eq!((reports, state.as_str()), want, "{name}: trial {number}");
            let finished = trial(number, state, &curve[..reports]);
            done.push(Arc::new(finished));
            let all_done = StudyView { direction, trials: &done };
            let bracket = pruner.bracket_of(&all_done, number).unwrap_or(0);
            assert_eq!(bracket as u64, t["bracket"].as_u64().unwrap(), "{name}: trial {number}'s bracket");
            brackets_used.insert((name.to_string(), bracket));
            pruned += usize::from(state == TrialState::Pruned);
        }
    }
    assert!(
        pruned > 100 && compared_views > 300 && brackets_used.len() > 15,
        "the fixture must exercise Hyperband: {pruned} pruned, {compared_views} views, {} brackets",
        brackets_used.len()
    );
}
