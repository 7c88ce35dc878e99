#!/usr/bin/env bash
# HTTPS hello-world: ferrocorn (rustls) vs granian (--ssl-certificate) and
# gunicorn sync (--certfile), 1 worker each, on the bench-anchors' hello_wsgi
# app; RUNS interleaved rounds (order rotated) of wrk keep-alive and wrk with
# `Connection: close` (a TLS handshake per request). Prints a Markdown table
# of medians and the ratios, measured in the same run.
#
#   bench/tls.sh                 # RUNS=3, WRK_DURATION=8s
#   FERROCORN_BIN=... bench/tls.sh
#
# Needs bench/run.sh's set-up once (the /tmp/bench-venv with granian and
# gunicorn; wrk built with TLS, as Debian's is).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
APPS=/work/shared/bench-anchors/apps
BVENV="${BENCH_VENV:-/tmp/bench-venv}"
FERRO="${FERROCORN_BIN:-$ROOT/target/release/ferrocorn}"
RUNS="${RUNS:-3}"
DUR="${WRK_DURATION:-8s}"
TMP="$(mktemp -d /tmp/ferrocorn-tls-bench.XXXXXX)"
trap 'rm -rf "$TMP"' EXIT
# A P-256 key (PKCS#8, as granian requires) and a self-signed certificate.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
C="$TMP/cert.pem" K="$TMP/key.pem"

declare -A CMD=(
  [ferrocorn]="env VIRTUAL_ENV=$ROOT/.venv PROMETHEUS_METRICS_PORT=18699 $FERRO -w 1 -b 127.0.0.1:{PORT} --certfile $C --keyfile $K --chdir $APPS hello_wsgi:app"
  [granian]="$BVENV/bin/granian --interface wsgi --workers 1 --host 127.0.0.1 --port {PORT} --ssl-certificate $C --ssl-keyfile $K --ssl-protocol-min tls1.2 --log-level warning --working-dir $APPS hello_wsgi:app"
  [gunicorn]="$BVENV/bin/gunicorn -w 1 -b 127.0.0.1:{PORT} --certfile $C --keyfile $K --chdir $APPS hello_wsgi:app"
)
NAMES=(ferrocorn granian gunicorn)
port=18700
one() {  # name -> "ka_rps close_rps"
  local name=$1 cmd pid ka cl
  port=$((port + 1))
  cmd="${CMD[$name]//\{PORT\}/$port}"
  setsid bash -c "exec $cmd" >"$TMP/$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    curl -sk -o /dev/null "https://127.0.0.1:$port/" && break
    sleep 0.1
  done
  wrk -t1 -c50 -d2s "https://127.0.0.1:$port/" >/dev/null 2>&1 || true
  ka=$( (wrk -t1 -c50 -d"$DUR" "https://127.0.0.1:$port/" 2>&1 || true) | awk '/Requests\/sec/ {print $2}')
  cl=$( (wrk -t1 -c50 -d"$DUR" -H "Connection: close" "https://127.0.0.1:$port/" 2>&1 || true) | awk '/Requests\/sec/ {print $2}')
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  echo "${ka:-0} ${cl:-0}"
}
declare -A KA CL
for r in $(seq "$RUNS"); do
  for i in 0 1 2; do
    name=${NAMES[$(( (i + r) % 3 ))]}
    read -r ka cl < <(one "$name")
    echo "run $r $name: keep-alive $ka rps, Connection: close $cl rps" >&2
    KA[$name]+="$ka "
    CL[$name]+="$cl "
  done
done
python3 - "${KA[ferrocorn]}" "${KA[granian]}" "${KA[gunicorn]}" "${CL[ferrocorn]}" "${CL[granian]}" "${CL[gunicorn]}" <<'PY'
import statistics, sys
v = [[float(x) for x in a.split()] for a in sys.argv[1:]]
med = [statistics.median(x) for x in v]
names = ["ferrocorn", "granian", "gunicorn sync"]
print("| server | HTTPS keep-alive rps (median; runs) | Connection: close rps (median; runs) |")
print("|---|---:|---:|")
for i, n in enumerate(names):
    print("| %s | %.0f (%s) | %.0f (%s) |" % (n, med[i], ", ".join("%.0f" % x for x in v[i]),
                                              med[i + 3], ", ".join("%.0f" % x for x in v[i + 3])))
print()
print("- keep-alive: ferrocorn / granian = %.2f, ferrocorn / gunicorn = %.1f" % (med[0] / med[1], med[0] / med[2]))
print("- Connection: close (handshakes): ferrocorn / granian = %.2f" % (med[3] / med[4]))
PY
