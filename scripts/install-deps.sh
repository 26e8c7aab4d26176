#!/usr/bin/env bash
# Install what the tests, the demo and the benchmarks need, and say which PostgreSQL to use:
#   - PostgreSQL N + pg_partman for N (Debian packages postgresql-N, postgresql-N-partman),
#   - the venv .venv with partguard installed editable with its test extras,
#   - promtool (Debian package prometheus; optional: its tests are skipped without it),
#   - pgbouncer (Debian package pgbouncer; optional, likewise).
# Prints PARTGUARD_PG_BIN=... and writes that directory to .pg_bin for the Makefile.
#
# Idempotent and fast when everything is there: apt is only used when no installed PostgreSQL
# has pg_partman (or promtool is missing), pip only when pyproject.toml changed.
# --apt (used by CI): always `apt-get update` and pick the newest N that apt can install
# together with its partman package (the server already installed may have no partman package).
set -euo pipefail
cd "$(dirname "$0")/.."

FORCE_APT=0
FOR=test  # what for: "test" (everything) or "demo" (only what `partguard demo` needs)
for arg in "$@"; do
  case "$arg" in
    --apt) FORCE_APT=1 ;;
    --for=demo | --demo) FOR=demo ;;
    --for=test) FOR=test ;;
    *) echo "install-deps: unknown argument $arg (use --apt, --for=demo)" >&2; exit 64 ;;
  esac
done
MAJORS="18 17 16 15 14"

# Quiet by default: one line per step; a step's full output only when it fails (or with V=1).
mkdir -p .cache
STEP_LOG=.cache/install-deps.log
log() { echo "install-deps: $*" >&2; }
die() { log "error: $*"; exit 1; }
quietly() {
  if [ "${V:-0}" = 1 ]; then "$@" >&2; return; fi
  if ! "$@" >"$STEP_LOG" 2>&1; then
    cat "$STEP_LOG" >&2
    return 1
  fi
}

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
  [ "$APT_UPDATED" = 1 ] || { log "apt-get update"; quietly apt_get update -qq; APT_UPDATED=1; }
}
apt_install() {
  log "apt-get install $*"
  quietly apt_get install -y -qq --no-install-recommends "$@"
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

# --- every pg_partman version we support, side by side -----------------------------------
# The extension is SQL only: the install script of each version is copied next to the one apt
# installed, and `CREATE EXTENSION pg_partman VERSION '<v>'` picks one per database. Each version
# comes from the Debian suite that ships it (bookworm 4.7.2, trixie 5.2.4, sid 5.5.0), fetched
# with a private sources list and lists directory: the machine's own apt setup is not touched.
PARTMAN_SUITES="bookworm:15 trixie:17 sid:18"  # suite:the PostgreSQL major its package is built for
EXT_DIR="$("$PG_BIN/pg_config" --sharedir 2>/dev/null || echo "/usr/share/postgresql/$N")/extension"
partman_versions() {  # the full install scripts present: 4.7.2 5.2.4 ...
  find "$EXT_DIR" -maxdepth 1 -name 'pg_partman--*.sql' -printf '%f\n' 2>/dev/null \
    | sed -n 's/^pg_partman--\([0-9][0-9.]*[0-9]\)\.sql$/\1/p' | sort -V | paste -sd' '
}
mirror() {  # the Debian mirror this machine already uses (deb.debian.org if none is configured)
  local u
  u=$(grep -hoE '(https?://[^ ]+/debian)/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
        /etc/apt/sources.list.d/*.list 2>/dev/null | grep -v security | head -1 | tr -d ' ')
  echo "${u:-http://deb.debian.org/debian}"
}
fetch_partman() {
  local dir=.cache/partman-apt suite pkg opts deb found
  mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/debs" "$dir/x"
  : >"$dir/sources.list"
  # check-valid-until=no: sid's Release expires 7 days after it is signed, and a mirror that
  # lags behind (or a frozen snapshot) then fails `apt-get update` outright. The signature is
  # still checked; we only take SQL scripts of fixed versions from these lists.
  for s in $PARTMAN_SUITES; do
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg check-valid-until=no]" \
      "$(mirror) ${s%%:*} main" >>"$dir/sources.list"
  done
  opts=(-o "Dir::Etc::SourceList=$PWD/$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$PWD/$dir/lists" -o "Dir::Cache=$PWD/$dir/cache" -o Debug::NoLocking=1
        -o APT::Sandbox::User=root)
  log "fetching pg_partman from Debian $(echo "$PARTMAN_SUITES" | sed 's/:[0-9]*//g')"
  apt-get "${opts[@]}" update -qq </dev/null >"$dir/update.log" 2>&1 \
    || { cat "$dir/update.log" >&2; die "apt-get update (private lists for pg_partman) failed"; }
  for s in $PARTMAN_SUITES; do
    suite=${s%%:*}; pkg="postgresql-${s##*:}-partman"
    (cd "$dir/debs" && apt-get "${opts[@]}" download "$pkg/$suite" </dev/null >/dev/null 2>&1) \
      || die "apt-get download $pkg/$suite failed"
  done
  for deb in "$dir"/debs/*.deb; do dpkg-deb -x "$deb" "$dir/x"; done
  found=0
  for f in "$dir"/x/usr/share/postgresql/*/extension/pg_partman--*.sql; do
    case "$(basename "$f")" in pg_partman--*--*) continue ;; esac  # upgrade scripts
    "${SUDO[@]}" install -m 644 "$f" "$EXT_DIR/"; found=$((found + 1))
  done
  [ "$found" -gt 0 ] || die "no pg_partman install script in the downloaded packages"
}
WANT_PARTMAN="4.7.2 5.2.4 5.5.0"
missing=""
for v in $WANT_PARTMAN; do
  [ -f "$EXT_DIR/pg_partman--$v.sql" ] || missing="$missing $v"
done
if [ "$FOR" = test ] && [ -n "$missing" ] && [ -d "$EXT_DIR" ]; then
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
    || die "pg_partman$missing missing and no apt-get/dpkg-deb to fetch them"
  fetch_partman
fi
PM_VERSIONS=$(partman_versions)

# --- make, python venv -------------------------------------------------------------------
command -v make >/dev/null || { apt_update; apt_install make; }
command -v python3 >/dev/null || { apt_update; apt_install python3; }
if [ ! -x .venv/bin/python ]; then
  log "python3 -m venv .venv"
  # Without python3-venv (Debian's standard images) this fails: say so in one line, not the
  # failure's full text, install it and try again (a second failure shows its output).
  if ! python3 -m venv .venv >"$STEP_LOG" 2>&1; then
    log "python3 -m venv failed (no ensurepip?): installing python3-venv"
    rm -rf .venv
    apt_update
    apt_install python3-venv
    quietly python3 -m venv .venv
  fi
fi
STAMP=.venv/.partguard-deps
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1) test"
HAVE=$(cat "$STAMP" 2>/dev/null || true)
if [ "$FOR" = demo ]; then
  # the package alone is enough for the demo; a venv with the test extras serves it too
  if [ "$HAVE" != "$WANT" ] && [ "$HAVE" != "${WANT% test} demo" ]; then
    log "pip install -e . (the package; make test adds the test tools)"
    quietly .venv/bin/python -m pip install -q --disable-pip-version-check -e .
    echo "${WANT% test} demo" >"$STAMP"
  fi
elif [ "$HAVE" != "$WANT" ]; then
  log "pip install -e '.[test]'"
  quietly .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
  echo "$WANT" >"$STAMP"
fi

# --- promtool (optional; tried once per venv unless --apt) ------------------------------
TRIED=.venv/.partguard-promtool-tried
if [ "$FOR" = test ] && ! have_promtool && { [ "$FORCE_APT" = 1 ] || [ ! -e "$TRIED" ]; }; then
  apt_update
  if candidate prometheus && apt_install prometheus && have_promtool; then :; else
    log "warning: promtool not available (Debian package prometheus); continuing without it"
  fi
  touch "$TRIED"
fi

# --- OPTIONAL: pgbouncer (tests/test_pgbouncer.py; skipped without it, except in CI) -----
# Never fatal: partguard does not need it, only the test that proves it refuses a
# transaction-mode pooler. Tried once per venv unless --apt.
TRIED_BOUNCER=.venv/.partguard-pgbouncer-tried
have_pgbouncer() { command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ]; }
if [ "$FOR" = test ] && ! have_pgbouncer && { [ "$FORCE_APT" = 1 ] || [ ! -e "$TRIED_BOUNCER" ]; }; then
  if command -v apt-get >/dev/null && { apt_update || true; } && candidate pgbouncer \
      && apt_install pgbouncer && have_pgbouncer; then :; else
    log "warning: pgbouncer not available (Debian package pgbouncer); continuing without it"
  fi
  touch "$TRIED_BOUNCER"
fi

echo "$PG_BIN" >.pg_bin
extras=""
[ "$FOR" = demo ] || extras=", promtool: $(have_promtool && echo yes || echo no), pgbouncer: $(have_pgbouncer && echo yes || echo no)"
log "ready: PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') ($PG_BIN), pg_partman ${PM_VERSIONS:-none}, .venv${extras}"
echo "PARTGUARD_PG_BIN=$PG_BIN"
