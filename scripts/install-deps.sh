#!/usr/bin/env bash
# Install what the tests, the demo and the benchmarks need, and say which PostgreSQL to use:
#   - PostgreSQL N + pg_partman for N (Debian packages postgresql-N, postgresql-N-partman),
#   - the venv .venv with partguard installed editable with its test extras,
#   - promtool (Debian package prometheus; optional: its tests are skipped without it).
# Prints PARTGUARD_PG_BIN=... and writes that directory to .pg_bin for the Makefile.
#
# Idempotent and fast when everything is there: apt is only used when no installed PostgreSQL
# has pg_partman (or promtool is missing), pip only when pyproject.toml changed.
# --apt (used by CI): always `apt-get update` and pick the newest N that apt can install
# together with its partman package (the server already installed may have no partman package).
set -euo pipefail
cd "$(dirname "$0")/.."

FORCE_APT=0
if [ "${1:-}" = "--apt" ]; then FORCE_APT=1; fi
MAJORS="18 17 16 15 14"

log() { echo "install-deps: $*" >&2; }
die() { log "error: $*"; exit 1; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then SUDO=(sudo); fi
apt_get() { "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "$@" </dev/null; }

# Server and partman of major $1 are both installed.
usable() {
  [ -x "/usr/lib/postgresql/$1/bin/postgres" ] \
    && [ -f "/usr/share/postgresql/$1/extension/pg_partman.control" ]
}
# apt can install package $1.
candidate() {
  local c
  c=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
  [ -n "$c" ] && [ "$c" != "(none)" ]
}
have_promtool() { command -v promtool >/dev/null 2>&1; }

APT_UPDATED=0
apt_update() {
  command -v apt-get >/dev/null || die "no apt-get: install PostgreSQL + pg_partman yourself and set PARTGUARD_PG_BIN"
  [ "$APT_UPDATED" = 1 ] || { log "apt-get update"; apt_get update -qq; APT_UPDATED=1; }
}
apt_install() {
  log "apt-get install $*"
  apt_get install -y -qq --no-install-recommends "$@" >&2
}

# --- PostgreSQL + pg_partman -------------------------------------------------------------
N=""
if [ "$FORCE_APT" = 0 ]; then
  if [ -n "${PARTGUARD_PG_BIN:-}" ] && [ -x "$PARTGUARD_PG_BIN/pg_ctl" ]; then
    PG_BIN="$PARTGUARD_PG_BIN"  # the caller's choice wins, as in partguard.sandbox
  elif [ -f .pg_bin ] && n=$(basename "$(dirname "$(cat .pg_bin)")") && usable "$n"; then
    N=$n  # keep what an earlier run (e.g. CI's --apt) picked
  else
    for n in $MAJORS; do
      if usable "$n"; then N=$n; break; fi
    done
  fi
fi
if [ -z "${PG_BIN:-}" ] && [ -z "$N" ]; then
  apt_update
  for n in $MAJORS; do
    if candidate "postgresql-$n" && candidate "postgresql-$n-partman"; then N=$n; break; fi
  done
  [ -n "$N" ] || die "apt has no postgresql-N with postgresql-N-partman for N in $MAJORS"
  if usable "$N"; then
    log "PostgreSQL $N and pg_partman already installed"
  else
    apt_install "postgresql-$N" "postgresql-$N-partman"
  fi
fi
PG_BIN="${PG_BIN:-/usr/lib/postgresql/$N/bin}"

# --- make, python venv -------------------------------------------------------------------
command -v make >/dev/null || { apt_update; apt_install make; }
command -v python3 >/dev/null || { apt_update; apt_install python3; }
if [ ! -x .venv/bin/python ]; then
  if ! python3 -m venv .venv >&2; then
    rm -rf .venv
    apt_update
    apt_install python3-venv
    python3 -m venv .venv >&2
  fi
fi
STAMP=.venv/.partguard-deps
WANT=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  log "pip install -e '.[test]'"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' >&2
  echo "$WANT" >"$STAMP"
fi

# --- promtool (optional; tried once per venv unless --apt) ------------------------------
TRIED=.venv/.partguard-promtool-tried
if ! have_promtool && { [ "$FORCE_APT" = 1 ] || [ ! -e "$TRIED" ]; }; then
  apt_update
  if candidate prometheus && apt_install prometheus && have_promtool; then :; else
    log "warning: promtool not available (Debian package prometheus); continuing without it"
  fi
  touch "$TRIED"
fi

echo "$PG_BIN" >.pg_bin
echo "PARTGUARD_PG_BIN=$PG_BIN"
