"""Optuna's side of tests/postgres.rs: Optuna 5.0's RDBStorage on a PostgreSQL database that
tune also uses (the password comes from PGPASSWORD, as libpq reads it).

Usage:
  optuna_pg.py create URL STUDY       create the study (and, in an empty database, the schema)
  optuna_pg.py optimize URL STUDY N   load the study, print "ready", run N random-search trials
                                      (one float parameter `y`), then print the study's trial count
"""

import sys

import optuna

optuna.logging.set_verbosity(optuna.logging.ERROR)


def storage(url):
    # The URL tune takes, as SQLAlchemy's psycopg2 URL.
    return url.replace("postgresql://", "postgresql+psycopg2://", 1)


def main():
    cmd, url, name = sys.argv[1], sys.argv[2], sys.argv[3]
    if cmd == "create":
        optuna.create_study(study_name=name, storage=storage(url), direction="minimize")
        return
    if cmd == "optimize":
        study = optuna.load_study(study_name=name, storage=storage(url), sampler=optuna.samplers.RandomSampler())
        print("ready", flush=True)
        study.optimize(lambda t: t.suggest_float("y", -5.0, 5.0) ** 2, n_trials=int(sys.argv[4]))
        print(len(study.get_trials(deepcopy=False)))
        return
    sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
