#!/usr/bin/env bash
# The whole check: setup, formatting, lints, Rust tests, integration tests.
# Extra arguments go to pytest (e.g. scripts/test.sh -k malformed -x).
# TEST_SERVER=gunicorn runs the integration tests against gunicorn instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { printf '\n==> test: %s\n' "$*" >&2; }

step "setup"
scripts/setup.sh

export PYO3_PYTHON="$ROOT/.venv/bin/python"

step "cargo fmt --check"
cargo fmt --all -- --check

step "no cycles between top-level modules"
python3 scripts/module-cycles.py

step "cargo clippy --release -- -D warnings"
cargo clippy --release -- -D warnings

# Some unit tests fork (log writers, shared memory). nextest runs each test
# in its own process; plain `cargo test` runs them as threads of one, where
# a fork while another test thread holds a lock (the log's) can leave the
# child waiting forever: without nextest, one test at a time.
step "cargo nextest run --release"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --release --no-tests=pass
else
    cargo test --release -- --test-threads=1
fi

# The integration suite runs against what users install: a release wheel
# of this checkout for the venv's Python, pip-installed with the tests'
# requirements into .venv-wheel (its own target dir, so the binary's build
# is not redone). The standalone binary then runs the start-up, signal,
# lifecycle and configuration tests (where the two entry points differ).
WHEEL_VENV="$ROOT/.venv-wheel"
WHEEL_TARGET="$ROOT/target/wheel-suite"
step "release wheel for $("$ROOT/.venv/bin/python" -V), installed in .venv-wheel"
rm -f "$WHEEL_TARGET"/wheels/ferrocorn-*.whl
"$ROOT/.venv/bin/maturin" build --release -i "$ROOT/.venv/bin/python" \
    --target-dir "$WHEEL_TARGET" -o "$WHEEL_TARGET/wheels"
if [ ! -x "$WHEEL_VENV/bin/python" ]; then
    "$(readlink -f "$ROOT/.venv/bin/python")" -m venv "$WHEEL_VENV"
fi
"$WHEEL_VENV/bin/pip" install -q --disable-pip-version-check -r "$ROOT/tests/requirements.txt"
"$WHEEL_VENV/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps \
    "$WHEEL_TARGET"/wheels/ferrocorn-*.whl

step "pytest tests, against the wheel's ferrocorn command"
(
    export FERROCORN_BIN="$WHEEL_VENV/bin/ferrocorn" FERROCORN_TEST_VENV="$WHEEL_VENV"
    export VIRTUAL_ENV="$WHEEL_VENV" PATH="$WHEEL_VENV/bin:$PATH"
    "$WHEEL_VENV/bin/python" -m pytest tests -q -p no:cacheprovider --timeout 60 -rfEs "$@"
)

if [ "$#" -eq 0 ]; then
    step "pytest: start-up, signals, lifecycle and config tests against target/release/ferrocorn"
    export VIRTUAL_ENV="$ROOT/.venv"
    export PATH="$VIRTUAL_ENV/bin:$PATH"
    "$ROOT/.venv/bin/python" -m pytest tests -q -p no:cacheprovider --timeout 60 -rfEs \
        --ignore tests/test_packaging.py -k "lifecycle or signals or process or config"
fi
