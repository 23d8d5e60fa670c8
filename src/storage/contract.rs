//! The storage contract as executable checks: every backend runs `run_all` from its own tests,
//! so the in-memory and SQLite storages behave the same (Optuna's shared storage test suite).
#![doc(hidden)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::{Storage, StorageError};
use crate::distribution::Distribution;
use crate::frozen::{Direction, TrialState, FAIL_REASON_KEY, FIXED_PARAMS_KEY, INTERRUPTED_KEY};

/// Builds a fresh, empty storage for one check.
pub type Make<'a> = &'a dyn Fn() -> Arc<dyn Storage>;

/// Runs every check of the contract, each on a fresh storage from `make`; panics on the first
/// violation with the name of the behaviour.
pub fn run_all(make: &dyn Fn() -> Arc<dyn Storage>) {
    study_create_duplicate_lookup_delete(make);
    study_attributes(make);
    get_all_studies_summarises(make);
    trial_numbering(make);
    state_transitions(make);
    finished_trials_reject_writes(make);
    unknown_ids_are_errors(make);
    params_round_trip_every_distribution(make);
    incompatible_distribution(make);
    intermediate_values_nan_and_infinities(make);
    intermediate_values_in_one_call(make);
    values_infinities(make);
    trial_attributes_json(make);
    get_all_trials_order_and_filter(make);
    start_next_trial_budget(make);
    start_next_trial_waiting_first(make);
    interrupted_fail_not_counted(make);
    start_next_trial_threads(make);
    heartbeats_and_stale_trials(make);
    best_trial_both_directions(make);
    count_trials(make);
}

fn no_attrs() -> BTreeMap<String, Value> {
    BTreeMap::new()
}

/// Names are unique, lookups find ids, and deleting removes the study with its trials.
pub fn study_create_duplicate_lookup_delete(make: Make) {
    let s = make();
    assert_eq!(s.get_study_id_from_name("a").unwrap(), None);
    let a = s.create_new_study("a", Direction::Minimize).unwrap();
    let b = s.create_new_study("b", Direction::Maximize).unwrap();
    assert_ne!(a, b);
    assert!(matches!(s.create_new_study("a", Direction::Maximize), Err(StorageError::DuplicateStudy(n)) if n == "a"));
    assert_eq!(s.get_study_id_from_name("a").unwrap(), Some(a));
    assert_eq!(s.get_study_id_from_name("b").unwrap(), Some(b));
    assert_eq!(s.get_study_direction(a).unwrap(), Direction::Minimize);
    assert_eq!(s.get_study_direction(b).unwrap(), Direction::Maximize);

    let t = s.create_new_trial(a, TrialState::Running, &no_attrs()).unwrap();
    s.set_trial_param(t.trial_id, "x", 0.5, &Distribution::float(0.0, 1.0, false, None).unwrap()).unwrap();
    s.delete_study(a).unwrap();
    assert_eq!(s.get_study_id_from_name("a").unwrap(), None);
    assert!(matches!(s.get_trial(t.trial_id), Err(StorageError::TrialNotFound(_))));
    assert!(s.get_all_trials(a, None).is_err());
    assert!(s.delete_study(a).is_err());
    // The name is free again, and the new study starts from scratch.
    let a2 = s.create_new_study("a", Direction::Maximize).unwrap();
    assert!(s.get_all_trials(a2, None).unwrap().is_empty());
    let t2 = s.create_new_trial(a2, TrialState::Running, &no_attrs()).unwrap();
    assert_eq!(t2.number, 0);
    // A parameter name used by the deleted study carries no distribution over.
    s.set_trial_param(t2.trial_id, "x", 3.0, &Distribution::int(0, 5, false, 1).unwrap()).unwrap();
    assert_eq!(s.get_study_id_from_name("b").unwrap(), Some(b));
}

/// Study user and system attributes are JSON, overwritten by key.
pub fn study_attributes(make: Make) {
    let s = make();
    let id = s.create_new_study("s", Direction::Minimize).unwrap();
    let v = json!({"nested": [1, 2.5, "x", null, true], "n": 3});
    s.set_study_user_attr(id, "cfg", &v).unwrap();
    s.set_study_user_attr(id, "k", &json!(1)).unwrap();
    s.set_study_user_attr(id, "k", &json!("two")).unwrap();
    s.set_study_system_attr(id, "sys", &json!([1, 2])).unwrap();
    let user = s.get_study_user_attrs(id).unwrap();
    assert_eq!(user.len(), 2);
    assert_eq!(user["cfg"], v);
    assert_eq!(user["k"], json!("two"));
    let sys = s.get_study_system_attrs(id).unwrap();
    assert_eq!(sys, BTreeMap::from([("sys".to_string(), json!([1, 2]))]));
    assert!(s.set_study_user_attr(id + 1000, "k", &json!(1)).is_err());
    assert!(s.get_study_user_attrs(id + 1000).is_err());
}

/// `get_all_studies` lists each study with its counts, best value and first start.
pub fn get_all_studies_summarises(make: Make) {
    let s = make();
    let a = s.create_new_study("a", Direction::Maximize).unwrap();
    let b = s.create_new_study("b", Direction::Minimize).unwrap();
    for v in [1.0, 3.0, 2.0] {
        let t = s.start_next_trial(a, None).unwrap().unwrap();
        s.set_trial_state_values(t.trial_id, TrialState::Complete, Some(v)).unwrap();
    }
    let p = s.start_next_trial(a, None).unwrap().unwrap();
    s.set_trial_state_values(p.trial_id, TrialState::Pruned, Some(10.0)).unwrap();
    s.create_new_trial(a, TrialState::Waiting, &no_attrs()).unwrap();
    let first = s.get_all_trials(a, None).unwrap()[0].datetime_start;
    let all = s.get_all_studies().unwrap();
    assert_eq!(all.len(), 2);
    let sa = all.iter().find(|x| x.study_id == a).unwrap();
    assert_eq!(sa.name, "a");
    assert_eq!(sa.direction, Direction::Maximize);
    assert_eq!(sa.best_value, Some(3.0));
    assert_eq!(
        sa.counts,
        BTreeMap::from([(TrialState::Complete, 3), (TrialState::Pruned, 1), (TrialState::Waiting, 1)])
    );
    assert_eq!(sa.datetime_start, first);
    let sb = all.iter().find(|x| x.study_id == b).unwrap();
    assert!(sb.counts.is_empty());
    assert_eq!(sb.best_value, None);
    assert_eq!(sb.datetime_start, None);
}

/// Trials are numbered 0, 1, ... per study; RUNNING ones start now, WAITING ones do not.
pub fn trial_numbering(make: Make) {
    let s = make();
    let a = s.create_new_study("a", Direction::Minimize).unwrap();
    let b = s.create_new_study("b", Direction::Minimize).unwrap();
    let mut attrs = BTreeMap::new();
    attrs.insert(FIXED_PARAMS_KEY.to_string(), json!({"x": 1.5, "net": [64, 64]}));
    let t0 = s.create_new_trial(a, TrialState::Running, &no_attrs()).unwrap();
    let u0 = s.create_new_trial(b, TrialState::Running, &no_attrs()).unwrap();
    let t1 = s.create_new_trial(a, TrialState::Waiting, &attrs).unwrap();
    let t2 = s.start_next_trial(a, None).unwrap().unwrap();
    let t3 = s.start_next_trial(a, None).unwrap().unwrap();
    assert_eq!((t0.number, u0.number, t1.number), (0, 0, 1));
    // t2 claimed the WAITING trial, t3 is new.
    assert_eq!((t2.trial_id, t2.number, t3.number), (t1.trial_id, 1, 2));
    assert_eq!(t0.state, TrialState::Running);
    assert!(t0.datetime_start.is_some() && t0.datetime_complete.is_none());
    assert_eq!(t1.state, TrialState::Waiting);
    assert!(t1.datetime_start.is_none());
    assert_eq!(t1.system_attrs, attrs);
    assert!(t2.datetime_start.is_some());
    assert_eq!(t2.system_attrs, attrs);
    let ids: Vec<i64> = [&t0, &u0, &t1, &t3].iter().map(|t| t.trial_id).collect();
    let mut uniq = ids.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), ids.len(), "trial ids are storage-wide unique");
    assert_eq!(s.get_trial(t0.trial_id).unwrap(), t0);
    assert!(s.create_new_trial(a + b + 1000, TrialState::Running, &no_attrs()).is_err());
}

/// Every state transition: finishing sets `datetime_complete` and values; a finished trial
/// never changes again; only WAITING trials can be started.
pub fn state_transitions(make: Make) {
    let s = make();
    let id = s.create_new_study("s", Direction::Minimize).unwrap();
    for (state, value, stored) in [
        (TrialState::Complete, Some(1.25), Some(1.25)),
        (TrialState::Pruned, Some(-3.0), Some(-3.0)),
        (TrialState::Pruned, None, None),
        (TrialState::Fail, None, None),
    ] {
        let t = s.start_next_trial(id, None).unwrap().unwrap();
        assert!(!s.set_trial_state_values(t.trial_id, TrialState::Running, None).unwrap(), "RUNNING cannot restart");
        assert!(s.set_trial_state_values(t.trial_id, state, value).unwrap());
        let got = s.get_trial(t.trial_id).unwrap();
        assert_eq!(got.state, state);
        assert_eq!(got.value, stored);
        assert_eq!(got.datetime_start, t.datetime_start);
        let done = got.datetime_complete.expect("finished trials have datetime_complete");
        assert!(done >= got.datetime_start.unwrap());
        for again in [TrialState::Complete, TrialState::Fail, TrialState::Running, TrialState::Waiting] {
            assert!(!s.set_trial_state_values(t.trial_id, again, Some(9.0)).unwrap(), "{state} -> {again}");
        }
        assert_eq!(s.get_trial(t.trial_id).unwrap(), got, "a refused transition changes nothing");
    }
    // WAITING -> RUNNING starts the trial; WAITING -> FAIL finishes it without a start.
    let w = s.create_new_trial(id, TrialState::Waiting, &no_attrs()).unwrap();
    assert!(s.set_trial_state_values(w.trial_id, TrialState::Running, None).unwrap());
    let got = s.get_trial(w.trial_id).unwrap();
    assert_eq!(got.state, TrialState::Running);
    assert!(got.datetime_start.is_some() && got.datetime_complete.is_none());
    let w2 = s.create_new_trial(id, TrialState::Waiting, &no_attrs()).unwrap();
    assert!(s.set_trial_state_values(w2.trial_id, TrialState::Fail, None).unwrap());
    let got = s.get_trial(w2.trial_id).unwrap();
    assert_eq!(got.state, TrialState::Fail);
    assert!(got.datetime_start.is_none() && got.datetime_complete.is_some());
}

/// Parameters, intermediate values and attributes cannot be written to a finished trial.
pub fn finished_trials_reject_writes(make: Make) {
    let s = make();
    let id = s.create_new_study("s", Direction::Minimize).unwrap();
    let t = s.start_next_trial(id, None).unwrap().unwrap();
    let d = Distribution::float(0.0, 1.0, false, None).unwrap();
    s.set_trial_param(t.trial_id, "x", 0.5, &d).unwrap();
    assert!(s.set_trial_state_values(t.trial_id, TrialState::Complete, Some(0.1)).unwrap());
    let finished = |r: Result<(), StorageError>| {
        matches!(r, Err(StorageError::TrialFinished { number: 0, state: TrialState::Complete }))
    };
    assert!(finished(s.set_trial_param(t.trial_id, "x", 0.7, &d)));
    assert!(finished(s.set_trial_param(t.trial_id, "y", 0.7, &d)));
    assert!(finished(s.set_trial_intermediate_value(t.trial_id, 1, 1.0)));
    assert!(finished(s.set_trial_user_attr(t.trial_id, "k", &json!(1))));
    assert!(finished(s.set_trial_system_attr(t.trial_id, "k", &json!(1))));
    let got = s.get_trial(t.trial_id).unwrap();
    assert_eq!(got.params, BTreeMap::from([("x".to_string(), 0.5)]));
    assert!(got.intermediate_values.is_empty() && got.user_attrs.is_empty() && got.system_attrs.is_empty());
}

/// Unknown trial and study ids are errors, not panics.
pub fn unknown_ids_are_errors(make: Make) {
    let s = make();
    let id = s.create_new_study("s", Direction::Minimize).unwrap();
    let t = s.start_next_trial(id, None).unwrap().unwrap();
    let bad = t.trial_id + 1000;
    let d = Distribution::float(0.0, 1.0, false, None).unwrap();
    assert!(matches!(s.get_trial(bad), Err(StorageError::TrialNotFound(x)) if x == bad));
    assert!(matches!(s.set_trial_param(bad, "x", 0.5, &d), Err(StorageError::TrialNotFound(_))));
    assert!(matches!(
        s.set_trial_state_values(bad, TrialState::Complete, Some(1.0)),
        Err(StorageError::TrialNotFound(_))
    ));
    assert!(matches!(s.set_trial_intermediate_value(bad, 0, 1.0), Err(StorageError::TrialNotFound(_))));
    assert!(matches!(s.set_trial_user_attr(bad, "k", &json!(1)), Err(StorageError::TrialNotFound(_))));
    assert!(matches!(s.set_trial_system_attr(bad, "k", &json!(1)), Err(StorageError::TrialNotFound(_))));
    assert!(matches!(s.record_heartbeat(bad), Err(StorageError::TrialNotFound(_))));
    assert!(matches!(s.get_study_direction(id + 1000), Err(StorageError::StudyNotFound(_))));
    assert!(matches!(s.start_next_trial(id + 1000, None), Err(StorageError::StudyNotFound(_))));
    assert!(matches!(s.fail_stale_trials(id + 1000, Duration::ZERO), Err(StorageError::StudyNotFound(_))));
}

/// Every kind of distribution, and its internal value, reads back exactly.
pub fn params_round_trip_every_distribution(make: Make) {
    let s = make();
    let id = s.create_new_study("s", Direction::Minimize).unwrap();
    let params: Vec<(&str, Distribution, f64)> = vec![
        ("float", Distribution::float(-1.5, 2.5, false, None).unwrap(), 0.123456789012345),
        ("log_float", Distribution::float(1e-5, 1e-1, true, None).unwrap(), 3.3e-4),
        ("step_float", Distribution::float(0.0, 1.0, false, Some(0.3)).unwrap(), 0.6),
        ("int", Distribution::int(-10, 10, false, 1).unwrap(), -7.0),
        ("log_int", Distribution::int(1, 1024, true, 1).unwrap(), 64.0),
        ("step_int", Distribution::int(2, 11, false, 3).unwrap(), 8.0),
        ("single", Distribution::int(5, 5, false, 1).unwrap(), 5.0),
        (
            "cat",
            Distribution::categorical(vec![
                json!("adam"),
                json!(1),
                json!(2.5),
                json!(null),
                json!(true),
                json!([64, 64]),
            ])
            .unwrap(),
            5.0,
        ),
    ];
    let t = s.start_next_trial(id, None).unwrap().unwrap();
    for (name, d, x) in &params {
        s.set_trial_param(t.trial_id, name, *x, d).unwrap();
    }
    // Setting a name again in the same trial overwrites it.
    s.set_trial_param(t.trial_id, "int", 3.0, &params[3].1).unwrap();
    let check = |got: &crate::frozen::FrozenTrial| {
        assert_eq!(got.params.len(), params.len());
        for (name, d, x) in &params {
            let want = if *name == "int" { 3.0 } else { *x };
            assert_eq!(got.params[*name], want, "{name}");
            assert_eq!(&got.distributions[*name], d, "{name}");
        }
        assert_eq!(got.param("cat"), Some(json!([64, 64])));
        assert_eq!(got.param("log_int"), Some(json!(64)));
    };
    check(&s.get_trial(t.trial_id).unwrap());
    assert!(s.set_trial_state_values(t.trial_id, TrialState::Complete, Some(1.0)).unwrap());
    check(&s.get_trial(t.trial_id).unwrap());
    check(&s.get_all_trials(id, None).unwrap()[0]);
}

/// A name keeps one kind of distribution in a study (categoricals: the same choices); bounds
/// may change.
pub fn incompatible_distribution(make: Make) {
    let s = make();
    let id = s.create_new_study("s", Direction::Minimize).unwrap();
    let other = s.create_new_study("other", Direction::Minimize).unwrap();
    let t0 = s.start_next_trial(id, None).unwrap().unwrap();
    let cat = Distribution::categorical(vec![json!("a"), json!("b")]).unwrap();
    s.set_trial_param(t0.trial_id, "x", 0.5, &Distribution::float(0.0, 1.0, false, None).unwrap()).unwrap();
    s.set_trial_param(t0.trial_id, "c", 1.0, &cat).unwrap();
    s.set_trial_state_values(t0.trial_id, TrialState::Complete, Some(1.0)).unwrap();
    let t1 = s.start_next_trial(id, None).unwrap().unwrap();
    let err = s.set_trial_param(t1.trial_id, "x", 1.0, &Distribution::int(0, 3, false, 1).unwrap()).unwrap_err();
    match err {
        StorageError::IncompatibleDistribution { name, old } => {
            assert_eq!(name, "x");
            assert!(old.contains("FloatDistribution"), "{old}");
        }
        e => panic!("expected IncompatibleDistribution, got {e:?}"),
    }
    let cat2 = Distribution::categorical(vec![json!("a"), json!("c")]).unwrap();
    assert!(matches!(
        s.set_trial_param(t1.trial_id, "c", 0.0, &cat2),
        Err(StorageError::IncompatibleDistribution { .. })
    ));
    // A log scale is part of the kind (Optuna 5.0's `check_distribution_compatibility`).
    assert!(matches!(
        s.set_trial_param(t1.trial_id, "x", 5.0, &Distribution::float(1.0, 10.0, true, None).unwrap()),
        Err(StorageError::IncompatibleDistribution { .. })
    ));
    // Other bounds or a step keep the kind: allowed.
    s.set_trial_param(t1.trial_id, "x", 5.0, &Distribution::float(1.0, 10.0, false, Some(0.5)).unwrap()).unwrap();
    s.set_trial_param(t1.trial_id, "c", 0.0, &cat).unwrap();
    let got = s.get_trial(t1.trial_id).unwrap();
    assert_eq!(got.params.len(), 2);
    // Another study is free to use the name differently.
    let u = s.start_next_trial(other, None).unwrap().unwrap();
    s.set_trial_param(u.trial_id, "x", 1.0, &Distribution::int(0, 3, false, 1).unwrap()).unwrap();
}

/// Intermediate values keep NaN and infinities, and a step reported twice keeps the last.
pub fn intermediate_values_nan_and_infinities(make: Make) {
    let s = make();
    let id = s.create_new_study("s", Direction::Maximize).unwrap();
    let t = s.start_next_trial(id, None).unwrap().unwrap();
    let values = [(0, 1.5), (1, f64::NAN), (2, f64::INFINITY), (3, f64::NEG_INFINITY), (10, -0.25), (1000, 1e300)];
    for (step, v) in values {
        s.set_trial_intermediate_value(t.trial_id, step, v).unwrap();
    }
    s.set_trial_intermediate_value(t.trial_id, 0, 2.5).unwrap();
    let check = |got: &crate::frozen::FrozenTrial| {
        let iv = &got.intermediate_values;
        assert_eq!(iv.len(), values.len());
        assert_eq!(iv[&0], 2.5);
        assert!(iv[&1].is_nan());
        assert_eq!(iv[&2], f64::INFINITY);
        assert_eq!(iv[&3], f64::NEG_INFINITY);
        assert_eq!(iv[&10], -0.25);
        assert_eq!(iv[&1000], 1e300);
        assert_eq!(got.last_step(), Some(1000));
    };
    check(&s.get_trial(t.trial_id).unwrap());
    s.set_trial_state_values(t.trial_id, TrialState::Pruned, Some(1e300)).unwrap();
    check(&s.get_trial(t.trial_id).unwrap());
    check(&s.get_all_trials(id, None).unwrap()[0]);
}

/// `set_trial_intermediate_values` stores a batch in order (the last of a repeated step wins)
/// beside earlier values, and stores nothing of a batch for a finished trial.
pub fn intermediate_values_in_one_call(make: Make) {
    let s = make();
    let id = s.create_new_study("s", Direction::Minimize).unwrap();
    let t = s.start_next_trial(id, None).unwrap().unwrap();
    s.set_trial_intermediate_value(t.trial_id, 0, 9.0).unwrap();
    s.set_trial_intermediate_values(t.trial_id, &[]).unwrap();
    s.set_trial_intermediate_values(t.trial_id, &[(1, 1.0), (2, f64::NAN), (1, 3.0), (0, -1.0)]).unwrap();
    let got = s.get_trial(t.trial_id).unwrap().intermediate_values;
    assert_eq!(got.len(), 3);
    assert_eq!((got[&0], got[&1]), (-1.0, 3.0));
    assert!(got[&2].is_nan());
    assert!(s.set_trial_state_values(t.trial_id, TrialState::Complete, Some(0.0)).unwrap());
    let r = s.set_trial_intermediate_values(t.trial_id, &[(5, 5.0), (6, 6.0)]);
    assert!(matches!(r, Err(StorageError::TrialFinished { number: 0, state: TrialState::Complete })));
    assert_eq!(s.get_trial(t.trial_id).unwrap().intermediate_values.len(), 3);
    let bad = t.trial_id + 1000;
    assert!(matches!(s.set_trial_intermediate_values(bad, &[(0, 1.0)]), Err(StorageError::TrialNotFound(_))));
}

/// Trial values of plus and minus infinity round-trip; a NaN value is not kept.
pub fn values_infinities(make: Make) {
    let s = make();
    let id = s.create_new_study("s", Direction::Minimize).unwrap();
    let mut ids = Vec::new();
    for v in [f64::INFINITY, f64::NEG_INFINITY, -0.0, 1e-308] {
        let t = s.start_next_trial(id, None).unwrap().unwrap();
        s.set_trial_state_values(t.trial_id, TrialState::Complete, Some(v)).unwrap();
        ids.push((t.trial_id, v));
    }
    for (tid, v) in &ids {
        assert_eq!(s.get_trial(*tid).unwrap().value, Some(*v));
    }
    let t = s.start_next_trial(id, None).unwrap().unwrap();
    s.set_trial_state_values(t.trial_id, TrialState::Fail, Some(f64::NAN)).unwrap();
    assert_eq!(s.get_trial(t.trial_id).unwrap().value, None);
    let best = s.get_best_trial(id).unwrap().unwrap();
    assert_eq!(best.value, Some(f64::NEG_INFINITY));
}

/// Trial user and system attributes store any JSON, overwritten by key.
pub fn trial_attributes_json(make: Make) {
    let s = make();
    let id = s.create_new_study("s", Direction::Minimize).unwrap();
    let t = s.start_next_trial(id, None).unwrap().unwrap();
    let values = [
        json!(null),
        json!(true),
        json!(42),
        json!(-1.5e-7),
        json!("text with \"quotes\" and ünïcode"),
        json!([1, [2, 3], {"a": null}]),
        json!({"returns": [1.0, 2.0], "seed": 7, "nested": {"deep": [true]}}),
    ];
    for (i, v) in values.iter().enumerate() {
        s.set_trial_user_attr(t.trial_id, &format!("u{i}"), v).unwrap();
        s.set_trial_system_attr(t.trial_id, &format!("s{i}"), v).unwrap();
    }
    s.set_trial_user_attr(t.trial_id, "u0", &json!("replaced")).unwrap();
    let got = s.get_trial(t.trial_id).unwrap();
    assert_eq!(got.user_attrs.len(), values.len());
    assert_eq!(got.system_attrs.len(), values.len());
    assert_eq!(got.user_attrs["u0"], json!("replaced"));
    for (i, v) in values.iter().enumerate().skip(1) {
        assert_eq!(&got.user_attrs[&format!("u{i}")], v);
        assert_eq!(&got.system_attrs[&format!("s{i}")], v);
    }
    assert_eq!(got.system_attrs["s0"], json!(null));
}

/// `get_all_trials` orders by number and filters by state; trials of other studies stay out.
pub fn get_all_trials_order_and_filter(make: Make) {
    let s = make();
    let id = s.create_new_study("s", Direction::Minimize).unwrap();
    let other = s.create_new_study("o", Direction::Minimize).unwrap();
    let states =
        [TrialState::Complete, TrialState::Pruned, TrialState::Fail, TrialState::Running, TrialState::Complete];
    for st in states {
        let t = s.start_next_trial(id, None).unwrap().unwrap();
        s.start_next_trial(other, None).unwrap().unwrap();
        if st != TrialState::Running {
            s.set_trial_state_values(t.trial_id, st, Some(1.0)).unwrap();
        }
    }
    s.create_new_trial(id, TrialState::Waiting, &no_attrs()).unwrap();
    let all = s.get_all_trials(id, None).unwrap();
    assert_eq!(all.iter().map(|t| t.number).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(all[5].state, TrialState::Waiting);
    let done = s.get_all_trials(id, Some(&[TrialState::Complete, TrialState::Running])).unwrap();
    assert_eq!(done.iter().map(|t| t.number).collect::<Vec<_>>(), vec![0, 3, 4]);
    assert!(s.get_all_trials(id, Some(&[])).unwrap().is_empty());
    // A trial finished after an earlier read shows up finished in the next one.
    let running = all[3].trial_id;
    s.set_trial_state_values(running, TrialState::Complete, Some(0.5)).unwrap();
    let again = s.get_all_trials(id, None).unwrap();
    assert_eq!(again[3].state, TrialState::Complete);
    assert_eq!(again[3].value, Some(0.5));
    assert_eq!(s.get_all_trials(other, None).unwrap().len(), 5);
}

/// With a budget, `start_next_trial` refuses once that many trials run or have finished.
pub fn start_next_trial_budget(make: Make) {
    let s = make();
    let id = s.create_new_study("s", Direction::Minimize).unwrap();
    let a = s.start_next_trial(id, Some(3)).unwrap().unwrap();
    let b = s.start_next_trial(id, Some(3)).unwrap().unwrap();
    s.set_trial_state_values(a.trial_id, TrialState::Complete, Some(1.0)).unwrap();
    s.set_trial_state_values(b.trial_id, TrialState::Fail, None).unwrap();
    let c = s.start_next_trial(id, Some(3)).unwrap().unwrap();
    assert_eq!(c.number, 2);
    assert!(s.start_next_trial(id, Some(3)).unwrap().is_none(), "RUNNING counts towards the budget");
    s.set_trial_state_values(c.trial_id, TrialState::Pruned, None).unwrap();
    assert!(s.start_next_trial(id, Some(3)).unwrap().is_none(), "PRUNED counts towards the budget");
    assert!(s.start_next_trial(id, Some(0)).unwrap().is_none());
    // WAITING trials do not count, but are not started beyond the budget either.
    s.create_new_trial(id, TrialState::Waiting, &no_attrs()).unwrap();
    assert!(s.start_next_trial(id, Some(3)).unwrap().is_none());
    let d = s.start_next_trial(id, Some(4)).unwrap().unwrap();
    assert_eq!((d.number, d.state), (3, TrialState::Running));
    // Without a budget a trial is always started.
    assert_eq!(s.start_next_trial(id, None).unwrap().unwrap().number, 4);
    assert_eq!(s.get_all_trials(id, None).unwrap().len(), 5);
}

/// WAITING trials are started oldest first, before any new trial, keeping their attributes.
pub fn start_next_trial_waiting_first(make: Make) {
    let s = make();
    let id = s.create_new_study("s", Direction::Minimize).unwrap();
    let first = s.start_next_trial(id, None).unwrap().unwrap();
    let mut waiting = Vec::new();
    for i in 0..3 {
        let mut attrs = BTreeMap::new();
        attrs.insert(FIXED_PARAMS_KEY.to_string(), json!({"lr": 0.001 * (i + 1) as f64}));
        waiting.push(s.create_new_trial(id, TrialState::Waiting, &attrs).unwrap());
    }
    for w in &waiting {
        let t = s.start_next_trial(id, None).unwrap().unwrap();
        assert_eq!(t.trial_id, w.trial_id);
        assert_eq!(t.number, w.number);
        assert_eq!(t.state, TrialState::Running);
        assert!(t.datetime_start.is_some());
        assert_eq!(t.system_attrs[FIXED_PARAMS_KEY], w.system_attrs[FIXED_PARAMS_KEY]);
    }
    let fresh = s.start_next_trial(id, None).unwrap().unwrap();
    assert_eq!(fresh.number, 4);
    assert!(fresh.system_attrs.is_empty());
    assert_eq!(first.number, 0);
}

/// FAIL trials marked interrupted do not count towards the budget; other FAIL trials do.
pub fn interrupted_fail_not_counted(make: Make) {
    let s = make();
    let id = s.create_new_study("s", Direction::Minimize).unwrap();
    let a = s.start_next_trial(id, Some(2)).unwrap().unwrap();
    let b = s.start_next_trial(id, Some(2)).unwrap().unwrap();
    s.set_trial_system_attr(a.trial_id, INTERRUPTED_KEY, &json!(true)).unwrap();
    s.set_trial_state_values(a.trial_id, TrialState::Fail, None).unwrap();
    s.set_trial_system_attr(b.trial_id, INTERRUPTED_KEY, &json!(false)).unwrap();
    s.set_trial_state_values(b.trial_id, TrialState::Fail, None).unwrap();
    let c = s.start_next_trial(id, Some(2)).unwrap().expect("the interrupted trial freed a slot");
    assert_eq!(c.number, 2);
    assert!(s.start_next_trial(id, Some(2)).unwrap().is_none());
}

/// Threads racing `start_next_trial` under a budget start exactly `budget` trials with unique
/// numbers.
pub fn start_next_trial_threads(make: Make) {
    let s = make();
    let id = s.create_new_study("s", Direction::Minimize).unwrap();
    let budget = 40u64;
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                while let Some(t) = s.start_next_trial(id, Some(budget)).unwrap() {
                    s.set_trial_state_values(t.trial_id, TrialState::Complete, Some(t.number as f64)).unwrap();
                    mine.push(t.number);
                }
                mine
            })
        })
        .collect();
    let mut numbers: Vec<i64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    numbers.sort();
    assert_eq!(numbers, (0..budget as i64).collect::<Vec<_>>());
    assert_eq!(s.get_all_trials(id, None).unwrap().len(), budget as usize);
}

/// Heartbeats keep a RUNNING trial alive; without them it is failed as interrupted.
pub fn heartbeats_and_stale_trials(make: Make) {
    let s = make();
    let id = s.create_new_study("s", Direction::Minimize).unwrap();
    let stale = s.start_next_trial(id, None).unwrap().unwrap();
    let alive = s.start_next_trial(id, None).unwrap().unwrap();
    let done = s.start_next_trial(id, None).unwrap().unwrap();
    s.set_trial_state_values(done.trial_id, TrialState::Complete, Some(1.0)).unwrap();
    let waiting = s.create_new_trial(id, TrialState::Waiting, &no_attrs()).unwrap();
    assert!(s.fail_stale_trials(id, Duration::from_secs(3600)).unwrap().is_empty());
    std::thread::sleep(Duration::from_millis(300));
    s.record_heartbeat(alive.trial_id).unwrap();
    let failed = s.fail_stale_trials(id, Duration::from_millis(150)).unwrap();
    assert_eq!(failed.len(), 1);
    let f = &failed[0];
    assert_eq!((f.trial_id, f.state), (stale.trial_id, TrialState::Fail));
    assert!(f.datetime_complete.is_some());
    assert!(f.interrupted());
    assert!(f.system_attrs[FAIL_REASON_KEY].as_str().unwrap().contains("heartbeat"));
    assert_eq!(&s.get_trial(stale.trial_id).unwrap(), f);
    assert_eq!(s.get_trial(alive.trial_id).unwrap().state, TrialState::Running);
    assert_eq!(s.get_trial(done.trial_id).unwrap().state, TrialState::Complete);
    assert_eq!(s.get_trial(waiting.trial_id).unwrap().state, TrialState::Waiting);
    // Failing again finds nothing new; the interrupted trial frees its budget slot.
    assert!(s.fail_stale_trials(id, Duration::from_millis(150)).unwrap().is_empty());
    // Budget 3: `alive` and `done` count, the interrupted trial does not, so the WAITING one starts.
    assert!(s.start_next_trial(id, Some(3)).unwrap().is_some());
}

/// The best COMPLETE trial in either direction; ties go to the earlier trial.
pub fn best_trial_both_directions(make: Make) {
    let s = make();
    for (direction, want) in [(Direction::Minimize, 2), (Direction::Maximize, 3)] {
        let id = s.create_new_study(direction.as_str(), direction).unwrap();
        assert!(s.get_best_trial(id).unwrap().is_none());
        let p = s.start_next_trial(id, None).unwrap().unwrap();
        s.set_trial_state_values(
            p.trial_id,
            TrialState::Pruned,
            Some(if direction == Direction::Minimize { -100.0 } else { 100.0 }),
        )
        .unwrap();
        assert!(s.get_best_trial(id).unwrap().is_none(), "PRUNED trials are never best");
        for v in [3.0, -1.0, 7.0, -1.0, 7.0] {
            let t = s.start_next_trial(id, None).unwrap().unwrap();
            s.set_trial_state_values(t.trial_id, TrialState::Complete, Some(v)).unwrap();
        }
        s.start_next_trial(id, None).unwrap().unwrap();
        let best = s.get_best_trial(id).unwrap().unwrap();
        assert_eq!(best.number, want, "{direction:?}");
    }
}

/// `count_trials` counts by state.
pub fn count_trials(make: Make) {
    let s = make();
    let id = s.create_new_study("s", Direction::Minimize).unwrap();
    assert!(s.count_trials(id).unwrap().is_empty());
    for st in [TrialState::Complete, TrialState::Complete, TrialState::Fail, TrialState::Pruned, TrialState::Running] {
        let t = s.start_next_trial(id, None).unwrap().unwrap();
        if st != TrialState::Running {
            s.set_trial_state_values(t.trial_id, st, Some(0.0)).unwrap();
        }
    }
    s.create_new_trial(id, TrialState::Waiting, &no_attrs()).unwrap();
    assert_eq!(
        s.count_trials(id).unwrap(),
        BTreeMap::from([
            (TrialState::Running, 1),
            (TrialState::Complete, 2),
            (TrialState::Pruned, 1),
            (TrialState::Fail, 1),
            (TrialState::Waiting, 1),
        ])
    );
}
