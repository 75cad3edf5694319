#!/usr/bin/env bash
# What building and serving imagegate needs on a fresh Debian machine with Rust, and
# nothing more (scripts/serve.sh runs it):
#   - Debian packages marked `run` in debian-packages.txt (nasm, libaom-dev and what
#     aom-sys's build needs), installed at the archive's current versions and checked
#     against their constraints;
#   - the ONNX Runtime library and the NSFW model (scripts/fetch-models.sh, pinned by
#     sha256).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$HERE/debian-packages.sh" install run
"$HERE/../fetch-models.sh"
