"""File descriptors: the master raises the soft open-files limit to the hard
one (logged at debug); a worker out of descriptors (EMFILE at accept) pauses
accepting with one log line per episode instead of spinning, and accepts
again once connections close."""
import socket
import time

import pytest
import requests

pytestmark = pytest.mark.ferrocorn_only


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


def test_soft_limit_raised_to_the_hard_limit(server):
    s = server(["-w", "1", "--log-level", "debug", "wsgiapp:app"])
    [worker] = s.children()
    with open("/proc/%d/limits" % worker) as f:
        line = next(x for x in f if x.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    assert soft == hard, line
    assert "open files limit" in s.log()


def test_out_of_descriptors_pauses_accepting_without_spinning(server):
    # the master's on_starting hook (after ferrocorn raised the soft limit)
    # lowers both limits: every worker starts with 64 descriptors
    conf = ("import resource\n"
            "def on_starting(server):\n"
            "    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n")
    s = server(["-w", "1", "--keep-alive", "30", "wsgiapp:app"], config_text=conf)
    [worker] = s.children()
    idle = []
    for _ in range(120):
        c = socket.socket()
        c.connect(("127.0.0.1", s.port))  # queued in the backlog once the worker is full
        idle.append(c)
    s.wait_log("Too many open files", timeout=10)
    before = cpu_seconds(worker)
    time.sleep(2)
    used = cpu_seconds(worker) - before
    assert used < 0.3, "the worker spun: %.2f s of CPU in 2 s" % used
    assert s.log().count("accepting pauses") == 1, s.log()[-2000:]
    assert s.log().count("Too many open files") == 1, s.log()[-2000:]
    for c in idle:
        c.close()
    r = requests.get(s.url + "/pid", timeout=10)
    assert r.status_code == 200 and int(r.text) == worker
    s.wait_log("accepting again: file descriptors are free", timeout=10)
