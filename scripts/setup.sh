#!/usr/bin/env bash
# Everything a fresh Debian machine needs before imagegate builds, runs and tests:
#   - nasm (rav1e's assembly; without it AVIF encoding is many times slower, and the
#     imaging crate's build script refuses to build),
#   - libavif-bin (avifdec: the tests decode our AVIFs with an independent decoder),
#   - chromium (the dashboard test renders GET /dashboard in headless Chromium),
#   - the ONNX Runtime library and the NSFW model (scripts/fetch-models.sh, pinned).
# Debian packages are pinned by version; apt checks their checksums against the
# signed archive. Crates are pinned by Cargo.lock (versions and checksums).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

declare -A PINNED=(
  [nasm]="2.16.01-1"
  [libavif-bin]="0.11.1-1+deb12u1"
  [chromium]="156.0.8078.79-1~deb12u1"
)
declare -A PROVIDES=([nasm]=nasm [libavif-bin]=avifdec [chromium]=chromium)

missing=()
for pkg in "${!PINNED[@]}"; do
  command -v "${PROVIDES[$pkg]}" >/dev/null 2>&1 || missing+=("$pkg=${PINNED[$pkg]}")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
for pkg in "${!PINNED[@]}"; do
  command -v "${PROVIDES[$pkg]}" >/dev/null 2>&1 || { echo "setup: ${PROVIDES[$pkg]} is still missing" >&2; exit 1; }
done

"$ROOT/scripts/fetch-models.sh"
