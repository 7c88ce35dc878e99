"""Every kind of request through examples/validator_app.py (wsgiref.validate).

The validator raises AssertionError when the server breaks the WSGI
contract: that becomes a 500 and a traceback in the log. Each test checks
the status and the body, and at the end of the module the log must hold no
traceback, no AssertionError and no WSGIWarning.
"""
import hashlib
import json

import pytest

from conftest import EXAMPLES, IS_GUNICORN
from helpers import RawConn, chunked

BODY = b"".join(b"line %d of the request body\n" % i for i in range(3000)) + b"no newline at the end"
SHA = hashlib.sha256(BODY).hexdigest()
BAD = ("Traceback", "AssertionError", "WSGIWarning", "Error handling request")


# Every test runs against each worker kind (conftest's `kind` fixture; the
# server checks that its worker runs that kind).
pytestmark = pytest.mark.usefixtures("kind")


@pytest.fixture(scope="module")
def vsrv(module_server, kind):
    s = module_server(["-w", "1", "validator_app:app"], cwd=EXAMPLES)
    assert s.kind == kind or IS_GUNICORN
    yield s
    log = s.log()
    for bad in BAD:
        assert bad not in log, "validator complained:\n" + log


def check_log(s):
    log = s.log()
    for bad in BAD:
        assert bad not in log, "validator complained:\n" + log


def do(s, raw, method="GET"):
    with RawConn(s.port, timeout=20) as c:
        c.send(raw)
        r = c.read_response(method)
    check_log(s)
    return r


def test_get(vsrv):
    r = do(vsrv, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert r.status == 200 and r.body == b"validated hello\n"


def test_get_http10(vsrv):
    r = do(vsrv, b"GET / HTTP/1.0\r\n\r\n")
    assert r.status == 200 and r.body == b"validated hello\n"


def test_head(vsrv):
    r = do(vsrv, b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", method="HEAD")
    assert r.status == 200 and r.body == b""
    assert r.header("Content-Length") == "16"


@pytest.mark.parametrize("route", ["/read?n=1000", "/read?n=1", "/read?n=100000", "/readline", "/readlines", "/iter"])
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_post_body_reading(vsrv, route, framing):
    if route == "/read?n=1":
        body = BODY[:3000]
    else:
        body = BODY
    if framing == "length":
        raw = (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n"
               b"Connection: close\r\n\r\n" % (route.encode(), len(body))) + body
    else:
        raw = (b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n"
               b"Connection: close\r\n\r\n" % route.encode()) + chunked(body, sizes=[3, 50, 1000, 7])
    r = do(vsrv, raw)
    assert r.status == 200, r
    assert json.loads(r.body) == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def test_post_empty_body(vsrv):
    r = do(vsrv, b"POST /read HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    assert json.loads(r.body)["size"] == 0
    r = do(vsrv, b"POST /readlines HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert json.loads(r.body)["size"] == 0


def test_expect_100_continue(vsrv):
    with RawConn(vsrv.port, timeout=20) as c:
        c.send(b"POST /read HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nExpect: 100-continue\r\n"
               b"Connection: close\r\n\r\n" % len(BODY))
        assert c.read_response(allow_interim=True).status == 100
        c.send(BODY)
        r = c.read_response()
    assert json.loads(r.body) == {"size": len(BODY), "sha256": SHA}
    check_log(vsrv)


def test_expect_100_continue_chunked(vsrv):
    with RawConn(vsrv.port, timeout=20) as c:
        c.send(b"POST /iter HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n"
               b"Connection: close\r\n\r\n")
        assert c.read_response(allow_interim=True).status == 100
        c.send(chunked(BODY))
        r = c.read_response()
    assert json.loads(r.body) == {"size": len(BODY), "sha256": SHA}
    check_log(vsrv)


@pytest.mark.parametrize("code", [204, 304])
def test_no_body_status(vsrv, code):
    r = do(vsrv, b"GET /status/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % code)
    assert r.status == code and r.body == b""


@pytest.mark.parametrize("version", [b"1.0", b"1.1"])
def test_stream(vsrv, version):
    r = do(vsrv, b"GET /stream?n=7 HTTP/%s\r\nHost: x\r\nConnection: close\r\n\r\n" % version)
    assert r.status == 200
    assert r.body == b"".join(b"chunk %d\n" % i for i in range(7))
    assert r.chunked == (version == b"1.1")


def test_write_callable(vsrv):
    r = do(vsrv, b"GET /write HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert r.body == b"written by write()\nsecond write\nthen the iterable\n"


def test_file_wrapper(vsrv):
    r = do(vsrv, b"GET /file HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    expected = b"".join(b"line %05d of the validator file\n" % i for i in range(4000))
    assert r.body == expected


def test_file_wrapper_head(vsrv):
    r = do(vsrv, b"HEAD /file HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", method="HEAD")
    assert r.status == 200 and r.body == b""


def test_query(vsrv):
    r = do(vsrv, b"GET /query?a=1&b=%2F HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert json.loads(r.body) == {"query": "a=1&b=%2F"}


def test_options_and_delete(vsrv):
    r = do(vsrv, b"OPTIONS / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert r.status == 200
    r = do(vsrv, b"DELETE /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert r.status == 404


def test_validator_catches_errors(server):
    """Sanity check of the harness: a broken app is reported in the log."""
    s = server(["-w", "1", "validator_app:app"], cwd=EXAMPLES)
    # 'TRACE' is a known method; an unknown one raises a WSGIWarning (made an error)
    with RawConn(s.port) as c:
        c.send(b"PURGE / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        r = c.read_response()
    assert r.status == 500
    s.wait_log("WSGIWarning")
