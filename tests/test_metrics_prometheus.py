"""The built-in Prometheus exporter, checked with real clients.

- Debian's `prometheus` server (/usr/bin/prometheus, installed by
  scripts/setup.sh) scrapes ferrocorn over plain HTTP and over HTTPS with a
  client certificate; its query API must return the counts the test knows it
  produced.
- `promtool check metrics` accepts a scrape.
- With PROMETHEUS_SSL_CLIENT_AUTH_REQUIRED=true, clients without a
  certificate, or with one from another CA, are refused.
- OpenMetrics content negotiation and gzip.

The certificates are made with the `openssl` CLI for each test run. gunicorn
has no built-in exporter: every test here is ferrocorn-only.
"""
import gzip
import http.client
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
import requests

from conftest import free_port

pytestmark = pytest.mark.ferrocorn_only

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"

# The readiness probe of conftest sends GET <ready_path>. It goes to a
# non-200 route so that the 200 count is exactly what the test sends.
READY = "/status/204"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def need(path):
    if not os.path.exists(path):
        pytest.skip("%s is not installed (scripts/setup.sh installs it)" % path)


# -- helpers ------------------------------------------------------------------

def wait_for(pred, timeout, what, context=lambda: ""):
    """Poll pred() until it returns a true value; fail with context() if not."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            v = pred()
        except Exception as e:  # noqa: BLE001 - reported below
            v, last = None, e
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out (%ss) waiting for %s (last error: %r)\n%s"
                                 % (timeout, what, last, context()))
        time.sleep(0.1)


def send(s, path, n):
    for i in range(n):
        r = requests.get(s.url + path, timeout=10)
        expected = 500 if path == "/error" else 200
        assert r.status_code == expected, "request %d to %s: %s\n%s" % (i, path, r.status_code, s.log())


def metrics_url(s, scheme="http"):
    return "%s://127.0.0.1:%d/metrics" % (scheme, s.metrics_port)


def wait_metrics(s, timeout=10.0):
    """Wait until the plain-HTTP exporter answers /metrics with 200; return the response."""
    def get():
        r = requests.get(metrics_url(s), timeout=5)
        return r if r.status_code == 200 else None
    return wait_for(get, timeout, "the exporter on port %s" % s.metrics_port, s.log)


def tail(text, n=4000):
    return text if len(text) <= n else "...\n" + text[-n:]


class Prometheus:
    """A prometheus server on a free loopback port, scraping one job."""

    def __init__(self, target, job="ferrocorn", scheme="http", tls=None):
        need(PROMETHEUS)
        self.dir = tempfile.mkdtemp(prefix="fc-prom-")
        self.port = free_port()
        self.job = job
        lines = ["global:",
                 "  scrape_interval: 1s",
                 "  scrape_timeout: 1s",
                 "  evaluation_interval: 1s",
                 "scrape_configs:",
                 "  - job_name: %s" % job,
                 "    scheme: %s" % scheme]
        if tls:
            lines.append("    tls_config:")
            lines += ["      %s: %s" % (k, v) for k, v in tls.items()]
        lines += ["    static_configs:",
                  "      - targets: ['%s']" % target]
        self.config = "\n".join(lines) + "\n"
        self.config_path = os.path.join(self.dir, "prometheus.yml")
        with open(self.config_path, "w") as f:
            f.write(self.config)
        self.err_path = os.path.join(self.dir, "prometheus.log")
        self._err = open(self.err_path, "wb")
        self.cmd = [PROMETHEUS,
                    "--config.file=%s" % self.config_path,
                    "--storage.tsdb.path=%s" % os.path.join(self.dir, "data"),
                    "--web.listen-address=127.0.0.1:%d" % self.port,
                    "--log.level=debug"]
        self.proc = subprocess.Popen(self.cmd, cwd=self.dir, stdin=subprocess.DEVNULL,
                                     stdout=self._err, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.base = "http://127.0.0.1:%d" % self.port
        try:
            wait_for(self._ready, 20, "prometheus /-/ready", self.log)
        except BaseException:
            self.stop()
            raise

    def _ready(self):
        if self.proc.poll() is not None:
            raise AssertionError("prometheus exited with %s\n%s" % (self.proc.returncode, self.log()))
        return requests.get(self.base + "/-/ready", timeout=2).status_code == 200

    def log(self):
        try:
            with open(self.err_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            text = ""
        return "--- prometheus config:\n%s--- prometheus output:\n%s" % (self.config, tail(text))

    def query(self, q):
        """Instant query; a list of (labels, float value)."""
        r = requests.get(self.base + "/api/v1/query", params={"query": q}, timeout=5)
        r.raise_for_status()
        body = r.json()
        assert body["status"] == "success", body
        return [(x["metric"], float(x["value"][1])) for x in body["data"]["result"]]

    def targets(self):
        try:
            return requests.get(self.base + "/api/v1/targets", timeout=5).json()
        except Exception as e:  # noqa: BLE001
            return repr(e)

    def wait_values(self, expected, timeout=20.0, context=lambda: ""):
        """Poll until every query in `expected` returns exactly one sample
        with the expected value. `expected`: {query: value}."""
        last = {}

        def check():
            ok = True
            for q, want in expected.items():
                try:
                    res = self.query(q)
                except Exception as e:  # noqa: BLE001
                    last[q] = repr(e)
                    ok = False
                    continue
                last[q] = res
                if len(res) != 1 or res[0][1] != want:
                    ok = False
            return ok

        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                lines = ["%s: want %r, got %r" % (q, expected[q], last.get(q)) for q in expected]
                raise AssertionError("prometheus did not return the expected values within %ss:\n%s\n"
                                     "--- targets: %s\n%s\n--- server log:\n%s"
                                     % (timeout, "\n".join(lines), self.targets(), self.log(),
                                        tail(context())))
            time.sleep(0.25)
        return last

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._err.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- certificates -------------------------------------------------------------

class Pki:
    """CA, server cert for 127.0.0.1, a client cert from that CA and one
    from another ("rogue") CA; EC P-256, X.509 v3 with proper extensions."""

    def __init__(self, d):
        self.dir = d
        self.ca_crt, self.ca_key = self._ca("ca", "ferrocorn test CA")
        self.rogue_crt, self.rogue_key = self._ca("rogue-ca", "rogue CA")
        self.server_crt, self.server_key = self._leaf(
            "server", "127.0.0.1", self.ca_crt, self.ca_key,
            ["basicConstraints=critical,CA:FALSE",
             "keyUsage=critical,digitalSignature",
             "extendedKeyUsage=serverAuth",
             "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        client_ext = ["basicConstraints=critical,CA:FALSE",
                      "keyUsage=critical,digitalSignature",
                      "extendedKeyUsage=clientAuth"]
        self.client_crt, self.client_key = self._leaf(
            "client", "scraper", self.ca_crt, self.ca_key, client_ext)
        self.rogue_client_crt, self.rogue_client_key = self._leaf(
            "rogue-client", "scraper", self.rogue_crt, self.rogue_key, client_ext)

    def _p(self, name):
        return os.path.join(self.dir, name)

    def _run(self, *args):
        r = subprocess.run([OPENSSL] + list(args), cwd=self.dir, capture_output=True, text=True)
        assert r.returncode == 0, "openssl %s failed:\n%s%s" % (" ".join(args), r.stdout, r.stderr)
        return r.stdout

    def _key(self, name):
        path = self._p(name + ".key")
        self._run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
        return path

    def _ext(self, name, exts):
        path = self._p(name + ".ext")
        with open(path, "w") as f:
            f.write("\n".join(exts + ["subjectKeyIdentifier=hash"]) + "\n")
        return path

    def _ca(self, name, cn):
        key = self._key(name)
        csr = self._p(name + ".csr")
        crt = self._p(name + ".crt")
        self._run("req", "-new", "-key", key, "-subj", "/CN=" + cn, "-out", csr)
        ext = self._ext(name, ["basicConstraints=critical,CA:TRUE",
                               "keyUsage=critical,keyCertSign,cRLSign"])
        self._run("x509", "-req", "-in", csr, "-signkey", key, "-days", "2", "-sha256",
                  "-extfile", ext, "-out", crt)
        return crt, key

    def _leaf(self, name, cn, ca_crt, ca_key, exts):
        key = self._key(name)
        csr = self._p(name + ".csr")
        crt = self._p(name + ".crt")
        self._run("req", "-new", "-key", key, "-subj", "/CN=" + cn, "-out", csr)
        ext = self._ext(name, exts + ["authorityKeyIdentifier=keyid"])
        self._run("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
                  "-set_serial", str(int(time.time() * 1000) % 10 ** 12), "-days", "2", "-sha256",
                  "-extfile", ext, "-out", crt)
        return crt, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    need(OPENSSL)
    p = Pki(str(tmp_path_factory.mktemp("pki")))
    # Sanity: v3 certificates that chain to their CA.
    for crt, ca in ((p.server_crt, p.ca_crt), (p.client_crt, p.ca_crt),
                    (p.rogue_client_crt, p.rogue_crt)):
        text = p._run("x509", "-in", crt, "-noout", "-text")
        assert "Version: 3" in text, text
        p._run("verify", "-CAfile", ca, crt)
    assert "CA:TRUE" in p._run("x509", "-in", p.ca_crt, "-noout", "-text")
    return p


def tls_env(pki):
    return {"PROMETHEUS_SSL_CERTFILE": pki.server_crt,
            "PROMETHEUS_SSL_KEYFILE": pki.server_key,
            "PROMETHEUS_SSL_CLIENT_CAFILE": pki.ca_crt,
            "PROMETHEUS_SSL_CLIENT_AUTH_REQUIRED": "true"}


def https_metrics(s, pki, timeout=10.0):
    """Wait until the TLS exporter serves /metrics to the good client."""
    def get():
        r = requests.get(metrics_url(s, "https"), timeout=5, verify=pki.ca_crt,
                         cert=(pki.client_crt, pki.client_key))
        return r if r.status_code == 200 else None
    return wait_for(get, timeout, "the HTTPS exporter on port %s" % s.metrics_port, s.log)


# -- 1. prometheus scrapes plain HTTP -------------------------------------------

def test_prometheus_scrapes_plain_http(server):
    need(PROMETHEUS)
    s = server(["-w", "2", "wsgiapp:app"], ready_path=READY)
    send(s, "/", 37)
    send(s, "/error", 3)
    wait_metrics(s)
    prom = Prometheus("127.0.0.1:%d" % s.metrics_port, job="ferrocorn")
    try:
        prom.wait_values({
            'up{job="ferrocorn"}': 1,
            'sum(gunicorn_requests_total{status="200"})': 37,
            'sum(gunicorn_requests_total{status="500"})': 3,
            'sum(gunicorn_worker_failed_requests_total)': 3,
            'sum(gunicorn_worker_error_handling_total{error_type="RuntimeError",endpoint="/error"})': 3,
            'count(gunicorn_worker_uptime_seconds)': 2,
            'sum(gunicorn_workers{state="idle"})': 2,
            'count(ferrocorn_build_info == 1)': 1,
        }, timeout=20, context=s.log)
        # The scraped series really are ferrocorn's: worker ids match the workers.
        ids = {m["worker_id"] for m, _ in prom.query("gunicorn_worker_uptime_seconds")}
        pids = {int(w.rsplit("_", 1)[1]) for w in ids}
        assert pids == set(s.children()), "worker_id %s vs workers %s\n%s" % (ids, s.children(), s.log())
    finally:
        prom.stop()


# -- 2. prometheus scrapes HTTPS with a client certificate ----------------------

def test_prometheus_scrapes_https_with_client_cert(server, pki):
    need(PROMETHEUS)
    s = server(["-w", "1", "wsgiapp:app"], env=tls_env(pki), ready_path=READY)
    send(s, "/", 11)
    https_metrics(s, pki)
    prom = Prometheus("127.0.0.1:%d" % s.metrics_port, job="ferrocorn-tls", scheme="https",
                      tls={"ca_file": pki.ca_crt, "cert_file": pki.client_crt,
                           "key_file": pki.client_key})
    try:
        prom.wait_values({
            'up{job="ferrocorn-tls"}': 1,
            'sum(gunicorn_requests_total{status="200"})': 11,
            'count(gunicorn_worker_uptime_seconds)': 1,
        }, timeout=20, context=s.log)
    finally:
        prom.stop()


# -- 3. promtool check metrics --------------------------------------------------

def test_promtool_check_metrics(server):
    need(PROMTOOL)
    s = server(["-w", "2", "wsgiapp:app"], ready_path=READY)
    send(s, "/", 10)
    send(s, "/error", 3)
    for code in (404, 503):
        requests.get(s.url + "/status/%d" % code, timeout=10)
    requests.post(s.url + "/echo", data=b"x" * 5000, timeout=10)

    def scraped():
        body = wait_metrics(s).text
        ok = ('gunicorn_requests_total{method="GET",status="500"} 3' in body
              and 'status="503"' in body and 'method="POST"' in body)
        return body if ok else None
    body = wait_for(scraped, 10, "a scrape with the errors counted", s.log)
    for family in ("gunicorn_worker_failed_requests_total", "gunicorn_worker_error_handling_total",
                   "gunicorn_worker_request_duration_seconds_bucket", "ferrocorn_build_info"):
        assert family in body, "%s missing from the scrape:\n%s" % (family, body)

    r = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, "promtool check metrics exited %s\n--- stdout:\n%s\n--- stderr:\n%s\n" \
        "--- scrape:\n%s" % (r.returncode, r.stdout, r.stderr, body)
    # Lint findings do not fail this test but are shown with -rP / on failure.
    print("promtool output:", r.stdout, r.stderr)


# -- 4. client authentication ---------------------------------------------------

def attempt(fn):
    """Run fn(); (description of what happened, the HTTP status or None)."""
    try:
        r = fn()
    except requests.exceptions.RequestException as e:
        return "refused: %r" % e, None
    return "answered %s: %r" % (r.status_code, r.text[:200]), r.status_code


def test_client_auth_required(server, pki):
    s = server(["-w", "1", "wsgiapp:app"], env=tls_env(pki), ready_path=READY)
    send(s, "/", 2)
    good = https_metrics(s, pki)
    assert "gunicorn_requests_total" in good.text, good.text
    url = metrics_url(s, "https")

    # No client certificate: refused in the TLS handshake, so no HTTP answer
    # at all (with TLS 1.3 the client sees the alert on its first read).
    what, status = attempt(lambda: requests.get(url, timeout=5, verify=pki.ca_crt))
    assert status is None, "client without a certificate got an HTTP answer (%s)\n%s" % (what, s.log())

    # A client certificate from an untrusted CA.
    what, status = attempt(lambda: requests.get(url, timeout=5, verify=pki.ca_crt,
                                                cert=(pki.rogue_client_crt, pki.rogue_client_key)))
    assert status is None, "client with an untrusted certificate got an HTTP answer (%s)\n%s" % (
        what, s.log())

    # Plain HTTP to the TLS port gets no metrics either (never a fallback).
    what, status = attempt(lambda: requests.get(metrics_url(s), timeout=5))
    assert status != 200, "plain HTTP to the TLS exporter was served (%s)\n%s" % (what, s.log())

    # The exporter still serves the good client after the refusals.
    r = requests.get(url, timeout=5, verify=pki.ca_crt, cert=(pki.client_crt, pki.client_key))
    assert r.status_code == 200 and "gunicorn_requests_total" in r.text, "%s %r\n%s" % (
        r.status_code, r.text[:500], s.log())
    assert 'gunicorn_requests_total{method="GET",status="200"} 2' in r.text, r.text


# -- 5. OpenMetrics and gzip ----------------------------------------------------

def families(text):
    return sorted(line.split()[2] for line in text.splitlines() if line.startswith("# TYPE "))


def raw_get(port, headers):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", "/metrics", headers=headers)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def test_openmetrics_and_gzip(server):
    s = server(["-w", "1", "wsgiapp:app"], ready_path=READY)
    send(s, "/", 3)
    send(s, "/error", 1)
    text = wait_metrics(s).text
    ctx = lambda: s.log()  # noqa: E731

    # Default: the Prometheus text format.
    status, h, body = raw_get(s.metrics_port, {})
    assert status == 200, (status, h, body, ctx())
    assert h["content-type"] == "text/plain; version=0.0.4; charset=utf-8", h
    assert "content-encoding" not in h, h
    assert "# EOF" not in body.decode(), body

    # OpenMetrics on request.
    status, h, om = raw_get(s.metrics_port, {"Accept": OPENMETRICS})
    om = om.decode()
    assert status == 200, (status, h, om, ctx())
    assert h["content-type"] == OPENMETRICS + "; charset=utf-8", h
    assert om.endswith("# EOF\n"), om[-500:]
    assert om.count("# EOF") == 1, om
    # Strictly valid OpenMetrics, by prometheus_client's parser.
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
    parsed = {f.name: f for f in text_string_to_metric_families(om)}
    assert "gunicorn_requests" in parsed and parsed["gunicorn_requests"].type == "counter", sorted(parsed)
    samples = {(x.name, x.labels.get("status")): x.value for x in parsed["gunicorn_requests"].samples}
    assert samples.get(("gunicorn_requests_total", "200")) == 3, samples
    assert samples.get(("gunicorn_requests_total", "500")) == 1, samples

    # gzip: the same families, and OpenMetrics + gzip together.
    status, h, gz = raw_get(s.metrics_port, {"Accept-Encoding": "gzip"})
    assert status == 200, (status, h, ctx())
    assert h.get("content-encoding") == "gzip", h
    assert h["content-type"] == "text/plain; version=0.0.4; charset=utf-8", h
    plain = gzip.decompress(gz).decode()
    assert families(plain) == families(text), (families(plain), families(text))
    assert 'gunicorn_requests_total{method="GET",status="200"} 3' in plain, plain

    status, h, gz = raw_get(s.metrics_port, {"Accept": OPENMETRICS, "Accept-Encoding": "gzip, deflate"})
    assert status == 200 and h.get("content-encoding") == "gzip", (status, h)
    assert h["content-type"] == OPENMETRICS + "; charset=utf-8", h
    om_gz = gzip.decompress(gz).decode()
    assert om_gz.endswith("# EOF\n"), om_gz[-500:]
    assert families(om_gz) == families(om), (families(om_gz), families(om))
