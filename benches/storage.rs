//! Storage write throughput: 1000 trials, each started, given 3 parameters and 100 intermediate
//! values, and completed, on a fresh SQLite file (WAL, synchronous=NORMAL). Target: under 2 s
//! per study. Measured two ways:
//! - `sqlite`: straight through the `Storage` trait, one transaction per call, as Optuna's
//!   RDB storage commits every `report` (the in-memory storage runs the same workload as the
//!   floor);
//! - `sqlite_through_trial`: the way an objective writes, `Study::ask`, `Trial::suggest_*`,
//!   `Trial::report` and `Study::tell` (random sampler, no pruner), where `report` stores the
//!   values it received within `REPORT_FLUSH_INTERVAL` in one transaction.
//!
//! Also `get_all_trials` on a finished 1000-trial study with 10 parameters per trial, which
//! `Study::ask` and `Trial::should_prune` call on every trial: the SQLite backend serves
//! finished trials from its in-process cache, so both backends mostly pay for the clone.
//!
//! Run: `cargo bench --bench storage`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use tune::pruner::NopPruner;
use tune::sampler::RandomSampler;
use tune::storage::{InMemoryStorage, SqliteStorage, Storage};
use tune::{Direction, Distribution, Outcome, Study, TrialState};

const TRIALS: usize = 1000;
const STEPS: i64 = 100;

fn write_study(s: &dyn Storage) {
    let id = s.create_new_study("bench", Direction::Maximize).unwrap();
    let lr = Distribution::float(1e-5, 1e-1, true, None).unwrap();
    let batch = Distribution::int(16, 256, false, 16).unwrap();
    let opt = Distribution::categorical(vec!["adam".into(), "sgd".into()]).unwrap();
    for i in 0..TRIALS {
        let t = s.start_next_trial(id, None).unwrap().unwrap();
        s.set_trial_param(t.trial_id, "lr", 1e-3, &lr).unwrap();
        s.set_trial_param(t.trial_id, "batch", 64.0, &batch).unwrap();
        s.set_trial_param(t.trial_id, "optimizer", (i % 2) as f64, &opt).unwrap();
        for step in 0..STEPS {
            s.set_trial_intermediate_value(t.trial_id, step, step as f64 * 0.5).unwrap();
        }
        s.set_trial_state_values(t.trial_id, TrialState::Complete, Some(i as f64)).unwrap();
    }
}

/// The same study written by an objective: three suggestions, 100 reports, a value.
fn write_study_through_trials(s: Arc<dyn Storage>) {
    let sampler = Arc::new(RandomSampler::new(0));
    let study = Study::create_or_load(s, "bench", Direction::Maximize, sampler, Arc::new(NopPruner), 0).unwrap();
    let choices = ["adam".into(), "sgd".into()];
    for i in 0..TRIALS {
        let mut t = study.ask().unwrap();
        t.suggest_float_log("lr", 1e-5, 1e-1).unwrap();
        t.suggest(&"batch".to_string(), &Distribution::int(16, 256, false, 16).unwrap()).unwrap();
        t.suggest_categorical("optimizer", &choices).unwrap();
        for step in 0..STEPS {
            t.report(step, step as f64 * 0.5).unwrap();
        }
        study.tell(t, Outcome::Complete(i as f64)).unwrap();
    }
}

fn storage_writes(c: &mut Criterion) {
    let mut g = c.benchmark_group("storage_1000_trials_x_100_values");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(20));
    // Each sample writes a study into a fresh file; closing it (the final checkpoint) is part
    // of writing a study.
    let on_fresh_file = |write: fn(Arc<dyn Storage>)| {
        move |b: &mut criterion::Bencher| {
            b.iter_batched(
                || {
                    let dir = tempfile::tempdir().unwrap();
                    let s: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&dir.path().join("bench.db")).unwrap());
                    (dir, s)
                },
                |(dir, s)| {
                    write(s);
                    dir
                },
                BatchSize::PerIteration,
            )
        }
    };
    g.bench_function("sqlite", on_fresh_file(|s| write_study(s.as_ref())));
    g.bench_function("sqlite_through_trial", on_fresh_file(write_study_through_trials));
    g.bench_function("memory", |b| b.iter_batched(InMemoryStorage::new, |s| write_study(&s), BatchSize::PerIteration));
    g.finish();
}

/// A finished study of `TRIALS` trials, each with 10 parameters and a user attribute.
fn finished_study(s: &dyn Storage) -> i64 {
    let id = s.create_new_study("read", Direction::Minimize).unwrap();
    let x = Distribution::float(-5.0, 5.0, false, None).unwrap();
    let opt = Distribution::categorical(vec!["adam".into(), "rmsprop".into(), "sgd".into(), "adamw".into()]).unwrap();
    let names: Vec<String> = (0..9).map(|i| format!("x{i}")).collect();
    for i in 0..TRIALS {
        let t = s.start_next_trial(id, None).unwrap().unwrap();
        for name in &names {
            s.set_trial_param(t.trial_id, name, 0.5, &x).unwrap();
        }
        s.set_trial_param(t.trial_id, "optimizer", (i % 4) as f64, &opt).unwrap();
        s.set_trial_user_attr(t.trial_id, "seed", &(i as u64).into()).unwrap();
        s.set_trial_state_values(t.trial_id, TrialState::Complete, Some(i as f64)).unwrap();
    }
    id
}

fn storage_reads(c: &mut Criterion) {
    let mut g = c.benchmark_group("get_all_trials_1000_trials_x_10_params");
    g.sample_size(20);
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStorage::open(&dir.path().join("read.db")).unwrap();
    let sid = finished_study(&sqlite);
    g.bench_function("sqlite", |b| b.iter(|| sqlite.get_all_trials(sid, None).unwrap()));
    let memory = InMemoryStorage::new();
    let mid = finished_study(&memory);
    g.bench_function("memory", |b| b.iter(|| memory.get_all_trials(mid, None).unwrap()));
    g.finish();
}

criterion_group!(benches, storage_writes, storage_reads);
criterion_main!(benches);
