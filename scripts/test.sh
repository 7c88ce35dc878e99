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

step "cargo nextest run --release"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --release --no-tests=pass
else
    cargo test --release
fi

step "pytest tests"
export VIRTUAL_ENV="$ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
"$ROOT/.venv/bin/python" -m pytest tests -q -p no:cacheprovider --timeout 60 -rfEs "$@"
