//! The executor through the library: failing, panicking and NaN objectives make their trial
//! FAIL with the reason stored while the study goes on; jobs run in parallel; seeds are stored.

use std::sync::Arc;

use tune::executor::{run_study, RunOptions};
use tune::frozen::{TrialState, FAIL_REASON_KEY};
use tune::pruner::NopPruner;
use tune::sampler::RandomSampler;
use tune::storage::InMemoryStorage;
use tune::{Direction, Study};

fn study(seed: u64) -> Study {
    Study::create_or_load(
        Arc::new(InMemoryStorage::new()),
        "s",
        Direction::Minimize,
        Arc::new(RandomSampler::new(seed)),
        Arc::new(NopPruner),
        seed,
    )
    .unwrap()
}

#[test]
fn failures_panics_and_nan_fail_their_trial_only() {
    let s = study(1);
    let opts = RunOptions { n_trials: Some(12), jobs: 3, ..RunOptions::default() };
    let summary = run_study(&s, &opts, |trial| {
        let x = trial.suggest_float("x", 0.0, 1.0)?;
        match trial.number() % 4 {
            0 => anyhow::bail!("diverged at step 7"),
            1 => panic!("index out of bounds"),
            2 => Ok(f64::NAN),
            _ => Ok(x),
        }
    })
    .unwrap();
    assert_eq!((summary.complete, summary.failed), (3, 9));
    let trials = s.trials().unwrap();
    assert_eq!(trials.len(), 12);
    for t in &trials {
        let reason = t.system_attrs.get(FAIL_REASON_KEY).and_then(|v| v.as_str()).unwrap_or("");
        match t.number % 4 {
            0 => assert!(reason.contains("diverged at step 7"), "{reason}"),
            1 => assert!(reason.contains("panicked") && reason.contains("index out of bounds"), "{reason}"),
            2 => assert!(reason.contains("NaN"), "{reason}"),
            _ => assert_eq!(t.state, TrialState::Complete),
        }
        if t.number % 4 != 3 {
            assert_eq!(t.state, TrialState::Fail);
        }
    }
}

#[test]
fn each_trial_stores_a_seed_derived_from_the_study_seed() {
    let run = |seed| {
        let s = study(seed);
        let opts = RunOptions { n_trials: Some(6), jobs: 2, ..RunOptions::default() };
        run_study(&s, &opts, |t| t.suggest_float("x", 0.0, 1.0)).unwrap();
        let mut seeds: Vec<(i64, u64)> =
            s.trials().unwrap().iter().map(|t| (t.number, t.user_attrs["seed"].as_u64().unwrap())).collect();
        seeds.sort();
        seeds
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
    let seeds: std::collections::HashSet<u64> = run(5).iter().map(|p| p.1).collect();
    assert_eq!(seeds.len(), 6);
}

#[test]
fn jobs_run_trials_concurrently() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let s = study(2);
    let opts = RunOptions { n_trials: Some(8), jobs: 4, ..RunOptions::default() };
    // Counts objectives running at once (not elapsed time, which a loaded machine stretches).
    let (now, peak) = (AtomicUsize::new(0), AtomicUsize::new(0));
    run_study(&s, &opts, |t| {
        let running = now.fetch_add(1, Ordering::SeqCst) + 1;
        peak.fetch_max(running, Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(200));
        now.fetch_sub(1, Ordering::SeqCst);
        t.suggest_float("x", 0.0, 1.0)
    })
    .unwrap();
    // 8 trials of 200 ms on 4 workers: the workers overlap (all 4 unless one was slow to start).
    assert!(peak.load(Ordering::SeqCst) >= 3, "at most {} trials ran at once", peak.load(Ordering::SeqCst));
    assert_eq!(s.trials().unwrap().len(), 8);
}

#[test]
fn trials_are_placed_on_device_slots_with_at_most_their_share_at_once() {
    use std::collections::HashMap;
    use std::sync::Mutex;
    let s = study(3);
    // Two slots on `gpu-a`, one on `gpu-b`: what `devices: [gpu-a, gpu-b], trials_per_device: 2`
    // minus one would give; the executor only sees the list of slots.
    let devices: Vec<String> = ["gpu-a", "gpu-a", "gpu-b"].map(String::from).to_vec();
    let opts = RunOptions { n_trials: Some(12), jobs: 1, devices, ..RunOptions::default() };
    let now: Mutex<HashMap<String, usize>> = Mutex::new(HashMap::new());
    let peak: Mutex<HashMap<String, usize>> = Mutex::new(HashMap::new());
    run_study(&s, &opts, |t| {
        let device = t.device().expect("every trial is placed").to_string();
        {
            let mut now = now.lock().unwrap();
            let n = now.entry(device.clone()).or_default();
            *n += 1;
            let mut peak = peak.lock().unwrap();
            let p = peak.entry(device.clone()).or_default();
            *p = (*p).max(*n);
        }
        t.set_user_attr("placed_on", serde_json::json!(device))?;
        std::thread::sleep(std::time::Duration::from_millis(100));
        *now.lock().unwrap().get_mut(&device).unwrap() -= 1;
        t.suggest_float("x", 0.0, 1.0)
    })
    .unwrap();
    let peak = peak.into_inner().unwrap();
    assert_eq!(peak.get("gpu-a"), Some(&2), "{peak:?}");
    assert_eq!(peak.get("gpu-b"), Some(&1), "{peak:?}");
    let trials = s.trials().unwrap();
    assert_eq!(trials.len(), 12);
    assert!(trials.iter().all(|t| t.user_attrs["placed_on"].as_str().is_some_and(|d| d.starts_with("gpu-"))));
}

/// Runs `f` on its own thread; panics if it has not returned within `limit` (a hang).
fn within<T: Send + 'static>(limit: std::time::Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).expect("the run did not end: it hangs")
}

/// Every write method the executor uses fails once, at its 1st, 2nd, 3rd, 5th or 8th call, with
/// two workers, reports, pruning checks, failures, an enqueued trial and fast heartbeats: the
/// run always ends (with the storage error, or normally when the failing call was a heartbeat
/// the run can do without), no trial is left RUNNING, and the enqueued parameters are not lost.
#[test]
fn a_storage_failure_in_any_phase_ends_the_run_and_loses_nothing() {
    use std::collections::BTreeMap;
    use std::time::Duration;
    use tune::storage::{FaultKind, FaultyStorage, Storage, StorageError};

    let methods = [
        "start_next_trial",
        "set_trial_user_attr",
        "set_trial_param",
        "set_trial_intermediate_values",
        "set_trial_system_attr",
        "set_trial_state_values",
        "record_heartbeat",
        "fail_stale_trials",
    ];
    for method in methods {
        let mut fired = false;
        for nth in [1, 2, 3, 5, 8] {
            let inner = Arc::new(InMemoryStorage::new());
            let id = inner.create_new_study("s", Direction::Minimize).unwrap();
            let mut fixed = BTreeMap::new();
            fixed.insert(tune::frozen::FIXED_PARAMS_KEY.to_string(), serde_json::json!({"x": 0.25}));
            inner.create_new_trial(id, TrialState::Waiting, &fixed).unwrap();
            let faulty = Arc::new(FaultyStorage::new(inner.clone(), method, nth, FaultKind::Error).unwrap());
            let storage: Arc<dyn Storage> = faulty.clone();
            let result = within(Duration::from_secs(30), move || {
                let s = Study::load(storage, "s", Arc::new(RandomSampler::new(3)), Arc::new(NopPruner), 3).unwrap();
                let opts = RunOptions {
                    n_trials: Some(6),
                    jobs: 2,
                    heartbeat_interval: Duration::from_millis(20),
                    grace: Duration::from_secs(5),
                    ..RunOptions::default()
                };
                run_study(&s, &opts, |t| {
                    let x = t.suggest_float("x", 0.0, 1.0)?;
                    for step in 0..3 {
                        std::thread::sleep(Duration::from_millis(15));
                        t.report(step, x)?;
                        t.should_prune()?;
                    }
                    if t.number() % 3 == 2 {
                        anyhow::bail!("diverged");
                    }
                    Ok(x)
                })
            });
            let hit = faulty.calls() >= nth;
            fired |= hit;
            match &result {
                Err(e) => {
                    assert!(hit, "{method}#{nth}: an error without the fault firing: {e:#}");
                    assert!(e.chain().any(|c| c.is::<StorageError>()), "{method}#{nth}: {e:#}");
                }
                Ok(_) => assert!(
                    !hit || matches!(method, "record_heartbeat" | "fail_stale_trials"),
                    "{method}#{nth}: the fault fired but the run reported no error"
                ),
            }
            let trials = inner.get_all_trials(id, None).unwrap();
            assert!(
                trials.iter().all(|t| t.state != TrialState::Running),
                "{method}#{nth}: a trial was left RUNNING: {:?}",
                trials.iter().map(|t| (t.number, t.state)).collect::<Vec<_>>()
            );
            let kept = trials.iter().any(|t| {
                let done = t.state.is_finished() && !t.interrupted() && t.params.get("x") == Some(&0.25);
                let waiting =
                    t.state == TrialState::Waiting && t.system_attrs.contains_key(tune::frozen::FIXED_PARAMS_KEY);
                done || waiting
            });
            assert!(kept, "{method}#{nth}: the enqueued trial was lost");
            if result.is_ok() {
                let finished = trials.iter().filter(|t| t.state.is_finished() && !t.interrupted()).count();
                assert_eq!(finished, 6, "{method}#{nth}");
            }
        }
        assert!(fired, "{method}: the run never made the failing call; the test proves nothing for it");
    }
}

/// Records which trials the study showed it for each trial it sampled.
struct Recording {
    inner: RandomSampler,
    seen: std::sync::Mutex<std::collections::BTreeMap<i64, Vec<i64>>>,
}

impl tune::sampler::Sampler for Recording {
    fn sample_independent(
        &self,
        study: &tune::sampler::StudyView,
        trial: &tune::FrozenTrial,
        name: &str,
        dist: &tune::Distribution,
    ) -> f64 {
        self.seen.lock().unwrap().insert(trial.number, study.trials.iter().map(|t| t.number).collect());
        self.inner.sample_independent(study, trial, name, dist)
    }
}

#[test]
fn with_hyperband_the_sampler_sees_only_the_trials_of_its_bracket() {
    use tune::pruner::{HyperbandConfig, MaxResource};
    let config = HyperbandConfig { max_resource: MaxResource::Steps(9), ..HyperbandConfig::default() };
    let pruner = Arc::new(config.build("hb").unwrap());
    let sampler = Arc::new(Recording { inner: RandomSampler::new(3), seen: Default::default() });
    let s = Study::create_or_load(
        Arc::new(InMemoryStorage::new()),
        "hb",
        Direction::Minimize,
        sampler.clone(),
        pruner.clone(),
        3,
    )
    .unwrap();
    let opts = RunOptions { n_trials: Some(40), jobs: 1, ..RunOptions::default() };
    run_study(&s, &opts, |trial| {
        let x = trial.suggest_float("x", 0.0, 1.0)?;
        for step in 0..9 {
            trial.report(step, x + step as f64)?;
            if trial.should_prune()? {
                return Err(tune::error::TrialPruned.into());
            }
        }
        Ok(x)
    })
    .unwrap();
    let trials = s.trials().unwrap();
    let view = tune::sampler::StudyView { direction: Direction::Minimize, trials: &trials };
    let bracket = |n: i64| pruner.bracket_of(&view, n).unwrap();
    let seen = sampler.seen.lock().unwrap();
    let mut brackets = std::collections::BTreeSet::new();
    for t in &trials {
        let want: Vec<i64> = (0..=t.number).filter(|&n| bracket(n) == bracket(t.number)).collect();
        assert_eq!(seen[&t.number], want, "trial {}", t.number);
        brackets.insert(bracket(t.number));
    }
    assert!(brackets.len() >= 2, "{brackets:?}");
    assert!(trials.iter().any(|t| t.state == TrialState::Pruned));
}
