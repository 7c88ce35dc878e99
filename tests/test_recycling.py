"""Worker recycling beyond max_requests: max_worker_memory (RSS read by the
master from /proc) and max_worker_lifetime with its jitter. Each replaces a
worker gracefully (it finishes its requests) and counts its reason in
gunicorn_master_worker_restarts_total."""
import threading
import time

import pytest
import requests

from test_hooks import Load
from test_metrics import total, wait_metrics

pytestmark = pytest.mark.ferrocorn_only

RESTARTS = "gunicorn_master_worker_restarts_total"


def paced_load(url, clients, requests_each, pause):
    """`clients` threads, each sending `requests_each` requests with a pause
    between them (keep-alive for even-numbered clients)."""
    ok, errors = [], []

    def run(i):
        sess = requests.Session() if i % 2 == 0 else requests
        for _ in range(requests_each):
            try:
                r = sess.get(url, timeout=10)
                ok.append((r.status_code, r.text))
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
            time.sleep(pause)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return ok, errors


@pytest.mark.parametrize("kind", ["sync", "gthread"])
def test_memory_limit_replaces_workers_without_failed_requests(server, kind):
    """3 clients at 50 requests/s each, 5 MB more per request: the 2 workers
    pass 150 MB again and again and are replaced each time."""
    args = ["-k", kind] + (["--threads", "4"] if kind == "gthread" else [])
    s = server(["-w", "2", "--max-worker-memory", "150"] + args + ["growapp:app"])
    peak = [0]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            for pid in s.children():
                try:
                    with open("/proc/%d/statm" % pid) as f:
                        peak[0] = max(peak[0], int(f.read().split()[1]) * 4096)
                except OSError:
                    pass
            time.sleep(0.01)

    w = threading.Thread(target=watch)
    w.start()
    ok, errors = paced_load(s.url + "/grow", 3, 60, 0.02)
    stop.set()
    w.join()
    assert errors == [], errors[:5]
    assert len(ok) == 180 and all(st == 200 for st, _ in ok)
    served_by = {body for _, body in ok}
    # 180 x 5 MB over 2 workers of at most 150 MB: at least 6 of them
    assert len(served_by) >= 6, served_by
    m = wait_metrics(s)
    assert total(m, RESTARTS, reason="memory") >= 4, {k: v for k, v in m.items() if k[0] == RESTARTS}
    assert total(m, RESTARTS, reason="exit_code") == 0
    assert "over max_worker_memory (150 MB): replacing it" in s.log()
    # a worker is told within 0.1 s and finishes what it has: at 150
    # requests/s that is tens of MB over the limit, not hundreds
    assert peak[0] < 260 * 1024 * 1024, peak[0]


def test_lifetime_with_jitter_spreads_restarts(server):
    s = server(["-w", "4", "--max-worker-lifetime", "3", "--max-worker-lifetime-jitter", "2",
                "wsgiapp:app"])
    load = Load(s.url, threads=3, keepalive=(True, False), max_seconds=16)
    seen = set(s.children())
    births = []
    t_end = time.monotonic() + 15
    while time.monotonic() < t_end:
        now = set(s.children())
        for pid in now - seen:
            births.append(time.monotonic())
        seen |= now
        time.sleep(0.01)
    load.stopping.set()
    for t in load.threads:
        t.join(20)
    assert load.errors == [], load.errors[:5]
    assert len(load.ok) > 100
    # 4 workers living 3-5 s over 15 s: about 12-20 replacements
    assert len(births) >= 8, births
    gaps = [b - a for a, b in zip(births, births[1:])]
    close = [g for g in gaps if g < 0.1]
    assert len(close) <= len(gaps) // 4, gaps
    m = wait_metrics(s)
    assert total(m, RESTARTS, reason="lifetime") >= 8
    assert "reached max_worker_lifetime: replacing it" in s.log()


def test_settings_from_the_environment_and_bad_values(server, run_cmd):
    s = server(["-w", "1", "wsgiapp:app"], env={"FERROCORN_MAX_WORKER_LIFETIME": "2"})
    first = s.children()
    deadline = time.monotonic() + 10
    while s.children() == first and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s.children() != first
    r = run_cmd(["--max-worker-memory", "lots", "wsgiapp:app"])
    assert r.returncode != 0 and "max-worker-memory" in r.output, r
