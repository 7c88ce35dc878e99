"""Worker kinds that serve requests concurrently: which kind serves, how many
requests at once, backpressure between workers, clients that vanish, graceful
stop, and exact counts across --max-requests recycling.

Every test first proves which kind served it (`/kind` of tests/apps/wsgiapp.py:
the thread the request ran on, the monkey-patch state)."""
import asyncio
import json
import os
import signal
import socket
import threading
import time

import pytest
import requests

from conftest import IS_GUNICORN
from helpers import RawConn, get
from test_metrics import samples, total, wait_metrics

# (id, command-line arguments): every concurrent kind ferrocorn implements.
KINDS = [
    pytest.param(["-k", "gthread", "--threads", "4"], id="gthread"),
    pytest.param(["-k", "gevent"], id="gevent"),
    pytest.param(["-k", "eventlet"], id="eventlet"),
]


def kind_of(s):
    r = requests.get(s.url + "/kind", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def assert_kind(s, args):
    """The request ran where the kind runs requests. `args`: the kind's name,
    or command-line arguments that name it with -k."""
    k = kind_of(s)
    name = args if isinstance(args, str) else args[args.index("-k") + 1]
    if name == "gthread":
        assert not k["main_thread"], k
        assert k["native_thread_id"] != k["pid"], k
        if not IS_GUNICORN:
            assert k["thread_name"].startswith("gthread-"), k
        assert k["multithread"] is True, k
        assert not k["gevent"] and not k["eventlet"], k
    elif name in ("gevent", "eventlet"):
        # One OS thread (the hub's, the main one), the library's patches on.
        assert k["native_thread_id"] == k["pid"], k
        assert k[name] is True, k
        assert k["eventlet" if name == "gevent" else "gevent"] is False, k
        assert k["multithread"] is False, k
    elif name == "sync":
        assert k["main_thread"] and k["native_thread_id"] == k["pid"], k
        assert k["multithread"] is False, k
        assert not k["gevent"] and not k["eventlet"], k
    else:
        raise AssertionError("no proof for kind %r" % name)
    return k


def test_sync_runs_on_the_main_thread(server):
    s = server(["-w", "1", "-k", "sync", "wsgiapp:app"])
    assert_kind(s, ["-k", "sync"])


@pytest.mark.parametrize("args", [
    pytest.param(["--threads", "3"], id="threads-means-gthread"),
    pytest.param(["-k", "gunicorn.workers.ggevent.GeventWorker"], id="gevent-dotted"),
    pytest.param(["-k", "gevent_pywsgi"], id="gevent-pywsgi"),
    pytest.param(["-k", "gunicorn_prometheus_exporter.PrometheusEventletWorker"], id="prometheus-eventlet",
                 marks=pytest.mark.ferrocorn_only),
    pytest.param(["-k", "gunicorn.workers.gthread.ThreadWorker", "--threads", "2"], id="dotted"),
    pytest.param(["-k", "gunicorn_prometheus_exporter.PrometheusThreadWorker", "--threads", "2"],
                 id="prometheus", marks=pytest.mark.ferrocorn_only),
])
def test_worker_class_names(server, args):
    s = server(["-w", "1"] + args + ["wsgiapp:app"])
    name = args[-1].lower()
    kind = "gevent" if "gevent" in name else "eventlet" if "eventlet" in name else "gthread"
    assert_kind(s, ["-k", kind])


@pytest.mark.ferrocorn_only
def test_unknown_worker_class_is_refused_with_the_supported_names(run_cmd):
    r = run_cmd(["-k", "myproject.workers.CustomWorker", "wsgiapp:app"])
    assert r.returncode != 0
    assert "not known to ferrocorn" in r.stderr, r.stderr
    assert "gthread" in r.stderr, r.stderr


async def _load(port, path, clients, seconds):
    """`clients` keep-alive connections sending requests back to back for
    `seconds`; returns (completed requests, errors, elapsed)."""
    done = 0
    errors = []
    req = ("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path).encode()
    stop_at = time.monotonic() + seconds

    async def client():
        nonlocal done
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as e:
            errors.append(repr(e))
            return
        try:
            while time.monotonic() < stop_at:
                writer.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                if not head.startswith(b"HTTP/1.1 200"):
                    errors.append(head[:40])
                    return
                done += 1
        except (OSError, asyncio.IncompleteReadError) as e:
            errors.append(repr(e))
        finally:
            writer.close()

    t0 = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    return done, errors, time.monotonic() - t0


@pytest.mark.parametrize("args,need", [
    pytest.param(["-k", "gthread", "--threads", "50"], 400, id="gthread"),
    pytest.param(["-k", "gevent"], 1500, id="gevent"),
    pytest.param(["-k", "eventlet"], 1500, id="eventlet"),
])
def test_an_app_that_sleeps_is_served_concurrently(server, args, need):
    """1 worker, an app sleeping 100 ms per request, 200 clients."""
    s = server(["-w", "1", "--worker-connections", "1000"] + args + ["wsgiapp:app"])
    assert_kind(s, args)
    done, errors, took = asyncio.run(_load(s.port, "/sleep?s=0.1", 200, 4.0))
    rps = done / took
    print("%s: %.0f requests/s with 200 clients" % (args[1], rps))
    assert errors == [], errors[:5]
    assert rps >= need, "%.0f requests/s (need %d)" % (rps, need)


def test_gthread_backpressure_sends_new_requests_to_the_idle_worker(server):
    """-w 2 --threads 1: while one worker runs a 2 s request, quick requests
    on new connections go to the other and never wait behind it."""
    s = server(["-w", "2", "-k", "gthread", "--threads", "1", "wsgiapp:app"])
    assert_kind(s, ["-k", "gthread"])
    slow = {}

    def run_slow():
        r = requests.get(s.url + "/sleep?s=2", timeout=10)
        slow["status"] = r.status_code

    t = threading.Thread(target=run_slow)
    t.start()
    time.sleep(0.3)
    times = []
    for _ in range(50):
        t0 = time.monotonic()
        r = requests.get(s.url + "/", headers={"Connection": "close"}, timeout=10)
        times.append(time.monotonic() - t0)
        assert r.status_code == 200
    # The quick requests ran while the slow one did.
    assert "status" not in slow
    t.join(10)
    assert slow.get("status") == 200
    assert max(times) < 0.1, "slowest quick request: %.3f s" % max(times)


def _fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def _threads(pid):
    return len(os.listdir("/proc/%d/task" % pid))


@pytest.mark.parametrize("args", KINDS)
def test_clients_that_vanish_mid_stream_leak_nothing(server, args):
    """10,000 clients read the start of a streamed response and close: the
    worker's threads and open files stay flat, and it keeps serving."""
    s = server(["-w", "1"] + args + ["wsgiapp:app"])
    assert_kind(s, args)
    (pid,) = s.children()
    req = get("/stream?n=200&size=4096", close=False)
    base_fds, base_threads = _fds(pid), _threads(pid)

    def vanish(n):
        for _ in range(n):
            c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
            c.sendall(req)
            c.recv(1024)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c.close()

    workers = [threading.Thread(target=vanish, args=(500,)) for _ in range(20)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    # Let the worker notice the last resets.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _fds(pid) > base_fds + 2:
        time.sleep(0.1)
    assert s.children() == [pid], "the worker was replaced:\n" + s.log()[-2000:]
    assert _fds(pid) <= base_fds + 2, (base_fds, _fds(pid))
    assert _threads(pid) == base_threads, (base_threads, _threads(pid))
    assert requests.get(s.url + "/", timeout=10).text == "Hello, World!"


def signal_during_requests(s, sig, n):
    """`n` requests of 1 s each; `sig` to the master while they run; their
    (status, body) or (None, error)."""
    results = []
    lock = threading.Lock()

    def call():
        try:
            r = requests.get(s.url + "/sleep?s=1", timeout=15)
            out = (r.status_code, r.text)
        except requests.RequestException as e:
            out = (None, repr(e))
        with lock:
            results.append(out)

    clients = [threading.Thread(target=call) for _ in range(n)]
    for c in clients:
        c.start()
    time.sleep(0.4)
    s.signal(sig)
    for c in clients:
        c.join(20)
    return results


@pytest.mark.parametrize("args", KINDS)
def test_term_lets_requests_in_flight_finish(server, args):
    s = server(["-w", "1", "--graceful-timeout", "10"] + args + ["wsgiapp:app"])
    assert_kind(s, args)
    results = signal_during_requests(s, signal.SIGTERM, 4)
    assert results == [(200, "slept 1.0")] * 4, results
    assert s.wait(15) == 0


@pytest.mark.ferrocorn_only
@pytest.mark.parametrize("args", KINDS)
def test_counts_are_exact_across_max_requests_recycling(server, args):
    """Requests from 6 keep-alive clients through 2 workers that recycle every
    20 requests: the server-wide count is exact, and every worker's own
    counter equals the requests it answered (its pid in the body)."""
    s = server(["-w", "2", "--max-requests", "20"] + args + ["wsgiapp:app"])
    assert_kind(s, args)
    before = per_worker_requests(wait_metrics(s))
    n = 300
    errors = []
    served = {}
    lock = threading.Lock()

    def client(count):
        with requests.Session() as sess:
            for _ in range(count):
                try:
                    r = sess.get(s.url + "/pid", timeout=10)
                    if r.status_code != 200:
                        errors.append(r.status_code)
                        continue
                    with lock:
                        served[r.text] = served.get(r.text, 0) + 1
                except requests.RequestException as e:
                    errors.append(repr(e))

    clients = [threading.Thread(target=client, args=(n // 6,)) for _ in range(6)]
    for c in clients:
        c.start()
    for c in clients:
        c.join(120)
    assert errors == [], errors[:5]
    assert sum(served.values()) == n
    # + the readiness probe and the /kind request
    want = n + 2
    deadline = time.monotonic() + 10
    while True:
        smp = wait_metrics(s)
        got = total(smp, "gunicorn_requests_total")
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got == want, s.log()[-3000:]
    assert total(smp, "gunicorn_master_worker_restarts_total", reason="max_requests") >= n // 20 - 2
    after = per_worker_requests(smp)
    assert after, smp
    for pid, count in after.items():
        assert count == before.get(pid, 0) + served.get(pid, 0), (pid, count, before, served)


def per_worker_requests(smp):
    """{worker pid: gunicorn_worker_requests_total}"""
    return {dict(labels)["worker_id"].rsplit("_", 1)[1]: v
            for (name, labels), v in smp.items() if name == "gunicorn_worker_requests_total"}


HOOKS_WHERE = """
import json, os, sys, threading

def _where(req, hook):
    g = sys.modules.get("greenlet")
    rec = {"hook": hook, "q": req.query, "tid": threading.get_native_id(),
           "greenlet": id(g.getcurrent()) if g else None}
    with open(os.environ["HOOK_LOG"], "a") as f:
        f.write(json.dumps(rec) + "\\n")

def pre_request(worker, req):
    _where(req, "pre")

def post_request(worker, req, environ, resp):
    _where(req, "post")
"""


@pytest.mark.parametrize("args", KINDS)
def test_request_hooks_run_where_the_request_runs(server, args, tmp_path):
    """pre_request and post_request run in the thread (greenlet) that runs
    the app for that request, with requests overlapping."""
    log = tmp_path / "hooks.jsonl"
    s = server(["-w", "1"] + args + ["wsgiapp:app"], config_text=HOOKS_WHERE,
               env={"HOOK_LOG": str(log)})
    assert_kind(s, args)
    apps = {}

    def call(i):
        apps["n=%d&sleep=0.3" % i] = requests.get(s.url + "/kind?n=%d&sleep=0.3" % i, timeout=10).json()

    clients = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for c in clients:
        c.start()
    for c in clients:
        c.join(20)
    assert len(apps) == 4
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        recs = [json.loads(x) for x in log.read_text().splitlines()]
        recs = [r for r in recs if r["q"] in apps]
        if len(recs) == 8:
            break
        time.sleep(0.1)
    assert len(recs) == 8, recs
    for q, app in apps.items():
        mine = [r for r in recs if r["q"] == q]
        assert [r["hook"] for r in mine] == ["pre", "post"], mine
        for r in mine:
            assert (r["tid"], r["greenlet"]) == (app["native_thread_id"], app["greenlet"]), (r, app)
    # They overlapped: each ran in its own thread or greenlet.
    assert len({(a["native_thread_id"], a["greenlet"]) for a in apps.values()}) == 4, apps


@pytest.mark.parametrize("args", KINDS)
def test_timeout_is_about_the_worker_not_the_request(server, args):
    """As gunicorn's non-sync workers: a request may run longer than
    --timeout while the worker stays responsive."""
    s = server(["-w", "1", "--timeout", "2"] + args + ["wsgiapp:app"])
    assert_kind(s, args)
    (pid,) = s.children()
    r = requests.get(s.url + "/sleep?s=4", timeout=15)
    assert r.status_code == 200 and r.text == "slept 4.0"
    assert s.children() == [pid]
    assert "WORKER TIMEOUT" not in s.log()


@pytest.mark.parametrize("args", [a for a in KINDS if a.id != "gthread"])
def test_an_app_that_blocks_the_hub_times_out(server, args):
    """A greenlet that never yields stops the hub: the worker misses its
    heartbeat and is aborted and replaced, as under gunicorn."""
    s = server(["-w", "1", "--timeout", "2"] + args + ["wsgiapp:app"])
    assert_kind(s, args)
    (pid,) = s.children()
    try:
        r = requests.get(s.url + "/spin?s=10", timeout=20)
        assert r.status_code == 500, r.text
    except requests.ConnectionError:
        pass
    s.wait_log("WORKER TIMEOUT (pid:%d)" % pid, timeout=10)
    r = requests.get(s.url + "/pid", timeout=10)
    assert r.status_code == 200 and int(r.text) != pid


@pytest.mark.parametrize("args", KINDS)
def test_quit_stops_at_once_with_requests_in_flight(server, args):
    s = server(["-w", "1", "--graceful-timeout", "30"] + args + ["wsgiapp:app"])
    assert_kind(s, args)
    def call():
        try:
            requests.get(s.url + "/sleep?s=20", timeout=30)
        except requests.RequestException:
            pass  # the worker quit without answering, as it should

    t = threading.Thread(target=call, daemon=True)
    t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    s.signal(signal.SIGQUIT)
    assert s.wait(10) == 0, s.log()[-2000:]
    assert time.monotonic() - t0 < 5


@pytest.mark.ferrocorn_only
def test_request_queue_seconds_shows_waiting_for_a_thread(server):
    """gthread --threads 1: a request on a kept-alive connection that arrives
    while the only thread is busy waits for it, and the queue histogram
    shows that wait."""
    s = server(["-w", "1", "-k", "gthread", "--threads", "1", "--keep-alive", "10", "wsgiapp:app"])
    assert_kind(s, "gthread")
    wait_metrics(s)
    with RawConn(s.port) as idle:
        idle.send(get("/", close=False))
        assert idle.read_response().status == 200
        slow = threading.Thread(target=lambda: requests.get(s.url + "/sleep?s=1", timeout=10))
        slow.start()
        time.sleep(0.2)
        t0 = time.monotonic()
        idle.send(get("/", close=False))
        assert idle.read_response().status == 200
        waited = time.monotonic() - t0
        slow.join(10)
    assert waited > 0.5, waited
    smp = wait_metrics(s)
    buckets = {dict(labels)["le"]: v for (name, labels), v in smp.items()
               if name == "gunicorn_request_queue_seconds_bucket"}
    count = total(smp, "gunicorn_request_queue_seconds_count")
    # Every request reached the app once (probe, /kind, 2 x "/", the sleep).
    assert count == 5, smp
    # Four were served at once, one waited over half a second.
    assert buckets["0.5"] == 4 and buckets["+Inf"] == 5, buckets


@pytest.mark.ferrocorn_only
@pytest.mark.parametrize("args,capacity", [
    (["-k", "sync"], 1),
    (["-k", "gthread", "--threads", "4"], 4),
    (["-k", "gevent", "--worker-connections", "50"], 50),
    (["-k", "eventlet", "--worker-connections", "50"], 50),
])
def test_worker_concurrency_gauge(server, args, capacity):
    s = server(["-w", "1"] + args + ["wsgiapp:app"])
    assert_kind(s, args)
    busy_now = min(capacity, 4)
    clients = [threading.Thread(target=lambda: requests.get(s.url + "/sleep?s=2", timeout=10))
               for _ in range(busy_now)]
    for c in clients:
        c.start()
    time.sleep(0.8)
    smp = wait_metrics(s)
    for c in clients:
        c.join(15)
    got = {dict(labels)["state"]: v for (name, labels), v in smp.items()
           if name == "gunicorn_worker_concurrency"}
    assert got == {"busy": busy_now, "idle": capacity - busy_now}, got
    smp = wait_metrics(s)
    got = {dict(labels)["state"]: v for (name, labels), v in smp.items()
           if name == "gunicorn_worker_concurrency"}
    assert got == {"busy": 0, "idle": capacity}, got


@pytest.mark.parametrize("args", KINDS)
def test_hup_replaces_workers_of_the_same_kind_and_lets_requests_finish(server, args):
    s = server(["-w", "1", "--graceful-timeout", "10"] + args + ["wsgiapp:app"])
    assert_kind(s, args)
    (old,) = s.children()
    results = signal_during_requests(s, signal.SIGHUP, 3)
    assert results == [(200, "slept 1.0")] * 3, results
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (s.children() == [old] or len(s.children()) != 1):
        time.sleep(0.1)
    assert len(s.children()) == 1 and s.children() != [old], s.log()[-2000:]
    assert_kind(s, args)


# The objects a request hands the app (start_response, its write, wsgi.input,
# wsgi.early_hints) are reused by the thread's next request when the app let
# go of them; ones the app kept are never handed out again and stay inert.
OBJECT_KINDS = [pytest.param(["-k", "sync"], id="sync"),
                pytest.param(["-k", "gthread", "--threads", "1"], id="gthread"),
                pytest.param(["-k", "gevent"], id="gevent"),
                pytest.param(["-k", "eventlet"], id="eventlet")]


@pytest.mark.skipif(IS_GUNICORN, reason="gunicorn makes new objects per request and lets a kept write() through")
@pytest.mark.parametrize("args", OBJECT_KINDS)
def test_request_objects_kept_by_the_app_are_not_reused(server, args):
    s = server(["-w", "1"] + args + ["wsgiapp:app"])
    assert_kind(s, args)
    with requests.Session() as session:
        for _ in range(3):
            assert session.get(s.url + "/objects", timeout=10).status_code == 200
        kept = session.get(s.url + "/keep", timeout=10).json()
        r = session.get(s.url + "/kept", timeout=10)
    assert r.status_code == 200
    assert b"LATE" not in r.content
    out = r.json()
    assert out["kept"] == {"sr": kept["sr"], "input": kept["input"]}
    # (ids of live objects: different ids, different objects)
    assert out["now"]["sr"] != kept["sr"] and out["now"]["input"] != kept["input"]
    assert out["now"]["hints"] != kept["hints"]
    # The kept objects belong to a finished request: write() fails, the body
    # reads empty, start_response refuses, early hints are dropped.
    assert out["write"].get("raised") == "OSError", out
    assert out["input_read"] == {"ok": "b''"}, out
    assert out["start_response"].get("raised") == "AssertionError", out
    assert out["hints"] == {"ok": "None"}, out
