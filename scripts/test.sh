#!/usr/bin/env bash
# Runs the whole test suite: unit, integration (CLI, real optuna), doc tests, and each
# benchmark once in test mode. Installs what is missing first (idempotent). CI runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --deps
cargo test --all-targets "$@"
cargo test --doc "$@"
