#!/usr/bin/env bash
# Everything a fresh Debian machine needs before imagegate builds, runs and tests:
#   - nasm (rav1e's assembly; without it AVIF encoding is many times slower, and the
#     imaging crate's build script refuses to build),
#   - libaom-dev, the default AVIF encoder, with libclang-dev and pkg-config, which
#     aom-sys's build script needs to generate its bindings,
#   - libavif-bin (avifdec: the tests decode our AVIFs with an independent decoder),
#   - chromium (the dashboard test renders GET /dashboard in headless Chromium),
#   - the ONNX Runtime library and the NSFW model (scripts/fetch-models.sh, pinned),
#   - Garage 2.5.0, the S3 server the storage tests run against (imagegate-testkit),
#     built from crates.io into ~/.cargo/bin (several minutes, once).
# Debian packages are pinned by version; apt checks their checksums against the
# signed archive. Crates are pinned by Cargo.lock (versions and checksums); Garage by
# its version, and --locked builds it from its own Cargo.lock (checksums included).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

declare -A PINNED=(
  [nasm]="2.16.01-1"
  [libaom-dev]="3.6.0-1+deb12u3"
  [libclang-dev]="1:14.0-55.7~deb12u1"
  [pkg-config]="1.8.1-1"
  [libavif-bin]="0.11.1-1+deb12u1"
  [chromium]="156.0.8078.79-1~deb12u1"
)
# Packages with a command are checked by that command; the -dev libraries by dpkg.
declare -A PROVIDES=([nasm]=nasm [libavif-bin]=avifdec [chromium]=chromium [pkg-config]=pkg-config)
present() {
  local pkg="$1"
  if [ -n "${PROVIDES[$pkg]:-}" ]; then
    command -v "${PROVIDES[$pkg]}" >/dev/null 2>&1
  else
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"
  fi
}

missing=()
for pkg in "${!PINNED[@]}"; do
  present "$pkg" || missing+=("$pkg=${PINNED[$pkg]}")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
for pkg in "${!PINNED[@]}"; do
  present "$pkg" || { echo "setup: $pkg is still missing" >&2; exit 1; }
done

GARAGE_VERSION="2.5.0"
garage_ok() {
  local bin version
  for bin in "$(command -v garage 2>/dev/null || true)" "$HOME/.cargo/bin/garage"; do
    [ -n "$bin" ] && [ -x "$bin" ] || continue
    version="$("$bin" --version 2>/dev/null)" || continue
    grep -Eq "(^|[^0-9.])${GARAGE_VERSION//./\\.}([^0-9.]|\$)" <<<"$version" && return 0
  done
  return 1
}
if ! garage_ok; then
  echo "setup: building garage $GARAGE_VERSION with cargo install (several minutes)" >&2
  cargo install garage --version 2.5.0 --locked --no-default-features --features bundled-libs,sqlite
fi
garage_ok || { echo "setup: garage $GARAGE_VERSION is still missing (looked on PATH and in ~/.cargo/bin)" >&2; exit 1; }

"$ROOT/scripts/fetch-models.sh"
