#!/usr/bin/env python3
"""Optuna half of the TPE step-by-step comparison: for one study on a test function (run by
Optuna's TPE, or read with `--history` from a file of `{params, value}` trials, e.g. one of our
own studies), dumps the history and, at chosen trial counts, Optuna's split, both Parzen
estimators (means, widths, weights), their log-densities at 2000 candidates drawn from the
good one, and the distribution of Optuna's next suggestion (`--draws` asks on that history,
each told FAIL so that every ask sees the same trials). `examples/tpe_compare.rs` reads the
file, computes ours for the same histories and prints both side by side:

    .venv/bin/python scripts/tpe_compare.py --function sphere --dim 5 --out /tmp/cmp.json
    cargo run --release --example tpe_compare -- /tmp/cmp.json
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import optuna
from optuna.samplers._tpe.sampler import _split_trials, default_gamma
from optuna.trial import TrialState

from tpe_quality import CASES


def dump_estimator(mpe, names):
    mix = mpe._mixture_distribution
    return {
        "weights": mix.weights.tolist(),
        "mus": [d.mu.tolist() for d in mix.distributions],
        "sigmas": [d.sigma.tolist() for d in mix.distributions],
        "names": names,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--function", default="sphere")
    parser.add_argument("--dim", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="seed of the study that makes the history")
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--at", default="10,20,40,70,99", help="trial counts to compare at")
    parser.add_argument("--draws", type=int, default=1000, help="next-suggestion draws per point")
    parser.add_argument("--history", help="JSON list of {params, value} to use instead of Optuna's own study")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    fn, bounds = next((f, b) for n, f, d, b in CASES if n == args.function and d == args.dim)
    names = [f"x.{i}" for i in range(len(bounds))]
    dists = {n: optuna.distributions.FloatDistribution(lo, hi) for n, (lo, hi) in zip(names, bounds)}

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=args.seed))
    if args.history:
        with open(args.history) as f:
            for h in json.load(f)[0]:
                study.add_trial(
                    optuna.trial.create_trial(params=dict(zip(names, h["params"])), distributions=dists, value=h["value"])
                )
    else:
        study.optimize(lambda t: fn([t.suggest_float(n, lo, hi) for n, (lo, hi) in zip(names, bounds)]), args.trials)
    history = [{"params": [t.params[n] for n in names], "value": t.value} for t in study.trials]

    points = []
    for at in [int(a) for a in args.at.split(",")]:
        sampler = optuna.samplers.TPESampler(seed=12345 + at)
        s = optuna.create_study(sampler=sampler)
        s.add_trials(study.trials[:at])
        trial = s.ask()
        trials = [t for t in s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        below, above = _split_trials(s, trials, default_gamma(len(trials)))
        space = sampler.infer_relative_search_space(s, trial)
        mpe_below = sampler._build_parzen_estimator(s, space, below, handle_below=True)
        mpe_above = sampler._build_parzen_estimator(s, space, above, handle_below=False)
        # Next suggestions: each ask is told FAIL, which TPE ignores, so all see the same history.
        s.tell(trial, state=TrialState.FAIL)
        draws = []
        for _ in range(args.draws):
            t = s.ask()
            draws.append([t.suggest_float(n, lo, hi) for n, (lo, hi) in zip(names, bounds)])
            s.tell(t, state=TrialState.FAIL)
        # Candidates from the good model, and the acquisition at them (for the density check).
        rng = np.random.RandomState(7)
        cands = mpe_below.sample(rng, 2000)
        acq = mpe_below.log_pdf(cands) - mpe_above.log_pdf(cands)
        points.append(
            {
                "at": at,
                "below": [t.number for t in below],
                "above": [t.number for t in above],
                "l": dump_estimator(mpe_below, list(space)),
                "g": dump_estimator(mpe_above, list(space)),
                "draws": draws,
                "draw_values": [fn(x) for x in draws],
                "candidates": [cands[n].tolist() for n in space],
                "log_l": mpe_below.log_pdf(cands).tolist(),
                "log_g": mpe_above.log_pdf(cands).tolist(),
                "acq": acq.tolist(),
            }
        )
        vals = [fn(x) for x in draws]
        print(f"at {at}: optuna next value mean {np.mean(vals):.4g} median {np.median(vals):.4g}")

    with open(args.out, "w") as f:
        json.dump(
            {
                "function": args.function,
                "dim": args.dim,
                "bounds": bounds,
                "names": names,
                "history": history,
                "points": points,
            },
            f,
        )


if __name__ == "__main__":
    main()
