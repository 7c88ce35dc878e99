#!/usr/bin/env python3
"""Memory per worker after --preload (issue 16 item 4): what gc.freeze()
before the fork saves.

Starts the Django example (examples/djangoproj) with 8 sync workers, serves
REQUESTS requests to it from 16 client threads (new connection each, so that
every worker serves some: the table shows the fewest any worker served,
counted from its CPU time), waits a moment, then reads Pss, Private_* and Rss
of every process from /proc/PID/smaps_rollup; then makes each worker run one
full collection (gc.collect(), as a long-running worker does on its own
once long-lived objects accumulate, or when a library calls it) and reads
them again. The app is examples/djangoproj with bench/apps/djangobench.py's
settings (the example's, plus the /__gc URL). One run per configuration,
the configurations interleaved, RUNS rounds; the report shows the median
round of each:

  ferrocorn --preload                      (preload_freeze on: the default)
  ferrocorn --preload --no-preload-freeze
  ferrocorn                                (no preload)
  gunicorn 27 --preload                    (.venv/bin/gunicorn)
  gunicorn 27                              (no preload)

Per worker: PSS (its own pages plus its share of the pages it shares with
the master and the other workers) and USS (pages only it has: what the
worker costs on top of the others). Total: the PSS of every process of the
server (master, workers, and for ferrocorn its metrics exporter), i.e. the
memory the whole server takes.

    .venv/bin/python bench/preload_pss.py               # RUNS=3, about 2 minutes
    RUNS=1 REQUESTS=2000 .venv/bin/python bench/preload_pss.py
    SETTINGS=heavy ...   # Django with admin, auth, sessions, messages and
                         # their URLs imported (bench/apps/djangoheavy.py)

Writes bench/results-preload.md (OUT=...) and prints the table. Only
127.0.0.1 is used; every server runs in its own session and is stopped by
its pid (its process group is killed after).
"""
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
VENV = os.environ.get("VENV", os.path.join(REPO, ".venv"))
FERROCORN = os.environ.get("FERROCORN_BIN", os.path.join(REPO, "target", "release", "ferrocorn"))
GUNICORN = os.path.join(VENV, "bin", "gunicorn")
WORKERS = int(os.environ.get("WORKERS", "8"))
REQUESTS = int(os.environ.get("REQUESTS", "4000"))
RUNS = int(os.environ.get("RUNS", "3"))
SETTINGS = os.environ.get("SETTINGS", "example")
OUT = os.environ.get("OUT", os.path.join(BENCH, "results-preload.md" if SETTINGS == "example"
                                         else "results-preload-%s.md" % SETTINGS))
PATHS = ["/", "/form", "/echo?x=1", "/stream?n=4&size=256", "/missing"]

CONFIGS = [
    ("ferrocorn --preload (freeze)", "ferrocorn", ["--preload"]),
    ("ferrocorn --preload --no-preload-freeze", "ferrocorn", ["--preload", "--no-preload-freeze"]),
    ("ferrocorn (no preload)", "ferrocorn", []),
    ("gunicorn --preload", "gunicorn", ["--preload"]),
    ("gunicorn (no preload)", "gunicorn", []),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(d))
    return out


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read()
    except OSError:
        return b""


def workers_of(server, master):
    """The master's worker pids (ferrocorn's exporter left out)."""
    kids = children(master)
    if server == "ferrocorn":
        return [p for p in kids if cmdline(p).startswith(b"ferrocorn: worker")]
    return kids


def rollup(pid):
    """smaps_rollup fields in kB: Rss, Pss, Private_Clean, Private_Dirty..."""
    out = {}
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def snapshot(master, workers):
    """Memory of the workers, the master, and every process of the server."""
    per_worker = [rollup(p) for p in workers]
    everyone = [master] + children(master)
    return {
        "pss": [r["Pss"] for r in per_worker],
        "uss": [r["Private_Clean"] + r["Private_Dirty"] for r in per_worker],
        "rss": [r["Rss"] for r in per_worker],
        "master_pss": rollup(master)["Pss"],
        "total_pss": sum(rollup(p)["Pss"] for p in everyone),
        "processes": len(everyone),
    }


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def load(port, n):
    """n requests from 16 threads, a new connection each; the failures."""
    failures = []
    counter = iter(range(n))
    lock = threading.Lock()

    def run():
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            path = PATHS[i % len(PATHS)]
            try:
                st = get("http://127.0.0.1:%d%s" % (port, path))
                if st != (404 if path == "/missing" else 200):
                    failures.append((path, st))
            except Exception as e:  # noqa: BLE001
                failures.append((path, repr(e)))

    threads = [threading.Thread(target=run) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures


def wait_ready(proc, port, n, server, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("server exited with %s" % proc.returncode)
        try:
            if get("http://127.0.0.1:%d/" % port) == 200 and len(workers_of(server, proc.pid)) == n:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("server not ready in %ss" % timeout)


def one(name, server, extra, logdir):
    port = free_port()
    env = dict(os.environ)
    for k in ("GUNICORN_CMD_ARGS", "WEB_CONCURRENCY", "PYTHONPATH", "DJANGO_SETTINGS_MODULE"):
        env.pop(k, None)
    env["VIRTUAL_ENV"] = VENV
    env["PATH"] = os.path.join(VENV, "bin") + os.pathsep + env.get("PATH", "/usr/bin:/bin")
    env["PROMETHEUS_BIND_ADDRESS"] = "127.0.0.1"
    env["PROMETHEUS_METRICS_PORT"] = str(free_port())
    env["XDG_RUNTIME_DIR"] = logdir  # gunicorn 27's control socket
    cwd = os.path.join(REPO, "examples", "djangoproj")
    args = ["-b", "127.0.0.1:%d" % port, "-w", str(WORKERS), "--pythonpath", os.path.join(BENCH, "apps")]
    env["DJANGO_SETTINGS_MODULE"] = "djangoheavy" if SETTINGS == "heavy" else "djangobench"
    args += extra + ["djangoproj.wsgi:application"]
    binary = FERROCORN if server == "ferrocorn" else GUNICORN
    log = open(os.path.join(logdir, "%s.log" % name.replace(" ", "_").replace("/", "")), "ab")
    proc = subprocess.Popen([binary] + args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=log, stderr=log, start_new_session=True)
    try:
        wait_ready(proc, port, WORKERS, server)
        time.sleep(1)
        workers = sorted(workers_of(server, proc.pid))
        before = {p: cpu_ticks(p) for p in workers}
        failures = load(port, REQUESTS)
        time.sleep(2)
        busy = {p: cpu_ticks(p) - before[p] for p in workers}
        res = {"name": name, "failures": len(failures), "min_busy_ticks": min(busy.values())}
        res["served"] = snapshot(proc.pid, workers)
        # then a full collection in every worker: /__gc (which holds its
        # worker 0.2 s) from 16 threads until each pid has answered
        collected, lock = set(), threading.Lock()
        deadline = time.monotonic() + 60

        def gc_all():
            while time.monotonic() < deadline:
                with lock:
                    if collected >= set(workers):
                        return
                with urllib.request.urlopen("http://127.0.0.1:%d/__gc" % port, timeout=10) as r:
                    pid = int(r.read())
                with lock:
                    collected.add(pid)

        threads = [threading.Thread(target=gc_all) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if not collected >= set(workers):
            raise SystemExit("%s: /__gc reached %s of %s" % (name, sorted(collected), workers))
        time.sleep(1)
        res["collected"] = snapshot(proc.pid, workers)
        if sorted(workers_of(server, proc.pid)) != workers:
            raise SystemExit("%s: workers changed during the run" % name)
        return res
    finally:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        log.close()


def mb(kb):
    return "%.1f" % (kb / 1024)


def version(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError as e:
        return repr(e)


def main():
    for b in (FERROCORN, GUNICORN):
        if not os.path.exists(b):
            raise SystemExit("%s is missing (cargo build --release; scripts/setup.sh)" % b)
    logdir = tempfile.mkdtemp(prefix="preload-pss-")
    rounds = {name: [] for name, _, _ in CONFIGS}
    for r in range(RUNS):
        for name, server, extra in CONFIGS:
            res = one(name, server, extra, logdir)
            print(json.dumps(res), flush=True)
            rounds[name].append(res)
    git = version(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
    dirty = version(["git", "-C", REPO, "status", "--porcelain", "src"])
    pyver = version([os.path.join(VENV, "bin", "python"), "-c",
                     "import sys, django, gunicorn; print(sys.version.split()[0], django.__version__, "
                     "gunicorn.__version__)"]).split()
    lines = [
        "# Memory per worker after --preload: gc.freeze() (issue 16 item 4)",
        "",
        "Generated by `bench/preload_pss.py` (SETTINGS=%s): the Django example%s, %d sync workers, "
        "%d requests from 16 client threads (a new connection each; every worker served some), then "
        "`/proc/PID/smaps_rollup` of each process; then one full collection (`gc.collect()`, URL "
        "`/__gc` of bench/apps/djangobench_urls.py) in every worker and the same reading again. "
        "Median of %d interleaved rounds (the round with the median total). PSS counts a page "
        "shared by n processes as 1/n in each; USS is what only that worker has. Total: PSS of "
        "every process of the server (master, workers, ferrocorn's metrics exporter)." % (
            SETTINGS, " (examples/djangoproj)" if SETTINGS == "example"
            else " with django.contrib admin, auth, contenttypes, sessions, messages, staticfiles "
            "(bench/apps/djangoheavy.py)",
            WORKERS, REQUESTS, RUNS),
        "",
        "ferrocorn %s%s; Python %s, Django %s, gunicorn %s; %s." % (
            git, " (src/ modified)" if dirty else "", *(pyver + ["?"] * 3)[:3],
            version(["uname", "-sr"])),
    ]
    for phase, title in (("served", "After the requests"),
                         ("collected", "After a full collection in every worker")):
        lines += [
            "",
            "### " + title,
            "",
            "| server | PSS per worker, median (MB) | USS per worker, median (MB) | RSS per worker (MB) | "
            "master PSS (MB) | total PSS (MB) | failed requests |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, _, _ in CONFIGS:
            runs = sorted(rounds[name], key=lambda x: x[phase]["total_pss"])
            m = runs[len(runs) // 2][phase]
            lines.append("| %s | %s | %s | %s | %s | %s | %d |" % (
                name, mb(statistics.median(m["pss"])), mb(statistics.median(m["uss"])),
                mb(statistics.median(m["rss"])), mb(m["master_pss"]), mb(m["total_pss"]),
                sum(x["failures"] for x in rounds[name])))
        lines.append("")
        lines.append("All rounds (total PSS, MB): " + "; ".join(
            "%s: %s" % (name, ", ".join(mb(x[phase]["total_pss"]) for x in rounds[name]))
            for name, _, _ in CONFIGS) + ".")
    lines.append("")
    text = "\n".join(lines)
    with open(OUT, "w") as f:
        f.write(text)
    print(text)
    print("logs in", logdir, file=sys.stderr)


if __name__ == "__main__":
    main()
