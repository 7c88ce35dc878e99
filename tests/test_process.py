"""Process settings: --daemon with --pid, process titles (-n), WINCH when
daemonized, and systemd socket activation (LISTEN_FDS)."""

import os
import re
import signal
import subprocess
import tempfile
import time

import pytest
import requests

from conftest import APPS, IS_GUNICORN, IS_WHEEL, SERVER_BIN, free_port, is_worker, server_env


def wait_for(pred, timeout, msg):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + msg)


def read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def children(pid):
    """Workers of master `pid` (its metrics exporter left out)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split() if is_worker(int(p))]


def cmdline(pid):
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        return f.read().replace(b"\0", b" ").decode().strip()


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_daemon_pidfile_titles_and_winch():
    d = tempfile.mkdtemp(prefix="fc-daemon-")
    pidfile = os.path.join(d, "app.pid")
    port = free_port()
    env = server_env(tmpdir=d)
    # --daemon returns at once; the daemonized master writes the pidfile.
    r = subprocess.run(
        [SERVER_BIN, "-D", "-p", pidfile, "-n", "myapp", "-w", "2", "-b", "127.0.0.1:%d" % port,
         "--error-logfile", os.path.join(d, "error.log"), "wsgiapp:app"],
        cwd=APPS, env=env, timeout=20, capture_output=True)
    assert r.returncode == 0, r
    master = wait_for(lambda: read_pid(pidfile), 10, "the pidfile")
    try:
        assert os.getsid(master) != os.getsid(0), "the daemon runs in its own session"
        wait_for(lambda: requests.get("http://127.0.0.1:%d/" % port, timeout=5).status_code == 200,
                 10, "the daemon to answer")
        workers = wait_for(lambda: len(children(master)) == 2 and children(master), 10, "2 workers")
        if not IS_GUNICORN:
            assert cmdline(master) == "ferrocorn: master [myapp]"
            for w in workers:
                assert cmdline(w) == "ferrocorn: worker [myapp]"
            out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master)],
                                 capture_output=True, text=True)
            titles = [cmdline(int(p)) for p in out.stdout.split()]
            assert "ferrocorn: exporter [myapp]" in titles, titles
        # WINCH on a daemonized master stops all workers gracefully.
        os.kill(master, signal.SIGWINCH)
        wait_for(lambda: children(master) == [], 10, "WINCH to stop the workers")
        assert alive(master)
    finally:
        os.kill(master, signal.SIGTERM)
        wait_for(lambda: not alive(master), 15, "the daemon to exit")
    assert not os.path.exists(pidfile), "the pidfile is removed at exit"


@pytest.mark.parametrize("inherit", [False, True], ids=["devnull", "inherited"])
def test_daemon_stdio_inheritance(inherit):
    """--daemon points stdout and stderr at /dev/null; with
    --enable-stdio-inheritance (-R) they stay where the shell sent them."""
    d = tempfile.mkdtemp(prefix="fc-stdio-")
    pidfile = os.path.join(d, "app.pid")
    out_path = os.path.join(d, "out.txt")
    conf = os.path.join(d, "conf.py")
    with open(conf, "w") as f:
        f.write("def when_ready(server):\n    print('when_ready says hi', flush=True)\n")
    port = free_port()
    with open(out_path, "wb") as out:
        r = subprocess.run(
            [SERVER_BIN, "-c", conf, "-D", "-p", pidfile, "-w", "1", "-b", "127.0.0.1:%d" % port]
            + (["-R"] if inherit else []) + ["wsgiapp:app"],
            cwd=APPS, env=server_env(tmpdir=d), timeout=20, stdout=out, stderr=subprocess.STDOUT)
    assert r.returncode == 0, r
    master = wait_for(lambda: read_pid(pidfile), 10, "the pidfile")
    try:
        wait_for(lambda: requests.get("http://127.0.0.1:%d/" % port, timeout=5).status_code == 200,
                 10, "the daemon to answer")
    finally:
        os.kill(master, signal.SIGTERM)
        wait_for(lambda: not alive(master), 15, "the daemon to exit")
    with open(out_path) as f:
        text = f.read()
    if inherit:
        # the hook's print and the error log (stderr) reached the file
        assert "when_ready says hi" in text, text
        assert "Listening at: http://127.0.0.1:%d" % port in text, text
    else:
        assert "when_ready says hi" not in text and "Listening at" not in text, text


def test_systemd_socket_activation():
    # (scripts/setup.sh installs systemd-socket-activate)
    d = tempfile.mkdtemp(prefix="fc-sd-")
    port = free_port()
    log = open(os.path.join(d, "out.log"), "wb")
    # systemd-socket-activate binds the port and execs the server with
    # LISTEN_FDS=1 / LISTEN_PID set; no --bind is given to the server.
    p = subprocess.Popen(
        ["systemd-socket-activate", "-l", "127.0.0.1:%d" % port, SERVER_BIN, "-w", "1", "wsgiapp:app"],
        cwd=APPS, env=server_env(tmpdir=d), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        r = wait_for(lambda: _get(port), 20, "the activated server to answer")
        assert r.status_code == 200
        with open(os.path.join(d, "out.log")) as f:
            text = f.read()
        assert "Listening at: http://127.0.0.1:%d" % port in text, text
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def _get(port):
    try:
        return requests.get("http://127.0.0.1:%d/" % port, timeout=5)
    except requests.ConnectionError:
        return None


@pytest.mark.skipif(IS_GUNICORN or IS_WHEEL, reason="the binary embeds one Python version "
                    "(gunicorn and the wheel's command run in their venv's interpreter)")
def test_venv_with_another_python_version_is_refused():
    d = tempfile.mkdtemp(prefix="fc-venv-")
    os.makedirs(os.path.join(d, "bin"))
    os.symlink(os.path.join(server_env()["VIRTUAL_ENV"], "bin", "python3"), os.path.join(d, "bin", "python3"))
    with open(os.path.join(d, "pyvenv.cfg"), "w") as f:
        f.write("home = /usr/bin\nversion = 3.99.1\n")
    r = subprocess.run([SERVER_BIN, "wsgiapp:app"], cwd=APPS, env=server_env({"VIRTUAL_ENV": d}),
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 1, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "3.99" in lines[0] and "3.11" in lines[0] and "PYO3_PYTHON=" in lines[0], lines[0]


def test_spew_traces_the_workers_python(server):
    """--spew: every line of Python the server runs is printed on stdout
    (module:lineno: source), in the workers too (they are forked from the
    traced master)."""
    s = server(["-w", "1", "--spew", "wsgiapp:app"])
    assert requests.get(s.url + "/pid", timeout=10).status_code == 200
    s.stop()
    out = s.stdout()
    # the lines of wsgiapp.app that /pid ran, with their source
    assert re.search(r'^wsgiapp:\d+:     if path == "/pid":$', out, re.M), out[-2000:]
    assert re.search(r'^wsgiapp:\d+:         return _send\(start_response, str\(os.getpid\(\)\)\)$', out, re.M)
