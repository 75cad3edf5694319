#!/usr/bin/env bash
# A simulated day through a release imagegate: cost per 1,000 delivered images with
# each lever (cache, deferral, AVIF, 768 px) on and off, from the ledger. See
# benches/simulated_day.py.   benches/simulated_day.sh [simulated_day.py options]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
command -v python3 >/dev/null || { echo "simulated_day: python3 is missing" >&2; exit 1; }
scripts/fetch-models.sh
cargo build --release --locked -p imagegate >&2
exec python3 benches/simulated_day.py --binary "${CARGO_TARGET_DIR:-target}/release/imagegate" "$@"
