#!/usr/bin/env bash
# Installs and checks the Debian packages listed in debian-packages.txt.
#
#   debian-packages.sh install run   the packages serving needs (missing ones are
#                                    installed at the archive's candidate version)
#   debian-packages.sh install test  the same for everything the tests need too
#   debian-packages.sh check         every constraint in the table (run and test) is
#                                    met by a version the archive offers; exits 1
#                                    naming each package that is not, with the
#                                    versions the archive has
#
# After installing, it prints the version of each package actually installed and
# fails when one does not meet its constraint.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# DEBIAN_PACKAGES_TABLE: another table (the test of this script uses one).
TABLE="${DEBIAN_PACKAGES_TABLE:-$HERE/debian-packages.txt}"

die() { echo "setup: ERROR: $*" >&2; exit 1; }
log() { echo "setup: $*" >&2; }

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# rows ROLE: prints "package constraint" for the packages ROLE needs (test includes run).
rows() {
  local role="$1"
  awk -v role="$role" '
    /^[[:space:]]*(#|$)/ { next }
    role == "test" || $2 == role { print $1, $3 }
  ' "$TABLE"
}

# satisfies VERSION CONSTRAINT
satisfies() {
  local version="$1" constraint="$2" upstream
  case "$constraint" in
    any) return 0 ;;
    ">="*) dpkg --compare-versions "$version" ge "${constraint#>=}" ;;
    upstream=*)
      upstream="${version#*:}"   # epoch
      upstream="${upstream%-*}"  # Debian revision
      [ "$upstream" = "${constraint#upstream=}" ]
      ;;
    *) die "debian-packages.txt: unknown constraint '$constraint'" ;;
  esac
}

installed_version() {
  dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null |
    awk '$1 == "install" && $3 == "installed" { print $4 }'
}

# The versions the configured archives offer (not the installed one), newest first.
archive_versions() {
  apt-cache madison "$1" 2>/dev/null | awk -F'|' '{ gsub(/ /, "", $2); print $2 }' | sort -u -r -V
}

lists_are_fresh() {
  # apt's lists younger than a day; without lists, madison knows nothing.
  [ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mtime -1 2>/dev/null | head -n1)" ]
}

refreshed=0
refresh_lists() {
  ((refreshed)) && return
  log "apt-get update"
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq || die "apt-get update failed (is the Debian archive reachable?)"
  refreshed=1
}

install() {
  local role="$1" pkg constraint version missing=()
  while read -r pkg constraint; do
    [ -n "$(installed_version "$pkg")" ] || missing+=("$pkg")
  done < <(rows "$role")
  if ((${#missing[@]})); then
    refresh_lists
    log "installing ${missing[*]} (the archive's current versions)"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
      die "apt-get install ${missing[*]} failed"
  fi
  local bad=0
  while read -r pkg constraint; do
    version="$(installed_version "$pkg")"
    if [ -z "$version" ]; then
      echo "setup: $pkg is still not installed" >&2
      bad=1
    elif ! satisfies "$version" "$constraint"; then
      echo "setup: $pkg $version is installed, but imagegate needs $constraint ($TABLE)" >&2
      bad=1
    else
      log "$pkg $version ($constraint)"
    fi
  done < <(rows "$role")
  ((bad == 0)) || exit 1
}

check() {
  lists_are_fresh || refresh_lists
  local pkg constraint versions version ok bad=0
  while read -r pkg constraint; do
    versions="$(archive_versions "$pkg")"
    if [ -z "$versions" ]; then
      echo "setup: check: the archive offers no version of $pkg (needed: $constraint)" >&2
      bad=1
      continue
    fi
    ok=""
    while read -r version; do
      if satisfies "$version" "$constraint"; then ok="$version"; break; fi
    done <<<"$versions"
    if [ -z "$ok" ]; then
      echo "setup: check: $pkg $constraint does not resolve: the archive has $(paste -sd, <<<"$versions" | sed 's/,/, /g'); update $TABLE" >&2
      bad=1
    else
      log "check: $pkg $constraint resolves to $ok"
    fi
  done < <(rows test)
  ((bad == 0)) || exit 1
}

case "${1:-}" in
  install) install "${2:?usage: debian-packages.sh install run|test}" ;;
  check) check ;;
  *) die "usage: debian-packages.sh install run|test | check" ;;
esac
