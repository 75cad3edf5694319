#!/usr/bin/env bash
# What the test suite adds to scripts/setup/run.sh (scripts/test.sh runs both):
#   - a check that every version constraint in debian-packages.txt still resolves in
#     the archive this machine sees, so a package that moved is named here, in one
#     line, before anything is built;
#   - the Debian packages marked `test` (libavif-bin, chromium);
#   - Garage, built once from crates.io at a pinned version;
#   - c2pa-python (pinned by version and sha256), the independent reader the
#     provenance tests check our Content Credentials with.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$HERE/debian-packages.sh" check
"$HERE/run.sh"
"$HERE/debian-packages.sh" install test
"$HERE/garage.sh"
"$HERE/../python-venv.sh" c2pa-python "$HERE/../requirements/c2pa-python.txt" >/dev/null
