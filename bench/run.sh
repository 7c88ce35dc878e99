#!/usr/bin/env bash
# ferrocorn vs gunicorn / granian / bjoern: hello-world benchmark, RUNS interleaved repetitions.
#
#   bench/run.sh                          # set up (idempotent) + RUNS=3 runs (~11 min on a quiet box) + report
#   RUNS=2 bench/run.sh                   # fewer repetitions
#   ONLY='ferrocorn|bjoern' bench/run.sh  # only configs whose name matches the regex
#   CORE_ONLY=1 bench/run.sh              # skip the optional rows (ferrocorn -w 2, Flask)
#   SET=kinds bench/run.sh                # the worker kinds: gthread, gevent, eventlet vs sync,
#                                         # gunicorn gevent / gthread and granian (results-kinds.md)
#   SET=asgi bench/run.sh                 # the asgi kind vs granian --interface asgi and uvicorn
#                                         # (httptools + uvloop), plain ASGI and FastAPI (results-asgi.md)
#   SKIP_SETUP=1 WRK_DURATION=3s RUNS=1 bench/run.sh   # quick smoke run
#
# Knobs (defaults in brackets):
#   RUNS [3]                repetitions; each repetition runs every config once, in a rotated order
#   WRK_DURATION [10s]      per wrk run (keep-alive and Connection: close); WRK_WARMUP [2s]
#   WRK_THREADS [1] WRK_CONNS [50]
#   ONLY [.]                regex on the server name (ferrocorn, gunicorn-sync, granian-wsgi, bjoern,
#                           flask@ferrocorn, ...)
#   CORE_ONLY [0]           1 = only the four target configs
#   SET [core]              core = the sync worker against the anchors; kinds = the worker kinds;
#                           asgi = the asgi kind
#   SKIP_SETUP [0]          1 = no apt / pip / cargo (the binary must already be built)
#   APPEND [0]              1 = keep earlier records in the JSONL file
#   QUIET_BUSY_PCT [20]     before each config, wait (up to QUIET_WAIT [90] s) until the machine's CPU
#                           use from other processes is below this (% of all cores); recorded either way
#   MAX_FOREIGN_PCT [12]    a config during which other processes used more than this (% of one core)
#                           is recorded as "disturbed" and measured again, up to RETRIES [2] more times
#   ANCHORS [/work/shared/bench-anchors]   the shared harness (lib/bench_one.sh, apps/)
#   VENV [/tmp/bench-venv]  anchor venv (gunicorn, granian, bjoern, flask), shared with run_anchors.sh
#   FERRO_VENV [<repo>/.venv]   VIRTUAL_ENV given to ferrocorn (CPython 3.11, the one it was built with)
#   FERROCORN_BIN           use this binary instead of building target/release/ferrocorn
#   BENCH_OUT [bench/results/ferrocorn.jsonl]   raw records; BENCH_REPORT [bench/results.md]
#
# Every server is started by the shared lib/bench_one.sh in its own process group and
# stopped by its own PID; this script kills nothing itself.  All on 127.0.0.1, ports 18600+.
set -u -o pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$BENCH_DIR")"
ANCHORS="${ANCHORS:-/work/shared/bench-anchors}"
APPS="$ANCHORS/apps"
BENCH_ONE="$ANCHORS/lib/bench_one.sh"
RESULTS="$BENCH_DIR/results"
PYBASE="${PYBASE:-$(command -v python3.11 || command -v python3)}"
VENV="${VENV:-/tmp/bench-venv}"
FERRO_VENV="${FERRO_VENV:-$ROOT/.venv}"
RUNS="${RUNS:-3}"
ONLY="${ONLY:-.}"
CORE_ONLY="${CORE_ONLY:-0}"
SET="${SET:-core}"
[[ "$SET" == core || "$SET" == kinds || "$SET" == asgi ]] || { echo "SET must be core, kinds or asgi" >&2; exit 2; }
QUIET_BUSY_PCT="${QUIET_BUSY_PCT:-20}"
QUIET_WAIT="${QUIET_WAIT:-90}"
MAX_FOREIGN_PCT="${MAX_FOREIGN_PCT:-12}"
RETRIES="${RETRIES:-2}"
if [[ "$SET" == kinds || "$SET" == asgi ]]; then
  BENCH_OUT="${BENCH_OUT:-$RESULTS/$SET/ferrocorn.jsonl}"
  BENCH_REPORT="${BENCH_REPORT:-$BENCH_DIR/results-$SET.md}"
else
  BENCH_OUT="${BENCH_OUT:-$RESULTS/ferrocorn.jsonl}"
  BENCH_REPORT="${BENCH_REPORT:-$BENCH_DIR/results.md}"
fi
BENCH_VERSIONS="$(dirname "$BENCH_OUT")/versions.txt"
LOGROOT="$(dirname "$BENCH_OUT")/logs"
export WRK_THREADS="${WRK_THREADS:-1}" WRK_CONNS="${WRK_CONNS:-50}"
export WRK_DURATION="${WRK_DURATION:-10s}" WRK_WARMUP="${WRK_WARMUP:-2s}"
export BENCH_PY="$VENV/bin/python"

say() { echo "[bench] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- setup ----
setup() {
  local need_apt=()
  command -v wrk >/dev/null || need_apt+=(wrk)
  command -v curl >/dev/null || need_apt+=(curl)
  command -v gcc >/dev/null || need_apt+=(build-essential)
  [[ -e /usr/include/ev.h ]] || need_apt+=(libev-dev)      # bjoern
  if [[ ${#need_apt[@]} -gt 0 ]]; then
    say "apt-get install ${need_apt[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null; } \
      || say "apt-get failed for: ${need_apt[*]}"
  fi
  command -v wrk >/dev/null || die "wrk is required"

  # Anchor venv: same pins as the shared anchors (plus bjoern, best effort).
  [[ -x "$VENV/bin/python" ]] || "$PYBASE" -m venv "$VENV" || die "venv $VENV"
  if ! "$VENV/bin/python" -c 'import gunicorn, granian, flask' 2>/dev/null \
     || [[ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("gunicorn"), m.version("granian"))' 2>/dev/null)" != "27.0.1 2.8.7" ]]; then
    say "pip install -r $ANCHORS/requirements-anchors.txt into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$ANCHORS/requirements-anchors.txt" \
      || die "pip install of the anchors failed"
  fi
  # gunicorn's gevent worker, the anchor of the gevent kind (the version ferrocorn's tests use).
  "$VENV/bin/python" -c 'import gevent, packaging' 2>/dev/null \
    || "$VENV/bin/pip" install -q --disable-pip-version-check 'gevent==26.9.0' 'packaging==26.3' \
    || say "gevent install failed (the gunicorn-gevent row will be skipped)"
  # FastAPI for the framework rows of SET=asgi (the version ferrocorn's tests use); granian and
  # uvicorn (httptools, uvloop) come with the anchor pins.
  "$VENV/bin/python" -c 'import fastapi' 2>/dev/null \
    || "$VENV/bin/pip" install -q --disable-pip-version-check 'fastapi==0.163.2' 'starlette==1.10.0' \
    || say "fastapi install failed (the fastapi rows will be skipped)"
  "$VENV/bin/python" -c 'import bjoern' 2>/dev/null \
    || "$VENV/bin/pip" install -q --disable-pip-version-check 'bjoern==3.2.2' \
    || say "bjoern install failed (its rows will be skipped)"

  # ferrocorn: the project's own idempotent set-up (Debian packages, .venv, cargo build --release).
  if [[ -z "${FERROCORN_BIN:-}" ]]; then
    (unset FERROCORN_SKIP_BUILD; "$ROOT/scripts/setup.sh") || die "scripts/setup.sh failed"
  fi
}

# Snapshot the binary: other people may rebuild target/release/ferrocorn while this runs,
# and every run of one benchmark must use the same build.
snapshot_binary() {
  local src="${FERROCORN_BIN:-$ROOT/target/release/ferrocorn}"
  [[ -x "$src" ]] || die "$src not found (run without SKIP_SETUP=1, or set FERROCORN_BIN)"
  mkdir -p "$RESULTS/bin"
  cp -f "$src" "$RESULTS/bin/ferrocorn.new" && mv -f "$RESULTS/bin/ferrocorn.new" "$RESULTS/bin/ferrocorn"
  FERRO="$RESULTS/bin/ferrocorn"
  FERRO_SRC="$src"
}

record_versions() {
  local f="$BENCH_VERSIONS" rev dirty
  rev="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
  dirty="$(git -C "$ROOT" status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock build.rs 2>/dev/null | wc -l)"
  {
    echo "date_utc: $(date -u +%FT%TZ)"
    echo "kernel: $(uname -srm)"
    echo "cpu: $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo) x $(nproc) online"
    echo "memory: $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "wrk: $(wrk --version 2>&1 | head -1 | awk '{print $1, $2}') (-t$WRK_THREADS -c$WRK_CONNS -d$WRK_DURATION, warm-up $WRK_WARMUP)"
    echo "ferrocorn: $("$FERRO" --version 2>&1 | head -1), git $rev$( [[ "$dirty" != 0 ]] && echo " (+$dirty uncommitted changes in src/Cargo)"), binary $FERRO_SRC built $(date -u -r "$FERRO_SRC" +%FT%TZ), sha256 $(sha256sum "$FERRO" | cut -c1-12)"
    echo "ferrocorn VIRTUAL_ENV: $FERRO_VENV ($("$FERRO_VENV/bin/python" -V 2>&1))"
    echo "anchor venv: $VENV ($("$VENV/bin/python" -V 2>&1))"
    "$VENV/bin/pip" list --format=freeze 2>/dev/null | grep -iE '^(gunicorn|granian|bjoern|flask|werkzeug)==' | sed 's/^/  /'
    echo "runs: $RUNS, interleaved (order rotated each run)"
  } >"$f"
  cat "$f" >&2
}

# ------------------------------------------------------------ quietness ----
# Busy % of the whole machine (all cores) over ~1 s, from /proc/stat.
cpu_busy_pct() {
  local a b
  a=($(head -1 /proc/stat)); sleep 1; b=($(head -1 /proc/stat))
  awk -v a="${a[*]}" -v b="${b[*]}" 'BEGIN {
    n = split(a, x, " "); split(b, y, " "); tot = 0; idle = 0
    for (i = 2; i <= n; i++) tot += y[i] - x[i]
    idle = (y[5] - x[5]) + (y[6] - x[6])
    printf "%.0f", (tot > 0 ? 100 * (tot - idle) / tot : 0) }'
}

# Wait (bounded) for other load (builds, tests) to calm down; echo the last reading.
wait_quiet() {
  local busy t0=$SECONDS warned=0
  while :; do
    busy="$(cpu_busy_pct)"
    (( busy < QUIET_BUSY_PCT )) && break
    if (( SECONDS - t0 >= QUIET_WAIT )); then say "machine still ${busy}% busy after ${QUIET_WAIT}s; measuring anyway"; break; fi
    (( warned )) || { say "machine ${busy}% busy (other processes); waiting up to ${QUIET_WAIT}s"; warned=1; }
  done
  echo "$busy"
}

# ----------------------------------------------------------------- runs ----
G="$VENV/bin/gunicorn"; GR="$VENV/bin/granian"
# Config table: index|name|config|workers|command ({PORT} is substituted).  Index fixes the port.
configs() {
  if [[ "$SET" == kinds ]]; then
    local F="env VIRTUAL_ENV=$FERRO_VENV $FERRO -w 1 -b 127.0.0.1:{PORT}"
    echo "10|ferrocorn|w1 sync|1|$F hello_wsgi:app"
    echo "11|ferrocorn|w1 gthread threads=4|1|$F -k gthread --threads 4 hello_wsgi:app"
    echo "12|ferrocorn|w1 gevent|1|$F -k gevent hello_wsgi:app"
    echo "13|ferrocorn|w1 eventlet|1|$F -k eventlet hello_wsgi:app"
    echo "14|gunicorn-gevent|w1|1|$G -w1 -k gevent -b 127.0.0.1:{PORT} hello_wsgi:app"
    echo "15|granian-wsgi|w1 blocking-threads=1|1|$GR --interface wsgi --workers 1 --blocking-threads 1 --host 127.0.0.1 --port {PORT} --log-level warning hello_wsgi:app"
    echo "16|flask@ferrocorn|w1 gthread threads=4|1|$F -k gthread --threads 4 hello_flask:app"
    echo "17|flask@gunicorn-gthread|w1 threads=4|1|$G -w1 -k gthread --threads 4 -b 127.0.0.1:{PORT} hello_flask:app"
    return
  fi
  if [[ "$SET" == asgi ]]; then
    local F="env VIRTUAL_ENV=$FERRO_VENV $FERRO -w 1 -b 127.0.0.1:{PORT}"
    local GA="$GR --interface asgi --workers 1 --host 127.0.0.1 --port {PORT} --log-level warning"
    echo "20|ferrocorn|w1 asgi|1|$F -k asgi hello_asgi:app"
    echo "21|granian-asgi|w1|1|$GA hello_asgi:app"
    echo "22|uvicorn|w1 httptools uvloop|1|$VENV/bin/uvicorn --host 127.0.0.1 --port {PORT} --loop uvloop --http httptools --log-level warning --no-access-log hello_asgi:app"
    echo "23|fastapi@ferrocorn|w1 asgi|1|$F -k asgi --chdir $BENCH_DIR/apps hello_fastapi:app"
    echo "24|fastapi@granian-asgi|w1|1|$GA --working-dir $BENCH_DIR/apps hello_fastapi:app"
    return
  fi
  echo "0|ferrocorn|w1 sync|1|env VIRTUAL_ENV=$FERRO_VENV $FERRO -w 1 -b 127.0.0.1:{PORT} hello_wsgi:app"
  echo "1|gunicorn-sync|w1|1|$G -w1 -k sync -b 127.0.0.1:{PORT} hello_wsgi:app"
  echo "2|granian-wsgi|w1 blocking-threads=1|1|$GR --interface wsgi --workers 1 --blocking-threads 1 --host 127.0.0.1 --port {PORT} --log-level warning hello_wsgi:app"
  echo "3|bjoern|1 proc|1|$VENV/bin/python bjoern_server.py 127.0.0.1 {PORT}"
  [[ "$CORE_ONLY" == 1 ]] && return
  echo "4|ferrocorn|w2 sync|2|env VIRTUAL_ENV=$FERRO_VENV $FERRO -w 2 -b 127.0.0.1:{PORT} hello_wsgi:app"
  echo "5|flask@ferrocorn|w1 sync|1|env VIRTUAL_ENV=$FERRO_VENV $FERRO -w 1 -b 127.0.0.1:{PORT} hello_flask:app"
  echo "6|flask@gunicorn-sync|w1|1|$G -w1 -k sync -b 127.0.0.1:{PORT} hello_flask:app"
  echo "7|flask@granian-wsgi|w1 blocking-threads=1|1|$GR --interface wsgi --workers 1 --blocking-threads 1 --host 127.0.0.1 --port {PORT} --log-level warning hello_flask:app"
}

# Seconds of CPU used so far by this shell's reaped children (bench_one, wrk, the server and
# its workers, all waited for): the second line of the `times` builtin, user + sys.  `times`
# must run in this shell (not in a $(...) subshell), hence the file.
TIMES_F="$(mktemp /tmp/ferrocorn-bench-times.XXXXXX)"
trap 'rm -f "$TIMES_F"' EXIT
children_cpu_s() {
  times >"$TIMES_F"
  CHILD_CPU="$(tail -1 "$TIMES_F" | awk '{ t = 0; for (i = 1; i <= 2; i++) { split($i, p, /m|s/); t += p[1] * 60 + p[2] }; printf "%.3f", t }')"
}

# bench RUN IDX NAME CONFIG WORKERS CMD-STRING -> one record appended to $BENCH_OUT.
# Each record gets: run, attempt, busy_before_pct, machine_cpu_during_pct and foreign_cpu_pct
# (CPU used on the box by processes this script did not start, while the config ran, in % of
# one core).  A config whose foreign CPU exceeds MAX_FOREIGN_PCT is recorded with status
# "disturbed: ..." and measured again (up to RETRIES more times; the last attempt is kept as ok,
# flagged "disturbed": true).
bench() {
  local run="$1" idx="$2" name="$3" config="$4" workers="$5" cmdstr="$6"
  local attempt port tmp busy cmd st0 st1 c0 c1 foreign last
  if [[ "$name" == bjoern ]] && ! "$VENV/bin/python" -c 'import bjoern' 2>/dev/null; then
    "$BENCH_PY" -c 'import json,sys; print(json.dumps({"name":sys.argv[1],"config":sys.argv[2],"run":int(sys.argv[3]),"status":"skipped: bjoern not installed"}))' \
      "$name" "$config" "$run" >>"$BENCH_OUT"
    return 0
  fi
  for attempt in $(seq 1 $((RETRIES + 1))); do
    port=$((18600 + 100 * (attempt - 1) + 10 * run + idx))
    last=0; (( attempt == RETRIES + 1 )) && last=1
    read -r -a cmd <<<"${cmdstr//\{PORT\}/$port}"
    busy="$(wait_quiet)"
    tmp="$(mktemp /tmp/ferrocorn-bench.XXXXXX)"
    st0="$(head -1 /proc/stat)"; children_cpu_s; c0="$CHILD_CPU"
    (cd "$APPS" && BENCH_OUT="$tmp" BENCH_LOGDIR="$LOGROOT/run$run" "$BENCH_ONE" --name "$name" --config "$config" \
        --port "$port" --workers "$workers" -- "${cmd[@]}") || say "$name ($config) run $run failed"
    st1="$(head -1 /proc/stat)"; children_cpu_s; c1="$CHILD_CPU"
    foreign="$("$BENCH_PY" - "$tmp" "$BENCH_OUT" "$run" "$attempt" "$last" "$busy" "$st0" "$st1" "$c0" "$c1" \
               "$(nproc)" "$(getconf CLK_TCK)" "$MAX_FOREIGN_PCT" <<'PY'
import json, sys
tmp, out, run, attempt, last, busy, st0, st1, c0, c1, ncpu, hz, maxf = sys.argv[1:14]
num = lambda v: float(v) if v.strip() else None
# /proc/stat cpu line: user nice system idle iowait irq softirq steal (ticks, summed over cores)
a = [int(x) for x in st0.split()[1:9]]
b = [int(x) for x in st1.split()[1:9]]
d = [y - x for x, y in zip(a, b)]
wall = sum(d) / int(ncpu) / int(hz)                       # seconds
busy_s = (sum(d) - d[3] - d[4]) / int(hz)                 # everything but idle/iowait, incl. irq/softirq/steal
mine = float(c1) - float(c0)                              # bench_one + wrk + server group (rusage)
pct = lambda s: round(100.0 * s / wall, 1) if wall > 0 else None
# rusage of our processes already includes the softirq time of their own loopback traffic
# (tick accounting), so what is left of the machine's busy time is other processes' work
# (+ a few % of unattributed kernel time on a quiet box).
foreign = pct(max(0.0, busy_s - mine))
during = pct(busy_s)
recs = [json.loads(l) for l in open(tmp) if l.strip()]
for rec in recs:
    rec.update(run=int(run), attempt=int(attempt), busy_before_pct=num(busy), machine_cpu_during_pct=during,
               own_cpu_pct=pct(mine), foreign_cpu_pct=foreign, irq_cpu_pct=pct((d[5] + d[6]) / int(hz)))
    if rec.get("status") == "ok" and foreign is not None and foreign > float(maxf):
        if last == "1":
            rec["disturbed"] = True
        else:
            rec["status"] = f"disturbed: {foreign:.0f}% of a core used by other processes (> {maxf})"
with open(out, "a") as f:
    for rec in recs:
        f.write(json.dumps(rec, sort_keys=True) + "\n")
print(foreign if foreign is not None else 0)
PY
)"
    rm -f "$tmp"
    if [[ "$last" == 1 ]] || awk -v f="$foreign" -v m="$MAX_FOREIGN_PCT" 'BEGIN { exit !(f <= m) }'; then
      break
    fi
    say "$name ($config) run $run: ${foreign}% of a core used by other processes during the measurement; measuring again"
  done
}

run_all() {
  local list=() n r k i line idx name config workers cmdstr
  mapfile -t list < <(configs)
  n=${#list[@]}
  for r in $(seq 1 "$RUNS"); do
    say "=== run $r/$RUNS"
    for k in $(seq 0 $((n - 1))); do
      i=$(( (k + r - 1) % n ))          # rotate the order so that no config always goes first
      line="${list[$i]}"
      IFS='|' read -r idx name config workers cmdstr <<<"$line"
      [[ "$name" =~ $ONLY ]] || continue
      bench "$r" "$idx" "$name" "$config" "$workers" "$cmdstr"
    done
  done
}

main() {
  mkdir -p "$RESULTS" "$LOGROOT" "$(dirname "$BENCH_OUT")"
  [[ -x "$BENCH_ONE" ]] || die "$BENCH_ONE not found (set ANCHORS)"
  [[ "${SKIP_SETUP:-0}" == 1 ]] || setup
  [[ -x "$BENCH_PY" ]] || die "$BENCH_PY missing (run without SKIP_SETUP=1)"
  [[ -x "$FERRO_VENV/bin/python" ]] || die "FERRO_VENV=$FERRO_VENV is not a venv"
  snapshot_binary
  if [[ "${APPEND:-0}" != 1 ]]; then : >"$BENCH_OUT"; rm -rf -- "$LOGROOT"/run*; fi
  record_versions
  local t0=$SECONDS
  run_all
  say "runs took $((SECONDS - t0)) s"
  "$BENCH_PY" "$BENCH_DIR/report.py" "$BENCH_OUT" "$BENCH_VERSIONS" "$BENCH_REPORT" "$SET"
}

main "$@"
