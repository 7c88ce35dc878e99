"""The asgi worker kind: ASGI 3 HTTP with lifespan, under every name it
answers to, with a plain ASGI app (tests/apps/asgiapp.py), Starlette,
FastAPI (examples/fastapiapp) and Django (examples/djangoproj).

Every server is first proved to run the asgi kind: /kind of asgiapp.py
reports the running event loop, the current Task and the thread."""
import contextlib
import json
import os
import signal
import socket
import threading
import time

import pytest
import requests

from conftest import EXAMPLES
from helpers import RawConn, chunked, wait_until
from test_metrics import total, wait_metrics

pytestmark = pytest.mark.ferrocorn_only

ASGI = ["-k", "asgi"]


@pytest.fixture(autouse=True)
def no_event_loop_errors(server):
    """After each test: no exception escaped a callback of a server's event
    loop (asyncio logs those and goes on, so a test would not see them).
    (Takes `server` so that it runs before the factory removes the logs.)"""
    yield
    for s in server.servers:
        log = s.log()
        assert "Exception in callback" not in log, log[-3000:]


def assert_asgi(s, loop="uvloop.Loop"):
    """The request ran as an asyncio Task on the worker's main thread, in
    the expected event loop."""
    r = requests.get(s.url + "/kind", timeout=10)
    assert r.status_code == 200, r.text
    k = r.json()
    assert k["task"] is True, k
    assert k["main_thread"] is True and k["native_thread_id"] == k["pid"], k
    assert k["loop"] == loop, k
    return k


def events(path):
    try:
        with open(path) as f:
            return [line.split() for line in f.read().splitlines()]
    except FileNotFoundError:
        return []


@pytest.fixture(scope="module")
def asgi_srv(module_server):
    s = module_server(ASGI + ["-w", "1", "asgiapp:app"])
    assert_asgi(s)
    return s


@pytest.mark.parametrize("name", [
    "asgi", "gunicorn.workers.gasgi.ASGIWorker", "uvicorn.workers.UvicornWorker",
    "uvicorn.workers.UvicornH11Worker", "uvicorn_worker.UvicornWorker", "uvicorn_worker.UvicornH11Worker",
])
def test_names_run_the_asgi_kind(server, name):
    s = server(["-k", name, "-w", "1", "asgiapp:app"])
    assert_asgi(s)
    assert "Using worker: %s" % name in s.log()


@pytest.mark.parametrize("choice,loop", [("asyncio", "asyncio.unix_events._UnixSelectorEventLoop"),
                                         ("uvloop", "uvloop.Loop"), ("auto", "uvloop.Loop")])
def test_asgi_loop_setting(server, choice, loop):
    s = server(ASGI + ["--asgi-loop", choice, "asgiapp:app"])
    assert_asgi(s, loop)
    r = requests.get(s.url + "/stream?n=4", timeout=10)
    assert r.text == "".join("chunk%d\n" % i for i in range(4))


def test_scope(server):
    s = server(ASGI + ["--root-path", "/api", "asgiapp:app"])
    assert_asgi(s)
    r = requests.get(s.url + "/scope?x=1&y=%20", headers={"X-Custom-Thing": "Yes"}, timeout=10)
    sc = r.json()
    assert sc["type"] == "http"
    assert sc["asgi"] == {"version": "3.0", "spec_version": "2.3"}
    assert sc["http_version"] == "1.1"
    assert sc["method"] == "GET"
    assert sc["scheme"] == "http"
    assert sc["path"] == "/scope"
    assert sc["raw_path"] == "/scope"
    assert sc["query_string"] == "x=1&y=%20"
    assert sc["root_path"] == "/api"
    assert ["x-custom-thing", "Yes"] in sc["headers"]
    assert all(name == name.lower() for name, _ in sc["headers"])
    assert sc["server"] == ["127.0.0.1", s.port]
    assert sc["client"][0] == "127.0.0.1" and isinstance(sc["client"][1], int)
    assert "started_by" in sc["state"]
    with RawConn(s.port) as c:
        c.send(b"GET /scope/caf%C3%A9%20x HTTP/1.0\r\nHost: h\r\n\r\n")
        sc = json.loads(c.read_response().body)
    assert sc["path"] == "/scope/caf\u00e9 x"
    assert sc["raw_path"] == "/scope/caf%C3%A9%20x"
    assert sc["http_version"] == "1.0"


def test_request_bodies(asgi_srv):
    r = requests.post(asgi_srv.url + "/echo", data=b"hello body", timeout=10)
    assert r.content == b"hello body"
    assert r.headers["x-messages"] == "1"
    big = os.urandom(3 << 20)
    r = requests.post(asgi_srv.url + "/echo", data=big, timeout=30)
    assert r.content == big
    # more than one http.request message for a body larger than one read
    assert int(r.headers["x-messages"]) > 1
    with RawConn(asgi_srv.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
               + chunked(b"chunked body here", [3, 5, 9]))
        resp = c.read_response()
        assert resp.status == 200 and resp.body == b"chunked body here"


def test_body_arriving_slowly(asgi_srv):
    with RawConn(asgi_srv.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nhello")
        time.sleep(0.3)
        c.send(b"world")
        resp = c.read_response()
        assert resp.body == b"helloworld"
        assert int(resp.header("x-messages")) == 2


def test_expect_continue(asgi_srv):
    with RawConn(asgi_srv.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        assert c.read_line().startswith(b"HTTP/1.1 100 Continue")
        c.read_line()
        c.send(b"data")
        assert c.read_response().body == b"data"


def test_framing_and_keep_alive(asgi_srv):
    with RawConn(asgi_srv.port) as c:
        # one body message: Content-Length, no chunking
        c.send(b"GET /scope HTTP/1.1\r\nHost: h\r\n\r\n")
        r1 = c.read_response()
        assert r1.header("content-length") == str(len(r1.body)) and not r1.chunked
        # several: chunked
        c.send(b"GET /stream?n=3 HTTP/1.1\r\nHost: h\r\n\r\n")
        r2 = c.read_response()
        assert r2.chunked and r2.body == b"chunk0\nchunk1\nchunk2\n"
        # HEAD: no body
        c.send(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
        r3 = c.read_response(method="HEAD")
        assert r3.status == 200 and r3.body == b""
        # pipelined
        c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET /stream?n=1 HTTP/1.1\r\nHost: h\r\n\r\n")
        assert c.read_response().body == b"Hello, World!"
        assert c.read_response().body == b"chunk0\n"
        assert not c.is_closed(0.2)
        c.send(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        r = c.read_response()
        assert r.header("connection") == "close"
        assert c.is_closed()


def test_keep_alive_timeout(server):
    s = server(ASGI + ["--keep-alive", "1", "asgiapp:app"])
    with RawConn(s.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert c.read_response().status == 200
        t0 = time.monotonic()
        assert c.is_closed(5)
        assert 0.5 < time.monotonic() - t0 < 3


def test_app_errors(asgi_srv):
    r = requests.get(asgi_srv.url + "/raise", timeout=10)
    assert r.status_code == 500
    asgi_srv.wait_log("ValueError: boom")
    assert "Error in ASGI application" in asgi_srv.log()
    r = requests.get(asgi_srv.url + "/noresponse", timeout=10)
    assert r.status_code == 500
    asgi_srv.wait_log("ASGI callable returned without starting response")
    with RawConn(asgi_srv.port) as c:
        c.send(b"GET /halfway HTTP/1.1\r\nHost: h\r\n\r\n")
        head = c.read_head()
        assert b"200 OK" in head
        # the response is cut: the connection closes without the last chunk
        data = c.read_until_close()
        assert b"partial" in data and not data.endswith(b"0\r\n\r\n")
    # the worker goes on serving
    assert requests.get(asgi_srv.url + "/", timeout=10).text == "Hello, World!"


def test_bad_messages_are_the_apps_error(server, tmp_path):
    app = tmp_path / "badapp.py"
    app.write_text(
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n"
        "        return\n"
        "    if scope['path'] == '/body-first':\n"
        "        await send({'type': 'http.response.body', 'body': b'x'})\n"
        "    elif scope['path'] == '/bad-header':\n"
        "        await send({'type': 'http.response.start', 'status': 200, 'headers': [('str', 'x')]})\n"
        "    else:\n"
        "        await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "        await send({'type': 'http.response.body', 'body': b'ok'})\n")
    s = server(ASGI + ["--asgi-lifespan", "off", "badapp:app"], cwd=str(tmp_path))
    assert requests.get(s.url + "/body-first", timeout=10).status_code == 500
    s.wait_log("Expected ASGI message 'http.response.start'")
    assert requests.get(s.url + "/bad-header", timeout=10).status_code == 500
    s.wait_log("must be bytes")
    assert requests.get(s.url + "/", timeout=10).text == "ok"


def test_lifespan_once_per_worker(server, tmp_path):
    ev = str(tmp_path / "events")
    s = server(ASGI + ["-w", "2", "asgiapp:app"], env={"ASGI_EVENTS": ev})
    assert_asgi(s)
    deadline = time.monotonic() + 10
    while len(events(ev)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = set(s.children())
    got = events(ev)
    assert sorted(e[0] for e in got) == ["startup", "startup"]
    assert {int(e[1]) for e in got} == workers
    # the request's state came from its worker's startup
    k = requests.get(s.url + "/kind", timeout=10).json()
    assert k["state"] == k["pid"]
    assert s.stop() == 0
    got = events(ev)
    assert sorted(e[0] for e in got) == ["shutdown", "shutdown", "startup", "startup"]
    assert {int(e[1]) for e in got if e[0] == "shutdown"} == workers


def test_lifespan_off(server, tmp_path):
    ev = str(tmp_path / "events")
    s = server(ASGI + ["--asgi-lifespan", "off", "asgiapp:app"], env={"ASGI_EVENTS": ev})
    k = assert_asgi(s)
    assert k["state"] is None
    s.stop()
    assert events(ev) == []


@pytest.mark.parametrize("mode,expect", [("fail", "no database here"), ("raise", "startup exploded")])
def test_lifespan_startup_failure_stops_the_master(server, mode, expect):
    s = server(ASGI + ["-w", "2", "asgiapp:app"], env={"ASGI_STARTUP": mode}, ready=None)
    code = s.wait(30)
    log = s.log()
    assert code is not None, "the master kept running:\n" + log
    assert code != 0
    assert expect in log
    # no respawn loop: each worker booted once
    assert log.count("Booting worker") <= 2, log


def test_lifespan_auto_without_lifespan_support(server, tmp_path):
    app = tmp_path / "nolifespan.py"
    app.write_text(
        "async def app(scope, receive, send):\n"
        "    assert scope['type'] == 'http', 'only http here'\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b'plain'})\n")
    s = server(ASGI + ["nolifespan:app"], cwd=str(tmp_path))
    assert requests.get(s.url + "/", timeout=10).text == "plain"
    assert "lifespan' protocol appears unsupported" in s.log()
    s2 = server(ASGI + ["--asgi-lifespan", "on", "nolifespan:app"], cwd=str(tmp_path), ready=None)
    assert s2.wait(30) not in (None, 0)
    assert "only http here" in s2.log()


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_lifespan_app_that_returns_at_once(server, tmp_path, mode):
    """`if scope["type"] != "http": return` is a common ASGI app's lifespan:
    the worker starts (it used to wait for a startup message forever)."""
    app = tmp_path / "quietlifespan.py"
    app.write_text(
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n"
        "        return\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b'quiet'})\n")
    s = server(ASGI + ["--asgi-lifespan", mode, "-w", "1", "quietlifespan:app"], cwd=str(tmp_path))
    assert requests.get(s.url + "/", timeout=10).text == "quiet"
    s.signal(signal.SIGTERM)
    assert s.wait(15) == 0


def test_each_request_has_its_task_and_context(asgi_srv):
    """A request that finishes at once runs as the current task too, and
    sees none of an earlier request's context variables; a request that
    waits keeps one Task (an anyio cancel scope spans its wait) and its own
    context, apart from the requests waiting beside it."""
    s = asgi_srv
    log_from = len(s.log())
    sess = requests.Session()
    for i in range(20):
        r = sess.get(s.url + "/task?id=quick%d" % i, timeout=10).json()
        assert r["is_task"] and r["same_task"], r
        assert r["seen_before"] is None, r
        assert r["id_after_wait"] == "quick%d" % i, r
    out = {}

    def waiting(i):
        out[i] = requests.get(s.url + "/task?id=slow%d&s=0.3" % i, timeout=10).json()

    threads = [threading.Thread(target=waiting, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 8
    for i, r in out.items():
        assert r["is_task"] and r["same_task"], r
        assert r["seen_before"] is None, r
        assert r["id_after_wait"] == "slow%d" % i, r
    # all 8 waited at the same time: 8 different Tasks
    assert len({r["task"] for r in out.values()}) == 8, out
    assert "Traceback" not in s.log()[log_from:], s.log()[log_from:]


def test_many_concurrent_waiting_requests(server):
    s = server(ASGI + ["-w", "1", "asgiapp:app"])
    assert_asgi(s)
    results = []

    def client():
        sess = requests.Session()
        for _ in range(5):
            results.append(sess.get(s.url + "/sleep?s=0.1", timeout=30).status_code)

    threads = [threading.Thread(target=client) for _ in range(100)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    assert results.count(200) == 500
    # 500 requests of 100 ms each, 100 at a time, on one worker
    assert took < 4, took
    # nothing went wrong in the event loop's callbacks meanwhile
    assert "Traceback" not in s.log() and "Exception in callback" not in s.log(), s.log()[-3000:]


def test_disconnect_is_seen_and_nothing_leaks(server):
    s = server(ASGI + ["-w", "1", "asgiapp:app"])
    assert_asgi(s)
    base = requests.get(s.url + "/stats", timeout=10).json()
    # clients that go away while the app waits for http.disconnect
    for _ in range(20):
        with RawConn(s.port) as c:
            c.send(b"GET /wait-disconnect HTTP/1.1\r\nHost: h\r\n\r\n")
            time.sleep(0.01)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st = requests.get(s.url + "/stats", timeout=10).json()
        if st["disconnects"] >= 20:
            break
        time.sleep(0.05)
    assert st["disconnects"] == 20, st
    # 10,000 clients that vanish in the middle of a streamed response
    for i in range(10000):
        sock = socket.create_connection(("127.0.0.1", s.port))
        sock.sendall(b"GET /slowstream?n=50&s=0.001 HTTP/1.1\r\nHost: h\r\n\r\n")
        sock.recv(256)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        st = requests.get(s.url + "/stats", timeout=10).json()
        if st["tasks"] <= base["tasks"] and st["fds"] <= base["fds"] + 2:
            break
        time.sleep(0.1)
    assert st["tasks"] <= base["tasks"], (base, st)
    assert st["fds"] <= base["fds"] + 2, (base, st)
    assert requests.get(s.url + "/", timeout=10).text == "Hello, World!"


def test_graceful_stop_finishes_requests_and_runs_shutdown(server, tmp_path):
    ev = str(tmp_path / "events")
    s = server(ASGI + ["-w", "1", "--graceful-timeout", "10", "asgiapp:app"], env={"ASGI_EVENTS": ev})
    assert_asgi(s)
    results = []

    def one():
        try:
            results.append(requests.get(s.url + "/sleep?s=1", timeout=20).status_code)
        except requests.RequestException as e:
            results.append(repr(e))

    threads = [threading.Thread(target=one) for _ in range(10)]
    for t in threads:
        t.start()
    time.sleep(0.4)
    s.signal(signal.SIGTERM)
    for t in threads:
        t.join()
    assert results == [200] * 10, results
    assert s.wait(20) == 0
    assert [e[0] for e in events(ev)] == ["startup", "shutdown"]


def test_max_requests_and_exact_metrics(server):
    s = server(ASGI + ["-w", "2", "--max-requests", "25", "asgiapp:app"])
    assert_asgi(s)
    before = wait_metrics(s)
    base = total(before, "gunicorn_requests_total")
    n = 0
    for i in range(200):
        r = requests.get(s.url + ("/stream?n=2" if i % 2 else "/"), timeout=10)
        assert r.status_code == 200
        n += 1
    for _ in range(5):
        assert requests.get(s.url + "/raise", timeout=10).status_code == 500
        n += 1
    deadline = time.monotonic() + 15
    while True:
        smp = wait_metrics(s)
        got = total(smp, "gunicorn_requests_total") - base
        if got >= n or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    # /kind from assert_asgi was counted in `base`
    assert got == n, (got, n)
    assert "Autorestarting worker" in s.log() or "max_requests" in s.log().lower()


def test_starlette(server, tmp_path):
    ev = str(tmp_path / "events")
    s = server(ASGI + ["-w", "1", "starletteapp:app"], env={"LIFESPAN_EVENTS": ev})
    assert requests.get(s.url + "/", timeout=10).text == "hello from Starlette"
    r = requests.post(s.url + "/echo?a=1", data=b"x" * 100000, timeout=10).json()
    assert r == {"len": 100000, "head": "x" * 20, "path": "/echo", "query": {"a": "1"}}
    r = requests.get(s.url + "/stream?n=3", timeout=10)
    assert r.text == "part 0\npart 1\npart 2\n"
    sess = requests.Session()
    for _ in range(5):
        assert sess.get(s.url + "/", timeout=10).status_code == 200
    with ws_connect("ws://127.0.0.1:%d/ws" % s.port) as ws:
        for word in ("one", "two"):
            ws.send(word)
            assert ws.recv() == word.upper()
    s.stop()
    assert [e[0] for e in events(ev)] == ["startup", "shutdown"]


def test_fastapi(server, tmp_path):
    ev = str(tmp_path / "events")
    s = server(["-k", "uvicorn.workers.UvicornWorker", "-w", "1", "app:app"],
               cwd=os.path.join(EXAMPLES, "fastapiapp"), env={"LIFESPAN_EVENTS": ev})
    assert requests.get(s.url + "/", timeout=10).json() == {"hello": "world"}
    st = requests.get(s.url + "/state", timeout=10).json()
    assert st["started_by"] == st["pid"]
    r = requests.post(s.url + "/items", json={"name": "pen", "price": 1.5, "tags": ["a"]}, timeout=10)
    assert r.json() == {"item": {"name": "pen", "price": 1.5, "tags": ["a"]}, "total": 3.0}
    r = requests.post(s.url + "/items", json={"name": "pen"}, timeout=10)
    assert r.status_code == 422
    r = requests.get(s.url + "/stream?n=4", timeout=10)
    assert r.text == "".join("line %d\n" % i for i in range(4))
    assert r.headers.get("transfer-encoding") == "chunked"
    assert requests.get(s.url + "/background?tag=t1", timeout=10).json() == {"queued": "t1"}
    deadline = time.monotonic() + 5
    while "t1" not in requests.get(s.url + "/done", timeout=10).json()["done"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    sess = requests.Session()
    for _ in range(10):
        assert sess.get(s.url + "/", timeout=10).status_code == 200
    s.stop()
    assert [e[0] for e in events(ev)] == ["startup", "shutdown"]


def test_django_asgi(server):
    s = server(ASGI + ["-w", "1", "djangoproj.asgi:application"], cwd=os.path.join(EXAMPLES, "djangoproj"))
    r = requests.get(s.url + "/", timeout=10)
    assert "Hello from Django!" in r.text
    r = requests.post(s.url + "/echo?q=1", data=b"payload", timeout=10).json()
    assert r == {"method": "POST", "path": "/echo", "query": "q=1", "body": "payload"}
    r = requests.get(s.url + "/stream?n=3&size=10", timeout=10)
    assert r.content == b"a" * 10 + b"b" * 10 + b"c" * 10
    r = requests.post(s.url + "/form", data={"name": "Ann"}, timeout=10).json()
    assert r["form"] == {"name": ["Ann"]}


# -- WebSocket -------------------------------------------------------------------

def ws_connect(url, **kw):
    from websockets.sync.client import connect
    return connect(url, open_timeout=10, close_timeout=10, **kw)


def test_websocket_fastapi_echo(server):
    s = server(["-k", "asgi", "-w", "1", "app:app"], cwd=os.path.join(EXAMPLES, "fastapiapp"))
    ws_url = "ws://127.0.0.1:%d/ws" % s.port
    with ws_connect(ws_url, subprotocols=["chat", "other"]) as ws:
        assert ws.subprotocol == "chat"
        ws.send("hello")
        assert ws.recv() == "echo:hello"
        ws.send(b"\x00\x01\x02")
        assert ws.recv() == b"\x02\x01\x00"
        big = "x" * 300000
        ws.send(big)
        assert ws.recv() == "echo:" + big
        # a fragmented message, and a ping (the server answers the pong)
        ws.send(["frag", "mented"])
        assert ws.recv() == "echo:fragmented"
        assert ws.ping().wait(5)
    # the client closed with 1000: the app saw it
    wait_until(lambda: requests.get(s.url + "/ws-closes", timeout=10).json()["closes"],
               lambda closes: 1000 in closes)
    # the app closes with its own code
    from websockets.exceptions import ConnectionClosed
    with ws_connect(ws_url) as ws:
        ws.send("close:4001")
        with pytest.raises(ConnectionClosed):
            ws.recv()
        assert ws.close_code == 4001
    # plain HTTP still served by the same worker
    assert requests.get(s.url + "/", timeout=10).json() == {"hello": "world"}


def test_websocket_scope_refusal_and_errors(server):
    from websockets.exceptions import InvalidStatus
    s = server(ASGI + ["-w", "1", "--root-path", "/r", "asgiapp:app"])
    with ws_connect("ws://127.0.0.1:%d/ws/x?q=1" % s.port) as ws:
        ws.send("scope")
        sc = json.loads(ws.recv())
    assert sc["type"] == "websocket" and sc["scheme"] == "ws"
    assert sc["path"] == "/ws/x" and sc["query_string"] == "q=1" and sc["root_path"] == "/r"
    assert sc["subprotocols"] == [] and "method" not in sc
    assert ["upgrade", "websocket"] in sc["headers"]
    with pytest.raises(InvalidStatus) as e:
        ws_connect("ws://127.0.0.1:%d/ws-reject" % s.port).close()
    assert e.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as e:
        ws_connect("ws://127.0.0.1:%d/ws-raise" % s.port).close()
    assert e.value.response.status_code == 500
    s.wait_log("websocket refused by an exception")
    assert requests.get(s.url + "/", timeout=10).text == "Hello, World!"


def _ws_handshake(port, extensions):
    """A raw WebSocket handshake; the socket and the response head."""
    import base64
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    head = ("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n" % key)
    if extensions:
        head += "Sec-WebSocket-Extensions: %s\r\n" % extensions
    sock.sendall((head + "\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        assert chunk, buf
        buf += chunk
    resp, _, rest = buf.partition(b"\r\n\r\n")
    assert rest == b""
    return sock, resp.decode("latin-1")


def _ws_send(sock, opcode, payload, rsv1=False, fin=True):
    """One masked client frame."""
    mask = os.urandom(4)
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes([b0, 0x80 | n])
    elif n < 65536:
        head = bytes([b0, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([b0, 0x80 | 127]) + n.to_bytes(8, "big")
    sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def _ws_recv(sock):
    """One server frame: (first byte, payload)."""
    def exact(n):
        out = b""
        while len(out) < n:
            chunk = sock.recv(n - len(out))
            assert chunk, "connection closed"
            out += chunk
        return out
    b0, b1 = exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(exact(2), "big")
    elif n == 127:
        n = int.from_bytes(exact(8), "big")
    assert not b1 & 0x80, "server frames are not masked"
    return b0, exact(n)


def _deflate(data):
    import zlib
    c = zlib.compressobj(wbits=-15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def _inflate(data):
    import zlib
    return zlib.decompressobj(wbits=-15).decompress(data + b"\x00\x00\xff\xff")


@pytest.mark.ferrocorn_only
def test_websocket_permessage_deflate(server):
    s = server(ASGI + ["-w", "1", "asgiapp:app"])
    # No offer: no extension, frames as they are.
    sock, resp = _ws_handshake(s.port, None)
    assert resp.startswith("HTTP/1.1 101") and "extensions" not in resp.lower()
    _ws_send(sock, 0x1, b"plain")
    assert _ws_recv(sock) == (0x81, b"plain")
    sock.close()
    # An offer the server cannot honour (a smaller server window), then one it can.
    sock, resp = _ws_handshake(
        s.port, "permessage-deflate; server_max_window_bits=9, "
                "permessage-deflate; client_max_window_bits; server_no_context_takeover")
    assert "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover" in resp.split("\r\n"), resp
    text = ("hello websocket " * 4000).encode()
    packed = _deflate(text)
    assert len(packed) < 1000
    _ws_send(sock, 0x1, packed, rsv1=True)
    b0, payload = _ws_recv(sock)
    # The echo comes back compressed (RSV1) and inflates to the same text.
    assert b0 == 0x80 | 0x40 | 0x1, hex(b0)
    assert len(payload) < 1000 and _inflate(payload) == text
    sock.close()
    # A compressed message in two fragments; a short reply goes out plain.
    sock, resp = _ws_handshake(s.port, "permessage-deflate")
    packed = _deflate(b"abc" * 5)
    _ws_send(sock, 0x2, packed[:2], rsv1=True, fin=False)
    _ws_send(sock, 0x0, packed[2:])
    assert _ws_recv(sock) == (0x82, b"abc" * 5)
    # A decompression bomb: 20 MB of zeros in a few KB, over the 16 MiB
    # limit: close 1009, and the worker goes on serving.
    bomb = _deflate(bytes(20 << 20))
    assert len(bomb) < 64 * 1024
    _ws_send(sock, 0x2, bomb, rsv1=True)
    b0, payload = _ws_recv(sock)
    assert b0 == 0x88 and int.from_bytes(payload[:2], "big") == 1009, (b0, payload)
    sock.close()
    # A client library with its defaults (it offers permessage-deflate).
    with ws_connect("ws://127.0.0.1:%d/ws" % s.port) as ws:
        assert ws.response.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
        for msg in ["x", "y" * 100000, "z" * 70000]:
            ws.send(msg)
            assert ws.recv() == msg
        ws.send(b"\x00" * 300000)
        assert ws.recv() == b"\x00" * 300000
    assert requests.get(s.url + "/", timeout=10).text == "Hello, World!"


def test_websocket_max_message_size(server, tmp_path):
    from websockets.exceptions import ConnectionClosed
    ev = str(tmp_path / "events")
    s = server(ASGI + ["-w", "1", "--websocket-max-message-size", "1000", "asgiapp:app"],
               env={"ASGI_EVENTS": ev})
    with ws_connect("ws://127.0.0.1:%d/ws" % s.port) as ws:
        ws.send("a" * 1000)
        assert ws.recv() == "a" * 1000
        ws.send("b" * 5000)
        with pytest.raises(ConnectionClosed):
            ws.recv()
        assert ws.close_code == 1009
    deadline = time.monotonic() + 5
    while ["ws-disconnect-1009"] != [e[0] for e in events(ev) if e[0].startswith("ws-")]:
        assert time.monotonic() < deadline, events(ev)
        time.sleep(0.05)


def test_websocket_metrics_and_graceful_stop(server, tmp_path):
    ev = str(tmp_path / "events")
    s = server(ASGI + ["-w", "1", "--graceful-timeout", "15", "asgiapp:app"], env={"ASGI_EVENTS": ev})
    assert_asgi(s)
    before = wait_metrics(s)
    base101 = total(before, "gunicorn_requests_total", status="101")
    stack = contextlib.ExitStack()
    socks = [stack.enter_context(ws_connect("ws://127.0.0.1:%d/ws" % s.port)) for _ in range(3)]
    for i, ws in enumerate(socks):
        ws.send("m%d" % i)
        assert ws.recv() == "m%d" % i
    smp = wait_metrics(s)
    assert total(smp, "gunicorn_websocket_connections") == 3
    # one WebSocket ends normally: counted once, with status 101
    socks.pop().close()
    deadline = time.monotonic() + 10
    while True:
        smp = wait_metrics(s)
        if total(smp, "gunicorn_websocket_connections") == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert total(smp, "gunicorn_websocket_connections") == 2
    assert total(smp, "gunicorn_requests_total", status="101") - base101 == 1
    # graceful stop with an HTTP request in flight: it completes, then the
    # open WebSockets get 1001 and lifespan shutdown runs
    result = []
    t = threading.Thread(target=lambda: result.append(
        requests.get(s.url + "/sleep?s=1.5", timeout=20).status_code))
    t.start()
    time.sleep(0.3)
    t_term = time.monotonic()
    s.signal(signal.SIGTERM)
    codes = []
    from websockets.exceptions import ConnectionClosed
    for ws in socks:
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        codes.append((ws.close_code, time.monotonic() - t_term))
    t.join()
    assert result == [200]
    assert [c for c, _ in codes] == [1001, 1001]
    # the WebSockets were closed after the HTTP request finished (~1.2 s)
    assert all(dt > 0.8 for _, dt in codes), codes
    stack.close()
    assert s.wait(20) == 0
    got = [e[0] for e in events(ev)]
    assert got.count("ws-disconnect-1001") == 2 and got[-1] == "shutdown", got


def test_request_hooks_and_access_log(server, tmp_path):
    out = tmp_path / "hooks.jsonl"
    conf = (
        "import json\n"
        "def pre_request(worker, req):\n"
        "    if req.path == '/deny':\n"
        "        raise RuntimeError('denied by pre_request')\n"
        "    with open(%r, 'a') as f:\n"
        "        f.write(json.dumps({'hook': 'pre', 'path': req.path, 'method': req.method}) + '\\n')\n"
        "def post_request(worker, req, environ, resp):\n"
        "    with open(%r, 'a') as f:\n"
        "        f.write(json.dumps({'hook': 'post', 'path': req.path, 'status': resp.status,\n"
        "                            'raw_uri': environ['RAW_URI'], 'ua': environ.get('HTTP_USER_AGENT'),\n"
        "                            'sent': resp.sent}) + '\\n')\n"
    ) % (str(out), str(out))
    s = server(ASGI + ["-w", "1", "--access-logfile", "-", "asgiapp:app"], config_text=conf)
    r = requests.get(s.url + "/stream?n=2", headers={"User-Agent": "hook-test"}, timeout=10)
    assert r.status_code == 200
    assert requests.get(s.url + "/deny", timeout=10).status_code == 500
    s.wait_log("denied by pre_request")
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
        if len([x for x in lines if x["path"] == "/stream" and x["hook"] == "post"]) == 1:
            break
        assert time.monotonic() < deadline, lines
        time.sleep(0.05)
    stream = [x for x in lines if x["path"] == "/stream"]
    assert stream[0] == {"hook": "pre", "path": "/stream", "method": "GET"}
    assert stream[1] == {"hook": "post", "path": "/stream", "status": "200 OK",
                         "raw_uri": "/stream?n=2", "ua": "hook-test", "sent": 14}
    assert not [x for x in lines if x["path"] == "/deny" and x["hook"] == "pre"]
    log = s.wait_log('"GET /stream?n=2 HTTP/1.1" 200 14')
    assert "hook-test" in log


# -- tornado ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tornado", "gunicorn.workers.gtornado.TornadoWorker",
                                  "gunicorn_prometheus_exporter.PrometheusTornadoWorker"])
def test_tornado_app(server, name):
    s = server(["-k", name, "-w", "1", "tornadoapp:app"])
    k = requests.get(s.url + "/kind", timeout=10).json()
    # tornado's IOLoop is the worker's asyncio loop, on the main thread
    assert k["ioloop_wraps_it"] is True and k["main_thread"] is True, k
    assert k["loop"] == "uvloop.Loop", k
    assert k["remote_ip"] == "127.0.0.1" and k["protocol"] == "http", k
    assert k["host"] == "127.0.0.1:%d" % s.port, k
    assert "Using worker: %s" % name in s.log()
    sess = requests.Session()
    for _ in range(3):
        assert sess.get(s.url + "/", timeout=10).text == "Hello from Tornado"
    r = sess.post(s.url + "/echo?a=1", data=b"tornado body", timeout=10)
    assert r.content == b"tornado body" and r.headers["X-Arg"] == "1"
    r = sess.get(s.url + "/stream?n=3", timeout=10)
    assert r.text == "part 0\npart 1\npart 2\n"
    assert sess.get(s.url + "/teapot", timeout=10).status_code == 418
    assert sess.get(s.url + "/nothing-here", timeout=10).status_code == 404
    t0 = time.monotonic()
    threads = [threading.Thread(target=lambda: requests.get(s.url + "/sleep?s=0.5", timeout=10))
               for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 20 requests sleeping 0.5 s each, concurrently on one worker
    assert time.monotonic() - t0 < 3


def test_tornado_websocket_handler(server):
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    s = server(["-k", "tornado", "-w", "1", "tornadoapp:app"])
    ws_url = "ws://127.0.0.1:%d/ws" % s.port
    # open() with the URL's argument, the subprotocol the handler chose
    with ws_connect(ws_url + "/kitchen", subprotocols=["other", "chat"]) as ws:
        assert ws.subprotocol == "chat"
        assert json.loads(ws.recv()) == {"room": "kitchen", "subprotocol": "chat"}
        ws.send("hi")
        assert ws.recv() == "kitchen:hi"
        ws.send(b"\x01\x02\x03")
        assert ws.recv() == b"\x03\x02\x01"
        big = "y" * 200000
        ws.send(big)
        assert ws.recv() == "kitchen:" + big
        assert ws.ping().wait(5)
    # the handler closes with its own code and reason
    with ws_connect(ws_url) as ws:
        assert json.loads(ws.recv())["room"] == "lobby"
        ws.send("bye")
        with pytest.raises(ConnectionClosed):
            ws.recv()
        assert ws.close_code == 4001 and ws.close_reason == "bye now"
    # on_close ran for both, with the client's 1000 and the handler's 4001
    closes = wait_until(lambda: requests.get(s.url + "/closes", timeout=10).json()["closes"],
                        lambda closes: len(closes) == 2)
    assert sorted(closes) == [["kitchen", 1000, None], ["lobby", 4001, "bye now"]]
    # check_origin refuses: no handshake (403), as tornado answers
    with pytest.raises(InvalidStatus) as e:
        ws_connect(ws_url, origin="http://evil.example").close()
    assert e.value.response.status_code == 403
    # a plain GET to the handler is tornado's 400
    assert requests.get(ws_url.replace("ws:", "http:"), timeout=10).status_code == 400
    assert requests.get(s.url + "/", timeout=10).text == "Hello from Tornado"


def test_tornado_serves_a_wsgi_app(server):
    # gunicorn's tornado worker wraps a WSGI app in tornado's WSGIContainer
    s = server(["-k", "tornado", "-w", "1", "wsgiapp:app"])
    r = requests.get(s.url + "/", timeout=10)
    assert r.status_code == 200, r.text
    r = requests.post(s.url + "/echo", data=b"to wsgi", timeout=10)
    assert r.status_code == 200 and b"to wsgi" in r.content, r.content


def test_disconnect_grace_period_cancels_the_task(server):
    s = server(ASGI + ["-w", "1", "--asgi-disconnect-grace-period", "1", "asgiapp:app"])
    assert_asgi(s)
    base = requests.get(s.url + "/stats", timeout=10).json()
    sock = socket.create_connection(("127.0.0.1", s.port))
    sock.sendall(b"GET /forever HTTP/1.1\r\nHost: h\r\n\r\n")
    sock.recv(4096)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10:
        st = requests.get(s.url + "/stats", timeout=10).json()
        if st["cancelled"] == 1:
            break
        time.sleep(0.05)
    took = time.monotonic() - t0
    assert st["cancelled"] == 1, st
    # cancelled after the grace period, not before
    assert 0.8 < took < 4, took
    assert st["tasks"] <= base["tasks"], (base, st)
    assert "Error in ASGI application" not in s.log()


def test_connection_burst(server):
    """300 connections at once: the loop accepts them in batches and asks
    the event loop for an immediate turn in between."""
    s = server(ASGI + ["-w", "1", "asgiapp:app"])
    socks = []
    for _ in range(300):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", s.port))
        except BlockingIOError:
            pass
        socks.append(c)
    time.sleep(0.3)
    for c in socks:
        c.setblocking(True)
        c.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    ok = 0
    for c in socks:
        c.settimeout(10)
        ok += c.recv(4096).startswith(b"HTTP/1.1 200")
        c.close()
    assert ok == 300
    time.sleep(0.2)  # the worker's stderr reaches the log


def _rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_websocket_long_session_memory_flat(server):
    """A session waits in the event loop once per message: nothing of a
    finished wait may stay behind (30,000 waits would keep ~10 MB)."""
    s = server(ASGI + ["-w", "1", "asgiapp:app"])
    (worker,) = s.children()
    with ws_connect("ws://127.0.0.1:%d/ws" % s.port) as ws:
        for i in range(2000):
            ws.send("w%d" % i)
            assert ws.recv() == "w%d" % i
        before = _rss_kb(worker)
        for i in range(30000):
            ws.send("m")
            assert ws.recv() == "m"
        after = _rss_kb(worker)
    assert after - before < 3000, (before, after)


def _thread_names(pid):
    names = []
    for tid in os.listdir("/proc/%d/task" % pid):
        with contextlib.suppress(OSError), open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
            names.append(f.read().strip())
    return names


@pytest.mark.parametrize("writer", ["thread", "inline"])
def test_a_client_that_does_not_read_holds_up_no_one(server, writer):
    """A response's last message goes to the worker's writer thread
    (FERROCORN_ASGI_WRITER=inline writes it from the Python thread, as a
    measurement baseline): a client that does not read its 60 KB response
    blocks neither the writer nor the event loop, gets all of it once it
    reads, and its connection is then reused; a client that leaves
    without reading costs nothing."""
    s = server(ASGI + ["-w", "1", "asgiapp:app"], env={"FERROCORN_ASGI_WRITER": writer})
    assert_asgi(s)
    (worker,) = s.children()
    # a response that took the app a millisecond goes to the writer (one
    # that took it a few microseconds is written at once)
    r = requests.get(s.url + "/big?n=100&s=0.001", timeout=10)
    assert r.status_code == 200 and len(r.content) == 100
    names = _thread_names(worker)
    assert ("ferrocorn-write" in names) == (writer == "thread"), names
    n = 60000
    body = bytes(range(256)) * (n // 256) + b"x" * (n % 256)
    pipelined = 100  # 6 MB: more than the socket buffers hold (about 2.3 MB here)
    stuck = []
    for _ in range(3):
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        c.connect(("127.0.0.1", s.port))
        c.sendall(b"GET /big?n=%d&s=0.0001 HTTP/1.1\r\nHost: h\r\n\r\n" % n * pipelined)
        stuck.append(c)
    time.sleep(0.3)
    t0 = time.monotonic()
    with requests.Session() as sess:
        for i in range(50):
            r = sess.get(s.url + "/sleep?s=0", timeout=5)
            assert r.status_code == 200 and r.json()["slept"] is True
    assert time.monotonic() - t0 < 5
    # the first client reads now: every response whole, then one more request
    c = stuck[0]
    c.settimeout(10)
    f = c.makefile("rb")
    for _ in range(pipelined):
        status = f.readline()
        assert status.startswith(b"HTTP/1.1 200"), status
        length = None
        while True:
            line = f.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        assert length == n
        assert f.read(n) == body
    c.sendall(b"GET /sleep?s=0 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert f.readline().startswith(b"HTTP/1.1 200")
    f.close()
    # the others leave without reading
    for c in stuck:
        c.close()
    time.sleep(0.3)
    r = requests.get(s.url + "/stats", timeout=5)
    assert r.status_code == 200
    assert s.children() == [worker]
