#!/usr/bin/env bash
# A/B of two ferrocorn builds on the hello-world app, interleaved (A B B A ...)
# so that the machine's drift hits both alike: keep-alive and close rps and
# CPU µs/request, medians and the B/A ratios. For refactors that must not
# cost speed (compare against a build of main).
#
#   bench/ab.sh A_BINARY B_BINARY            # PAIRS=4 pairs, 10 s per wrk run
#   PAIRS=6 WRK_DURATION=5s bench/ab.sh /tmp/ferrocorn-main target/release/ferrocorn
#
# Measures with the shared /work/shared/bench-anchors/lib/bench_one.sh (same
# app, wrk settings and CPU accounting as bench/run.sh). Raw records go to
# bench/results/ab.jsonl (git-ignored with the rest of bench/results/).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ANCHORS="${ANCHORS:-$ROOT/../shared/bench-anchors}"
A="$(realpath "${1:?A binary}")"
B="$(realpath "${2:?B binary}")"
PAIRS="${PAIRS:-4}"
OUT="${AB_OUT:-$ROOT/bench/results/ab.jsonl}"
VENV="${FERRO_VENV:-$ROOT/.venv}"
mkdir -p "$(dirname "$OUT")" "$ROOT/bench/results/logs/ab"
: >"$OUT"
port=19400
run() { # name binary
    port=$((port + 1))
    (cd "$ANCHORS/apps" && BENCH_OUT="$OUT" BENCH_LOGDIR="$ROOT/bench/results/logs/ab" \
        "$ANCHORS/lib/bench_one.sh" --name "$1" --config "w1 sync" --port "$port" -- \
        env VIRTUAL_ENV="$VENV" "$2" -w 1 -b "127.0.0.1:$port" hello_wsgi:app >/dev/null)
}
for i in $(seq 1 "$PAIRS"); do
    if ((i % 2)); then run A "$A"; run B "$B"; else run B "$B"; run A "$A"; fi
    echo "[ab] pair $i/$PAIRS done" >&2
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def values(name):
    out = {"rps keep-alive": [], "rps close": [], "CPU us/req keep-alive": []}
    for r in recs:
        if r.get("name") != name or r.get("status") != "ok":
            continue
        ka, close = r.get("ka") or {}, r.get("close") or {}
        if ka.get("rps"):
            out["rps keep-alive"].append(ka["rps"])
            if r.get("ka_server_cpu_pct"):
                out["CPU us/req keep-alive"].append(r["ka_server_cpu_pct"] / 100 / ka["rps"] * 1e6)
        if close.get("rps"):
            out["rps close"].append(close["rps"])
    return out
a, b = values("A"), values("B")
for k in a:
    if a[k] and b[k]:
        ma, mb = statistics.median(a[k]), statistics.median(b[k])
        print(f"{k}: A {ma:,.1f} (runs {', '.join(f'{x:,.0f}' for x in a[k])})  "
              f"B {mb:,.1f} (runs {', '.join(f'{x:,.0f}' for x in b[k])})  B/A {mb / ma:.3f}")
for r in recs:
    if r.get("foreign_cpu_pct", 0) > 15:
        print(f"note: {r['name']} run at {r['started_at']} had {r['foreign_cpu_pct']}% of a core used by other processes")
PY
