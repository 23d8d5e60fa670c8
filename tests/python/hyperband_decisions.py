"""Records Optuna 5.0's HyperbandPruner at work, for tests/pruners.rs (which replays it against
tune's pruner).

    .venv/bin/python tests/python/hyperband_decisions.py > tests/fixtures/pruners/optuna_hyperband.json

Each case is a real study run one trial at a time: the objective reports a curve (fixed by the
case and the trial number, so it can be replayed without the sampler) and asks `should_prune`
after every report. For each trial the fixture keeps its curve, how many reports it made before
it was pruned (all of them when it completed), its bracket, and the trial numbers the sampler
was shown when the trial sampled its parameter (with whether Optuna's pruner had set up its
brackets by then). Non-finite numbers are written as the strings "nan", "inf" and "-inf".
"""

import json
import math
import random

import optuna
from optuna.samplers import RandomSampler

from pruner_decisions import enc

optuna.logging.set_verbosity(optuna.logging.ERROR)


class RecordingSampler(RandomSampler):
    """A random sampler that records which trials the study showed it."""

    def __init__(self, seed, pruner, seen):
        super().__init__(seed=seed)
        self._pruner = pruner
        self._seen = seen

    def sample_independent(self, study, trial, param_name, param_distribution):
        self._seen[trial.number] = {
            "numbers": [t.number for t in study.get_trials(deepcopy=False)],
            "initialized": len(self._pruner._pruners) > 0,
        }
        return super().sample_independent(study, trial, param_name, param_distribution)


def curve(seed, number, length, irregular):
    rng = random.Random(seed * 100_003 + number)
    steps = sorted(rng.sample(range(0, 2 * length), length)) if irregular else list(range(length))
    level = rng.uniform(0.0, 10.0)
    slope = rng.uniform(-0.3, 0.3)
    out = []
    for i, s in enumerate(steps):
        r = rng.random()
        if r < 0.01:
            v = float("nan")
        else:
            v = level + slope * i + rng.gauss(0, 0.5)
        out.append((s, v))
    return out


def run_case(case_seed, name, direction, cfg, n_trials, length, vary_length, irregular):
    pruner = optuna.pruners.HyperbandPruner(**cfg)
    seen = {}
    study = optuna.create_study(study_name=name, direction=direction, pruner=pruner,
                                sampler=RecordingSampler(case_seed, pruner, seen))
    rng = random.Random(case_seed)
    lengths = [rng.randint(max(2, length // 2), length) if vary_length else length for _ in range(n_trials)]
    reports = {}

    def objective(trial):
        trial.suggest_float("x", 0.0, 1.0)
        points = curve(case_seed, trial.number, lengths[trial.number], irregular)
        for k, (s, v) in enumerate(points):
            trial.report(v, s)
            reports[trial.number] = k + 1
            if trial.should_prune():
                raise optuna.TrialPruned()
        last = points[-1][1]
        return last if math.isfinite(last) else 0.0

    study.optimize(objective, n_trials=n_trials)
    trials = []
    for t in study.get_trials(deepcopy=False):
        points = curve(case_seed, t.number, lengths[t.number], irregular)
        trials.append({
            "number": t.number,
            "state": t.state.name,
            "curve": [[s, enc(v)] for s, v in points],
            "reports": reports.get(t.number, 0),
            "bracket": pruner._get_bracket_id(study, t),
            "sampler_saw": seen[t.number],
        })
    return {"name": name, "direction": direction, "config": cfg, "trials": trials,
            "n_brackets": pruner._n_brackets}


def main():
    cases = []
    specs = [
        # (name, direction, config, n_trials, length, vary_length, irregular)
        ("hb-fixed", "minimize", dict(min_resource=1, max_resource=27, reduction_factor=3), 80, 27, False, False),
        ("hb-auto", "maximize", dict(min_resource=1, max_resource="auto", reduction_factor=3), 80, 30, False, False),
        ("hb-eta2", "minimize", dict(min_resource=2, max_resource=32, reduction_factor=2), 70, 32, False, True),
        ("hb-auto-varied", "minimize", dict(min_resource=1, max_resource="auto", reduction_factor=2), 70, 20, True, False),
        ("hb-bootstrap", "maximize", dict(min_resource=1, max_resource=16, reduction_factor=2, bootstrap_count=2),
         60, 16, False, False),
        ("hb-default", "minimize", dict(), 60, 40, False, True),
    ]
    for i, (name, direction, cfg, n_trials, length, vary, irregular) in enumerate(specs):
        cases.append(run_case(20261202 + i, name, direction, cfg, n_trials, length, vary, irregular))
    print(json.dumps({"optuna": optuna.__version__, "cases": cases}, indent=None))


if __name__ == "__main__":
    main()
