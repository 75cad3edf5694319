#!/usr/bin/env bash
# The HTTP paths under load (cache hits, misses, peak RSS, cold start) on a release
# build; see benches/load.py.   benches/load.sh [load.py options]
# Needs wrk (Debian's wrk package) and the models (scripts/setup/run.sh); refuses to run
# without them rather than print a partial table.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
for tool in wrk python3 cargo; do
  command -v "$tool" >/dev/null 2>&1 || { echo "load: $tool is missing (apt-get install wrk)" >&2; exit 1; }
done
scripts/fetch-models.sh
cargo build --release --locked -p imagegate >&2
exec python3 benches/load.py --binary "${CARGO_TARGET_DIR:-target}/release/imagegate" "$@"
