"""The wheel (issue 13): `pip install` of ferrocorn's wheel into a fresh venv
of each CPython 3.9-3.13 gives a `ferrocorn` command (and `python -m
ferrocorn`) that serves the Flask example (examples/) like the binary: GET
and /metrics answer, HUP and USR2 + TERM lose no request, TERM exits 0, USR2
re-executes the same command; the master has one thread, Rust's signal
dispositions (the binary's, exactly), process titles, the binary's exit
codes; workers die with a SIGKILLed master. The extension links no
libpython, and runs on a Python without a shared libpython (Debian's
/usr/bin/python3 is linked statically).

The wheels are built once per run by maturin with the `wheel-test` profile
(release without fat LTO; see Cargo.toml) into a temporary directory; each
Python gets a new venv with the wheel, Flask and prometheus_client (the
example app's imports) from PyPI. scripts/test-packaging.sh runs this file
alone; scripts/test.sh runs it with the rest of the suite, which itself runs
against a release wheel pip-installed into .venv-wheel (see scripts/test.sh).
"""
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
import requests

from conftest import EXAMPLES, IS_GUNICORN, REPO, VENV, free_port
from test_hooks import Load, alive, children_of, stop_pid, wait_for

VERSIONS = ["3.9", "3.10", "3.11", "3.12", "3.13"]
# Building five wheels takes minutes, inside the setup of whichever test runs
# first: the per-test timeout leaves room for it.
BUILD_TIMEOUT = 900

pytestmark = [
    pytest.mark.skipif(IS_GUNICORN, reason="the wheel is ferrocorn's (TEST_SERVER=gunicorn)"),
    pytest.mark.timeout(BUILD_TIMEOUT + 120),
]
BINARY = os.path.join(REPO, "target", "release", "ferrocorn")
EXAMPLE_CONF = os.path.join(EXAMPLES, "gunicorn.conf.py")


def pyenv_python(version):
    """The pyenv CPython `version` (3.X): its newest patch release."""
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    found = sorted(glob.glob(os.path.join(root, "versions", version + ".*", "bin", "python" + version)),
                   key=lambda p: [int(x) for x in re.findall(r"\d+", p.split("/versions/")[1].split("/")[0])])
    if not found:
        pytest.fail("CPython %s is not installed under %s/versions (pyenv install %s)" % (version, root, version),
                    pytrace=False)
    return found[-1]


def run(cmd, timeout=600, **kw):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, **kw)
    out = p.stdout.decode("utf-8", "replace")
    assert p.returncode == 0, "%s exited %s:\n%s" % (" ".join(cmd), p.returncode, out[-5000:])
    return out


@pytest.fixture(scope="session")
def wheels(request):
    """{"3.11": path of the cp311 wheel, ...}, built for every version."""
    out = tempfile.mkdtemp(prefix="ferrocorn-wheels-")
    cmd = [os.path.join(VENV, "bin", "maturin"), "build", "--profile", "wheel-test", "-o", out]
    for v in VERSIONS:
        cmd += ["-i", pyenv_python(v)]
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    t0 = time.monotonic()
    run(cmd, timeout=BUILD_TIMEOUT, cwd=REPO, env=env)
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\n[packaging] %d wheels built in %.0f s" % (len(VERSIONS), time.monotonic() - t0))
    found = {}
    for v in VERSIONS:
        tag = "cp" + v.replace(".", "")
        paths = glob.glob(os.path.join(out, "ferrocorn-*-%s-%s-*.whl" % (tag, tag)))
        assert len(paths) == 1, (v, os.listdir(out))
        found[v] = paths[0]
    yield found
    shutil.rmtree(out, ignore_errors=True)


def make_venv(python, wheel):
    """A new venv of `python` with `wheel`, Flask and prometheus_client."""
    d = tempfile.mkdtemp(prefix="ferrocorn-venv-")
    run([python, "-m", "venv", d])
    run([os.path.join(d, "bin", "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         wheel, "Flask", "prometheus_client"])
    return d


@pytest.fixture(scope="module", params=VERSIONS)
def venv(request, wheels):
    d = make_venv(pyenv_python(request.param), wheels[request.param])
    yield request.param, d
    shutil.rmtree(d, ignore_errors=True)


def server_env(extra=None):
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "GUNICORN_CMD_ARGS", "WEB_CONCURRENCY",
                        "PROMETHEUS_MULTIPROC_DIR", "LISTEN_FDS", "LISTEN_PID")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    env["PYTHONUNBUFFERED"] = "1"
    env["PROMETHEUS_BIND_ADDRESS"] = "127.0.0.1"
    env["PROMETHEUS_METRICS_PORT"] = str(free_port())
    env.update(extra or {})
    return env


class Master:
    """A server started from a command line of our own (console script,
    `python -m ferrocorn` or the binary), in its own session."""

    def __init__(self, cmd, env=None, cwd=EXAMPLES, ready=True):
        self.tmp = tempfile.mkdtemp(prefix="ferrocorn-pkg-")
        self.port = free_port()
        self.cmd = list(cmd) + ["-b", "127.0.0.1:%d" % self.port]
        self.env = server_env(env)
        self.metrics_port = int(self.env["PROMETHEUS_METRICS_PORT"])
        self.log_path = os.path.join(self.tmp, "out.log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, cwd=cwd, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = "http://127.0.0.1:%d" % self.port
        if ready:
            wait_for(self._ready, 30, msg="%s ready" % " ".join(self.cmd))

    def _ready(self):
        if self.proc.poll() is not None:
            raise AssertionError("exited with %s before it was ready:\n%s" % (self.proc.returncode, self.log()))
        try:
            return requests.get(self.url + "/", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def workers(self, pid=None):
        return children_of(pid or self.proc.pid)

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(5)
        self._log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def status_field(pid, name):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    raise AssertionError("no %s in /proc/%d/status" % (name, pid))


def title(pid):
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        return f.read().split(b"\0")[0].decode()


def report_conf(tmp):
    """examples/gunicorn.conf.py plus a when_ready hook that records, per
    master, how its interpreter was started (to see what USR2 ran)."""
    path = os.path.join(tmp, "report.conf.py")
    with open(path, "w") as f:
        f.write(
            "__file__ = %r\n"
            "exec(compile(open(__file__).read(), __file__, 'exec'))\n"
            "def when_ready(server):\n"
            "    import json, os, sys\n"
            "    spec = getattr(sys.modules['__main__'], '__spec__', None)\n"
            "    with open(os.path.join(%r, 'ready.%%d' %% os.getpid()), 'w') as f:\n"
            "        json.dump({'executable': sys.executable, 'argv': sys.argv,\n"
            "                   'orig_argv': getattr(sys, 'orig_argv', None),\n"
            "                   'main_module': getattr(spec, 'name', None),\n"
            "                   'utf8_mode': sys.flags.utf8_mode}, f)\n"
            % (EXAMPLE_CONF, tmp))
    return path


def read_report(tmp, pid):
    path = os.path.join(tmp, "ready.%d" % pid)
    wait_for(lambda: os.path.exists(path) and os.path.getsize(path) > 0, 20, msg="when_ready of %d" % pid)
    with open(path) as f:
        return json.load(f)


# -- the installed command ------------------------------------------------------

def test_installed_extension_needs_no_libpython(venv):
    version, d = venv
    so = glob.glob(os.path.join(d, "lib", "python" + version, "site-packages", "ferrocorn", "_ferrocorn*.so"))
    assert len(so) == 1, so
    out = run(["ldd", so[0]])
    assert "libpython" not in out, out
    assert "not found" not in out, out


def test_version_names_ferrocorn_and_its_python(venv):
    version, d = venv
    py = os.path.join(d, "bin", "python")
    for cmd in ([os.path.join(d, "bin", "ferrocorn"), "--version"], [py, "-m", "ferrocorn", "--version"]):
        out = run(cmd, env=server_env())
        lines = out.splitlines()
        assert re.fullmatch(r"ferrocorn \(version \d+\.\d+\.\d+\S*\)", lines[0]), out
        assert re.fullmatch(r"Python %s\.\d+ \(%s\)" % (re.escape(version), re.escape(py)), lines[1]), out


def test_flask_example_lifecycle(venv):
    """GET and /metrics; master shape; HUP and USR2 + TERM under load with
    no failed request; the new master runs the same command; TERM exits 0."""
    version, d = venv
    tmp = tempfile.mkdtemp(prefix="ferrocorn-report-")
    script = os.path.join(d, "bin", "ferrocorn")
    args = ["-c", report_conf(tmp), "-w", "2", "--graceful-timeout", "10"]
    m = Master([script] + args)
    new_master = None
    try:
        r = requests.get(m.url + "/", timeout=10)
        assert r.status_code == 200 and "Hello from Flask!" in r.text, r.text[:200]
        # (a worker counts a request once its response is written: the
        # scrape may come first)
        metrics = wait_for(lambda: (lambda r: r if re.search(r'^gunicorn_worker_requests_total\{.*\} [1-9]', r.text,
                                                             re.M) else None)(
            requests.get("http://127.0.0.1:%d/metrics" % m.metrics_port, timeout=10)), 10,
            msg="gunicorn_worker_requests_total > 0")
        assert metrics.status_code == 200
        assert 'example_pages_served_total{endpoint="index"}' in metrics.text, metrics.text[:3000]

        pid = m.proc.pid
        assert status_field(pid, "Threads") == "1"
        assert title(pid).startswith("ferrocorn: master [")
        workers = wait_for(lambda: (lambda w: w if len(w) == 2 else None)(m.workers()), 20, msg="2 workers")
        for w in workers:
            assert title(w).startswith("ferrocorn: worker [")
        first = read_report(tmp, pid)
        assert first["executable"] == os.path.join(d, "bin", "python")

        load = Load(m.url, "/", threads=2, keepalive=(False, True), max_seconds=60)
        try:
            load.wait_count(20)
            m.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: (lambda w: len(w) == 2 and not set(w) & set(workers))(m.workers()), 20,
                     msg="2 new workers after HUP")
            mark = load.count()
            load.wait_count(mark + 20)

            m.proc.send_signal(signal.SIGUSR2)
            new_master = wait_for(lambda: (lambda c: c[0] if c else None)(
                [p for p in children_of(pid, workers_only=False) if title(p).startswith("ferrocorn: master")]), 30,
                msg="the USR2 master")
            report = read_report(tmp, new_master)
            wait_for(lambda: len(children_of(new_master)) == 2, 30, msg="the new master's workers")
            mark = load.count()
            load.wait_count(mark + 20)
            m.proc.send_signal(signal.SIGTERM)
            assert m.proc.wait(30) == 0, m.log()[-3000:]
            mark = load.count()
            load.wait_count(mark + 20)
        finally:
            load.stop()
        assert load.errors == [], (load.errors[:5], m.log()[-3000:])
        assert {s for _, s, _ in load.ok} == {200}

        # The new master is the same command: interpreter, script, arguments.
        assert report["executable"] == first["executable"]
        assert report["argv"] == first["argv"] == [script] + args + ["-b", "127.0.0.1:%d" % m.port]
        assert report["main_module"] is None
        if first["orig_argv"] is not None:
            assert report["orig_argv"] == [first["executable"], script] + first["argv"][1:]
        assert status_field(new_master, "Threads") == "1"
        assert requests.get(m.url + "/", timeout=10).status_code == 200
        stop_pid(new_master, 20)
        assert not alive(new_master)
    finally:
        if new_master and alive(new_master):
            stop_pid(new_master, 10)
        m.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_exporter_compat_package_is_built_into_the_wheel(venv):
    """gunicorn_prometheus_exporter (gunicorn_compat/) comes with the wheel:
    a config from the exporter's guide runs in a venv that has only the
    wheel, Flask and prometheus_client, and its hooks are ferrocorn's."""
    version, d = venv
    probe = subprocess.run([os.path.join(d, "bin", "python"), "-c", "import gunicorn_prometheus_exporter"],
                           capture_output=True, text=True)
    assert probe.returncode == 1 and "No module named" in probe.stderr, probe
    gpe = os.path.join(EXAMPLES, "gunicorn-prometheus-exporter")
    m = Master([os.path.join(d, "bin", "ferrocorn"), "-c", os.path.join(gpe, "api-basic", "gunicorn.conf.py"),
                "app:app"], cwd=gpe, env={"PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="fc-mp-")})
    try:
        assert requests.get(m.url + "/", timeout=10).text.startswith("Hello")
        log = m.log()
        assert "Metrics server started successfully on port %d" % m.metrics_port in log, log
        assert "is ferrocorn's exporter (no second server started)" in log, log
        wait_for(lambda: "Updated GUNICORN_WORKER_CLASS from CLI" in m.log(), 10, msg="post_fork")
        m.proc.send_signal(signal.SIGTERM)
        assert m.proc.wait(30) == 0, m.log()[-3000:]
        assert "Server shutdown complete" in m.log()
    finally:
        m.close()


def test_python_m_reexec_keeps_the_module_form(venv):
    """`python -X dev -m ferrocorn ...`: USR2 runs the interpreter with the
    same options and `-m ferrocorn` (on 3.9 from the process's argv)."""
    version, d = venv
    tmp = tempfile.mkdtemp(prefix="ferrocorn-report-")
    py = os.path.join(d, "bin", "python")
    args = ["-c", report_conf(tmp), "-w", "1"]
    m = Master([py, "-X", "utf8", "-m", "ferrocorn"] + args)
    new_master = None
    try:
        first = read_report(tmp, m.proc.pid)
        m.proc.send_signal(signal.SIGUSR2)
        new_master = wait_for(lambda: (lambda c: c[0] if c else None)(
            [p for p in children_of(m.proc.pid, workers_only=False) if title(p).startswith("ferrocorn: master")]), 30,
            msg="the USR2 master")
        report = read_report(tmp, new_master)
        assert report["argv"] == first["argv"]
        assert report["argv"][0].endswith(os.path.join("ferrocorn", "__main__.py"))
        assert report["main_module"] == first["main_module"] == "ferrocorn.__main__"
        assert report["utf8_mode"] == first["utf8_mode"] == 1
        if first["orig_argv"] is not None:
            want = [py, "-X", "utf8", "-m", "ferrocorn"] + args + ["-b", "127.0.0.1:%d" % m.port]
            assert report["orig_argv"] == want, report
        m.proc.send_signal(signal.SIGTERM)
        assert m.proc.wait(30) == 0
        wait_for(lambda: requests.get(m.url + "/", timeout=5).status_code == 200, 20, msg="new master serves")
    finally:
        if new_master and alive(new_master):
            stop_pid(new_master, 10)
        m.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_workers_die_with_a_killed_master(venv):
    version, d = venv
    m = Master([os.path.join(d, "bin", "ferrocorn"), "-w", "2", "hello:app"])
    try:
        kids = wait_for(lambda: (lambda c: c if len(c) == 3 else None)(
            [p for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == m.proc.pid]), 20,
            msg="2 workers and the exporter")
        os.kill(m.proc.pid, signal.SIGKILL)
        m.proc.wait(5)
        wait_for(lambda: not any(alive(int(p)) for p in kids), 10, msg="children gone after the master's SIGKILL")
    finally:
        m.close()


def _ppid(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


# -- the same as the binary (the binary is built for the project venv's Python) --

def binary_version():
    out = run([os.path.join(VENV, "bin", "python"), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
    return out.strip()


@pytest.fixture(scope="module")
def same_as_binary(wheels):
    version = binary_version()
    assert version in wheels, version
    d = make_venv(pyenv_python(version), wheels[version])
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_master_signals_and_threads_equal_the_binary(same_as_binary):
    d = same_as_binary
    shown = {}
    for name, cmd, env in [
        ("binary", [BINARY], {"VIRTUAL_ENV": d}),
        ("console script", [os.path.join(d, "bin", "ferrocorn")], {}),
        ("python -m", [os.path.join(d, "bin", "python"), "-m", "ferrocorn"], {}),
    ]:
        m = Master(cmd + ["-w", "1", "hello:app"], env=env)
        try:
            pid = m.proc.pid
            shown[name] = {f: status_field(pid, f) for f in ("Threads", "SigBlk", "SigIgn", "SigCgt")}
            assert title(pid) == "ferrocorn: master [hello:app]"
            m.proc.send_signal(signal.SIGTERM)
            assert m.proc.wait(20) == 0
        finally:
            m.close()
    assert shown["binary"]["Threads"] == "1"
    # The binary also catches SIGSEGV and SIGBUS: Rust's runtime installs
    # its stack-overflow reporter before a Rust `main` runs; a library
    # loaded into Python gets no such runtime set-up (an overflow crashes
    # with SIGSEGV either way, only the message differs). Every other
    # disposition is the same.
    rust_runtime = (1 << (signal.SIGSEGV - 1)) | (1 << (signal.SIGBUS - 1))
    binary = dict(shown["binary"])
    caught = int(binary["SigCgt"], 16)
    assert caught & rust_runtime == rust_runtime, binary
    binary["SigCgt"] = "%016x" % (caught & ~rust_runtime)
    assert shown["console script"] == binary, shown
    assert shown["python -m"] == binary, shown


@pytest.mark.parametrize("args,code", [
    (["--no-such-flag"], 2),
    (["no_such_module:app"], 3),
    (["hello:no_such_app"], 4),
    (["--check-config", "hello:app"], 0),
])
def test_exit_codes_equal_the_binary(same_as_binary, args, code):
    d = same_as_binary
    env = server_env({"VIRTUAL_ENV": d})
    bind = ["-b", "127.0.0.1:%d" % free_port()]
    got = {}
    for name, cmd in [("binary", [BINARY]), ("console script", [os.path.join(d, "bin", "ferrocorn")])]:
        p = subprocess.run(cmd + bind + args, cwd=EXAMPLES, env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        got[name] = p.returncode
    assert got == {"binary": code, "console script": code}, got


def test_sigint_stops_like_the_binary(same_as_binary):
    """Python's KeyboardInterrupt handler is gone: INT is the master's
    quick shutdown, exit 0, as in the binary."""
    d = same_as_binary
    m = Master([os.path.join(d, "bin", "ferrocorn"), "-w", "1", "hello:app"])
    try:
        m.proc.send_signal(signal.SIGINT)
        assert m.proc.wait(20) == 0, m.log()[-2000:]
        assert "KeyboardInterrupt" not in m.log()
    finally:
        m.close()


# -- a Python without a shared libpython ----------------------------------------

def test_runs_on_a_python_without_shared_libpython(wheels):
    """Debian's /usr/bin/python3 has libpython linked in statically: the
    extension resolves CPython's symbols from the executable."""
    py = "/usr/bin/python3"
    assert os.path.exists(py), "Debian's python3 is missing (apt-get install python3 python3-venv)"
    assert "libpython" not in run(["ldd", py]), "%s is linked to a shared libpython" % py
    version = run([py, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).strip()
    assert version in wheels, "no wheel for Debian's Python %s" % version
    d = make_venv(py, wheels[version])
    try:
        m = Master([os.path.join(d, "bin", "ferrocorn"), "-w", "2", "-c", EXAMPLE_CONF])
        try:
            assert requests.get(m.url + "/", timeout=10).status_code == 200
            assert requests.get("http://127.0.0.1:%d/metrics" % m.metrics_port, timeout=10).status_code == 200
            maps = open("/proc/%d/maps" % m.proc.pid).read()
            assert "libpython" not in maps
            m.proc.send_signal(signal.SIGTERM)
            assert m.proc.wait(20) == 0
        finally:
            m.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
