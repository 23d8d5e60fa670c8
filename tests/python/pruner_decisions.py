"""Records Optuna 5.0's ThresholdPruner and PatientPruner decisions on random curves, for
tests/pruners.rs (which replays them against tune's pruners).

    .venv/bin/python tests/python/pruner_decisions.py > tests/fixtures/pruners/optuna_decisions.json

Curves report at irregular steps and hold NaN and infinities; each case asks the pruner after
every report, as a trial does. Non-finite numbers are written as the strings "nan", "inf" and
"-inf" (JSON has no literal for them).
"""

import datetime
import json
import math
import random

import optuna
from optuna.trial import FrozenTrial, TrialState

optuna.logging.set_verbosity(optuna.logging.ERROR)


def enc(v):
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def curve(rng, n):
    steps = sorted(rng.sample(range(0, 3 * n), n))
    out = []
    level = rng.uniform(-1, 2)
    for s in steps:
        r = rng.random()
        if r < 0.06:
            v = float("nan")
        elif r < 0.09:
            v = rng.choice([float("inf"), float("-inf")])
        else:
            level += rng.gauss(0, 0.4) if rng.random() < 0.6 else 0.0
            v = level
        out.append((s, v))
    return out


def frozen(number, state, points):
    now = datetime.datetime.now()
    value = None
    if state == TrialState.COMPLETE:
        value = points[-1][1] if math.isfinite(points[-1][1]) else 0.0
    return FrozenTrial(
        number=number,
        state=state,
        value=value,
        datetime_start=now,
        datetime_complete=now if state == TrialState.COMPLETE else None,
        params={},
        distributions={},
        user_attrs={},
        system_attrs={},
        intermediate_values=dict(points),
        trial_id=number,
    )


def decisions(pruner, study, number, points):
    out = []
    for k in range(1, len(points) + 1):
        out.append(bool(pruner.prune(study, frozen(number, TrialState.RUNNING, points[:k]))))
    return out


def main():
    rng = random.Random(20261202)
    threshold = []
    for _ in range(120):
        lower = rng.choice([None, -1.0, 0.5])
        upper = rng.choice([None, 1.0, 3.0]) if lower is not None else rng.choice([1.0, 3.0])
        cfg = {"lower": lower, "upper": upper, "n_warmup_steps": rng.choice([0, 2, 5]),
               "interval_steps": rng.choice([1, 2, 3])}
        pruner = optuna.pruners.ThresholdPruner(**cfg)
        study = optuna.create_study()
        points = curve(rng, rng.randint(1, 12))
        threshold.append({"config": cfg, "curve": [[s, enc(v)] for s, v in points],
                          "decisions": decisions(pruner, study, 0, points)})
    patient = []
    for _ in range(160):
        direction = rng.choice(["minimize", "maximize"])
        cfg = {"patience": rng.choice([0, 1, 2, 4]), "min_delta": rng.choice([0.0, 0.1, 0.5])}
        wrapped = rng.choice([None, "median"])
        study = optuna.create_study(direction=direction)
        completed = []
        if wrapped == "median":
            for i in range(rng.randint(0, 4)):
                pts = curve(rng, rng.randint(3, 12))
                study.add_trial(optuna.trial.create_trial(
                    value=0.0, intermediate_values=dict(pts), state=TrialState.COMPLETE))
                completed.append([[s, enc(v)] for s, v in pts])
        inner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0) if wrapped else None
        pruner = optuna.pruners.PatientPruner(inner, **cfg)
        points = curve(rng, rng.randint(1, 12))
        patient.append({"direction": direction, "config": cfg, "wrapped": wrapped, "completed": completed,
                        "curve": [[s, enc(v)] for s, v in points],
                        "decisions": decisions(pruner, study, len(completed), points)})
    print(json.dumps({"optuna": optuna.__version__, "threshold": threshold, "patient": patient}, indent=None))


if __name__ == "__main__":
    main()
