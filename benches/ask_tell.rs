//! TPE ask+tell overhead through `Study` (acceptance: ≤ 0.2 ms/trial in memory, ≤ 1 ms/trial
//! with SQLite, averaged over a 1000-trial study with 10 mixed parameters: 7 floats, 1 log
//! float, 1 log int, 1 categorical). Optuna 5.0 measures 23.7 ms/trial here, rustuna 1.05 ms.
//!
//! Run: `cargo bench --bench ask_tell` (prints ms/trial at 100, 500 and 1000 trials, by wall
//! clock and by this thread's CPU time, which is steadier on a shared machine, each the mean
//! of studies with seeds 1 to 3, or to N with `-- --seeds N`; for A/B
//! comparisons of two builds, `-- --reps N` repeats each study N times and also prints the
//! minimum CPU time and a hash of every suggested parameter, equal when both builds suggest the
//! same values). `-- --only memory` (or `sqlite`, `postgres`) runs one backend, e.g. under
//! `perf record`. The PostgreSQL column needs a server: `TUNE_TEST_POSTGRES` names an admin URL
//! (password in `PGPASSWORD`), as `scripts/test.sh` and `scripts/pg_bench.sh` set; each study
//! gets a fresh database on it.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use tune::pruner::NopPruner;
use tune::sampler::{TpeConfig, TpeSampler};
use tune::storage::postgres::testing::fresh_database;
use tune::storage::{InMemoryStorage, PostgresStorage, SqliteStorage, Storage};
use tune::{Direction, Distribution, Outcome, Study};

/// This thread's CPU time in milliseconds.
fn cpu_ms() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

/// Wall and CPU milliseconds per trial, and a hash of all suggested parameters.
fn one_study(storage: Arc<dyn Storage>, n_trials: usize, seed: u64) -> (f64, f64, u64) {
    let sampler = Arc::new(TpeSampler::new(TpeConfig::default(), seed));
    let study =
        Study::create_or_load(storage, "bench", Direction::Minimize, sampler, Arc::new(NopPruner), seed).unwrap();
    let choices = [json!("adam"), json!("rmsprop"), json!("sgd"), json!("adamw")];
    let start = Instant::now();
    let cpu_start = cpu_ms();
    for _ in 0..n_trials {
        let mut t = study.ask().unwrap();
        let mut v = 0.0;
        // As `tune run` samples a search space: all suggestions first, stored in one write.
        let mut suggest = |name: &str, d: Distribution| t.suggest_deferred(name, &d).unwrap().as_f64();
        for i in 0..7 {
            let x = suggest(&format!("x{i}"), Distribution::float(-5.0, 5.0, false, None).unwrap()).unwrap();
            v += x * x;
        }
        v += suggest("lr", Distribution::float(1e-5, 1e-1, true, None).unwrap()).unwrap().ln().abs();
        v += suggest("batch", Distribution::int(1, 1024, true, 1).unwrap()).unwrap().ln();
        let opt = t.suggest_deferred("optimizer", &Distribution::categorical(choices.to_vec()).unwrap()).unwrap();
        if opt == json!("sgd") {
            v += 1.0;
        }
        t.flush().unwrap();
        study.tell(t, Outcome::Complete(v)).unwrap();
    }
    let wall = start.elapsed().as_secs_f64() * 1e3 / n_trials as f64;
    let cpu = (cpu_ms() - cpu_start) / n_trials as f64;
    let mut hash: u64 = 0;
    for t in study.trials().unwrap() {
        for v in t.params.values() {
            hash = hash.wrapping_mul(31).wrapping_add(v.to_bits());
        }
    }
    (wall, cpu, hash)
}

/// `study(seed)` for seeds 1 to `seeds`: the mean wall and CPU times, and a hash of all the
/// studies' suggestions. A study's cost depends on where its search goes (a converged study
/// has more bad trials near each candidate), so one seed alone is a noisy figure.
fn over_seeds(seeds: u64, mut study: impl FnMut(u64) -> (f64, f64, u64)) -> (f64, f64, u64) {
    let (mut wall, mut cpu, mut hash) = (0.0, 0.0, 0u64);
    for seed in 1..=seeds {
        let (w, c, h) = study(seed);
        (wall, cpu, hash) = (wall + w, cpu + c, hash.wrapping_mul(31).wrapping_add(h));
    }
    (wall / seeds as f64, cpu / seeds as f64, hash)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let quick = !args.iter().any(|a| a == "--bench");
    let reps: usize = args.iter().position(|a| a == "--reps").map_or(1, |i| args[i + 1].parse().expect("--reps N"));
    let sizes: &[usize] = if quick { &[50] } else { &[100, 500, 1000] };
    let seeds: u64 = args
        .iter()
        .position(|a| a == "--seeds")
        .map_or(if quick { 1 } else { 3 }, |i| args[i + 1].parse().expect("--seeds N"));
    // `--only memory` or `--only sqlite` runs one backend (for profiling one of them).
    let only = args.iter().position(|a| a == "--only").map(|i| args[i + 1].clone());
    let run = |backend: &str| only.as_deref().is_none_or(|o| o == backend);
    let pg_admin = std::env::var("TUNE_TEST_POSTGRES").ok().filter(|u| !u.is_empty());
    for &n in sizes {
        let (mut mem_cpu, mut sql_cpu) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let skipped = (f64::NAN, f64::NAN, 0);
            let (mem, mc, hash) = if run("memory") {
                over_seeds(seeds, |seed| one_study(Arc::new(InMemoryStorage::new()), n, seed))
            } else {
                skipped
            };
            let (sql, sc, _) = if run("sqlite") {
                over_seeds(seeds, |seed| {
                    let dir = tempfile::tempdir().unwrap();
                    one_study(Arc::new(SqliteStorage::open(&dir.path().join("bench.db")).unwrap()), n, seed)
                })
            } else {
                skipped
            };
            let (pg, pc, _) = match &pg_admin {
                Some(admin) if run("postgres") => over_seeds(seeds, |seed| {
                    let url = fresh_database(admin, "bench");
                    one_study(Arc::new(PostgresStorage::open(&url, true).unwrap()), n, seed)
                }),
                _ => skipped,
            };
            println!(
                "TPE ask+tell, 10 params, {n:>4} trials, mean of {seeds} studies: in-memory {mem:.3} ms/trial \
                 (cpu {mc:.3}), SQLite {sql:.3} ms/trial (cpu {sc:.3}), PostgreSQL {pg:.3} ms/trial (cpu {pc:.3})"
            );
            if reps > 1 {
                println!("  params hash {hash:016x}");
            }
            mem_cpu.push(mc);
            sql_cpu.push(sc);
        }
        if reps > 1 {
            let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
            println!(
                "  {n:>4} trials, min cpu: in-memory {:.3} ms/trial, SQLite {:.3} ms/trial",
                min(&mem_cpu),
                min(&sql_cpu)
            );
        }
    }
}
