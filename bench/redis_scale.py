#!/usr/bin/env python3
"""Redis backend at scale (issue 12; not part of the tests).

1. One instance, 8 workers, 500 application series per worker (a Gauge in
   mode `all`: 4,000 series): the push's duration and size, read from the
   instance's own ferrocorn_redis_* families over ~20 pushes, and the Redis
   commands per push from INFO commandstats.
2. 200 instances' state in one Redis, written in the push format (the real
   instance's document, renamed 200 times): `ferrocorn exporter` scrape time.
3. The same 200 instances in a 3-master Redis Cluster.

    .venv/bin/python bench/redis_scale.py        # prints a Markdown table

Everything runs on 127.0.0.1 free ports; the processes it starts are
stopped by PID at the end.
"""
import json
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
VENV = os.path.join(ROOT, ".venv")
HOST = socket.gethostname()

APP = '''
from prometheus_client import Gauge
G = Gauge("bench_item_value", "one series per item and worker", ["item"], multiprocess_mode="all")
for i in range(500):
    G.labels(item="item%03d" % i).set(i)

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
'''

procs = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd, env=None, log=None):
    p = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log or subprocess.DEVNULL,
                         stderr=subprocess.STDOUT, start_new_session=True)
    procs.append(p)
    return p


def wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("timed out waiting for " + what)


def cli(port, *args, stdin=None):
    return subprocess.run(["redis-cli", "-p", str(port)] + list(args), input=stdin,
                          capture_output=True, timeout=120).stdout.decode().strip()


def redis(tmp, *extra):
    port = free_port()
    while "--cluster-enabled" in extra and port + 10000 > 65535:  # its bus port
        port = free_port()
    d = tempfile.mkdtemp(dir=tmp)
    start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--dir", d] + list(extra))
    wait(lambda: cli(port, "PING") == "PONG", 30, "redis on %d" % port)
    print("redis on", port, file=sys.stderr)
    return port


def get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read().decode()


def families(text):
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def commandstats(port):
    out = {}
    for line in cli(port, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, rest = line[len("cmdstat_"):].split(":", 1)
            out[name] = int(dict(kv.split("=") for kv in rest.split(","))["calls"])
    return out


def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def fill(port, prefix, doc, n):
    """n instances' state under prefix, as n pushes would leave it."""
    d = json.loads(doc)
    index = "%s:ferrocorn:{%s}:instances" % (prefix, prefix)
    cmds = []
    for i in range(n):
        d["host"], d["instance"] = "bench-host-%03d" % i, "10.0.%d.%d:8000" % (i // 250, i % 250)
        key = "%s:ferrocorn:{%s}:state:%s:%s" % (prefix, prefix, d["host"], d["instance"])
        cmds.append(resp("SET", key, json.dumps(d), "EX", 600))
        cmds.append(resp("SADD", index, key))
    out = cli(port, "--pipe", stdin=b"".join(cmds))
    assert "errors: 0" in out, out


def scrape_times(env, n=20):
    port = free_port()
    env = dict(env, PROMETHEUS_BIND_ADDRESS="127.0.0.1", PROMETHEUS_METRICS_PORT=str(port))
    start([BIN, "exporter"], env=env)
    url = "http://127.0.0.1:%d/metrics" % port
    wait(lambda: get(url), 10, "the read side")
    times, size = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        size = len(get(url))
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), max(times), size


def main():
    tmp = tempfile.mkdtemp(prefix="fc-redis-bench-")
    rows = []
    try:
        with open(os.path.join(tmp, "benchapp.py"), "w") as f:
            f.write(APP)
        rport = redis(tmp)
        app_port, mport = free_port(), free_port()
        env = dict(os.environ, VIRTUAL_ENV=VENV, PATH=os.path.join(VENV, "bin") + ":" + os.environ["PATH"],
                   REDIS_ENABLED="true", REDIS_PORT=str(rport), REDIS_KEY_PREFIX="bench",
                   REDIS_PUSH_INTERVAL="1", PROMETHEUS_BIND_ADDRESS="127.0.0.1",
                   PROMETHEUS_METRICS_PORT=str(mport))
        log = open(os.path.join(tmp, "server.log"), "wb")
        start([BIN, "-w", "8", "-b", "127.0.0.1:%d" % app_port, "--chdir", tmp, "benchapp:app"], env=env, log=log)
        murl = "http://127.0.0.1:%d/metrics" % mport
        local = wait(lambda: (lambda t: t if t.count("bench_item_value{") >= 4000 else None)(get(murl)), 60,
                     "8 workers' 4,000 series")
        series = sum(1 for line in local.splitlines() if line and not line.startswith("#"))
        time.sleep(2)
        before = commandstats(rport)
        f0 = families(get(murl))
        durations, collects, scrapes = [], [], []
        for _ in range(20):
            time.sleep(1.0)
            t0 = time.perf_counter()
            f = families(get(murl))
            scrapes.append((time.perf_counter() - t0) * 1000)
            durations.append(f["ferrocorn_redis_push_duration_seconds"] * 1000)
            collects.append(f["ferrocorn_redis_push_collect_seconds"] * 1000)
        f1 = families(get(murl))
        after = commandstats(rport)
        pushes = f1['ferrocorn_redis_pushes_total{result="ok"}'] - f0['ferrocorn_redis_pushes_total{result="ok"}']
        cmds = sum(after.get(c, 0) - before.get(c, 0) for c in after if c != "info")
        rows.append(("push: 8 workers x 500 app series (%d series on /metrics)" % series,
                     "median %.2f ms (collect + encode %.2f ms, round trip %.2f ms), max %.2f ms over %d "
                     "pushes; %d bytes; %.1f commands/push in 1 pipeline; a local scrape: median %.2f ms"
                     % (statistics.median(durations), statistics.median(collects),
                        statistics.median(d - c for d, c in zip(durations, collects)), max(durations),
                        len(durations), f1["ferrocorn_redis_push_bytes"], cmds / max(pushes, 1),
                        statistics.median(scrapes))))

        key = "bench:ferrocorn:{bench}:state:%s:127.0.0.1:%d" % (HOST, app_port)
        doc = subprocess.run(["redis-cli", "-p", str(rport), "--raw", "GET", key], capture_output=True,
                             timeout=30).stdout.rstrip(b"\n")
        # The same instance without its application gauges: ferrocorn's own
        # families of 8 workers only.
        d = json.loads(doc)
        d["families"] = [f for f in d["families"] if f["n"] != "bench_item_value"]
        small = json.dumps(d).encode()
        for name, body in (("fleet", doc), ("small", small)):
            fill(rport, name, body, 200)
            med, mx, size = scrape_times({"REDIS_PORT": str(rport), "REDIS_KEY_PREFIX": name, "PATH": env["PATH"]})
            rows.append(("read side: 200 instances of %d KB (%s), standalone Redis"
                         % (len(body) // 1000, "8 workers, 500 app series each" if name == "fleet"
                            else "8 workers, ferrocorn's families only"),
                         "scrape median %.0f ms, max %.0f ms; %.1f MB exposition" % (med, mx, size / 1e6)))

        nodes = [redis(tmp, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf") for _ in range(3)]
        out = subprocess.run(["redis-cli", "--cluster", "create"] + ["127.0.0.1:%d" % p for p in nodes]
                             + ["--cluster-replicas", "0", "--cluster-yes"], capture_output=True, timeout=60)
        assert out.returncode == 0, out.stdout
        wait(lambda: all("cluster_state:ok" in cli(p, "CLUSTER", "INFO") for p in nodes), 20, "cluster ok")
        owner = next(p for p in nodes if "MOVED" not in cli(p, "EXISTS", "small:ferrocorn:{small}:instances"))
        fill(owner, "small", small, 200)
        med, mx, size = scrape_times({"REDIS_CLUSTER_NODES": "127.0.0.1:%d" % nodes[0],
                                      "REDIS_KEY_PREFIX": "small", "PATH": env["PATH"]})
        rows.append(("read side: 200 instances of %d KB (ferrocorn's families only), 3-master Cluster"
                     % (len(small) // 1000),
                     "scrape median %.0f ms, max %.0f ms; %.1f MB exposition" % (med, mx, size / 1e6)))
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    print("| case | result |\n|---|---|")
    for case, result in rows:
        print("| %s | %s |" % (case, result))


if __name__ == "__main__":
    sys.exit(main())
