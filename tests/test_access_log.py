"""Access log lines, default and custom formats (gunicorn's glogging atoms)."""
import os
import re
import tempfile

import json

import pytest
import requests

from helpers import RawConn, wait_until

DATE = r"\[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\]"


def access_lines(s, needle, n=1, timeout=10):
    s.wait_log(needle, timeout)
    return [line for line in s.stdout().splitlines() if needle in line]


def test_default_format(server):
    s = server(["--access-logfile", "-", "wsgiapp:app"])
    requests.get(s.url + "/?default=1", headers={"User-Agent": "agent/1.0", "Referer": "http://ref.example/"},
                 timeout=10)
    [line] = access_lines(s, "default=1")
    assert re.fullmatch(r'127\.0\.0\.1 - - %s "GET /\?default=1 HTTP/1\.1" 200 13 '
                        r'"http://ref\.example/" "agent/1\.0"' % DATE, line), line


def test_default_format_missing_headers_and_404(server):
    s = server(["--access-logfile", "-", "wsgiapp:app"])
    with RawConn(s.port) as c:
        c.send(b"GET /nothing-here HTTP/1.0\r\n\r\n")
        c.read_response()
    [line] = access_lines(s, "/nothing-here")
    assert re.fullmatch(r'127\.0\.0\.1 - - %s "GET /nothing-here HTTP/1\.0" 404 9 "-" "-"' % DATE, line), line


def test_no_access_log_by_default(server):
    s = server(["wsgiapp:app"])
    requests.get(s.url + "/?quiet=1", timeout=10)
    requests.get(s.url + "/?quiet=2", timeout=10)
    assert "quiet=1" not in s.log()


def test_custom_format_atoms(server):
    fmt = ("h=%(h)s|r=%(r)s|s=%(s)s|b=%(b)s|B=%(B)s|m=%(m)s|U=%(U)s|q=%(q)s|H=%(H)s|"
           "in=%({x-req}i)s|out=%({x-resp}o)s|ct=%({content-type}o)s|missing=%({x-none}i)s|"
           "T=%(T)s|D=%(D)s|M=%(M)s|L=%(L)s|u=%(u)s|l=%(l)s|p=%(p)s|f=%(f)s|a=%(a)s|e=%({custom_var}e)s")
    s = server(["--access-logfile", "-", "--access-logformat", fmt, "wsgiapp:app"])
    requests.get(s.url + "/headers?x=%20y", headers={"X-Req": "req-value", "User-Agent": "ua"},
                 auth=("alice", "secret"), timeout=10)
    [line] = access_lines(s, "headers?x=")
    fields = dict(part.split("=", 1) for part in line.split("|"))
    assert fields["h"] == "127.0.0.1"
    assert fields["r"] == "GET /headers?x=%20y HTTP/1.1"
    assert fields["s"] == "200"
    assert fields["b"] == "12"
    assert fields["B"] == "12"
    assert fields["m"] == "GET"
    assert fields["U"] == "/headers"
    assert fields["q"] == "x=%20y"
    assert fields["H"] == "HTTP/1.1"
    assert fields["in"] == "req-value"
    assert fields["out"] == "resp-value"
    assert fields["ct"] == "text/plain"
    assert fields["missing"] == "-"
    assert fields["T"] == "0"
    assert re.fullmatch(r"\d+", fields["D"]) and int(fields["D"]) < 5_000_000
    assert re.fullmatch(r"\d+", fields["M"]) and int(fields["M"]) < 5_000
    assert re.fullmatch(r"\d+\.\d{6}", fields["L"])
    assert fields["u"] == "alice"
    assert fields["l"] == "-"
    assert re.fullmatch(r"<\d+>", fields["p"])
    assert fields["f"] == "-"
    assert fields["a"] == "ua"
    assert fields["e"] == "-"


def test_timing_atoms_slow_request(server):
    s = server(["--access-logfile", "-", "--access-logformat", "%(U)s T=%(T)s D=%(D)s M=%(M)s", "wsgiapp:app"])
    requests.get(s.url + "/sleep?s=1.1", timeout=10)
    [line] = access_lines(s, "/sleep ")
    m = re.fullmatch(r"/sleep T=(\d+) D=(\d+) M=(\d+)", line)
    assert m, line
    assert m.group(1) == "1"
    assert 1_100_000 <= int(m.group(2)) < 5_000_000
    assert 1100 <= int(m.group(3)) < 5000


def test_status_and_bytes_for_stream_head_and_error(server):
    s = server(["--access-logfile", "-", "--access-logformat", "%(r)s %(s)s %(b)s", "wsgiapp:app"])
    requests.get(s.url + "/stream?n=3&size=10", timeout=10)
    requests.head(s.url + "/", timeout=10)
    requests.get(s.url + "/status/204", timeout=10)
    requests.get(s.url + "/error", timeout=10)
    assert access_lines(s, "GET /stream") == ["GET /stream?n=3&size=10 HTTP/1.1 200 30"]
    assert access_lines(s, "HEAD / ") == ["HEAD / HTTP/1.1 200 0"]
    assert access_lines(s, "GET /status/204") == ["GET /status/204 HTTP/1.1 204 0"]
    # the app raised before start_response: gunicorn logs no access line for it
    # (the 500 is written by handle_error); the traceback goes to the error log
    s.wait_log("intentional error from /error")


def test_access_log_to_file(server):
    d = tempfile.mkdtemp(prefix="fc-log-")
    path = os.path.join(d, "access.log")
    s = server(["--access-logfile", path, "wsgiapp:app"])
    requests.get(s.url + "/?tofile=1", timeout=10)

    def content():
        try:
            with open(path) as f:
                return f.read()
        except FileNotFoundError:
            return ""
    import time
    deadline = time.monotonic() + 10
    while "tofile=1" not in content() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert '"GET /?tofile=1 HTTP/1.1" 200 13' in content()
    assert "tofile=1" not in s.stdout()


def test_accesslog_from_config_file(server):
    s = server(["wsgiapp:app"], config_text="accesslog = '-'\naccess_log_format = 'CFG %(m)s %(U)s %(s)s'\n")
    requests.get(s.url + "/from-config", timeout=10)
    assert access_lines(s, "CFG GET /from-config") == ["CFG GET /from-config 404"]


def test_error_log_file_and_level(server):
    d = tempfile.mkdtemp(prefix="fc-log-")
    path = os.path.join(d, "error.log")
    s = server(["--error-logfile", path, "--log-level", "debug", "wsgiapp:app"])
    requests.get(s.url + "/", timeout=10)
    import time
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(path) as f:
            text = f.read()
        if "[DEBUG]" in text:
            break
        time.sleep(0.05)
    assert "[INFO]" in text and "[DEBUG]" in text
    assert re.search(r"^\[\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} [+-]\d{4}\] \[\d+\] \[INFO\] ", text, re.M), text


@pytest.mark.ferrocorn_only
@pytest.mark.parametrize("kind", ["sync", "gthread", "asgi"])
def test_access_log_json(server, tmp_path, kind):
    """--access-log-json: one JSON object per line, gunicorn's atoms by
    name; quotes, percent-encoded newlines, raw newlines in no place, and
    non-ASCII in the path and the headers read back as sent; a forged
    JSON fragment in a header stays inside its string."""
    log = tmp_path / "access.json"
    app = {"asgi": ["-k", "asgi", "asgiapp:app"], "sync": ["-k", "sync", "wsgiapp:app"],
           "gthread": ["-k", "gthread", "--threads", "2", "wsgiapp:app"]}[kind]
    s = server(["--access-logfile", str(log), "--access-log-json", "-w", "1"] + app)
    target = b"/q%22uote%0Anew%C3%A9?x=%22y%22&n=%0A"
    agent = 'agent "007" \\ caf\u00e9 \u2603'.encode()
    forged = b'x", "s": "999'
    with RawConn(s.port) as c:
        c.send(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\nUser-Agent: " + agent
               + b"\r\nX-Forged: " + forged + b"\r\nReferer: http://r/\xe9\r\n\r\n")
        status = c.read_response().status
    data = wait_until(lambda: log.read_bytes() if log.exists() else b"",
                      lambda b: b"/q%22uote" in b and b.endswith(b"\n"), timeout=10)
    # every line is one object (the readiness probe's first), ours is one line
    recs = [json.loads(line) for line in data.splitlines()]
    mine = [r for r in recs if r["r"].startswith("GET /q")]
    assert len(mine) == 1, data
    rec = mine[0]
    assert rec["r"] == "GET " + target.decode() + " HTTP/1.1"
    assert rec["U"] == '/q"uote\nnew\u00e9'
    assert rec["q"] == "x=%22y%22&n=%0A"
    assert rec["m"] == "GET" and rec["H"] == "HTTP/1.1"
    assert rec["s"] == str(status) and rec["s"] != "999"
    assert rec["a"] == agent.decode() and rec["{user-agent}i"] == agent.decode()
    assert rec["{x-forged}i"] == forged.decode()
    assert rec["f"] == "http://r/\u00e9"  # not UTF-8: one character per byte
    assert rec["h"] == "127.0.0.1"
    assert isinstance(rec["D"], int) and isinstance(rec["B"], int)
    assert rec["p"] == "<%d>" % s.children()[0]
    if kind == "asgi":
        from test_asgi import assert_asgi
        assert_asgi(s)
    else:
        s.assert_kind(kind)
