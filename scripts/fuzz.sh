#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (libFuzzer with AddressSanitizer).
#   scripts/fuzz.sh [SECONDS_PER_TARGET [TARGET...]]     default: 600 s, every target
# Findings land in fuzz/artifacts/<target>/. Fix the bug, then commit the input to
# fuzz/regressions/<target>/: `cargo test -p imagegate-fuzz` replays it from then on.
# The working corpus (fuzz/corpus/, not committed) grows across runs; the committed
# seeds are fuzz/seeds/<target>/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CARGO_FUZZ_VERSION="0.13.2"
if ! cargo fuzz --version 2>/dev/null | grep -q " ${CARGO_FUZZ_VERSION}\$"; then
  echo "fuzz: installing cargo-fuzz ${CARGO_FUZZ_VERSION}" >&2
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
# Sanitizer coverage needs -Z flags; the machine has only a stable toolchain, whose
# compiler accepts them when told it is bootstrapping.
export RUSTC_BOOTSTRAP=1

seconds="${1:-600}"
shift || true
if (($#)); then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi

declare -A MAX_LEN=([decode_image]=65536 [parse_request]=16384)
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target"
  args=(-max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1
    -max_len="${MAX_LEN[$target]:-4096}")
  [ -f "fuzz/dicts/$target.dict" ] && args+=(-dict="fuzz/dicts/$target.dict")
  echo "fuzz: $target for ${seconds}s" >&2
  cargo fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- "${args[@]}"
done
