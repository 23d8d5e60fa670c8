#!/usr/bin/env python3
"""Reference half of the TPE search-quality comparison: Optuna's TPESampler on the built-in
test functions.

For each function (2 to 6 dimensions, standard domains, the same definitions as
src/objective/functions.rs) it runs `--seeds` studies of `--trials` trials with
`optuna.samplers.TPESampler(seed=s)` and Optuna's defaults, and writes the best value of each
study and their median as JSON. The Rust half reads that file and prints both side by side:

    .venv/bin/python scripts/tpe_quality.py                 # writes target/tpe_quality_optuna.json
    cargo bench --bench tpe_quality                         # reads it, runs ours, prints the table
    cargo bench --bench tpe_quality -- --optuna FILE        # another reference file

Takes about 12 s for 7 functions x 10 seeds x 100 trials with optuna 5.0.0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import optuna


def sphere(x):
    return sum(v * v for v in x)


def rosenbrock(x):
    return sum(100.0 * (x[i + 1] - x[i] ** 2) ** 2 + (1.0 - x[i]) ** 2 for i in range(len(x) - 1))


def rastrigin(x):
    return 10.0 * len(x) + sum(v * v - 10.0 * math.cos(2.0 * math.pi * v) for v in x)


def ackley(x):
    n = len(x)
    mean_sq = sum(v * v for v in x) / n
    mean_cos = sum(math.cos(2.0 * math.pi * v) for v in x) / n
    return -20.0 * math.exp(-0.2 * math.sqrt(mean_sq)) - math.exp(mean_cos) + 20.0 + math.e


def branin(x):
    b, c, t = 5.1 / (4.0 * math.pi**2), 5.0 / math.pi, 1.0 / (8.0 * math.pi)
    return (x[1] - b * x[0] ** 2 + c * x[0] - 6.0) ** 2 + 10.0 * (1.0 - t) * math.cos(x[0]) + 10.0


_ALPHA = [1.0, 1.2, 3.0, 3.2]
_A = [
    [10.0, 3.0, 17.0, 3.5, 1.7, 8.0],
    [0.05, 10.0, 17.0, 0.1, 8.0, 14.0],
    [3.0, 3.5, 1.7, 10.0, 17.0, 8.0],
    [17.0, 8.0, 0.05, 10.0, 0.1, 14.0],
]
_P = [
    [1312.0, 1696.0, 5569.0, 124.0, 8283.0, 5886.0],
    [2329.0, 4135.0, 8307.0, 3736.0, 1004.0, 9991.0],
    [2348.0, 1451.0, 3522.0, 2883.0, 3047.0, 6650.0],
    [4047.0, 8828.0, 8732.0, 5743.0, 1091.0, 381.0],
]


def hartmann6(x):
    return -sum(
        _ALPHA[i] * math.exp(-sum(_A[i][j] * (x[j] - 1e-4 * _P[i][j]) ** 2 for j in range(6)))
        for i in range(4)
    )


# (name, function, dimension, per-coordinate bounds): the table the Rust bench uses too.
CASES = [
    ("sphere", sphere, 2, [(-5.12, 5.12)] * 2),
    ("sphere", sphere, 5, [(-5.12, 5.12)] * 5),
    ("rosenbrock", rosenbrock, 2, [(-5.0, 10.0)] * 2),
    ("rastrigin", rastrigin, 3, [(-5.12, 5.12)] * 3),
    ("ackley", ackley, 4, [(-32.768, 32.768)] * 4),
    ("branin", branin, 2, [(-5.0, 10.0), (0.0, 15.0)]),
    ("hartmann6", hartmann6, 6, [(0.0, 1.0)] * 6),
]


def best_value(fn, bounds, seed, n_trials):
    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(direction="minimize", sampler=sampler)

    def objective(trial):
        # Same parameter names as the Rust side (`x.0`, `x.1`, ...).
        return fn([trial.suggest_float(f"x.{i}", lo, hi) for i, (lo, hi) in enumerate(bounds)])

    study.optimize(objective, n_trials=n_trials)
    return study.best_value


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="studies per function (seeds S..S+N)")
    parser.add_argument("--first-seed", type=int, default=0, help="S, the first seed")
    parser.add_argument("--trials", type=int, default=100, help="trials per study")
    parser.add_argument("--out", default="target/tpe_quality_optuna.json", help="JSON file to write")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    results = []
    for name, fn, dim, bounds in CASES:
        start = time.perf_counter()
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        bests = [best_value(fn, bounds, seed, args.trials) for seed in seeds]
        secs = (time.perf_counter() - start) / args.seeds
        median = statistics.median(bests)
        print(f"{name:<11} {dim}-D  median best {median:<12.6g} ({secs:.2f} s/study)", flush=True)
        results.append(
            {"function": name, "dim": dim, "median_best": median, "best_per_seed": bests, "secs_per_study": secs}
        )

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(
            {
                "optuna_version": optuna.__version__,
                "sampler": "TPESampler(seed=s), Optuna defaults",
                "n_trials": args.trials,
                "seeds": list(range(args.first_seed, args.first_seed + args.seeds)),
                "results": results,
            },
            f,
            indent=2,
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
