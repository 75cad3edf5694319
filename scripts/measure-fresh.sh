#!/usr/bin/env bash
# Times the README's two commands from a fresh clone of this repository (committed
# state), as a new user meets them. Run it on a machine that is otherwise idle.
#
#   scripts/measure-fresh.sh serve   # clone -> scripts/serve.sh -> first served image
#   scripts/measure-fresh.sh test    # clone -> scripts/test.sh to its end
#
# Prints one line `<command> <seconds> s` on stdout; the commands' output goes to
# <clone>/measure.log. A fresh machine means no target/ (the clone has none) and, for
# a true first run, no Debian packages or Garage installed beforehand.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHAT="${1:?usage: measure-fresh.sh serve|test}"
# Beside this checkout, as CI's clone is: tests read the benchmark corpus at ../shared.
CLONE="$(mktemp -d "$(dirname "$ROOT")/imagegate-fresh.XXXXXX")"
git clone --quiet "$ROOT" "$CLONE"
cd "$CLONE"
LOG="$CLONE/measure.log"
START=$(date +%s)
case "$WHAT" in
  serve)
    PORT=8080
    scripts/serve.sh --listen "127.0.0.1:$PORT" >"$LOG" 2>&1 &
    SERVER=$!
    trap 'kill $SERVER 2>/dev/null; pkill -f "$CLONE/target/release/imagegate" || true' EXIT
    until curl -sf -m 60 "localhost:$PORT/v1/images" -H 'content-type: application/json' \
        -d '{"prompt": "a lighthouse at dusk, watercolor", "variants": [256, 512, 768]}' \
        >"$CLONE/first-image.json" 2>/dev/null; do
      kill -0 "$SERVER" 2>/dev/null || { echo "measure-fresh: serve.sh died; see $LOG" >&2; exit 1; }
      sleep 2
    done
    ;;
  test)
    scripts/test.sh >"$LOG" 2>&1 || { echo "measure-fresh: test.sh failed; see $LOG" >&2; exit 1; }
    ;;
  *) echo "usage: measure-fresh.sh serve|test" >&2; exit 2 ;;
esac
echo "$WHAT $(( $(date +%s) - START )) s"
