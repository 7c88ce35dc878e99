"""TLS on the app listeners (rustls): certfile/keyfile, TLS 1.2 and 1.3 with
curl and Python's ssl client, client certificates (cert_reqs, ca_certs),
ciphers, the ssl_context hook, a plain-HTTP client on the TLS port, and
every worker kind serving HTTPS (and wss under asgi). The tests of
behaviour gunicorn 27 shares pass against it too (TEST_SERVER=gunicorn).

The certificates are made with the `openssl` CLI for each run (the Pki of
test_metrics_prometheus.py: a CA, a server certificate for 127.0.0.1, a
client certificate from the CA and one from another CA).
"""
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time

import pytest

from conftest import KIND_ARGS
from helpers import wait_until
from test_metrics_prometheus import Pki


OPENSSL = shutil.which("openssl")
CURL = shutil.which("curl")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    assert OPENSSL and CURL, "openssl and curl are installed by scripts/setup.sh"
    return Pki(str(tmp_path_factory.mktemp("tls-pki")))


def tls_server(server, pki, *args, **kw):
    """A server on TLS, ready once a TLS request is answered (gunicorn does
    not answer the plain-HTTP readiness probe)."""
    s = server(tls_args(pki, *args), ready="tcp", **kw)
    ctx = client_ctx(pki, cert=(pki.client_crt, pki.client_key))

    def answered():
        try:
            return https(s, "/", ctx)[4].close() or True
        except (OSError, ssl.SSLError, http.client.HTTPException):
            return False
    wait_until(answered, bool, timeout=20)
    return s


def tls_args(pki, *extra):
    return ["--certfile", pki.server_crt, "--keyfile", pki.server_key] + list(extra)


def client_ctx(pki, version=None, cert=None):
    ctx = ssl.create_default_context(cafile=pki.ca_crt)
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


def https(s, path, ctx, method="GET", body=None, conn=None):
    """(status, body bytes, the TLS version, the cipher name, the connection)"""
    c = conn or http.client.HTTPSConnection("127.0.0.1", s.port, context=ctx, timeout=10)
    c.request(method, path, body=body)
    # (a response that closes the connection takes the socket away)
    version, cipher = c.sock.version(), c.sock.cipher()[0]
    r = c.getresponse()
    data = r.read()
    return r.status, data, version, cipher, c


def curl(s, pki, path, *flags):
    r = subprocess.run([CURL, "-sS", "-v", "--cacert", pki.ca_crt, *flags,
                        "https://127.0.0.1:%d%s" % (s.port, path)],
                       capture_output=True, text=True, timeout=30)
    return r


def worker_pid(s, ctx):
    return int(https(s, "/pid", ctx)[1])


# -- protocols and clients ---------------------------------------------------------

def test_curl_over_tls12_and_tls13(server, pki):
    # gthread: gunicorn's sync worker closes every connection (keep-alive
    # is checked below)
    s = tls_server(server, pki, "-w", "1", "-k", "gthread", "wsgiapp:app")
    assert "Listening at: https://127.0.0.1:%d" % s.port in s.log()
    for flags, version in ((["--tlsv1.2", "--tls-max", "1.2"], "TLSv1.2"), (["--tlsv1.3"], "TLSv1.3")):
        r = curl(s, pki, "/environ", *flags)
        assert r.returncode == 0, r.stderr
        assert "SSL connection using %s" % version in r.stderr, r.stderr
        env = json.loads(r.stdout)
        assert env["wsgi.url_scheme"] == "https", env
        assert env["SERVER_PORT"] == str(s.port)
        # keep-alive: two requests on one connection
        r = curl(s, pki, "/", *flags, "-o", "/dev/null", "https://127.0.0.1:%d/" % s.port)
        assert r.returncode == 0, r.stderr
        assert "Re-using existing connection" in r.stderr, r.stderr


@pytest.mark.ferrocorn_only
def test_metrics_name_the_listener_https(server, pki):
    s = tls_server(server, pki, "-w", "1", "wsgiapp:app")
    metrics = wait_until(
        lambda: subprocess.run([CURL, "-s", "http://127.0.0.1:%d/metrics" % s.metrics_port],
                               capture_output=True, text=True, timeout=10).stdout,
        lambda text: "gunicorn_listen_backlog" in text, timeout=10)
    assert 'listener="https://127.0.0.1:%d"' % s.port in metrics, metrics


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_python_ssl_client(server, pki, version):
    s = tls_server(server, pki, "-w", "1", "wsgiapp:app")
    ctx = client_ctx(pki, version)
    status, body, got, _, c = https(s, "/", ctx)
    assert (status, body, got) == (200, b"Hello, World!", version.name.replace("_", "."))
    # a big request body and a big streamed response on the same connection
    payload = os.urandom(3 * 1024 * 1024)
    status, body, _, _, c = https(s, "/echo", ctx, "POST", payload, conn=c)
    out = json.loads(body)
    assert status == 200 and out["size"] == len(payload)
    assert out["sha256"] == hashlib.sha256(payload).hexdigest()
    status, body, _, _, c = https(s, "/stream?n=200&size=65536", ctx, conn=c)
    assert status == 200 and len(body) == 200 * 65536 and body[:3] == b"aaa"
    c.close()


# -- client certificates -----------------------------------------------------------

def test_cert_reqs_required(server, pki):
    s = tls_server(server, pki, "--cert-reqs", "2", "--ca-certs", pki.ca_crt, "-w", "1", "wsgiapp:app")
    good = (pki.client_crt, pki.client_key)
    rogue = (pki.rogue_client_crt, pki.rogue_client_key)
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        status, _, _, _, c = https(s, "/", client_ctx(pki, version, good))
        c.close()
        assert status == 200
        for cert in (None, rogue):
            with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
                https(s, "/", client_ctx(pki, version, cert))
    pid = worker_pid(s, client_ctx(pki, cert=good))
    assert s.children() == [pid]


def test_cert_reqs_optional(server, pki):
    s = tls_server(server, pki, "--cert-reqs", "1", "--ca-certs", pki.ca_crt, "-w", "1", "wsgiapp:app")
    assert https(s, "/", client_ctx(pki))[0] == 200
    assert https(s, "/", client_ctx(pki, cert=(pki.client_crt, pki.client_key)))[0] == 200
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
        https(s, "/", client_ctx(pki, cert=(pki.rogue_client_crt, pki.rogue_client_key)))


@pytest.mark.ferrocorn_only
def test_cert_reqs_without_ca_certs_fails_at_start(run_cmd, pki):
    r = run_cmd(tls_args(pki, "--cert-reqs", "2", "wsgiapp:app"))
    assert r.returncode != 0
    assert "ca_certs" in r.output, r.output
    r = run_cmd(tls_args(pki, "--cert-reqs", "3", "--ca-certs", pki.ca_crt, "wsgiapp:app"))
    assert r.returncode != 0 and "cert_reqs 3" in r.output, r.output


# -- a client that is not TLS ------------------------------------------------------

@pytest.mark.ferrocorn_only
def test_plain_http_on_the_tls_port_costs_one_connection(server, pki):
    s = tls_server(server, pki, "-w", "1", "wsgiapp:app")
    ctx = client_ctx(pki)
    pid = worker_pid(s, ctx)
    # plain HTTP: a plain-text 400, then the connection closes
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while True:
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 "), data
    assert b"plain HTTP request was sent to HTTPS port" in data
    # garbage that is neither TLS nor HTTP, a client that closes mid-handshake,
    # and one that sends nothing (held while requests go on)
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        c.sendall(b"\x16\x03\x01\x00\x05\x00\x00\x00\x00\x00" + os.urandom(64))
        c.settimeout(10)
        try:
            assert c.recv(4096) is not None
        except ConnectionResetError:
            pass
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        c.sendall(b"\x16\x03\x01")
    idle = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    for _ in range(3):
        assert worker_pid(s, ctx) == pid
    idle.close()
    assert s.children() == [pid]
    assert "Worker exiting" not in s.log() and "panicked" not in s.log()


# -- ciphers and versions -----------------------------------------------------------

def test_ciphers_select_the_suite(server, pki):
    # the test certificates are EC (P-256): ECDSA suites for TLS 1.2
    s = tls_server(server, pki, "--ciphers", "ECDHE-ECDSA-AES256-GCM-SHA384:!aNULL", "-w", "1",
                   "wsgiapp:app")
    _, _, version, cipher, c = https(s, "/", client_ctx(pki, ssl.TLSVersion.TLSv1_2))
    c.close()
    assert (version, cipher) == ("TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384")
    ctx = client_ctx(pki, ssl.TLSVersion.TLSv1_2)
    ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    with pytest.raises(ssl.SSLError):
        https(s, "/", ctx)
    # TLS 1.3 suites stay on, as OpenSSL's set_ciphers leaves them
    assert https(s, "/", client_ctx(pki, ssl.TLSVersion.TLSv1_3))[2] == "TLSv1.3"


def test_the_ciphers_lists_order_decides(server, pki):
    """As Python's server contexts (OP_CIPHER_SERVER_PREFERENCE), the
    server's order wins over the client's."""
    s = tls_server(server, pki, "--ciphers",
                   "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256", "-w", "1",
                   "wsgiapp:app")
    ctx = client_ctx(pki, ssl.TLSVersion.TLSv1_2)
    # the client prefers AES-128; the list puts ChaCha20 first
    ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305")
    _, _, _, cipher, c = https(s, "/", ctx)
    c.close()
    assert cipher == "ECDHE-ECDSA-CHACHA20-POLY1305"


@pytest.mark.ferrocorn_only
def test_without_ciphers_aes128_comes_first(server, pki):
    """ferrocorn's own order without `ciphers`: AES-128-GCM first (a
    cheaper handshake; gunicorn's OpenSSL default puts AES-256 first)."""
    s = tls_server(server, pki, "-w", "1", "wsgiapp:app")
    # Python's client offers TLS_AES_256_GCM_SHA384 first
    for version, want in [(ssl.TLSVersion.TLSv1_3, ("TLSv1.3", "TLS_AES_128_GCM_SHA256")),
                          (ssl.TLSVersion.TLSv1_2, ("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256"))]:
        _, _, v, cipher, c = https(s, "/", client_ctx(pki, version))
        c.close()
        assert (v, cipher) == want


@pytest.mark.parametrize("ciphers,named", [
    ("ECDHE-ECDSA-AES128-GCM-SHA256:NOT-A-CIPHER", "NOT-A-CIPHER"),
    ("AES128-SHA", "AES128-SHA"),
    ("DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-AES256-GCM-SHA384"),
])
@pytest.mark.ferrocorn_only
def test_a_cipher_rustls_cannot_map_fails_at_start(run_cmd, pki, ciphers, named):
    r = run_cmd(tls_args(pki, "--ciphers", ciphers, "wsgiapp:app"))
    assert r.returncode != 0
    assert named in r.output and "ciphers" in r.output, r.output


@pytest.mark.ferrocorn_only
def test_check_config_builds_the_tls_configuration(run_cmd, pki):
    assert run_cmd(tls_args(pki, "--check-config", "wsgiapp:app")).returncode == 0
    r = run_cmd(tls_args(pki, "--check-config", "--ciphers", "RC4-MD5", "wsgiapp:app"))
    assert r.returncode == 1 and "RC4-MD5" in r.output, r.output


@pytest.mark.ferrocorn_only
def test_missing_certificate_fails_at_start(run_cmd, pki, tmp_path):
    r = run_cmd(["--certfile", str(tmp_path / "nope.pem"), "--keyfile", pki.server_key, "wsgiapp:app"])
    assert r.returncode != 0 and "nope.pem" in r.output, r.output
    r = run_cmd(["--keyfile", pki.server_key, "wsgiapp:app"])
    assert r.returncode != 0 and "certfile" in r.output, r.output


@pytest.mark.ferrocorn_only
def test_ssl_context_hook(server, pki):
    conf = (
        "import ssl\n"
        "def ssl_context(conf, default_ssl_context_factory):\n"
        "    ctx = default_ssl_context_factory()\n"
        "    assert conf.certfile == %r, conf.certfile\n"
        "    ctx.minimum_version = ssl.TLSVersion.TLSv1_3\n"
        "    ctx.options |= ssl.OP_NO_TICKET\n"
        "    ctx.set_alpn_protocols(['http/1.1'])\n"
        "    ctx.load_cert_chain(%r, %r)\n"
        "    ctx.load_cert_chain(%r, %r)\n"
        "    return ctx\n" % (pki.server_crt, pki.rogue_client_crt, pki.rogue_client_key,
                             pki.server_crt, pki.server_key))
    s = tls_server(server, pki, "-w", "1", "wsgiapp:app", config_text=conf)
    assert https(s, "/", client_ctx(pki, ssl.TLSVersion.TLSv1_3))[2] == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        https(s, "/", client_ctx(pki, ssl.TLSVersion.TLSv1_2))
    log = s.log()
    # what rustls is not given is named at start
    assert "not carried over" in log and "OP_NO_TICKET" in log and "set_alpn_protocols" in log, log
    # the chain served is the last one loaded; the other one is named
    assert "certificate chain of %s" % pki.rogue_client_crt in log, log


@pytest.mark.ferrocorn_only
def test_ssl_context_hook_returning_a_foreign_context_fails_at_start(run_cmd, pki):
    conf = (
        "import ssl\n"
        "def ssl_context(conf, factory):\n"
        "    return ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n")
    r = run_cmd(tls_args(pki, "wsgiapp:app"), config_text=conf)
    assert r.returncode != 0 and "default_ssl_context_factory" in r.output, r.output


# -- every worker kind ---------------------------------------------------------------

@pytest.mark.ferrocorn_only
@pytest.mark.parametrize("kind", list(KIND_ARGS))
def test_wsgi_kinds_serve_https(server, pki, kind):
    s = tls_server(server, pki, "-w", "1", *KIND_ARGS[kind], "wsgiapp:app")
    s.assert_kind(kind)
    ctx = client_ctx(pki)
    status, body, _, _, c = https(s, "/kind", ctx)
    k = json.loads(body)
    assert status == 200 and k["pid"] == s.children()[0]
    assert k["gevent"] == (kind == "gevent") and k["eventlet"] == (kind == "eventlet"), k
    assert k["multithread"] == (kind == "gthread"), k
    env = json.loads(https(s, "/environ", ctx, conn=c)[1])
    assert env["wsgi.url_scheme"] == "https"
    payload = os.urandom(1024 * 1024)
    out = json.loads(https(s, "/echo", ctx, "POST", payload, conn=c)[1])
    assert out["sha256"] == hashlib.sha256(payload).hexdigest()
    c.close()


@pytest.mark.ferrocorn_only
def test_asgi_serves_https_and_wss(server, pki):
    from websockets.sync.client import connect
    s = tls_server(server, pki, "-k", "asgi", "-w", "1", "asgiapp:app")
    ctx = client_ctx(pki)
    status, body, _, _, c = https(s, "/kind", ctx)
    k = json.loads(body)
    assert status == 200 and k["main_thread"] and k["task"] is not None and "loop" in k.get("loop", "loop"), k
    assert k["pid"] == s.children()[0]
    sc = json.loads(https(s, "/scope", ctx, conn=c)[1])
    assert sc["scheme"] == "https", sc
    payload = os.urandom(1024 * 1024)
    status, body, _, _, c = https(s, "/echo", ctx, "POST", payload, conn=c)
    assert status == 200 and body == payload
    c.close()
    with connect("wss://127.0.0.1:%d/ws" % s.port, ssl=client_ctx(pki), open_timeout=10,
                 close_timeout=10) as ws:
        ws.send("scope")
        assert json.loads(ws.recv())["scheme"] == "wss"
        big = "z" * 300000
        ws.send(big)
        assert ws.recv() == big
        ws.send(b"\x00\x01")
        assert ws.recv() == b"\x00\x01"


@pytest.mark.ferrocorn_only
def test_tornado_serves_https(server, pki):
    s = tls_server(server, pki, "-k", "tornado", "-w", "1", "tornadoapp:app")
    status, body, _, _, c = https(s, "/kind", client_ctx(pki))
    k = json.loads(body)
    assert status == 200 and k["ioloop_wraps_it"] is True and k["protocol"] == "https", k
    assert k["pid"] == s.children()[0]
    assert https(s, "/", client_ctx(pki), conn=c)[1] == b"Hello from Tornado"
    c.close()


@pytest.mark.ferrocorn_only
def test_handshakes_run_on_the_worker_s_handshake_thread(server, pki):
    # the handshake runs on the worker's own thread, never on one that runs
    # Python: with gthread's app threads busy (one sleeps, the other is
    # free), a TLS handshake still completes at once
    s = tls_server(server, pki, "-w", "1", "-k", "gthread", "--threads", "2", "wsgiapp:app")
    pid = s.children()[0]
    names = []
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
            names.append(f.read().strip())
    assert names.count("tls-handshake") == 1, names
    ctx = client_ctx(pki)
    busy = http.client.HTTPSConnection("127.0.0.1", s.port, context=ctx, timeout=10)
    busy.request("GET", "/sleep?s=2")
    time.sleep(0.3)
    t0 = time.monotonic()
    raw = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    took = time.monotonic() - t0
    assert took < 1.0, took
    tls.close()
    assert busy.getresponse().status == 200


@pytest.mark.ferrocorn_only
def test_key_in_the_certificate_file_and_hup(server, pki, tmp_path):
    # no keyfile: the key is read from certfile (Python's load_cert_chain)
    both = tmp_path / "both.pem"
    with open(pki.server_crt) as c, open(pki.server_key) as k:
        both.write_text(c.read() + k.read())
    conf = "certfile = %r\n" % str(both)
    s = server(["-w", "1", "wsgiapp:app"], config_text=conf, ready="tcp")
    ctx = client_ctx(pki)
    old = worker_pid(s, ctx)
    # HUP rebuilds the TLS configuration: here a cipher list; the new
    # worker serves with it
    with open(s.config_path, "a") as f:
        f.write("ciphers = 'ECDHE-ECDSA-CHACHA20-POLY1305'\n")
    s.signal(signal.SIGHUP)
    new = wait_until(lambda: s.children(), lambda pids: pids and old not in pids, timeout=15)
    ctx12 = client_ctx(pki, ssl.TLSVersion.TLSv1_2)
    _, _, _, cipher, c = https(s, "/", ctx12)
    c.close()
    assert cipher == "ECDHE-ECDSA-CHACHA20-POLY1305"
    assert worker_pid(s, ctx) == new[0]
    # a HUP whose TLS no longer builds keeps the previous configuration
    with open(s.config_path, "a") as f:
        f.write("ciphers = 'NOT-A-CIPHER'\n")
    s.signal(signal.SIGHUP)
    s.wait_log("keeping the previous TLS configuration")
    assert https(s, "/", ctx12)[3] == "ECDHE-ECDSA-CHACHA20-POLY1305"


@pytest.mark.ferrocorn_only
def test_clients_that_never_start_a_handshake_are_closed_for_room(server, pki):
    # a full connection table: connections still in their handshake are the
    # first closed for a new one, as fresh plain connections are
    s = tls_server(server, pki, "-w", "1", "--worker-connections", "5", "wsgiapp:app")
    ctx = client_ctx(pki)
    pid = worker_pid(s, ctx)
    idle = [socket.create_connection(("127.0.0.1", s.port), timeout=10) for _ in range(12)]
    time.sleep(0.3)
    t0 = time.monotonic()
    for _ in range(3):
        assert worker_pid(s, ctx) == pid
    assert time.monotonic() - t0 < 3
    closed = 0
    for c in idle:
        c.settimeout(0.5)
        try:
            closed += c.recv(1) == b""
        except (ConnectionResetError, socket.timeout):
            pass
        c.close()
    assert closed >= 7, closed
