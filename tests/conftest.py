"""Fixtures that start the real server binary for the integration tests.

The server under test is ferrocorn (`FERROCORN_BIN`, default
target/release/ferrocorn). With TEST_SERVER=gunicorn the same tests run
against the reference, .venv/bin/gunicorn (27.x), which takes the same
command line: that is how the tests themselves are checked. Tests of
behaviour that only ferrocorn has are marked `ferrocorn_only`.

Every server runs in its own session / process group on a free 127.0.0.1
port; at teardown it gets SIGTERM, and whatever is left in its process
group gets SIGKILL. Nothing is ever killed by name.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
APPS = os.path.join(TESTS, "apps")
EXAMPLES = os.path.join(REPO, "examples")
VENV = os.environ.get("FERROCORN_TEST_VENV", os.path.join(REPO, ".venv"))

TEST_SERVER = os.environ.get("TEST_SERVER", "ferrocorn").strip().lower()
IS_GUNICORN = TEST_SERVER == "gunicorn"
if TEST_SERVER not in ("ferrocorn", "gunicorn"):
    raise SystemExit("TEST_SERVER must be 'ferrocorn' or 'gunicorn', not %r" % TEST_SERVER)

if IS_GUNICORN:
    SERVER_BIN = os.path.join(VENV, "bin", "gunicorn")
else:
    SERVER_BIN = os.environ.get("FERROCORN_BIN") or os.path.join(REPO, "target", "release", "ferrocorn")


def _is_console_script(path):
    """Whether `path` is a script (the wheel's `ferrocorn` console script,
    pip-installed: FERROCORN_BIN=<venv>/bin/ferrocorn), not the binary."""
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


# The server under test is the wheel's command: it runs in the interpreter of
# its venv, whatever VIRTUAL_ENV says (tests of the binary's venv detection
# do not apply).
IS_WHEEL = not IS_GUNICORN and _is_console_script(SERVER_BIN)

# Environment variables of the test runner that would change how the server
# under test behaves; tests set them explicitly when they want them.
_SCRUB = ("GUNICORN_CMD_ARGS", "FORWARDED_ALLOW_IPS", "SCRIPT_NAME", "WEB_CONCURRENCY",
          "PROMETHEUS_MULTIPROC_DIR", "PYTHONPATH", "PYTHONHOME", "DJANGO_SETTINGS_MODULE",
          "PORT", "LISTEN_FDS", "LISTEN_PID")


# The worker kinds the HTTP behaviour suites run against (the `kind` fixture):
# the arguments that select each. gunicorn 27 has no eventlet worker, and its
# gevent worker is not installed with it.
KIND_ARGS = {
    "sync": ["-k", "sync"],
    "gthread": ["-k", "gthread", "--threads", "4"],
    "gevent": ["-k", "gevent"],
    "eventlet": ["-k", "eventlet"],
}
SUITE_KINDS = ["sync", "gthread"] if IS_GUNICORN else list(KIND_ARGS)
_kind = [None]


@pytest.fixture(scope="module", params=SUITE_KINDS)
def kind(request):
    """Module-scoped: every server the module starts without choosing a worker
    class of its own runs this kind, and is checked to run it (see
    Server.assert_kind). Modules opt in with `pytestmark = usefixtures("kind")`
    and let their module-scoped servers depend on it."""
    _kind[0] = request.param
    yield request.param
    _kind[0] = None


def _worker_kind_proof(pid):
    """What a worker process shows of its kind: its threads and the
    greenlet libraries mapped into it."""
    names = []
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                names.append(f.read().strip())
        except OSError:
            pass
    with open("/proc/%d/maps" % pid) as f:
        maps = f.read()
    # The TLS handshake thread (TLS listeners) runs no Python, and the
    # --reload watcher runs in every kind: neither is a sign of the kind.
    names = [n for n in names if n not in ("tls-handshake", "fc-reloader")]
    return {
        "threads": len(names),
        "gthreads": sum(1 for n in names if n.startswith("gthread-")),
        "gevent": "/gevent/" in maps,
        "greenlet": "/greenlet/" in maps,
    }


def pytest_configure(config):
    config.addinivalue_line("markers", "ferrocorn_only: behaviour ferrocorn has and gunicorn 27 has not; "
                                       "skipped with TEST_SERVER=gunicorn")


def pytest_collection_modifyitems(config, items):
    if IS_GUNICORN:
        skip = pytest.mark.skip(reason="ferrocorn-only behaviour (TEST_SERVER=gunicorn)")
        for item in items:
            if "ferrocorn_only" in item.keywords:
                item.add_marker(skip)


def pytest_report_header(config):
    return "server under test: %s (%s%s)" % (TEST_SERVER, SERVER_BIN, ", the wheel's command" if IS_WHEEL else "")


def server_env(extra=None, tmpdir=None):
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env["VIRTUAL_ENV"] = VENV
    env["PATH"] = os.path.join(VENV, "bin") + os.pathsep + env.get("PATH", "/usr/bin:/bin")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    if tmpdir:
        # gunicorn 27 opens a control socket under $XDG_RUNTIME_DIR: one per test.
        env["XDG_RUNTIME_DIR"] = tmpdir
    # ferrocorn serves metrics on 0.0.0.0:9090 by default: every test server
    # gets its own loopback port instead (a test may override both).
    env["PROMETHEUS_BIND_ADDRESS"] = "127.0.0.1"
    env["PROMETHEUS_METRICS_PORT"] = str(free_port())
    if extra:
        for k, v in extra.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
    return env


def free_port(family=socket.AF_INET, host="127.0.0.1"):
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _check_binary():
    if not os.path.exists(SERVER_BIN):
        pytest.fail("server binary %s does not exist (run scripts/setup.sh, or set "
                    "FERROCORN_BIN, or TEST_SERVER=gunicorn)" % SERVER_BIN, pytrace=False)


def _probe_http(addr, path, timeout=2.0):
    """One HTTP/1.0 request; True if any response status line came back."""
    try:
        if isinstance(addr, str):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            s = socket.socket(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET, socket.SOCK_STREAM)
        with s:
            s.settimeout(timeout)
            s.connect(addr)
            s.sendall(b"GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n" % path.encode())
            data = s.recv(16)
            return data.startswith(b"HTTP/")
    except OSError:
        return False


def _probe_tcp(addr):
    try:
        if isinstance(addr, str):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            s = socket.socket(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET, socket.SOCK_STREAM)
        with s:
            s.settimeout(1.0)
            s.connect(addr)
            return True
    except OSError:
        return False


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read()
    except OSError:
        return b""


def is_exporter(pid):
    """Whether pid is a ferrocorn metrics exporter (by its process title)."""
    return _cmdline(pid).startswith(b"ferrocorn: exporter")


def is_worker(pid):
    """Whether a child of a master is one of its workers. A ferrocorn child
    titled anything but "ferrocorn: worker" is the exporter, or a fork that
    has not set its title yet (it still shows the master's): which of the two
    it becomes is not known yet, so it is not counted. gunicorn's children
    carry no ferrocorn title and are all workers."""
    cmd = _cmdline(pid)
    return not cmd.startswith(b"ferrocorn: ") or cmd.startswith(b"ferrocorn: worker")


class Server:
    """A running server process. `.port`, `.url`, `.proc`, `.log()`."""

    def __init__(self, args, cwd=None, env=None, config_text=None, bind=True,
                 ready="http", ready_path="/", timeout=20.0, host="127.0.0.1",
                 config_name="gunicorn.conf.py", config_dir=None):
        _check_binary()
        self.tmpdir = tempfile.mkdtemp(prefix="ferrocorn-test-")
        self.host = host
        self.port = None
        self.args = list(args)
        self.cwd = cwd or APPS
        pre = []
        if bind is True:
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            self.port = free_port(fam, host)
            hostpart = "[%s]" % host if ":" in host else host
            pre += ["-b", "%s:%d" % (hostpart, self.port)]
        elif isinstance(bind, int):
            self.port = bind
        self.config_path = None
        if config_text is not None:
            d = config_dir or self.tmpdir
            self.config_path = os.path.join(d, config_name)
            with open(self.config_path, "w") as f:
                f.write(config_text)
            pre = ["-c", self.config_path] + pre
        self.kind = None
        chosen = ("-k", "--worker-class", "--threads")
        if _kind[0] and not any(a.split("=")[0] in chosen for a in self.args) \
                and not (config_text and ("worker_class" in config_text or "threads" in config_text)):
            self.kind = _kind[0]
            pre += KIND_ARGS[self.kind]
        self.cmd = [SERVER_BIN] + pre + self.args
        self.env = server_env(env, self.tmpdir)
        port = self.env.get("PROMETHEUS_METRICS_PORT")
        self.metrics_port = int(port) if port and port.isdigit() else None
        self._out_path = os.path.join(self.tmpdir, "stdout.log")
        self._err_path = os.path.join(self.tmpdir, "stderr.log")
        self._out = open(self._out_path, "wb")
        self._err = open(self._err_path, "wb")
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self._out, stderr=self._err, start_new_session=True)
        self.pgid = self.proc.pid
        self.stopped = False
        if ready:
            self.wait_ready(ready, ready_path, timeout)
            if self.kind and not IS_GUNICORN:
                try:
                    self.assert_kind(self.kind)
                except AssertionError:
                    self.kill()  # no factory holds it yet: stop it here
                    raise

    def assert_kind(self, kind):
        """Every worker runs `kind`: gthread workers have their gthread-N
        threads; sync, gevent and eventlet workers one thread, the green
        ones with their library mapped."""
        deadline = time.monotonic() + 20
        while True:
            # Workers boot one by one: the probe may have been answered by
            # the first while the others still load the app.
            proofs = {pid: _worker_kind_proof(pid) for pid in self.children()}
            ok = {pid: {
                "sync": p["threads"] == 1 and not p["greenlet"],
                "gthread": p["gthreads"] > 0 and not p["greenlet"],
                "gevent": p["threads"] == 1 and p["gevent"],
                "eventlet": p["threads"] == 1 and p["greenlet"] and not p["gevent"],
            }[kind] for pid, p in proofs.items()}
            if ok and all(ok.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError("workers do not run %s: %r\n%s" % (kind, proofs, self.log()[-2000:]))
            time.sleep(0.05)

    # -- addresses
    @property
    def url(self):
        if ":" in self.host:
            return "http://[%s]:%d" % (self.host, self.port)
        return "http://%s:%d" % (self.host, self.port)

    def addr(self):
        return (self.host, self.port)

    # -- logs
    def stdout(self):
        with open(self._out_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stderr(self):
        with open(self._err_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log(self):
        """Captured stdout followed by stderr."""
        return self.stdout() + self.stderr()

    def wait_log(self, needle, timeout=10.0):
        """Wait until `needle` appears in the log; return the log."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()
            if needle in text:
                return text
            if time.monotonic() > deadline:
                raise AssertionError("%r not in server log within %ss:\n%s" % (needle, timeout, text))
            time.sleep(0.05)

    # -- lifecycle
    def wait_ready(self, ready="http", path="/", timeout=20.0, addr=None):
        addr = addr or self.addr()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("server exited with %s before it was ready\ncmd: %s\n%s" % (
                    self.proc.returncode, " ".join(self.cmd), self.log()))
            ok = _probe_http(addr, path) if ready == "http" else _probe_tcp(addr)
            if ok:
                return
            time.sleep(0.05)
        self.kill()
        raise AssertionError("server not ready within %ss\ncmd: %s\n--- output:\n%s" % (
            timeout, " ".join(self.cmd), self.log()))

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout):
        """Wait for the master to exit; return its exit code (None on timeout)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def group_pids(self):
        """PIDs still in the server's process group (master and workers)."""
        pids = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % d) as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            state, pgid = fields[0], int(fields[2])
            if pgid == self.pgid and state != "Z":
                pids.append(int(d))
        return pids

    def all_children(self):
        """PIDs of the master's live child processes (exporter included)."""
        out = []
        for pid in self.group_pids():
            try:
                with open("/proc/%d/stat" % pid) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid and fields[0] != "Z":
                out.append(pid)
        return out

    def children(self):
        """PIDs of the master's live workers (the metrics exporter left out)."""
        return [p for p in self.all_children() if is_worker(p)]

    def exporter_pid(self):
        """PID of the metrics exporter process, or None."""
        found = [p for p in self.all_children() if is_exporter(p)]
        return found[0] if found else None

    def kill(self):
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def stop(self, timeout=10.0):
        if self.stopped:
            return self.proc.returncode
        self.stopped = True
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Anything left in the group (workers of a master that died, etc.)
        self.kill()
        self._out.close()
        self._err.close()
        return self.proc.returncode


class ServerFactory:
    def __init__(self):
        self.servers = []

    def __call__(self, args, **kw):
        s = Server(args, **kw)
        self.servers.append(s)
        return s

    def close(self):
        for s in self.servers:
            s.stop()
            shutil.rmtree(s.tmpdir, ignore_errors=True)


@pytest.fixture
def server():
    """Factory: server(args, cwd=..., env=..., config_text=..., ready=...) -> Server."""
    f = ServerFactory()
    yield f
    f.close()


@pytest.fixture(scope="module")
def module_server():
    """Module-scoped factory, for servers shared by several tests."""
    f = ServerFactory()
    yield f
    f.close()


class Result:
    def __init__(self, returncode, stdout, stderr, timed_out):
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.timed_out = timed_out

    @property
    def output(self):
        return self.stdout + self.stderr

    def __repr__(self):
        return "<Result rc=%s timed_out=%s\n--- stdout:\n%s\n--- stderr:\n%s>" % (
            self.returncode, self.timed_out, self.stdout, self.stderr)


def run_server_cmd(args, cwd=None, env=None, timeout=20.0, config_text=None):
    """Run the server command to completion (for --print-config, --check-config,
    bad settings, apps that fail to load). The whole process group is killed
    if it is still running after `timeout`."""
    _check_binary()
    tmp = tempfile.mkdtemp(prefix="ferrocorn-test-")
    pre = []
    if config_text is not None:
        path = os.path.join(tmp, "gunicorn.conf.py")
        with open(path, "w") as f:
            f.write(config_text)
        pre = ["-c", path]
    proc = subprocess.Popen([SERVER_BIN] + pre + list(args), cwd=cwd or APPS,
                            env=server_env(env, tmp), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    shutil.rmtree(tmp, ignore_errors=True)
    return Result(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), timed_out)


@pytest.fixture
def run_cmd():
    return run_server_cmd
