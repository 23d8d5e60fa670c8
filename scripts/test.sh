#!/usr/bin/env bash
# Runs the whole test suite: unit, integration (CLI, real optuna, a real PostgreSQL server), doc
# tests, and each benchmark once in test mode. Installs what is missing first (idempotent). CI
# runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --deps

# A throwaway PostgreSQL server for the storage tests, removed at the end even when tests fail.
pgdir=$(mktemp -u /tmp/tune-pg.XXXXXX)
if url=$(scripts/pg.sh start "$pgdir"); then
    trap 'scripts/pg.sh stop "$pgdir"' EXIT
    trap 'exit 130' INT TERM
    export TUNE_TEST_POSTGRES="$url" TUNE_TEST_PG_DIR="$pgdir"
    PGPASSWORD=$(cat "$pgdir/password")
    export PGPASSWORD
else
    echo "warning: PostgreSQL could not be started; the PostgreSQL tests will skip" >&2
fi
cargo test --all-targets "$@"
cargo test --doc "$@"
