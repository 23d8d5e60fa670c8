use std::time::Instant;
use tune::storage::{SqliteStorage, Storage};
use tune::{Direction, Distribution, TrialState};
fn main() {
    if std::env::args().any(|a| a == "--list") { return; }
    let n: usize = std::env::var("N").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStorage::open(&dir.path().join("b.db")).unwrap();
    let id = s.create_new_study("bench", Direction::Maximize).unwrap();
    let lr = Distribution::float(1e-5, 1e-1, true, None).unwrap();
    let (mut t_start, mut t_param, mut t_iv, mut t_done) = (0.0, 0.0, 0.0, 0.0);
    let all = Instant::now();
    for i in 0..n {
        let a = Instant::now();
        let t = s.start_next_trial(id, None).unwrap().unwrap();
        let b = Instant::now();
        s.set_trial_param(t.trial_id, "lr", 1e-3, &lr).unwrap();
        s.set_trial_param(t.trial_id, "lr2", 1e-3, &lr).unwrap();
        s.set_trial_param(t.trial_id, "lr3", 1e-3, &lr).unwrap();
        let c = Instant::now();
        for step in 0..100 { s.set_trial_intermediate_value(t.trial_id, step, step as f64 * 0.5).unwrap(); }
        let d = Instant::now();
        s.set_trial_state_values(t.trial_id, TrialState::Complete, Some(i as f64)).unwrap();
        let e = Instant::now();
        t_start += (b - a).as_secs_f64(); t_param += (c - b).as_secs_f64(); t_iv += (d - c).as_secs_f64(); t_done += (e - d).as_secs_f64();
    }
    let total = all.elapsed().as_secs_f64();
    let us = |x: f64, k: f64| x * 1e6 / (n as f64 * k);
    println!("total {:.3} s for {n} trials ({:.1} us/txn): start {:.1} us, param {:.1} us, iv {:.1} us, complete {:.1} us",
        total, total * 1e6 / (n as f64 * 105.0), us(t_start, 1.0), us(t_param, 3.0), us(t_iv, 100.0), us(t_done, 1.0));
}
