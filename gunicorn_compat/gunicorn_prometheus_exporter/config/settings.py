"""ExporterConfig: gunicorn-prometheus-exporter's settings, read from the
environment each time a property is read (so a value set after the config
was created is seen), with the exporter's defaults and messages."""

import logging
import os

logger = logging.getLogger(__name__)

_TRUE = ("true", "1", "yes", "on")


def _env_true(name, default="", accepted=_TRUE):
    return os.environ.get(name, default).lower() in accepted


class ExporterConfig:
    """The exporter's configuration (environment variables)."""

    _default_prometheus_dir = os.path.join(os.path.expanduser("~"), ".gunicorn_prometheus")
    PROMETHEUS_MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", _default_prometheus_dir)
    # No defaults for these three: they must be set in production.
    PROMETHEUS_METRICS_PORT = None
    PROMETHEUS_BIND_ADDRESS = None
    GUNICORN_WORKERS = None
    GUNICORN_TIMEOUT = os.environ.get("GUNICORN_TIMEOUT", 30)
    GUNICORN_KEEPALIVE = os.environ.get("GUNICORN_KEEPALIVE", 2)

    ENV_PROMETHEUS_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
    ENV_PROMETHEUS_METRICS_PORT = "PROMETHEUS_METRICS_PORT"
    ENV_PROMETHEUS_BIND_ADDRESS = "PROMETHEUS_BIND_ADDRESS"
    ENV_GUNICORN_WORKERS = "GUNICORN_WORKERS"
    ENV_GUNICORN_TIMEOUT = "GUNICORN_TIMEOUT"
    ENV_GUNICORN_KEEPALIVE = "GUNICORN_KEEPALIVE"

    ENV_REDIS_ENABLED = "REDIS_ENABLED"
    ENV_REDIS_HOST = "REDIS_HOST"
    ENV_REDIS_PORT = "REDIS_PORT"
    ENV_REDIS_DB = "REDIS_DB"
    ENV_REDIS_PASSWORD = "REDIS_PASSWORD"
    ENV_REDIS_KEY_PREFIX = "REDIS_KEY_PREFIX"
    ENV_REDIS_TTL_SECONDS = "REDIS_TTL_SECONDS"
    ENV_REDIS_TTL_DISABLED = "REDIS_TTL_DISABLED"

    ENV_SIDECAR_MODE = "SIDECAR_MODE"
    ENV_CLEANUP_DB_FILES = "CLEANUP_DB_FILES"

    ENV_PROMETHEUS_SSL_CERTFILE = "PROMETHEUS_SSL_CERTFILE"
    ENV_PROMETHEUS_SSL_KEYFILE = "PROMETHEUS_SSL_KEYFILE"
    ENV_PROMETHEUS_SSL_CLIENT_CAFILE = "PROMETHEUS_SSL_CLIENT_CAFILE"
    ENV_PROMETHEUS_SSL_CLIENT_CAPATH = "PROMETHEUS_SSL_CLIENT_CAPATH"
    ENV_PROMETHEUS_SSL_CLIENT_AUTH_REQUIRED = "PROMETHEUS_SSL_CLIENT_AUTH_REQUIRED"

    def __init__(self, is_sidecar=False):
        self._is_sidecar = is_sidecar
        self._setup_multiproc_dir()

    def _redis_on(self):
        # The exporter's own test for "Redis replaces the files" (no "on").
        return _env_true(self.ENV_REDIS_ENABLED, accepted=("true", "1", "yes"))

    def _setup_multiproc_dir(self):
        """Without Redis, PROMETHEUS_MULTIPROC_DIR gets the default when unset."""
        if not self._redis_on() and not os.environ.get(self.ENV_PROMETHEUS_MULTIPROC_DIR):
            os.environ[self.ENV_PROMETHEUS_MULTIPROC_DIR] = self.PROMETHEUS_MULTIPROC_DIR

    @staticmethod
    def _required(name, value, example):
        if value is None:
            raise ValueError(
                f"Environment variable {name} must be set in production. "
                f"Example: export {name}={example}")
        return value

    # -- Prometheus / Gunicorn ---------------------------------------------------

    @property
    def prometheus_multiproc_dir(self):
        if self._redis_on():
            return "/tmp"  # no files with Redis, but a valid path
        return os.environ.get(self.ENV_PROMETHEUS_MULTIPROC_DIR, self.PROMETHEUS_MULTIPROC_DIR)

    @property
    def prometheus_metrics_port(self):
        name = self.ENV_PROMETHEUS_METRICS_PORT
        return int(self._required(name, os.environ.get(name, self.PROMETHEUS_METRICS_PORT), 9091))

    @property
    def prometheus_bind_address(self):
        name = self.ENV_PROMETHEUS_BIND_ADDRESS
        return self._required(name, os.environ.get(name, self.PROMETHEUS_BIND_ADDRESS), "0.0.0.0")

    @property
    def gunicorn_workers(self):
        name = self.ENV_GUNICORN_WORKERS
        return int(self._required(name, os.environ.get(name, self.GUNICORN_WORKERS), 4))

    @property
    def gunicorn_timeout(self):
        return int(os.environ.get(self.ENV_GUNICORN_TIMEOUT, str(self.GUNICORN_TIMEOUT)))

    @property
    def gunicorn_keepalive(self):
        return int(os.environ.get(self.ENV_GUNICORN_KEEPALIVE, str(self.GUNICORN_KEEPALIVE)))

    @property
    def is_sidecar(self):
        return self._is_sidecar

    # -- Redis ---------------------------------------------------------------------

    @property
    def redis_enabled(self):
        return _env_true(self.ENV_REDIS_ENABLED)

    @redis_enabled.setter
    def redis_enabled(self, value):
        os.environ[self.ENV_REDIS_ENABLED] = "true" if value else "false"

    @redis_enabled.deleter
    def redis_enabled(self):
        os.environ.pop(self.ENV_REDIS_ENABLED, None)

    @property
    def redis_host(self):
        return os.environ.get(self.ENV_REDIS_HOST, "127.0.0.1")

    @property
    def redis_port(self):
        return int(os.environ.get(self.ENV_REDIS_PORT, "6379"))

    @property
    def redis_db(self):
        return int(os.environ.get(self.ENV_REDIS_DB, "0"))

    @property
    def redis_password(self):
        return os.environ.get(self.ENV_REDIS_PASSWORD)

    @property
    def redis_key_prefix(self):
        return os.environ.get(self.ENV_REDIS_KEY_PREFIX, "gunicorn")

    @property
    def redis_ttl_seconds(self):
        return int(os.environ.get(self.ENV_REDIS_TTL_SECONDS, "300"))

    @property
    def redis_ttl_disabled(self):
        return _env_true(self.ENV_REDIS_TTL_DISABLED, "false")

    @property
    def cleanup_db_files(self):
        return _env_true(self.ENV_CLEANUP_DB_FILES, "true")

    # -- TLS of the metrics server ----------------------------------------------------

    @property
    def prometheus_ssl_certfile(self):
        return os.environ.get(self.ENV_PROMETHEUS_SSL_CERTFILE)

    @property
    def prometheus_ssl_keyfile(self):
        return os.environ.get(self.ENV_PROMETHEUS_SSL_KEYFILE)

    @property
    def prometheus_ssl_client_cafile(self):
        return os.environ.get(self.ENV_PROMETHEUS_SSL_CLIENT_CAFILE)

    @property
    def prometheus_ssl_client_capath(self):
        return os.environ.get(self.ENV_PROMETHEUS_SSL_CLIENT_CAPATH)

    @property
    def prometheus_ssl_client_auth_required(self):
        return _env_true(self.ENV_PROMETHEUS_SSL_CLIENT_AUTH_REQUIRED, "false")

    @property
    def prometheus_ssl_enabled(self):
        return bool(self.prometheus_ssl_certfile and self.prometheus_ssl_keyfile)

    # -- dictionaries ------------------------------------------------------------------

    def get_gunicorn_config(self):
        if self.is_sidecar:
            return {}
        return {
            "bind": "127.0.0.1:8084",
            "workers": self.gunicorn_workers,
            "threads": 1,
            "timeout": self.gunicorn_timeout,
            "keepalive": self.gunicorn_keepalive,
            "worker_class": "gunicorn_prometheus_exporter.plugin.PrometheusWorker",
            "accesslog": "-",
            "errorlog": "-",
            "loglevel": "info",
            "proc_name": "gunicorn-prometheus-exporter",
        }

    def get_prometheus_config(self):
        return {
            "bind_address": self.prometheus_bind_address,
            "port": self.prometheus_metrics_port,
            "multiproc_dir": self.prometheus_multiproc_dir,
        }

    # -- validation ---------------------------------------------------------------------

    def _missing_required(self):
        if self._redis_on():
            return []
        required = [
            (self.ENV_PROMETHEUS_BIND_ADDRESS, "Bind address for metrics server", "0.0.0.0"),
            (self.ENV_PROMETHEUS_METRICS_PORT, "Port for metrics server", "9091"),
            (self.ENV_GUNICORN_WORKERS, "Number of Gunicorn workers", "4"),
        ]
        return [r for r in required if not os.environ.get(r[0])]

    def validate(self):
        """True when the configuration is usable; the reasons it is not are
        logged (ERROR) under this module's logger."""
        try:
            if self.is_sidecar:
                logger.info("Sidecar mode: Skipping Gunicorn-specific configuration validation.")
                return True
            missing = self._missing_required()
            if missing:
                logger.error("Required environment variables not set:")
                for name, what, _ in missing:
                    logger.error("   - %s (%s)", name, what)
                logger.error("\n Set these variables before running in production:")
                for name, _, example in missing:
                    logger.error("   export %s=%s", name, example)
                return False
            if not self._redis_on():
                os.makedirs(self.prometheus_multiproc_dir, exist_ok=True)
                port = self.prometheus_metrics_port
                if not 1024 <= port <= 65535:
                    raise ValueError(f"Port {port} is not in valid range (1024-65535)")
                if self.gunicorn_workers < 1:
                    raise ValueError(f"Worker count {self.gunicorn_workers} must be at least 1")
                if self.gunicorn_timeout < 1:
                    raise ValueError(f"Timeout {self.gunicorn_timeout} must be at least 1 second")
            return True
        except Exception as e:
            logger.error("Configuration validation failed: %s", e)
            return False

    def print_config(self):
        logger.info("Gunicorn Prometheus Exporter Configuration:")
        logger.info("=" * 50)
        logger.info("Prometheus Multiproc Dir: %s", self.prometheus_multiproc_dir)
        logger.info("Prometheus Metrics Port: %s", self.prometheus_metrics_port)
        logger.info("Prometheus Bind Address: %s", self.prometheus_bind_address)
        logger.info("Gunicorn Workers: %s", self.gunicorn_workers)
        logger.info("Gunicorn Timeout: %s", self.gunicorn_timeout)
        logger.info("Gunicorn Keepalive: %s", self.gunicorn_keepalive)
        logger.info("=" * 50)
