//! Atari through ALE with the DQN preprocessing stack, on Breakout: seeding, lives and
//! life-loss termination, observation shapes, the frame cap and rendering.
#![cfg(feature = "atari")]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tune::rl::env::atari::{AtariConfig, AtariEnv};
use tune::rl::env::{save_gif, Env, EnvSpec, Obs, ObsSpace};

fn pixels(obs: Obs<'_>) -> Vec<u8> {
    match obs {
        Obs::U8(p) => p.to_vec(),
        other => panic!("Atari observations are pixels, got {other:?}"),
    }
}

fn breakout(config: AtariConfig) -> AtariEnv {
    AtariEnv::new("Breakout", config).unwrap()
}

/// Writes an image to the temporary folder, to look at frames by eye.
fn save_png(name: &str, width: usize, height: usize, color: png::ColorType, data: &[u8]) {
    let file = std::io::BufWriter::new(std::fs::File::create(std::env::temp_dir().join(name)).unwrap());
    let mut encoder = png::Encoder::new(file, width as u32, height as u32);
    encoder.set_color(color);
    encoder.write_header().unwrap().write_image_data(data).unwrap();
}

#[test]
fn observations_are_four_stacked_84x84_frames() {
    let mut env = EnvSpec::new("BreakoutNoFrameskip-v4").unwrap().make().unwrap();
    assert_eq!(env.observation_space(), ObsSpace::Pixels { frames: 4, height: 84, width: 84, channels: 1 });
    assert_eq!(env.observation_space().shape(), vec![4, 84, 84]);
    assert_eq!(env.action_space().n, 4);
    let first = pixels(env.reset(Some(0)));
    assert_eq!(first.len(), 4 * 84 * 84);
    // After a reset every slot holds the same frame, and the screen is not blank.
    assert!(first.chunks_exact(84 * 84).all(|f| f == &first[..84 * 84]));
    assert!(first.iter().any(|&p| p > 0));
    // A step shifts the stack: the old newest frame becomes the second newest.
    let newest_before = first[3 * 84 * 84..].to_vec();
    let after = pixels(env.step(1).obs);
    assert_eq!(&after[2 * 84 * 84..3 * 84 * 84], &newest_before[..]);
    let mut obs = after;
    for _ in 0..30 {
        obs = pixels(env.step(3).obs);
    }
    // The four stacked frames side by side, 336x84 grayscale, to look at.
    let strip: Vec<u8> = (0..84)
        .flat_map(|y| (0..4).flat_map(move |f| (0..84).map(move |x| f * 84 * 84 + y * 84 + x)))
        .map(|i| obs[i])
        .collect();
    save_png("tune_breakout_obs.png", 4 * 84, 84, png::ColorType::Grayscale, &strip);
}

#[test]
fn the_same_seed_gives_the_same_frames() {
    for id in ["BreakoutNoFrameskip-v4", "ALE/Breakout-v5"] {
        let spec = EnvSpec::new(id).unwrap();
        let run = |seed: u64| {
            let mut env = spec.make().unwrap();
            let mut actions = StdRng::seed_from_u64(9);
            let mut frames = vec![pixels(env.reset(Some(seed)))];
            let mut rewards = 0.0;
            for _ in 0..300 {
                let step = env.step(actions.random_range(0..4));
                rewards += step.reward;
                frames.push(pixels(step.obs));
                if step.done() {
                    frames.push(pixels(env.reset(None)));
                }
            }
            (frames, rewards)
        };
        let (a, ra) = run(1);
        let (b, rb) = run(1);
        assert!(a == b && ra == rb, "{id}: same seed, different frames");
        // Reseeding one environment reproduces its own first episode too.
        let mut env = spec.make().unwrap();
        let first = pixels(env.reset(Some(5)));
        for _ in 0..50 {
            env.step(3);
        }
        assert_eq!(pixels(env.reset(Some(5))), first, "{id}: reseeding");
    }
}

#[test]
fn losing_a_life_ends_the_training_episode_but_not_the_game() {
    let mut env = breakout(AtariConfig::no_frameskip_v4());
    env.reset(Some(3));
    assert_eq!(env.lives(), 5);
    let mut lost = 0;
    let mut steps = 0;
    loop {
        // NOOP never moves the paddle, so every ball is missed.
        let step = env.step(0);
        steps += 1;
        assert!(steps < 5000, "Breakout never lost a life");
        if step.terminated {
            lost += 1;
            if env.game_over() {
                assert_eq!(env.lives(), 0);
                break;
            }
            assert_eq!(env.lives(), 5 - lost);
            env.reset(None);
            // Not a real reset: the game goes on with the remaining lives.
            assert_eq!(env.lives(), 5 - lost);
        }
    }
    assert_eq!(lost, 5);
    env.reset(None);
    assert_eq!(env.lives(), 5, "game over resets the game");
}

#[test]
fn without_episodic_life_only_game_over_terminates() {
    let mut env = breakout(AtariConfig { episodic_life: false, ..AtariConfig::no_frameskip_v4() });
    env.reset(Some(3));
    let mut actions = StdRng::seed_from_u64(2);
    let mut steps = 0;
    // Random play: FIRE relaunches the ball after each lost life.
    while !env.step(actions.random_range(0..4)).terminated {
        steps += 1;
        assert!(steps < 20_000);
    }
    assert!(env.game_over());
}

#[test]
fn the_frame_cap_truncates() {
    // Without episodic life a lost ball only costs a life, so only the cap can end this episode.
    let config = AtariConfig {
        max_frames_per_episode: 200,
        noop_max: 0,
        episodic_life: false,
        ..AtariConfig::no_frameskip_v4()
    };
    let mut env = breakout(config);
    env.reset(Some(0));
    let mut steps = 0;
    loop {
        steps += 1;
        let step = env.step(0);
        if step.truncated {
            break;
        }
        assert!(!step.terminated && steps < 100);
    }
    assert!(env.episode_frame_number() >= 200);
    assert!(steps <= 50, "{steps} steps of 4 frames for a 200-frame cap");
}

#[test]
fn rewards_are_clipped_and_raw_rgb_is_available() {
    let config = AtariConfig { grayscale: false, screen_size: None, frame_stack: 1, ..AtariConfig::no_frameskip_v4() };
    let mut env = breakout(config);
    assert_eq!(env.observation_space().shape(), vec![1, 210, 160, 3]);
    assert_eq!(pixels(env.reset(Some(0))).len(), 210 * 160 * 3);
    let mut actions = StdRng::seed_from_u64(1);
    let mut frames = vec![env.render().to_image()];
    for _ in 0..400 {
        let step = env.step(actions.random_range(0..4));
        assert!([0.0, 1.0].contains(&step.reward));
        let done = step.done();
        frames.push(env.render().to_image());
        if done {
            env.reset(None);
        }
    }
    let frame = env.render();
    assert_eq!((frame.width, frame.height, frame.rgb.len()), (160, 210, 210 * 160 * 3));
    save_png("tune_breakout.png", frame.width, frame.height, png::ColorType::Rgb, frame.rgb);
    let path = std::env::temp_dir().join("tune_breakout.gif");
    save_gif(&path, &frames[..120], 30.0).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() > 1000);
}

#[test]
fn unknown_games_are_input_errors() {
    let err = EnvSpec::new("ALE/Tetris-v5").unwrap_err().to_string();
    assert!(err.contains("unknown env id") && err.contains("Breakout"), "{err}");
    let err = serde_norway::from_str::<EnvSpec>("{id: ALE/Pong-v5, frameskip: 4}").unwrap_err().to_string();
    assert!(err.contains("unknown field `frameskip`") && err.contains("frame_skip"), "{err}");
}
