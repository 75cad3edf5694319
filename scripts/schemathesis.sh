#!/usr/bin/env bash
# Hostile HTTP input: Schemathesis generates requests from the server's own
# /openapi.json and sends them to the real binary; any 5xx, any answer that does not
# match the document (schema, status code, content type) fails the run.
#
# The server runs on a free loopback port with a throwaway configuration: the local
# provider with 1 ms latency, a local store and SQLite ledger in a temp dir, the real
# ONNX classifier, and a profile of one 64 px AVIF at speed 9 (libaom's fastest) so misses stay cheap.
# Schemathesis and its whole dependency closure live in a pinned venv.
#
# Usage: scripts/schemathesis.sh [extra `schemathesis run` arguments]
#
# Environment:
#   IMAGEGATE_BIN          the imagegate binary (default: build it with cargo)
#   IMAGEGATE_MODELS_DIR   classifier files (default: <repo>/models)
#   SCHEMATHESIS_MAX_EXAMPLES  generated cases per operation and phase (default: 300)
#   SCHEMATHESIS_SEED      Hypothesis seed (default: random; printed in the output)
#   PYTHON                 python >= 3.10 for the venv (default: python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODELS_DIR="${IMAGEGATE_MODELS_DIR:-$ROOT/models}"
VENV="$ROOT/.tools/schemathesis-venv"
PYTHON="${PYTHON:-python3}"
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-300}"

die() { echo "schemathesis.sh: ERROR: $*" >&2; exit 1; }

# The full closure (pip install schemathesis==4.32.5, then pip freeze), so a
# re-created venv is the same venv.
REQUIREMENTS="schemathesis==4.32.5
anyio==4.16.0
certifi==2026.10.19.post1
charset-normalizer==3.5.2
click==8.5.1
graphql-core==3.3.2
harfile==0.6.0
hypothesis==6.170.17
hypothesis-graphql==0.13.5
idna==3.20
iniconfig==2.3.1
jsonschema_rs==0.60.3
markdown-it-py==4.3.0
MarkupSafe==3.0.4
mdurl==0.1.2
packaging==26.3
pluggy==1.7.0
Pygments==2.21.0
pyrate-limiter==4.5.1
pytest==9.2.0
PyYAML==6.0.4
requests==2.34.2
rich==15.0.0
sortedcontainers==2.4.0
typing_extensions==4.16.0
urllib3==2.8.0
Werkzeug==3.1.9"

# --- tools: refuse to run without them, never skip -----------------------------------
command -v "$PYTHON" >/dev/null || die "$PYTHON not found (schemathesis needs python >= 3.10)"
for f in open-nsfw.onnx libonnxruntime.so.1.31.1; do
  [[ -f "$MODELS_DIR/$f" ]] || die "$MODELS_DIR/$f is missing: run scripts/fetch-models.sh"
done

STAMP="$VENV/.imagegate-requirements"
if ! [[ -x "$VENV/bin/schemathesis" && -f "$STAMP" && "$(cat "$STAMP")" == "$REQUIREMENTS" ]]; then
  echo "schemathesis.sh: creating $VENV" >&2
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV" >&2 || die "could not create a venv with $PYTHON"
  printf '%s\n' "$REQUIREMENTS" >"$VENV/requirements.txt"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: -r "$VENV/requirements.txt" >&2 ||
    die "pip install failed (is PyPI reachable?)"
  printf '%s' "$REQUIREMENTS" >"$STAMP"
fi

BIN="${IMAGEGATE_BIN:-}"
if [[ -z "$BIN" ]]; then
  (cd "$ROOT" && cargo build --quiet -p imagegate) || die "cargo build failed"
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/imagegate"
fi
[[ -x "$BIN" ]] || die "$BIN is not an executable"

# --- the server ------------------------------------------------------------------------
WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cat >"$WORK/imagegate.toml" <<EOF
pricing = "$ROOT/config/pricing.toml"

[server]
listen = "127.0.0.1:$PORT"
max_body_bytes = 16384
request_timeout_secs = 60

# Schemathesis is one anonymous loopback caller sending thousands of requests.
[server.auth]
requests_per_minute = 1000000
burst = 100000

[concurrency]
cpu_workers = 2

[defaults]
size = "64x64"

[[providers]]
kind = "local"
latency_ms = 1

[storage]
kind = "local"
root = "$WORK/data/objects"
public_base_url = "http://127.0.0.1:$PORT/cdn"

[ledger]
url = "sqlite://$WORK/data/ledger.db"

[safety]
classifier = true
model = "$MODELS_DIR/open-nsfw.onnx"
runtime_library = "$MODELS_DIR/libonnxruntime.so.1.31.1"

[profiles.default]
variants = [64]
formats = ["avif"]
avif = { quality = 50, speed = 9 }
EOF

"$BIN" --config "$WORK/imagegate.toml" serve >"$WORK/server.out" 2>"$WORK/server.log" &
SERVER_PID=$!
for _ in $(seq 1 300); do
  grep -q "^imagegate listening on " "$WORK/server.out" 2>/dev/null && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; die "the server exited at start-up"; }
  sleep 0.1
done
grep -q "^imagegate listening on " "$WORK/server.out" || die "the server did not start within 30 s"

# --- the run ---------------------------------------------------------------------------
SEED_ARGS=()
[[ -n "${SCHEMATHESIS_SEED:-}" ]] && SEED_ARGS=(--seed "$SCHEMATHESIS_SEED")
status=0
(
  cd "$WORK" # Hypothesis keeps its example database in the working directory
  "$VENV/bin/schemathesis" run "http://127.0.0.1:$PORT/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "$MAX_EXAMPLES" \
    --workers 2 \
    --request-timeout 60 \
    --suppress-health-check too_slow \
    "${SEED_ARGS[@]}" "$@"
) || status=$?

if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  echo "schemathesis.sh: the server died during the run; its log:" >&2
  tail -50 "$WORK/server.log" >&2
  status=1
fi
# Errors the server logged (each 5xx logs one) help explain a failure.
if sed 's/\x1b\[[0-9;]*m//g' "$WORK/server.log" | grep -q ' ERROR '; then
  echo "schemathesis.sh: errors the server logged during the run:" >&2
  sed 's/\x1b\[[0-9;]*m//g' "$WORK/server.log" | grep ' ERROR ' | tail -20 >&2
fi
exit "$status"
