"""Configuration: precedence, config file discovery, APP_MODULE forms, paths,
environment, bad values and apps that fail to load (as gunicorn 27)."""
import os
import re
import tempfile

import pytest
import requests

from conftest import APPS, IS_GUNICORN, free_port


def printed(result):
    """Parse --print-config output into {name: value-string}."""
    assert result.returncode == 0, result
    out = {}
    for line in result.stdout.splitlines():
        m = re.match(r"^(\w+)\s+= (.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    assert "workers" in out, result
    return out


CFG = "workers = 2\nkeepalive = 7\nloglevel = 'debug'\n"


def test_print_config_defaults(run_cmd):
    p = printed(run_cmd(["--print-config", "wsgiapp:app"]))
    assert p["workers"] == "1"
    assert p["keepalive"] == "2"
    assert p["timeout"] == "30"
    assert p["graceful_timeout"] == "30"
    assert p["loglevel"] == "info"
    assert p["bind"] == "['127.0.0.1:8000']"
    assert p["worker_class"] == "sync"
    assert p["limit_request_line"] == "4094"
    assert p["limit_request_fields"] == "100"
    assert p["limit_request_field_size"] == "8190"
    assert p["header_map"] == "drop"
    assert p["forwarded_allow_ips"] == "['127.0.0.1', '::1']"


def test_precedence_cli_over_env_over_file(run_cmd):
    env = {"GUNICORN_CMD_ARGS": "--workers 3 --keep-alive 8 --log-level warning"}
    p = printed(run_cmd(["--print-config", "-w", "4", "--keep-alive", "9", "--log-level", "error", "wsgiapp:app"],
                        env=env, config_text=CFG))
    assert (p["workers"], p["keepalive"], p["loglevel"]) == ("4", "9", "error")
    # without the CLI values, GUNICORN_CMD_ARGS wins over the file
    p = printed(run_cmd(["--print-config", "wsgiapp:app"], env=env, config_text=CFG))
    assert (p["workers"], p["keepalive"], p["loglevel"]) == ("3", "8", "warning")
    # without both, the file wins over the defaults
    p = printed(run_cmd(["--print-config", "wsgiapp:app"], config_text=CFG))
    assert (p["workers"], p["keepalive"], p["loglevel"]) == ("2", "7", "debug")
    # mixed: each setting from its highest source
    p = printed(run_cmd(["--print-config", "--keep-alive", "9", "wsgiapp:app"],
                        env={"GUNICORN_CMD_ARGS": "--log-level warning"}, config_text=CFG))
    assert (p["workers"], p["keepalive"], p["loglevel"]) == ("2", "9", "warning")


def test_web_concurrency_default(run_cmd):
    # WEB_CONCURRENCY is the workers default, below the config file
    p = printed(run_cmd(["--print-config", "wsgiapp:app"], env={"WEB_CONCURRENCY": "5"}))
    assert p["workers"] == "5"
    p = printed(run_cmd(["--print-config", "wsgiapp:app"], env={"WEB_CONCURRENCY": "5"}, config_text=CFG))
    assert p["workers"] == "2"


def test_precedence_live_worker_count(server):
    s = server(["-w", "3", "wsgiapp:app"], env={"GUNICORN_CMD_ARGS": "-w 2"}, config_text="workers = 4\n")
    wait_children(s, 3)
    s2 = server(["wsgiapp:app"], env={"GUNICORN_CMD_ARGS": "-w 2"}, config_text="workers = 4\n")
    wait_children(s2, 2)


def wait_children(s, n, timeout=15):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(s.children()) == n:
            time.sleep(0.3)
            if len(s.children()) == n:
                return
        time.sleep(0.1)
    raise AssertionError("expected %d workers, have %r\n%s" % (n, s.children(), s.log()))


def test_default_config_file_in_cwd(run_cmd):
    d = tempfile.mkdtemp(prefix="fc-cwd-")
    with open(os.path.join(d, "gunicorn.conf.py"), "w") as f:
        f.write("workers = 6\n")
    p = printed(run_cmd(["--print-config", "--chdir", APPS, "wsgiapp:app"], cwd=d))
    assert p["workers"] == "6"
    assert p["config"] == "./gunicorn.conf.py"


def test_default_config_file_serves(server):
    d = tempfile.mkdtemp(prefix="fc-cwd-")
    port = free_port()
    with open(os.path.join(d, "gunicorn.conf.py"), "w") as f:
        f.write("bind = '127.0.0.1:%d'\nwsgi_app = 'wsgiapp:app'\nchdir = %r\n" % (port, APPS))
    s = server([], cwd=d, bind=port)
    assert requests.get(s.url + "/", timeout=10).text == "Hello, World!"


def test_config_python_module(run_cmd):
    d = tempfile.mkdtemp(prefix="fc-pymod-")
    with open(os.path.join(d, "my_settings.py"), "w") as f:
        f.write("workers = 5\nkeepalive = 11\n")
    p = printed(run_cmd(["-c", "python:my_settings", "--print-config", "--chdir", APPS, "wsgiapp:app"], cwd=d))
    assert (p["workers"], p["keepalive"]) == ("5", "11")


def test_config_file_env_vars_visible_to_app(server):
    cfg = ("import os\nos.environ['SET_BY_CONFIG'] = 'config-value'\n"
           "raw_env = ['FROM_RAW_ENV=raw value=with equals']\n")
    s = server(["wsgiapp:app"], config_text=cfg)
    assert requests.get(s.url + "/osenv?k=SET_BY_CONFIG", timeout=10).text == "config-value"
    assert requests.get(s.url + "/osenv?k=FROM_RAW_ENV", timeout=10).text == "raw value=with equals"


def test_cli_env_replaces_config_raw_env(server):
    """raw_env is one list setting: -e on the command line replaces the config
    file's list, it does not add to it."""
    cfg = "raw_env = ['FROM_RAW_ENV=1']\n"
    s = server(["-e", "FROM_CLI=cli-value", "wsgiapp:app"], config_text=cfg)
    assert requests.get(s.url + "/osenv?k=FROM_CLI", timeout=10).text == "cli-value"
    assert requests.get(s.url + "/osenv?k=FROM_RAW_ENV", timeout=10).text == "<unset>"


def test_env_flag(server):
    s = server(["-e", "A_VAR=1", "--env", "B_VAR=two words", "wsgiapp:app"])
    assert requests.get(s.url + "/osenv?k=A_VAR", timeout=10).text == "1"
    assert requests.get(s.url + "/osenv?k=B_VAR", timeout=10).text == "two words"


def test_chdir(server):
    s = server(["--chdir", APPS, "wsgiapp:app"], cwd=tempfile.gettempdir())
    assert requests.get(s.url + "/", timeout=10).text == "Hello, World!"


def test_pythonpath(server):
    extra = os.path.join(APPS, "pkg", "sub")
    s = server(["--pythonpath", "%s,%s" % (APPS, extra), "mod:wsgi"], cwd=tempfile.gettempdir())
    assert requests.get(s.url + "/", timeout=10).text == "from pkg.sub.mod"


@pytest.mark.parametrize("app,expected", [
    ("pkg.sub.mod:wsgi", "from pkg.sub.mod"),
    ("factory:make_app()", "default"),
    ("factory:make_app('hi', times=2)", "hihi"),
    ("factory", "default application"),
    ("wsgiapp", "Hello, World!"),
])
def test_app_module_forms(server, app, expected):
    s = server([app])
    assert requests.get(s.url + "/", timeout=10).text == expected


def test_wsgi_app_setting_and_cli_override(server):
    s = server([], config_text="wsgi_app = 'factory:application'\n")
    assert requests.get(s.url + "/", timeout=10).text == "default application"
    s = server(["wsgiapp:app"], config_text="wsgi_app = 'factory:application'\n")
    assert requests.get(s.url + "/", timeout=10).text == "Hello, World!"


def test_hooks_called(server):
    cfg = '''
def on_starting(server):
    print("HOOK on_starting", flush=True)

def when_ready(server):
    server.log.info("HOOK when_ready")

def post_fork(server, worker):
    server.log.info("HOOK post_fork %s", worker.pid)

def post_worker_init(worker):
    worker.log.info("HOOK post_worker_init %s", worker.pid)

def pre_request(worker, req):
    worker.log.info("HOOK pre_request %s %s", req.method, req.path)

def post_request(worker, req, environ, resp):
    worker.log.info("HOOK post_request %s %s", req.path, resp.status)
'''
    s = server(["wsgiapp:app"], config_text=cfg)
    requests.get(s.url + "/hooked", timeout=10)
    for needle in ("HOOK on_starting", "HOOK when_ready", "HOOK post_fork", "HOOK post_worker_init",
                   "HOOK pre_request GET /hooked", "HOOK post_request /hooked 404"):
        s.wait_log(needle)


# -- errors --------------------------------------------------------------------

def test_bad_cli_value_is_usage_error(run_cmd):
    # gunicorn exits 2 (argparse usage error); ferrocorn's spec asks for one
    # line naming the setting, the value and what is allowed, and exit code 1.
    r = run_cmd(["-w", "abc", "wsgiapp:app"])
    assert r.returncode == (2 if IS_GUNICORN else 1), r
    assert "--workers" in r.stderr and "'abc'" in r.stderr


def test_bad_cli_value_rejected_by_validator(run_cmd):
    # gunicorn: the int parses, the setting's validator refuses it: exit 1,
    #   Error: Value must be positive: -1
    r = run_cmd(["--keep-alive", "-1", "wsgiapp:app"])
    assert r.returncode == 1, r
    assert "-1" in r.stderr


def test_bad_env_args_value(run_cmd):
    r = run_cmd(["wsgiapp:app"], env={"GUNICORN_CMD_ARGS": "--workers abc"})
    assert r.returncode == (2 if IS_GUNICORN else 1), r
    assert "--workers" in r.stderr and "'abc'" in r.stderr


def test_bad_config_file_value(run_cmd):
    # gunicorn: "Invalid value for workers: abc" then
    # "Error: invalid literal for int() with base 0: 'abc'", exit 1
    r = run_cmd(["wsgiapp:app"], config_text="workers = 'abc'\n")
    assert r.returncode == 1, r
    assert "workers" in r.stderr and "abc" in r.stderr
    assert not r.timed_out


def test_unknown_config_name_is_ignored(run_cmd):
    # gunicorn ignores names in the config file that are not settings
    p = printed(run_cmd(["--print-config", "wsgiapp:app"], config_text="not_a_setting = 1\nworkers = 2\n"))
    assert p["workers"] == "2"


def test_config_file_missing(run_cmd):
    r = run_cmd(["-c", "/nonexistent/gunicorn.conf.py", "wsgiapp:app"])
    assert r.returncode == 1, r
    assert "doesn't exist" in r.stderr


def test_config_file_raises(run_cmd):
    r = run_cmd(["wsgiapp:app"], config_text="raise RuntimeError('bad config file')\n")
    assert r.returncode == 1, r
    assert "bad config file" in r.stderr


def test_no_app_module(run_cmd):
    r = run_cmd([])
    assert r.returncode == 1, r
    assert "No application module specified." in r.stderr


def test_print_config_app_fails(run_cmd):
    # gunicorn prints the configuration, then tries to load the app:
    # "Error while loading the application:" + traceback, exit 1
    r = run_cmd(["--print-config", "nosuchmodule:app"])
    assert r.returncode == 1, r
    assert "No module named 'nosuchmodule'" in r.stderr
    assert re.search(r"^workers\s+= 1$", r.stdout, re.M)


def test_check_config(run_cmd):
    assert run_cmd(["--check-config", "wsgiapp:app"]).returncode == 0
    r = run_cmd(["--check-config", "wsgiapp:missing"])
    assert r.returncode == 1, r


def test_app_import_raises_exits_3(run_cmd):
    """An exception while importing the app module: the worker fails to boot,
    the master stops with WORKER_BOOT_ERROR (3) instead of respawning."""
    r = run_cmd(["-b", "127.0.0.1:%d" % free_port(), "-w", "1", "broken:app"], timeout=30)
    assert not r.timed_out, r
    assert r.returncode == 3, r
    assert "Traceback" in r.stderr
    assert "ImportError: broken.py fails on purpose" in r.stderr
    assert "Worker failed to boot." in r.stderr


def test_app_import_raises_many_workers_stops(run_cmd):
    """With several workers the master still stops instead of respawning
    (gunicorn 27 exits 1 here when a second failing worker is reaped during
    the halt; 3 is the intended code)."""
    r = run_cmd(["-b", "127.0.0.1:%d" % free_port(), "-w", "3", "broken:app"], timeout=30)
    assert not r.timed_out, r
    assert r.returncode in (1, 3), r
    assert "Worker failed to boot." in r.stderr


def test_app_module_not_found_exits_3(run_cmd):
    r = run_cmd(["-b", "127.0.0.1:%d" % free_port(), "nosuchmodule:app"], timeout=30)
    assert not r.timed_out, r
    assert r.returncode == 3, r
    assert "No module named 'nosuchmodule'" in r.stderr


def test_app_attribute_missing_exits_4(run_cmd):
    """AppImportError (no such attribute, bad factory call): APP_LOAD_ERROR (4)."""
    r = run_cmd(["-b", "127.0.0.1:%d" % free_port(), "wsgiapp:nosuchname"], timeout=30)
    assert not r.timed_out, r
    assert r.returncode == 4, r
    assert "Failed to find attribute 'nosuchname' in 'wsgiapp'." in r.stderr
    assert "App failed to load." in r.stderr


def test_app_factory_bad_args_exits_4(run_cmd):
    r = run_cmd(["-b", "127.0.0.1:%d" % free_port(), "factory:make_app(1, 2, 3, 4)"], timeout=30)
    assert not r.timed_out, r
    assert r.returncode == 4, r
