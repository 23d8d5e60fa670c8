#!/usr/bin/env bash
# One-command set-up: installs what is missing (cmake, a project-local Python venv with
# libtorch from PyPI's torch wheel and the Python test peers), builds `tune` in release mode,
# and runs the default study. Idempotent: a second run only checks and rebuilds what changed.
#
#   scripts/setup.sh            set up, build, run the default study
#   scripts/setup.sh --no-run   set up and build only
#   scripts/setup.sh --deps     install dependencies only (used by scripts/test.sh and CI)
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-all}
DEFAULT_STUDY=studies/per_cartpole.yaml

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

command -v cargo >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs first" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 not found: install Python 3 (apt-get install python3)" >&2; exit 2; }

# System packages: cmake builds ALE (Atari); python3-venv creates the venv on Debian;
# postgresql for the storage tests.
missing=()
command -v cmake >/dev/null || missing+=(cmake)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
# PostgreSQL server binaries: scripts/test.sh runs a throwaway server for the PostgreSQL tests.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} (apt-get)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Project-local venv with torch (libtorch for tch) and optuna (compatibility peer).
if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    python3 -m venv .venv
fi
stamp=.venv/.tune-requirements
if ! cmp -s scripts/requirements.txt "$stamp"; then
    say "installing Python packages into .venv (torch is ~4.7 GB; takes a few minutes the first time)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -r scripts/requirements.txt
    cp scripts/requirements.txt "$stamp"
fi

# .cargo/config.toml points LIBTORCH at .libtorch; build.rs embeds its lib/ as rpath.
torch_dir=$(.venv/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))')
if [ "$(readlink .libtorch 2>/dev/null)" != "$torch_dir" ]; then
    ln -sfn "$torch_dir" .libtorch
fi

[ "$MODE" = --deps ] && exit 0

say "building tune (release; the first build compiles libtorch bindings, ~5 min on 2 cores)"
cargo build --release --quiet

if [ "$MODE" != --no-run ]; then
    say "running the default study: $DEFAULT_STUDY"
    ./target/release/tune run "$DEFAULT_STUDY"
fi
