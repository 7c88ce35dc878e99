"""The Redis backend (issue 12): each instance's exporter pushes its merged
state to a real redis-server that the test starts on a free 127.0.0.1 port
(and stops, by PID); `ferrocorn exporter` serves the union of the instances.

Redis is looked at with redis-cli; scrapes are parsed with prometheus_client's
parser."""
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time

import lz4.block
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import APPS, SERVER_BIN, free_port, server_env
from test_hooks import Load, wait_for

pytestmark = pytest.mark.ferrocorn_only

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
HOST = socket.gethostname()


class Redis:
    """A redis-server of our own on a free loopback port, no persistence."""

    def __init__(self, extra=(), port=None, tls=None, password=None, conf=None):
        self.port = port or free_port()
        self.tls = tls  # the CA file: redis-cli talks TLS
        self.password = password  # the default user's: redis-cli logs in
        self.conf = conf  # a config file (a sentinel's must be writable)
        self.dir = tempfile.mkdtemp(prefix="fc-redis-")
        self.extra = list(extra)
        self.proc = None
        self.start()

    def start(self):
        self.log = open(os.path.join(self.dir, "redis.log"), "ab")
        conf = [self.conf] if self.conf else []
        self.proc = subprocess.Popen(
            [REDIS_SERVER] + conf + ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                     "--appendonly", "no", "--dir", self.dir] + self.extra,
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, start_new_session=True)
        wait_for(lambda: self.proc.poll() is None and self.ping(), 10,
                 msg="redis-server on port %d" % self.port)

    def ping(self):
        try:
            return self.cli("PING", timeout=2) == "PONG"
        except (subprocess.SubprocessError, OSError):
            return False

    def cli(self, *args, timeout=10):
        tls = ["--tls", "--cacert", self.tls] if self.tls else []
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        r = subprocess.run([REDIS_CLI, "-h", "127.0.0.1", "-p", str(self.port)] + tls + auth + list(args),
                           capture_output=True, text=True, timeout=timeout,
                           # A state key's document is binary (push format 2).
                           errors="backslashreplace")
        return r.stdout.strip()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()

    def commandstats(self):
        """{command: calls} from INFO commandstats."""
        out = {}
        for line in self.cli("INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_"):
                name, rest = line[len("cmdstat_"):].split(":", 1)
                out[name] = int(dict(kv.split("=") for kv in rest.split(","))["calls"])
        return out


@pytest.fixture
def redis():
    made = []

    def make(*extra, port=None, tls=None, password=None, conf=None):
        r = Redis(extra, port, tls, password, conf)
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()
        shutil.rmtree(r.dir, ignore_errors=True)


def redis_env(r, prefix, interval="0.5", **more):
    env = {"REDIS_ENABLED": "true", "REDIS_PORT": str(r.port), "REDIS_KEY_PREFIX": prefix,
           "REDIS_PUSH_INTERVAL": interval}
    env.update(more)
    return env


def parse(text):
    out = {}
    for fam in text_string_to_metric_families(text):
        for x in fam.samples:
            out[(x.name, frozenset(x.labels.items()))] = x.value
    return out


def scrape(port, timeout=10):
    r = requests.get("http://127.0.0.1:%d/metrics" % port, timeout=timeout)
    assert r.status_code == 200, r.text
    return parse(r.text)


def total(smp, name, **want):
    return sum(v for (n, labels), v in smp.items()
               if n == name and all(dict(labels).get(k) == w for k, w in want.items()))


def read_side(server, r, prefix, **more):
    """`ferrocorn exporter` reading `prefix` from `r`, ready."""
    env = {"REDIS_PORT": str(r.port), "REDIS_KEY_PREFIX": prefix}
    env.update(more)
    s = server(["exporter"], bind=False, ready=None, env=env)
    s.wait_ready(addr=("127.0.0.1", s.metrics_port), path="/health")
    return s


def served(s):
    return total(scrape(s.metrics_port), "gunicorn_requests_total")


def state_key(prefix, instance):
    return "%s:ferrocorn:{%s}:state:%s:%s" % (prefix, prefix, HOST, instance)


def index_key(prefix):
    return "%s:ferrocorn:{%s}:instances" % (prefix, prefix)


def pushing(server, r, prefix, workers="1", **env):
    """A server pushing to `r` under `prefix`, once its first push is in;
    returns it and its state key."""
    s = server(["-w", workers, "wsgiapp:app"], env=redis_env(r, prefix, **env))
    key = state_key(prefix, "127.0.0.1:%d" % s.port)
    wait_for(lambda: r.cli("EXISTS", key) == "1", 10, msg=key)
    return s, key


# -- settings ---------------------------------------------------------------------

@pytest.mark.parametrize("var,value", [
    ("REDIS_PORT", "abc"),
    ("REDIS_PORT", "70000"),
    ("REDIS_DB", "-1"),
    ("REDIS_TTL_SECONDS", "0"),
    ("REDIS_TTL_SECONDS", "5"),  # not longer than the push interval
    ("REDIS_TTL_DISABLED", "maybe"),
    ("REDIS_PUSH_INTERVAL", "0"),
    ("REDIS_PUSH_INTERVAL", "5s"),
    ("REDIS_URL", "http://127.0.0.1:6379"),
    ("REDIS_KEY_PREFIX", "two words"),
])
def test_bad_redis_settings_stop_the_start(run_cmd, var, value):
    r = run_cmd(["-b", "127.0.0.1:%d" % free_port(), "wsgiapp:app"],
                env={"REDIS_ENABLED": "true", var: value})
    assert r.returncode == 1, r
    assert var in r.stderr, r.stderr
    assert "panicked" not in r.output


def test_bad_redis_enabled_and_cli_values_stop_the_start(run_cmd):
    r = run_cmd(["wsgiapp:app"], env={"REDIS_ENABLED": "ture"})
    assert r.returncode == 1 and "REDIS_ENABLED" in r.stderr, r
    r = run_cmd(["--redis-enabled", "--redis-port", "0", "wsgiapp:app"])
    assert r.returncode == 1 and "--redis-port" in r.stderr, r
    r = subprocess.run([SERVER_BIN, "exporter"], env=server_env({"REDIS_URL": "redis://:x@/nodb"}),
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 1 and "REDIS_URL" in r.stderr and ":x@" not in r.stderr, r.stderr
    r = subprocess.run([SERVER_BIN, "exporter", "--bogus"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and "takes no arguments" in r.stderr, r.stderr


def test_print_config_hides_redis_passwords(run_cmd):
    # From the environment: the password, and one inside REDIS_URL.
    r = run_cmd(["--print-config", "wsgiapp:app"],
                env={"REDIS_PASSWORD": "pw-env-secret", "REDIS_URL": "redis://alice:pw-url-secret@h:1/0"})
    assert r.returncode == 0, r
    assert "pw-env-secret" not in r.output and "pw-url-secret" not in r.output, r.stdout
    lines = {k.strip(): v for k, _, v in (l.partition(" = ") for l in r.stdout.splitlines())}
    assert lines["redis_password"] == "***", r.stdout
    assert lines["redis_url"] == "redis://alice:***@h:1/0", r.stdout
    # From the command line and a config file, the node lists too.
    r = run_cmd(["--print-config", "--redis-password", "pw-cli-secret", "wsgiapp:app"],
                config_text="redis_cluster_nodes = 'redis://:pw-node-secret@a:1,b:2'\n")
    assert r.returncode == 0, r
    assert "pw-cli-secret" not in r.output and "pw-node-secret" not in r.output, r.stdout
    assert "redis_cluster_nodes" in r.stdout and "redis://:***@a:1,b:2" in r.stdout, r.stdout
    # Unset stays visible as unset.
    r = run_cmd(["--print-config", "wsgiapp:app"])
    lines = {k.strip(): v for k, _, v in (l.partition(" = ") for l in r.stdout.splitlines())}
    assert lines["redis_password"] == "None", r.stdout


# -- push and read side ---------------------------------------------------------------

def test_two_instances_share_one_redis_and_the_read_side_sums_them(server, redis):
    r = redis()
    prefix = "t2inst"
    # One instance configured by environment variables, one by its config
    # file and command line, as the settings table allows.
    a = server(["-w", "2", "wsgiapp:app"], env=redis_env(r, prefix))
    conf = ("redis_enabled = True\nredis_port = %d\nredis_key_prefix = %r\n" % (r.port, prefix))
    b = server(["-w", "1", "--redis-push-interval", "0.5", "wsgiapp:app"], config_text=conf)
    for s, n in ((a, 7), (b, 11)):
        for _ in range(n):
            assert requests.get(s.url + "/").status_code == 200
    want = {"127.0.0.1:%d" % a.port: served(a), "127.0.0.1:%d" % b.port: served(b)}
    assert sum(want.values()) >= 18
    for s in (a, b):
        key = state_key(prefix, "127.0.0.1:%d" % s.port)
        wait_for(lambda: r.cli("EXISTS", key) == "1", 10, msg=key)
        assert 0 < int(r.cli("TTL", key)) <= 300
    assert set(r.cli("SMEMBERS", index_key(prefix)).split()) == {
        state_key(prefix, i) for i in want}

    rs = read_side(server, r, prefix)

    def current():
        smp = scrape(rs.metrics_port)
        got = {i: total(smp, "gunicorn_requests_total", instance=i, host=HOST) for i in want}
        return smp if got == want else None

    smp = wait_for(current, 10, msg="the read side to show %r" % want)
    assert total(smp, "gunicorn_requests_total", instance="all", host="all") == sum(want.values())
    assert total(smp, "gunicorn_worker_requests_total", instance="all") == sum(want.values())
    # Per-worker series keep their worker_id under their instance.
    workers = {dict(l)["worker_id"] for (n, l) in smp
               if n == "gunicorn_worker_requests_total" and dict(l)["instance"] != "all"}
    assert len(workers) == 3, workers
    # Histograms are summed bucket by bucket.
    assert total(smp, "gunicorn_request_duration_seconds_count", instance="all") == sum(want.values())
    # Gauges are per instance only.
    assert total(smp, "gunicorn_workers", instance="all") == 0
    assert total(smp, "gunicorn_workers", instance="127.0.0.1:%d" % a.port) == 2
    assert total(smp, "ferrocorn_redis_instances") == 2
    # The app servers' own /metrics keep their local state, without labels added.
    local = scrape(a.metrics_port)
    assert total(local, "gunicorn_requests_total") == want["127.0.0.1:%d" % a.port]
    assert not any("instance" in dict(l) for (n, l) in local if n == "gunicorn_requests_total")
    assert total(local, "ferrocorn_redis_up") == 1


def get_doc(r, key):
    """A state key's document, as bytes."""
    out = subprocess.run([REDIS_CLI, "-p", str(r.port), "--raw", "GET", key], capture_output=True,
                         timeout=10).stdout
    assert out.endswith(b"\n"), out[-20:]
    return out[:-1]  # redis-cli's newline


def set_doc(r, key, doc, index):
    """`doc` under `key`, listed in the index as a push would."""
    out = subprocess.run([REDIS_CLI, "-p", str(r.port), "-x", "SET", key], input=doc, capture_output=True,
                         timeout=10)
    assert out.stdout.strip() == b"OK", out
    assert r.cli("SADD", index, key) == "1"


def test_damaged_compressed_documents_are_skipped_and_logged(server, redis):
    """Push format 3 compresses each document's families (LZ4): a truncated
    or damaged one in Redis is left out with one log line, and the other
    instances are served."""
    r = redis()
    prefix = "tdamaged"
    a = server(["-w", "1", "wsgiapp:app"], env=redis_env(r, prefix))
    for _ in range(5):
        assert requests.get(a.url + "/").status_code == 200
    key = state_key(prefix, "127.0.0.1:%d" % a.port)
    wait_for(lambda: r.cli("EXISTS", key) == "1", 10, msg=key)
    doc = get_doc(r, key)
    assert doc[:4] == b"FCP\x03", doc[:4]
    # The header: magic and version, host, instance, time, then the
    # families' size decompressed and the LZ4 block.
    pos = 4
    for _ in range(2):
        pos += 4 + struct.unpack("<I", doc[pos:pos + 4])[0]
    pos += 8
    raw = struct.unpack("<I", doc[pos:pos + 4])[0]
    block = doc[pos + 4:]
    # An LZ4 block of the families, smaller than they are (how much smaller
    # depends on the series pushed so far).
    families = lz4.block.decompress(block, uncompressed_size=raw)
    assert len(families) == raw and len(block) < raw, (raw, len(block))
    assert b"gunicorn_worker_requests" in families
    head = doc[:pos]
    damaged = {
        "truncated": head + doc[pos:pos + 4] + block[:len(block) // 2],
        "garbled": head + doc[pos:pos + 4] + block[:40] + b"\xff" * (len(block) - 40),
        "toolong": head + struct.pack("<I", raw + 1) + block,
        "absurd": head + struct.pack("<I", 0xffffffff) + block,
    }
    index = index_key(prefix)
    bad_keys = []
    for name, bad in damaged.items():
        k = "%s:ferrocorn:{%s}:state:%s:%s" % (prefix, prefix, HOST, name)
        set_doc(r, k, bad, index)
        bad_keys.append(k)
    want = served(a)

    rs = read_side(server, r, prefix)
    inst = "127.0.0.1:%d" % a.port
    wait_for(lambda: total(scrape(rs.metrics_port), "gunicorn_requests_total", instance=inst) == want, 10,
             msg="the read side to show %s's %d requests" % (inst, want))
    for _ in range(3):
        smp = scrape(rs.metrics_port)
        assert total(smp, "ferrocorn_redis_instances") == 1
        assert total(smp, "gunicorn_requests_total", instance=inst) == want
        assert total(smp, "gunicorn_requests_total", instance="all") == want
        time.sleep(0.15)  # past the read side's reuse of a read
    # Scrapes at once (more than the read side renders at a time) each get
    # the whole body.
    bodies = []

    def one():
        r = requests.get("http://127.0.0.1:%d/metrics" % rs.metrics_port, timeout=30)
        bodies.append((r.status_code, r.text))
    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [c for c, _ in bodies] == [200] * 6
    for _, text in bodies:
        assert total(parse(text), "gunicorn_requests_total", instance=inst) == want
    log = rs.log()
    for k in bad_keys:
        assert log.count("redis read: skipping %s: " % k) == 1, log
    assert any("redis read: skipping %s: %s" % (bad_keys[0], why) in log
               for why in ("cannot decompress", "decompressed to")), log
    assert "redis read: skipping %s: claims 4294967295 bytes" % bad_keys[3] in log, log
    assert "panic" not in log, log
    assert rs.proc.poll() is None


def test_a_gunicorn_prometheus_exporter_redis_config_pushes(server, redis):
    # Set the way that exporter's docs do it: os.environ.setdefault in the
    # config file, its redis_when_ready hook assigned (ferrocorn's compat
    # package's: it reports the exporter's push, it pushes nothing itself).
    r = redis()
    conf = ("import os\n"
            "os.environ.setdefault('REDIS_ENABLED', 'true')\n"
            "os.environ.setdefault('REDIS_HOST', '127.0.0.1')\n"
            "os.environ.setdefault('REDIS_PORT', '%d')\n"
            "os.environ.setdefault('REDIS_DB', '3')\n"
            "os.environ.setdefault('REDIS_PASSWORD', '')\n"
            "os.environ.setdefault('REDIS_KEY_PREFIX', 'gpe')\n"
            "from gunicorn_prometheus_exporter.hooks import redis_when_ready\n"
            "when_ready = redis_when_ready\n" % r.port)
    s = server(["-w", "1", "wsgiapp:app"], config_text=conf)
    key = state_key("gpe", "127.0.0.1:%d" % s.port)
    wait_for(lambda: r.cli("-n", "3", "EXISTS", key) == "1", 10, msg=key + " in db 3")
    assert r.cli("EXISTS", key) == "0"
    assert "Redis metrics storage enabled - ferrocorn's exporter pushes the metrics to " \
        "Redis (prefix 'gpe')" in s.log()


def test_final_push_at_shutdown_and_ttl(server, redis):
    r = redis()
    prefix = "tfinal"
    s = server(["-w", "2", "wsgiapp:app"], env=redis_env(r, prefix, interval="30"))
    # The first push happens at start; these requests are after it, and the
    # interval is long: only the push at shutdown can carry them.
    time.sleep(0.5)
    for _ in range(9):
        assert requests.get(s.url + "/").status_code == 200
    n = served(s)
    assert s.stop() == 0
    rs = read_side(server, r, prefix)
    smp = scrape(rs.metrics_port)
    assert total(smp, "gunicorn_requests_total", instance="127.0.0.1:%d" % s.port) == n
    # The key stays for its TTL after a clean shutdown with the TTL on.
    assert 0 < int(r.cli("TTL", state_key(prefix, "127.0.0.1:%d" % s.port))) <= 300


def test_ttl_disabled_keys_stay_until_a_clean_shutdown_removes_them(server, redis):
    r = redis()
    prefix = "tnottl"
    s, key = pushing(server, r, prefix, REDIS_TTL_DISABLED="true")
    assert r.cli("TTL", key) == "-1"
    # HUP restarts the exporter: the instance lives on, so do its keys.
    s.signal(signal.SIGHUP)
    s.wait_log("Starting metrics exporter", 10)
    time.sleep(1.5)
    assert r.cli("EXISTS", key) == "1"
    assert s.stop() == 0
    assert r.cli("EXISTS", key) == "0"
    assert r.cli("SISMEMBER", index_key(prefix), key) == "0"
    assert "removed %s at shutdown" % key in s.log()


def test_an_instance_that_dies_leaves_the_read_side_after_the_ttl(server, redis):
    r = redis()
    prefix = "tdies"
    s = server(["-w", "1", "wsgiapp:app"], env=redis_env(r, prefix, REDIS_TTL_SECONDS="2"))
    inst = "127.0.0.1:%d" % s.port
    rs = read_side(server, r, prefix)
    wait_for(lambda: total(scrape(rs.metrics_port), "gunicorn_workers", instance=inst) == 1, 10,
             msg="the instance on the read side")
    s.kill()  # SIGKILL to the whole group: no clean-up
    time.sleep(1.0)
    assert total(scrape(rs.metrics_port), "gunicorn_workers", instance=inst) == 1
    wait_for(lambda: total(scrape(rs.metrics_port), "ferrocorn_redis_instances") == 0, 5,
             msg="the dead instance to expire")
    assert r.cli("SMEMBERS", index_key(prefix)) == ""


# -- cost per request ---------------------------------------------------------------------

def test_redis_commands_per_request_is_zero(server, redis):
    r = redis()
    prefix = "tcost"
    s, _ = pushing(server, r, prefix, workers="2", interval="1")
    pushes0 = total(scrape(s.metrics_port), "ferrocorn_redis_pushes_total")
    before = r.commandstats()
    n0 = served(s)
    out = subprocess.run(["wrk", "-t", "2", "-c", "4", "-d", "3s", s.url + "/"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    n = served(s) - n0
    after = r.commandstats()
    pushes = total(scrape(s.metrics_port), "ferrocorn_redis_pushes_total") - pushes0
    calls = {c: after.get(c, 0) - before.get(c, 0) for c in after}
    calls.pop("info", None)  # ours, the commandstats themselves
    spent = sum(calls.values())
    assert n >= 10000, (n, out.stdout)
    # Every command Redis saw is one of the pushes' three (SET, SADD,
    # EXPIRE), whatever the number of requests.
    assert {c for c, k in calls.items() if k} <= {"set", "sadd", "expire"}, calls
    assert spent <= 3 * (pushes + 1), (calls, pushes)
    print("requests=%d redis commands=%d pushes=%d commands/request=%.6f"
          % (n, spent, pushes, spent / n))
    assert spent / n < 0.002


# -- faults ---------------------------------------------------------------------------------

def test_redis_down_at_start_then_up(server, redis):
    port = free_port()
    prefix = "tdownstart"
    s = server(["-w", "1", "wsgiapp:app"],
               env={"REDIS_ENABLED": "true", "REDIS_PORT": str(port), "REDIS_KEY_PREFIX": prefix,
                    "REDIS_PUSH_INTERVAL": "0.3"})
    s.wait_log("failed: cannot connect", 10)
    for _ in range(5):
        assert requests.get(s.url + "/").status_code == 200
    time.sleep(1.5)  # several failed pushes
    smp = scrape(s.metrics_port)
    assert total(smp, "gunicorn_workers") == 1
    assert total(smp, "ferrocorn_redis_up") == 0
    assert total(smp, "ferrocorn_redis_pushes_total", result="error") >= 3
    assert s.log().count("failed: cannot connect") == 1, s.log()
    r = redis(port=port)
    key = state_key(prefix, "127.0.0.1:%d" % s.port)
    wait_for(lambda: r.cli("EXISTS", key) == "1", 5, msg=key)
    s.wait_log("is reachable again after", 5)


def test_redis_stopped_and_slow_during_load(server, redis):
    r = redis()
    prefix = "tfault"
    interval = 1.0
    s = server(["-w", "2", "-k", "gthread", "--threads", "4", "wsgiapp:app"],
               env=redis_env(r, prefix, interval=str(interval)))
    rs = read_side(server, r, prefix)
    inst = "127.0.0.1:%d" % s.port
    wait_for(lambda: total(scrape(rs.metrics_port), "gunicorn_workers", instance=inst) == 2, 10,
             msg="the instance on the read side")
    load = Load(s.url, path="/", threads=4, keepalive=(True, False), max_seconds=60)
    try:
        time.sleep(1.0)
        # Slow: redis-server stopped in its tracks (SIGSTOP), connections open.
        r.proc.send_signal(signal.SIGSTOP)
        time.sleep(0.2)
        for _ in range(3):
            t0 = time.monotonic()
            smp = scrape(s.metrics_port, timeout=5)
            assert time.monotonic() - t0 < 0.5, "a hung Redis delayed a local scrape"
            assert total(smp, "gunicorn_workers") == 2
            time.sleep(interval)
        r.proc.send_signal(signal.SIGCONT)
        time.sleep(1.0)
        # Down: redis-server gone (its data with it: no persistence).
        r.stop()
        time.sleep(3 * interval)
        smp = scrape(s.metrics_port, timeout=5)
        assert total(smp, "gunicorn_workers") == 2
        assert total(smp, "gunicorn_requests_total") > 0
        assert total(smp, "ferrocorn_redis_up") == 0
        r.start()
        t_up = time.monotonic()
    finally:
        load.stop()
    assert load.errors == [], load.errors[:5]
    assert len(load.ok) > 100 and all(st == 200 for (_, st, _) in load.ok)
    n = served(s)

    def current():
        smp = scrape(rs.metrics_port)
        return total(smp, "gunicorn_requests_total", instance=inst) == n and time.monotonic()

    t_current = wait_for(current, 10, interval=0.05, msg="the read side to be current")
    took = t_current - t_up
    print("read side current %.2fs after Redis came back (push interval %.1fs)" % (took, interval))
    assert took <= 2 * interval, took
    log = s.log()
    # One line per outage (the stall and the stop may be one or two outages),
    # and a line for each recovery; never one per failed push.
    failed = log.count("redis push: redis://127.0.0.1:%d/0 failed" % r.port)
    recovered = log.count("redis push: redis://127.0.0.1:%d/0 is reachable again" % r.port)
    assert 1 <= failed <= 2 and recovered == failed, log
    assert "panicked" not in log


# -- Redis Cluster ------------------------------------------------------------------------------

def cluster_port():
    """A free port whose cluster bus port (+10000) is valid and free too."""
    while True:
        port = free_port()
        if port + 10000 <= 65535:
            try:
                with socket.socket() as b:
                    b.bind(("127.0.0.1", port + 10000))
                return port
            except OSError:
                pass


@pytest.fixture
def cluster(redis):
    """Three masters on free ports, joined with redis-cli --cluster create."""
    nodes = [redis("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                   "--cluster-node-timeout", "5000", port=cluster_port()) for _ in range(3)]
    addrs = ["127.0.0.1:%d" % n.port for n in nodes]
    out = subprocess.run([REDIS_CLI, "--cluster", "create"] + addrs + ["--cluster-replicas", "0",
                         "--cluster-yes"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    wait_for(lambda: all("cluster_state:ok" in n.cli("CLUSTER", "INFO") for n in nodes), 20,
             msg="cluster_state:ok on the three nodes")
    return nodes


def test_two_instances_through_a_three_master_cluster(server, cluster):
    seeds = ",".join("127.0.0.1:%d" % n.port for n in cluster)
    prefix = "tcluster"
    env = {"REDIS_ENABLED": "true", "REDIS_CLUSTER_NODES": seeds, "REDIS_KEY_PREFIX": prefix,
           "REDIS_PUSH_INTERVAL": "0.5"}
    a = server(["-w", "2", "wsgiapp:app"], env=env)
    # A single seed is enough: the client discovers the other masters.
    b = server(["-w", "1", "wsgiapp:app"], env=dict(env, REDIS_CLUSTER_NODES="127.0.0.1:%d" % cluster[2].port))
    for s, n in ((a, 5), (b, 8)):
        for _ in range(n):
            assert requests.get(s.url + "/").status_code == 200
    want = {"127.0.0.1:%d" % a.port: served(a), "127.0.0.1:%d" % b.port: served(b)}
    env.pop("REDIS_ENABLED")
    rs = server(["exporter"], bind=False, ready=None, env=env)
    rs.wait_ready(addr=("127.0.0.1", rs.metrics_port), path="/health")

    def current():
        smp = scrape(rs.metrics_port)
        got = {i: total(smp, "gunicorn_requests_total", instance=i) for i in want}
        return smp if got == want else None

    smp = wait_for(current, 10, msg="the read side to show %r" % want)
    assert total(smp, "gunicorn_requests_total", instance="all") == sum(want.values())
    # The keys live on the master that owns the prefix's hash tag slot.
    slot = int(cluster[0].cli("CLUSTER", "KEYSLOT", index_key(prefix)))
    assert slot == int(cluster[0].cli("CLUSTER", "KEYSLOT", state_key(prefix, "127.0.0.1:%d" % a.port)))
    holders = [n for n in cluster if n.cli("EXISTS", state_key(prefix, "127.0.0.1:%d" % a.port)) == "1"]
    assert len(holders) == 1
    assert sorted(holders[0].cli("SMEMBERS", index_key(prefix)).split()) == sorted(
        state_key(prefix, i) for i in want)


# -- Sentinel ------------------------------------------------------------------------------------

def test_sentinel_names_the_master_and_a_failover_is_followed(server, redis):
    master = redis()
    replica = redis("--replicaof", "127.0.0.1", str(master.port))
    d = tempfile.mkdtemp(prefix="fc-sentinel-")
    conf = os.path.join(d, "sentinel.conf")
    with open(conf, "w") as f:
        f.write("sentinel monitor fcmaster 127.0.0.1 %d 1\n"
                "sentinel down-after-milliseconds fcmaster 1000\n"
                "sentinel failover-timeout fcmaster 5000\n" % master.port)
    sentinel = redis("--sentinel", conf=conf)
    wait_for(lambda: "slaves=1" in sentinel.cli("INFO", "sentinel"), 20,
             msg="the sentinel to see the replica\n" + sentinel.cli("INFO", "sentinel"))
    prefix = "tsentinel"
    env = {"REDIS_ENABLED": "true", "REDIS_SENTINEL_NODES": "127.0.0.1:%d" % sentinel.port,
           "REDIS_SENTINEL_SERVICE": "fcmaster", "REDIS_KEY_PREFIX": prefix, "REDIS_PUSH_INTERVAL": "0.5"}
    s = server(["-w", "1", "wsgiapp:app"], env=env)
    key = state_key(prefix, "127.0.0.1:%d" % s.port)
    wait_for(lambda: master.cli("EXISTS", key) == "1", 10, msg=key + " on the master")
    load = Load(s.url, path="/", threads=2, max_seconds=60)
    try:
        master.stop()
        wait_for(lambda: sentinel.cli("SENTINEL", "get-master-addr-by-name", "fcmaster").split()[-1:]
                 == [str(replica.port)], 30, msg="the failover to the replica")
        # The replica, now master, takes the pushes: the document changes.
        first = replica.cli("GET", key)
        wait_for(lambda: replica.cli("GET", key) != first, 10, msg="a push to the new master\n" + s.log())
    finally:
        load.stop()
    assert load.errors == [] and len(load.ok) > 0, load.errors[:5]
    n = served(s)
    env.pop("REDIS_ENABLED")
    rs = server(["exporter"], bind=False, ready=None, env=env)
    rs.wait_ready(addr=("127.0.0.1", rs.metrics_port), path="/health")
    wait_for(lambda: total(scrape(rs.metrics_port), "gunicorn_requests_total",
                           instance="127.0.0.1:%d" % s.port) == n, 10, msg="the read side via the sentinel")
    shutil.rmtree(d, ignore_errors=True)


# -- authentication and TLS -------------------------------------------------------------------

def test_password_and_acl_user(server, redis):
    # The default user needs a password; `app` is an ACL user allowed only
    # the commands ferrocorn sends, on its own keys.
    r = redis("--requirepass", "s3cret-default",
              "--user", *("app on >app-pw ~acl:* &* -@all +set +sadd +expire +smembers +mget +srem "
                          "+del +ping").split(),
              password="s3cret-default")
    a = server(["-w", "1", "wsgiapp:app"],
               env=redis_env(r, "acl", REDIS_PASSWORD="s3cret-default"))
    b = server(["-w", "1", "wsgiapp:app"],
               env={"REDIS_ENABLED": "true", "REDIS_KEY_PREFIX": "acl", "REDIS_PUSH_INTERVAL": "0.5",
                    "REDIS_URL": "redis://app:app-pw@127.0.0.1:%d/0" % r.port})
    bad = server(["-w", "1", "wsgiapp:app"],
                 env={"REDIS_ENABLED": "true", "REDIS_KEY_PREFIX": "acl", "REDIS_PUSH_INTERVAL": "0.3",
                      "REDIS_URL": "redis://app:wrong-pw@127.0.0.1:%d/0" % r.port})
    rs = read_side(server, r, "acl", REDIS_URL="redis://app:app-pw@127.0.0.1:%d/0" % r.port)
    insts = {"127.0.0.1:%d" % s.port for s in (a, b)}

    def both():
        smp = scrape(rs.metrics_port)
        return {dict(l)["instance"] for (n, l) in smp if n == "gunicorn_workers"} == insts

    wait_for(both, 10, msg="both authenticated instances on the read side")
    # The wrong password: one error line, requests and local /metrics fine.
    bad.wait_log("redis push: redis://app:***@127.0.0.1:%d/0 failed" % r.port, 10)
    time.sleep(1.0)
    assert requests.get(bad.url + "/").status_code == 200
    assert total(scrape(bad.metrics_port), "ferrocorn_redis_up") == 0
    log = bad.log()
    assert log.count("failed:") == 1, log
    for s in (a, b, bad, rs):
        assert "s3cret-default" not in s.log() and "app-pw" not in s.log()
        assert "wrong-pw" not in s.log()


def make_tls_files(d):
    """A CA and a server certificate for 127.0.0.1, with openssl."""
    def ossl(*args):
        subprocess.run(["openssl"] + list(args), cwd=d, check=True, capture_output=True, timeout=60)
    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
         "-days", "2", "-subj", "/CN=ferrocorn test CA")
    ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
         "-subj", "/CN=127.0.0.1")
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    ossl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    return {n: os.path.join(d, n) for n in ("ca.pem", "server.pem", "server.key")}


def test_rediss_to_a_tls_redis_server(server, redis):
    d = tempfile.mkdtemp(prefix="fc-redis-tls-")
    files = make_tls_files(d)
    port = free_port()
    r = redis("--port", "0", "--tls-port", str(port), "--tls-cert-file", files["server.pem"],
              "--tls-key-file", files["server.key"], "--tls-ca-cert-file", files["ca.pem"],
              "--tls-auth-clients", "no", port=port, tls=files["ca.pem"])
    url = "rediss://127.0.0.1:%d/0" % port
    # The test CA is trusted through SSL_CERT_FILE (rustls-native-certs).
    env = {"REDIS_ENABLED": "true", "REDIS_KEY_PREFIX": "tls", "REDIS_PUSH_INTERVAL": "0.5",
           "REDIS_URL": url, "SSL_CERT_FILE": files["ca.pem"]}
    s = server(["-w", "1", "wsgiapp:app"], env=env)
    key = state_key("tls", "127.0.0.1:%d" % s.port)
    wait_for(lambda: r.cli("EXISTS", key) == "1", 10, msg=key + " over TLS\n" + s.log())
    rs = read_side(server, r, "tls", REDIS_URL=url, SSL_CERT_FILE=files["ca.pem"])
    # (the first push may have gone out before the worker booted)
    wait_for(lambda: total(scrape(rs.metrics_port), "gunicorn_workers", instance="127.0.0.1:%d" % s.port) == 1,
             10, msg="the worker on the read side, over TLS")
    # Without the CA, the certificate is refused: logged once, serving goes on.
    untrusted = server(["-w", "1", "wsgiapp:app"], env=dict(env, SSL_CERT_FILE=os.path.join(d, "none.pem")))
    untrusted.wait_log("redis push: %s failed" % url, 10)
    assert requests.get(untrusted.url + "/").status_code == 200
    # Plain redis:// to the TLS port fails the same way.
    plain = server(["-w", "1", "wsgiapp:app"], env=dict(env, REDIS_URL="redis://127.0.0.1:%d/0" % port))
    plain.wait_log("redis push: redis://127.0.0.1:%d/0 failed" % port, 15)
    assert requests.get(plain.url + "/").status_code == 200
    shutil.rmtree(d, ignore_errors=True)


def test_redis_enabled_with_no_metrics_warns(server):
    s = server(["-w", "1", "--no-metrics", "wsgiapp:app"], env={"REDIS_ENABLED": "true"})
    assert "REDIS_ENABLED) has no effect with --no-metrics" in s.log()
    assert s.exporter_pid() is None
