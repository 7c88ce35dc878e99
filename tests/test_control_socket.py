"""gunicorn 27's control socket (control_socket, control_socket_mode,
--no-control-socket): gunicorn's own client `gunicornc` (from the venv) and
`ferrocorn ctl` against the real server.

Every test server gets its own XDG_RUNTIME_DIR (conftest), so the default
socket is <tmpdir>/gunicorn.ctl, as gunicorn's.
"""
import json
import os
import re
import signal
import socket
import stat
import struct
import subprocess
import time

import pytest
import requests

from conftest import APPS, IS_GUNICORN, SERVER_BIN, VENV
from test_hooks import n_children, stop_pid, wait_for

GUNICORNC = os.path.join(VENV, "bin", "gunicornc")

ferrocorn_only = pytest.mark.ferrocorn_only


def sock_path(s):
    return os.path.join(s.tmpdir, "gunicorn.ctl")


def wait_socket(path, timeout=15.0):
    return wait_for(lambda: os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode),
                    timeout, msg="control socket %s" % path)


def run(client, path, command, *extra, check=True):
    """One command through `gunicornc` or `ferrocorn ctl`."""
    cmd = [GUNICORNC] if client == "gunicornc" else [SERVER_BIN, "ctl"]
    out = subprocess.run(cmd + ["-s", path, "-c", command] + list(extra),
                         capture_output=True, text=True, timeout=30)
    if check:
        assert out.returncode == 0, (client, command, out.stdout, out.stderr)
    return out


def run_json(client, path, command):
    return json.loads(run(client, path, command, "-j").stdout)


def frame(obj):
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


def read_frame(sock):
    head = b""
    while len(head) < 4:
        chunk = sock.recv(4 - len(head))
        if not chunk:
            return None
        head += chunk
    (n,) = struct.unpack(">I", head)
    body = b""
    while len(body) < n:
        chunk = sock.recv(n - len(body))
        assert chunk, "reply cut short"
        body += chunk
    return json.loads(body)


def live_workers_metric(s):
    """idle + busy workers in gunicorn_workers, from the exporter."""
    text = requests.get("http://127.0.0.1:%d/metrics" % s.metrics_port, timeout=10).text
    total = 0.0
    for state in ("idle", "busy"):
        m = re.search(r'^gunicorn_workers\{[^}]*state="%s"[^}]*\} (\S+)$' % state, text, re.M)
        total += float(m.group(1)) if m else 0.0
    return int(total)


CLIENTS = ["gunicornc"] if IS_GUNICORN else ["gunicornc", "ferrocorn"]


@pytest.mark.parametrize("client", CLIENTS)
def test_show_workers_lists_the_real_worker_pids(server, client):
    s = server(["-w", "2", "wsgiapp:app"])
    path = wait_socket(sock_path(s)) and sock_path(s)
    pids = n_children(s, 2)
    # the second worker may still be importing the app
    data = wait_for(lambda: (lambda d: d if IS_GUNICORN or all(w["booted"] for w in d["workers"])
                             else None)(run_json(client, path, "show workers")), msg="workers booted")
    assert data["count"] == 2
    assert sorted(w["pid"] for w in data["workers"]) == pids
    assert [w["age"] for w in data["workers"]] == sorted(w["age"] for w in data["workers"])
    for w in data["workers"]:
        # gunicorn's master never marks its workers booted (always False)
        assert w["booted"] is (not IS_GUNICORN) and w["aborted"] is False
        assert 0 <= w["last_heartbeat"] < 30
    text = run(client, path, "show workers").stdout
    assert text.startswith("PID        AGE    BOOTED   LAST_BEAT\n"), text
    for pid in pids:
        booted = "no" if IS_GUNICORN else "yes"
        assert re.search(r"^%d\s+\d+\s+%s\s+[\d.]+s ago$" % (pid, booted), text, re.M), text
    assert text.rstrip().endswith("Total: 2 workers")
    # show all, stats, listeners, config, help: gunicorn's shapes
    every = run_json(client, path, "show all")
    assert every["arbiter"] == {"pid": s.proc.pid, "type": "arbiter", "role": "master"}
    assert sorted(w["pid"] for w in every["web_workers"]) == pids
    assert every["web_worker_count"] == 2 and every["dirty_arbiter"] is None
    stats = run_json(client, path, "show stats")
    assert stats["pid"] == s.proc.pid
    assert stats["workers_current"] == 2 and stats["workers_target"] == 2
    assert stats["workers_spawned"] == 2 and stats["reloads"] == 0
    lst = run_json(client, path, "show listeners")
    assert lst["count"] == 1
    assert lst["listeners"][0]["address"] == "http://127.0.0.1:%d" % s.port
    assert lst["listeners"][0]["type"] == "tcp"
    cfg = run_json(client, path, "show config")
    assert cfg["workers"] == 2 and cfg["control_socket"] == path
    assert cfg["control_socket_disable"] is False and cfg["bind"] == ["127.0.0.1:%d" % s.port]
    helptext = run(client, path, "help").stdout
    assert "worker add [N]" in helptext and "shutdown [graceful|quick]" in helptext
    # the log says where it listens
    assert "Control socket listening at %s" % path in s.log()


@pytest.mark.parametrize("client", CLIENTS)
def test_worker_add_and_remove_change_the_worker_count(server, client):
    s = server(["-w", "1", "wsgiapp:app"])
    path = sock_path(s)
    wait_socket(path)
    n_children(s, 1)
    assert run_json(client, path, "worker add 2") == {"added": 2, "previous": 1, "total": 3}
    pids = n_children(s, 3)
    wait_for(lambda: run_json(client, path, "show workers")["count"] == 3, msg="3 in show workers")
    if not IS_GUNICORN:
        wait_for(lambda: live_workers_metric(s) == 3, msg="gunicorn_workers says 3")
    # like TTOU: never below one worker; the oldest go first
    assert run_json(client, path, "worker remove 5") == {"removed": 2, "previous": 3, "total": 1}
    left = n_children(s, 1)
    assert left == [max(pids)]
    wait_for(lambda: run_json(client, path, "show workers")["count"] == 1, msg="1 in show workers")
    if not IS_GUNICORN:
        wait_for(lambda: live_workers_metric(s) == 1, msg="gunicorn_workers says 1")
    assert requests.get(s.url + "/", timeout=10).status_code == 200
    # bad arguments are errors, gunicorn's words
    out = run(client, path, "worker add many", check=False)
    assert out.returncode == 1
    assert "Invalid argument: invalid literal for int() with base 10: 'many'" in out.stderr


def test_worker_kill_and_reload_replace_workers(server):
    s = server(["-w", "2", "wsgiapp:app"])
    path = sock_path(s)
    wait_socket(path)
    before = n_children(s, 2)
    assert run_json("gunicornc", path, "worker kill 1") == {"success": False,
                                                            "error": "Worker 1 not found"}
    assert run_json("gunicornc", path, "worker kill %d" % before[0]) == {"success": True,
                                                                         "killed": before[0]}
    after_kill = wait_for(lambda: (lambda c: c if len(c) == 2 and before[0] not in c else None)(
        sorted(s.children())), msg="the killed worker replaced")
    assert run_json("gunicornc", path, "reload") == {"status": "reloading"}
    wait_for(lambda: (lambda c: len(c) == 2 and not set(c) & set(after_kill))(s.children()),
             20, msg="2 new workers after reload (have %s)" % s.children())
    assert wait_for(lambda: run_json("gunicornc", path, "show stats")["reloads"] == 1,
                    msg="reloads == 1")
    assert requests.get(s.url + "/", timeout=10).status_code == 200
    assert run_json("gunicornc", path, "reopen") == {"status": "reopening"}
    assert s.proc.poll() is None


SHUTDOWNS = [("gunicornc", None)] + ([] if IS_GUNICORN else [("ferrocorn", "quick")])


@pytest.mark.parametrize("client,mode", SHUTDOWNS)
def test_shutdown_stops_the_server_and_removes_the_socket(server, client, mode):
    s = server(["-w", "1", "wsgiapp:app"])
    path = sock_path(s)
    wait_socket(path)
    command = "shutdown" + (" " + mode if mode else "")
    assert run_json(client, path, command) == {"status": "shutting_down",
                                               "mode": mode or "graceful"}
    assert s.proc.wait(20) == 0
    assert not os.path.exists(path)


def test_mode_and_path_settings_apply(server, tmp_path):
    path = str(tmp_path / "sub" / "dir" / "app.ctl")
    s = server(["-w", "1", "--control-socket", path, "--control-socket-mode", "0660",
                "wsgiapp:app"])
    wait_socket(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert not os.path.exists(sock_path(s))
    assert run_json("gunicornc", path, "show workers")["count"] == 1
    s.stop()
    assert not os.path.exists(path)
    # the default mode is 0600; a relative path is taken from the current directory
    s = server(["-w", "1", "--control-socket", "rel.ctl", "--pythonpath", APPS, "wsgiapp:app"],
               cwd=str(tmp_path))
    rel = str(tmp_path / "rel.ctl")
    wait_socket(rel)
    assert stat.S_IMODE(os.stat(rel).st_mode) == 0o600
    assert run_json("gunicornc", rel, "show stats")["workers_current"] == 1


def test_no_control_socket_makes_no_socket(server):
    s = server(["-w", "1", "--no-control-socket", "wsgiapp:app"])
    n_children(s, 1)
    time.sleep(0.5)
    assert not os.path.exists(sock_path(s))
    out = run("gunicornc", sock_path(s), "show workers", check=False)
    assert out.returncode == 1 and "Failed to connect" in out.stderr
    assert "control_socket" not in s.log()  # no "not implemented" warning any more


def test_stale_socket_file_is_replaced(server, tmp_path):
    path = str(tmp_path / "stale.ctl")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)  # bound, never listening, then closed: a crashed run's file
    dead.close()
    assert os.path.exists(path)
    s = server(["-w", "1", "--control-socket", path, "wsgiapp:app"])
    wait_for(lambda: "Control socket listening at %s" % path in s.log(), msg="listening log")
    assert run_json("gunicornc", path, "show workers")["count"] == 1


@ferrocorn_only
def test_a_file_that_is_not_a_socket_is_left_alone(server, tmp_path):
    path = str(tmp_path / "precious.ctl")
    with open(path, "w") as f:
        f.write("keep me\n")
    s = server(["-w", "1", "--control-socket", path, "wsgiapp:app"])
    s.wait_log("Failed to start control socket")
    assert "exists and is not a socket" in s.log()
    with open(path) as f:
        assert f.read() == "keep me\n"
    assert requests.get(s.url + "/", timeout=10).status_code == 200


@ferrocorn_only
def test_bad_clients_never_block_the_master(server):
    s = server(["-w", "1", "wsgiapp:app"])
    path = sock_path(s)
    wait_socket(path)
    n_children(s, 1)
    opened = []

    def client():
        c = socket.socket(socket.AF_UNIX)
        c.settimeout(5)
        c.connect(path)
        opened.append(c)
        return c

    silent = client()  # connects and sends nothing
    partial = client()
    partial.sendall(b"\x00\x00")  # half a length prefix
    halfmsg = client()
    halfmsg.sendall(frame({"id": 1, "command": "show stats"})[:9])  # a cut message
    # a client that sends requests and never reads the replies
    flood = client()
    flood.setblocking(False)
    try:
        for _ in range(20000):
            flood.send(frame({"id": 1, "command": "show config"}))
    except BlockingIOError:
        pass
    # garbage: answered with an error, then closed
    for junk, err in [(b"\x00\x00\x00\x05hello", "Invalid JSON"),
                      (b"\xff\xff\xff\xff", "Message too large: 4294967295"),
                      (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "Message too large")]:
        c = client()
        c.sendall(junk)
        reply = read_frame(c)
        assert reply["status"] == "error" and err in reply["error"], reply
        assert c.recv(10) == b""
    # well-formed JSON that is not a request
    c = client()
    for bad, err in [([1, 2], "Command failed"), ({"id": 7}, "Empty command"),
                     ({"id": 8, "command": "show 'x"}, "Invalid argument"),
                     ({"id": 9, "command": "nope"}, "Unknown command: nope"),
                     ({"id": 10, "command": "show dirty"}, "not implemented"),
                     ({"id": 11, "command": "dirty add 2"}, "not implemented")]:
        c.sendall(frame(bad))
        reply = read_frame(c)
        assert reply["status"] == "error" and err in reply["error"], (bad, reply)
    # pipelined requests on one connection, the second split across writes
    c.sendall(frame({"id": "a", "command": "show", "args": ["stats"]}) + frame({"id": 2, "command": "help"})[:5])
    time.sleep(0.1)
    c.sendall(frame({"id": 2, "command": "help"})[5:])
    assert read_frame(c)["id"] == "a"
    assert "commands" in read_frame(c)["data"]
    # meanwhile the master serves everything else
    t0 = time.monotonic()
    assert run_json("gunicornc", path, "show workers")["count"] == 1
    assert time.monotonic() - t0 < 5
    for _ in range(5):
        assert requests.get(s.url + "/", timeout=10).status_code == 200
    assert run_json("gunicornc", path, "worker add") == {"added": 1, "previous": 1, "total": 2}
    n_children(s, 2)
    assert s.proc.poll() is None
    # the client that never read: its replies are still coming, in order
    flood.setblocking(True)
    flood.settimeout(5)
    assert read_frame(flood)["status"] == "ok"
    # clients holding connections open cannot lock the operator out
    for _ in range(70):
        client()
    assert run_json("ferrocorn", path, "show stats")["workers_target"] == 2
    for c in opened:
        c.close()
    assert run_json("gunicornc", path, "show stats")["workers_target"] == 2


@ferrocorn_only
def test_ferrocorn_ctl_interactive_and_dirty_error(server):
    s = server(["-w", "1", "wsgiapp:app"])
    path = sock_path(s)
    wait_socket(path)
    pid = n_children(s, 1)[0]
    out = subprocess.run([SERVER_BIN, "ctl", "-s", path], input="show workers\nshow dirty\nhelp\nquit\n",
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Connected to %s\n" % path), out.stdout
    assert re.search(r"^%d\s+1\s+yes" % pid, out.stdout, re.M), out.stdout
    assert "Error: dirty arbiters (dirty_apps, dirty_workers) are not implemented in ferrocorn" in out.stdout
    assert "Available commands:" in out.stdout
    # the default socket, as gunicornc's: $XDG_RUNTIME_DIR/gunicorn.ctl
    env = dict(os.environ, XDG_RUNTIME_DIR=s.tmpdir)
    out = subprocess.run([SERVER_BIN, "ctl", "-c", "show stats"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "PID:              %d" % s.proc.pid in out.stdout, out
    out = subprocess.run([SERVER_BIN, "ctl", "-s", os.path.join(s.tmpdir, "none.ctl"), "-c", "help"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "Error: Failed to connect to" in out.stderr
    os.kill(s.proc.pid, signal.SIGTERM)
    assert s.proc.wait(20) == 0
    assert not os.path.exists(path)


@ferrocorn_only
def test_usr2_new_master_takes_the_socket_and_keeps_it(server):
    """The new master binds the same path; the old one, stopping, leaves
    the new one's socket file in place (gunicorn would remove it)."""
    s = server(["-w", "1", "wsgiapp:app"])
    path = sock_path(s)
    wait_socket(path)
    old = s.proc.pid
    s.signal(signal.SIGUSR2)
    new = wait_for(lambda: (lambda p: p if p != old else None)(
        run_json("gunicornc", path, "show stats")["pid"]), 20, msg="the new master on the socket")
    try:
        s.signal(signal.SIGTERM)
        assert s.wait(15) == 0, s.log()
        assert os.path.exists(path)
        assert run_json("gunicornc", path, "show stats")["pid"] == new
        assert run_json("ferrocorn", path, "show workers")["count"] == 1
    finally:
        stop_pid(new, timeout=15)
    wait_for(lambda: not os.path.exists(path), 10, msg="socket removed by the new master at exit")
