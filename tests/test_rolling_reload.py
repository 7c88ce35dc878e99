"""Rolling reload (reload_strategy = rolling, the default): HUP replaces the
workers a few at a time, each new one ready before an old one stops, so the
ready workers (gunicorn_workers idle + busy, sampled every 50 ms from the
exporter) never number fewer than the configured count; a new worker that
fails to boot stops the reload and the old workers keep serving.
`--reload-strategy all` is gunicorn's way.

The app is a module in a directory of the test's own, rewritten between
reloads (each new worker imports it afresh; it takes 0.3 s to import, so the
rollout is long enough to be watched)."""
import os
import signal
import tempfile
import threading
import time

import pytest
import requests

from conftest import run_server_cmd
from test_hooks import Load, wait_for
from test_metrics import _try_samples, total, wait_metrics

pytestmark = pytest.mark.ferrocorn_only

APP = '''\
import os
import time

time.sleep(0.3)
@EXTRA@
MARK = "@MARK@"


def app(environ, start_response):
    body = ("%d %s" % (os.getpid(), MARK)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


async def asgi_app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = ("%d %s" % (os.getpid(), MARK)).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
'''

# kind: (arguments, app, keep-alive per load thread: new connections and
# kept-alive ones).
KINDS = {
    "sync": (["-k", "sync"], "rollapp:app", (False, True)),
    "gthread": (["-k", "gthread", "--threads", "4"], "rollapp:app", (False, True)),
    "gevent": (["-k", "gevent"], "rollapp:app", (False, True)),
    "asgi": (["-k", "asgi"], "rollapp:asgi_app", (False, True)),
}

BROKEN = 'raise RuntimeError("rollapp cannot start: broken at import")'


def app_dir(mark):
    d = tempfile.mkdtemp(prefix="fc-rolling-")
    write_app(d, mark)
    return d


def write_app(d, mark, extra=""):
    path = os.path.join(d, "rollapp.py")
    with open(path + ".tmp", "w") as f:
        f.write(APP.replace("@EXTRA@", extra).replace("@MARK@", mark))
    os.replace(path + ".tmp", path)


def ready_count(smp):
    return total(smp, "gunicorn_workers", state="idle") + total(smp, "gunicorn_workers", state="busy")


def wait_ready_workers(s, n):
    return wait_for(lambda: (lambda smp: smp if smp and ready_count(smp) == n
                             and total(smp, "gunicorn_workers", state="booting") == 0 else None)(
        _try_samples(s)), 20, msg="%d ready workers\n%s" % (n, s.log()[-2000:]))


class Sampler:
    """Scrapes the exporter every 50 ms: (time, ready, booting) per answer;
    scrapes that get no answer (the exporter restarts on HUP) are counted."""

    def __init__(self, s):
        self.s = s
        self.seen = []
        self.missed = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.is_set():
            smp = _try_samples(self.s)
            if smp is None:
                self.missed += 1
            else:
                self.seen.append((time.monotonic(), ready_count(smp),
                                  total(smp, "gunicorn_workers", state="booting")))
            self.stopping.wait(0.05)

    def stop(self):
        self.stopping.set()
        self.thread.join(10)


def bodies_after(load, mark):
    with load.lock:
        return [b for (_, st, b) in load.ok[mark:]]


@pytest.mark.parametrize("kind", list(KINDS))
def test_rolling_hup_under_load_keeps_four_workers_ready(server, kind):
    args, app, keepalive = KINDS[kind]
    d = app_dir("one")
    s = server(["-w", "4", "--graceful-timeout", "10"] + args + [app], cwd=d)
    wait_ready_workers(s, 4)
    before = set(s.children())
    assert len(before) == 4
    load = Load(s.url, "/", threads=4, keepalive=keepalive, max_seconds=60)
    sampler = Sampler(s)
    try:
        load.wait_count(50)
        write_app(d, "two")
        s.signal(signal.SIGHUP)
        s.wait_log("Rolling reload done", 30)
        # the last old worker finishes its requests and exits
        after = wait_for(lambda: (lambda c: c if len(c) == 4 and not c & before else None)(
            set(s.children())), 15, msg="only new workers left")
        mark = load.count()
        load.wait_count(mark + 100)
    finally:
        sampler.stop()
        load.stop()

    assert load.failures() == [], (load.failures()[:10], s.log()[-3000:])
    assert len(after) == 4 and not after & before, (before, after, s.log()[-3000:])
    # the rollout was watched while it ran: new workers booting beside old
    # ones, and never fewer than 4 ready
    rolling = [x for x in sampler.seen if x[2] > 0]
    assert len(rolling) >= 5, (sampler.seen, sampler.missed, s.log()[-3000:])
    low = [x for x in sampler.seen if x[1] < 4]
    assert low == [], low
    # scrapes answer through the reload but while the exporter restarts
    assert len(sampler.seen) >= 5 * sampler.missed, (len(sampler.seen), sampler.missed, s.log()[-3000:])
    # one at a time for 4 workers: never two booting at once
    assert max(x[2] for x in sampler.seen) == 1, sampler.seen
    # before the HUP: the old code; once done, only the new workers and code
    tail = [b.split() for b in bodies_after(load, mark)]
    assert tail and all(m == "two" and int(p) in after for p, m in tail), tail[:10]
    log = s.log()
    assert "Rolling reload: 4 workers, 1 at a time" in log
    assert "Reload failed" not in log
    m = wait_metrics(s)
    assert total(m, "gunicorn_master_reloads_total") == 1
    assert total(m, "gunicorn_master_reload_failures_total") == 0
    assert total(m, "gunicorn_master_worker_restarts_total", reason="reload") == 4
    assert s.proc.poll() is None


def test_new_code_that_does_not_import_keeps_the_old_workers(server):
    d = app_dir("one")
    s = server(["-w", "2", "--graceful-timeout", "10", "rollapp:app"], cwd=d)
    wait_ready_workers(s, 2)
    before = set(s.children())
    write_app(d, "two", extra=BROKEN)
    s.signal(signal.SIGHUP)
    log = s.wait_log("Reload failed", 20)
    # the app's own error, then why the reload stopped
    assert "rollapp cannot start: broken at import" in log
    assert "the 2 workers serving keep serving" in log, log[-2000:]
    wait_for(lambda: set(s.children()) == before, 10, msg="only the old workers left")
    time.sleep(1.5)  # no respawn loop, no halt
    assert s.proc.poll() is None, s.log()[-3000:]
    assert set(s.children()) == before
    served = set()
    for _ in range(40):
        r = requests.get(s.url + "/", timeout=10)
        assert r.status_code == 200
        pid, mark = r.text.split()
        assert mark == "one"
        served.add(int(pid))
    # (which old worker accepts each connection is the kernel's choice)
    assert served and served <= before, (served, before)
    m = wait_metrics(s)
    assert total(m, "gunicorn_master_reload_failures_total") == 1
    assert total(m, "gunicorn_master_reloads_total") == 1
    assert ready_count(m) == 2

    # fixed: the next HUP rolls out
    write_app(d, "three")
    s.signal(signal.SIGHUP)
    wait_for(lambda: s.log().count("Rolling reload done") == 1, 20, msg="second reload done\n" + s.log()[-2000:])
    after = wait_for(lambda: (lambda c: c if len(c) == 2 and not c & before else None)(
        set(s.children())), 15, msg="only new workers left")
    for _ in range(10):
        pid, mark = requests.get(s.url + "/", timeout=10).text.split()
        assert mark == "three" and int(pid) in after
    m = wait_metrics(s)
    assert total(m, "gunicorn_master_reload_failures_total") == 1
    assert total(m, "gunicorn_master_reloads_total") == 2


def test_reload_strategy_all_is_gunicorns(server):
    d = app_dir("one")
    s = server(["-w", "2", "--reload-strategy", "all", "rollapp:app"], cwd=d)
    wait_ready_workers(s, 2)
    before = set(s.children())
    write_app(d, "two")
    s.signal(signal.SIGHUP)
    wait_for(lambda: (lambda c: len(c) == 2 and not c & before)(set(s.children())), 20,
             msg="2 new workers")
    wait_ready_workers(s, 2)
    assert requests.get(s.url + "/", timeout=10).text.split()[1] == "two"
    assert "Rolling reload" not in s.log()
    # every old worker was told to stop at once, not after a new one was ready
    # (gunicorn), and a new worker that does not boot stops the server
    write_app(d, "three", extra=BROKEN)
    s.signal(signal.SIGHUP)
    assert s.wait(20) == 3, s.log()[-3000:]
    log = s.log()
    assert "rollapp cannot start: broken at import" in log
    assert "Worker failed to boot." in log


def test_reload_strategy_is_checked_at_start():
    r = run_server_cmd(["--reload-strategy", "sometimes", "--check-config", "wsgiapp:app"])
    assert r.returncode != 0 and not r.timed_out, r
    assert "reload-strategy" in r.output or "reload_strategy" in r.output, r
    assert "sometimes" in r.output, r
    ok = run_server_cmd(["--reload-strategy", "ALL", "--check-config", "wsgiapp:app"])
    assert ok.returncode == 0, ok


def test_changed_worker_count_is_the_new_target(server):
    """workers in the config file: 3, then 5 (old ones serve until the new
    ones are ready), then 2 (the extra old ones stop at once)."""
    d = app_dir("one")
    s = server(["--graceful-timeout", "10", "rollapp:app"], cwd=d, config_text="workers = 3\n")
    wait_ready_workers(s, 3)
    sampler = Sampler(s)
    try:
        for n, mark in ((5, "two"), (2, "three")):
            before = set(s.children())
            write_app(d, mark)
            with open(s.config_path, "w") as f:
                f.write("workers = %d\n" % n)
            start = time.monotonic()
            s.signal(signal.SIGHUP)
            wait_for(lambda: (lambda c: c if len(c) == n and not c & before else None)(
                set(s.children())), 20, msg="%d new workers\n%s" % (n, s.log()[-2000:]))
            wait_ready_workers(s, n)
            during = [x for x in sampler.seen if x[0] > start]
            assert during and min(x[1] for x in during) >= min(n, len(before)), during
            for _ in range(5):
                assert requests.get(s.url + "/", timeout=10).text.split()[1] == mark
    finally:
        sampler.stop()
    assert s.log().count("Rolling reload done") == 2
    assert "Rolling reload: 5 workers, 2 at a time" in s.log()


def test_hup_during_a_rollout_rolls_out_the_latest(server):
    d = app_dir("one")
    s = server(["-w", "4", "--graceful-timeout", "10", "rollapp:app"], cwd=d)
    wait_ready_workers(s, 4)
    before = set(s.children())
    sampler = Sampler(s)
    load = Load(s.url, "/", threads=2, keepalive=(False, True), max_seconds=60)
    try:
        load.wait_count(20)
        write_app(d, "two")
        s.signal(signal.SIGHUP)
        s.wait_log("Rolling reload: 4 workers", 5)
        time.sleep(0.5)  # the first new worker is ready, the second booting
        write_app(d, "three")
        s.signal(signal.SIGHUP)
        wait_for(lambda: s.log().count("Rolling reload done") == 1, 30, msg="the second rollout done")
        after = wait_for(lambda: (lambda c: c if len(c) == 4 and not c & before else None)(
            set(s.children())), 15, msg="4 new workers")
        mark = load.count()
        load.wait_count(mark + 40)
    finally:
        sampler.stop()
        load.stop()
    assert load.failures() == [], (load.failures()[:10], s.log()[-3000:])
    low = [x for x in sampler.seen if x[1] < 4]
    assert low == [], low
    tail = [b.split() for b in bodies_after(load, mark)]
    assert tail and all(m == "three" and int(p) in after for p, m in tail), tail[:10]
    log = s.log()
    assert "Reload failed" not in log
    # the first rollout was still running at the second HUP: only one ended
    assert log.count("Rolling reload: 4 workers") == 2 and log.count("Rolling reload done") == 1, log


def test_preload_keeps_the_app_and_rolls_out(server):
    """With --preload the master imported the app at start and keeps it on
    HUP (gunicorn's Application.wsgi() caches it): the new workers, forked
    from the master, serve the same code, rolled out one at a time."""
    d = app_dir("one")
    s = server(["-w", "2", "--preload", "rollapp:app"], cwd=d)
    wait_ready_workers(s, 2)
    before = set(s.children())
    write_app(d, "two", extra=BROKEN)
    s.signal(signal.SIGHUP)
    s.wait_log("Rolling reload done", 20)
    after = wait_for(lambda: (lambda c: c if len(c) == 2 and not c & before else None)(
        set(s.children())), 15, msg="2 new workers")
    for _ in range(10):
        pid, mark = requests.get(s.url + "/", timeout=10).text.split()
        assert mark == "one" and int(pid) in after
    assert "broken at import" not in s.log()


def test_a_worker_lost_after_a_failed_reload_does_not_stop_the_server(server):
    """After a failed reload the app on disk does not import: a worker that
    dies then cannot be replaced. The master keeps the others serving and
    tries again every second (gunicorn would stop), until the code is fixed."""
    d = app_dir("one")
    s = server(["-w", "2", "rollapp:app"], cwd=d)
    wait_ready_workers(s, 2)
    before = sorted(s.children())
    write_app(d, "two", extra=BROKEN)
    s.signal(signal.SIGHUP)
    s.wait_log("Reload failed", 20)
    wait_for(lambda: sorted(s.children()) == before, 10, msg="only the old workers left")
    os.kill(before[0], signal.SIGKILL)
    wait_for(lambda: s.log().count("failed to boot after a failed reload") >= 2, 20,
             msg="two tries\n" + s.log()[-2000:])
    assert s.proc.poll() is None
    for _ in range(10):
        pid, mark = requests.get(s.url + "/", timeout=10).text.split()
        assert (int(pid), mark) == (before[1], "one")
    write_app(d, "three")
    wait_ready_workers(s, 2)
    workers = set(s.children())
    assert before[1] in workers and before[0] not in workers and len(workers) == 2
    # the replacement booted: it imported the fixed module
    marks = {requests.get(s.url + "/", timeout=10).text.split()[1] for _ in range(20)}
    assert marks <= {"one", "three"}, marks


def test_ready_means_post_worker_init_done(server):
    """A new worker is ready only once post_worker_init has returned: one
    that takes 1 s keeps the old worker serving that long; one that raises
    stops the reload."""
    d = app_dir("one")
    flag = os.path.join(d, "hook-mode")
    conf = '''import os, time
def post_worker_init(worker):
    mode = open(%r).read() if os.path.exists(%r) else ""
    if mode == "slow":
        time.sleep(1.0)
    elif mode == "fail":
        raise RuntimeError("post_worker_init refuses this worker")
''' % (flag, flag)
    s = server(["-w", "1", "rollapp:app"], cwd=d, config_text=conf)
    wait_ready_workers(s, 1)
    first = s.children()
    with open(flag, "w") as f:
        f.write("slow")
    start = time.monotonic()
    s.signal(signal.SIGHUP)
    s.wait_log("Rolling reload: 1 worker,", 5)
    time.sleep(0.6)
    # the new worker is in post_worker_init: the old one still serves
    assert first[0] in s.children()
    assert requests.get(s.url + "/", timeout=10).text.split()[0] == str(first[0])
    s.wait_log("Rolling reload done", 20)
    took = time.monotonic() - start
    assert took >= 1.0, took
    wait_for(lambda: (lambda c: c if len(c) == 1 and c != first else None)(s.children()), 10,
             msg="the new worker alone")
    second = s.children()
    with open(flag, "w") as f:
        f.write("fail")
    s.signal(signal.SIGHUP)
    log = s.wait_log("Reload failed", 20)
    assert "post_worker_init refuses this worker" in log
    wait_for(lambda: s.children() == second, 10, msg="the serving worker alone")
    assert requests.get(s.url + "/", timeout=10).text.split()[0] == str(second[0])
    m = wait_metrics(s)
    assert total(m, "gunicorn_master_reload_failures_total") == 1
