//! Parity with Gymnasium 1.4.0: replays trajectories and transition tables recorded from the real
//! library by `scripts/gym_fixtures.py` (fixtures in `tests/fixtures/gym/`).
//!
//! Each trajectory starts from Gymnasium's initial state (numpy's RNG stream is not ours to
//! reproduce), applies the same actions, and must give the same observations to float32
//! precision, the same rewards and the same terminated / truncated flags, with the registered time
//! limits applied by the environment `EnvSpec` builds.

use serde_json::Value;
use tune::rl::env::Env;
use tune::rl::env::{
    Acrobot, AcrobotConfig, CartPole, EnvOptions, EnvSpec, FrozenLake, MountainCar, MountainCarConfig, Obs, Step,
    TimeLimit,
};

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/gym/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn spec_of(case: &Value) -> EnvSpec {
    let mut map = case["options"].as_object().unwrap().clone();
    map.insert("id".into(), case["id"].clone());
    EnvSpec::from_map(map).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn f32s(v: &Value) -> Vec<f32> {
    floats(v).into_iter().map(|x| x as f32).collect()
}

/// Observations agree to float32 precision: equal, or within one float32 rounding step.
fn assert_close(ours: &[f32], theirs: &[f32], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: length");
    for (a, b) in ours.iter().zip(theirs) {
        let tolerance = f32::EPSILON * b.abs().max(1e-6);
        assert!((a - b).abs() <= tolerance, "{what}: ours {ours:?} vs Gymnasium {theirs:?}");
    }
}

fn obs_f32(obs: Obs<'_>) -> Vec<f32> {
    match obs {
        Obs::F32(o) => o.to_vec(),
        other => panic!("expected a float observation, got {other:?}"),
    }
}

/// Replays one recorded episode; `start` sets Gymnasium's initial state and returns the first
/// observation.
fn replay<E: Env>(
    case: &Value,
    env: &mut TimeLimit<E>,
    start: impl FnOnce(&mut E, &[f64]) -> Vec<f32>,
) -> (usize, usize) {
    env.reset(Some(0));
    let what = format!("{} {} seed {}", case["id"], case["options"], case["seed"]);
    let first = start(env.inner_mut(), &floats(&case["initial_state"]));
    assert_close(&first, &f32s(&case["initial_obs"]), &format!("{what} initial"));
    let actions = case["actions"].as_array().unwrap();
    let mut exact = 0;
    for (t, action) in actions.iter().enumerate() {
        let Step { obs, reward, terminated, truncated } = env.step(action.as_u64().unwrap() as usize);
        let ours = obs_f32(obs);
        let theirs = f32s(&case["observations"][t]);
        let what = format!("{what} step {t}");
        assert_close(&ours, &theirs, &what);
        exact += usize::from(ours == theirs);
        assert_eq!(reward, case["rewards"][t].as_f64().unwrap(), "{what}: reward");
        assert_eq!(terminated, case["terminated"][t].as_bool().unwrap(), "{what}: terminated");
        assert_eq!(truncated, case["truncated"][t].as_bool().unwrap(), "{what}: truncated");
    }
    (exact, actions.len())
}

#[test]
fn cartpole_trajectories_match_gymnasium() {
    let data = fixture("cartpole");
    let (mut exact, mut total) = (0, 0);
    for case in data["episodes"].as_array().unwrap() {
        let spec = spec_of(case);
        let EnvOptions::CartPole(config) = &spec.options else { panic!("{spec:?}") };
        let mut env = TimeLimit::new(CartPole::new(config.clone()), spec.max_episode_steps().unwrap());
        let (e, n) = replay(case, &mut env, |env, s| env.set_state([s[0], s[1], s[2], s[3]]).to_vec());
        exact += e;
        total += n;
    }
    // Same operations in the same order: every observation is bit-identical.
    assert_eq!(exact, total, "CartPole observations not bit-identical to Gymnasium's");
}

#[test]
fn acrobot_trajectories_match_gymnasium() {
    let data = fixture("acrobot");
    for case in data["episodes"].as_array().unwrap() {
        let spec = spec_of(case);
        let mut env = TimeLimit::new(Acrobot::new(AcrobotConfig::default()), spec.max_episode_steps().unwrap());
        // Bit-identical here too, but Gymnasium uses numpy's cos/sin, which may differ from libm by
        // an ulp on other machines, so only float32 closeness is required.
        replay(case, &mut env, |env, s| env.set_state([s[0], s[1], s[2], s[3]]).to_vec());
    }
}

#[test]
fn mountain_car_trajectories_match_gymnasium() {
    let data = fixture("mountain_car");
    for case in data["episodes"].as_array().unwrap() {
        let spec = spec_of(case);
        let mut env = TimeLimit::new(MountainCar::new(MountainCarConfig::default()), spec.max_episode_steps().unwrap());
        let (exact, total) = replay(case, &mut env, |env, s| env.set_state([s[0], s[1]]).to_vec());
        assert_eq!(exact, total, "MountainCar observations not bit-identical to Gymnasium's");
    }
}

#[test]
fn frozen_lake_transition_tables_match_gymnasium() {
    let data = fixture("frozen_lake");
    for case in data["tables"].as_array().unwrap() {
        let spec = spec_of(case);
        assert_eq!(spec.max_episode_steps(), case["max_episode_steps"].as_u64().map(|n| n as u32), "{}", case["id"]);
        let EnvOptions::FrozenLake(config) = &spec.options else { panic!("{spec:?}") };
        let lake = FrozenLake::new(config.clone()).unwrap();
        let n_states = case["P"].as_array().unwrap().len();
        assert_eq!(lake.shape(), (case["nrow"].as_u64().unwrap() as usize, case["ncol"].as_u64().unwrap() as usize));
        for s in 0..n_states {
            for a in 0..4 {
                let theirs = case["P"][s][a].as_array().unwrap();
                let ours = lake.transitions(s, a);
                let what = format!("{} {} P[{s}][{a}]", case["id"], case["options"]);
                assert_eq!(ours.len(), theirs.len(), "{what}");
                for (o, t) in ours.iter().zip(theirs) {
                    assert_eq!(o.prob, t[0].as_f64().unwrap(), "{what}: probability");
                    assert_eq!(o.next_state as u64, t[1].as_u64().unwrap(), "{what}: next state");
                    assert_eq!(o.reward, t[2].as_f64().unwrap(), "{what}: reward");
                    assert_eq!(o.terminated, t[3].as_bool().unwrap(), "{what}: terminated");
                }
            }
        }
    }
}

#[test]
fn frozen_lake_episodes_follow_the_table_and_the_time_limit() {
    // A non-slippery lake where the agent walks into a wall forever: truncated at the limit.
    let spec = EnvSpec::new("FrozenLake-v1").unwrap();
    let mut env = spec.make().unwrap();
    env.reset(Some(3));
    let mut steps = 0;
    loop {
        steps += 1;
        let step = env.step(0);
        if step.done() {
            assert!(step.terminated || steps == 100, "truncated at {steps}");
            break;
        }
    }
    assert!(steps <= 100);
}
