"""Requests optuna-dashboard's JSON API on a study that tune wrote and prints what came back.

Usage: dashboard_api.py DB STUDY  (DB: an SQLite file, or a postgresql:// URL)

The dashboard's WSGI app (`optuna_dashboard.wsgi`) is called in-process, as a WSGI server would
call it. Output: {"studies_status", "study_names", "detail_status", "n_trials", "states",
"has_intermediate_values", "importances_status"}.
"""

import io
import json
import sys
from wsgiref.util import setup_testing_defaults

import optuna
import optuna_dashboard

optuna.logging.set_verbosity(optuna.logging.ERROR)


def get(app, path):
    """GETs `path` from the WSGI app; returns (status code, parsed JSON body)."""
    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    code = int(status[0].split()[0])
    return code, json.loads(body) if body else None


def main():
    db, name = sys.argv[1], sys.argv[2]
    if db.startswith("postgresql://"):
        url = db.replace("postgresql://", "postgresql+psycopg2://", 1)  # SQLAlchemy 2.1: bare means psycopg 3
    else:
        url = db if "://" in db else f"sqlite:///{db}"
    app = optuna_dashboard.wsgi(url)
    out = {}
    code, studies = get(app, "/api/studies")
    out["studies_status"] = code
    out["study_names"] = [s["study_name"] for s in studies["study_summaries"]]
    study_id = next(s["study_id"] for s in studies["study_summaries"] if s["study_name"] == name)
    code, detail = get(app, f"/api/studies/{study_id}")
    out["detail_status"] = code
    out["n_trials"] = len(detail["trials"])
    out["states"] = [t["state"] for t in detail["trials"]]
    out["has_intermediate_values"] = detail["has_intermediate_values"]
    code, _ = get(app, f"/api/studies/{study_id}/param_importances")
    out["importances_status"] = code
    print(json.dumps(out))


if __name__ == "__main__":
    main()
