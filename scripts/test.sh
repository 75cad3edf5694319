#!/usr/bin/env bash
# The whole test suite, set-up included. CI runs exactly this (.ci/run).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup/test.sh
cargo test --workspace --locked --no-fail-fast
