"""Address allow-lists (--forwarded-allow-ips, --proxy-allow-from): what
gunicorn 27 accepts is Python's ipaddress.ip_network(value) (strict), and a
value accepted at configuration time must also boot the workers (they parse
it again): netmask and hostmask forms, prefixes with leading zeros, IPv6
scopes."""
import ipaddress
import json

import pytest

from conftest import free_port
from helpers import RawConn


def environ(port, headers=b""):
    with RawConn(port) as c:
        c.send(b"GET /environ HTTP/1.1\r\nHost: example.com\r\n%sConnection: close\r\n\r\n" % headers)
        r = c.read_response()
    assert r.status == 200, r
    return json.loads(r.body)


def error_line(result):
    """The one `Error: ...` line a refused configuration prints."""
    lines = [l for l in result.stderr.splitlines() if l.startswith("Error:")]
    assert len(lines) == 1, result
    return lines[0]


def test_netmask_form_boots_and_serves(server):
    # Validation accepted this and the worker refused it: the master halted.
    s = server(["-w", "1", "--forwarded-allow-ips", "10.0.0.0/255.0.0.0",
                "--proxy-allow-from", "10.0.0.0/255.0.0.0", "wsgiapp:app"])
    env = environ(s.port, b"X-Forwarded-Proto: https\r\n")
    # 127.0.0.1 is not in 10.0.0.0/8: the header is not trusted.
    assert env["wsgi.url_scheme"] == "http"


def test_netmask_form_trusts_the_network(server):
    s = server(["-w", "1", "--forwarded-allow-ips", "127.0.0.0/255.0.0.0", "wsgiapp:app"])
    env = environ(s.port, b"X-Forwarded-Proto: https\r\n")
    assert env["wsgi.url_scheme"] == "https"


def test_hostmask_form_trusts_the_network(server):
    s = server(["-w", "1", "--forwarded-allow-ips", "127.0.0.0/0.255.255.255", "wsgiapp:app"])
    assert environ(s.port, b"X-Forwarded-Proto: https\r\n")["wsgi.url_scheme"] == "https"


@pytest.mark.parametrize("flag", ["--forwarded-allow-ips", "--proxy-allow-from"])
@pytest.mark.parametrize("value", ["192.168.1.1/24", "10.0.0.0/255.0.255.0"])
def test_check_config_and_start_refuse_alike(run_cmd, flag, value):
    checked = run_cmd(["--check-config", flag, value, "wsgiapp:app"])
    started = run_cmd(["-b", "127.0.0.1:%d" % free_port(), flag, value, "wsgiapp:app"], timeout=30)
    assert not started.timed_out, started
    assert checked.returncode == 1, checked
    assert started.returncode == 1, started
    assert error_line(checked) == error_line(started)
    assert value in error_line(checked)


# Python's ipaddress is the reference: each value is accepted by --check-config
# exactly when ip_network accepts it.
VALUES = [
    "10.0.0.0/8", "10.0.0.0/255.0.0.0", "10.0.0.0/0.255.255.255", "10.0.0.0/08",
    "0.0.0.0/0.0.0.0", "fe80::%eth0/64", "::ffff:10.0.0.0/104", "2001:db8::/32",
    "10.0.0.0/0.0.0.0", "10.0.0.0/255.0.255.0", "10.0.0.0/+8", "10.0.0.0/33",
    "10.0.0.0/8/8", "010.0.0.0/8", "fe80::/64%eth0", "2001:db8::1/32", "::/ffff::",
]


def python_accepts(value):
    try:
        ipaddress.ip_network(value)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("value", VALUES)
def test_check_config_accepts_what_ip_network_accepts(run_cmd, value):
    r = run_cmd(["--check-config", "--forwarded-allow-ips", "127.0.0.1, %s" % value, "wsgiapp:app"])
    assert r.returncode == (0 if python_accepts(value) else 1), r
