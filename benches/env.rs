//! Environment throughput on one core.
//!
//! - `cartpole/step`: CartPole-v1 with its time limit, resetting on done (Gymnasium does ~84k
//!   steps/s here; the target is tens of millions).
//! - `frozen_lake/step`: slippery 8x8 FrozenLake, one-hot observations.
//! - `atari/breakout_dqn_step`: BreakoutNoFrameskip-v4 with the full DQN stack (4 emulator
//!   frames, max-pool, grayscale, 84x84 area resize, episodic life, clipping, stack of 4).
//! - `atari/breakout_emulation_step`: the same 4 emulator frames and one grayscale screen read,
//!   with every preprocessing step off: the emulation floor.
//! - `atari/preprocess`: max-pool + resize + stack on one real Breakout frame pair, alone.
//!   The preprocessing share, printed as `atari/share`, is `preprocess / (full step - preprocess)`
//!   from interleaved rounds (target: under 20%).
//!
//! Run: `cargo bench --bench env` (Atari parts need the default `atari` feature).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tune::rl::env::{Env, EnvSpec};

const STEPS: u64 = 10_000;

fn run_steps(env: &mut dyn Env, n: u64) -> f64 {
    let mut total = 0.0;
    for i in 0..n {
        let step = env.step((i % 2) as usize);
        total += step.reward;
        if step.done() {
            env.reset(None);
        }
    }
    total
}

fn classic(c: &mut Criterion) {
    let mut group = c.benchmark_group("cartpole");
    group.throughput(Throughput::Elements(STEPS));
    let mut env = EnvSpec::new("CartPole-v1").unwrap().make().unwrap();
    env.reset(Some(0));
    group.bench_function("step", |b| b.iter(|| run_steps(env.as_mut(), STEPS)));
    group.finish();

    let mut group = c.benchmark_group("frozen_lake");
    group.throughput(Throughput::Elements(STEPS));
    let spec: EnvSpec = serde_norway::from_str("{id: FrozenLake8x8-v1, observation: one_hot}").unwrap();
    let mut env = spec.make().unwrap();
    env.reset(Some(0));
    group.bench_function("step", |b| b.iter(|| run_steps(env.as_mut(), STEPS)));
    group.finish();
}

#[cfg(feature = "atari")]
fn atari(c: &mut Criterion) {
    use tune::rl::env::atari::wrappers::Preprocessor;
    use tune::rl::env::atari::{AtariConfig, AtariEnv};
    use tune::rl::env::Obs;

    const AGENT_STEPS: u64 = 500;
    let mut group = c.benchmark_group("atari");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(AGENT_STEPS));

    let mut full = AtariEnv::new("Breakout", AtariConfig::no_frameskip_v4()).unwrap();
    full.reset(Some(0));
    // FIRE / RIGHT / LEFT keep the ball in play and the screen changing.
    let policy = |i: u64| [1, 2, 3, 2, 3][(i % 5) as usize];
    let steps = |env: &mut AtariEnv| {
        for i in 0..AGENT_STEPS {
            if env.step(policy(i)).done() {
                env.reset(None);
            }
        }
    };
    group.bench_function("breakout_dqn_step", |b| b.iter(|| steps(&mut full)));

    let bare = AtariConfig {
        max_pool: false,
        screen_size: None,
        frame_stack: 1,
        clip_rewards: false,
        ..AtariConfig::no_frameskip_v4()
    };
    let mut emulation = AtariEnv::new("Breakout", bare.clone()).unwrap();
    emulation.reset(Some(0));
    group.bench_function("breakout_emulation_step", |b| b.iter(|| steps(&mut emulation)));

    // Two real consecutive grayscale frames, processed as one agent step would.
    let mut raw = AtariEnv::new("Breakout", AtariConfig { frame_skip: 1, ..bare }).unwrap();
    let grab = |env: &mut AtariEnv| match env.step(2).obs {
        Obs::U8(p) => p.to_vec(),
        other => panic!("{other:?}"),
    };
    raw.reset(Some(0));
    let previous = grab(&mut raw);
    let last = grab(&mut raw);
    let mut pre = Preprocessor::new(raw.screen_shape(), 1, Some(84), 4);
    let mut frame = last.clone();
    group.bench_function("preprocess", |b| {
        b.iter(|| {
            for _ in 0..AGENT_STEPS {
                frame.copy_from_slice(&last);
                std::hint::black_box(pre.push(&mut frame, Some(&previous), false));
            }
        })
    });
    group.finish();

    // Criterion's figures above drift with other load on the machine; interleaving short rounds
    // of the three workloads and keeping each one's fastest round gives a steadier share.
    let time = |f: &mut dyn FnMut()| {
        let start = std::time::Instant::now();
        f();
        start.elapsed().as_secs_f64() / AGENT_STEPS as f64
    };
    let (mut t_full, mut t_emu, mut t_pre) = (f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..20 {
        t_full = t_full.min(time(&mut || steps(&mut full)));
        t_emu = t_emu.min(time(&mut || steps(&mut emulation)));
        t_pre = t_pre.min(time(&mut || {
            for _ in 0..AGENT_STEPS {
                frame.copy_from_slice(&last);
                std::hint::black_box(pre.push(&mut frame, Some(&previous), false));
            }
        }));
    }
    // The share compares preprocessing with the rest of a full step: emulation, screen reads,
    // and the resets that episodic life and fire reset add.
    println!(
        "atari/share: full step {:.0} us ({:.0} agent steps/s), preprocess {:.1} us = {:.1}% of the \
         {:.0} us of emulation in a step (bare emulation step: {:.0} us)",
        t_full * 1e6,
        1.0 / t_full,
        t_pre * 1e6,
        100.0 * t_pre / (t_full - t_pre),
        (t_full - t_pre) * 1e6,
        t_emu * 1e6,
    );
}

#[cfg(not(feature = "atari"))]
fn atari(_: &mut Criterion) {}

criterion_group!(benches, classic, atari);
criterion_main!(benches);
