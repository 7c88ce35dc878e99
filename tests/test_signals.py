"""Process lifecycle under signals and load: HUP and USR2 without a failed
request, TTIN/TTOU, worker timeout, max_requests recycling, a killed worker.

Servers run tests/apps/lc_app.py; the hook recordings come from
tests/apps/lc_hooks.py (see test_hooks.py). The expectations were checked
against gunicorn 27 (TEST_SERVER=gunicorn).
"""
import collections
import os
import signal
import tempfile
import time

import requests

from test_hooks import (HOOKS_CONF, Load, alive, children_of, count, hook_env, index_of,
                        n_children, proc_stat, select, stop_pid, wait_for, wait_hooks)


def read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return None


# -- 2. HUP under continuous load ---------------------------------------------

def test_hup_under_load_reloads_config_without_failures(server):
    conf = "workers = 2\nraw_env = ['LC_MARK=one']\n"
    s = server(["--graceful-timeout", "10", "lc_app:app"], config_text=conf)
    before = n_children(s, 2)
    for _ in range(5):
        assert requests.get(s.url + "/info", timeout=10).text.split()[1] == "one"

    load = Load(s.url, "/info", threads=2, keepalive=(False, True), max_seconds=40)
    try:
        load.wait_count(40)
        with open(s.config_path, "w") as f:
            f.write("workers = 3\nraw_env = ['LC_MARK=two']\n")
        s.signal(signal.SIGHUP)
        after = wait_for(lambda: (lambda c: sorted(c) if len(c) == 3 and not set(c) & set(before) else None)(
            s.children()), 20, msg="3 new workers after HUP (have %s)" % s.children())
        time.sleep(0.3)
        mark = load.count()
        load.wait_count(mark + 60)
    finally:
        load.stop()

    assert load.failures() == [], (load.failures()[:10], s.log()[-3000:])
    bodies = load.bodies()
    assert len(bodies) >= mark + 60
    seen = [tuple(b.split()) for b in bodies]
    # before the HUP: old workers, old value; after it: only new workers, new value
    assert {int(p) for p, m in seen if m == "one"} <= set(before)
    assert {int(p) for p, m in seen if m == "two"} <= set(after)
    tail = seen[mark:]
    assert tail and all(m == "two" and int(p) in after for p, m in tail), tail[:20]
    assert s.proc.poll() is None
    assert "Hang up" in s.log()


# -- 3. USR2, then TERM to the old master, under continuous load ------------------

def test_usr2_then_term_old_master_under_load(server):
    pidfile = os.path.join(tempfile.mkdtemp(prefix="fc-lc-pid-"), "app.pid")
    s = server(["-w", "2", "-p", pidfile, "--graceful-timeout", "10", "lc_app:app"])
    old = s.proc.pid
    old_workers = n_children(s, 2)
    assert read_pid(pidfile) == old
    new = None
    load = Load(s.url, "/pid", threads=2, keepalive=(False, True), max_seconds=50)
    try:
        load.wait_count(30)
        s.signal(signal.SIGUSR2)
        # the new master writes <pidfile>.2; the pidfile still holds the old pid
        new = wait_for(lambda: (lambda p: p if p and p != old else None)(read_pid(pidfile + ".2")), 15,
                       msg="%s.2 with the new master's pid" % pidfile)
        st = proc_stat(new)
        assert st is not None and st[1] == old, "new master %d is not a child of the old one %d: %r" % (new, old, st)
        assert read_pid(pidfile) == old
        new_workers = wait_for(lambda: (lambda c: c if len(c) == 2 else None)(children_of(new)), 15,
                               msg="2 workers of the new master")
        assert not set(new_workers) & set(old_workers)
        # both generations serve from the same port for a while
        load.wait_count(load.count() + 30)
        # TERM to the old master: it stops with its workers, the new one is promoted
        s.signal(signal.SIGTERM)
        assert s.wait(15) == 0, s.log()
        wait_for(lambda: not any(alive(p) for p in old_workers), 10, msg="old workers gone")
        mark = load.count()
        wait_for(lambda: read_pid(pidfile) == new and not os.path.exists(pidfile + ".2"), 10,
                 msg="pidfile promoted to the new master (pidfile=%r .2=%r)" % (
                     read_pid(pidfile), read_pid(pidfile + ".2")))
        assert alive(new)
        load.wait_count(mark + 40)
        assert sorted(children_of(new)) == sorted(new_workers)
    finally:
        load.stop()
        if new is not None and alive(new):
            new_children = children_of(new)
            stop_pid(new, timeout=15)
            assert not alive(new), "new master %d did not stop" % new
            wait_for(lambda: not any(alive(p) for p in new_children), 10, msg="new master's workers gone")

    assert load.failures() == [], (load.failures()[:10], s.log()[-3000:])
    pids = [int(b) for b in load.bodies()]
    assert set(pids) <= set(old_workers) | set(new_workers), (set(pids), old_workers, new_workers)
    assert set(pids) & set(new_workers) and set(pids) & set(old_workers)
    assert all(p in new_workers for p in pids[mark + 5:]), pids[mark:]
    # the new master removed the pidfile it owned when it stopped
    wait_for(lambda: not os.path.exists(pidfile), 5, msg="pidfile removed at exit")


# -- 4. TTIN / TTOU ---------------------------------------------------------------

def test_ttin_ttou_change_workers_by_one(server):
    env, log = hook_env()
    s = server(["-c", HOOKS_CONF, "-w", "1", "lc_app:app"], env=env)
    master = s.proc.pid
    first = n_children(s, 1)
    s.signal(signal.SIGTTIN)
    two = n_children(s, 2)
    s.signal(signal.SIGTTIN)
    three = n_children(s, 3)
    assert set(first) < set(two) < set(three)
    ttin1 = (set(two) - set(first)).pop()
    ttin2 = (set(three) - set(two)).pop()
    s.signal(signal.SIGTTOU)
    left = n_children(s, 2)
    # the oldest worker is the one retired
    assert first[0] not in left and set(left) < set(three)
    s.signal(signal.SIGTTOU)
    last = n_children(s, 1)
    assert last == [ttin2]
    # at one worker, TTOU does nothing
    s.signal(signal.SIGTTOU)
    time.sleep(1.5)
    assert s.children() == last
    assert requests.get(s.url + "/", timeout=10).status_code == 200

    recs = wait_hooks(log, lambda r: count(r, "child_exit") == 2, msg="2 child_exit")
    changes = [(r["new"], r["old"]) for r in select(recs, "nworkers_changed")]
    assert changes == [(1, None), (2, 1), (3, 2), (2, 3), (1, 2)], changes
    for r in select(recs, "nworkers_changed"):
        assert r["pid"] == master and r["server"]["type"] == "Arbiter"
        assert r["server"]["num_workers"] == r["new"]
    # TTIN: the change is reported before the new worker is forked
    assert index_of(recs, "nworkers_changed", new=2, old=1) < index_of(recs, "post_fork", pid=ttin1)
    assert index_of(recs, "nworkers_changed", new=3, old=2) < index_of(recs, "post_fork", pid=ttin2)
    # TTOU: before the retired worker exits
    for pid, change in ((first[0], (2, 3)), (ttin1, (1, 2))):
        assert index_of(recs, "worker_exit", pid=pid) > index_of(recs, "nworkers_changed",
                                                                  new=change[0], old=change[1])
        assert [r for r in select(recs, "child_exit") if r["worker"]["pid"] == pid and r["pid"] == master]


# -- 5. worker timeout --------------------------------------------------------------

def test_timeout_aborts_worker(server):
    env, log = hook_env()
    s = server(["-c", HOOKS_CONF, "-w", "1", "--timeout", "2", "lc_app:app"], env=env)
    master = s.proc.pid
    pid1 = int(requests.get(s.url + "/pid", timeout=10).text)
    t0 = time.monotonic()
    try:
        r = requests.get(s.url + "/sleep?s=20", timeout=25)
        assert r.status_code != 200, r.text
    except requests.ConnectionError:
        pass
    assert time.monotonic() - t0 < 10
    s.wait_log("WORKER TIMEOUT (pid:%d)" % pid1, timeout=10)
    recs = wait_hooks(log, lambda r: count(r, "worker_abort") == 1 and count(r, "child_exit") == 1,
                      msg="worker_abort and child_exit")
    ab = select(recs, "worker_abort")[0]
    assert ab["pid"] == pid1 and ab["worker"]["pid"] == pid1 and ab["ppid"] == master
    ce = select(recs, "child_exit")[0]
    assert ce["pid"] == master and ce["worker"]["pid"] == pid1
    assert recs.index(ab) < recs.index(ce)
    r = requests.get(s.url + "/pid", timeout=10)
    assert r.status_code == 200
    pid2 = int(r.text)
    assert pid2 != pid1 and s.children() == [pid2]
    assert not alive(pid1)
    # the aborted worker ran worker_exit too, before the master's child_exit
    assert recs.index(ab) < index_of(recs, "worker_exit", pid=pid1) < recs.index(ce)


def test_timeout_abort_answers_500(server):
    # gunicorn 27: the timeout abort is a SystemExit raised inside the app; as
    # no response header was sent yet, the worker answers 500 and logs the
    # request before it exits (workers/sync.py handle_request/handle_error).
    s = server(["-w", "1", "--timeout", "2", "lc_app:app"])
    r = requests.get(s.url + "/sleep?s=20", timeout=25)
    assert r.status_code == 500
    s.wait_log("WORKER TIMEOUT", timeout=10)
    s.wait_log("Error handling request GET /sleep?s=20", timeout=10)
    assert requests.get(s.url + "/", timeout=10).status_code == 200


def test_request_right_after_a_timeout_abort_is_served(server):
    # The aborted worker exits; a connection that arrives meanwhile must wait
    # in the backlog for the next worker, not be accepted by the exiting one
    # and reset. Several rounds: the window is a few milliseconds wide.
    s = server(["-w", "1", "--timeout", "1", "lc_app:app"])
    for i in range(5):
        assert requests.get(s.url + "/sleep?s=20", timeout=25).status_code == 500
        r = requests.get(s.url + "/", timeout=10)
        assert r.status_code == 200, (i, r.status_code)


# -- 6. max_requests with jitter under load ------------------------------------------

def test_max_requests_jitter_recycles_without_failures(server):
    s = server(["-w", "2", "--max-requests", "100", "--max-requests-jitter", "20", "lc_app:app"])
    master = s.proc.pid
    first = n_children(s, 2)
    load = Load(s.url, "/pid", threads=4, keepalive=(True, False), max_requests=250, max_seconds=50)
    assert load.join(55), "load did not finish"
    assert load.failures() == [], (load.failures()[:10], s.log()[-3000:])
    pids = collections.Counter(int(b) for b in load.bodies())
    assert sum(pids.values()) == 1000
    # recycled: new workers served (1000 requests need at least 1000 / 120 worker lifetimes)
    assert len(pids) >= 9, pids
    assert set(pids) - set(first)
    # no worker served more than max_requests + max_requests_jitter
    assert max(pids.values()) <= 120, pids
    assert len(n_children(s, 2)) == 2 and s.proc.pid == master


# -- 7a. a worker killed with SIGKILL ----------------------------------------------

def test_sigkill_worker_replaced_and_logged(server):
    env, log = hook_env()
    s = server(["-c", HOOKS_CONF, "-w", "2", "lc_app:app"], env=env)
    master = s.proc.pid
    before = n_children(s, 2)
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    after = wait_for(lambda: (lambda c: sorted(c) if len(c) == 2 and victim not in c else None)(s.children()),
                     15, msg="replacement worker")
    s.wait_log("Worker (pid:%d) was sent SIGKILL!" % victim, timeout=10)
    recs = wait_hooks(log, lambda r: count(r, "child_exit") == 1, msg="child_exit")
    ce = select(recs, "child_exit")[0]
    assert ce["pid"] == master and ce["worker"]["pid"] == victim
    # killed: no worker_exit in it
    assert select(recs, "worker_exit") == []
    assert set(after) - set(before)
    for _ in range(10):
        assert requests.get(s.url + "/", timeout=10).text == "Hello, World!"
