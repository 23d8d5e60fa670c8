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
    let s = study(2);
    let opts = RunOptions { n_trials: Some(8), jobs: 4, ..RunOptions::default() };
    let start = std::time::Instant::now();
    run_study(&s, &opts, |t| {
        std::thread::sleep(std::time::Duration::from_millis(200));
        t.suggest_float("x", 0.0, 1.0)
    })
    .unwrap();
    // 8 trials of 200 ms on 4 workers: about 400 ms, far below the 1.6 s of a serial run.
    assert!(start.elapsed() < std::time::Duration::from_millis(1200), "{:?}", start.elapsed());
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
