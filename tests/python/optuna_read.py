"""Loads a study that tune wrote and prints it as JSON (see _dump.py).

Usage: optuna_read.py DB STUDY  (DB: an SQLite file, or a postgresql:// URL) [--add-trial]

With --add-trial, Optuna first runs one trial of its own in the study (study.optimize with a
RandomSampler over the parameters `x` float [0, 1] and `n` int [1, 8]), so tune can read a
trial Optuna added.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import optuna  # noqa: E402

import _dump  # noqa: E402
from _dump import print_dump  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.ERROR)


def main():
    db, name = sys.argv[1], sys.argv[2]
    study = optuna.load_study(study_name=name, storage=_dump.storage_url(db), sampler=optuna.samplers.RandomSampler(seed=1))
    if "--add-trial" in sys.argv[3:]:

        def objective(trial):
            x = trial.suggest_float("x", 0.0, 1.0)
            n = trial.suggest_int("n", 1, 8)
            trial.report(x, 0)
            trial.set_user_attr("by", "optuna")
            return x * n

        study.optimize(objective, n_trials=1)
    print_dump(study)


if __name__ == "__main__":
    main()
