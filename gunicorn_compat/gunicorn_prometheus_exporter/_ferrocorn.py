"""What this package knows of the ferrocorn process it runs in: the
server's configuration (``server.cfg`` of the hooks, which holds ferrocorn's
own metrics settings) and its metrics exporter. Outside ferrocorn (a plain
Python importing the package) there is neither."""

import socket
import sys
import time


def in_ferrocorn():
    """True inside ferrocorn's interpreter (master or worker)."""
    return "_ferrocorn_boot" in sys.modules


def server_cfg():
    """The configuration hooks see as ``server.cfg``; None outside ferrocorn
    or before ferrocorn's hook objects exist."""
    hooks = sys.modules.get("_ferrocorn_hooks")
    runtime = getattr(hooks, "RUNTIME", None)
    return runtime.cfg if runtime is not None else None


class Exporter:
    """ferrocorn's metrics exporter as configured: a process of its own,
    forked by the master, serving /metrics and /health."""

    def __init__(self, cfg):
        self.enabled = bool(cfg.metrics)
        self.bind_address = cfg.prometheus_bind_address
        self.port = int(cfg.prometheus_metrics_port)
        self.tls = bool(cfg.prometheus_ssl_certfile and cfg.prometheus_ssl_keyfile)

    @property
    def url(self):
        host = self.bind_address
        if ":" in host:
            host = "[%s]" % host
        return "%s://%s:%d/metrics" % ("https" if self.tls else "http", host, self.port)

    def answering(self, timeout=1.0):
        """Whether something accepts connections on the exporter's port
        (tried on loopback when the exporter listens on every address)."""
        host = self.bind_address
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((host, self.port), timeout=0.2):
                    return True
            except OSError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)


def exporter():
    """ferrocorn's Exporter, or None outside ferrocorn."""
    cfg = server_cfg()
    return Exporter(cfg) if cfg is not None else None


class ExporterRegistry:
    """What ``MetricsServerManager.setup_server()`` returns as the registry
    under ferrocorn: the metrics are those of ferrocorn's exporter (its own
    families plus the app's prometheus_client multiprocess files), not a
    prometheus_client CollectorRegistry in this process."""

    def __init__(self, exporter):
        self.exporter = exporter

    def register(self, collector):
        raise NotImplementedError(
            "ferrocorn serves metrics from its exporter process (%s), not from a "
            "prometheus_client registry in the server: custom collectors cannot be "
            "registered; record app metrics with prometheus_client (multiprocess mode), "
            "which ferrocorn's exporter serves" % self.exporter.url)

    def unregister(self, collector):
        self.register(collector)

    def collect(self):
        """Nothing in this process: the samples are the exporter's."""
        return iter(())

    def __repr__(self):
        return "<ferrocorn exporter registry %s>" % self.exporter.url
