#!/usr/bin/env bash
# Runs imagegate on its embedded defaults (config/imagegate.toml): local provider,
# local store under data/, SQLite ledger. Extra arguments go to `imagegate serve`.
# Set-up installs only what serving needs (scripts/setup/run.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup/run.sh
exec cargo run --release --locked -p imagegate -- serve "$@"
