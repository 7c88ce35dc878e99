"""The WSGI environ, compared with what gunicorn 27 builds (http/wsgi.py)."""
import json
import os
import socket
import struct
import tempfile

import pytest

from conftest import IS_GUNICORN
from helpers import RawConn


def environ(port, target="/environ", headers=b"", version=b"1.1", method=b"GET", body=b"", prefix=b"",
            unix_path=None, expect=200):
    host = b"" if b"host:" in headers.lower() or version == b"1.0" else b"Host: example.com:8080\r\n"
    with RawConn(port, unix_path=unix_path) as c:
        local_port = c.sock.getsockname()[1] if unix_path is None else None
        c.send(prefix + b"%s %s HTTP/%s\r\n%s%sConnection: close\r\n\r\n%s" % (
            method, target.encode() if isinstance(target, str) else target, version, host, headers, body))
        r = c.read_response()
    assert r.status == expect, r
    if expect != 200:
        return r
    env = json.loads(r.body)
    env["__client_port"] = local_port
    return env


@pytest.fixture(scope="module")
def srv(module_server):
    return module_server(["-w", "1", "wsgiapp:app"])


def test_basic_keys(srv):
    env = environ(srv.port, "/environ?a=1&b=%20x", headers=b"User-Agent: t/1\r\n")
    assert env["REQUEST_METHOD"] == "GET"
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/environ"
    assert env["QUERY_STRING"] == "a=1&b=%20x"
    assert env["RAW_URI"] == "/environ?a=1&b=%20x"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    # SERVER_NAME/PORT come from the listening socket, not from Host
    assert env["SERVER_NAME"] == "127.0.0.1"
    assert env["SERVER_PORT"] == str(srv.port)
    assert env["HTTP_HOST"] == "example.com:8080"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"] == str(env["__client_port"])
    assert env["HTTP_USER_AGENT"] == "t/1"
    assert env["HTTP_CONNECTION"] == "close"
    assert "CONTENT_TYPE" not in env
    assert "CONTENT_LENGTH" not in env


def test_wsgi_keys(srv):
    env = environ(srv.port)
    assert env["wsgi.version"] == [1, 0]
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.multithread"] is False
    assert env["wsgi.multiprocess"] is False
    assert env["wsgi.run_once"] is False
    assert env["wsgi.input_terminated"] is True
    for key in ("wsgi.input", "wsgi.errors", "wsgi.file_wrapper", "wsgi.early_hints"):
        assert key in env
    assert env["SERVER_SOFTWARE"].startswith("ferrocorn/" if not IS_GUNICORN else "gunicorn/")


def test_environ_value_types(srv):
    env = environ(srv.port, headers=b"X-A: 1\r\n")
    for k, v in env.items():
        if "." not in k and not k.startswith("__"):
            assert isinstance(v, str), (k, v)


@pytest.mark.ferrocorn_only
def test_server_software_ferrocorn(srv):
    env = environ(srv.port)
    assert env["SERVER_SOFTWARE"].startswith("ferrocorn/")


def test_multiprocess_and_multithread(server):
    env = environ(server(["-w", "2", "wsgiapp:app"]).port)
    assert env["wsgi.multiprocess"] is True
    assert env["wsgi.multithread"] is False


def test_http10_protocol(srv):
    env = environ(srv.port, version=b"1.0")
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert "HTTP_HOST" not in env
    assert env["SERVER_NAME"] == "127.0.0.1"


def test_path_info_percent_decoded(srv):
    env = environ(srv.port, "/environ/a%20b/%C3%A9/c%2Fd/%25?x=%C3%A9")
    # decoded bytes, presented as latin-1 characters (PEP 3333)
    assert env["PATH_INFO"] == "/environ/a b/\u00c3\u00a9/c/d/%"
    assert env["RAW_URI"] == "/environ/a%20b/%C3%A9/c%2Fd/%25?x=%C3%A9"
    assert env["QUERY_STRING"] == "x=%C3%A9"


def test_absolute_form_target(srv):
    env = environ(srv.port, "http://example.org/environ/abs?q=1")
    assert env["PATH_INFO"] == "/environ/abs"
    assert env["QUERY_STRING"] == "q=1"
    assert env["RAW_URI"] == "http://example.org/environ/abs?q=1"


def test_fragment_and_empty_query(srv):
    env = environ(srv.port, "/environ?#frag")
    assert env["PATH_INFO"] == "/environ"
    assert env["QUERY_STRING"] == ""
    assert env["RAW_URI"] == "/environ?#frag"


def test_content_type_and_length(srv):
    env = environ(srv.port, method=b"POST", headers=b"Content-Type: text/plain; charset=utf-8\r\n"
                  b"Content-Length: 5\r\n", body=b"hello")
    assert env["CONTENT_TYPE"] == "text/plain; charset=utf-8"
    assert env["CONTENT_LENGTH"] == "5"
    assert "HTTP_CONTENT_TYPE" not in env
    assert "HTTP_CONTENT_LENGTH" not in env


def test_repeated_headers_joined(srv):
    env = environ(srv.port, headers=b"X-Multi: a\r\nX-Other: o\r\nX-Multi: b\r\nx-multi:  c  \r\n"
                  b"Cookie: a=1\r\nCookie: b=2\r\n")
    assert env["HTTP_X_MULTI"] == "a,b,c"
    assert env["HTTP_X_OTHER"] == "o"
    assert env["HTTP_COOKIE"] == "a=1,b=2"


def test_header_value_whitespace_and_empty(srv):
    env = environ(srv.port, headers=b"X-Spaces: \t value with  inner \t \r\nX-Empty:\r\n")
    assert env["HTTP_X_SPACES"] == "value with  inner"
    assert env["HTTP_X_EMPTY"] == ""


def test_chunked_request_environ(srv):
    env = environ(srv.port, method=b"POST", headers=b"Transfer-Encoding: chunked\r\n", body=b"3\r\nabc\r\n0\r\n\r\n")
    assert "CONTENT_LENGTH" not in env
    assert env["HTTP_TRANSFER_ENCODING"] == "chunked"
    assert env["wsgi.input_terminated"] is True


def test_script_name_from_env(server):
    s = server(["-w", "1", "wsgiapp:app"], env={"SCRIPT_NAME": "/prefix"})
    env = environ(s.port, "/prefix/environ?x=1")
    assert env["SCRIPT_NAME"] == "/prefix"
    assert env["PATH_INFO"] == "/environ"
    assert env["RAW_URI"] == "/prefix/environ?x=1"
    # a path outside SCRIPT_NAME is a ConfigurationProblem: gunicorn answers
    # "500 Bad Request" (sic) with Connection: close
    r = environ(s.port, "/elsewhere", expect=500)
    assert r.reason == "Bad Request"
    assert b"does not start with SCRIPT_NAME" in r.body


def test_url_scheme_forwarded_trusted_by_default(srv):
    # forwarded_allow_ips defaults to 127.0.0.1,::1: the test client is trusted
    env = environ(srv.port, headers=b"X-Forwarded-Proto: https\r\n")
    assert env["wsgi.url_scheme"] == "https"
    env = environ(srv.port, headers=b"X-Forwarded-Ssl: on\r\n")
    assert env["wsgi.url_scheme"] == "https"
    env = environ(srv.port, headers=b"X-Forwarded-Protocol: ssl\r\n")
    assert env["wsgi.url_scheme"] == "https"
    env = environ(srv.port, headers=b"X-Forwarded-Proto: http\r\n")
    assert env["wsgi.url_scheme"] == "http"
    # X-Forwarded-For does not change REMOTE_ADDR
    env = environ(srv.port, headers=b"X-Forwarded-For: 203.0.113.9\r\n")
    assert env["REMOTE_ADDR"] == "127.0.0.1"


def test_contradictory_scheme_headers(srv):
    r = environ(srv.port, headers=b"X-Forwarded-Proto: https\r\nX-Forwarded-Ssl: off\r\n", expect=400)
    assert b"Contradictory scheme headers" in r.body


def test_url_scheme_untrusted_proxy(server):
    s = server(["-w", "1", "--forwarded-allow-ips", "203.0.113.1", "wsgiapp:app"])
    env = environ(s.port, headers=b"X-Forwarded-Proto: https\r\n")
    assert env["wsgi.url_scheme"] == "http"
    # untrusted: contradictory headers are ignored too
    env = environ(s.port, headers=b"X-Forwarded-Proto: https\r\nX-Forwarded-Ssl: off\r\n")
    assert env["wsgi.url_scheme"] == "http"


def test_url_scheme_trusted_network(server):
    s = server(["-w", "1", "--forwarded-allow-ips", "127.0.0.0/8", "wsgiapp:app"])
    assert environ(s.port, headers=b"X-Forwarded-Proto: https\r\n")["wsgi.url_scheme"] == "https"


def test_forwarded_allow_ips_from_env_var(server):
    s = server(["-w", "1", "wsgiapp:app"], env={"FORWARDED_ALLOW_IPS": "203.0.113.1"})
    assert environ(s.port, headers=b"X-Forwarded-Proto: https\r\n")["wsgi.url_scheme"] == "http"


def test_unix_socket_environ(server):
    d = tempfile.mkdtemp(prefix="fc-unix-")
    path = os.path.join(d, "s.sock")
    s = server(["-w", "1", "-b", "unix:" + path, "wsgiapp:app"], bind=False, ready=None)
    s.wait_ready("http", "/", addr=path)
    env = environ(None, unix_path=path)
    # SERVER_NAME/PORT come from the Host header on a unix socket
    assert env["SERVER_NAME"] == "example.com"
    assert env["SERVER_PORT"] == "8080"
    assert env["REMOTE_ADDR"] == ""
    assert "REMOTE_PORT" not in env
    env = environ(None, unix_path=path, headers=b"Host: bare\r\n")
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("bare", "80")


# -- PROXY protocol --------------------------------------------------------------

@pytest.fixture(scope="module")
def proxy_v1(module_server):
    return module_server(["-w", "1", "--proxy-protocol", "v1", "wsgiapp:app"])


@pytest.fixture(scope="module")
def proxy_v2(module_server):
    return module_server(["-w", "1", "--proxy-protocol", "v2", "wsgiapp:app"])


@pytest.fixture(scope="module")
def proxy_auto(module_server):
    # a bare --proxy-protocol means "auto"; it takes an optional value, so it
    # must not be followed by APP_MODULE (argparse nargs="?")
    return module_server(["-w", "1", "wsgiapp:app", "--proxy-protocol"])


def v2_header(src, dst, sport, dport, command=1):
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    addrs = socket.inet_pton(fam, src) + socket.inet_pton(fam, dst) + struct.pack(">HH", sport, dport)
    fam_proto = (0x21 if fam == socket.AF_INET6 else 0x11)
    return (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20 | command, fam_proto]) +
            struct.pack(">H", len(addrs)) + addrs)


def test_proxy_v1_tcp4(proxy_v1):
    env = environ(proxy_v1.port, prefix=b"PROXY TCP4 203.0.113.7 198.51.100.2 56324 443\r\n")
    assert env["PROXY_PROTOCOL"] == "TCP4"
    assert env["REMOTE_ADDR"] == "203.0.113.7"
    assert env["REMOTE_PORT"] == "56324"
    assert env["PROXY_ADDR"] == "198.51.100.2"
    assert env["PROXY_PORT"] == "443"


def test_proxy_v1_tcp6(proxy_v1):
    env = environ(proxy_v1.port, prefix=b"PROXY TCP6 2001:db8::1 2001:db8::2 1234 80\r\n")
    assert env["PROXY_PROTOCOL"] == "TCP6"
    assert env["REMOTE_ADDR"] == "2001:db8::1"
    assert env["REMOTE_PORT"] == "1234"
    assert env["PROXY_ADDR"] == "2001:db8::2"
    assert env["PROXY_PORT"] == "80"


def test_proxy_v1_without_header_is_plain_http(proxy_v1):
    env = environ(proxy_v1.port)
    assert "PROXY_PROTOCOL" not in env
    assert env["REMOTE_ADDR"] == "127.0.0.1"


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 203.0.113.7 198.51.100.2 56324\r\n",
    b"PROXY UDP4 203.0.113.7 198.51.100.2 1 2\r\n",
    b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
    b"PROXY TCP4 203.0.113.7 198.51.100.2 1 70000\r\n",
    b"PROXY TCP4 203.0.113.7 198.51.100.2 x 2\r\n",
])
def test_proxy_v1_invalid(proxy_v1, line):
    r = environ(proxy_v1.port, prefix=line, expect=400)
    assert r.header("Connection") == "close"


def test_proxy_v2_tcp4(proxy_v2):
    env = environ(proxy_v2.port, prefix=v2_header("203.0.113.7", "198.51.100.2", 40000, 8443))
    assert env["PROXY_PROTOCOL"] == "TCP4"
    assert env["REMOTE_ADDR"] == "203.0.113.7"
    assert env["REMOTE_PORT"] == "40000"
    assert env["PROXY_ADDR"] == "198.51.100.2"
    assert env["PROXY_PORT"] == "8443"


def test_proxy_v2_tcp6(proxy_v2):
    env = environ(proxy_v2.port, prefix=v2_header("2001:db8::7", "2001:db8::8", 1, 2))
    assert env["PROXY_PROTOCOL"] == "TCP6"
    assert env["REMOTE_ADDR"] == "2001:db8::7"
    assert env["PROXY_ADDR"] == "2001:db8::8"
    assert (env["REMOTE_PORT"], env["PROXY_PORT"]) == ("1", "2")


def test_proxy_v2_local(proxy_v2):
    hdr = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20, 0x00]) + struct.pack(">H", 0)
    env = environ(proxy_v2.port, prefix=hdr)
    assert env["PROXY_PROTOCOL"] == "LOCAL"
    # gunicorn 27: proxy_environ() sets REMOTE_ADDR None (JSON null) and
    # REMOTE_PORT "None"; keeping the real peer address is accepted too.
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) in ((None, "None"), ("127.0.0.1", str(env["__client_port"])))


def test_proxy_auto_detects_both(proxy_auto):
    env = environ(proxy_auto.port, prefix=b"PROXY TCP4 203.0.113.7 198.51.100.2 1 2\r\n")
    assert env["REMOTE_ADDR"] == "203.0.113.7"
    env = environ(proxy_auto.port, prefix=v2_header("203.0.113.8", "198.51.100.2", 1, 2))
    assert env["REMOTE_ADDR"] == "203.0.113.8"
    env = environ(proxy_auto.port)
    assert env["REMOTE_ADDR"] == "127.0.0.1"


def test_proxy_v2_mode_rejects_v1(proxy_v2):
    environ(proxy_v2.port, prefix=b"PROXY TCP4 203.0.113.7 198.51.100.2 1 2\r\n", expect=400)


def test_proxy_from_untrusted_peer(server):
    s = server(["-w", "1", "--proxy-protocol", "v1", "--proxy-allow-from", "203.0.113.1", "wsgiapp:app"])
    r = environ(s.port, prefix=b"PROXY TCP4 203.0.113.7 198.51.100.2 1 2\r\n", expect=403)
    assert r.reason == "Forbidden"


def test_proxy_protocol_off_rejects_proxy_line(srv):
    environ(srv.port, prefix=b"PROXY TCP4 203.0.113.7 198.51.100.2 1 2\r\n", expect=400)
