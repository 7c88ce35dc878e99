"""Copy-on-write preload (preload_freeze, on by default): with --preload the
master imports the app with automatic garbage collection paused and runs
gc.freeze() before forking, so every worker starts with the app's objects
in the permanent generation (gc.get_freeze_count() > 0) and its collector
on; --no-preload-freeze (or the config file / FERROCORN_PRELOAD_FREEZE)
turns it off; without --preload there is nothing to freeze. An app's own
gc.disable() or gc.set_threshold() at import is kept. bench/preload_pss.py
measures what it saves."""
import os
import signal

import pytest
import requests

from helpers import wait_until

pytestmark = pytest.mark.ferrocorn_only

# TABLE in gcapp.py alone is 20000 tracked lists.
APP_OBJECTS = 20000


def info(s, path="/"):
    r = requests.get(s.url + path, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def every_worker(s, n, path="/"):
    """The answer of each of `n` workers (new connections until each pid
    has answered), by pid."""
    seen = {}

    def probe():
        i = info(s, path)
        seen[i["pid"]] = i
        return len(seen)

    wait_until(probe, lambda k: k >= n, timeout=20, interval=0)
    return seen


KINDS = {
    "sync": ["-k", "sync", "gcapp:app"],
    "gthread": ["-k", "gthread", "--threads", "4", "gcapp:app"],
    "gevent": ["-k", "gevent", "gcapp:app"],
    "eventlet": ["-k", "eventlet", "gcapp:app"],
    "asgi": ["-k", "asgi", "gcapp:asgi_app"],
    "tornado": ["-k", "tornado", "gcapp:app"],
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_preload_freezes_the_app_and_gc_runs_in_workers(server, kind):
    s = server(["-w", "2", "--preload"] + KINDS[kind])
    workers = every_worker(s, 2, "/cycle")
    assert set(workers) == set(s.children())
    for i in workers.values():
        assert i["freeze_count"] > APP_OBJECTS, i
        assert i["enabled"] is True, i
        # automatic collection was paused during the import, and is back
        assert i["threshold_at_import"] == [0, 10, 10], i
        assert i["threshold"] == [700, 10, 10], i
        # a cycle made after the fork is collected without gc.collect()
        assert i["collected"] is True, i
    assert "Preloaded app frozen for copy-on-write: gc.freeze() moved" in s.log()


@pytest.mark.parametrize("how", ["cli", "config", "env"])
def test_no_preload_freeze(server, how):
    args, kw = ["-w", "2", "--preload", "gcapp:app"], {}
    if how == "cli":
        args.insert(0, "--no-preload-freeze")
    elif how == "config":
        kw["config_text"] = "preload_freeze = False\n"
    else:
        kw["env"] = {"FERROCORN_PRELOAD_FREEZE": "false"}
    s = server(args, **kw)
    for i in every_worker(s, 2, "/cycle").values():
        assert i["freeze_count"] == 0, i
        assert i["threshold_at_import"] == i["threshold"] == [700, 10, 10], i
        assert i["enabled"] is True, i
        assert i["collected"] is True, i
    assert "gc.freeze()" not in s.log()


def test_without_preload_nothing_is_frozen(server):
    s = server(["-w", "2", "gcapp:app"])
    for i in every_worker(s, 2, "/cycle").values():
        assert i["freeze_count"] == 0 and i["enabled"] is True and i["collected"] is True, i
    assert "gc.freeze()" not in s.log()


@pytest.mark.parametrize("choice", ["disable", "threshold"])
def test_the_apps_own_gc_settings_are_kept(server, choice):
    s = server(["-w", "1", "--preload", "gcapp:app"], env={"GCAPP_IMPORT": choice})
    i = info(s)
    assert i["freeze_count"] > APP_OBJECTS, i
    if choice == "disable":
        assert i["enabled"] is False and i["threshold"][0] == 700, i
    else:
        assert i["enabled"] is True and i["threshold"] == [1000, 20, 30], i


def test_workers_forked_later_are_frozen_too(server):
    """A worker that replaces a dead one, and the workers of a HUP reload,
    start frozen (the master freezes before every fork)."""
    s = server(["-w", "2", "--preload", "gcapp:app"])
    first = every_worker(s, 2)
    victim = sorted(first)[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: set(s.children()), lambda c: len(c) == 2 and victim not in c, timeout=20)
    later = every_worker(s, 2)
    assert victim not in later
    for i in later.values():
        assert i["freeze_count"] > APP_OBJECTS and i["enabled"] is True, i
    before = set(s.children())
    s.signal(signal.SIGHUP)
    wait_until(lambda: set(s.children()), lambda c: len(c) == 2 and not (c & before), timeout=30)
    frozen_before = max(i["freeze_count"] for i in later.values())
    for i in every_worker(s, 2, "/cycle").values():
        assert i["pid"] not in before
        # what the master made since (the reloaded configuration) joins
        assert i["freeze_count"] >= frozen_before and i["enabled"] is True and i["collected"] is True, i
