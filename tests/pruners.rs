//! tune's threshold and patient pruners against Optuna 5.0's own decisions: the same curves
//! (irregular steps, NaN, infinities), the pruner asked after every report.
//! `tests/fixtures/pruners/optuna_decisions.json` was written by
//! `.venv/bin/python tests/python/pruner_decisions.py` (see that script).

use std::sync::Arc;

use serde_json::Value;
use tune::pruner::{MedianConfig, PatientConfig, Pruner, ThresholdConfig};
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
