"""HTTP/1.0 and HTTP/1.1 framing and connection handling."""
import hashlib
import json
import socket

import pytest

from conftest import IS_GUNICORN
from helpers import RawConn, chunked, get
from test_workers import assert_kind

# Every test runs against each worker kind (conftest's `kind` fixture).
pytestmark = pytest.mark.usefixtures("kind")


def keeps_connections(kind):
    """gunicorn's sync worker closes every connection after one response;
    ferrocorn's sync worker keeps idle connections parked, as every other
    kind does in both."""
    if IS_GUNICORN and kind == "sync":
        pytest.skip("gunicorn's sync worker does not keep connections open")


@pytest.fixture(scope="module")
def srv(module_server, kind):
    s = module_server(["-w", "1", "wsgiapp:app"])
    assert_kind(s, kind)
    return s


@pytest.fixture(scope="module")
def any_worker(srv):
    return srv


def test_http10_basic(srv):
    with RawConn(srv.port) as c:
        c.send(b"GET / HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert r.version == "HTTP/1.0"
        assert r.status == 200
        assert r.body == b"Hello, World!"
        assert r.header("Content-Length") == "13"
        assert r.header("Connection").lower() == "close"
        assert r.header("Date")
        assert c.is_closed()


def test_http11_basic(srv):
    with RawConn(srv.port) as c:
        c.send(get("/"))
        r = c.read_response()
        assert r.version == "HTTP/1.1"
        assert (r.status, r.reason) == (200, "OK")
        assert r.body == b"Hello, World!"
        assert r.header("Connection").lower() == "close"
        assert c.is_closed()


def test_server_header(srv):
    with RawConn(srv.port) as c:
        c.send(get("/"))
        r = c.read_response()
    if IS_GUNICORN:
        assert r.header("Server") == "gunicorn"
    else:
        assert r.header("Server") is not None


def test_chunked_request_body(any_worker):
    body = bytes(range(256)) * 300
    with RawConn(any_worker.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
               b"Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n")
        c.send(chunked(body, sizes=[1, 10, 1000, 70000]))
        r = c.read_response()
    assert r.status == 200
    data = json.loads(r.body)
    assert data["size"] == len(body)
    assert data["sha256"] == hashlib.sha256(body).hexdigest()
    assert data["content_length"] is None
    assert data["headers"]["HTTP_TRANSFER_ENCODING"] == "chunked"


def test_chunked_request_with_extensions_and_trailers(srv):
    with RawConn(srv.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
               b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n")
        r = c.read_response()
    assert r.status == 200
    assert json.loads(r.body)["body"] == "hello world"


def test_content_length_body(srv):
    body = b"a=1&b=2"
    with RawConn(srv.port) as c:
        c.send(b"POST /echo?q=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n"
               b"Content-Type: application/x-www-form-urlencoded\r\nConnection: close\r\n\r\n" + body)
        r = c.read_response()
    data = json.loads(r.body)
    assert data["body"] == "a=1&b=2"
    assert data["content_length"] == "7"
    assert data["content_type"] == "application/x-www-form-urlencoded"
    assert data["query"] == "q=1"


def test_pipelining(server, kind):
    keeps_connections(kind)
    s = server(["-w", "1"] + ["wsgiapp:app"])
    with RawConn(s.port) as c:
        c.send(b"GET /echo?n=1 HTTP/1.1\r\nHost: x\r\n\r\n"
               b"POST /echo?n=2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
               b"POST /echo?n=3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
               b"GET /echo?n=4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = []
        for _ in range(4):
            r = c.read_response()
            assert r.status == 200
            d = json.loads(r.body)
            got.append((d["query"], d["body"]))
        assert got == [("n=1", ""), ("n=2", "hello"), ("n=3", "abc"), ("n=4", "")]
        assert c.is_closed()


def test_expect_100_continue(any_worker):
    body = b"x" * 5000
    with RawConn(any_worker.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
               b"Expect: 100-continue\r\nConnection: close\r\n\r\n" % len(body))
        interim = c.read_response(allow_interim=True)
        assert interim.status == 100
        assert interim.raw_head.startswith(b"HTTP/1.1 100 Continue\r\n")
        c.send(body)
        r = c.read_response()
        assert r.status == 200
        assert json.loads(r.body)["size"] == len(body)


def test_expect_100_continue_http10_ignored(srv):
    with RawConn(srv.port) as c:
        c.send(b"POST /echo HTTP/1.0\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc")
        data = c.read_until_close()
    assert data.startswith(b"HTTP/1.0 200 "), data
    assert b"100 Continue" not in data


def test_expect_case_insensitive(srv):
    with RawConn(srv.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
               b"Expect: 100-Continue\r\nConnection: close\r\n\r\n")
        interim = c.read_response(allow_interim=True)
        assert interim.status == 100
        c.send(b"abc")
        assert json.loads(c.read_response().body)["body"] == "abc"


@pytest.mark.parametrize("path", ["/", "/stream?n=3"])
def test_head_has_no_body(srv, path):
    with RawConn(srv.port) as c:
        c.send(b"HEAD %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
        head = c.read_head()
        rest = c.read_until_close()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert rest == b""
    assert b"transfer-encoding" not in head.lower()
    if path == "/":
        assert b"Content-Length: 13\r\n" in head


@pytest.mark.parametrize("code", [204, 304])
@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_no_body_statuses(srv, code, version):
    with RawConn(srv.port) as c:
        c.send(b"GET /status/%d HTTP/%s\r\nHost: x\r\nConnection: close\r\n\r\n" % (code, version.encode()))
        head = c.read_head()
        rest = c.read_until_close()
    assert head.startswith(b"HTTP/%s %d " % (version.encode(), code))
    assert rest == b""
    assert b"transfer-encoding" not in head.lower()
    if code == 204:
        assert b"content-length" not in head.lower()


def test_chunked_response_http11(srv):
    with RawConn(srv.port) as c:
        c.send(get("/stream?n=4&size=1000"))
        r = c.read_response()
        assert r.status == 200
        assert r.chunked
        assert r.header("Content-Length") is None
        assert r.body == b"a" * 1000 + b"b" * 1000 + b"c" * 1000 + b"d" * 1000
        assert c.is_closed()


def test_close_delimited_response_http10(srv):
    with RawConn(srv.port) as c:
        c.send(b"GET /stream?n=3&size=5 HTTP/1.0\r\n\r\n")
        head = c.read_head()
        body = c.read_until_close()
    assert head.startswith(b"HTTP/1.0 200 ")
    assert b"transfer-encoding" not in head.lower()
    assert b"content-length" not in head.lower()
    assert body == b"aaaaabbbbbccccc"


def test_client_connection_close(any_worker):
    with RawConn(any_worker.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        r = c.read_response()
        assert r.header("Connection").lower() == "close"
        assert c.is_closed()


def test_request_split_in_pieces(srv):
    """A request head that arrives a few bytes at a time."""
    req = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody"
    with RawConn(srv.port) as c:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(req), 7):
            c.send(req[i:i + 7])
        r = c.read_response()
    assert json.loads(r.body)["body"] == "body"


def test_keepalive_reuse(server, kind):
    keeps_connections(kind)
    s = server(["-w", "1", "--keep-alive", "5"] + ["wsgiapp:app"])
    with RawConn(s.port) as c:
        pids = set()
        for i in range(3):
            c.send(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
            r = c.read_response()
            assert r.status == 200
            assert r.header("Connection", "keep-alive").lower() == "keep-alive"
            pids.add(r.body)
        assert len(pids) == 1
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        assert json.loads(c.read_response().body)["body"] == "hi"
        c.send(get("/"))
        assert c.read_response().body == b"Hello, World!"
        assert c.is_closed()


def test_keepalive_http10(server, kind):
    keeps_connections(kind)
    s = server(["-w", "1", "--keep-alive", "5"] + ["wsgiapp:app"])
    with RawConn(s.port) as c:
        c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r = c.read_response()
        assert r.version == "HTTP/1.0"
        assert r.header("Connection").lower() == "keep-alive"
        assert r.body == b"Hello, World!"
        c.send(b"GET / HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert r.body == b"Hello, World!"
        assert c.is_closed()


def test_unread_body_does_not_desync(server, kind):
    keeps_connections(kind)
    """The app does not read the body: the next request on the connection must
    still be parsed from the right place."""
    s = server(["-w", "1", "--keep-alive", "5"] + ["wsgiapp:app"])
    with RawConn(s.port) as c:
        c.send(b"POST /noread HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789")
        r = c.read_response()
        assert r.body == b"did not read the body"
        c.send(b"POST /noread HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n")
        r = c.read_response()
        assert r.body == b"did not read the body"
        c.send(get("/"))
        assert c.read_response().body == b"Hello, World!"


def test_keepalive_zero_closes(server):
    s = server(["-w", "1", "--keep-alive", "0"] + ["wsgiapp:app"])
    with RawConn(s.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response()
        assert r.body == b"Hello, World!"
        assert r.header("Connection").lower() == "close"
        assert c.is_closed()


@pytest.mark.ferrocorn_only
def test_keepalive_idle_timeout(server):
    s = server(["-w", "1", "--keep-alive", "1", "wsgiapp:app"])
    with RawConn(s.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.read_response().status == 200
        assert c.is_closed(timeout=4)


def test_large_response_body(srv):
    with RawConn(srv.port) as c:
        c.send(get("/stream?n=20&size=100000"))
        r = c.read_response()
    assert len(r.body) == 2000000
