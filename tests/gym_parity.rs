//! Parity with Gymnasium 1.4.0: replays trajectories, transition tables and a vector-environment
//! run recorded from the real library by `scripts/gym_fixtures.py` (fixtures in
//! `tests/fixtures/gym/`).
//!
//! Each trajectory starts from Gymnasium's initial state (numpy's RNG stream is not ours to
//! reproduce), applies the same actions, and must give the same observations to float32
//! precision, the same rewards and the same terminated / truncated flags, with the registered time
//! limits applied by the environment `EnvSpec` builds.

use serde_json::Value;
use tune::rl::env::Env;
use tune::rl::env::{
    Acrobot, AcrobotConfig, CartPole, EnvOptions, EnvSpec, FrozenLake, MountainCar, MountainCarConfig, Obs, Step,
    TimeLimit, VecEnv,
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

/// CartPole whose resets start from the states Gymnasium's copy started from, in order.
struct Scripted {
    env: TimeLimit<CartPole>,
    starts: std::collections::VecDeque<Vec<f64>>,
}

impl Env for Scripted {
    fn observation_space(&self) -> tune::rl::env::ObsSpace {
        self.env.observation_space()
    }
    fn action_space(&self) -> tune::rl::env::ActionSpace {
        self.env.action_space()
    }
    fn reset(&mut self, seed: Option<u64>) -> Obs<'_> {
        self.env.reset(seed);
        let s = self.starts.pop_front().expect("Gymnasium's run has a start for every reset");
        Obs::F32(self.env.inner_mut().set_state([s[0], s[1], s[2], s[3]]))
    }
    fn step(&mut self, action: usize) -> Step<'_> {
        self.env.step(action)
    }
    fn render(&mut self) -> tune::rl::env::Frame<'_> {
        self.env.render()
    }
}

#[test]
fn vector_environments_autoreset_as_gymnasium_same_step() {
    // Gymnasium's SyncVectorEnv (autoreset_mode=SAME_STEP): per copy terminated / truncated
    // flags, the final observation handed out with the last step, and the reset observation as
    // the one the next action is taken in.
    let data = fixture("cartpole_vector");
    for run in data["runs"].as_array().unwrap() {
        let mut map = serde_json::Map::new();
        map.insert("id".into(), run["id"].clone());
        map.insert("num_envs".into(), run["num_envs"].clone());
        map.insert("max_episode_steps".into(), run["max_episode_steps"].clone());
        let spec = EnvSpec::from_map(map).unwrap();
        let n = spec.num_envs as usize;
        let envs: Vec<Box<dyn Env>> = (0..n)
            .map(|i| {
                let EnvOptions::CartPole(config) = &spec.options else { panic!("{spec:?}") };
                let env = TimeLimit::new(CartPole::new(config.clone()), spec.max_episode_steps().unwrap());
                let starts = run["starts"][i].as_array().unwrap().iter().map(floats).collect();
                Box::new(Scripted { env, starts }) as Box<dyn Env>
            })
            .collect();
        let mut vec = VecEnv::new(envs, run["seed"].as_u64().unwrap());
        for i in 0..n {
            assert_close(&obs_f32(vec.obs(i)), &f32s(&run["initial_obs"][i]), &format!("copy {i} initial"));
        }
        let (mut ends, mut truncations) = (0, 0);
        for (t, step) in run["steps"].as_array().unwrap().iter().enumerate() {
            for i in 0..n {
                let what = format!("step {t} copy {i}");
                let action = step["actions"][i].as_u64().unwrap() as usize;
                let (next, reward, terminated, truncated) =
                    vec.step(i, action, |_, s| (obs_f32(s.obs), s.reward, s.terminated, s.truncated));
                assert_eq!(reward, step["rewards"][i].as_f64().unwrap(), "{what}: reward");
                assert_eq!(terminated, step["terminated"][i].as_bool().unwrap(), "{what}: terminated");
                assert_eq!(truncated, step["truncated"][i].as_bool().unwrap(), "{what}: truncated");
                if terminated || truncated {
                    // The step hands out the final observation; the copy already sits in the
                    // first observation of its next episode.
                    assert_close(&next, &f32s(&step["final_obs"][i]), &format!("{what} final"));
                    ends += 1;
                    truncations += usize::from(truncated);
                } else {
                    assert_eq!(step["final_obs"][i], Value::Null, "{what}");
                }
                assert_close(&obs_f32(vec.obs(i)), &f32s(&step["obs"][i]), &what);
            }
        }
        assert!(ends >= 10 && truncations >= 2, "the run exercises both ends: {ends} ends, {truncations} truncated");
    }
}
