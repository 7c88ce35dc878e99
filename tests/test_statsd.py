"""statsd_host, statsd_prefix, dogstatsd_tags, enable_backlog_metric: gunicorn's
statsd metrics, received by a UDP or unix-datagram listener started by the
test. gunicorn sends one datagram per metric as requests are answered;
ferrocorn's exporter process sends what changed every second, several lines
per datagram. The tests sum what arrives, so they hold for both."""
import os
import re
import signal
import socket
import tempfile
import time

import pytest
import requests

from conftest import IS_GUNICORN, free_port

# name:value|type[|@rate][|#tags]
LINE = re.compile(r"^([^:|]+):([^|]+)\|(c|ms|g|h)(?:\|@([0-9.e-]+))?(?:\|#(.*))?$")


class Received:
    """Every statsd line that arrived, parsed."""

    def __init__(self, sock):
        self.sock = sock
        self.lines = []

    def read(self, timeout=0.2):
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                for line in data.decode("ascii").split("\n"):
                    if line:
                        m = LINE.match(line)
                        assert m, line
                        self.lines.append(m.groups())
                self.sock.settimeout(0.01)
        except socket.timeout:
            pass

    def count(self, name):
        """Sum of a counter, or the number of timer samples (1/rate each)."""
        total = 0.0
        for n, value, kind, rate, _ in self.lines:
            if n != name:
                continue
            r = float(rate) if rate else 1.0
            total += float(value) / r if kind == "c" else 1.0 / r
        return round(total)

    def names(self):
        return {l[0] for l in self.lines}

    def wait(self, until, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            self.read()
            if until(self):
                return self
            assert time.monotonic() < deadline, self.lines[-50:]


@pytest.fixture
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind(("127.0.0.1", 0))
    yield s
    s.close()


def test_counters_sum_to_the_requests_served(server, udp):
    port = udp.getsockname()[1]
    s = server(["-w", "2", "--statsd-host", "127.0.0.1:%d" % port,
                "--dogstatsd-tags", "env:test,service:web", "wsgiapp:app"], ready="tcp")
    got = Received(udp)
    n = 40
    with requests.Session() as http:
        for i in range(n):
            path = "/status/404" if i % 4 == 0 else "/pid"
            http.get(s.url + path, timeout=10)
    got.wait(lambda g: g.count("gunicorn.requests") >= n)
    got.read(timeout=1.5)  # one more flush: nothing beyond n may come
    assert got.count("gunicorn.requests") == n
    assert got.count("gunicorn.request.status.200") == n - n // 4
    assert got.count("gunicorn.request.status.404") == n // 4
    assert got.count("gunicorn.request.duration") == n
    for name, value, kind, rate, tags in got.lines:
        assert tags == "env:test,service:web", (name, tags)
        if name == "gunicorn.requests":
            assert kind == "c" and rate == "1.0"
        if name == "gunicorn.request.duration":
            assert kind == "ms" and float(value) >= 0
    workers = [l for l in got.lines if l[0] == "gunicorn.workers"]
    assert workers and workers[-1][1:3] == ("2", "g"), workers
    # no prefix by default
    assert all(n.startswith("gunicorn.") for n in got.names()), got.names()


def test_prefix_and_backlog_and_log_counters(server, udp):
    port = udp.getsockname()[1]
    s = server(["-w", "1", "--statsd-host", "localhost:%d" % port, "--statsd-prefix", "myapp",
                "--enable-backlog-metric", "wsgiapp:app"], ready="tcp")
    got = Received(udp)
    assert requests.get(s.url + "/pid", timeout=10).status_code == 200
    # a malformed request: a warning line in the error log
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        assert c.recv(100).startswith(b"HTTP/1.1 400")
    # an exception escaping the app: gunicorn's log.exception
    assert requests.get(s.url + "/error", timeout=10).status_code == 500
    got.wait(lambda g: g.count("myapp.gunicorn.requests") >= 2
             and g.count("myapp.gunicorn.log.warning") >= 1
             and g.count("myapp.gunicorn.log.exception") == 1
             and "myapp.gunicorn.backlog" in g.names())
    assert got.count("myapp.gunicorn.request.status.500") == 1
    assert all(n.startswith("myapp.gunicorn.") for n in got.names()), got.names()
    # (an early flush may see the readiness probe's connection still
    # queued before the worker's first accept: wait for an empty backlog)
    got.wait(lambda g: any(l[0] == "myapp.gunicorn.backlog" and l[1] == "0" for l in g.lines))
    backlog = [l for l in got.lines if l[0] == "myapp.gunicorn.backlog"]
    assert all(l[2] == "h" and l[1].isdigit() for l in backlog), backlog
    assert not any(l[4] for l in got.lines)  # no tags unless asked


def test_unix_socket(server):
    path = os.path.join(tempfile.mkdtemp(dir="/tmp"), "statsd.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        s = server(["-w", "1", "--statsd-host", "unix://" + path, "wsgiapp:app"], ready="tcp")
        got = Received(sock)
        for _ in range(5):
            assert requests.get(s.url + "/pid", timeout=10).status_code == 200
            # gunicorn's workers block in send() once the socket's queue
            # (net.unix.max_dgram_qlen, 10 by default) is full: keep it drained
            got.read(timeout=0.01)
        got.wait(lambda g: g.count("gunicorn.requests") >= 5)
        assert got.count("gunicorn.requests") == 5
        assert got.count("gunicorn.request.duration") == 5
    finally:
        sock.close()
        os.unlink(path)


def test_counts_exact_across_worker_restarts(server, udp):
    port = udp.getsockname()[1]
    s = server(["-w", "2", "--max-requests", "7", "--statsd-host", "127.0.0.1:%d" % port,
                "wsgiapp:app"], ready="tcp")
    got = Received(udp)
    n = 60
    ok = 0
    for _ in range(n):
        # new connections, so requests spread over the workers that replace
        # the recycled ones
        ok += requests.get(s.url + "/pid", timeout=10).status_code == 200
    assert ok == n
    got.wait(lambda g: g.count("gunicorn.requests") >= n, timeout=15)
    got.read(timeout=1.5)
    assert got.count("gunicorn.requests") == n
    assert got.count("gunicorn.request.status.200") == n
    assert got.count("gunicorn.request.duration") == n


@pytest.mark.skipif(IS_GUNICORN, reason="ferrocorn-only: the last flush at shutdown")
def test_last_requests_are_sent_at_shutdown(server, udp):
    port = udp.getsockname()[1]
    s = server(["-w", "1", "--statsd-host", "127.0.0.1:%d" % port, "--no-metrics", "wsgiapp:app"], ready="tcp")
    for _ in range(3):
        assert requests.get(s.url + "/pid", timeout=10).status_code == 200
    s.stop()
    got = Received(udp)
    got.read(timeout=1.0)
    assert got.count("gunicorn.requests") == 3, got.lines


@pytest.mark.skipif(IS_GUNICORN, reason="gunicorn accepts these and sends nothing")
@pytest.mark.parametrize("addr,message", [
    ("localhost:abc", "'abc' is not a valid port number"),
    ("localhost:70000", "'70000' is not a valid port number"),
    ("unix://", "the unix socket path is empty"),
    ("fd://3", "statsd cannot be sent to a file descriptor"),
])
def test_bad_statsd_host_stops_the_start(run_cmd, addr, message):
    r = run_cmd(["--statsd-host", addr, "-b", "127.0.0.1:%d" % free_port(), "wsgiapp:app"])
    assert r.returncode != 0, r
    assert "statsd_host" in r.output and message in r.output, r


@pytest.mark.skipif(IS_GUNICORN, reason="ferrocorn-only: gunicorn loses what it sends during an outage")
def test_outage_logged_once_and_counts_kept(server):
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there yet
    s = server(["-w", "1", "--statsd-host", "127.0.0.1:%d" % port, "wsgiapp:app"], ready="tcp")
    for _ in range(5):
        assert requests.get(s.url + "/pid", timeout=10).status_code == 200
    s.wait_log("statsd: cannot send to 127.0.0.1:%d" % port)
    time.sleep(3)  # three more flushes fail
    assert s.log().count("statsd: cannot send") == 1, s.log()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", port))
    try:
        got = Received(udp).wait(lambda g: g.count("gunicorn.requests") >= 5)
        for _ in range(5):
            assert requests.get(s.url + "/pid", timeout=10).status_code == 200
        got.wait(lambda g: g.count("gunicorn.requests") >= 10)
        got.read(timeout=1.5)
        assert got.count("gunicorn.requests") == 10
        assert got.count("gunicorn.request.duration") == 10
        assert "gunicorn.workers" in got.names()
        s.wait_log("statsd: sending to 127.0.0.1:%d again" % port)
    finally:
        udp.close()


def test_counts_exact_across_a_reload(server, udp):
    port = udp.getsockname()[1]
    s = server(["-w", "1", "--statsd-host", "127.0.0.1:%d" % port, "wsgiapp:app"], ready="tcp")
    got = Received(udp)
    for _ in range(10):
        assert requests.get(s.url + "/pid", timeout=10).status_code == 200
    got.wait(lambda g: g.count("gunicorn.requests") >= 10)
    s.signal(signal.SIGHUP)  # ferrocorn: the exporter restarts too
    time.sleep(2)
    for _ in range(10):
        assert requests.get(s.url + "/pid", timeout=10).status_code == 200
    got.wait(lambda g: g.count("gunicorn.requests") >= 20)
    got.read(timeout=1.5)
    assert got.count("gunicorn.requests") == 20
    assert got.count("gunicorn.request.status.200") == 20
