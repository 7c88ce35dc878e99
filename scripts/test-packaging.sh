#!/usr/bin/env bash
# The wheel's check (issue 13), alone: builds the wheels for CPython
# 3.9-3.13 (maturin, profile wheel-test), installs each into a fresh venv
# with Flask and serves the Flask example through the installed `ferrocorn`
# command (tests/test_packaging.py). scripts/test.sh runs the same tests as
# part of the suite (which itself runs against a release wheel). Extra
# arguments go to pytest. Takes ~4 min on 2 cores (the five wheels ~1.5-3
# min of it).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# The binary is built too: tests compare the wheel's master with it.
scripts/setup.sh

export PATH="$ROOT/.venv/bin:$PATH"
start=$(date +%s)
"$ROOT/.venv/bin/python" -m pytest tests/test_packaging.py -q -p no:cacheprovider -rfEs "$@"
printf '==> test-packaging: %s s\n' "$(( $(date +%s) - start ))" >&2
