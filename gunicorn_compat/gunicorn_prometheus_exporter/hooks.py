"""gunicorn-prometheus-exporter's ready-made hooks and the managers behind
them, mapped onto ferrocorn.

Under gunicorn these hooks start a prometheus_client HTTP server in the
master, manage multiprocess files and kill leftover processes. ferrocorn
does that work natively: its exporter process serves /metrics (and pushes
to Redis) from shared memory and the app's multiprocess files, its master
supervises every child. So here:

- ``default_when_ready`` / ``redis_when_ready`` start no second metrics
  server: they report where ferrocorn's exporter serves the metrics;
- ``default_on_starting`` makes sure the multiprocess directory exists;
- ``default_post_fork`` logs the worker's configuration and sets
  GUNICORN_WORKERS, GUNICORN_BIND and GUNICORN_WORKER_CLASS from the values
  the server runs with (config file and command line);
- ``default_worker_int`` refreshes the worker's gauges and calls
  ``worker.handle_quit()``;
- ``default_on_exit`` logs and terminates child processes that are not
  ferrocorn's own (the master has already stopped its workers and exporter).
"""

import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Optional

from . import _ferrocorn
from .config import get_config

_LOGGER_NAME = __name__


@dataclass
class HookContext:
    """What a hook works with: the server, the worker (if any), a logger."""

    server: Any
    worker: Optional[Any] = None
    logger: Optional[logging.Logger] = None

    def __post_init__(self):
        if self.logger is None:
            self.logger = logging.getLogger(_LOGGER_NAME)


class HookManager:
    """Logging set-up and guarded execution for hooks."""

    def __init__(self):
        self.logger = logging.getLogger(_LOGGER_NAME)
        self._setup_logging()

    def _setup_logging(self):
        # As the exporter: the root logger gets a handler (stderr, which is
        # ferrocorn's error log by default) at the server's log level.
        level = logging.INFO
        cfg = _ferrocorn.server_cfg()
        if cfg is not None:
            level = getattr(logging, str(cfg.loglevel).upper(), logging.INFO)
        logging.basicConfig(level=level)

    def get_logger(self):
        return self.logger

    def safe_execute(self, func, *args, **kwargs):
        """Calls func(*args, **kwargs); True when it returned, False (and an
        ERROR ``Hook execution failed: <error>``) when it raised."""
        try:
            func(*args, **kwargs)
            return True
        except Exception as e:
            self.logger.error("Hook execution failed: %s", e)
            return False


def _cli_text(value):
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


class EnvironmentManager:
    """Copies the server's settings into the exporter's environment
    variables (GUNICORN_WORKERS, GUNICORN_BIND, GUNICORN_WORKER_CLASS)."""

    def __init__(self, logger):
        self.logger = logger

    def update_from_cli(self, cfg):
        """Sets the three variables from `cfg` (the server's configuration,
        whose values include the command line's)."""
        self._update_workers_env(cfg)
        self._update_bind_env(cfg)
        self._update_worker_class_env(cfg)

    def _set(self, var, value):
        os.environ[var] = value
        self.logger.info("Updated %s from CLI: %s", var, value)

    def _update_workers_env(self, cfg):
        workers = getattr(cfg, "workers", None)
        if workers:
            self._set("GUNICORN_WORKERS", str(workers))

    def _update_bind_env(self, cfg):
        bind = getattr(cfg, "bind", None)
        if bind:
            self._set("GUNICORN_BIND", _cli_text(bind))

    def _update_worker_class_env(self, cfg):
        settings = getattr(cfg, "settings", None)
        if isinstance(settings, dict) and "worker_class" in settings:
            value = settings["worker_class"].get()
        else:
            value = getattr(cfg, "worker_class", None)
        if isinstance(value, type):
            value = "%s.%s" % (value.__module__, value.__qualname__)
        if value:
            self._set("GUNICORN_WORKER_CLASS", str(value))


class MetricsServerManager:
    """The metrics server: under ferrocorn, its exporter process. No server
    is started here; ``setup_server`` and ``start_server`` report on it."""

    def __init__(self, logger):
        self.logger = logger
        self.max_retries = 5
        self.retry_delay = 2
        self._server_thread = None
        self._httpd = None

    def setup_server(self):
        """``(port, registry)`` of ferrocorn's exporter, or None (with a
        WARNING) when ferrocorn's metrics are off (``--no-metrics``) or this
        is not a ferrocorn process."""
        exporter = _ferrocorn.exporter()
        if exporter is None:
            self.logger.warning(
                "Not running inside ferrocorn: no metrics server (ferrocorn's exporter "
                "serves the metrics of a ferrocorn server)")
            return None
        if not exporter.enabled:
            self.logger.warning(
                "ferrocorn's metrics are off (--no-metrics / metrics = False): "
                "no metrics server")
            return None
        return exporter.port, _ferrocorn.ExporterRegistry(exporter)

    def start_server(self, port, registry):
        """True when ferrocorn's exporter serves /metrics on `port`. It
        runs already (the master forked it before when_ready): nothing is
        started, so there is never a second server on the port."""
        exporter = _ferrocorn.exporter()
        if exporter is None or not exporter.enabled:
            self.logger.error("Failed to start metrics server: %s",
                              "not running inside ferrocorn" if exporter is None
                              else "ferrocorn's metrics are off")
            return False
        if int(port) != exporter.port:
            self.logger.error(
                "Failed to start metrics server: ferrocorn's exporter serves the metrics on "
                "port %s, not %s (set PROMETHEUS_METRICS_PORT or --prometheus-metrics-port "
                "to choose its port)", exporter.port, port)
            return False
        if not exporter.answering():
            self.logger.warning("ferrocorn's exporter does not answer on %s yet", exporter.url)
        self.logger.info("Metrics server started successfully on port %s "
                         "(ferrocorn's exporter: %s)", port, exporter.url)
        return True

    def stop_server(self):
        """ferrocorn's master stops its exporter when the server stops."""
        self._server_thread = None


class WorkerManager:
    """Worker metrics and shutdown."""

    def __init__(self, logger):
        self.logger = logger

    def update_metrics(self, worker):
        """Refreshes the worker's gauges (``worker.update_worker_metrics()``,
        see plugin.PrometheusMixin); True when it did."""
        update = getattr(worker, "update_worker_metrics", None)
        if update is None:
            return False
        try:
            values = update()
        except Exception as e:
            self.logger.error("Failed to update worker metrics: %s", e)
            return False
        self.logger.debug("Updated worker metrics for %s: %s",
                          getattr(worker, "worker_id", worker), values)
        return True

    def shutdown_worker(self, worker):
        """``worker.handle_quit()`` (gunicorn's quick exit), else
        ``worker.alive = False`` (graceful); True when one of them worked."""
        try:
            worker.handle_quit()
            self.logger.debug("Called handle_quit() on worker %s", getattr(worker, "pid", "?"))
            return True
        except Exception as e:
            self.logger.warning("worker.handle_quit() failed (%s); setting alive = False", e)
        try:
            worker.alive = False
            return True
        except Exception as e:
            self.logger.error("Failed to shut down worker: %s", e)
            return False


def _children(pid):
    """(pid, cmdline) of the live child processes of `pid`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                text = f.read()
            fields = text[text.rindex(")") + 2:].split()
            if int(fields[1]) != pid or fields[0] in ("Z", "X"):
                continue
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except (OSError, ValueError, IndexError):
            continue
        out.append((int(entry), cmd))
    return out


class ProcessManager:
    """Child processes left at exit."""

    def __init__(self, logger):
        self.logger = logger
        self.timeout = 5

    def cleanup_processes(self):
        """Terminates (TERM, then KILL after ``timeout`` s) this process's
        children that are not ferrocorn's own: ferrocorn's workers and
        exporter (process titles ``ferrocorn: ...``) are the master's to
        stop, and it has stopped them before on_exit."""
        try:
            children = [(pid, cmd) for pid, cmd in _children(os.getpid())
                        if not cmd.startswith("ferrocorn:")]
        except OSError as e:
            self.logger.error("Error during cleanup: %s", e)
            return
        for pid, cmd in children:
            self._terminate_child(pid, cmd)

    def _terminate_child(self, pid, cmd):
        name = cmd.split(" ", 1)[0] or str(pid)
        self.logger.info("Terminating child process: %s (PID: %s)", name, pid)
        try:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    return
                time.sleep(0.05)
            self.logger.warning("Force killing child process: %s (PID: %s)", name, pid)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except ChildProcessError:
            return
        except OSError as e:
            self.logger.error("Error terminating child process %s: %s", pid, e)


_hook_manager = None
_metrics_manager = None
_process_manager = None


def _get_hook_manager():
    global _hook_manager
    if _hook_manager is None:
        _hook_manager = HookManager()
    return _hook_manager


def _get_metrics_manager():
    global _metrics_manager
    if _metrics_manager is None:
        _metrics_manager = MetricsServerManager(_get_hook_manager().get_logger())
    return _metrics_manager


def _get_process_manager():
    global _process_manager
    if _process_manager is None:
        _process_manager = ProcessManager(_get_hook_manager().get_logger())
    return _process_manager


def default_on_starting(_server):
    """Makes sure the multiprocess directory exists."""
    from .utils import ensure_multiprocess_dir, get_multiprocess_dir

    logger = _get_hook_manager().logger
    logger.info("Server starting - initializing PrometheusMaster metrics")
    mp_dir = get_multiprocess_dir()
    if not mp_dir:
        logger.warning("PROMETHEUS_MULTIPROC_DIR not set; skipping master metrics initialization")
        return
    ensure_multiprocess_dir(mp_dir)
    logger.info("Multiprocess directory ready: %s", mp_dir)
    logger.info("Master metrics initialized")


def default_post_fork(server, worker):
    """Logs the worker's configuration and sets GUNICORN_WORKERS,
    GUNICORN_BIND and GUNICORN_WORKER_CLASS from the server's values."""
    context = HookContext(server=server, worker=worker, logger=_get_hook_manager().get_logger())
    context.logger.info("=== Gunicorn Configuration ===")
    context.logger.info(str(server.cfg))
    context.logger.info("=== End Configuration ===")
    EnvironmentManager(context.logger).update_from_cli(server.cfg)


def _report_metrics_server(context):
    manager = _get_metrics_manager()
    result = manager.setup_server()
    if not result:
        return False
    port, registry = result
    context.logger.info("Prometheus metrics server on :%s is ferrocorn's exporter "
                        "(no second server started)", port)
    if not manager.start_server(port, registry):
        context.logger.error("Failed to start metrics server")
        return False
    return True


def default_when_ready(_server):
    """Reports ferrocorn's exporter as the metrics server (it is already
    running; no second server is started)."""
    context = HookContext(server=_server, logger=_get_hook_manager().get_logger())
    _report_metrics_server(context)


def default_worker_int(worker):
    """Refreshes the worker's gauges, then ``worker.handle_quit()``."""
    logger = _get_hook_manager().get_logger()
    logger.info("Worker %s received interrupt signal", getattr(worker, "pid", "?"))
    manager = WorkerManager(logger)
    manager.update_metrics(worker)
    manager.shutdown_worker(worker)


def default_on_exit(_server):
    """Logs the shutdown and terminates children that are not ferrocorn's."""
    context = HookContext(server=_server, logger=_get_hook_manager().get_logger())
    context.logger.info("Server shutting down - cleaning up Prometheus metrics server")
    _get_process_manager().cleanup_processes()
    context.logger.info("Server shutdown complete")


def redis_when_ready(_server):
    """Reports ferrocorn's Redis push (REDIS_ENABLED: the exporter writes
    the metrics to Redis itself) and its exporter as the metrics server."""
    context = HookContext(server=_server, logger=_get_hook_manager().get_logger())
    cfg = _ferrocorn.server_cfg()
    if cfg is not None and getattr(cfg, "redis_enabled", False):
        context.logger.info(
            "Redis metrics storage enabled - ferrocorn's exporter pushes the metrics to "
            "Redis (prefix %r)", cfg.redis_key_prefix or "gunicorn")
    elif cfg is None and get_config().redis_enabled:
        context.logger.warning("Not running inside ferrocorn: no Redis metrics storage")
    _report_metrics_server(context)


def redis_sidecar_when_ready(_server):
    """Sidecar mode: the app's server serves no metrics itself."""
    context = HookContext(server=_server, logger=_get_hook_manager().get_logger())
    context.logger.info("Sidecar mode: skipping metrics server setup in app container")


def load_yaml_config(config_file_path):
    from .config.loader import load_yaml_config as load
    load(config_file_path)
