#!/usr/bin/env bash
# imagegate's resize + encode against vipsthumbnail (libvips + libaom) and avifenc
# (aom, svt, rav1e), scored with SSIMULACRA2 at equal score. See benches/compare.py.
#   benches/compare.sh [--images N] [--repeats N] [--encoders LIST] [--json FILE]
# Needs Debian's libvips-tools and libavif-bin (with aom, svt and rav1e encoders);
# refuses to run without any of them rather than print a partial table.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

missing=()
for tool in vips vipsthumbnail avifenc avifdec python3 cargo; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "compare: missing ${missing[*]} (apt-get install libvips-tools libavif-bin)" >&2
  exit 1
fi
codecs="$(avifenc --version 2>&1)"
for codec in "aom [enc" "svt [enc" "rav1e [enc"; do
  grep -qF "$codec" <<<"$codecs" || { echo "compare: avifenc lacks the ${codec% *} encoder: $codecs" >&2; exit 1; }
done
grep -q heifsave <<<"$(vips -l 2>/dev/null)" || { echo "compare: libvips has no HEIF/AVIF writer" >&2; exit 1; }

cargo build --release --locked --manifest-path benches/tools/Cargo.toml >&2
exec python3 benches/compare.py --tools benches/tools/target/release "$@"
