//! Replay buffer hot paths on one core.
//!
//! - `prioritized/sample_update_64`: draw a stratified batch of 64 from 100k CartPole-shaped
//!   transitions (4 floats, 1-step), fill the batch, then write back 64 new priorities: the work
//!   a prioritized DQN update adds on the CPU (target: under 20 us).
//! - `prioritized/sample_64`, `prioritized/update_64`: the two halves (the update on the same,
//!   cached, indices every time).
//! - `uniform/sample_64`: the same batch drawn uniformly, for comparison.
//! - `prioritized/atari_sample_update_32`: 32 stacked 4x84x84 frames (and next frames, 3-step)
//!   rebuilt from a 50k-frame ring: the memory-bound Atari case.
//!
//! Run: `cargo bench --bench replay`.

use criterion::{criterion_group, criterion_main, Criterion};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use tune::rl::env::{Obs, ObsSpace};
use tune::rl::replay::{PrioritizedConfig, PrioritizedReplay, Replay, UniformReplay};

/// Pushes `steps` steps of episodes 1 to 500 steps long.
fn fill(replay: &mut dyn Replay, space: &ObsSpace, steps: usize, rng: &mut StdRng) {
    let mut obs = vec![0.0f32; space.flat_dim()];
    let mut next = obs.clone();
    let mut frames = vec![0u8; space.flat_dim()];
    let mut next_frames = frames.clone();
    let mut left = rng.random_range(1..500);
    for t in 0..steps {
        left -= 1;
        let done = left == 0;
        if done {
            left = rng.random_range(1..500);
        }
        let terminated = done && rng.random::<bool>();
        let action = t % 2;
        let reward = rng.random::<f32>();
        match space {
            ObsSpace::Pixels { .. } => {
                next_frames.fill((t % 251) as u8);
                replay.push(Obs::U8(&frames), action, reward, Obs::U8(&next_frames), terminated, done && !terminated);
                std::mem::swap(&mut frames, &mut next_frames);
            }
            _ => {
                next.iter_mut().for_each(|x| *x = rng.random());
                replay.push(Obs::F32(&obs), action, reward, Obs::F32(&next), terminated, done && !terminated);
                std::mem::swap(&mut obs, &mut next);
            }
        }
    }
}

fn prioritized(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(0);
    let space = ObsSpace::Box { low: vec![-1.0; 4], high: vec![1.0; 4] };
    let mut per = PrioritizedReplay::new(&space, 100_000, 1, 0.99, PrioritizedConfig::default());
    fill(&mut per, &space, 150_000, &mut rng);
    let mut batch = per.storage().new_batch(64);
    // Spread the priorities as training would, so the tree is not uniform.
    for _ in 0..2_000 {
        per.sample(&mut rng, 0.4, &mut batch);
        let td: Vec<f32> = (0..64).map(|_| rng.random::<f32>() * 10.0).collect();
        per.update_priorities(&batch.indices, &td);
    }
    let td: Vec<f32> = (0..64).map(|_| rng.random::<f32>() * 10.0).collect();
    let mut group = c.benchmark_group("prioritized");
    group.bench_function("sample_update_64", |b| {
        b.iter(|| {
            per.sample(&mut rng, 0.4, &mut batch);
            per.update_priorities(&batch.indices, black_box(&td));
            black_box(&batch.weights);
        })
    });

    group.bench_function("sample_64", |b| {
        b.iter(|| {
            per.sample(&mut rng, 0.4, &mut batch);
            black_box(&batch.weights);
        })
    });
    let idx = batch.indices.clone();
    group.bench_function("update_64", |b| {
        b.iter(|| {
            per.update_priorities(black_box(&idx), black_box(&td));
        })
    });

    let atari = ObsSpace::Pixels { frames: 4, height: 84, width: 84, channels: 1 };
    let mut per = PrioritizedReplay::new(&atari, 50_000, 3, 0.99, PrioritizedConfig::default());
    fill(&mut per, &atari, 60_000, &mut rng);
    let mut batch = per.storage().new_batch(32);
    let td = vec![1.0f32; 32];
    group.bench_function("atari_sample_update_32", |b| {
        b.iter(|| {
            per.sample(&mut rng, 0.4, &mut batch);
            per.update_priorities(&batch.indices, black_box(&td));
            black_box(&batch.obs);
        })
    });
    group.finish();
}

fn uniform(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let space = ObsSpace::Box { low: vec![-1.0; 4], high: vec![1.0; 4] };
    let mut replay = UniformReplay::new(&space, 100_000, 1, 0.99);
    fill(&mut replay, &space, 150_000, &mut rng);
    let mut batch = replay.storage().new_batch(64);
    c.bench_function("uniform/sample_64", |b| {
        b.iter(|| {
            replay.sample(&mut rng, 0.4, &mut batch);
            black_box(&batch.obs);
        })
    });
}

criterion_group!(benches, prioritized, uniform);
criterion_main!(benches);
