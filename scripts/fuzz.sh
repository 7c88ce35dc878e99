#!/usr/bin/env bash
# Long run of the request-path property test (src/http/fuzz.rs): the same
# generators and checks as in `cargo test`, with many more cases.
#
#   scripts/fuzz.sh                 # 1,000,000 cases per target, random seed
#   FERROCORN_FUZZ_CASES=50000 scripts/fuzz.sh
#   FERROCORN_FUZZ_SEED=0x1234 scripts/fuzz.sh     # a given seed
#   scripts/fuzz.sh head            # one target: head, chunked or proxy
#
# A failing case prints the seed that replays it alone, e.g.
#   FERROCORN_FUZZ_SEED=0x... FERROCORN_FUZZ_CASES=1 scripts/fuzz.sh chunked
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYO3_PYTHON="${PYO3_PYTHON:-$ROOT/.venv/bin/python}"
export FERROCORN_FUZZ_CASES="${FERROCORN_FUZZ_CASES:-1000000}"
if [ -z "${FERROCORN_FUZZ_SEED:-}" ]; then
    FERROCORN_FUZZ_SEED="$(od -An -N8 -tx8 /dev/urandom | tr -d ' \n')"
    FERROCORN_FUZZ_SEED="0x$FERROCORN_FUZZ_SEED"
fi
export FERROCORN_FUZZ_SEED
echo "fuzz: $FERROCORN_FUZZ_CASES cases per target, FERROCORN_FUZZ_SEED=$FERROCORN_FUZZ_SEED" >&2
filter="http::fuzz::fuzz_${1:-}"
# The targets run in parallel (one test thread each); output shows the
# cases run and the time taken.
exec cargo test --release "$filter" -- --nocapture
