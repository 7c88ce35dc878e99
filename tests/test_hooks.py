"""Server hooks: which process calls each gunicorn 27 hook, in which order,
with which arguments; hooks that raise.

The config is tests/apps/lc_hooks.py: every hook appends one JSON line (hook
name, os.getpid(), os.getppid(), what it received) to $LC_HOOK_LOG. The
expectations were checked against gunicorn 27 (TEST_SERVER=gunicorn) and its
hook documentation (gunicorn/config.py, "Server Hooks").
"""
import json
import os
import signal
import tempfile
import threading
import time

import requests

from conftest import APPS, is_worker

HOOKS_CONF = os.path.join(APPS, "lc_hooks.py")

MASTER_HOOKS = {"on_starting", "on_reload", "when_ready", "pre_fork", "child_exit",
                "nworkers_changed", "on_exit"}
WORKER_HOOKS = {"post_fork", "post_worker_init", "worker_int", "worker_abort",
                "pre_request", "post_request", "worker_exit"}


# -- helpers shared with test_signals.py ---------------------------------------

def wait_for(pred, timeout=15.0, interval=0.05, msg="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out (%ss) waiting for %s" % (timeout, msg))
        time.sleep(interval)


def hooks_conf(extra=""):
    """The text of lc_hooks.py, plus `extra` settings appended."""
    with open(HOOKS_CONF) as f:
        return f.read() + "\n" + extra


def hook_env(extra=None):
    """(env for the server, path of the hook log)."""
    d = tempfile.mkdtemp(prefix="fc-lc-")
    path = os.path.join(d, "hooks.jsonl")
    env = {"LC_HOOK_LOG": path}
    env.update(extra or {})
    return env, path


def read_hooks(path):
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def wait_hooks(path, pred, timeout=15.0, msg="hook calls"):
    """Wait until pred(list of hook records) is true; return the records."""
    def check():
        recs = read_hooks(path)
        return recs if pred(recs) else None
    try:
        return wait_for(check, timeout, msg=msg)
    except AssertionError:
        raise AssertionError("timed out waiting for %s; hook log:\n%s" % (
            msg, "\n".join(json.dumps(r, sort_keys=True) for r in read_hooks(path))))


def count(recs, hook, **match):
    return len(select(recs, hook, **match))


def select(recs, hook, **match):
    out = []
    for r in recs:
        if r["hook"] != hook:
            continue
        if all(r.get(k) == v for k, v in match.items()):
            out.append(r)
    return out


def index_of(recs, hook, **match):
    for i, r in enumerate(recs):
        if r["hook"] == hook and all(r.get(k) == v for k, v in match.items()):
            return i
    raise AssertionError("no %s %r in hook log" % (hook, match))


def proc_stat(pid):
    """(state, ppid) of a process, or None if it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError):
        return None
    return fields[0], int(fields[1])


def alive(pid):
    st = proc_stat(pid)
    return st is not None and st[0] != "Z"


def children_of(ppid, workers_only=True):
    """Live workers of any master (one that is not the fixture's); with
    workers_only=False every live child (a USR2 master among them)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        st = proc_stat(int(d))
        if st and st[1] == ppid and st[0] != "Z" and (not workers_only or is_worker(int(d))):
            out.append(int(d))
    return sorted(out)


def n_children(s, n, timeout=15.0):
    return wait_for(lambda: (lambda c: sorted(c) if len(c) == n else None)(s.children()),
                    timeout, msg="%d workers (have %s)" % (n, s.children()))


def stop_pid(pid, timeout=10.0):
    """TERM a process we did not start through the fixture, wait for it to go,
    SIGKILL it if it does not. Bounded."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Load:
    """Client threads sending requests back to back until stop() (bounded by
    `max_seconds` and `max_requests` each). Each thread either opens a new
    connection per request or keeps one `requests.Session` (keep-alive where
    the server offers it). Every result is kept: (status, body) or the error."""

    def __init__(self, url, path="/pid", threads=1, keepalive=(False,), max_seconds=60.0,
                 max_requests=100000, timeout=10.0):
        self.url = url + path
        self.ok = []          # (thread index, status, body)
        self.errors = []      # (thread index, repr(exception))
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.timeout = timeout
        self.threads = []
        for i in range(threads):
            ka = keepalive[i % len(keepalive)]
            t = threading.Thread(target=self._run, args=(i, ka), daemon=True)
            self.threads.append(t)
        for t in self.threads:
            t.start()

    def _run(self, idx, keepalive):
        deadline = time.monotonic() + self.max_seconds
        sess = requests.Session() if keepalive else None
        n = 0
        try:
            while not self.stopping.is_set() and n < self.max_requests and time.monotonic() < deadline:
                n += 1
                try:
                    if sess is not None:
                        r = sess.get(self.url, timeout=self.timeout)
                    else:
                        r = requests.get(self.url, timeout=self.timeout, headers={"Connection": "close"})
                    with self.lock:
                        self.ok.append((idx, r.status_code, r.text))
                except Exception as e:  # noqa: BLE001
                    with self.lock:
                        self.errors.append((idx, repr(e)))
        finally:
            if sess is not None:
                sess.close()

    def count(self):
        with self.lock:
            return len(self.ok) + len(self.errors)

    def wait_count(self, n, timeout=30.0):
        wait_for(lambda: self.count() >= n or not any(t.is_alive() for t in self.threads),
                 timeout, msg="%d requests done" % n)

    def join(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    def stop(self, timeout=30.0):
        self.stopping.set()
        assert self.join(timeout), "client threads did not finish"

    def failures(self):
        """Errors and non-200 answers."""
        with self.lock:
            return list(self.errors) + [(i, st, body) for i, st, body in self.ok if st != 200]

    def bodies(self):
        with self.lock:
            return [body for _, st, body in self.ok if st == 200]


# -- 1. every hook, every process, in order --------------------------------------

def test_every_hook_process_order_and_arguments(server):
    env, log = hook_env()
    s = server(["-c", HOOKS_CONF, "-w", "2", "--timeout", "3", "--graceful-timeout", "10",
                "wsgiapp:app"], env=env)
    master = s.proc.pid
    # boot: both workers initialised
    recs = wait_hooks(log, lambda r: count(r, "post_worker_init") == 2, msg="2 workers booted")
    boot_workers = n_children(s, 2)

    # a few requests (new connection each)
    for i in range(3):
        r = requests.get(s.url + "/?n=%d" % i, headers={"X-LC": "v%d" % i, "Connection": "close"},
                         timeout=10)
        assert r.status_code == 200 and r.text == "Hello, World!"
    recs = wait_hooks(log, lambda r: len([x for x in select(r, "post_request")
                                          if x["req"]["query"].startswith("n=")]) == 3, msg="3 post_request")

    # TTIN: one more worker
    s.signal(signal.SIGTTIN)
    recs = wait_hooks(log, lambda r: count(r, "post_worker_init") == 3, msg="worker after TTIN")
    n_children(s, 3)

    # TTOU: one worker less (the oldest one)
    s.signal(signal.SIGTTOU)
    recs = wait_hooks(log, lambda r: count(r, "child_exit") == 1, msg="child_exit after TTOU")
    after_ttou = n_children(s, 2)
    mark_hup = len(read_hooks(log))

    # HUP: reload, new workers, old ones retired
    s.signal(signal.SIGHUP)
    recs = wait_hooks(log, lambda r: count(r, "on_reload") == 1 and count(r, "child_exit") == 3
                      and count(r, "post_worker_init") == 5, msg="HUP done")
    after_hup = n_children(s, 2)
    assert not set(after_hup) & set(after_ttou)
    mark_timeout = len(read_hooks(log))

    # a request that outlives --timeout 3: worker_abort in that worker
    try:
        r = requests.get(s.url + "/sleep?s=20", timeout=25)
        assert r.status_code != 200, r.text
    except requests.ConnectionError:
        pass
    recs = wait_hooks(log, lambda r: count(r, "worker_abort") == 1 and count(r, "child_exit") == 4,
                      msg="worker_abort + child_exit")
    s.wait_log("WORKER TIMEOUT", timeout=10)
    after_timeout = n_children(s, 2)
    mark_int = len(read_hooks(log))

    # INT to one worker: worker_int in it
    victim = after_timeout[0]
    os.kill(victim, signal.SIGINT)
    recs = wait_hooks(log, lambda r: count(r, "worker_int") == 1 and count(r, "child_exit") == 5,
                      msg="worker_int + child_exit")
    wait_for(lambda: len(s.children()) == 2 and victim not in s.children(), msg="INT victim replaced")
    assert requests.get(s.url + "/", timeout=10).status_code == 200
    recs = wait_hooks(log, lambda r: count(r, "post_worker_init") == 7, msg="replacement booted")
    before_usr2 = n_children(s, 2)
    mark_usr2 = len(read_hooks(log))

    # USR2: pre_exec in the forked child that becomes the new master
    s.signal(signal.SIGUSR2)
    recs = wait_hooks(log, lambda r: count(r, "pre_exec") == 1 and count(r, "when_ready") == 2
                      and count(r, "post_worker_init") == 9, msg="new master ready")
    new_master = select(recs, "pre_exec")[0]["pid"]
    assert new_master != master
    assert proc_stat(new_master)[1] == master
    stop_pid(new_master)
    assert not alive(new_master)
    recs = wait_hooks(log, lambda r: count(r, "on_exit") == 1, msg="new master on_exit")
    # the old master carries on with the same workers
    wait_for(lambda: sorted(s.children()) == before_usr2, 10, msg="old master's workers only")
    assert requests.get(s.url + "/", timeout=10).status_code == 200
    mark_stop = len(read_hooks(log))
    final_workers = n_children(s, 2)

    # stop
    s.signal(signal.SIGTERM)
    assert s.wait(15) == 0, s.log()
    recs = read_hooks(log)

    # ---- checks -------------------------------------------------------------
    dump = "\n".join(json.dumps(r, sort_keys=True) for r in recs)
    names = {r["hook"] for r in recs}
    assert names == MASTER_HOOKS | WORKER_HOOKS | {"pre_exec"}, (names, dump)

    # the old master's records and the new master's (USR2) records; the marks
    # index `recs`, which equals `old` up to mark_usr2
    new_family = {new_master} | {r["pid"] for r in recs if r["ppid"] == new_master}
    old = [r for r in recs if r["pid"] not in new_family]
    nm = [r for r in recs if r["pid"] in new_family]

    for r in old:
        if r["hook"] in MASTER_HOOKS:
            assert r["pid"] == master, r
            assert r["server"]["type"] == "Arbiter", r
            if r["server"]["pid"] is not None or r["hook"] != "nworkers_changed":
                assert r["server"]["pid"] == master, r
        elif r["hook"] in WORKER_HOOKS:
            assert r["ppid"] == master and r["pid"] != master, r
            if "worker" in r:
                assert r["worker"]["pid"] == r["pid"], r
                assert r["worker"]["ppid"] == master, r

    # boot order: nworkers_changed(2, None) < on_starting < when_ready < pre_fork < post_fork < post_worker_init
    nwc = select(old, "nworkers_changed")
    assert (nwc[0]["new"], nwc[0]["old"]) == (2, None), dump
    i_start = index_of(old, "on_starting")
    assert index_of(old, "nworkers_changed") < i_start, dump
    assert i_start == 0 or old[0]["hook"] == "nworkers_changed", dump
    i_ready = index_of(old, "when_ready")
    assert i_start < i_ready < index_of(old, "pre_fork"), dump
    for w in boot_workers:
        pf = index_of(old, "post_fork", pid=w)
        pwi = index_of(old, "post_worker_init", pid=w)
        assert i_ready < pf < pwi, dump
        age = old[pf]["worker"]["age"]
        pre = [i for i, r in enumerate(old) if r["hook"] == "pre_fork" and r["worker"]["age"] == age]
        assert len(pre) == 1 and pre[0] < pf, dump
        assert old[pre[0]]["worker"]["pid"] != w  # not forked yet
    ages = [r["worker"]["age"] for r in select(old, "pre_fork")]
    assert ages == sorted(ages) and len(set(ages)) == len(ages), ages
    assert select(old, "post_worker_init")[0]["wsgi_callable"] is True

    # requests: pre_request < post_request in the same worker, arguments
    # Paired by query, not by position: post_request runs after the response
    # is sent, so the next request's pre_request in the other worker may be
    # recorded before it.
    def by_query(hook):
        return sorted((r for r in select(old, hook) if r["req"]["path"] == "/" and r["req"]["query"].startswith("n=")),
                      key=lambda r: r["req"]["query"])
    pres, posts = by_query("pre_request"), by_query("post_request")
    assert len(pres) == len(posts) == 3, dump
    for i, (pre, post) in enumerate(zip(pres, posts)):
        assert pre["pid"] == post["pid"] in boot_workers
        assert old.index(pre) < old.index(post)
        assert pre["req"]["type"] == "Request"
        assert pre["req"]["method"] == "GET" and pre["req"]["query"] == "n=%d" % i
        assert pre["req"]["uri"] == "/?n=%d" % i
        assert pre["req"]["version"] == [1, 1]
        assert ["X-LC", "v%d" % i] in pre["req"]["headers"], pre["req"]["headers"]
        assert post["worker"]["nr"] == pre["worker"]["nr"] + 1
        assert post["environ_type"] == "dict" and post["environ_has_input"]
        assert post["environ"]["REQUEST_METHOD"] == "GET"
        assert post["environ"]["PATH_INFO"] == "/"
        assert post["environ"]["QUERY_STRING"] == "n=%d" % i
        assert post["environ"]["HTTP_X_LC"] == "v%d" % i
        assert post["resp"]["type"] == "Response"
        assert post["resp"]["status"] == "200 OK"
        assert post["resp"]["status_code"] == 200
        assert ["Content-Type", "text/plain"] in post["resp"]["headers"], post["resp"]
        assert post["resp"]["response_length"] == len("Hello, World!")

    # TTIN: nworkers_changed(3, 2) then a fork
    i = index_of(old, "nworkers_changed", new=3, old=2)
    assert old[i]["server"]["num_workers"] == 3
    assert old[i + 1:][0]["hook"] == "pre_fork", dump
    # TTOU: nworkers_changed(2, 3); the oldest worker exits: worker_exit in it, then child_exit in the master
    j = index_of(old, "nworkers_changed", new=2, old=3)
    assert j > i
    first_age = min(r["worker"]["age"] for r in select(old, "post_fork") if r["pid"] in boot_workers)
    retired = [r["pid"] for r in select(old, "post_fork") if r["worker"]["age"] == first_age][0]
    we = index_of(old, "worker_exit", pid=retired)
    ce = [k for k, r in enumerate(old) if r["hook"] == "child_exit" and r["worker"]["pid"] == retired]
    assert j < we < ce[0] and len(ce) == 1, dump
    assert old[we]["server"]["type"] == "Arbiter" and old[we]["worker"]["pid"] == retired
    assert old[ce[0]]["pid"] == master and old[ce[0]]["worker"]["age"] == first_age

    # HUP: nworkers_changed(2, 2) (config re-applied) < on_reload < new forks; old workers exit
    hup = old[mark_hup:mark_timeout]
    k = index_of(hup, "on_reload")
    assert any(r["hook"] == "nworkers_changed" and (r["new"], r["old"]) == (2, 2) for r in hup[:k]), dump
    assert index_of(hup, "pre_fork") > k
    for w in after_ttou:
        assert index_of(hup, "worker_exit", pid=w) < [n for n, r in enumerate(hup)
                                                      if r["hook"] == "child_exit" and r["worker"]["pid"] == w][0]
    for w in after_hup:
        assert index_of(hup, "post_fork", pid=w) < index_of(hup, "post_worker_init", pid=w)

    # timeout: worker_abort in the worker that ran /sleep, then worker_exit there, then child_exit in the master
    tmo = old[mark_timeout:mark_int]
    sleeper = select(tmo, "pre_request")[0]["pid"]
    assert select(tmo, "pre_request")[0]["req"]["path"] == "/sleep"
    a = index_of(tmo, "worker_abort", pid=sleeper)
    assert tmo[a]["worker"]["pid"] == sleeper
    c = [n for n, r in enumerate(tmo) if r["hook"] == "child_exit" and r["worker"]["pid"] == sleeper]
    assert c and a < c[0], dump
    assert "WORKER TIMEOUT (pid:%d)" % sleeper in s.log()

    # INT on a worker: worker_int in it, worker_exit in it, child_exit in the master, a replacement
    it = old[mark_int:mark_usr2]
    wi = index_of(it, "worker_int", pid=victim)
    assert it[wi]["worker"]["pid"] == victim
    assert wi < index_of(it, "worker_exit", pid=victim)
    ce = [n for n, r in enumerate(it) if r["hook"] == "child_exit" and r["worker"]["pid"] == victim]
    assert ce and ce[0] > wi
    assert index_of(it, "pre_fork") > ce[0]

    # USR2: pre_exec runs in the forked child (the new master's pid, the old master's Arbiter),
    # then the new master boots as a first start would
    pe = select(nm, "pre_exec")[0]
    assert pe["ppid"] == master and pe["server"]["pid"] == master, pe
    assert pe["server"]["type"] == "Arbiter"
    nm_names = [r["hook"] for r in nm if r["pid"] == new_master]
    assert nm_names[0] == "pre_exec", nm_names
    assert nm_names.index("on_starting") < nm_names.index("when_ready") < nm_names.index("pre_fork"), nm_names
    assert nm_names[-1] == "on_exit", nm_names
    for r in nm:
        if r["pid"] == new_master and r["hook"] != "pre_exec":
            assert r["server"]["pid"] in (new_master, None), r
            assert r["hook"] in MASTER_HOOKS, r
        elif r["pid"] != new_master:
            assert r["ppid"] == new_master and r["hook"] in WORKER_HOOKS, r
    nm_workers = {r["pid"] for r in nm if r["hook"] == "post_worker_init"}
    assert len(nm_workers) == 2, dump
    for w in nm_workers:
        assert w in [r["worker"]["pid"] for r in nm if r["hook"] == "child_exit"], dump
    # no hook of the old master ran because of the new master's exit
    usr2 = [r for r in recs[mark_usr2:mark_stop] if r["pid"] not in new_family]
    assert [r["hook"] for r in usr2 if r["pid"] == master] == [], dump

    # stop: worker_exit in each worker, child_exit for each in the master, on_exit last
    stop = [r for r in recs[mark_stop:] if r["pid"] not in new_family]
    assert stop[-1]["hook"] == "on_exit" and stop[-1]["pid"] == master, dump
    for w in final_workers:
        x = index_of(stop, "worker_exit", pid=w)
        y = [n for n, r in enumerate(stop) if r["hook"] == "child_exit" and r["worker"]["pid"] == w]
        assert y and x < y[0], dump
    assert count(stop, "on_exit") == 1

    # one child_exit per worker process that ever ran under the old master, in the master
    forked = {r["pid"] for r in old if r["hook"] == "post_fork"}
    exited = [r["worker"]["pid"] for r in old if r["hook"] == "child_exit"]
    assert sorted(exited) == sorted(forked), dump
    # and worker_exit in each of them
    assert sorted(r["pid"] for r in old if r["hook"] == "worker_exit") == sorted(forked), dump


# -- 7b. a hook that raises does not stop the server ------------------------------

def test_raising_request_hooks_do_not_stop_the_server(server):
    # post_request raises on every request, pre_request for paths under /boom
    env, log = hook_env({"LC_HOOK_RAISE": "pre_request,post_request"})
    s = server(["-c", HOOKS_CONF, "-w", "1", "lc_app:app"], env=env)
    pid = int(requests.get(s.url + "/pid", timeout=10).text)

    # post_request raising: the response was already sent; logged, nothing else
    for _ in range(3):
        r = requests.get(s.url + "/", timeout=10)
        assert r.status_code == 200 and r.text == "Hello, World!"
    s.wait_log("Exception in post_request hook", timeout=10)
    assert "lc_hooks: post_request raising" in s.log()

    # pre_request raising: the request is not run; gunicorn answers 500 and logs it
    r = requests.get(s.url + "/boom", timeout=10)
    assert r.status_code == 500
    s.wait_log("lc_hooks: pre_request raising for /boom", timeout=10)

    # the same worker carries on
    for _ in range(3):
        r = requests.get(s.url + "/pid", timeout=10)
        assert r.status_code == 200 and int(r.text) == pid
    assert s.children() == [pid]
    assert s.proc.poll() is None

    recs = read_hooks(log)
    boom = [r for r in recs if r["hook"] in ("pre_request", "post_request") and r["req"]["path"] == "/boom"]
    # post_request still runs after a failed pre_request (gunicorn calls it in a finally), without a response
    assert [r["hook"] for r in boom] == ["pre_request", "post_request"], boom
    assert boom[1]["resp"] is None, boom
    assert all(r["pid"] == pid for r in recs if r["hook"] in ("pre_request", "post_request"))
    s.stop()
    assert s.proc.returncode == 0, s.log()
