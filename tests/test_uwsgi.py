"""--protocol uwsgi (nginx's uwsgi_pass in front) and --uwsgi-allow-from:
a test client builds uwsgi packets by hand (4-byte header: modifier1,
datasize u16 LE, modifier2; the vars, each a u16 LE length and bytes; the
body) and reads the plain HTTP response the server writes back, one request
per connection. The same tests run against gunicorn 27 (TEST_SERVER=gunicorn);
where the two differ on purpose it is said."""
import json
import os
import shutil
import socket
import struct
import subprocess
import time

import pytest

from conftest import IS_GUNICORN, free_port
from helpers import RawConn

pytestmark = pytest.mark.usefixtures("kind")


def packet(vars_, body=b"", modifier1=0, modifier2=0):
    data = b""
    for k, v in vars_:
        k = k.encode("latin-1") if isinstance(k, str) else k
        v = v.encode("latin-1") if isinstance(v, str) else v
        data += struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v
    return struct.pack("<BHB", modifier1, len(data), modifier2) + data + body


def nginx_vars(method="GET", path="/environ", query="", body=b"", extra=()):
    """What nginx's stock uwsgi_params sends, plus the request's headers."""
    uri = path + ("?" + query if query else "")
    return [
        ("QUERY_STRING", query),
        ("REQUEST_METHOD", method),
        ("CONTENT_TYPE", "text/plain" if body else ""),
        ("CONTENT_LENGTH", str(len(body)) if body else ""),
        ("REQUEST_URI", uri),
        ("PATH_INFO", path),
        ("DOCUMENT_ROOT", "/srv"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_SCHEME", "http"),
        ("REMOTE_ADDR", "203.0.113.7"),
        ("REMOTE_PORT", "51234"),
        ("SERVER_PORT", "80"),
        ("SERVER_NAME", "example.com"),
        ("HTTP_HOST", "example.com"),
        ("HTTP_USER_AGENT", "curl/8"),
    ] + list(extra)


class Reply:
    def __init__(self, raw):
        self.raw = raw
        head, sep, self.body = raw.partition(b"\r\n\r\n")
        assert sep, raw
        lines = head.decode("latin-1").split("\r\n")
        self.status_line = lines[0]
        self.status = int(lines[0].split(" ")[1])
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()

    def json(self):
        return json.loads(self.body)


def exchange(port, data, host="127.0.0.1"):
    """Sends `data` on a new connection and reads the reply to its close
    (one request per connection)."""
    with RawConn(port, host=host) as c:
        c.send(data)
        raw = c.read_until_close()
    return Reply(raw)


@pytest.fixture(scope="module")
def uwsgi_server(module_server, kind):
    return module_server(["-w", "1", "--protocol", "uwsgi", "wsgiapp:app"], ready="tcp")


def test_get_with_query_and_headers(uwsgi_server):
    r = exchange(uwsgi_server.port, packet(nginx_vars(
        query="a=1&b=%20x", extra=[("HTTP_X_CUSTOM_HEADER", "v1"), ("HTTP_ACCEPT", "*/*")])))
    assert r.status == 200, r.raw
    assert r.status_line.startswith("HTTP/1.")
    # Never chunked: nginx passes a uwsgi response body through as is.
    assert "transfer-encoding" not in r.headers
    env = r.json()
    assert env["REQUEST_METHOD"] == "GET"
    assert env["PATH_INFO"] == "/environ"
    assert env["QUERY_STRING"] == "a=1&b=%20x"
    assert env["HTTP_HOST"] == "example.com"
    assert env["HTTP_X_CUSTOM_HEADER"] == "v1"
    assert env["HTTP_ACCEPT"] == "*/*"
    assert env["HTTP_USER_AGENT"] == "curl/8"
    assert env["wsgi.url_scheme"] == "http"
    # As gunicorn: REMOTE_ADDR is the front end's (the socket peer), and
    # the other CGI vars do not reach the environ.
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert "DOCUMENT_ROOT" not in env
    assert env["SERVER_PORT"] == str(uwsgi_server.port)


def test_post_body_via_content_length(uwsgi_server):
    body = b"hello uwsgi body \x00\xff" * 100
    r = exchange(uwsgi_server.port, packet(nginx_vars("POST", "/echo", body=body), body))
    assert r.status == 200, r.raw
    out = r.json()
    assert out["method"] == "POST"
    assert out["content_length"] == str(len(body))
    assert out["content_type"] == "text/plain"
    assert out["body"].encode("latin-1") == body


def test_body_in_pieces(uwsgi_server):
    body = b"x" * 70000
    data = packet(nginx_vars("POST", "/echo", body=body), body)
    with RawConn(uwsgi_server.port) as c:
        # The header alone, then the vars byte by byte for a while, then
        # the rest: the server waits for each part.
        c.send(data[:3])
        c.send(data[3:20])
        c.send(data[20:])
        r = Reply(c.read_until_close())
    assert r.status == 200, r.raw[:300]
    assert r.json()["size"] == len(body)


def test_https_var_sets_url_scheme(uwsgi_server):
    r = exchange(uwsgi_server.port, packet(nginx_vars(extra=[("HTTPS", "on")])))
    assert r.json()["wsgi.url_scheme"] == "https"


def test_decoded_path_info(uwsgi_server):
    # nginx sends PATH_INFO decoded ($document_uri).
    r = exchange(uwsgi_server.port, packet(nginx_vars(path="/environ/a b")))
    assert r.status == 200, r.raw
    assert r.json()["PATH_INFO"] == "/environ/a b"


def test_streamed_response_is_not_chunked(uwsgi_server):
    r = exchange(uwsgi_server.port, packet(nginx_vars(path="/stream", query="n=3")))
    assert r.status == 200, r.raw
    assert "transfer-encoding" not in r.headers
    assert b"\r\n0\r\n" not in r.body


def served_after(port):
    r = exchange(port, packet(nginx_vars(path="/")))
    assert r.status == 200 and r.body == b"Hello, World!", r.raw


# gunicorn's WSGI workers do not know the uwsgi errors (handle_error treats
# them as application errors): every refusal is a 500 there. ferrocorn
# answers with the status gunicorn's uwsgi errors carry (errors.py).
def expected(status):
    return 500 if IS_GUNICORN else status


@pytest.mark.parametrize("data,status", [
    (packet([], modifier1=5), 501),
    # A key length past the end of the vars block.
    (struct.pack("<BHB", 0, 3, 0) + b"\x05\x00a", 400),
    # A value length past the end of the vars block.
    (struct.pack("<BHB", 0, 6, 0) + b"\x01\x00a\xff\xffb", 400),
    # A lone byte of a length.
    (struct.pack("<BHB", 0, 1, 0) + b"\x01", 400),
], ids=["modifier", "key-overflow", "value-overflow", "truncated-size"])
def test_malformed_packets_answered(uwsgi_server, data, status):
    r = exchange(uwsgi_server.port, data)
    assert r.status == expected(status), r.raw
    served_after(uwsgi_server.port)


def test_truncated_packet_then_close(uwsgi_server):
    # The client goes away mid-vars: nothing is answered, the worker goes on.
    data = packet(nginx_vars())
    with RawConn(uwsgi_server.port) as c:
        c.send(data[: len(data) // 2])
        c.sock.shutdown(socket.SHUT_WR)
        c.read_until_close()
    served_after(uwsgi_server.port)


def test_http_client_on_uwsgi_port(uwsgi_server):
    # "GET " reads as modifier1 71.
    r = exchange(uwsgi_server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.status == expected(501), r.raw
    served_after(uwsgi_server.port)


@pytest.mark.skipif(IS_GUNICORN, reason="gunicorn builds the head with the injected line")
def test_header_injection_refused(uwsgi_server):
    r = exchange(uwsgi_server.port, packet(nginx_vars(extra=[("HTTP_X_A", "1\r\nX-Injected: 1")])))
    assert r.status == 400, r.raw
    served_after(uwsgi_server.port)


def test_peer_not_allowed_is_refused(server):
    s = server(["-w", "1", "--protocol", "uwsgi", "--uwsgi-allow-from", "10.0.0.1",
                "wsgiapp:app"], ready="tcp")
    r = exchange(s.port, packet(nginx_vars()))
    assert r.status == expected(403), r.raw
    if not IS_GUNICORN:
        assert "uWSGI request from '127.0.0.1' not allowed" in s.wait_log("not allowed")


def test_allow_all(server):
    s = server(["-w", "1", "--protocol", "uwsgi", "--uwsgi-allow-from", "*",
                "wsgiapp:app"], ready="tcp")
    served_after(s.port)


def test_unix_socket_always_allowed(server, tmp_path):
    path = str(tmp_path / "u.sock")
    s = server(["-w", "1", "-b", "unix:" + path, "--protocol", "uwsgi",
                "--uwsgi-allow-from", "10.0.0.1", "wsgiapp:app"], bind=False, ready=None)
    deadline = time.monotonic() + 20
    while True:
        try:
            with RawConn(unix_path=path) as c:
                c.send(packet(nginx_vars(path="/")))
                r = Reply(c.read_until_close())
            break
        except (OSError, AssertionError):
            if time.monotonic() > deadline:
                raise AssertionError(s.log())
            time.sleep(0.1)
    assert r.status == 200, r.raw


def test_limit_request_field_size_applies(server):
    s = server(["-w", "1", "--protocol", "uwsgi", "--limit-request-field_size", "100",
                "wsgiapp:app"], ready="tcp")
    r = exchange(s.port, packet(nginx_vars(extra=[("HTTP_X_BIG", "v" * 500)])))
    if IS_GUNICORN:
        # gunicorn's uwsgi parser applies no HTTP limits.
        assert r.status == 200, r.raw
    else:
        assert r.status == 431, r.raw
    served_after(s.port)


@pytest.mark.skipif(IS_GUNICORN, reason="gunicorn takes any string and serves HTTP")
def test_unknown_protocol_refused_at_start(run_cmd):
    res = run_cmd(["-b", "127.0.0.1:%d" % free_port(), "--protocol", "uwgsi", "wsgiapp:app"],
                  timeout=30)
    assert res.returncode != 0, res
    assert "protocol" in res.stderr and "uwgsi" in res.stderr, res


# The asgi and tornado kinds share the connection layer, so they serve uwsgi
# too. (gunicorn's own asgi worker has its own uwsgi path; its tornado
# worker serves WSGI only through gunicorn's sync path: not compared here.)
@pytest.mark.skipif(IS_GUNICORN, reason="ferrocorn's asgi worker")
def test_asgi_kind(server, kind):
    if kind != "sync":
        pytest.skip("the asgi kind once is enough")
    s = server(["-w", "1", "-k", "asgi", "--protocol", "uwsgi", "asgiapp:app"], ready="tcp")
    r = exchange(s.port, packet(nginx_vars(path="/scope", query="a=1",
                                           extra=[("HTTPS", "on"), ("HTTP_X_A", "b")])))
    assert r.status == 200, r.raw
    scope = r.json()
    assert scope["path"] == "/scope"
    assert scope["query_string"] == "a=1"
    assert scope["scheme"] == "https"
    assert ["x-a", "b"] in scope["headers"]
    body = b"z" * 5000
    r = exchange(s.port, packet(nginx_vars("POST", "/echo", body=body), body))
    assert r.status == 200 and r.body == body, r.raw[:300]
    # A streamed response is not chunked: it ends with the connection.
    r = exchange(s.port, packet(nginx_vars(path="/stream", query="n=3")))
    assert "transfer-encoding" not in r.headers, r.raw
    assert r.body == b"chunk0\nchunk1\nchunk2\n", r.raw


@pytest.mark.skipif(IS_GUNICORN, reason="ferrocorn's tornado worker")
def test_tornado_kind(server, kind):
    if kind != "sync":
        pytest.skip("the tornado kind once is enough")
    s = server(["-w", "1", "-k", "tornado", "--protocol", "uwsgi", "tornadoapp:app"],
               ready="tcp")
    r = exchange(s.port, packet(nginx_vars(path="/")))
    assert r.status == 200 and r.body == b"Hello from Tornado", r.raw
    r = exchange(s.port, packet(nginx_vars("POST", "/echo", query="a=q", body=b"abc"), b"abc"))
    assert r.status == 200 and r.body == b"abc" and r.headers["x-arg"] == "q", r.raw
    r = exchange(s.port, packet(nginx_vars(path="/stream", query="n=2")))
    assert "transfer-encoding" not in r.headers, r.raw
    assert r.body == b"part 0\npart 1\n", r.raw


def _nginx():
    return shutil.which("nginx") or (os.path.exists("/usr/sbin/nginx") and "/usr/sbin/nginx")


def test_behind_nginx_uwsgi_pass(uwsgi_server, tmp_path):
    """The real front end: nginx with the stock uwsgi_params, uwsgi_pass to
    the server; a plain HTTP client talks to nginx."""
    assert _nginx(), "nginx is missing: scripts/setup.sh installs it (nginx-light)"
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text("""
daemon off;
master_process off;
pid %(d)s/nginx.pid;
error_log %(d)s/error.log info;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path %(d)s/body;
    proxy_temp_path %(d)s/proxy;
    fastcgi_temp_path %(d)s/fastcgi;
    uwsgi_temp_path %(d)s/uwsgi;
    scgi_temp_path %(d)s/scgi;
    server {
        listen 127.0.0.1:%(port)d;
        location / {
            include /etc/nginx/uwsgi_params;
            uwsgi_pass 127.0.0.1:%(up)d;
        }
    }
}
""" % {"d": tmp_path, "port": port, "up": uwsgi_server.port})
    proc = subprocess.Popen([_nginx(), "-c", str(conf), "-p", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError("nginx did not start: %r" % proc.stderr.read())
                time.sleep(0.05)
        with RawConn(port) as c:
            c.send(b"GET /environ/x%20y?a=1&b=2 HTTP/1.1\r\nHost: front.example\r\n"
                   b"X-Custom: v\r\nConnection: close\r\n\r\n")
            r = c.read_response()
        assert r.status == 200, r
        env = json.loads(r.body)
        assert env["PATH_INFO"] == "/environ/x y"
        assert env["QUERY_STRING"] == "a=1&b=2"
        assert env["HTTP_HOST"] == "front.example"
        assert env["HTTP_X_CUSTOM"] == "v"
        body = b"p" * 100000
        with RawConn(port) as c:
            c.send(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Type: application/x-test\r\n"
                   b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
            r = c.read_response()
        assert r.status == 200, r
        out = json.loads(r.body)
        assert out["size"] == len(body) and out["content_type"] == "application/x-test"
        # A streamed (close-delimited) response reaches the client whole,
        # without chunk markers inside the body.
        with RawConn(port) as c:
            c.send(b"GET /stream?n=3 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            r = c.read_response()
        assert r.status == 200 and r.body == b"aaaaaaaaaabbbbbbbbbbcccccccccc", r
    finally:
        proc.terminate()
        proc.wait(10)
