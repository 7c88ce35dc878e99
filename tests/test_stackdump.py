"""Stack dumps: a worker silent past --timeout logs the Python stack of every
thread and the request in flight before it is aborted and replaced; SIGRTMIN+1
asks a live worker for the same, and it goes on serving."""
import signal
import socket
import time

import pytest
import requests

pytestmark = pytest.mark.ferrocorn_only

KINDS = {
    "sync": ["-k", "sync", "stuckapp:app"],
    "asgi": ["-k", "asgi", "stuckapp:asgi_app"],
}


def send_stuck(port):
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"GET /stuck?who=me HTTP/1.1\r\nHost: h\r\n\r\n")
    return c


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_timeout_logs_the_stuck_frame_and_request(server, kind):
    s = server(["-w", "1", "--timeout", "2"] + KINDS[kind])
    [worker] = s.children()
    c = send_stuck(s.port)
    try:
        s.wait_log("WORKER TIMEOUT: Python stacks of worker %d" % worker, timeout=15)
        deadline = time.monotonic() + 15
        while worker in s.children() or not s.children():
            assert time.monotonic() < deadline, s.log()[-3000:]
            time.sleep(0.05)
    finally:
        c.close()
    log = s.log()
    dump = log[log.index("WORKER TIMEOUT: Python stacks"):]
    assert "stuckapp.py" in dump and "in stuck_here" in dump and "time.sleep(seconds)" in dump, dump[:3000]
    assert "serving GET /stuck" in dump, dump[:3000]
    assert "Worker (pid:%d) gave no sign of life for" % worker in log
    # the dump came before the worker was replaced, and it is replaced
    assert log.index("WORKER TIMEOUT: Python stacks") < log.rindex("Booting worker")
    assert requests.get(s.url + "/", timeout=10).text == "ok"


@pytest.mark.parametrize("kind", ["sync", "gthread", "asgi"])
def test_dump_on_demand_leaves_the_worker_serving(server, kind):
    args = {"gthread": ["-k", "gthread", "--threads", "2", "stuckapp:app"]}.get(kind) or KINDS[kind]
    s = server(["-w", "1"] + args)
    [worker] = s.children()
    os_kill = __import__("os").kill
    os_kill(worker, signal.SIGRTMIN + 1)
    s.wait_log("Stack dump (SIGRTMIN+1): Python stacks of worker %d" % worker, timeout=10)
    assert requests.get(s.url + "/", timeout=10).text == "ok"
    assert s.children() == [worker]
    if kind == "gthread":
        # a request stuck in one thread shows in the dump with its path
        c = send_stuck(s.port)
        time.sleep(0.5)
        os_kill(worker, signal.SIGRTMIN + 1)
        deadline = time.monotonic() + 10
        while s.log().count("Stack dump (SIGRTMIN+1)") < 2:
            assert time.monotonic() < deadline, s.log()[-3000:]
            time.sleep(0.05)
        time.sleep(0.2)
        dump = s.log()[s.log().rindex("Stack dump (SIGRTMIN+1)"):]
        assert "serving GET /stuck?who=me" in dump and "in stuck_here" in dump, dump[:3000]
        c.close()


def test_gthread_request_past_timeout_is_logged_once_and_the_worker_kept(server):
    """gthread (as gunicorn's) keeps beating while one thread is stuck, so
    --timeout does not replace the worker; ferrocorn logs the stacks once
    for that request, with its path, and the other thread goes on."""
    s = server(["-w", "1", "--timeout", "2", "-k", "gthread", "--threads", "2", "stuckapp:app"])
    [worker] = s.children()
    c = send_stuck(s.port)
    try:
        s.wait_log("Request past --timeout: Python stacks of worker %d" % worker, timeout=15)
        time.sleep(2.5)
        log = s.log()
        assert log.count("Request past --timeout: Python stacks") == 1, log[-3000:]
        dump = log[log.index("Request past --timeout: Python stacks"):]
        assert "serving GET /stuck?who=me" in dump and "in stuck_here" in dump, dump[:3000]
        assert "a request has run for" in log
        assert requests.get(s.url + "/", timeout=10).text == "ok"
        assert s.children() == [worker]
    finally:
        c.close()
