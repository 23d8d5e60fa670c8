#!/usr/bin/env bash
# The PostgreSQL figures, on a throwaway server (scripts/pg.sh) removed at the end:
#   1. ask+tell overhead per trial, 10 params, up to a 1000-trial study (benches/ask_tell.rs,
#      next to in-memory and SQLite);
#   2. throughput: 16 worker processes, zero-cost objective, 2000 trials, tune and Optuna 5.0's
#      RDBStorage on the same server in one run (scripts/pg_throughput.py).
#
#   scripts/pg_bench.sh [--workers N] [--trials N]   (arguments go to pg_throughput.py)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --no-run
pgdir=$(mktemp -u /tmp/tune-pgbench.XXXXXX)
url=$(scripts/pg.sh start "$pgdir")
trap 'scripts/pg.sh stop "$pgdir"' EXIT
trap 'exit 130' INT TERM
PGPASSWORD=$(cat "$pgdir/password")
export PGPASSWORD TUNE_TEST_POSTGRES="$url"
cargo bench --bench ask_tell -- --seeds 1
.venv/bin/python scripts/pg_throughput.py "$url" "$@"
