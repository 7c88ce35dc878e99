"""Signals, worker supervision and listening addresses."""
import glob
import os
import shutil
import signal
import socket
import tempfile
import threading
import time

import pytest
import requests

from helpers import RawConn, get


def wait_for(pred, timeout=15.0, interval=0.05, msg="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError("timed out waiting for %s" % msg)


class Bg:
    """A request running in a thread."""

    def __init__(self, url, timeout=60):
        self.result = None
        self.error = None
        self.t = threading.Thread(target=self._run, args=(url, timeout), daemon=True)
        self.t.start()

    def _run(self, url, timeout):
        try:
            self.result = requests.get(url, timeout=timeout)
        except Exception as e:  # noqa: BLE001
            self.error = e

    def join(self, timeout):
        self.t.join(timeout)
        return not self.t.is_alive()


def in_flight(s, url, settle=0.7):
    """Start a slow request and give the worker time to pick it up."""
    bg = Bg(url)
    time.sleep(settle)
    return bg


def test_term_graceful_completes_request(server):
    s = server(["-w", "1", "--graceful-timeout", "15", "wsgiapp:app"])
    bg = in_flight(s, s.url + "/sleep?s=2")
    t0 = time.monotonic()
    s.signal(signal.SIGTERM)
    assert bg.join(20)
    assert bg.error is None, bg.error
    assert bg.result.status_code == 200 and bg.result.text == "slept 2.0"
    rc = s.wait(15)
    elapsed = time.monotonic() - t0
    assert rc == 0, s.log()
    assert elapsed < 10, elapsed
    assert s.group_pids() == []


def test_term_stops_accepting(server):
    s = server(["-w", "1", "--graceful-timeout", "15", "wsgiapp:app"])
    bg = in_flight(s, s.url + "/sleep?s=2")
    s.signal(signal.SIGTERM)
    time.sleep(0.5)
    # No new request is served once TERM is received (gunicorn closes the
    # listeners at once; a connection already queued is dropped unanswered).
    with pytest.raises(OSError):
        with socket.create_connection(("127.0.0.1", s.port), timeout=6) as c:
            c.sendall(get("/"))
            data = c.recv(100)
            if not data:
                raise ConnectionResetError("closed without response")
    assert bg.join(20) and bg.result.status_code == 200
    assert s.wait(15) == 0


def test_term_graceful_timeout_exceeded(server):
    s = server(["-w", "1", "--graceful-timeout", "2", "wsgiapp:app"])
    bg = in_flight(s, s.url + "/sleep?s=30")
    t0 = time.monotonic()
    s.signal(signal.SIGTERM)
    rc = s.wait(15)
    elapsed = time.monotonic() - t0
    assert rc is not None, "master did not exit"
    assert 1.5 < elapsed < 8, elapsed
    assert bg.join(10)
    assert bg.error is not None or bg.result.status_code != 200
    wait_for(lambda: s.group_pids() == [], 5, msg="workers gone")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT], ids=["INT", "QUIT"])
def test_int_quit_stop_quickly(server, sig):
    s = server(["-w", "2", "--graceful-timeout", "30", "wsgiapp:app"])
    bg = in_flight(s, s.url + "/sleep?s=30")
    t0 = time.monotonic()
    s.signal(sig)
    rc = s.wait(10)
    assert rc == 0, (rc, s.log())
    assert time.monotonic() - t0 < 5
    assert bg.join(10)
    wait_for(lambda: s.group_pids() == [], 5, msg="workers gone")


def test_term_idle_exits_fast(server):
    s = server(["-w", "2", "wsgiapp:app"])
    t0 = time.monotonic()
    s.signal(signal.SIGTERM)
    assert s.wait(10) == 0
    assert time.monotonic() - t0 < 5


def test_killed_worker_is_replaced(server):
    s = server(["-w", "2", "wsgiapp:app"])
    before = wait_for(lambda: (lambda c: c if len(c) == 2 else None)(s.children()), msg="2 workers")
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    after = wait_for(lambda: (lambda c: c if len(c) == 2 and victim not in c else None)(s.children()),
                     msg="replacement worker")
    assert victim not in after
    for _ in range(10):
        assert requests.get(s.url + "/", timeout=10).text == "Hello, World!"


def test_workers_exit_when_the_master_is_killed(server):
    """A master killed with SIGKILL cannot stop its workers; they must not
    serve on unsupervised. gunicorn's notice the changed parent within
    timeout/2; ferrocorn's are told by the kernel at once."""
    s = server(["-w", "2", "-t", "4", "wsgiapp:app"])
    workers = wait_for(lambda: (lambda c: c if len(c) == 2 else None)(s.children()), msg="2 workers")
    family = s.all_children()
    assert set(workers) <= set(family)
    os.kill(s.proc.pid, signal.SIGKILL)
    s.proc.wait(10)
    t0 = time.monotonic()
    wait_for(lambda: not any(_running(p) for p in family), 6, msg="the workers of the killed master to exit")
    took = time.monotonic() - t0
    with pytest.raises(requests.ConnectionError):
        requests.get(s.url + "/", timeout=5)
    print("workers gone %.2f s after the master" % took)
    # A SIGKILLed master leaves its private metrics directory (the next start
    # would sweep it): remove it here.
    for d in glob.glob("/dev/shm/ferrocorn-%d-*" % s.proc.pid):
        shutil.rmtree(d, ignore_errors=True)


def _running(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_all_workers_killed_are_replaced(server):
    s = server(["-w", "2", "wsgiapp:app"])
    before = wait_for(lambda: (lambda c: c if len(c) == 2 else None)(s.children()), msg="2 workers")
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: len(set(s.children()) - set(before)) == 2, msg="2 new workers")
    assert requests.get(s.url + "/", timeout=10).status_code == 200


def test_worker_timeout_kills_stuck_worker(server):
    s = server(["-w", "1", "-t", "2", "wsgiapp:app"])
    pid1 = int(requests.get(s.url + "/pid", timeout=10).text)
    try:
        r = requests.get(s.url + "/sleep?s=30", timeout=20)
        assert r.status_code != 200
    except requests.ConnectionError:
        pass
    s.wait_log("WORKER TIMEOUT", timeout=10)
    pid2 = int(requests.get(s.url + "/pid", timeout=10).text)
    assert pid2 != pid1


def test_max_requests_recycles_worker(server):
    s = server(["-w", "1", "--max-requests", "3", "wsgiapp:app"], ready="tcp")
    pids = [requests.get(s.url + "/pid", timeout=10).text for _ in range(7)]
    assert pids[0] == pids[1] == pids[2]
    assert pids[3] != pids[2]
    assert pids[3] == pids[4] == pids[5]
    assert pids[6] != pids[5]


def test_hup_replaces_workers(server):
    s = server(["-w", "2", "wsgiapp:app"])
    before = set(wait_for(lambda: (lambda c: c if len(c) == 2 else None)(s.children()), msg="2 workers"))
    s.signal(signal.SIGHUP)
    wait_for(lambda: (lambda c: len(c) == 2 and not (set(c) & before))(s.children()), msg="new workers after HUP")
    assert s.proc.poll() is None
    assert requests.get(s.url + "/", timeout=10).status_code == 200


def test_ttin_ttou(server):
    s = server(["-w", "1", "wsgiapp:app"])
    wait_for(lambda: len(s.children()) == 1, msg="1 worker")
    s.signal(signal.SIGTTIN)
    wait_for(lambda: len(s.children()) == 2, msg="2 workers after TTIN")
    s.signal(signal.SIGTTOU)
    wait_for(lambda: len(s.children()) == 1, msg="1 worker after TTOU")


# -- binds -----------------------------------------------------------------------

def test_two_binds(server):
    from conftest import free_port
    p1, p2 = free_port(), free_port()
    s = server(["-b", "127.0.0.1:%d" % p1, "-b", "127.0.0.1:%d" % p2, "wsgiapp:app"], bind=p1)
    s.wait_ready("http", "/", addr=("127.0.0.1", p2))
    for p in (p1, p2):
        env = requests.get("http://127.0.0.1:%d/environ" % p, timeout=10).json()
        assert env["SERVER_PORT"] == str(p)
    log = s.log()
    assert "http://127.0.0.1:%d" % p1 in log and "http://127.0.0.1:%d" % p2 in log


def _has_ipv6():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback")
def test_ipv6_bind(server):
    s = server(["wsgiapp:app"], host="::1")
    env = requests.get("http://[::1]:%d/environ" % s.port, timeout=10).json()
    assert env["REMOTE_ADDR"] == "::1"
    assert env["SERVER_NAME"] == "::1"
    assert env["SERVER_PORT"] == str(s.port)


def test_unix_bind(server):
    d = tempfile.mkdtemp(prefix="fc-unix-")
    path = os.path.join(d, "app.sock")
    s = server(["-b", "unix:" + path, "wsgiapp:app"], bind=False, ready=None)
    s.wait_ready("http", "/", addr=path)
    with RawConn(unix_path=path) as c:
        c.send(get("/"))
        r = c.read_response()
    assert r.status == 200 and r.body == b"Hello, World!"
    s.stop()
    # the socket file is removed at exit
    wait_for(lambda: not os.path.exists(path), 5, msg="socket file removed")


def test_unix_and_tcp_bind(server):
    d = tempfile.mkdtemp(prefix="fc-unix-")
    path = os.path.join(d, "app.sock")
    s = server(["-b", "unix:" + path, "wsgiapp:app"])
    s.wait_ready("http", "/", addr=path)
    assert requests.get(s.url + "/", timeout=10).text == "Hello, World!"
    with RawConn(unix_path=path) as c:
        c.send(get("/"))
        assert c.read_response().status == 200


@pytest.mark.ferrocorn_only
@pytest.mark.parametrize("kind,args", [
    ("gthread", ["-k", "gthread", "--threads", "2", "wsgiapp:app"]),
    ("gevent", ["-k", "gevent", "wsgiapp:app"]),
    ("asgi", ["-k", "asgi", "asgiapp:app"]),
])
def test_a_keep_alive_response_during_the_drain_leaves_the_connection_open(server, kind, args):
    """A response that said keep-alive, finished after TERM began the
    graceful stop: the connection stays open for the drain's idle grace, so
    the client's next request on it is answered (with Connection: close),
    not reset by a close racing it."""
    s = server(["-w", "1", "--graceful-timeout", "15", "--keep-alive", "5"] + args)
    if kind != "asgi":
        s.assert_kind(kind)  # (the asgi app answers only under the asgi kind)
    with RawConn(s.port) as c:
        c.send(get("/sleep?s=1", close=False))
        time.sleep(0.3)
        s.signal(signal.SIGTERM)
        first = c.read_response()
        assert first.status == 200
        # the client sends its next request as soon as it has the answer
        c.send(get("/", close=False))
        second = c.read_response()
        assert second.status == 200
        assert (second.header("connection") or "").lower() == "close", second
        assert c.is_closed()
    assert s.wait(15) == 0
