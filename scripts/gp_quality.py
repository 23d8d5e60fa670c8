#!/usr/bin/env python3
"""Reference half of the GP sampler comparison: Optuna 5.0's GPSampler on built-in test
functions, and its overhead per trial.

For each function (the definitions and domains of scripts/tpe_quality.py) it runs `--seeds`
studies of `--trials` trials with `optuna.samplers.GPSampler(seed=s)` and Optuna's defaults and
records each study's best value. With `--overhead N,M` it also runs one Branin study to the
largest of them and records the mean seconds per trial over the 10 trials before each count
(the objective costs nothing, so that is the sampler's time). The Rust half reads the file and
prints both side by side, with tune's TPE next to them:

    .venv/bin/python scripts/gp_quality.py                  # writes target/gp_quality_optuna.json
    cargo bench --bench gp_quality                          # reads it, runs ours, prints the table

The overhead is timed twice: with greenlet, which lets Optuna batch its acquisition searches (its
best), and in a child process with greenlet hidden (`--no-greenlet`), as `pip install optuna`
alone gives (Optuna then warns and searches one start at a time).

Optuna's GP takes about 0.3 s a trial here, so the defaults (5 functions x 20 seeds x 60 trials,
overhead at 100 and 300 trials) take about 45 minutes on one core: run it in the background.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

if "--no-greenlet" in sys.argv:
    sys.modules["greenlet"] = None  # Optuna's `from greenlet import greenlet` then fails

import optuna

from tpe_quality import CASES

# The GP comparison's functions: smooth and multimodal, 2 to 6 dimensions.
GP_CASES = [("branin", 2), ("rosenbrock", 2), ("rastrigin", 3), ("ackley", 4), ("hartmann6", 6)]


def objective_of(fn, bounds):
    def objective(trial):
        # Same parameter names as the Rust side (`x.0`, `x.1`, ...).
        return fn([trial.suggest_float(f"x.{i}", lo, hi) for i, (lo, hi) in enumerate(bounds)])

    return objective


def best_value(fn, bounds, seed, n_trials):
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.GPSampler(seed=seed))
    study.optimize(objective_of(fn, bounds), n_trials=n_trials)
    return study.best_value


def overhead(counts):
    """Mean seconds per trial over the 10 trials before each count, on one Branin study."""
    fn, bounds = next((fn, b) for name, fn, dim, b in CASES if name == "branin")
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.GPSampler(seed=0))
    stamps = []
    study.optimize(objective_of(fn, bounds), n_trials=max(counts),
                   callbacks=[lambda s, t: stamps.append(time.perf_counter())])
    return {str(n): (stamps[n - 1] - stamps[n - 11]) / 10 for n in counts}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="studies per function (seeds S..S+N)")
    parser.add_argument("--first-seed", type=int, default=0, help="S, the first seed")
    parser.add_argument("--trials", type=int, default=60, help="trials per study")
    parser.add_argument("--overhead", default="100,300", help="trial counts to time (empty: none)")
    parser.add_argument("--out", default="target/gp_quality_optuna.json", help="JSON file to write")
    parser.add_argument("--no-greenlet", action="store_true", help="hide greenlet from Optuna (overhead only)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    results = []
    for name, dim in GP_CASES if args.seeds > 0 else []:
        fn, bounds = next((fn, b) for n, fn, d, b in CASES if n == name and d == dim)
        start = time.perf_counter()
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        bests = [best_value(fn, bounds, seed, args.trials) for seed in seeds]
        secs = (time.perf_counter() - start) / args.seeds
        median = statistics.median(bests)
        print(f"{name:<11} {dim}-D  median best {median:<12.6g} ({secs:.2f} s/study)", flush=True)
        results.append(
            {"function": name, "dim": dim, "median_best": median, "best_per_seed": bests, "secs_per_study": secs}
        )
    counts = [int(c) for c in args.overhead.split(",") if c]
    per_trial = overhead(counts) if counts else {}
    for n, s in per_trial.items():
        print(f"overhead at {n} trials: {s * 1000:.1f} ms/trial", flush=True)
    without = {}
    if counts and not args.no_greenlet:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "plain.json")
            subprocess.run([sys.executable, __file__, "--seeds", "0", "--overhead", args.overhead,
                            "--no-greenlet", "--out", out], check=True, stdout=subprocess.DEVNULL)
            with open(out) as f:
                without = json.load(f)["secs_per_trial_at"]
        for n, s in without.items():
            print(f"overhead at {n} trials without greenlet: {s * 1000:.1f} ms/trial", flush=True)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(
            {
                "optuna_version": optuna.__version__,
                "sampler": "GPSampler(seed=s), Optuna defaults",
                "n_trials": args.trials,
                "seeds": list(range(args.first_seed, args.first_seed + args.seeds)),
                "results": results,
                "greenlet": not args.no_greenlet and "greenlet" in sys.modules and sys.modules["greenlet"] is not None,
                "secs_per_trial_at": per_trial,
                "secs_per_trial_without_greenlet_at": without,
            },
            f,
            indent=2,
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
