#!/usr/bin/env python3
"""Redis cost per request, side by side (issue 12; not part of the tests).

The same hello WSGI app and the same gunicorn.conf.py, written the way
gunicorn-prometheus-exporter 0.2.4 documents its Redis mode
(os.environ.setdefault of REDIS_ENABLED, REDIS_HOST, ... in the config
file; its PrometheusWorker; its default_* hooks and redis_when_ready), run
under

  (a) gunicorn 23.0.0 + gunicorn-prometheus-exporter 0.2.4 (a venv of its
      own under /tmp, made with pip when missing), and
  (b) ferrocorn (target/release/ferrocorn), which reads the same file,

each against its own fresh redis-server on a free port. Each run: start the
server, warm up, then wrk loads it for a fixed time; Redis commands per
request come from INFO commandstats before and after (our INFO calls left
out) divided by the requests wrk completed (wrk cannot time a fixed count:
see `wrk()`). Runs alternate between the two servers; the table
has the median of the runs and the per-run figures.

    python3 bench/redis_side_by_side.py [--seconds 10] [--runs 3] [--workers 2]

Prints a Markdown table. Every process it starts is stopped by PID.
"""
import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("FERROCORN_BIN", os.path.join(ROOT, "target", "release", "ferrocorn"))
GPE_VENV = os.environ.get("GPE_VENV", "/tmp/fc-gpe-venv")
GPE_PACKAGES = ["gunicorn==23.0.0", "gunicorn-prometheus-exporter==0.2.4", "redis"]

APP = '''
def app(environ, start_response):
    body = b"Hello, World!"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''

# As the exporter's configuration guide writes its Redis setup (env vars set
# before its imports, its hooks, its worker class).
CONF = '''
import os
os.environ.setdefault("PROMETHEUS_METRICS_PORT", "{mport}")
os.environ.setdefault("PROMETHEUS_BIND_ADDRESS", "127.0.0.1")
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", "{mpdir}")
os.environ.setdefault("GUNICORN_WORKERS", "{workers}")
os.environ.setdefault("REDIS_ENABLED", "true")
os.environ.setdefault("REDIS_HOST", "127.0.0.1")
os.environ.setdefault("REDIS_PORT", "{rport}")
os.environ.setdefault("REDIS_DB", "0")
os.environ.setdefault("REDIS_PASSWORD", "")
os.environ.setdefault("REDIS_KEY_PREFIX", "gunicorn")

from gunicorn_prometheus_exporter.hooks import (
    default_on_starting,
    redis_when_ready,
    default_worker_int,
    default_on_exit,
    default_post_fork,
)

bind = "127.0.0.1:{port}"
workers = {workers}
worker_class = "gunicorn_prometheus_exporter.PrometheusWorker"
timeout = 60
keepalive = 5

on_starting = default_on_starting
when_ready = redis_when_ready
worker_int = default_worker_int
on_exit = default_on_exit
post_fork = default_post_fork
'''

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("timed out waiting for " + what)


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def ensure_venv():
    py = os.path.join(GPE_VENV, "bin", "python")
    ok = os.path.exists(py) and subprocess.run(
        [py, "-c", "import gunicorn, gunicorn_prometheus_exporter, redis; "
                   "assert gunicorn.__version__ == '23.0.0'"], capture_output=True).returncode == 0
    if not ok:
        print("making %s (pip install %s)" % (GPE_VENV, " ".join(GPE_PACKAGES)), file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", "--clear", GPE_VENV], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q"] + GPE_PACKAGES, check=True)
    return GPE_VENV


class Redis:
    def __init__(self, tmp):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(dir=tmp)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True)
        wait(lambda: self.cli("PING") == "PONG", 20, "redis-server")

    def cli(self, *args):
        return subprocess.run(["redis-cli", "-p", str(self.port)] + list(args), capture_output=True,
                              text=True, timeout=30).stdout.strip()

    def commandstats(self):
        out = {}
        for line in self.cli("INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_"):
                name, rest = line[len("cmdstat_"):].split(":", 1)
                out[name] = int(dict(kv.split("=") for kv in rest.split(","))["calls"])
        return out


def wrk(url, seconds, conns):
    # wrk's own mode: a fixed duration. (Its Lua `wrk.thread:stop()` stops
    # sending at a count, but wrk still waits out -d and reports -d as the
    # elapsed time, so a fixed count would give no requests/s.)
    out = subprocess.run(["wrk", "-t", "1", "-c", str(conns), "-d", "%ds" % seconds, url],
                         capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError("wrk failed: " + out.stderr)
    reqs = secs = None
    errors = 0
    for line in out.stdout.splitlines():
        line = line.strip()
        if " requests in " in line:
            reqs = int(line.split()[0])
            t = line.split(" requests in ")[1].split(",")[0]
            secs = float(t[:-2]) / 1000 if t.endswith("ms") else (
                float(t[:-1]) * 60 if t.endswith("m") else float(t[:-1]))
        if line.startswith("Non-2xx") or line.startswith("Socket errors"):
            errors += sum(int(x) for x in line.replace(",", " ").split() if x.isdigit())
    if reqs is None:
        raise RuntimeError("cannot read wrk's output:\n" + out.stdout)
    return reqs, secs, errors


def run_one(kind, venv, tmp, args):
    r = Redis(tmp)
    port, mport = free_port(), free_port()
    mpdir = tempfile.mkdtemp(dir=tmp, prefix="mp-")
    d = tempfile.mkdtemp(dir=tmp, prefix=kind + "-")
    with open(os.path.join(d, "hello.py"), "w") as f:
        f.write(APP)
    conf = os.path.join(d, "gunicorn.conf.py")
    with open(conf, "w") as f:
        f.write(CONF.format(mport=mport, mpdir=mpdir, workers=args.workers, rport=r.port, port=port))
    env = dict(os.environ)
    for k in list(env):
        if k.startswith(("REDIS_", "PROMETHEUS_", "GUNICORN_")):
            del env[k]
    if kind == "gunicorn":
        env["PATH"] = os.path.join(venv, "bin") + ":" + env["PATH"]
        cmd = [os.path.join(venv, "bin", "gunicorn"), "-c", conf, "--chdir", d, "hello:app"]
    else:
        # The app's interpreter: the project's venv (no packages needed).
        pyvenv = os.path.join(ROOT, ".venv")
        if os.path.isdir(pyvenv):
            env["VIRTUAL_ENV"] = pyvenv
        cmd = [BIN, "-c", conf, "--chdir", d, "hello:app"]
    log = open(os.path.join(d, "server.log"), "wb")
    p = subprocess.Popen(cmd, env=env, cwd=d, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
    url = "http://127.0.0.1:%d/" % port
    try:
        wait(lambda: urllib.request.urlopen(url, timeout=2).status == 200, 60, kind + " serving")
        wait(lambda: urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=5).status == 200,
             30, kind + "'s /metrics")
        wrk(url, args.warmup, args.connections)
        time.sleep(1)
        before = r.commandstats()
        t0 = time.monotonic()
        reqs, secs, errors = wrk(url, args.seconds, args.connections)
        wall = time.monotonic() - t0
        after = r.commandstats()
        # Everything the server sent Redis while the load ran, per-request
        # writes and periodic ones (ferrocorn's pushes) alike.
        calls = {c: after.get(c, 0) - before.get(c, 0) for c in after}
        calls.pop("info", None)
        calls = {c: n for c, n in calls.items() if n}
        return {
            "requests": reqs, "seconds": secs, "wall": wall, "errors": errors,
            "rps": reqs / secs if secs else 0.0,
            "commands": sum(calls.values()), "per_request": sum(calls.values()) / max(reqs, 1),
            "calls": calls,
        }
    except Exception:
        log.flush()
        with open(os.path.join(d, "server.log"), "rb") as f:
            sys.stderr.write(f.read()[-4000:].decode("utf-8", "replace"))
        raise
    finally:
        stop(p)
        log.close()
        r.proc.send_signal(signal.SIGTERM)
        try:
            r.proc.wait(10)
        except subprocess.TimeoutExpired:
            r.proc.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10, help="of load per run")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of load before each measured run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--only", choices=["gunicorn", "ferrocorn"], help="run one of the two only")
    args = ap.parse_args()
    kinds = [args.only] if args.only else ["gunicorn", "ferrocorn"]
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed (apt-get install -y wrk)")
    if "ferrocorn" in kinds and not os.path.exists(BIN):
        raise SystemExit("no ferrocorn binary at %s (cargo build --release, or FERROCORN_BIN)" % BIN)
    venv = ensure_venv()
    tmp = tempfile.mkdtemp(prefix="fc-redis-sbs-")
    results = {"gunicorn": [], "ferrocorn": []}
    try:
        for i in range(args.runs):
            for kind in kinds:
                res = run_one(kind, venv, tmp, args)
                results[kind].append(res)
                print("run %d %-9s %6d requests in %.2fs: %8.0f req/s, %7d Redis commands, %.4f per request %s"
                      % (i + 1, kind, res["requests"], res["seconds"], res["rps"], res["commands"],
                         res["per_request"], dict(sorted(res["calls"].items(), key=lambda kv: -kv[1]))),
                      file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    names = {"gunicorn": "gunicorn 23.0.0 + gunicorn-prometheus-exporter 0.2.4 (REDIS_ENABLED=true)",
             "ferrocorn": "ferrocorn (same config file, REDIS_ENABLED=true)"}
    print("| server (%d workers, wrk -t1 -c%d, %d s per run) | Redis commands per request | requests/s "
          "(median) | per run: requests; req/s; commands/request | commands seen |"
          % (args.workers, args.connections, args.seconds))
    print("|---|---|---|---|---|")
    for kind in kinds:
        rs = results[kind]
        seen = {}
        for r in rs:
            for c, n in r["calls"].items():
                seen[c] = seen.get(c, 0) + n
        top = ", ".join("%s %.2f" % (c, n / sum(r["requests"] for r in rs))
                        for c, n in sorted(seen.items(), key=lambda kv: -kv[1])[:6])
        print("| %s | %.6f | %.0f | %s | %s |" % (
            names[kind], statistics.median(r["per_request"] for r in rs),
            statistics.median(r["rps"] for r in rs),
            "; ".join("%d; %.0f; %.6f" % (r["requests"], r["rps"], r["per_request"]) for r in rs),
            ("per request: " + top) if top else "none"))


if __name__ == "__main__":
    sys.exit(main())
