#!/usr/bin/env bash
# Garage, the S3 server the storage and fleet tests start (imagegate-testkit). Debian
# has no package of it, so it is built from crates.io at a pinned version with its own
# Cargo.lock (--locked: versions and checksums) into ~/.cargo/bin, once per machine.
set -euo pipefail
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
  echo "setup: building garage $GARAGE_VERSION with cargo install (10+ minutes on 2 cores, once)" >&2
  cargo install garage --version "$GARAGE_VERSION" --locked --no-default-features --features bundled-libs,sqlite
fi
garage_ok || { echo "setup: garage $GARAGE_VERSION is still missing (looked on PATH and in ~/.cargo/bin)" >&2; exit 1; }
echo "setup: garage $GARAGE_VERSION" >&2
