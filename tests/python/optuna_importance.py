"""Prints Optuna's parameter importances of a study as JSON.

Usage: optuna_importance.py DB STUDY

Output: {"fanova": {param: importance} or null, "fanova_skipped": reason or null,
"default": {param: importance}}. "fanova" is
FanovaImportanceEvaluator(seed=0), the method `tune report` follows; it needs scikit-learn.
"default" is what get_param_importances uses without an evaluator (PED-ANOVA in optuna 5).
"""

import json
import sys

import optuna

optuna.logging.set_verbosity(optuna.logging.ERROR)


def main():
    db, name = sys.argv[1], sys.argv[2]
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    out = {"fanova": None, "fanova_skipped": None}
    try:
        import sklearn  # noqa: F401
    except ImportError as e:
        out["fanova_skipped"] = f"scikit-learn is missing ({e})"
    else:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        out["fanova"] = optuna.importance.get_param_importances(study, evaluator=evaluator)
    out["default"] = optuna.importance.get_param_importances(study)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
