"""Creates a study with Optuna itself and prints it as JSON (see _dump.py), for tune to read.

Usage: optuna_write.py DB STUDY  (DB: an SQLite file, or a postgresql:// URL)

Trials: two COMPLETE ones with a parameter of every kind (one of them enqueued, so every kind of
categorical choice is picked somewhere), one PRUNED with NaN and infinite intermediate values,
one FAIL, one COMPLETE with value -inf, and one WAITING (enqueued, not run).
"""

import math
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import optuna  # noqa: E402

import _dump  # noqa: E402
from _dump import print_dump  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.ERROR)
warnings.simplefilter("ignore")

CHOICES = ["adam", 3, 2.5, None, True]


def every_kind(trial):
    trial.suggest_float("float", -1.5, 2.5)
    trial.suggest_float("log_float", 1e-5, 1e-1, log=True)
    trial.suggest_float("step_float", 0.0, 1.0, step=0.25)
    trial.suggest_int("int", -10, 10)
    trial.suggest_int("log_int", 1, 1024, log=True)
    trial.suggest_int("step_int", 2, 11, step=3)
    trial.suggest_categorical("cat", CHOICES)


def main():
    db, name = sys.argv[1], sys.argv[2]
    study = optuna.create_study(
        study_name=name,
        storage=_dump.storage_url(db),
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=7),
    )
    study.set_user_attr("made_by", "optuna")

    def complete(trial):
        every_kind(trial)
        trial.set_user_attr("nested", {"a": [1, 2.5, None], "b": True})
        trial.set_user_attr("text", "ünïcode")
        trial.storage.set_trial_system_attr(trial._trial_id, "sys", [1, "two"])
        return 0.25 + trial.number

    study.optimize(complete, n_trials=1)
    study.enqueue_trial({"cat": None, "int": 3})
    study.optimize(complete, n_trials=1)

    def pruned(trial):
        trial.suggest_float("float", -1.5, 2.5)
        for step, v in enumerate([1.0, math.nan, math.inf, -math.inf, 0.5]):
            trial.report(v, step)
        raise optuna.TrialPruned()

    study.optimize(pruned, n_trials=1)

    def failing(trial):
        trial.suggest_int("int", -10, 10)
        raise RuntimeError("boom")

    study.optimize(failing, n_trials=1, catch=(RuntimeError,))
    study.optimize(lambda t: -math.inf if every_kind(t) is None else 0.0, n_trials=1)
    study.enqueue_trial({"cat": True, "float": 1.0})
    print_dump(study)


if __name__ == "__main__":
    main()
