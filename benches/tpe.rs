//! Sampler-level cost of TPE: one multivariate suggestion (`infer_relative_search_space` +
//! `sample_relative`, what `Study::ask` calls) after 100, 500 and 1000 COMPLETE trials over
//! 10 parameters: 7 uniform floats, 1 log float, 1 log int and a 4-way categorical. The
//! sampler's memo of finished trials is warm after the first iteration, as it is in a running
//! study (where each ask also appends one trial to the bad model's kernels).
//!
//! Run: `cargo bench --bench tpe`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use serde_json::json;
use tune::sampler::{RandomSampler, Sampler, SearchSpace, StudyView, TpeConfig, TpeSampler};
use tune::{Direction, Distribution, FrozenTrial, TrialState};

fn space() -> SearchSpace {
    let mut s = SearchSpace::new();
    for i in 0..7 {
        s.insert(format!("x{i}"), Distribution::float(-5.0, 5.0, false, None).unwrap());
    }
    s.insert("lr".into(), Distribution::float(1e-5, 1e-1, true, None).unwrap());
    s.insert("batch".into(), Distribution::int(1, 1024, true, 1).unwrap());
    s.insert(
        "optimizer".into(),
        Distribution::categorical(vec![json!("adam"), json!("rmsprop"), json!("sgd"), json!("adamw")]).unwrap(),
    );
    s
}

/// `n` COMPLETE trials with random parameters and a sphere-like value, plus the RUNNING trial
/// being sampled.
fn history(n: usize) -> Vec<FrozenTrial> {
    let space = space();
    let random = RandomSampler::new(1);
    let mut trials: Vec<FrozenTrial> = Vec::with_capacity(n + 1);
    // Random search does not look at the history.
    let view = StudyView { direction: Direction::Minimize, trials: &[] };
    for number in 0..n as i64 {
        let mut t = FrozenTrial::new(number, number, TrialState::Running);
        let mut v = 0.0;
        for (name, d) in &space {
            let x = random.sample_independent(&view, &t, name, d);
            v += if name.starts_with('x') { x * x } else { x.abs().ln_1p() };
            t.params.insert(name.clone(), x);
            t.distributions.insert(name.clone(), d.clone());
        }
        t.state = TrialState::Complete;
        t.value = Some(v);
        trials.push(t);
    }
    trials.push(FrozenTrial::new(n as i64, n as i64, TrialState::Running));
    trials
}

fn bench(c: &mut Criterion) {
    let sampler = TpeSampler::new(TpeConfig::default(), 7);
    let mut group = c.benchmark_group("tpe");
    for n in [100, 500, 1000] {
        let trials = history(n);
        let view = StudyView { direction: Direction::Minimize, trials: &tune::sampler::shared(&trials) };
        let current = &trials[n];
        let space = sampler.infer_relative_search_space(&view, current);
        assert_eq!(space.len(), 10);
        group.bench_with_input(BenchmarkId::new("sample_relative", n), &n, |b, _| {
            b.iter(|| black_box(sampler.sample_relative(&view, current, &space)))
        });
        group.bench_with_input(BenchmarkId::new("infer_relative_search_space", n), &n, |b, _| {
            b.iter(|| black_box(sampler.infer_relative_search_space(&view, current)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
