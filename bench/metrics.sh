#!/usr/bin/env bash
# Built-in Prometheus metrics of ferrocorn: cost on hello world, scrape time under worker churn,
# side by side with gunicorn 23 + gunicorn-prometheus-exporter 0.2.4 and granian 2.8 --metrics.
#
#   bench/metrics.sh                       # set up (idempotent) + measure (~25 min) + bench/metrics-results.md
#   SKIP_SETUP=1 bench/metrics.sh          # venv already there
#   SKIP_SETUP=1 RUNS=1 DURATION=3s RESTARTS=100 SCRAPES=50 bench/metrics.sh   # smoke test, ~3 min
#   ONLY='ferrocorn' bench/metrics.sh      # regex on the row name (hello rows and churn rows)
#   REPORT_ONLY=1 bench/metrics.sh         # re-render the report from the last raw records
#
# What it measures (all on 127.0.0.1; every server in its own process group, stopped by its PID):
#  A. hello world, 1 worker (the shared anchors' apps/hello_wsgi.py, as bench/run.sh), RUNS interleaved
#     runs, one wrk keep-alive run each (-t1 -c50 -dDURATION after a WARMUP warm-up, via the shared
#     lib/bench_one.sh), HELLO_SCRAPES curl scrapes of /metrics after the load:
#       ferrocorn (metrics on)  |  ferrocorn --no-metrics          <- acceptance: rps ratio >= 0.98
#       gunicorn 23 + gunicorn-prometheus-exporter 0.2.4  |  gunicorn 23 (its baseline)
#       granian 2.8 --metrics   |  granian (its baseline)
#     The ferrocorn pair always runs back to back, PAIR_REPEATS (2) times per run in ABBA order
#     (alternating per run); the units rotate.  Plus (IR_CHECK) the ferrocorn worker's instructions
#     per request, on vs off, under valgrind: the noise-free view of the same question.
#  B. scrape under churn: CHURN_WORKERS (8) workers of bench/metrics_apps/metrics_series_app.py
#     (500 prometheus_client Counter series per worker, created at import in each worker, no
#     preload, PROMETHEUS_MULTIPROC_DIR on tmpfs), --max-requests 1, and GET / until 10 and then
#     RESTARTS (1000) worker restarts happened; at each point: files in the multiprocess dir and
#     SCRAPES (200) timed GET /metrics over one keep-alive connection (bench/metrics_scrape.py).
#     ferrocorn (acceptance: median <= 5 ms at both points, RESTARTS-point median <= 10-point
#     median), then gunicorn 23 + exporter with ANCHOR_SCRAPES scrapes (ANCHOR_RESTARTS restarts).
#     The "no slower" verdict uses PAIR_RUNS paired runs (pair_runs below): two ferrocorn servers
#     scraped in turn, B driven from 10 to RESTARTS restarts while A stays as the control.
#
# Knobs [defaults]:
#   RUNS [3]  DURATION [10s] (wrk per run)  WARMUP [2s]  WRK_CONNS [50]  WRK_THREADS [1]
#   PAIR_REPEATS [2]     the ferrocorn on/off pair is measured this many times per run (ABBA)
#   HELLO_SCRAPES [50]   curl scrapes of /metrics per hello row, after the load
#   BASELINES [1]        0 = skip the plain gunicorn 23 / granian rows
#   RESTARTS [1000]  SCRAPES [200]  CHURN_WORKERS [8]  SERIES [500]
#   PAIR_RUNS [5]  PAIR_ROUNDS [400]   paired control runs for the churn ratio; rounds per phase
#   ANCHOR_RESTARTS [$RESTARTS]  ANCHOR_SCRAPES [20]   (gunicorn+exporter churn; ANCHOR_CHURN [1], 0 = skip;
#                        ANCHOR_TRIES [2]: a new server if its master stalls, as 0.2.4's can under churn)
#   ONLY [.]             regex on row names (ferrocorn, ferrocorn--no-metrics, gunicorn23+prom-exporter,
#                        gunicorn23, granian+metrics, granian, churn:ferrocorn, pair:ferrocorn,
#                        churn:gunicorn23+prom-exporter)
#   SKIP_SETUP [0]       1 = no apt-get / pip
#   MVENV [/tmp/bench-metrics-venv]  venv made by this script (python3.11 from pyenv): gunicorn 23.0.0,
#                        gunicorn-prometheus-exporter 0.2.4, granian 2.8.7, prometheus-client 0.26.0
#   FERRO_VENV [$MVENV]  VIRTUAL_ENV for ferrocorn (must be the CPython 3.11 the binary links + prometheus_client)
#   FERROCORN_BIN [<repo>/target/release/ferrocorn]; copied to FERRO_COPY [/tmp/ferrocorn-bench-bin] first
#   FERRO_WAIT_MIN [0]   poll every 2 min, up to this many minutes, until `ferrocorn --help` shows
#                        --no-metrics; without it the ferrocorn rows are recorded as pending
#   QUIET_BUSY_PCT [20] QUIET_WAIT [60]  wait before each row until other processes use < this % of the box
#   MAX_FOREIGN_PCT [15] RETRIES [1]      re-measure a hello row once if others used > this % of a core
#   IR_CHECK [1]         ferrocorn worker instructions/request, metrics on vs off, under valgrind cachegrind
#                        (noise-free complement to A; ~30 s; skipped without valgrind). IR_N1 [2000] IR_N2 [12000]
#   HELLO_BUDGET_S [480] after this many s of hello rows: no more re-measuring, quiet-waits cut to 5 s
#                        (bounds the run time on a busy box; such rows are flagged (!) in the report)
#   OUT_DIR [bench/metrics-results]  raw records (raw.jsonl, versions.txt), logs/ ; REPORT [bench/metrics-results.md]
#   MP_BASE [/dev/shm]   where the multiprocess dirs are created (removed afterwards)
set -u -o pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$BENCH_DIR")"
ANCHORS="${ANCHORS:-/work/shared/bench-anchors}"
APPS="$ANCHORS/apps"
BENCH_ONE="$ANCHORS/lib/bench_one.sh"
MAPPS="$BENCH_DIR/metrics_apps"
MVENV="${MVENV:-/tmp/bench-metrics-venv}"
FERRO_VENV="${FERRO_VENV:-$MVENV}"
FERRO_COPY="${FERRO_COPY:-/tmp/ferrocorn-bench-bin}"
RUNS="${RUNS:-3}"
HELLO_SCRAPES="${HELLO_SCRAPES:-50}"
BASELINES="${BASELINES:-1}"
RESTARTS="${RESTARTS:-1000}"
SCRAPES="${SCRAPES:-200}"
CHURN_WORKERS="${CHURN_WORKERS:-8}"
SERIES="${SERIES:-500}"
ANCHOR_CHURN="${ANCHOR_CHURN:-1}"
ANCHOR_RESTARTS="${ANCHOR_RESTARTS:-$RESTARTS}"
ANCHOR_SCRAPES="${ANCHOR_SCRAPES:-20}"
ANCHOR_TRIES="${ANCHOR_TRIES:-2}"
ONLY="${ONLY:-.}"
FERRO_WAIT_MIN="${FERRO_WAIT_MIN:-0}"
QUIET_BUSY_PCT="${QUIET_BUSY_PCT:-20}"
QUIET_WAIT="${QUIET_WAIT:-60}"
MAX_FOREIGN_PCT="${MAX_FOREIGN_PCT:-15}"
RETRIES="${RETRIES:-1}"
OUT_DIR="${OUT_DIR:-$BENCH_DIR/metrics-results}"
REPORT="${REPORT:-$BENCH_DIR/metrics-results.md}"
RAW="$OUT_DIR/raw.jsonl"
VERSIONS="$OUT_DIR/versions.txt"
LOGDIR="$OUT_DIR/logs"
MP_BASE="${MP_BASE:-/dev/shm}"
HELLO_BUDGET_S="${HELLO_BUDGET_S:-480}"
PAIR_REPEATS="${PAIR_REPEATS:-2}"
PAIR_RUNS="${PAIR_RUNS:-5}" PAIR_ROUNDS="${PAIR_ROUNDS:-400}"
IR_CHECK="${IR_CHECK:-1}" IR_N1="${IR_N1:-2000}" IR_N2="${IR_N2:-12000}"
HELLO_T0=$SECONDS
export WRK_THREADS="${WRK_THREADS:-1}" WRK_CONNS="${WRK_CONNS:-50}"
export WRK_DURATION="${DURATION:-${WRK_DURATION:-10s}}" WRK_WARMUP="${WARMUP:-${WRK_WARMUP:-2s}}"
PY="$MVENV/bin/python"
export BENCH_PY="$PY"
G="$MVENV/bin/gunicorn"; GR="$MVENV/bin/granian"

say() { echo "[metrics-bench] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- setup ----
pybase() {
  local p
  if [[ -n "${PYBASE:-}" ]]; then echo "$PYBASE"; return; fi
  for p in "$(pyenv root 2>/dev/null)"/versions/3.11*/bin/python3.11 "$HOME"/.pyenv/versions/3.11*/bin/python3.11; do
    [[ -x "$p" ]] && { echo "$p"; return; }
  done
  command -v python3.11 || command -v python3
}

setup() {
  local need_apt=()
  command -v wrk >/dev/null || need_apt+=(wrk)
  command -v curl >/dev/null || need_apt+=(curl)
  [[ "$IR_CHECK" == 1 ]] && ! command -v valgrind >/dev/null && need_apt+=(valgrind)
  if [[ ${#need_apt[@]} -gt 0 ]]; then
    say "apt-get install ${need_apt[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null; } \
      || say "apt-get failed for: ${need_apt[*]}"
  fi
  command -v wrk >/dev/null || die "wrk is required"
  local base; base="$(pybase)"
  [[ -x "$MVENV/bin/python" ]] || { say "creating $MVENV from $base"; "$base" -m venv "$MVENV" || die "venv $MVENV"; }
  local want="23.0.0 0.2.4 2.8.7 0.26.0" have
  have="$("$PY" -c 'import importlib.metadata as m; print(*(m.version(p) for p in ("gunicorn","gunicorn-prometheus-exporter","granian","prometheus-client")))' 2>/dev/null)"
  if [[ "$have" != "$want" ]]; then
    say "pip install gunicorn 23.0.0, gunicorn-prometheus-exporter 0.2.4, granian 2.8.7, prometheus-client 0.26.0 into $MVENV"
    "$MVENV/bin/pip" install -q --disable-pip-version-check 'gunicorn==23.0.0' 'gunicorn-prometheus-exporter==0.2.4' \
        'granian==2.8.7' 'prometheus-client==0.26.0' || die "pip install into $MVENV failed"
  fi
}

# ------------------------------------------------------------ ferrocorn ----
FERRO_READY=0 FERRO="" FERRO_SRC="${FERROCORN_BIN:-$ROOT/target/release/ferrocorn}"
ferro_has_metrics() { [[ -x "$FERRO_SRC" ]] && "$FERRO_SRC" --help 2>/dev/null | grep -q -- '--no-metrics'; }
prepare_ferrocorn() {
  local waited=0
  until ferro_has_metrics; do
    if (( waited >= FERRO_WAIT_MIN )); then
      say "ferrocorn at $FERRO_SRC has no --no-metrics (metrics not implemented yet): its rows are recorded as pending"
      return 0
    fi
    say "ferrocorn has no --no-metrics yet; polling again in 2 min (${waited}/${FERRO_WAIT_MIN} min)"
    sleep 120; waited=$((waited + 2))
  done
  cp -f "$FERRO_SRC" "$FERRO_COPY.new" && mv -f "$FERRO_COPY.new" "$FERRO_COPY" || die "copy of $FERRO_SRC failed"
  FERRO="$FERRO_COPY"; FERRO_READY=1
  "$FERRO_VENV/bin/python" -c 'import prometheus_client' 2>/dev/null \
    || die "FERRO_VENV=$FERRO_VENV lacks prometheus_client (the churn app needs it)"
}

record_versions() {
  local rev dirty
  rev="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
  dirty="$(git -C "$ROOT" status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock build.rs 2>/dev/null | wc -l)"
  {
    echo "date_utc: $(date -u +%FT%TZ)"
    echo "kernel: $(uname -srm)"
    echo "cpu: $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo) x $(nproc) online"
    echo "wrk: $(wrk --version 2>&1 | head -1 | awk '{print $1, $2}') (-t$WRK_THREADS -c$WRK_CONNS -d$WRK_DURATION keep-alive, warm-up $WRK_WARMUP)"
    if [[ "$FERRO_READY" == 1 ]]; then
      echo "ferrocorn: $("$FERRO" --version 2>&1 | head -1), git $rev$( [[ "$dirty" != 0 ]] && echo " (+$dirty uncommitted changes in src/Cargo)"), binary $FERRO_SRC built $(date -u -r "$FERRO_SRC" +%FT%TZ), copy $FERRO sha256 $(sha256sum "$FERRO" | cut -c1-12)"
    else
      echo "ferrocorn: not measured (no --no-metrics in $FERRO_SRC --help), git $rev"
    fi
    echo "ferrocorn VIRTUAL_ENV: $FERRO_VENV ($("$FERRO_VENV/bin/python" -V 2>&1))"
    echo "venv: $MVENV ($("$PY" -V 2>&1))"
    "$MVENV/bin/pip" list --format=freeze 2>/dev/null | grep -iE '^(gunicorn|gunicorn-prometheus-exporter|granian|prometheus.client|psutil)==' | sed 's/^/  /'
    echo "runs: $RUNS (hello, interleaved); churn: $CHURN_WORKERS workers x $SERIES series, restarts 10 and $RESTARTS, $SCRAPES scrapes (anchor: $ANCHOR_RESTARTS restarts, $ANCHOR_SCRAPES scrapes); multiprocess dirs under $MP_BASE"
  } >"$VERSIONS"
  cat "$VERSIONS" >&2
}

# ------------------------------------------------------------ quietness ----
cpu_busy_pct() {
  local a b
  a=($(head -1 /proc/stat)); sleep 1; b=($(head -1 /proc/stat))
  awk -v a="${a[*]}" -v b="${b[*]}" 'BEGIN { n = split(a, x, " "); split(b, y, " "); tot = 0
    for (i = 2; i <= n; i++) tot += y[i] - x[i]
    idle = (y[5] - x[5]) + (y[6] - x[6]); printf "%.0f", (tot > 0 ? 100 * (tot - idle) / tot : 0) }'
}
over_budget() { (( SECONDS - HELLO_T0 > HELLO_BUDGET_S )); }
wait_quiet() {
  local busy t0=$SECONDS warned=0 limit="$QUIET_WAIT"
  over_budget && limit=5
  while :; do
    busy="$(cpu_busy_pct)"
    (( busy < QUIET_BUSY_PCT )) && break
    if (( SECONDS - t0 >= limit )); then say "machine still ${busy}% busy after ${QUIET_WAIT}s; measuring anyway"; break; fi
    (( warned )) || { say "machine ${busy}% busy (other processes); waiting up to ${QUIET_WAIT}s"; warned=1; }
  done
  echo "$busy"
}
TIMES_F="$(mktemp /tmp/metrics-bench-times.XXXXXX)"
MP_DIRS=()
cleanup() { rm -f "$TIMES_F"; local d; for d in "${MP_DIRS[@]}"; do rm -rf -- "$d"; done; }
trap cleanup EXIT
children_cpu_s() {   # CPU s of this shell's reaped children (bench_one, wrk, servers)
  times >"$TIMES_F"
  CHILD_CPU="$(tail -1 "$TIMES_F" | awk '{ t = 0; for (i = 1; i <= 2; i++) { split($i, p, /m|s/); t += p[1] * 60 + p[2] }; printf "%.3f", t }')"
}
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { local p="$1"; while port_busy "$p"; do p=$((p + 1)); done; echo "$p"; }
new_mp_dir() { local d; d="$(mktemp -d "$MP_BASE/metrics-bench-mp.XXXXXX")" || die "mktemp in $MP_BASE"; MP_DIRS+=("$d"); echo "$d"; }
cap_log() {  # keep big server logs (the exporter logs its config on every worker start) bounded
  local f="$1"
  if [[ -f "$f" ]] && (( $(stat -c %s "$f") > 2000000 )); then
    { head -c 500000 "$f"; printf '\n... [%s bytes cut by metrics.sh] ...\n' "$(stat -c %s "$f")"; tail -c 500000 "$f"; } >"$f.cut" && mv -f "$f.cut" "$f"
  fi
}

# ---------------------------------------------------------------- hello ----
# hello_cmd NAME PORT MPORT MPDIR -> the command line (one word per line); empty = not available
hello_cmd() {
  local name="$1" port="$2" mport="$3" mp="$4"
  case "$name" in
    ferrocorn) printf '%s\n' env -u PROMETHEUS_MULTIPROC_DIR -u PROMETHEUS_METRICS_PORT -u PROMETHEUS_BIND_ADDRESS \
        "VIRTUAL_ENV=$FERRO_VENV" "$FERRO" -w 1 -b "127.0.0.1:$port" \
        --prometheus-bind-address 127.0.0.1 --prometheus-metrics-port "$mport" hello_wsgi:app ;;
    ferrocorn--no-metrics) printf '%s\n' env -u PROMETHEUS_MULTIPROC_DIR "VIRTUAL_ENV=$FERRO_VENV" "$FERRO" -w 1 \
        -b "127.0.0.1:$port" --no-metrics hello_wsgi:app ;;
    gunicorn23+prom-exporter) printf '%s\n' env "PROMETHEUS_MULTIPROC_DIR=$mp" "PROMETHEUS_METRICS_PORT=$mport" \
        PROMETHEUS_BIND_ADDRESS=127.0.0.1 GUNICORN_WORKERS=1 "METRICS_BENCH_BIND=127.0.0.1:$port" \
        "$G" -c "$MAPPS/metrics_gunicorn_prom.conf.py" hello_wsgi:app ;;
    gunicorn23) printf '%s\n' "$G" -w 1 -k sync -b "127.0.0.1:$port" hello_wsgi:app ;;
    granian+metrics) printf '%s\n' "$GR" --interface wsgi --workers 1 --blocking-threads 1 --host 127.0.0.1 --port "$port" \
        --log-level warning --metrics --metrics-address 127.0.0.1 --metrics-port "$mport" hello_wsgi:app ;;
    granian) printf '%s\n' "$GR" --interface wsgi --workers 1 --blocking-threads 1 --host 127.0.0.1 --port "$port" \
        --log-level warning hello_wsgi:app ;;
  esac
}
has_metrics() { [[ "$1" == ferrocorn || "$1" == *+* ]]; }
config_of() {
  case "$1" in
    ferrocorn) echo "w1, metrics on (default), exporter 127.0.0.1" ;;
    ferrocorn--no-metrics) echo "w1 --no-metrics" ;;
    gunicorn23+prom-exporter) echo "w1 sync, PrometheusWorker + default hooks, file mode" ;;
    gunicorn23) echo "w1 sync" ;;
    granian+metrics) echo "w1 wsgi blocking-threads=1 --metrics" ;;
    granian) echo "w1 wsgi blocking-threads=1" ;;
  esac
}

skip_rec() {  # KIND NAME RUN STATUS
  "$PY" -c 'import json,sys; print(json.dumps({"kind":sys.argv[1],"name":sys.argv[2],"run":int(sys.argv[3]),"status":sys.argv[4]}))' \
    "$1" "$2" "$3" "$4" >>"$RAW"
}

# hello_one RUN IDX NAME
hello_one() {
  local run="$1" idx="$2" name="$3" attempt port mport mp busy st0 st1 c0 c1 tmp foreign last config cmd opts
  config="$(config_of "$name")"
  if [[ "$name" == ferrocorn* && "$FERRO_READY" != 1 ]]; then skip_rec hello "$name" "$run" "pending: ferrocorn metrics not implemented yet"; return; fi
  for attempt in $(seq 1 $((RETRIES + 1))); do
    port="$(free_port $((18700 + 100 * (attempt - 1) + 10 * run + idx)))"
    mport="$(free_port $((19700 + 100 * (attempt - 1) + 10 * run + idx)))"
    mp=""; [[ "$name" == gunicorn23+prom-exporter ]] && mp="$(new_mp_dir)"
    mapfile -t cmd < <(hello_cmd "$name" "$port" "$mport" "$mp")
    opts=(--no-close)
    has_metrics "$name" && opts+=(--metrics-url "http://127.0.0.1:$mport/metrics")
    [[ -n "$mp" ]] && opts+=(--mp-dir "$mp")
    last=0; { (( attempt == RETRIES + 1 )) || over_budget; } && last=1
    busy="$(wait_quiet)"
    tmp="$(mktemp /tmp/metrics-bench.XXXXXX)"
    st0="$(head -1 /proc/stat)"; children_cpu_s; c0="$CHILD_CPU"
    (cd "$APPS" && BENCH_OUT="$tmp" BENCH_LOGDIR="$LOGDIR/run$run" SCRAPES="$HELLO_SCRAPES" "$BENCH_ONE" \
        --name "$name" --config "$config" --port "$port" --workers 1 "${opts[@]}" -- "${cmd[@]}") \
      || say "$name run $run failed (see $LOGDIR/run$run)"
    st1="$(head -1 /proc/stat)"; children_cpu_s; c1="$CHILD_CPU"
    [[ -n "$mp" ]] && rm -rf -- "$mp"
    foreign="$("$PY" - "$tmp" "$RAW" "$run" "$attempt" "$last" "$busy" "$st0" "$st1" "$c0" "$c1" \
               "$(nproc)" "$(getconf CLK_TCK)" "$MAX_FOREIGN_PCT" "$mport" <<'PY'
import json, sys
tmp, out, run, attempt, last, busy, st0, st1, c0, c1, ncpu, hz, maxf, mport = sys.argv[1:15]
a = [int(x) for x in st0.split()[1:9]]; b = [int(x) for x in st1.split()[1:9]]
d = [y - x for x, y in zip(a, b)]
wall = sum(d) / int(ncpu) / int(hz)
busy_s = (sum(d) - d[3] - d[4]) / int(hz)
mine = float(c1) - float(c0)
pct = lambda s: round(100.0 * s / wall, 1) if wall > 0 else None
foreign = pct(max(0.0, busy_s - mine))
recs = [json.loads(l) for l in open(tmp) if l.strip()]
for rec in recs:
    rec.update(kind="hello", run=int(run), attempt=int(attempt), busy_before_pct=float(busy or 0),
               foreign_cpu_pct=foreign, metrics_port=int(mport))
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
    if [[ "$last" == 1 ]] || awk -v f="$foreign" -v m="$MAX_FOREIGN_PCT" 'BEGIN { exit !(f <= m) }'; then break; fi
    say "$name run $run: other processes used ${foreign}% of a core; measuring again"
  done
}

hello_all() {
  local units=("ferrocorn ferrocorn--no-metrics" "gunicorn23+prom-exporter" "granian+metrics")
  [[ "$BASELINES" == 1 ]] && units+=("gunicorn23" "granian")
  local n=${#units[@]} r k u names name idx
  declare -A IDX=([ferrocorn]=0 [ferrocorn--no-metrics]=1 [gunicorn23+prom-exporter]=2 [gunicorn23]=3 [granian+metrics]=4 [granian]=5)
  for r in $(seq 1 "$RUNS"); do
    say "=== hello run $r/$RUNS"
    for k in $(seq 0 $((n - 1))); do
      u="${units[$(( (k + r - 1) % n ))]}"
      read -r -a names <<<"$u"
      if (( ${#names[@]} == 2 )); then   # the ferrocorn pair: ABBA..., order alternating per run
        local a="${names[0]}" b="${names[1]}" j
        (( r % 2 == 0 )) && { a="${names[1]}"; b="${names[0]}"; }
        names=()
        for j in $(seq 1 "$PAIR_REPEATS"); do
          if (( j % 2 )); then names+=("$a" "$b"); else names+=("$b" "$a"); fi
        done
      fi
      for name in "${names[@]}"; do
        [[ "$name" =~ $ONLY ]] || continue
        hello_one "$r" "${IDX[$name]}" "$name"
      done
    done
  done
}

# ---------------------------------------------------------------- churn ----
churn_one() {  # NAME
  local name="$1" port mport mp cmd cps scrapes
  [[ "$name" =~ $ONLY ]] || return 0
  port="$(free_port 18690)"; mport="$(free_port 19690)"
  [[ "$mport" == "$port" ]] && mport="$(free_port $((port + 1)))"
  if [[ "$name" == churn:ferrocorn && "$FERRO_READY" != 1 ]]; then
    skip_rec churn "$name" 0 "pending: ferrocorn metrics not implemented yet"; return 0
  fi
  mp="$(new_mp_dir)"
  case "$name" in
    churn:ferrocorn)
      cps="10,$RESTARTS"; scrapes="$SCRAPES"
      cmd=(env -u PROMETHEUS_METRICS_PORT -u PROMETHEUS_BIND_ADDRESS
           "VIRTUAL_ENV=$FERRO_VENV" "PROMETHEUS_MULTIPROC_DIR=$mp" "METRICS_APP_SERIES=$SERIES"
           "$FERRO" -w "$CHURN_WORKERS" --max-requests 1 -b "127.0.0.1:$port"
           --prometheus-bind-address 127.0.0.1 --prometheus-metrics-port "$mport" metrics_series_app:app) ;;
    churn:gunicorn23+prom-exporter)
      cps="10,$ANCHOR_RESTARTS"; scrapes="$ANCHOR_SCRAPES"
      cmd=(env "PROMETHEUS_MULTIPROC_DIR=$mp" "METRICS_APP_SERIES=$SERIES" "PROMETHEUS_METRICS_PORT=$mport"
           PROMETHEUS_BIND_ADDRESS=127.0.0.1 "GUNICORN_WORKERS=$CHURN_WORKERS" "METRICS_BENCH_BIND=127.0.0.1:$port"
           METRICS_BENCH_MAX_REQUESTS=1 "$G" -c "$MAPPS/metrics_gunicorn_prom.conf.py" metrics_series_app:app) ;;
  esac
  say "=== $name: $CHURN_WORKERS workers x $SERIES series, restarts ${cps}, $scrapes scrapes per point (machine $(wait_quiet)% busy)"
  mkdir -p "$LOGDIR/churn"
  (cd "$MAPPS" && "$PY" "$BENCH_DIR/metrics_scrape.py" churn --name "$name" \
      --config "w$CHURN_WORKERS --max-requests 1, $SERIES series/worker" \
      --app-url "http://127.0.0.1:$port/" --metrics-url "http://127.0.0.1:$mport/metrics" --mp-dir "$mp" \
      --workers "$CHURN_WORKERS" --checkpoints "$cps" --scrapes "$scrapes" --out "$RAW" \
      --log "$LOGDIR/churn/${name#churn:}.server.log" -- "${cmd[@]}")
  local rc=$?
  (( rc == 0 )) || say "$name failed (see $LOGDIR/churn/)"
  cap_log "$LOGDIR/churn/${name#churn:}.server.log"
  rm -rf -- "$mp"
  return "$rc"
}

# --------------------------------------------------- churn, paired control ----
# The churn row's two checkpoints are minutes apart, and on this box an exporter's scrape time moves by
# +-20 % between minutes and between processes.  So the "no slower after RESTARTS restarts" verdict comes
# from PAIR_RUNS paired runs: two servers A and B, both at 10 restarts, scraped in turn; then B alone
# goes on to RESTARTS restarts and both are scraped in turn again.  B after/before over A after/before.
pair_runs() {
  local name=pair:ferrocorn i
  [[ "$name" =~ $ONLY && "$FERRO_READY" == 1 && "$PAIR_RUNS" -gt 0 ]] || return 0
  mkdir -p "$LOGDIR/pair"
  for i in $(seq 1 "$PAIR_RUNS"); do
    local pa ma pb mb mp
    pa="$(free_port 18720)"; ma="$(free_port 19720)"; pb="$(free_port 18740)"; mb="$(free_port 19740)"
    mp="$(new_mp_dir)"; rmdir -- "$mp"
    say "=== $name run $i/$PAIR_RUNS: $CHURN_WORKERS workers x $SERIES series, A and B at 10 restarts, then B at $RESTARTS, $PAIR_ROUNDS rounds per phase (machine $(wait_quiet)% busy)"
    (cd "$MAPPS" && "$PY" "$BENCH_DIR/metrics_scrape.py" pair --name "$name" \
        --config "w$CHURN_WORKERS --max-requests 1, $SERIES series/worker" \
        --ports-a "$pa,$ma" --ports-b "$pb,$mb" --mp-dir "$mp" --workers "$CHURN_WORKERS" \
        --low 10 --high "$RESTARTS" --scrapes "$PAIR_ROUNDS" --out "$RAW" --log "$LOGDIR/pair/run$i.server.log" -- \
        env -u PROMETHEUS_METRICS_PORT -u PROMETHEUS_BIND_ADDRESS "VIRTUAL_ENV=$FERRO_VENV" \
        "PROMETHEUS_MULTIPROC_DIR={MP_DIR}" "METRICS_APP_SERIES=$SERIES" \
        "$FERRO" -w "$CHURN_WORKERS" --max-requests 1 -b "127.0.0.1:{APP_PORT}" \
        --prometheus-bind-address 127.0.0.1 --prometheus-metrics-port "{METRICS_PORT}" metrics_series_app:app) \
      || say "$name run $i failed (see $LOGDIR/pair/)"
    cap_log "$LOGDIR/pair/run$i.server.log.A"; cap_log "$LOGDIR/pair/run$i.server.log.B"
  done
}

# ---------------------------------------------------- instructions/request ----
# Timing on this shared 2-core box moves by +-10 % between runs; the instruction count of the worker
# does not.  ferrocorn metrics on vs --no-metrics under valgrind (cachegrind, no cache simulation).
ir_check() {
  local name mode port
  [[ "$IR_CHECK" == 1 && "$FERRO_READY" == 1 ]] || return 0
  command -v valgrind >/dev/null || { say "valgrind not installed: skipping the instructions/request check"; return 0; }
  for name in ir:ferrocorn ir:ferrocorn--no-metrics; do
    [[ "$name" =~ $ONLY ]] || continue
    port="$(free_port 18680)"
    if [[ "$name" == ir:ferrocorn ]]; then mode=(--prometheus-bind-address 127.0.0.1 --prometheus-metrics-port "$(free_port 19680)")
    else mode=(--no-metrics); fi
    (cd "$APPS" && "$PY" "$BENCH_DIR/metrics_scrape.py" irs --name "$name" --app-url "http://127.0.0.1:$port/" \
        --workdir "$LOGDIR/ir/${name#ir:}" --n1 "$IR_N1" --n2 "$IR_N2" --out "$RAW" -- \
        env -u PROMETHEUS_MULTIPROC_DIR "VIRTUAL_ENV=$FERRO_VENV" valgrind -q --tool=cachegrind --cache-sim=no \
        '--cachegrind-out-file={OUTDIR}/cg.%p' "$FERRO" -w 1 -t 300 -b "127.0.0.1:$port" "${mode[@]}" hello_wsgi:app) \
      || say "$name failed (see $LOGDIR/ir/)"
  done
}

main() {
  mkdir -p "$OUT_DIR" "$LOGDIR"
  if [[ "${REPORT_ONLY:-0}" == 1 ]]; then "$PY" "$BENCH_DIR/metrics_report.py" "$RAW" "$VERSIONS" "$REPORT"; return; fi
  [[ -x "$BENCH_ONE" ]] || die "$BENCH_ONE not found (set ANCHORS)"
  [[ "${SKIP_SETUP:-0}" == 1 ]] || setup
  [[ -x "$PY" && -x "$G" && -x "$GR" ]] || die "$MVENV incomplete (run without SKIP_SETUP=1)"
  [[ -x "$FERRO_VENV/bin/python" ]] || die "FERRO_VENV=$FERRO_VENV is not a venv"
  prepare_ferrocorn
  [[ "${APPEND:-0}" == 1 ]] || { : >"$RAW"; rm -rf -- "$LOGDIR"/run* "$LOGDIR"/churn "$LOGDIR"/ir; }
  record_versions
  local t0=$SECONDS
  HELLO_T0=$SECONDS
  hello_all
  say "hello rows took $((SECONDS - t0)) s"
  ir_check
  local t1=$SECONDS
  churn_one churn:ferrocorn
  pair_runs
  if [[ "$ANCHOR_CHURN" == 1 ]]; then
    local try
    for try in $(seq 1 "$ANCHOR_TRIES"); do   # its master can deadlock under churn (see the notes): try again
      churn_one churn:gunicorn23+prom-exporter && break
    done
  fi
  say "churn rows took $((SECONDS - t1)) s; total $((SECONDS - t0)) s"
  "$PY" "$BENCH_DIR/metrics_report.py" "$RAW" "$VERSIONS" "$REPORT"
}

main "$@"
