#!/usr/bin/env bash
# Creates (once) a Python environment from a pinned requirements file and prints the
# path of its python on stdout; progress goes to stderr. The requirements file lists
# the whole closure with exact versions, so a re-created venv is the same venv.
#
#   scripts/python-venv.sh NAME REQUIREMENTS_FILE
#
# Environment:
#   IMAGEGATE_MODELS_DIR  venvs live in its .cache/venv-NAME (default: <repo>/models)
#   PYTHON                python >= 3.11 used to create the venv (default: python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NAME="${1:?usage: python-venv.sh NAME REQUIREMENTS_FILE}"
REQUIREMENTS_FILE="${2:?usage: python-venv.sh NAME REQUIREMENTS_FILE}"
MODELS_DIR="${IMAGEGATE_MODELS_DIR:-$ROOT/models}"
VENV="$MODELS_DIR/.cache/venv-$NAME"
PYTHON="${PYTHON:-python3}"
REQUIREMENTS="$(grep -v '^\s*#' "$REQUIREMENTS_FILE" | sed '/^\s*$/d')"
STAMP="$VENV/.imagegate-requirements"

up_to_date() {
  [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$REQUIREMENTS" ]]
}

if up_to_date; then
  echo "$VENV/bin/python"
  exit 0
fi

# Tests running in parallel ask for the same venv at once: one creates it while the
# others wait on the lock, then find it up to date.
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
if up_to_date; then
  echo "$VENV/bin/python"
  exit 0
fi

echo "python-venv: creating $VENV" >&2
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV" >&2
printf '%s\n' "$REQUIREMENTS" >"$VENV/requirements.txt"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
  --only-binary=:all: -r "$VENV/requirements.txt" >&2 ||
  { echo "python-venv: ERROR: pip install failed (is PyPI reachable?)" >&2; exit 1; }
printf '%s' "$REQUIREMENTS" >"$STAMP"
echo "$VENV/bin/python"
