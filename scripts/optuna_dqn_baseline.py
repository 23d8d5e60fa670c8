#!/usr/bin/env python3
"""Optuna 5.0 + plain PyTorch DQN with prioritized replay on CartPole-v1: the baseline for `tune`.

What it measures
----------------
The wall time of the study in studies/per_cartpole.yaml run the way a user writes it today:
`optuna.create_study` + `study.optimize(objective, n_trials, n_jobs)`, where the objective
trains a plain PyTorch DQN 2015 + proportional prioritized replay (numpy sum/min trees) on
gymnasium's CartPole-v1 with the hyperparameters of configs/per_cartpole.yaml, reports every
evaluation with `trial.report` and stops pruned trials with `optuna.TrialPruned`. At the end it
prints and writes (--out) the wall time, trials complete / pruned / failed, the best value and
parameters, the training environment steps of all trials (up to where pruned trials stopped;
evaluation episodes not counted, as in tune's `env_steps`) and steps/s overall, plus the
process CPU time and, per trial, wall and thread CPU time and the evaluation curve. Compare
with `tune run studies/per_cartpole.yaml` (acceptance goal: tune at least 5x faster) on the
same, otherwise idle, machine.

Run (from the repository root):

    .venv/bin/python scripts/optuna_dqn_baseline.py --n-trials 30              # the full study
    .venv/bin/python scripts/optuna_dqn_baseline.py --n-trials 1 --jobs 1       # one trial
    .venv/bin/python scripts/optuna_dqn_baseline.py --n-trials 2 --steps 5000   # smoke test
    .venv/bin/python scripts/optuna_dqn_baseline.py --storage sqlite:///optuna-baseline.db --out results.json

Needs only what scripts/requirements.txt installs (torch, optuna, gymnasium; PyYAML and numpy
come with them).

What it mirrors
---------------
Both files are read at run time (PyYAML), not copied:
- studies/per_cartpole.yaml: direction, n_trials (default of --n-trials), study seed
  (TPESampler(seed=...)), median pruner (n_startup_trials, n_warmup_steps), parallelism.jobs
  (default of --jobs), value reduction (best), and the search space: the same dotted names,
  ranges, log flags and choices, suggested with trial.suggest_float / suggest_int /
  suggest_categorical and written into the trainer config at their dotted paths.
- configs/per_cartpole.yaml (the study's `objective.config`): network (MLP, ReLU), gamma,
  batch size, learning_starts, train_freq, gradient_steps, Huber/MSE loss, Adam (PyTorch
  defaults: betas 0.9/0.999, eps 1e-8) and lr, max_grad_norm, hard target every N environment
  steps, replay size / alpha / beta / epsilon, linear epsilon schedule, budget, evaluation
  every / episodes / epsilon, threads (torch.set_num_threads).

Semantics matched with tune's trainer (src/rl/train.rs, src/rl/agent/dqn.rs,
src/rl/replay/prioritized.rs):
- Step counting: the environment step counter is incremented before the transition is
  stored; a gradient phase of `gradient_steps` updates runs when step >= learning_starts and
  step % train_freq == 0; then the target network is copied when step % target.every == 0
  (so the target is fixed during a phase).
- Epsilon is linear from start to end over `fraction` of the budget, taken at the step count
  before the step; PER beta is linear from `beta` to 1 over `beta_fraction` of the budget, at
  the step count after it (both on tune's 1e6-tick clock).
- PER: new transitions get max_priority^alpha (max_priority starts at 1, the largest
  |delta| + epsilon seen so far); a batch is drawn stratified (one draw per equal segment of
  the total mass); weights are (p_i^alpha / min_k p_k^alpha)^-beta; priorities updated with
  |delta| + epsilon from the same forward pass as the loss.
- Target y = r + gamma (1 - terminated) max_a Q'(s', a) (argmax by the online net if
  `double`); truncation (the 500-step limit) bootstraps, termination does not.
- Loss mean_j w_j Huber(Q(s_j, a_j) - y_j); gradients clipped to global norm max_grad_norm
  (torch.nn.utils.clip_grad_norm_, same max_norm / (norm + 1e-6) rule); a non-finite TD error
  fails the trial, as tune's "training diverged" error does.
- Weights and biases initialised uniform in +-1/sqrt(fan_in) (PyTorch's nn.Linear default
  distribution, tune's init), from a per-trial generator.
- Evaluation every `eval.every` training steps (and at the end if the budget is not a
  multiple): `eval.episodes` episodes with `eval.epsilon` on a second environment whose first
  reset of every evaluation uses the same seed; its mean return is reported at that step, the
  pruner is asked right after, and the trial value is the best (or last / mean of last k)
  evaluation mean.

Deliberate differences
----------------------
- Random streams differ (numpy PCG64 and torch generators instead of tune's StdRng; the trial
  seed is SplitMix64(study seed, trial number), not tune's derivation), so individual curves
  differ from tune's; the distributions are the same.
- `n_jobs` > 1 runs trials in threads, as Optuna does: they share the GIL, which releases only
  inside torch/numpy kernels. That is what `study.optimize(n_jobs=2)` gives a user; it is part
  of what is measured.
- The replay stores (s, a, r, s', terminated) per transition; tune stores each frame once in a
  ring. Same transitions, same sampling, as long as the buffer does not wrap (100k slots >
  50k steps here).
- Only the features per_cartpole.yaml uses (plus `double`, `loss: mse`, `replay: uniform`)
  are implemented; anything else stops with an error rather than silently differing.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import optuna
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parent.parent
MASK64 = (1 << 64) - 1


def derive(seed: int, purpose: int) -> int:
    """SplitMix64 of `seed` for stream `purpose` (tune's `rl::train::derive`)."""
    z = (seed + purpose * 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def linear_schedule(start: float, end: float, duration: int, t: int) -> float:
    """tune's `schedule::linear_schedule`: start -> end over `duration` ticks, then end."""
    if t >= duration:
        return end
    return start + (end - start) * (t / duration)


TICKS = 1e6


def scheduled(start: float, end: float, fraction: float, budget_fraction: float) -> float:
    """A linear schedule over `fraction` of the budget, on tune's 1e6-tick clock."""
    return linear_schedule(start, end, int(fraction * TICKS), int(budget_fraction * TICKS))


# ---------------------------------------------------------------------------------------------
# Prioritized replay: numpy storage + sum and min segment trees (vectorised over the batch).
# ---------------------------------------------------------------------------------------------


class PriorityTrees:
    """Sum and min segment trees over `capacity` leaves (p_i^alpha), each one array with the root
    at 1 and the leaves at [leaves, leaves + capacity). Batch updates and prefix-sum searches
    are vectorised over the batch, level by level."""

    def __init__(self, capacity: int):
        self.leaves = 1
        self.depth = 0
        while self.leaves < capacity:
            self.leaves *= 2
            self.depth += 1
        self.sum = np.zeros(2 * self.leaves, dtype=np.float64)
        self.min = np.full(2 * self.leaves, math.inf, dtype=np.float64)

    def set_one(self, i: int, value: float) -> None:
        s, m = self.sum, self.min
        j = i + self.leaves
        s[j] = m[j] = value
        j //= 2
        while j >= 1:
            l, r = 2 * j, 2 * j + 1
            s[j] = s[l] + s[r]
            a, b = m[l], m[r]
            m[j] = a if a < b else b
            j //= 2

    def set_many(self, idx: np.ndarray, values: np.ndarray) -> None:
        s, m = self.sum, self.min
        j = idx + self.leaves
        s[j] = values
        m[j] = values
        # Level by level: every child is final before its parent is recomputed, so duplicate
        # indices just write the same value twice.
        for _ in range(self.depth):
            j >>= 1
            l = 2 * j
            r = l + 1
            s[j] = s[l] + s[r]
            m[j] = np.minimum(m[l], m[r])

    def total(self) -> float:
        return float(self.sum[1])

    def smallest(self) -> float:
        return float(self.min[1])

    def get(self, idx):
        return self.sum[idx + self.leaves]

    def find_prefix_sums(self, masses: np.ndarray) -> np.ndarray:
        """The leaf where each mass falls (the first whose running sum exceeds it)."""
        s = self.sum
        j = np.ones(len(masses), dtype=np.int64)
        mass = masses.copy()
        for _ in range(self.depth):
            left = s[2 * j]
            right = mass >= left
            mass -= left * right
            j = 2 * j + right
        return j - self.leaves


class PrioritizedReplay:
    """Proportional PER (Schaul et al. 2016) as tune's `PrioritizedReplay`."""

    def __init__(self, capacity: int, obs_dim: int, alpha: float, epsilon: float):
        self.capacity = capacity
        self.alpha = alpha
        self.epsilon = epsilon
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.float32)
        self.pos = 0
        self.size = 0
        self.trees = PriorityTrees(capacity)
        self.max_priority = 1.0

    def __len__(self) -> int:
        return self.size

    def push(self, obs, action, reward, next_obs, terminated) -> None:
        i = self.pos
        self.obs[i] = obs
        self.next_obs[i] = next_obs
        self.actions[i] = action
        self.rewards[i] = reward
        self.terminated[i] = terminated
        self.trees.set_one(i, self.max_priority ** self.alpha)
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, beta: float, rng: np.random.Generator):
        segment = self.trees.total() / batch_size
        masses = (np.arange(batch_size) + rng.random(batch_size)) * segment
        idx = self.trees.find_prefix_sums(masses)
        np.minimum(idx, self.size - 1, out=idx)  # rounding at the very end of the mass
        weights = (self.trees.get(idx) / self.trees.smallest()) ** -beta
        return (
            self.obs[idx],
            self.actions[idx],
            self.rewards[idx],
            self.next_obs[idx],
            self.terminated[idx],
            weights.astype(np.float32),
            idx,
        )

    def update_priorities(self, idx: np.ndarray, td_abs: np.ndarray) -> None:
        p = td_abs.astype(np.float64) + self.epsilon
        self.max_priority = max(self.max_priority, float(p.max()))
        self.trees.set_many(idx, p ** self.alpha)


class UniformReplay(PrioritizedReplay):
    """Uniform sampling on the same storage (weights 1)."""

    def __init__(self, capacity: int, obs_dim: int):
        super().__init__(capacity, obs_dim, 0.0, 1.0)

    def sample(self, batch_size: int, beta: float, rng: np.random.Generator):
        idx = rng.integers(0, self.size, batch_size)
        ones = np.ones(batch_size, dtype=np.float32)
        return (self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx],
                self.terminated[idx], ones, idx)

    def update_priorities(self, idx, td_abs) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# DQN
# ---------------------------------------------------------------------------------------------


def make_mlp(obs_dim: int, hidden: list[int], n_actions: int, generator: torch.Generator) -> nn.Sequential:
    layers: list[nn.Module] = []
    sizes = [obs_dim, *hidden]
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], n_actions))
    net = nn.Sequential(*layers)
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.in_features)
                nn.init.uniform_(m.weight, -bound, bound, generator=generator)
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)
    return net


def check_supported(cfg: dict) -> None:
    """Stops on any trainer option this script does not implement."""
    agent = cfg["agent"]
    problems = []
    if cfg["env"]["id"] != "CartPole-v1" and not cfg["env"]["id"].startswith("CartPole"):
        problems.append(f"env.id {cfg['env']['id']}")
    if "episodes" in cfg["budget"]:
        problems.append("budget.episodes")
    if agent.get("type", "dqn") != "dqn":
        problems.append(f"agent.type {agent.get('type')}")
    net = agent.get("net", {"type": "mlp", "hidden": [64, 64]})
    if net.get("type", "mlp") != "mlp" or net.get("dueling", False):
        problems.append("net other than a plain MLP")
    if agent.get("n_step", 1) != 1:
        problems.append("n_step != 1")
    if agent.get("target", {}).get("type", "hard") != "hard":
        problems.append("target other than hard")
    if agent.get("replay", {}).get("type") not in ("prioritized", "uniform"):
        problems.append("replay other than prioritized/uniform")
    if agent.get("optimizer", {"type": "adam"}) != {"type": "adam"}:
        problems.append("optimizer other than plain adam")
    if agent.get("exploration", {}).get("type", "linear") != "linear":
        problems.append("exploration other than linear")
    for key in ("lr_schedule", "pretrained"):
        if key in agent:
            problems.append(f"agent.{key}")
    if agent.get("reward_scale", 1.0) != 1.0:
        problems.append("reward_scale")
    if problems:
        sys.exit(f"optuna_dqn_baseline.py does not implement: {', '.join(problems)}")


def evaluate(online: nn.Module, env: gym.Env, episodes: int, epsilon: float, seed: int, n_actions: int) -> list[float]:
    rng = np.random.default_rng(derive(seed, 7))
    returns = []
    for e in range(episodes):
        obs, _ = env.reset(seed=seed if e == 0 else None)
        ret, done = 0.0, False
        while not done:
            if epsilon > 0 and rng.random() < epsilon:
                action = int(rng.integers(n_actions))
            else:
                with torch.no_grad():
                    action = int(online(torch.as_tensor(obs).unsqueeze(0)).argmax(1).item())
            obs, reward, terminated, truncated, _ = env.step(action)
            ret += float(reward)
            done = terminated or truncated
        returns.append(ret)
    return returns


class Diverged(RuntimeError):
    pass


def train(cfg: dict, seed: int, on_eval) -> dict:
    """Trains the DQN of trainer config `cfg`; `on_eval(step, mean)` is called after every
    evaluation (it raises optuna.TrialPruned to stop). Returns the evaluation curve and counts."""
    agent = cfg["agent"]
    torch.set_num_threads(int(cfg.get("threads", 1)))
    budget = int(cfg["budget"]["steps"])
    ev = cfg.get("eval", {})
    eval_every, eval_episodes, eval_epsilon = int(ev.get("every", 5000)), int(ev.get("episodes", 10)), float(ev.get("epsilon", 0.0))
    gamma = float(agent.get("gamma", 0.99))
    batch_size = int(agent.get("batch_size", 64))
    learning_starts = int(agent.get("learning_starts", 1000))
    train_freq = int(agent.get("train_freq", 1))
    gradient_steps = int(agent.get("gradient_steps", 1))
    target_every = int(agent["target"]["every"])
    double = bool(agent.get("double", False))
    huber = agent.get("loss", "huber") == "huber"
    max_grad_norm = agent.get("max_grad_norm", 10.0)
    expl = agent["exploration"]
    eps_start, eps_end, eps_fraction = float(expl.get("start", 1.0)), float(expl["end"]), float(expl["fraction"])
    rep = agent["replay"]
    prioritized = rep["type"] == "prioritized"
    beta0, beta_fraction = float(rep.get("beta", 0.4)), float(rep.get("beta_fraction", 1.0))

    env = gym.make(cfg["env"]["id"])
    eval_env = gym.make(cfg["env"]["id"])
    obs_dim = env.observation_space.shape[0]
    n_actions = int(env.action_space.n)
    eval_seed = derive(seed, 2)
    rng = np.random.default_rng(derive(seed, 1))
    gen = torch.Generator().manual_seed(derive(seed, 3))

    hidden = list(agent.get("net", {}).get("hidden", [64, 64]))
    online = make_mlp(obs_dim, hidden, n_actions, gen)
    target = make_mlp(obs_dim, hidden, n_actions, gen)
    target.load_state_dict(online.state_dict())
    target.requires_grad_(False)
    optimizer = torch.optim.Adam(online.parameters(), lr=float(agent["lr"]))
    size = int(rep.get("size", 100_000))
    if prioritized:
        replay = PrioritizedReplay(size, obs_dim, float(rep.get("alpha", 0.6)), float(rep.get("epsilon", 1e-6)))
    else:
        replay = UniformReplay(size, obs_dim)

    def gradient_step(beta: float) -> None:
        obs_b, act_b, rew_b, next_b, term_b, w_b, idx = replay.sample(batch_size, beta, rng)
        obs_t = torch.from_numpy(obs_b)
        next_t = torch.from_numpy(next_b)
        act_t = torch.from_numpy(act_b).unsqueeze(1)
        with torch.no_grad():
            next_q = target(next_t)
            if double:
                next_v = next_q.gather(1, online(next_t).argmax(1, keepdim=True)).squeeze(1)
            else:
                next_v = next_q.max(1).values
            y = torch.from_numpy(rew_b) + gamma * (1.0 - torch.from_numpy(term_b)) * next_v
        q = online(obs_t).gather(1, act_t).squeeze(1)
        per_row = F.smooth_l1_loss(q, y, reduction="none") if huber else F.mse_loss(q, y, reduction="none")
        loss = (torch.from_numpy(w_b) * per_row).mean() if prioritized else per_row.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_(online.parameters(), float(max_grad_norm))
        optimizer.step()
        td = (q.detach() - y).abs().numpy()
        if not np.isfinite(td).all():
            raise Diverged("training diverged: non-finite TD error")
        replay.update_priorities(idx, td)

    evaluations: list[tuple[int, float]] = []

    def run_eval(step: int) -> None:
        returns = evaluate(online, eval_env, eval_episodes, eval_epsilon, eval_seed, n_actions)
        mean = float(np.mean(returns))
        evaluations.append((step, mean))
        on_eval(step, mean)

    obs, _ = env.reset(seed=seed)
    step = episodes = updates = 0
    start = time.perf_counter()
    while step < budget:
        epsilon = scheduled(eps_start, eps_end, eps_fraction, step / budget)
        if rng.random() < epsilon:
            action = int(rng.integers(n_actions))
        else:
            with torch.no_grad():
                action = int(online(torch.as_tensor(obs).unsqueeze(0)).argmax(1).item())
        step += 1
        next_obs, reward, terminated, truncated, _ = env.step(action)
        replay.push(obs, action, reward, next_obs, terminated)
        if step >= learning_starts and step % train_freq == 0 and len(replay) > 0:
            beta = scheduled(beta0, 1.0, beta_fraction, min(step / budget, 1.0)) if prioritized else 1.0
            for _ in range(gradient_steps):
                gradient_step(beta)
                updates += 1
        if step % target_every == 0:
            target.load_state_dict(online.state_dict())
        if terminated or truncated:
            episodes += 1
            obs, _ = env.reset()
        else:
            obs = next_obs
        if eval_every > 0 and step % eval_every == 0:
            run_eval(step)
    if not evaluations or evaluations[-1][0] != step:
        run_eval(step)
    env.close()
    eval_env.close()
    return {"evaluations": evaluations, "steps": step, "episodes": episodes, "updates": updates,
            "wall_s": time.perf_counter() - start}


# ---------------------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------------------


def set_dotted(cfg: dict, path: str, value) -> None:
    keys = path.split(".")
    node = cfg
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value


def suggest(trial: optuna.Trial, name: str, spec: dict):
    kind = spec["type"]
    if kind == "float":
        return trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)),
                                   step=spec.get("step"))
    if kind == "int":
        return trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False)),
                                 step=int(spec.get("step", 1)))
    if kind == "categorical":
        return trial.suggest_categorical(name, spec["choices"])
    raise SystemExit(f"search space {name}: unsupported type {kind}")


def reduce_curve(curve: list[float], how: str, k: int) -> float:
    if how == "best":
        return max(curve)
    if how == "last":
        return curve[-1]
    if how == "mean_last_k":
        return float(np.mean(curve[-k:]))
    raise SystemExit(f"objective.value {how} is not supported")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default=str(ROOT / "studies" / "per_cartpole.yaml"), help="tune study file to mirror")
    parser.add_argument("--n-trials", type=int, default=None, help="trials (default: the study's n_trials)")
    parser.add_argument("--jobs", type=int, default=None, help="study.optimize n_jobs (default: the study's parallelism.jobs)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per trial (default: the config's budget)")
    parser.add_argument("--storage", default=None, help="Optuna storage URL, e.g. sqlite:///baseline.db (default: in memory)")
    parser.add_argument("--out", default="results.json", help="where to write the JSON summary")
    args = parser.parse_args()

    study_path = Path(args.study)
    study_spec = yaml.safe_load(study_path.read_text())
    obj = study_spec["objective"]
    if obj.get("type") != "rl":
        sys.exit("the study's objective must be of type rl")
    if int(obj.get("seeds", 1)) != 1:
        sys.exit("objective.seeds > 1 is not implemented")
    base = obj["config"]
    if isinstance(base, str):
        base = yaml.safe_load((study_path.parent / base).read_text())
    if args.steps is not None:
        base["budget"] = {"steps": args.steps}
    check_supported(base)
    reduce_how, reduce_k = obj.get("value", "best"), int(obj.get("k", 3))
    space = study_spec["search_space"]
    n_trials = args.n_trials if args.n_trials is not None else int(study_spec.get("n_trials", 30))
    jobs = args.jobs if args.jobs is not None else int(study_spec.get("parallelism", {}).get("jobs", 1))
    study_seed = int(study_spec.get("seed", 0))

    sampler_spec = study_spec.get("sampler", {"type": "tpe"})
    if sampler_spec.get("type") != "tpe" or len(sampler_spec) > 1:
        sys.exit("only `sampler: {type: tpe}` (Optuna's defaults) is implemented")
    pruner_spec = study_spec.get("pruner", {"type": "median"})
    if pruner_spec.get("type") != "median":
        sys.exit("only the median pruner is implemented")
    sampler = optuna.samplers.TPESampler(seed=study_seed)
    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=int(pruner_spec.get("n_startup_trials", 5)),
        n_warmup_steps=int(pruner_spec.get("n_warmup_steps", 0)),
        interval_steps=int(pruner_spec.get("interval_steps", 1)),
    )
    torch.set_num_threads(int(base.get("threads", 1)))

    def objective(trial: optuna.Trial) -> float:
        cfg = copy.deepcopy(base)
        for name, spec in space.items():
            set_dotted(cfg, name, suggest(trial, name, spec))
        seed = derive(study_seed, trial.number) >> 1
        trial.set_user_attr("seed", seed)
        curve: list[float] = []

        def on_eval(step: int, mean: float) -> None:
            curve.append(mean)
            trial.set_user_attr("env_steps", step)
            trial.report(mean, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step} with evaluation mean {mean}")

        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            out = train(cfg, seed, on_eval)
        finally:
            # CPU time of this trial's thread (torch runs its ops on it with 1 intra-op thread):
            # a figure less sensitive than wall time to other load on the machine.
            trial.set_user_attr("wall_s", time.perf_counter() - t0)
            trial.set_user_attr("cpu_s", time.thread_time() - c0)
        trial.set_user_attr("env_steps", out["steps"])
        trial.set_user_attr("episodes", out["episodes"])
        trial.set_user_attr("steps_per_s", out["steps"] / out["wall_s"])
        return reduce_curve(curve, reduce_how, reduce_k)

    direction = study_spec.get("direction", "maximize")
    study = optuna.create_study(
        storage=args.storage,
        study_name=f"{study_spec.get('name', 'study')}-optuna-baseline",
        direction=direction,
        sampler=sampler,
        pruner=pruner,
    )
    print(f"optuna {optuna.__version__}, torch {torch.__version__}, gymnasium {gym.__version__}: "
          f"{n_trials} trials, n_jobs={jobs}, {base['budget']['steps']} steps per trial", flush=True)
    t0, c0 = time.perf_counter(), time.process_time()
    # catch=(Exception,): a diverging trial is FAIL and the study goes on, as in tune.
    study.optimize(objective, n_trials=n_trials, n_jobs=jobs, catch=(Exception,))
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0

    trials = study.get_trials(deepcopy=False)
    states = optuna.trial.TrialState
    count = lambda s: sum(t.state == s for t in trials)  # noqa: E731
    env_steps = sum(int(t.user_attrs.get("env_steps", 0)) for t in trials)
    complete = count(states.COMPLETE)
    result = {
        "study": str(study_path),
        "n_trials": n_trials,
        "jobs": jobs,
        "steps_per_trial": base["budget"]["steps"],
        "wall_s": wall,
        "cpu_s": cpu,
        "complete": complete,
        "pruned": count(states.PRUNED),
        "failed": count(states.FAIL),
        "best_value": study.best_value if complete else None,
        "best_params": study.best_params if complete else None,
        "env_steps": env_steps,
        "steps_per_s": env_steps / wall if wall > 0 else None,
        "trials": [
            {"number": t.number, "state": t.state.name, "value": t.value, "env_steps": t.user_attrs.get("env_steps"),
             "wall_s": t.user_attrs.get("wall_s"), "cpu_s": t.user_attrs.get("cpu_s"), "steps_per_s": t.user_attrs.get("steps_per_s"),
             "evaluations": {str(k): v for k, v in sorted(t.intermediate_values.items())}}
            for t in trials
        ],
        "versions": {"python": platform.python_version(), "optuna": optuna.__version__, "torch": torch.__version__,
                     "gymnasium": gym.__version__, "numpy": np.__version__},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    summary = {k: result[k] for k in ("wall_s", "cpu_s", "complete", "pruned", "failed", "best_value", "best_params",
                                       "env_steps", "steps_per_s")}
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
