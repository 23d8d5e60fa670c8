"""Regenerates tests/fixtures/gym/*.json, the Gymnasium reference data that tests/gym_parity.rs replays.

Run with the pinned peer:  .venv/bin/pip install gymnasium==1.4.0 && .venv/bin/python scripts/gym_fixtures.py

Trajectories record the initial state (we cannot reproduce numpy's RNG stream, so the Rust test sets
this state), the actions, and every observation, reward and flag Gymnasium returned. FrozenLake is
checked through its full transition table `env.unwrapped.P`, which is what its dynamics are.
"""

import json
import pathlib

import gymnasium as gym
import numpy as np

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gym"


def f32(values):
    """Shortest decimal that parses back to the same float32, to keep the files small."""
    return [float(np.format_float_positional(np.float32(v), unique=True, trim="0")) for v in values]


def trajectory(env_id, kwargs, seed, policy, max_steps=None):
    env = gym.make(env_id, **kwargs)
    obs, _ = env.reset(seed=seed)
    state = [float(v) for v in np.asarray(env.unwrapped.state, dtype=np.float64)]
    rng = np.random.default_rng(seed)
    episode = {"seed": seed, "initial_state": state, "initial_obs": f32(obs), "actions": [],
               "observations": [], "rewards": [], "terminated": [], "truncated": []}
    while True:
        action = int(policy(obs, rng))
        obs, reward, terminated, truncated, _ = env.step(action)
        episode["actions"].append(action)
        episode["observations"].append(f32(obs))
        episode["rewards"].append(float(reward))
        episode["terminated"].append(bool(terminated))
        episode["truncated"].append(bool(truncated))
        if terminated or truncated or (max_steps and len(episode["actions"]) >= max_steps):
            return episode


def random_policy(n):
    return lambda obs, rng: rng.integers(n)


def cartpole_balancer(obs, rng):
    # A linear controller that keeps the pole up long enough to reach the time limit.
    x, x_dot, theta, theta_dot = obs
    noise = rng.normal(0.0, 0.3)
    return 1 if theta + 0.5 * theta_dot + 0.01 * x + 0.1 * x_dot + 0.05 * noise > 0 else 0


def mountain_car_energy(obs, rng):
    # Push along the velocity: pumps energy and reaches the flag (termination) within 200 steps.
    return 2 if obs[1] >= 0 else 0


def vector_run(env_id, num_envs, seed, steps, max_episode_steps):
    """`steps` random vector steps of Gymnasium's SyncVectorEnv with same-step autoreset, with the
    state every copy starts each episode from (the Rust side sets it at each reset)."""
    envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
                        max_episode_steps=max_episode_steps)
    state = lambda i: [float(v) for v in np.asarray(envs.envs[i].unwrapped.state, dtype=np.float64)]
    obs, _ = envs.reset(seed=seed)
    run = {"id": env_id, "num_envs": num_envs, "seed": seed, "max_episode_steps": max_episode_steps,
           "starts": [[state(i)] for i in range(num_envs)], "initial_obs": [f32(o) for o in obs], "steps": []}
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        actions = rng.integers(2, size=num_envs)
        obs, rewards, terminated, truncated, infos = envs.step(actions)
        done = terminated | truncated
        final = [f32(infos["final_obs"][i]) if done[i] else None for i in range(num_envs)]
        for i in np.flatnonzero(done):
            run["starts"][i].append(state(i))
        run["steps"].append({"actions": [int(a) for a in actions], "obs": [f32(o) for o in obs],
                             "rewards": [float(r) for r in rewards], "terminated": [bool(t) for t in terminated],
                             "truncated": [bool(t) for t in truncated], "final_obs": final})
    return run


def dump(name, data):
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def main():
    header = {"produced_by": f"scripts/gym_fixtures.py with gymnasium {gym.__version__}"}

    cases = []
    for env_id, kwargs, seeds, policy in [
        ("CartPole-v1", {}, [0, 1, 2], random_policy(2)),
        ("CartPole-v1", {"sutton_barto_reward": True}, [3], random_policy(2)),
        ("CartPole-v0", {}, [4], cartpole_balancer),
        ("CartPole-v1", {}, [5], cartpole_balancer),
    ]:
        for seed in seeds:
            cases.append({"id": env_id, "options": kwargs, **trajectory(env_id, kwargs, seed, policy)})
    dump("cartpole", {**header, "episodes": cases})

    dump("cartpole_vector", {**header, "runs": [vector_run("CartPole-v1", 3, 10, 120, 30)]})

    cases = []
    cases.append({"id": "Acrobot-v1", "options": {}, **trajectory("Acrobot-v1", {}, 0, random_policy(3), 60)})
    cases.append({"id": "Acrobot-v1", "options": {}, **trajectory("Acrobot-v1", {}, 2, random_policy(3))})
    dump("acrobot", {**header, "episodes": cases})

    cases = []
    cases.append({"id": "MountainCar-v0", "options": {}, **trajectory("MountainCar-v0", {}, 0, random_policy(3))})
    cases.append({"id": "MountainCar-v0", "options": {}, **trajectory("MountainCar-v0", {}, 1, mountain_car_energy)})
    dump("mountain_car", {**header, "episodes": cases})

    tables = []
    for env_id, kwargs in [
        ("FrozenLake-v1", {}),
        ("FrozenLake-v1", {"is_slippery": False}),
        ("FrozenLake8x8-v1", {}),
        ("FrozenLake-v1", {"desc": ["SFFF", "FFFF", "HHFF", "HHFG"], "is_slippery": True}),
        ("FrozenLake-v1", {"desc": ["FFFFF", "FFFFF", "SHHHG"], "is_slippery": True, "success_rate": 0.6,
                           "reward_schedule": (10, -1, 0)}),
    ]:
        env = gym.make(env_id, **kwargs)
        p = env.unwrapped.P
        table = [[[[float(prob), int(s2), float(r), bool(t)] for prob, s2, r, t in p[s][a]] for a in range(4)]
                 for s in range(len(p))]
        options = {("map" if k == "desc" else k): (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}
        tables.append({"id": env_id, "options": options, "max_episode_steps": env.spec.max_episode_steps,
                       "nrow": int(env.unwrapped.nrow), "ncol": int(env.unwrapped.ncol), "P": table})
    dump("frozen_lake", {**header, "tables": tables})


if __name__ == "__main__":
    main()
