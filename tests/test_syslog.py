"""--log-syslog: error and access records sent as gunicorn 27's SysLogHandlers
send them (`<PRI>gunicorn.<prefix>.<error|access>: [pid] message\\0`), to a
UDP, unix-datagram and TCP listener started by the test."""
import os
import re
import socket
import tempfile
import threading
import time

import pytest
import requests

from conftest import IS_GUNICORN, free_port

LINE = re.compile(rb"^<(\d+)>([^:]+): \[(\d+)\] (.*)\x00$", re.S)


def parse(messages):
    out = []
    for m in messages:
        g = LINE.match(m)
        assert g, m
        out.append((int(g.group(1)), g.group(2).decode(), int(g.group(3)), g.group(4).decode()))
    return out


def collect(sock, until, timeout=10.0):
    """Datagrams from `sock` until until(parsed) holds."""
    got = []
    deadline = time.monotonic() + timeout
    sock.settimeout(0.2)
    while True:
        try:
            got.append(sock.recv(65536))
        except socket.timeout:
            pass
        parsed = parse(got)
        if until(parsed):
            return parsed
        assert time.monotonic() < deadline, parsed


def test_udp_error_and_access_records(server):
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    port = udp.getsockname()[1]
    s = server(["-w", "1", "--log-syslog", "--log-syslog-to", "udp://127.0.0.1:%d" % port,
                "--log-syslog-prefix", "myapp", "--log-syslog-facility", "local3", "wsgiapp:app"])
    for _ in range(3):
        assert requests.get(s.url + "/pid", timeout=10).status_code == 200
    recs = collect(udp, lambda r: sum(1 for x in r if "/pid" in x[3]) >= 3)
    udp.close()
    # local3 (19) * 8 + info (6)
    booting = [r for r in recs if r[1] == "gunicorn.myapp.error" and "Booting worker with pid" in r[3]]
    assert booting and booting[0][0] == 19 * 8 + 6, recs
    worker_pid = int(booting[0][3].rsplit(" ", 1)[1])
    assert booting[0][2] == worker_pid
    access = [r for r in recs if r[1] == "gunicorn.myapp.access" and "/pid" in r[3]]
    assert len(access) == 3, recs
    for pri, _, pid, msg in access:
        assert pri == 19 * 8 + 6
        assert pid == worker_pid
        assert '"GET /pid HTTP/1.1" 200' in msg, msg
    # the error log (stderr) still has its lines
    assert "Booting worker with pid" in s.log()


def test_unix_datagram_without_access_lines_and_default_prefix(server, tmp_path):
    path = os.path.join(tempfile.mkdtemp(dir="/tmp"), "log.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    s = server(["-w", "1", "--log-syslog", "--log-syslog-to", "unix://%s#dgram" % path,
                "--disable-redirect-access-to-syslog", "--access-logfile", str(tmp_path / "access.log"),
                "wsgiapp:app"])
    assert requests.get(s.url + "/pid", timeout=10).status_code == 200
    # a warning-level record: a malformed request ("Invalid request from ip=...")
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        assert c.recv(100).startswith(b"HTTP/1.1 400")
    # the default prefix is the process name, the app argument with ':' made '.'
    recs = collect(sock, lambda r: any(x[0] == 8 + 4 for x in r))
    sock.close()
    assert {r[1] for r in recs} == {"gunicorn.wsgiapp.app.error"}, recs
    assert any(r[0] == 8 + 6 and "Booting worker" in r[3] for r in recs)  # user (1) * 8 + info
    warning = [r for r in recs if r[0] == 8 + 4]  # user * 8 + warning
    assert "Invalid request" in warning[0][3], warning
    s.stop()
    # access lines went to the file only
    with open(tmp_path / "access.log") as f:
        assert '"GET /pid HTTP/1.1" 200' in f.read()


def test_tcp_stream(server):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    streams = []  # one buffer per connection (gunicorn's workers open their own)

    def read(conn, buf):
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf.extend(data)

    def accept():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.settimeout(15)
            streams.append(bytearray())
            threading.Thread(target=read, args=(conn, streams[-1]), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    s = server(["-w", "1", "--log-syslog", "--log-syslog-to", "tcp://127.0.0.1:%d" % port,
                "--log-syslog-prefix", "tcpapp", "wsgiapp:app"])
    assert requests.get(s.url + "/pid", timeout=10).status_code == 200
    deadline = time.monotonic() + 10
    while not any(b"GET /pid" in b for b in streams):
        assert time.monotonic() < deadline, streams
        time.sleep(0.05)
    s.stop()
    listener.close()
    messages = [m + b"\x00" for b in streams for m in bytes(b).split(b"\x00") if m]
    recs = parse(messages)
    assert any(r[1] == "gunicorn.tcpapp.access" and "GET /pid" in r[3] for r in recs), recs
    assert any(r[1] == "gunicorn.tcpapp.error" and "Booting worker" in r[3] for r in recs), recs


@pytest.mark.skipif(IS_GUNICORN, reason="gunicorn fails these with a traceback")
@pytest.mark.parametrize("args,message", [
    (["--log-syslog-facility", "nope"], 'unknown syslog facility name "nope"'),
    (["--log-syslog-to", "http://127.0.0.1:1"], "invalid syslog address"),
    (["--log-syslog-to", "udp://127.0.0.1:x1"], "is not a valid port number"),
    (["--log-syslog-to", "unix:///nonexistent/dir/log"], "cannot connect to syslog at unix:///nonexistent/dir/log"),
])
def test_bad_syslog_settings_stop_the_start(run_cmd, args, message):
    r = run_cmd(["--log-syslog"] + args + ["-b", "127.0.0.1:%d" % free_port(), "wsgiapp:app"])
    assert r.returncode == 1, r
    assert message in r.output, r
