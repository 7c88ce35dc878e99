"""`ferrocorn top`: the live view of a running server. `--once` prints a
plain table (found by pid file, master pid or metrics address) with the
workers' pids, their request counts and the request in flight; the live
view runs under tmux, shows one row per worker with growing counts and quits
on `q`; a server that is not running is a clear error."""
import os
import re
import shutil
import socket
import subprocess
import threading
import time

import pytest
import requests

from conftest import SERVER_BIN, free_port
from test_metrics_prometheus import https_metrics, pki, tls_env  # noqa: F401 (pki: a fixture)

pytestmark = pytest.mark.ferrocorn_only

KINDS = {
    "sync": ["-k", "sync", "stuckapp:app"],
    "gthread": ["-k", "gthread", "--threads", "2", "stuckapp:app"],
    "asgi": ["-k", "asgi", "stuckapp:asgi_app"],
    "gevent": ["-k", "gevent", "stuckapp:app"],
}


def top(*args, timeout=30):
    return subprocess.run([SERVER_BIN, "top"] + list(args), capture_output=True, text=True,
                          timeout=timeout)


def parse_once(out):
    """The rows of `top --once` as dicts keyed by the header's columns (the
    last column, IN_FLIGHT, keeps its spaces), and the restarts line."""
    lines = out.splitlines()
    assert lines[0].startswith("ferrocorn top: master "), out
    header = lines[1].split()
    assert header == ["PID", "KIND", "STATE", "REQUESTS", "REQ/S", "RSS_MB", "CPU%", "IN_FLIGHT"], out
    rows = []
    i = 2
    while lines[i]:
        cells = lines[i].split(None, len(header) - 1)
        assert len(cells) == len(header), lines[i]
        rows.append(dict(zip(header, cells)))
        i += 1
    assert lines[i + 1].startswith("RESTARTS "), out
    restarts = dict(kv.split("=") for kv in lines[i + 1].split()[1:])
    return rows, restarts


class Load:
    """Clients sending GET / on new connections until stopped."""

    def __init__(self, url, threads=6):
        self.url, self.done, self.failed = url, 0, 0
        self.stop_ = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def run(self):
        while not self.stop_.is_set():
            try:
                ok = requests.get(self.url + "/", timeout=10, headers={"Connection": "close"}).text == "ok"
            except requests.RequestException:
                ok = False
            with self.lock:
                if ok:
                    self.done += 1
                else:
                    self.failed += 1

    def stop(self):
        self.stop_.set()
        for t in self.threads:
            t.join(15)


def send_stuck(port, path=b"/stuck?secret=1"):
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
    return c


def wait_workers(s, n, timeout=20):
    deadline = time.monotonic() + timeout
    while len(s.children()) != n:
        assert time.monotonic() < deadline, s.log()[-2000:]
        time.sleep(0.05)
    return sorted(s.children())


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_once_by_pidfile_shows_workers_counts_and_the_request_in_flight(server, kind, tmp_path):
    pidfile = str(tmp_path / "ferrocorn.pid")
    s = server(["-w", "4", "--pid", pidfile] + KINDS[kind])
    pids = wait_workers(s, 4)

    r = top("--pid", pidfile, "--once", "--interval", "0.3")
    assert r.returncode == 0, r.stderr
    rows, restarts = parse_once(r.stdout)
    assert sorted(int(x["PID"]) for x in rows) == pids, r.stdout
    assert {x["KIND"] for x in rows} == {kind}
    assert "timeout" in restarts and "max_requests" in restarts and "memory" in restarts
    assert all(float(x["RSS_MB"]) > 5 for x in rows), r.stdout
    before = sum(int(x["REQUESTS"]) for x in rows)

    load = Load(s.url)
    try:
        time.sleep(1.5)
        r = top("--pid", pidfile, "--once", "--interval", "0.5")
        assert r.returncode == 0, r.stderr
        rows, _ = parse_once(r.stdout)
        during = sum(int(x["REQUESTS"]) for x in rows)
        assert during > before, r.stdout
        assert sum(float(x["REQ/S"]) for x in rows) > 0, r.stdout
    finally:
        load.stop()
    assert load.failed == 0 and load.done > 0
    time.sleep(0.3)
    rows, _ = parse_once(top("--pid", pidfile, "--once", "--interval", "0.1").stdout)
    total = sum(int(x["REQUESTS"]) for x in rows)
    # every request of the load is counted (plus the readiness probes)
    assert load.done + before <= total <= load.done + before + 5, (load.done, before, total)

    # a slow request in flight: its method and path, on its worker's row
    c = send_stuck(s.port)
    try:
        deadline = time.monotonic() + 15
        while True:
            r = top("--pid", pidfile, "--once", "--interval", "0.1")
            rows, _ = parse_once(r.stdout)
            stuck = [x for x in rows if x["IN_FLIGHT"].startswith("POST /stuck ")]
            if stuck:
                break
            assert time.monotonic() < deadline, r.stdout
            time.sleep(0.2)
        [row] = stuck
        assert row["STATE"] == "busy", r.stdout
        assert re.fullmatch(r"POST /stuck \d+\.\ds", row["IN_FLIGHT"]), row
        assert "secret" not in r.stdout  # the path, not the query string
        assert [x["IN_FLIGHT"] for x in rows].count("-") == 3, r.stdout
        # and its running time grows
        time.sleep(1.2)
        rows, _ = parse_once(top("--pid", pidfile, "--once", "--interval", "0.1").stdout)
        [again] = [x for x in rows if x["PID"] == row["PID"]]
        secs = lambda x: float(x["IN_FLIGHT"].split()[-1].rstrip("s"))
        assert secs(again) >= secs(row) + 1.0, (row, again)
    finally:
        c.close()


def test_once_by_metrics_address_and_master_pid(server):
    s = server(["-w", "4"] + KINDS["sync"])
    pids = wait_workers(s, 4)
    for how in (["--metrics", "127.0.0.1:%d" % s.metrics_port],
                ["--metrics", "http://127.0.0.1:%d/metrics" % s.metrics_port],
                ["--master", str(s.proc.pid)]):
        r = top(*how, "--once", "--interval", "0.2")
        assert r.returncode == 0, (how, r.stderr)
        rows, _ = parse_once(r.stdout)
        assert sorted(int(x["PID"]) for x in rows) == pids, r.stdout
        assert r.stdout.startswith("ferrocorn top: master %d, 4 workers (sync)" % s.proc.pid), r.stdout
    # by process title: this master, or (other servers running on the host)
    # an error that names every master, this one among them
    r = top("--once", "--interval", "0.1")
    if r.returncode == 0:
        assert r.stdout.startswith("ferrocorn top: master %d," % s.proc.pid), r.stdout
    else:
        assert "ferrocorn servers are running" in r.stderr, r.stderr
        assert re.search(r"\b%d\b" % s.proc.pid, r.stderr), r.stderr
        assert "--pid FILE, --master PID or --metrics ADDRESS" in r.stderr
    # the live view needs a terminal
    r = top("--master", str(s.proc.pid))
    assert r.returncode == 1 and "use --once" in r.stderr, r.stderr
    # the exporter serves the document top reads
    doc = requests.get("http://127.0.0.1:%d/workers" % s.metrics_port, timeout=5).json()
    assert doc["master_pid"] == s.proc.pid
    assert sorted(w["pid"] for w in doc["workers"]) == pids


def test_once_against_an_https_exporter_that_requires_client_certificates(server, pki):
    s = server(["-w", "2"] + KINDS["sync"], env=tls_env(pki))
    pids = wait_workers(s, 2)
    https_metrics(s, pki)
    port = s.metrics_port
    tls = ["--cacert", pki.ca_crt, "--cert", pki.client_crt, "--key", pki.client_key]
    for how in (["--metrics", "https://127.0.0.1:%d/metrics" % port],
                ["--metrics", "https://localhost:%d" % port],
                ["--master", str(s.proc.pid)]):
        r = top(*how, *tls, "--once", "--interval", "0.2")
        assert r.returncode == 0, (how, r.stderr)
        rows, _ = parse_once(r.stdout)
        assert sorted(int(x["PID"]) for x in rows) == pids, r.stdout
        assert "metrics https://" in r.stdout.splitlines()[0], r.stdout
    # plain HTTP to it: told what to give
    r = top("--master", str(s.proc.pid), "--once")
    assert r.returncode == 1 and "an HTTPS exporter? give --cacert FILE" in r.stderr, r.stderr
    r = top("--metrics", "https://127.0.0.1:%d" % port, "--once")
    assert r.returncode == 1 and "needs --cacert FILE" in r.stderr, r.stderr
    # no client certificate: the exporter refuses the handshake
    r = top("--metrics", "https://127.0.0.1:%d" % port, "--cacert", pki.ca_crt, "--once")
    assert r.returncode == 1 and "cannot read https://127.0.0.1:%d/workers" % port in r.stderr, r.stderr
    # a CA that did not sign the exporter's certificate
    r = top("--metrics", "https://127.0.0.1:%d" % port, "--cacert", pki.rogue_crt,
            "--cert", pki.client_crt, "--key", pki.client_key, "--once")
    assert r.returncode == 1 and "UnknownIssuer" in r.stderr, r.stderr


def test_not_running_is_a_clear_error(tmp_path):
    r = top("--pid", str(tmp_path / "none.pid"), "--once")
    assert r.returncode != 0 and "cannot read the pid file" in r.stderr, r.stderr
    # a stale pid file: its process is gone
    p = subprocess.Popen(["true"])
    p.wait()
    stale = tmp_path / "stale.pid"
    stale.write_text("%d\n" % p.pid)
    r = top("--pid", str(stale), "--once")
    assert r.returncode != 0 and "no server is running" in r.stderr, r.stderr
    r = top("--metrics", "127.0.0.1:%d" % free_port(), "--once")
    assert r.returncode != 0 and "cannot connect to the metrics exporter" in r.stderr, r.stderr
    r = top("--master", str(os.getpid()), "--once")
    assert r.returncode != 0 and "is not a ferrocorn master" in r.stderr, r.stderr
    r = top("--bogus")
    assert r.returncode == 2 and "unknown argument" in r.stderr, r.stderr


class Tmux:
    """A tmux server of our own (its own socket), one detached session."""

    def __init__(self, tmp_path, command):
        self.sock = str(tmp_path / "tmux.sock")
        self.run("new-session", "-d", "-s", "top", "-x", "200", "-y", "50", command)

    def run(self, *args):
        return subprocess.run(["tmux", "-S", self.sock] + list(args), capture_output=True,
                              text=True, timeout=10)

    def capture(self):
        return self.run("capture-pane", "-p", "-t", "top").stdout

    def alive(self):
        return self.run("has-session", "-t", "top").returncode == 0

    def close(self):
        self.run("kill-server")


def screen_rows(screen, pids):
    """pid -> requests, from the rows of the live view."""
    out = {}
    for line in screen.splitlines():
        cells = line.strip("│|┃ ").split()
        if len(cells) >= 4 and cells[0].isdigit() and int(cells[0]) in pids:
            out[int(cells[0])] = int(cells[3])
    return out


def test_live_view_under_tmux(server, tmp_path):
    assert shutil.which("tmux"), "tmux is installed by scripts/setup.sh"
    pidfile = str(tmp_path / "ferrocorn.pid")
    s = server(["-w", "4", "--pid", pidfile] + KINDS["sync"])
    pids = set(wait_workers(s, 4))
    done = str(tmp_path / "exit-code")
    t = Tmux(tmp_path, "%s top --pid %s --interval 0.5; echo $? > %s; sleep 30"
             % (SERVER_BIN, pidfile, done))
    load = Load(s.url, threads=8)
    try:
        deadline = time.monotonic() + 20
        first = {}
        while len(first) < 4:
            assert time.monotonic() < deadline, t.capture()
            time.sleep(0.3)
            first = screen_rows(t.capture(), pids)
        screen = t.capture()
        assert "ferrocorn top: master %d, 4 workers (sync)" % s.proc.pid in screen, screen
        assert "timeout=" in screen and "max_requests=" in screen, screen
        # every worker's count grows between two captures
        deadline = time.monotonic() + 20
        while True:
            time.sleep(1.0)
            later = screen_rows(t.capture(), pids)
            if len(later) == 4 and all(later[p] > first[p] for p in pids):
                break
            assert time.monotonic() < deadline, (first, later, t.capture())
        # q quits, with status 0, and the terminal is given back
        t.run("send-keys", "-t", "top", "q")
        deadline = time.monotonic() + 10
        while not os.path.exists(done) or not open(done).read().strip():
            assert time.monotonic() < deadline, t.capture()
            time.sleep(0.1)
        assert open(done).read().strip() == "0"
        assert "REQUESTS" not in t.capture()  # back from the alternate screen
    finally:
        load.stop()
        t.close()
    assert load.failed == 0
