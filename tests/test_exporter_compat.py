"""gunicorn-prometheus-exporter's Python API inside ferrocorn
(gunicorn_compat/gunicorn_prometheus_exporter, built into the binary).

Every test starts the real binary, except the configuration-API script,
which also runs in the venv's own Python with gunicorn_compat/ on sys.path.
Configs are the exporter's guide's (docs/compatibility.md links them),
changed only in paths and ports. Three environments:

- the project venv (it has the original gunicorn-prometheus-exporter 0.2.4
  and redis-py installed);
- a bare venv (nothing installed: the package must still import, and the
  backend API must name redis-py in its ImportError);
- a separate throwaway venv with the original package 0.2.4 pip-installed
  (and its dependencies): the configs still run on ferrocorn's package.

Against the wheel's command (scripts/test.sh), which runs in its own venv
whatever VIRTUAL_ENV says, the last two are that venv;
tests/test_packaging.py runs a guide config with only the wheel installed.
"""

import json
import os
import re
import signal
import subprocess
import tempfile

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import IS_WHEEL, REPO, SERVER_BIN, VENV, free_port, server_env
from test_hooks import alive, children_of, wait_for
from test_redis import redis  # noqa: F401  (the fixture)

# ferrocorn's own package: TEST_SERVER=gunicorn skips the file.
pytestmark = pytest.mark.ferrocorn_only

COMPAT_DIR = os.path.join(REPO, "gunicorn_compat")

APP = r'''
import json
import os
import sys


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/env":
        data = {k: os.environ.get(k) for k in
                ("GUNICORN_WORKERS", "GUNICORN_BIND", "GUNICORN_WORKER_CLASS")}
    elif path == "/compat":
        import gunicorn_prometheus_exporter as g
        arbiter = sys.modules.get("gunicorn.arbiter")
        data = {"file": g.__file__, "compat": getattr(g, "FERROCORN_COMPAT", False),
                "arbiter": arbiter.Arbiter.__name__ if arbiter else None}
    else:
        data = {"ok": True}
    body = json.dumps(data).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''


def app_dir():
    d = tempfile.mkdtemp(prefix="fc-gpe-")
    with open(os.path.join(d, "app.py"), "w") as f:
        f.write(APP)
    return d


def venv_env(venv):
    """server_env() extras that make the binary use `venv`."""
    return {"VIRTUAL_ENV": venv,
            "PATH": os.path.join(venv, "bin") + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin")}


def scrape(s):
    r = requests.get("http://127.0.0.1:%d/metrics" % s.metrics_port, timeout=5)
    assert r.status_code == 200, r.text
    sums = {}
    for fam in text_string_to_metric_families(r.text):
        for sm in fam.samples:
            sums[sm.name] = sums.get(sm.name, 0) + sm.value
    return sums  # name -> sum over label sets


def wait_metrics(s, name, timeout=15.0):
    out = {}

    def ok():
        try:
            out.update(scrape(s))
        except requests.RequestException:
            return False
        return name in out
    wait_for(ok, timeout, msg="%s on the metrics port" % name)
    return out


@pytest.fixture(scope="module")
def bare_venv():
    """A venv with nothing installed (no pip either)."""
    d = tempfile.mkdtemp(prefix="fc-bare-venv-")
    subprocess.run([os.path.join(VENV, "bin", "python"), "-m", "venv", "--without-pip", d],
                   check=True)
    return d


@pytest.fixture(scope="module")
def original_venv():
    """A separate venv with the original gunicorn-prometheus-exporter 0.2.4
    and its dependencies installed (versions as tests/requirements.txt)."""
    d = tempfile.mkdtemp(prefix="fc-gpe-venv-")
    subprocess.run([os.path.join(VENV, "bin", "python"), "-m", "venv", d], check=True)
    r = subprocess.run([os.path.join(d, "bin", "pip"), "install", "-q", "--disable-pip-version-check",
                        "-c", os.path.join(REPO, "tests", "requirements.txt"),
                        "gunicorn-prometheus-exporter==0.2.4"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return d


# -- the guide's configurations ----------------------------------------------------

EXAMPLES_GPE = os.path.join(REPO, "examples", "gunicorn-prometheus-exporter")


def example_conf(name):
    """examples/gunicorn-prometheus-exporter/NAME/gunicorn.conf.py: a config
    of the exporter's guide, unchanged."""
    return os.path.join(EXAMPLES_GPE, name, "gunicorn.conf.py")


def start_guide(server, name, args=(), env=None):
    """`ferrocorn -c <example NAME's config> app:app ARGS` serving the test
    app (APP) from a directory of its own; the bind address, metrics port
    and multiprocess directory are the test's (the command line wins over
    the config's `bind`, the environment over its os.environ.setdefault)."""
    d = app_dir()
    env = dict({"PROMETHEUS_MULTIPROC_DIR": os.path.join(d, "mp")}, **(env or {}))
    return server(["-c", example_conf(name), "app:app"] + list(args), cwd=d, env=env)


def check_serves_and_stops(s, workers, default_when_ready=True):
    log = s.log()
    assert "Server starting - initializing PrometheusMaster metrics" in log, log
    if default_when_ready:
        assert "is ferrocorn's exporter (no second server started)" in log, log
    assert "Metrics server started successfully on port %d" % s.metrics_port in log, log
    assert "Failed to start metrics server" not in log, log
    for _ in range(5):
        assert requests.get(s.url + "/", timeout=5).json() == {"ok": True}
    compat = requests.get(s.url + "/compat", timeout=5).json()
    assert compat["compat"] is True and compat["file"].startswith("ferrocorn:gunicorn_compat/"), compat
    assert compat["arbiter"] in (None, "Arbiter"), "gunicorn was patched: %r" % compat
    smp = wait_metrics(s, "gunicorn_worker_requests_total")
    wait_for(lambda: scrape(s).get("gunicorn_workers") == workers, 15, msg="%d workers" % workers)
    assert smp["gunicorn_worker_requests_total"] >= 1
    assert s.stop() == 0
    log = s.log()
    assert "Server shutting down - cleaning up Prometheus metrics server" in log, log
    assert "Server shutdown complete" in log, log
    assert "Traceback" not in log, log


def test_guide_basic_config_with_hooks(server):
    """Hooks imported from the package; the original is installed in this
    venv too, and is never imported."""
    s = start_guide(server, "api-basic")
    wait_for(lambda: s.log().count("Updated GUNICORN_WORKER_CLASS from CLI") == 2, 10,
             msg="post_fork in both workers")
    log = s.log()
    assert "=== Gunicorn Configuration ===" in log and "=== End Configuration ===" in log, log
    env = requests.get(s.url + "/env", timeout=5).json()
    assert env == {"GUNICORN_WORKERS": "2", "GUNICORN_BIND": "127.0.0.1:%d" % s.port,
                   "GUNICORN_WORKER_CLASS": "gunicorn_prometheus_exporter.PrometheusWorker"}, env
    check_serves_and_stops(s, 2)


def test_post_fork_takes_the_cli_values(server):
    """The guide's CLI overrides: --workers, --bind, --worker-class end up
    in GUNICORN_WORKERS, GUNICORN_BIND, GUNICORN_WORKER_CLASS."""
    s = start_guide(server, "api-basic",
                    args=["--workers", "3", "--worker-class",
                          "gunicorn_prometheus_exporter.PrometheusThreadWorker", "--threads", "2"])
    wait_for(lambda: s.log().count("Updated GUNICORN_WORKERS from CLI: 3") == 3, 10,
             msg="post_fork in three workers")
    env = requests.get(s.url + "/env", timeout=5).json()
    assert env == {"GUNICORN_WORKERS": "3", "GUNICORN_BIND": "127.0.0.1:%d" % s.port,
                   "GUNICORN_WORKER_CLASS": "gunicorn_prometheus_exporter.PrometheusThreadWorker"}
    s.assert_kind("gthread")
    assert s.stop() == 0


def test_worker_int_refreshes_gauges_and_quits(server):
    s = start_guide(server, "api-basic", args=["--log-level", "debug"])
    wait_for(lambda: len(children_of(s.proc.pid)) == 2, 10, msg="two workers")
    victim = children_of(s.proc.pid)[0]
    os.kill(victim, signal.SIGINT)
    wait_for(lambda: not alive(victim), 10, msg="worker %d gone" % victim)
    s.wait_log("Worker (pid:%d) exited." % victim)
    log = s.log()
    assert "Worker %d received interrupt signal" % victim in log, log
    m = re.search(r"Updated worker metrics for worker_\d+_%d: \{'memory_bytes': (\d+)" % victim, log)
    assert m and int(m.group(1)) > 1000000, log
    assert "Called handle_quit() on worker %d" % victim in log, log
    assert log.count("received interrupt signal") == 1, "worker_int ran twice:\n" + log
    assert "exited with code" not in log, log
    wait_for(lambda: len(children_of(s.proc.pid)) == 2, 10, msg="a replacement worker")
    assert requests.get(s.url + "/", timeout=5).status_code == 200
    assert s.stop() == 0


def test_advanced_hooks_with_managers_log_their_messages(server):
    s = start_guide(server, "advanced-hooks")
    log = s.log()
    assert "Custom metrics server setup on port %d" % s.metrics_port in log, log
    assert "Custom metrics server started successfully" in log, log
    assert "Custom metrics server failed" not in log and "setup failed" not in log, log
    check_serves_and_stops(s, 4, default_when_ready=False)


# The API reference's "Custom Hook Context" and "Direct Manager Usage",
# each manager call's result written to the error log as `RESULT name value`.
MANAGERS_CONF = """
import logging
import os

from gunicorn_prometheus_exporter.hooks import (
    HookContext, HookManager, EnvironmentManager, MetricsServerManager, WorkerManager,
    ProcessManager, default_on_starting, default_on_exit,
)

workers = 1
worker_class = "gunicorn_prometheus_exporter.PrometheusWorker"
on_starting = default_on_starting
on_exit = default_on_exit
logger = logging.getLogger("managers")


def result(name, value):
    logger.warning("RESULT %s %r", name, value)


def your_custom_function(context):
    result("context", (type(context.server).__name__, context.worker, context.logger.name))


def failing_function(context):
    raise RuntimeError("boom")


def when_ready(server):
    context = HookContext(server=server)
    manager = HookManager()
    result("safe_ok", manager.safe_execute(your_custom_function, context))
    result("safe_fail", manager.safe_execute(failing_function, context))
    env_manager = EnvironmentManager(logger)
    env_manager.update_from_cli(server.cfg)
    result("env", (os.environ["GUNICORN_WORKERS"], os.environ["GUNICORN_BIND"]))
    metrics_manager = MetricsServerManager(logger)
    setup = metrics_manager.setup_server()
    result("setup_port", setup[0])
    result("start", metrics_manager.start_server(*setup))
    result("start_other_port", metrics_manager.start_server(1, setup[1]))
    process_manager = ProcessManager(logger)
    process_manager.cleanup_processes()
    result("cleanup", "done")
    # A process of the app's own, left for default_on_exit to terminate.
    import subprocess
    result("sleeper", subprocess.Popen(["sleep", "300"]).pid)


def pre_request(worker, req):
    if req.path == "/quit":
        WorkerManager(logger).shutdown_worker(worker)


def post_worker_init(worker):
    worker_manager = WorkerManager(logger)
    result("update", worker_manager.update_metrics(worker))
    from gunicorn_prometheus_exporter import PrometheusWorker
    result("isinstance", isinstance(worker, PrometheusWorker))
    result("worker_id", worker.worker_id == "worker_%d_%d" % (worker.age, os.getpid()))
"""


def results(log):
    out = {}
    for line in log.splitlines():
        if "RESULT " in line:
            name, _, value = line.split("RESULT ", 1)[1].partition(" ")
            out[name] = value
    return out


def test_manager_calls_return_what_the_guide_says(server):
    s = server(["app:app"], cwd=app_dir(), config_text=MANAGERS_CONF)
    wait_for(lambda: "worker_id" in results(s.log()), 10, msg="post_worker_init results")
    got = results(s.log())
    sleeper = int(got.pop("sleeper"))
    assert alive(sleeper)
    assert got == {
        "context": "('Arbiter', None, 'gunicorn_prometheus_exporter.hooks')",
        "safe_ok": "True", "safe_fail": "False",
        "env": "('1', '127.0.0.1:%d')" % s.port,
        "setup_port": str(s.metrics_port), "start": "True", "start_other_port": "False",
        "cleanup": "'done'", "update": "True", "isinstance": "True", "worker_id": "True",
    }, s.log()
    log = s.log()
    assert "Hook execution failed: boom" in log, log
    assert "ferrocorn's exporter serves the metrics on port %d, not 1" % s.metrics_port in log
    # ProcessManager left ferrocorn's exporter alone: metrics are still served.
    assert "gunicorn_workers" in wait_metrics(s, "gunicorn_workers")
    # shutdown_worker(): handle_quit(), the worker's quick exit (SystemExit
    # at once, so the call does not return there); a new worker comes.
    def workers():
        return [p for p in children_of(s.proc.pid) if p != sleeper]
    first = workers()
    try:
        requests.get(s.url + "/quit", timeout=5)
    except requests.RequestException:
        pass  # the worker may go before it answers
    wait_for(lambda: not any(alive(p) for p in first), 10, msg="the worker quit")
    wait_for(lambda: len(workers()) == 1, 10, msg="a replacement worker")
    assert requests.get(s.url + "/", timeout=5).status_code == 200
    assert s.stop() == 0
    # default_on_exit's ProcessManager terminated the app's process.
    assert "Terminating child process: sleep (PID: %d)" % sleeper in s.log(), s.log()
    assert not alive(sleeper)


@pytest.mark.parametrize("name,kind", [
    ("PrometheusWorker", "sync"),
    ("PrometheusThreadWorker", "gthread"),
    ("PrometheusEventletWorker", "eventlet"),
    ("PrometheusGeventWorker", "gevent"),
])
def test_worker_class_imported_as_a_name(server, name, kind):
    """`from gunicorn_prometheus_exporter import X; worker_class = X`."""
    conf = ("from gunicorn_prometheus_exporter import %s\n"
            "worker_class = %s\n"
            "threads = 2\n"
            "def post_fork(server, worker):\n"
            "    server.log.info('post_fork worker is a %%s: %%s' %% (type(worker).__name__,\n"
            "                    isinstance(worker, %s)))\n" % (name, name, name))
    s = server(["-w", "1", "app:app"], cwd=app_dir(), config_text=conf)
    s.assert_kind(kind)
    s.wait_log("post_fork worker is a %s: True" % name)
    assert requests.get(s.url + "/", timeout=5).json() == {"ok": True}
    assert s.stop() == 0


def test_tornado_worker_name(server):
    s = server(["-w", "1", "-k", "gunicorn_prometheus_exporter.PrometheusTornadoWorker", "app:app"],
               cwd=app_dir())
    assert requests.get(s.url + "/", timeout=5).json() == {"ok": True}
    assert "Using worker: gunicorn_prometheus_exporter.PrometheusTornadoWorker" in s.log()
    assert s.stop() == 0


# -- GUNICORN_* variables ---------------------------------------------------------------

def test_gunicorn_variables_are_defaults_below_the_config_file(server):
    d = app_dir()
    s = server(["app:app"], cwd=d, env={"GUNICORN_WORKERS": "3", "GUNICORN_TIMEOUT": "41",
                                        "GUNICORN_KEEPALIVE": "7"},
               config_text="keepalive = 4\n")
    wait_for(lambda: len(children_of(s.proc.pid)) == 3, 10, msg="GUNICORN_WORKERS=3 workers")
    assert s.stop() == 0
    r = subprocess.run([SERVER_BIN, "--print-config", "app:app"], cwd=d, capture_output=True,
                       text=True, env=server_env({"GUNICORN_WORKERS": "3", "GUNICORN_TIMEOUT": "41",
                                                  "GUNICORN_KEEPALIVE": "7",
                                                  "WEB_CONCURRENCY": "5"}))
    cfg = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    cfg = {k.strip(): v.strip() for k, v in cfg.items()}
    assert (cfg["workers"], cfg["timeout"], cfg["keepalive"]) == ("5", "41", "7"), r.stdout
    r = subprocess.run([SERVER_BIN, "--check-config", "app:app"], cwd=d, capture_output=True,
                       text=True, env=server_env({"GUNICORN_TIMEOUT": "soon"}))
    assert r.returncode == 1
    assert "invalid value for GUNICORN_TIMEOUT (timeout): 'soon' is not an integer" in r.stderr


# -- the configuration API --------------------------------------------------------------

CONFIG_SCRIPT = r'''
import io
import json
import logging
import os

for k in ("PROMETHEUS_METRICS_PORT", "PROMETHEUS_BIND_ADDRESS", "GUNICORN_WORKERS",
          "PROMETHEUS_SSL_CERTFILE", "PROMETHEUS_SSL_KEYFILE", "REDIS_ENABLED"):
    os.environ.pop(k, None)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ["FC_TEST_MPDIR"]

logs = io.StringIO()
handler = logging.StreamHandler(logs)
logging.getLogger("gunicorn_prometheus_exporter").addHandler(handler)
logging.getLogger("gunicorn_prometheus_exporter").setLevel(logging.INFO)

from gunicorn_prometheus_exporter.config import (
    ConfigManager, ConfigState, ExporterConfig, cleanup_config, get_config, initialize_config)
from gunicorn_prometheus_exporter import get_config as top_get_config

out = {}


def error(fn, *a, **kw):
    try:
        fn(*a, **kw)
    except Exception as e:
        return "%s: %s" % (type(e).__name__, e)
    return None


out["missing"] = error(get_config)
out["missing_log"] = logs.getvalue()
out["port_message"] = error(lambda: ExporterConfig().prometheus_metrics_port)
initialize_config(PROMETHEUS_METRICS_PORT="9091", PROMETHEUS_BIND_ADDRESS="0.0.0.0",
                  GUNICORN_WORKERS="2")
exporter_config = get_config()
out["values"] = [exporter_config.prometheus_metrics_port, exporter_config.prometheus_bind_address,
                 exporter_config.gunicorn_workers, exporter_config.gunicorn_timeout, exporter_config.gunicorn_keepalive,
                 exporter_config.redis_enabled, exporter_config.redis_host, exporter_config.redis_port, exporter_config.redis_db,
                 exporter_config.redis_key_prefix, exporter_config.redis_ttl_seconds, exporter_config.redis_ttl_disabled,
                 exporter_config.prometheus_ssl_enabled, exporter_config.prometheus_multiproc_dir == os.environ["FC_TEST_MPDIR"]]
out["same"] = top_get_config() is exporter_config
out["again"] = error(initialize_config)
os.environ["GUNICORN_TIMEOUT"] = "45"
out["lazy"] = exporter_config.gunicorn_timeout
cleanup_config()
manager = ConfigManager()
out["states"] = [manager.state.value]
out["not_init"] = error(manager.get_config)
logs.seek(0)
logs.truncate()
out["bad_port"] = error(manager.initialize, PROMETHEUS_METRICS_PORT="80")
out["bad_port_log"] = logs.getvalue()
out["states"].append(manager.state.value)
logs.seek(0)
logs.truncate()
out["bad_workers"] = error(manager.initialize, PROMETHEUS_METRICS_PORT="9091", GUNICORN_WORKERS="0")
out["bad_workers_log"] = logs.getvalue()
out["bad_ssl"] = error(manager.initialize, GUNICORN_WORKERS="2",
                       PROMETHEUS_SSL_CERTFILE="/nonexistent/cert.pem")
os.environ.pop("PROMETHEUS_SSL_CERTFILE")
manager.initialize()
out["states"].append(manager.state.value)
out["summary"] = manager.get_config_summary()["prometheus_port"]
manager.update_config(GUNICORN_WORKERS="3")
out["updated"] = manager.get_config().gunicorn_workers
out["bad_update"] = error(manager.update_config, GUNICORN_WORKERS="0")
out["states"].append(manager.state.value)
manager.cleanup()
out["states"].append(manager.state.value)
print("CONFIG-API " + json.dumps(out))
'''


def check_config_api(out):
    assert out["missing"] == ("ValueError: Configuration validation failed: "
                              "Base exporter configuration invalid (see logs)")
    for line in ("Required environment variables not set:",
                 "   - PROMETHEUS_BIND_ADDRESS (Bind address for metrics server)",
                 "   - PROMETHEUS_METRICS_PORT (Port for metrics server)",
                 "   - GUNICORN_WORKERS (Number of Gunicorn workers)",
                 "   export PROMETHEUS_METRICS_PORT=9091",
                 "Configuration initialization failed: Configuration validation failed: "
                 "Base exporter configuration invalid (see logs)"):
        assert line in out["missing_log"].splitlines(), out["missing_log"]
    assert out["port_message"] == (
        "ValueError: Environment variable PROMETHEUS_METRICS_PORT must be set in production. "
        "Example: export PROMETHEUS_METRICS_PORT=9091")
    assert out["values"] == [9091, "0.0.0.0", 2, 30, 2, False, "127.0.0.1", 6379, 0,
                             "gunicorn", 300, False, False, True]
    assert out["same"] is True
    assert out["again"] == "RuntimeError: Configuration already initialized"
    assert out["lazy"] == 45
    assert out["not_init"] == "RuntimeError: Configuration not initialized"
    assert out["bad_port"].startswith("ValueError: Configuration validation failed")
    assert "Configuration validation failed: Port 80 is not in valid range (1024-65535)" \
        in out["bad_port_log"], out["bad_port_log"]
    assert "Configuration validation failed: Worker count 0 must be at least 1" \
        in out["bad_workers_log"], out["bad_workers_log"]
    assert out["bad_ssl"] == (
        "ValueError: Configuration validation failed: SSL key file required when certificate "
        "is provided, SSL certificate file not found: /nonexistent/cert.pem")
    assert out["states"] == ["uninitialized", "uninitialized", "initialized", "error",
                             "uninitialized"]
    assert out["summary"] == 9091
    assert out["updated"] == 3
    assert out["bad_update"] == ("ValueError: Configuration validation failed: "
                                 "Base exporter configuration invalid (see logs)")


def parse_config_api(stdout):
    lines = [l for l in stdout.splitlines() if l.startswith("CONFIG-API ")]
    assert len(lines) == 1, stdout
    return json.loads(lines[0][len("CONFIG-API "):])


def test_configuration_api_script_in_the_venv_python():
    env = dict(os.environ, PYTHONPATH=COMPAT_DIR, FC_TEST_MPDIR=tempfile.mkdtemp(prefix="fc-mp-"))
    r = subprocess.run([os.path.join(VENV, "bin", "python"), "-c", CONFIG_SCRIPT],
                       capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    assert r.returncode == 0, r.stderr
    check_config_api(parse_config_api(r.stdout))


def config_api_in_ferrocorn(venv):
    """The script as a config file, run by ferrocorn's interpreter
    (--check-config) in `venv`."""
    d = app_dir()
    conf = os.path.join(d, "gunicorn.conf.py")
    with open(conf, "w") as f:
        f.write(CONFIG_SCRIPT)
    env = server_env(dict(venv_env(venv), FC_TEST_MPDIR=os.path.join(d, "mp")))
    r = subprocess.run([SERVER_BIN, "--check-config", "-c", conf, "app:app"], cwd=d,
                       capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    check_config_api(parse_config_api(r.stdout))


def test_configuration_api_script_inside_ferrocorn(bare_venv):
    """In a venv where nothing is installed."""
    config_api_in_ferrocorn(bare_venv)


# -- the Redis backend API ------------------------------------------------------------------

BACKEND_SCRIPT = r'''
import json
import os
import sys

if os.environ.get("FC_TEST_HIDE_REDIS"):
    sys.modules["redis"] = None  # `import redis` raises ImportError

from gunicorn_prometheus_exporter.backend import (
    RedisDict, RedisStorageClient, RedisStorageDict, RedisStorageManager, RedisValue,
    get_redis_storage_manager, setup_redis_metrics, teardown_redis_metrics)

out = {}
try:
    import redis
except ImportError:
    try:
        RedisStorageManager()
    except ImportError as e:
        out["import_error"] = str(e)
    print("BACKEND " + json.dumps(out))
    raise SystemExit(0)

redis_client = redis.Redis(host="127.0.0.1", port=int(os.environ["REDIS_PORT"]), db=0)
storage_client = RedisStorageClient(redis_client, key_prefix="gunicorn")
value_class = storage_client.get_value_class()
redis_dict = RedisStorageDict(redis_client, "gunicorn")
value = RedisValue(redis_dict, metric_name="requests_total")
value.inc(1)
out["after_inc"] = value.get()
value.set(100)
out["after_set"] = value.get()
out["reread"] = RedisValue(redis_dict, metric_name="requests_total").get()
out["deleted"] = storage_client.cleanup_process_keys(pid=os.getpid())
out["after_cleanup"] = RedisValue(redis_dict, metric_name="requests_total").get()
storage_client.cleanup_process_keys(pid=os.getpid())

manager = RedisStorageManager()
out["setup"] = manager.setup()
out["enabled"] = manager.is_enabled()
out["client_ping"] = manager.get_client().ping()
from prometheus_client import values
out["value_class"] = values.ValueClass.__name__
manager.teardown()
out["enabled_after"] = manager.is_enabled()
out["value_class_after"] = values.ValueClass.__name__

out["global_setup"] = setup_redis_metrics()
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
hits = Counter("compat_hits", "Hits", ["path"])
hits.labels("/a").inc(3)
latency = Histogram("compat_latency_seconds", "Latency", buckets=(0.1, 1.0))
latency.observe(0.05)
latency.observe(0.5)
registry = CollectorRegistry()
registry.register(get_redis_storage_manager().get_collector())
out["exposition"] = generate_latest(registry).decode()
out["keys"] = len(redis_client.keys("testprefix:*"))
teardown_redis_metrics()

d = RedisDict(redis_client, "compat:hash")
d["a"] = "1"
d["b"] = "2"
out["dict"] = [sorted(d.items()), len(d)]
del d["a"]
out["dict_after"] = sorted(d)
print("BACKEND " + json.dumps(out))
'''


def run_backend_script(venv, redis_port, hide_redis=False):
    d = tempfile.mkdtemp(prefix="fc-backend-")
    conf = os.path.join(d, "gunicorn.conf.py")
    with open(conf, "w") as f:
        f.write(BACKEND_SCRIPT)
    with open(os.path.join(d, "app.py"), "w") as f:
        f.write(APP)
    extra = {"REDIS_PORT": str(redis_port), "REDIS_KEY_PREFIX": "testprefix",
             "REDIS_ENABLED": "true", "REDIS_PUSH_INTERVAL": "60",
             "GUNICORN_WORKERS": "1"}
    if venv is not None:
        extra.update(venv_env(venv))
    if hide_redis:
        extra["FC_TEST_HIDE_REDIS"] = "1"
    r = subprocess.run([SERVER_BIN, "--check-config", "-c", conf, "app:app"], cwd=d,
                       capture_output=True, text=True, env=server_env(extra), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [l for l in r.stdout.splitlines() if l.startswith("BACKEND ")]
    assert len(lines) == 1, r.stdout + r.stderr
    return json.loads(lines[0][len("BACKEND "):])


def test_backend_api_against_a_real_redis(redis):  # noqa: F811
    r = redis()
    out = run_backend_script(None, r.port)
    assert (out["after_inc"], out["after_set"], out["reread"]) == (1, 100, 100)
    assert out["deleted"] >= 2 and out["after_cleanup"] == 0
    assert out["setup"] is True and out["enabled"] is True and out["client_ping"] is True
    assert out["value_class"] == "ConfiguredRedisValue"
    assert out["enabled_after"] is False and out["value_class_after"] != "ConfiguredRedisValue"
    assert out["global_setup"] is True
    expo = out["exposition"]
    for line in ('compat_hits_total{path="/a"} 3.0',
                 'compat_latency_seconds_bucket{le="0.1"} 1.0',
                 'compat_latency_seconds_bucket{le="1.0"} 2.0',
                 'compat_latency_seconds_bucket{le="+Inf"} 2.0',
                 "compat_latency_seconds_count 2.0",
                 "compat_latency_seconds_sum 0.55"):
        assert line in expo.splitlines(), expo
    assert out["keys"] > 0
    assert out["dict"] == [[["a", "1"], ["b", "2"]], 2] and out["dict_after"] == ["b"]


def test_backend_without_redis_py_names_it(bare_venv):
    # The wheel's command runs in its own venv, which has redis-py: there
    # the script hides it.
    out = run_backend_script(bare_venv, 1, hide_redis=IS_WHEEL)
    assert "needs redis-py" in out["import_error"] and "pip install redis" in out["import_error"], out


# -- environments without / with the original package --------------------------------------

def test_guide_configs_run_with_nothing_installed(server, bare_venv):
    s = start_guide(server, "api-basic", env=venv_env(bare_venv))
    check_serves_and_stops(s, 2)
    s = start_guide(server, "advanced-hooks", env=venv_env(bare_venv))
    assert "Custom metrics server started successfully" in s.log()
    check_serves_and_stops(s, 4, default_when_ready=False)


def test_guide_configs_run_on_the_compat_package_over_the_original(server, original_venv):
    """The original 0.2.4 is pip-installed in that venv: it is never
    imported (no patching of gunicorn's Arbiter), the hooks are ours."""
    probe = subprocess.run([os.path.join(original_venv, "bin", "python"), "-c",
                            "import gunicorn_prometheus_exporter as g, gunicorn.arbiter as a;"
                            "print(g.__file__, a.Arbiter.__name__)"],
                           capture_output=True, text=True)
    assert "site-packages" in probe.stdout and "PrometheusMaster" in probe.stdout, probe
    s = start_guide(server, "api-basic", env=venv_env(original_venv))
    check_serves_and_stops(s, 2)
    s = start_guide(server, "advanced-hooks", env=venv_env(original_venv))
    assert "Custom metrics server started successfully" in s.log()
    check_serves_and_stops(s, 4, default_when_ready=False)
    config_api_in_ferrocorn(original_venv)


# -- examples/gunicorn-prometheus-exporter: one directory per guide config -------------

# name -> (workers, worker kind, extra CLI arguments, needs Redis)
EXAMPLES = {
    "basic": (2, "sync", [], False),
    "high-performance": (8, "gthread", [], False),
    "async": (4, "eventlet", [], False),
    "production": (4, "sync", [], False),
    "redis-storage": (4, "sync", [], True),
    "redis-backend": (4, "sync", [], True),
    "development": (2, "sync", [], False),
    "sync": (4, "sync", [], False),
    "thread": (2, "gthread", [], False),
    "eventlet": (4, "eventlet", [], False),
    "gevent": (4, "gevent", [], False),
    "tornado": (2, None, [], False),
    "custom-hooks": (4, "sync", [], False),
    "advanced-hooks": (4, "sync", [], False),
    # The guide's CLI overrides of this config.
    "post-fork-cli": (8, "sync", ["--timeout", "600", "--workers", "8", "--worker-class",
                                  "gunicorn_prometheus_exporter.PrometheusWorker"], False),
    "api-basic": (2, "sync", [], False),
    "api-redis": (2, "sync", [], True),
}


def test_every_example_directory_is_tested():
    dirs = sorted(d for d in os.listdir(EXAMPLES_GPE)
                  if os.path.isfile(os.path.join(EXAMPLES_GPE, d, "gunicorn.conf.py")))
    assert dirs == sorted(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example(server, redis, name):  # noqa: F811
    from test_redis import state_key
    workers, kind, extra, needs_redis = EXAMPLES[name]
    tmp = tempfile.mkdtemp(prefix="fc-example-")
    env = {"PROMETHEUS_MULTIPROC_DIR": os.path.join(tmp, "mp")}
    args = ["-c", example_conf(name)]
    if name == "production":
        args += ["--access-logfile", os.path.join(tmp, "access.log"),
                 "--error-logfile", os.path.join(tmp, "error.log")]
    r = None
    if needs_redis:
        r = redis()
        env.update({"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(r.port),
                    "REDIS_PUSH_INTERVAL": "0.5"})
    s = server(args + extra + ["app:app"], cwd=EXAMPLES_GPE, env=env)
    if kind is not None:
        s.assert_kind(kind)
    for _ in range(3):
        resp = requests.get(s.url + "/", timeout=5)
        assert resp.status_code == 200 and resp.text.startswith("Hello"), resp.text
    wait_for(lambda: scrape(s).get("gunicorn_workers") == workers, 20,
             msg="%d workers on the metrics port" % workers)
    assert scrape(s)["gunicorn_worker_requests_total"] >= 3
    if r is not None:
        prefix = "gunicorn"
        key = state_key(prefix, "127.0.0.1:%d" % s.port)
        wait_for(lambda: r.cli("EXISTS", key) == "1", 10, msg=key + " in Redis")
    assert s.stop() == 0
    log = s.log()
    if name == "production":
        with open(os.path.join(tmp, "access.log")) as f:
            assert f.read().count('"GET / HTTP/1.1" 200') >= 3
        with open(os.path.join(tmp, "error.log")) as f:
            log += f.read()
    assert "Traceback" not in log, log
    if name in ("custom-hooks",):
        for line in ("Starting Gunicorn with Prometheus exporter...",
                     "Gunicorn is ready to accept connections", "Gunicorn shutting down..."):
            assert line in log.splitlines(), log
    if name == "advanced-hooks":
        assert "Custom metrics server started successfully" in log, log
    if name in ("redis-backend", "api-redis"):
        assert "Redis metrics storage enabled - ferrocorn's exporter pushes" in log, log
    if name == "post-fork-cli":
        assert log.count("Updated GUNICORN_WORKERS from CLI: 8") == 8, log
    if name == "tornado":
        assert "Using worker: gunicorn_prometheus_exporter.PrometheusTornadoWorker" in log


def test_hooks_with_metrics_off_say_so(server):
    """--no-metrics: default_when_ready finds no exporter to report and
    says why; the server runs on."""
    s = start_guide(server, "api-basic", args=["--no-metrics"])
    assert requests.get(s.url + "/", timeout=5).json() == {"ok": True}
    log = s.log()
    assert "ferrocorn's metrics are off (--no-metrics / metrics = False): no metrics server" in log, log
    assert "Metrics server started successfully" not in log, log
    assert s.stop() == 0
