"""Throughput of one study on one PostgreSQL server: W worker processes, a zero-cost objective
(TPE on 3 floats), N trials in all, for tune and for Optuna 5.0's RDBStorage, side by side in
one run on the same server. Each side gets a fresh database.

Usage (scripts/pg_bench.sh starts a throwaway server and runs this):
  .venv/bin/python scripts/pg_throughput.py ADMIN_URL [--workers 16] [--trials 2000] [--tune target/release/tune]

ADMIN_URL is a postgresql:// URL of a role that may create databases (password in PGPASSWORD).
Prints trials/s for each side, their ratio, and the errors each side printed (goal: none).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import optuna
import psycopg2

STUDY = """name: throughput
direction: minimize
n_trials: {trials}
seed: 1
sampler: {{type: tpe}}
pruner: {{type: none}}
parallelism: {{jobs: 1}}
objective: {{type: function, name: sphere, dim: 3}}
search_space:
  x.0: {{type: float, low: -5, high: 5}}
  x.1: {{type: float, low: -5, high: 5}}
  x.2: {{type: float, low: -5, high: 5}}
"""

WORKER = """
import sys, optuna
optuna.logging.set_verbosity(optuna.logging.ERROR)
url, n = sys.argv[1], int(sys.argv[2])
study = optuna.load_study(study_name="throughput", storage=url, sampler=optuna.samplers.TPESampler())
study.optimize(lambda t: sum(t.suggest_float(f"x.{i}", -5, 5) ** 2 for i in range(3)), n_trials=n)
"""


def fresh_db(admin, name):
    conn = psycopg2.connect(admin)
    conn.autocommit = True
    with conn.cursor() as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
        c.execute(f"CREATE DATABASE {name}")
    conn.close()
    return admin.rsplit("/", 1)[0] + "/" + name


def finished(url):
    conn = psycopg2.connect(url)
    with conn.cursor() as c:
        c.execute("SELECT count(*), count(DISTINCT number) FROM trials WHERE state = 'COMPLETE'")
        n, distinct = c.fetchone()
    conn.close()
    return n, distinct


def run_all(cmds, env):
    start = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in cmds]
    errors = []
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0 or "rror" in err:
            errors.append(f"exit {p.returncode}: {err.strip()[-300:]}")
    return time.perf_counter() - start, errors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("admin")
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--tune", default="target/release/tune")
    a = ap.parse_args()
    env = dict(os.environ)

    url = fresh_db(a.admin, "throughput_tune")
    with tempfile.TemporaryDirectory() as d:
        study = os.path.join(d, "study.yaml")
        with open(study, "w") as f:
            f.write(STUDY.format(trials=a.trials))
        cmd = [a.tune, "run", study, "--quiet", "--storage", url]
        tune_s, tune_err = run_all([cmd] * a.workers, env)
    tune_n = finished(url)

    url = fresh_db(a.admin, "throughput_optuna")
    sa_url = url.replace("postgresql://", "postgresql+psycopg2://", 1)
    optuna.create_study(study_name="throughput", storage=sa_url)
    per = a.trials // a.workers
    cmd = [sys.executable, "-c", WORKER, sa_url, str(per)]
    optuna_s, optuna_err = run_all([cmd] * a.workers, env)
    optuna_n = finished(url)

    t_rate, o_rate = tune_n[0] / tune_s, optuna_n[0] / optuna_s
    print(f"{a.workers} processes, zero-cost objective, TPE on 3 floats, one PostgreSQL server:")
    print(f"  tune:   {tune_n[0]} trials ({tune_n[1]} distinct numbers) in {tune_s:.1f} s = {t_rate:.1f} trials/s, errors: {len(tune_err)}")
    print(f"  optuna: {optuna_n[0]} trials ({optuna_n[1]} distinct numbers) in {optuna_s:.1f} s = {o_rate:.1f} trials/s, errors: {len(optuna_err)}")
    print(f"  ratio:  {t_rate / o_rate:.1f}x")
    for e in tune_err + optuna_err:
        print("  error:", e)


if __name__ == "__main__":
    main()
