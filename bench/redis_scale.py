#!/usr/bin/env python3
"""Redis backend at scale (issue 12; not part of the tests).

1. One instance, 8 workers, 500 application series per worker, in two
   shapes (APPS below: a Gauge in mode `all`, 4,000 series per instance;
   a Counter and a Histogram with the same labels in every worker, ~505
   series per instance): the push's duration and size, read from the
   instance's own ferrocorn_redis_* families over 20 pushes, and the Redis
   commands per push from INFO commandstats.
2. 200 instances' state in one Redis, written in the push format (a real
   instance's document, renamed 200 times), for three document sizes (the
   two shapes, and ferrocorn's own families only): `ferrocorn exporter`
   scrape time, BENCH_ROUNDS (default 3) runs of 20 scrapes each.
3. The same 200 instances in a 3-master Redis Cluster.

    .venv/bin/python bench/redis_scale.py        # prints a Markdown table
    BENCH_ONLY=push .venv/bin/python bench/redis_scale.py    # or read
    BENCH_SHAPES=gauge-all,counters,small    # the read side's document sizes to run
    FERROCORN_BIN=/path/to/ferrocorn    # another binary (before/after)

Everything runs on 127.0.0.1 free ports; the processes it starts are
stopped by PID at the end.
"""
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("FERROCORN_BIN", os.path.join(ROOT, "target", "release", "ferrocorn"))
VENV = os.path.join(ROOT, ".venv")
HOST = socket.gethostname()

# The application's 500 series per worker, two shapes:
# - "gauge-all": a Gauge in multiprocess_mode "all" (prometheus_client's
#   default): every worker's series stays its own (pid label), 4,000 series
#   per instance;
# - "counters": a Counter and a Histogram whose labels are the same in every
#   worker (the usual case): merged to ~505 series per instance.
APPS = {
    "gauge-all": '''
from prometheus_client import Gauge
G = Gauge("bench_item_value", "one series per item and worker", ["item"], multiprocess_mode="all")
for i in range(500):
    G.labels(item="item%03d" % i).set(i)
''',
    "counters": '''
from prometheus_client import Counter, Histogram
C = Counter("bench_jobs", "jobs by item", ["item"])
H = Histogram("bench_job_seconds", "job latency by queue", ["queue"])
for i in range(250):
    C.labels(item="item%03d" % i).inc(i + 1)
for q in range(15):
    H.labels(queue="q%02d" % q).observe(0.01 * q)
''',
    # ferrocorn's own families only (the third document size).
    "none": "",
}
APP_TAIL = '''
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
'''
APP_FAMILIES = ("bench_item_value", "bench_jobs", "bench_job_seconds")

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


def header(doc):
    """A format 3 document's header (src/redis/codec.rs: "FCP" 3, host,
    instance, time) and the rest (the compressed families) as they are."""
    assert doc[:4] == b"FCP\x03", doc[:4]
    pos = 4
    fields = []
    for _ in range(2):
        n = struct.unpack("<I", doc[pos:pos + 4])[0]
        fields.append(doc[pos + 4:pos + 4 + n])
        pos += 4 + n
    return fields[0], fields[1], doc[pos:pos + 8], doc[pos + 8:]


def parse2(doc):
    """A format 2 document (src/redis/codec.rs: "FCP" 2, then
    length-prefixed fields): host, instance, the time's bytes, and per
    family [name, help, kind byte, lines, the bytes after them (splices,
    sum table)]."""
    assert doc[:4] == b"FCP\x02", doc[:4]
    pos = 4

    def take(n):
        nonlocal pos
        pos += n
        return doc[pos - n:pos]

    def u32():
        return struct.unpack("<I", take(4))[0]

    def string():
        return take(u32())

    host, instance, time_ = string(), string(), take(8)
    fams = []
    for _ in range(u32()):
        fam = [string(), string(), take(1), string()]
        start = pos
        take(u32() * 4)  # where the host's and the instance's values go
        for _ in range(u32()):  # sum groups' keys
            string()
        for _ in range(u32()):  # one value per summed sample
            take(4)
            if take(1)[0] == 2:  # a histogram: its buckets, sum, count
                take(u32() * 16 + 16)
            else:
                take(8)
        fams.append(fam + [doc[start:pos]])
    assert pos == len(doc)
    return host, instance, time_, fams


def build2(host, instance, time_, fams):
    put = lambda b: struct.pack("<I", len(b)) + b
    out = [b"FCP\x02", put(host), put(instance), time_, struct.pack("<I", len(fams))]
    for name, help_, kind, lines, sums in fams:
        out += [put(name), put(help_), kind, put(lines), sums]
    return b"".join(out)


def renamed(doc, host, instance):
    """`doc` (a pushed document) as if instance `instance` on `host` had
    pushed it: the header and the `host`/`instance` labels of its lines."""
    if doc[:1] == b"{":  # format 1: JSON
        d = json.loads(doc)
        d["host"], d["instance"] = host, instance
        return json.dumps(d).encode()
    # The lines leave the host's and the instance's values to the read
    # side (their places are listed): only the header names them.
    if doc[:4] == b"FCP\x03":
        _, _, time_, rest = header(doc)
        put = lambda b: struct.pack("<I", len(b)) + b
        return b"".join([b"FCP\x03", put(host.encode()), put(instance.encode()), time_, rest])
    _, _, time_, fams = parse2(doc)
    return build2(host.encode(), instance.encode(), time_, fams)


def fill(port, prefix, doc, n):
    """n instances' state under prefix, as n pushes would leave it."""
    index = "%s:ferrocorn:{%s}:instances" % (prefix, prefix)
    cmds = []
    for i in range(n):
        host, instance = "bench-host-%03d" % i, "10.0.%d.%d:8000" % (i // 250, i % 250)
        key = "%s:ferrocorn:{%s}:state:%s:%s" % (prefix, prefix, host, instance)
        cmds.append(resp("SET", key, renamed(doc, host, instance), "EX", 600))
        cmds.append(resp("SADD", index, key))
    out = cli(port, "--pipe", stdin=b"".join(cmds))
    assert "errors: 0" in out, out


def scrape_times(env, n=20):
    port = free_port()
    env = dict(env, PROMETHEUS_BIND_ADDRESS="127.0.0.1", PROMETHEUS_METRICS_PORT=str(port))
    p = start([BIN, "exporter"], env=env)
    url = "http://127.0.0.1:%d/metrics" % port
    wait(lambda: get(url), 30, "the read side")
    times, size = [], 0
    for _ in range(n):
        time.sleep(0.15)  # past the read side's 100 ms reuse of a read
        t0 = time.perf_counter()
        with urllib.request.urlopen(url, timeout=60) as r:  # bytes: no decoding in the timing
            size = len(r.read())
        times.append((time.perf_counter() - t0) * 1000)
    # As Prometheus asks: gzip.
    gz = []
    for _ in range(5):
        time.sleep(0.15)
        t0 = time.perf_counter()
        req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()
        gz.append((time.perf_counter() - t0) * 1000)
    p.send_signal(signal.SIGTERM)
    p.wait(10)
    return statistics.median(times), max(times), size, statistics.median(gz)


def load():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def push_case(tmp, rport, shape):
    """One instance of 8 workers with the app of `shape`: its pushes (about
    20, read from its ferrocorn_redis_* families), a local scrape, and its
    pushed document."""
    d = tempfile.mkdtemp(dir=tmp)
    with open(os.path.join(d, "benchapp.py"), "w") as f:
        f.write(APPS[shape] + APP_TAIL)
    app_port, mport = free_port(), free_port()
    env = dict(os.environ, VIRTUAL_ENV=VENV, PATH=os.path.join(VENV, "bin") + ":" + os.environ["PATH"],
               REDIS_ENABLED="true", REDIS_PORT=str(rport), REDIS_KEY_PREFIX="bench-" + shape,
               REDIS_PUSH_INTERVAL="1", PROMETHEUS_BIND_ADDRESS="127.0.0.1",
               PROMETHEUS_METRICS_PORT=str(mport))
    log = open(os.path.join(d, "server.log"), "wb")
    p = start([BIN, "-w", "8", "-b", "127.0.0.1:%d" % app_port, "--chdir", d, "benchapp:app"], env=env, log=log)
    murl = "http://127.0.0.1:%d/metrics" % mport

    def ready():
        t = get(murl)
        f = families(t)
        return t if f.get('gunicorn_workers{state="idle"}') == 8 and (shape == "none" or any(
            l.startswith(APP_FAMILIES) for l in t.splitlines())) else None
    local = wait(ready, 60, "8 workers and the app's series")
    time.sleep(2)  # the last worker's series in the next push
    series = sum(1 for line in get(murl).splitlines() if line and not line.startswith("#"))
    app_series = sum(1 for line in local.splitlines() if line.startswith(APP_FAMILIES))
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
    row = ("push, app of %s: 8 workers x 500 app series (%d app series, %d series in all on /metrics)"
           % (shape, app_series, series),
           "median %.2f ms (collect + encode %.2f ms, round trip %.2f ms), max %.2f ms over %d "
           "pushes; %d bytes; %.1f commands/push in 1 pipeline; a local scrape: median %.2f ms"
           % (statistics.median(durations), statistics.median(collects),
              statistics.median(d - c for d, c in zip(durations, collects)), max(durations),
              len(durations), f1["ferrocorn_redis_push_bytes"], cmds / max(pushes, 1),
              statistics.median(scrapes)))
    key = "bench-%s:ferrocorn:{bench-%s}:state:%s:127.0.0.1:%d" % (shape, shape, HOST, app_port)
    doc = subprocess.run(["redis-cli", "-p", str(rport), "--raw", "GET", key], capture_output=True,
                         timeout=30).stdout
    doc = doc[:-1] if doc.endswith(b"\n") else doc  # redis-cli's newline, not the document's bytes
    p.send_signal(signal.SIGTERM)
    p.wait(30)
    return row, doc


def main():
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    only = os.environ.get("BENCH_ONLY", "push,read")
    tmp = tempfile.mkdtemp(prefix="fc-redis-bench-")
    rows = []
    print("load average at start: %s" % load(), file=sys.stderr)
    try:
        rport = redis(tmp)
        docs = {}
        shapes = os.environ.get("BENCH_SHAPES")
        for shape in ("gauge-all", "counters", "none"):
            if shape == "none" and "read" not in only:
                continue
            # Only the documents the read side's runs need, unless pushes are measured.
            wanted = {"none": "small"}.get(shape, shape)
            if shapes and "push" not in only and wanted not in shapes.split(","):
                docs[shape] = None
                continue
            row, docs[shape] = push_case(tmp, rport, shape)
            if "push" in only and shape != "none":
                rows.append(row)
                print(row, file=sys.stderr)
        sizes = [("gauge-all", docs["gauge-all"], "8 workers, gauge-all app: 4,000 app series"),
                 ("counters", docs["counters"], "8 workers, counters/histogram app: ~505 app series"),
                 # ferrocorn's own families of 8 workers only.
                 ("small", docs["none"], "8 workers, ferrocorn's families only")]
        if shapes:
            sizes = [s for s in sizes if s[0] in shapes.split(",")]
        if "read" not in only:
            sizes = []
        nodes = []
        if sizes:
            nodes = [redis(tmp, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
                     for _ in range(3)]
            out = subprocess.run(["redis-cli", "--cluster", "create"] + ["127.0.0.1:%d" % p for p in nodes]
                                 + ["--cluster-replicas", "0", "--cluster-yes"], capture_output=True, timeout=60)
            assert out.returncode == 0, out.stdout
            wait(lambda: all("cluster_state:ok" in cli(p, "CLUSTER", "INFO") for p in nodes), 20, "cluster ok")
        for name, body, what in sizes:
            prefix = "fleet-" + name
            fill(rport, prefix, body, 200)
            owner = next(p for p in nodes if "MOVED" not in cli(p, "EXISTS", "%s:ferrocorn:{%s}:instances"
                                                                % (prefix, prefix)))
            fill(owner, prefix, body, 200)
            for where, env in (("standalone Redis", {"REDIS_PORT": str(rport)}),
                               ("3-master Cluster", {"REDIS_CLUSTER_NODES": "127.0.0.1:%d" % nodes[0]})):
                meds, maxes, gzs, size = [], [], [], 0
                for _ in range(rounds):
                    med, mx, size, gz = scrape_times(dict(env, REDIS_KEY_PREFIX=prefix, PATH=os.environ["PATH"]))
                    meds.append(med)
                    maxes.append(mx)
                    gzs.append(gz)
                row = ("read side: 200 instances of %d KB (%s), %s" % (len(body) // 1000, what, where),
                       "scrape median %.0f ms (medians of %d runs of 20 scrapes: %s), max %.0f ms; "
                       "%.1f MB exposition; with Accept-Encoding: gzip, median %.0f ms"
                       % (statistics.median(meds), rounds, ", ".join("%.0f" % m for m in meds), max(maxes),
                          size / 1e6, statistics.median(gzs)))
                rows.append(row)
                print(row, file=sys.stderr)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    print("load average at end: %s" % load(), file=sys.stderr)
    print("| case | result |\n|---|---|")
    for case, result in rows:
        print("| %s | %s |" % (case, result))


if __name__ == "__main__":
    sys.exit(main())
