#!/usr/bin/env bash
# Prepare a machine for building and testing ferrocorn. Idempotent: when
# everything is already in place it only checks and runs an up-to-date cargo
# build. Set FERROCORN_SKIP_BUILD=1 to skip the cargo build.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf '==> setup: %s\n' "$*" >&2; }
die() { printf '==> setup: ERROR: %s\n' "$*" >&2; exit 1; }

# --- system packages --------------------------------------------------------
# command name -> Debian package
# (prometheus and promtool scrape and check the metrics exporter in
# tests/test_metrics_*.py; redis-server and redis-cli are the real Redis that
# tests/test_redis.py starts, standalone, as a cluster and with TLS; openssl
# makes that test's certificates; nginx is the uwsgi_pass front end of
# tests/test_uwsgi.py; tmux is the terminal tests/test_top.py runs
# `ferrocorn top` in)
declare -A NEED=([curl]=curl [wrk]=wrk [prometheus]=prometheus [promtool]=prometheus
                 [redis-server]=redis-server [redis-cli]=redis-tools [openssl]=openssl
                 [systemd-socket-activate]=systemd [nginx]=nginx-light [tmux]=tmux)
missing=()
for cmd in "${!NEED[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEED[$cmd]}")
done
if ((${#missing[@]})); then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "need root or sudo to install: ${missing[*]}"
        SUDO="sudo"
    fi
    say "installing Debian packages: ${missing[*]}"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null \
        || die "apt-get update failed"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
        || die "apt-get install ${missing[*]} failed"
else
    say "system packages present (curl, wrk, prometheus, redis-server, redis-cli, openssl, systemd-socket-activate, nginx, tmux)"
fi

# --- Python virtualenv ------------------------------------------------------
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || die "$PY not found (CPython 3.11 with a shared libpython expected)"
if [ "$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("Py_ENABLE_SHARED") or 0)')" != 1 ]; then
    die "$($PY -c 'import sys; print(sys.executable)') has no shared libpython (build it with --enable-shared, e.g. PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install)"
fi

VENV="$ROOT/.venv"
if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    say "removing broken virtualenv $VENV"
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtualenv $VENV with $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
    "$PY" -m venv "$VENV" || die "python3 -m venv failed"
fi

REQ="$ROOT/tests/requirements.txt"
STAMP="$VENV/.ferrocorn-requirements.sha256"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
    say "installing $REQ into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip \
        || die "pip upgrade failed"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ" \
        || die "pip install -r tests/requirements.txt failed"
    echo "$want" >"$STAMP"
else
    say "virtualenv up to date ($VENV)"
fi

# --- Rust build -------------------------------------------------------------
if [ "${FERROCORN_SKIP_BUILD:-0}" = 1 ]; then
    say "FERROCORN_SKIP_BUILD=1: not building"
else
    command -v cargo >/dev/null 2>&1 || die "cargo not found"
    say "cargo build --release (PYO3_PYTHON=$VENV/bin/python)"
    PYO3_PYTHON="$VENV/bin/python" cargo build --release || die "cargo build --release failed"
    [ -x "$ROOT/target/release/ferrocorn" ] || die "target/release/ferrocorn was not built"
    say "built $ROOT/target/release/ferrocorn"
fi
