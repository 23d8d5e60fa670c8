"""Shared JSON dump of an Optuna study for tests/optuna_compat.rs.

Non-finite floats become the strings "nan", "inf" and "-inf" (JSON has no such numbers);
datetimes are ISO strings; distributions are Optuna's own distribution JSON.
"""

import json
import math

import optuna


def storage_url(db):
    """An SQLite file path as Optuna's URL; tune's postgresql:// URL as SQLAlchemy's psycopg2
    one (SQLAlchemy 2.1 takes a bare postgresql:// to mean psycopg 3). PostgreSQL passwords come
    from PGPASSWORD, which psycopg2 reads as libpq does."""
    if db.startswith("postgresql://"):
        return db.replace("postgresql://", "postgresql+psycopg2://", 1)
    return db if "://" in db else f"sqlite:///{db}"


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    return v


def dump(study):
    """The study and its trials as a JSON-ready dict."""
    trials = []
    for t in study.get_trials(deepcopy=False):
        trials.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": _clean(t.value),
                "params": _clean(t.params),
                "distributions": {
                    k: json.loads(optuna.distributions.distribution_to_json(d)) for k, d in t.distributions.items()
                },
                "intermediate_values": _clean(t.intermediate_values),
                "user_attrs": _clean(t.user_attrs),
                "system_attrs": _clean(t.system_attrs),
                "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
                "datetime_complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
            }
        )
    best = None
    try:
        best = study.best_trial.number
    except ValueError:
        pass
    return {
        "direction": study.direction.name,
        "user_attrs": _clean(study.user_attrs),
        "best_trial": best,
        "trials": trials,
    }


def print_dump(study):
    print(json.dumps(dump(study), allow_nan=False))
