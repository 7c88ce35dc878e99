"""gunicorn-prometheus-exporter's worker classes, as names ferrocorn maps
to its own worker kinds (sync, gthread, eventlet, gevent, tornado).

ferrocorn's workers are Rust; they record the exporter's metrics (requests,
durations, failures, memory, CPU, uptime, state) natively, so these classes
run no request code. They are importable, usable as ``worker_class`` (by
name or as the class object), and the ``worker`` object hooks receive is an
instance of the configured class, with ``update_worker_metrics()`` and
``worker_id``."""

import os
import time


def _proc_stat(pid):
    with open("/proc/%d/stat" % pid) as f:
        text = f.read()
    # Fields after the command name, which may hold spaces and parentheses.
    return text[text.rindex(")") + 2:].split()


class PrometheusMixin:
    """What the exporter's workers add to gunicorn's, under ferrocorn."""

    # Read by ferrocorn's hook objects: the worker object of a hook is an
    # instance of this class and of ferrocorn's gunicorn-like Worker.
    _ferrocorn_worker_mixin = True

    @property
    def worker_id(self):
        """The ``worker_id`` label of this worker's series:
        ``worker_<age>_<pid>``."""
        return "worker_%s_%s" % (self.age, self.pid)

    def update_worker_metrics(self):
        """ferrocorn's exporter reads each worker's memory, CPU time,
        uptime and state when it is scraped (from /proc and shared memory),
        so the gauges are always current and there is nothing to push: this
        reads the values the next scrape reports and returns them,
        ``{"memory_bytes", "cpu_seconds", "uptime_seconds", "timestamp"}``."""
        pid = self.pid if isinstance(self.pid, int) else os.getpid()
        fields = _proc_stat(pid)
        ticks = os.sysconf("SC_CLK_TCK")
        page = os.sysconf("SC_PAGE_SIZE")
        with open("/proc/uptime") as f:
            boot_uptime = float(f.read().split()[0])
        # stat fields (1-based, man 5 proc): utime 14, stime 15, starttime 22, rss 24;
        # `fields` starts at field 3.
        return {
            "memory_bytes": int(fields[21]) * page,
            "cpu_seconds": (int(fields[11]) + int(fields[12])) / ticks,
            "uptime_seconds": max(0.0, boot_uptime - int(fields[19]) / ticks),
            "timestamp": time.time(),
        }


class PrometheusWorker(PrometheusMixin):
    """The sync worker (ferrocorn's ``sync`` kind)."""


class PrometheusThreadWorker(PrometheusMixin):
    """The threaded worker (ferrocorn's ``gthread`` kind, ``--threads``)."""


class PrometheusEventletWorker(PrometheusMixin):
    """The eventlet worker (ferrocorn's ``eventlet`` kind; eventlet must be
    installed in the venv)."""


class PrometheusGeventWorker(PrometheusMixin):
    """The gevent worker (ferrocorn's ``gevent`` kind; gevent must be
    installed in the venv)."""


class PrometheusTornadoWorker(PrometheusMixin):
    """The tornado worker (ferrocorn's ``tornado`` kind; tornado must be
    installed in the venv)."""


def get_prometheus_eventlet_worker():
    return PrometheusEventletWorker


def get_prometheus_gevent_worker():
    return PrometheusGeventWorker


def get_prometheus_tornado_worker():
    return PrometheusTornadoWorker
