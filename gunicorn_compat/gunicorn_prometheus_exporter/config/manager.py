"""ConfigManager: the exporter configuration's life cycle (states,
validation, one global instance behind get_config / initialize_config /
cleanup_config)."""

import logging
import os
import threading
import time
from enum import Enum

from .settings import ExporterConfig

logger = logging.getLogger(__name__)


class ConfigState(Enum):
    UNINITIALIZED = "uninitialized"
    INITIALIZING = "initializing"
    INITIALIZED = "initialized"
    VALIDATING = "validating"
    UPDATING = "updating"
    CLEANUP = "cleanup"
    ERROR = "error"


def _export(values):
    """Keyword arguments are environment variables (None: left alone)."""
    for key, value in values.items():
        if value is not None:
            os.environ[key] = str(value)


class ConfigManager:
    """One configuration, its state and its validation errors."""

    def __init__(self):
        self._config = None
        self._state = ConfigState.UNINITIALIZED
        self._lock = threading.RLock()
        self._validation_errors = []
        self._initialization_time = None

    @property
    def state(self):
        return self._state

    @property
    def is_initialized(self):
        return self._state == ConfigState.INITIALIZED

    @property
    def validation_errors(self):
        return list(self._validation_errors)

    def initialize(self, config_file=None, **kwargs):
        """Sets the keyword arguments as environment variables, creates the
        ExporterConfig and validates it. Raises RuntimeError when already
        initialized, ValueError when validation fails (state ERROR, then the
        manager is reset)."""
        with self._lock:
            if self._state == ConfigState.INITIALIZED:
                raise RuntimeError("Configuration already initialized")
            if self._state == ConfigState.INITIALIZING:
                raise RuntimeError("Configuration initialization in progress")
            try:
                self._state = ConfigState.INITIALIZING
                logger.info("Initializing configuration...")
                if config_file:
                    from .loader import load_yaml_config
                    load_yaml_config(config_file)
                    logger.info("YAML configuration loaded from: %s", config_file)
                _export(kwargs)
                sidecar = os.environ.get(ExporterConfig.ENV_SIDECAR_MODE, "false").lower() in (
                    "true", "1", "yes")
                self._config = ExporterConfig(is_sidecar=sidecar)
                self._initialization_time = time.time()
                self._validate_config()
                self._state = ConfigState.INITIALIZED
                logger.info("Configuration initialized successfully")
            except Exception as e:
                self._state = ConfigState.ERROR
                logger.error("Configuration initialization failed: %s", e)
                self._reset_fields()
                raise

    def _validate_config(self):
        with self._lock:
            if self._config is None:
                raise RuntimeError("Configuration not initialized")
            self._state = ConfigState.VALIDATING
            errors = self._validation_errors
            errors.clear()
            try:
                config = self._config
                if config.is_sidecar:
                    try:
                        config.prometheus_metrics_port
                        config.prometheus_bind_address
                    except ValueError as e:
                        errors.append(f"Prometheus configuration invalid: {e}")
                elif not config.validate():
                    errors.append("Base exporter configuration invalid (see logs)")
                if config.redis_enabled:
                    errors.extend(self._redis_problems(config))
                errors.extend(self._ssl_problems())
                if errors:
                    raise ValueError("Configuration validation failed: " + ", ".join(errors))
            except Exception:
                self._state = ConfigState.ERROR
                raise

    @staticmethod
    def _redis_problems(config):
        problems = []
        if not config.redis_host:
            problems.append("REDIS_HOST must be set when Redis is enabled")
        if not config.redis_port:
            problems.append("REDIS_PORT must be set when Redis is enabled")
        try:
            import redis
        except ImportError:
            problems.append("Redis client not available")
            return problems
        try:
            redis.Redis(host=config.redis_host, port=config.redis_port,
                        password=config.redis_password, socket_timeout=5.0).ping()
        except Exception as e:
            problems.append(f"Cannot connect to Redis: {e}")
        return problems

    @staticmethod
    def _ssl_problems():
        cert = os.environ.get("PROMETHEUS_SSL_CERTFILE")
        key = os.environ.get("PROMETHEUS_SSL_KEYFILE")
        problems = []
        if cert and not key:
            problems.append("SSL key file required when certificate is provided")
        if key and not cert:
            problems.append("SSL certificate file required when key is provided")
        if cert and not os.path.exists(cert):
            problems.append(f"SSL certificate file not found: {cert}")
        if key and not os.path.exists(key):
            problems.append(f"SSL key file not found: {key}")
        return problems

    def get_config(self):
        with self._lock:
            if self._config is None:
                raise RuntimeError("Configuration not initialized")
            if self._state != ConfigState.INITIALIZED:
                raise RuntimeError(f"Configuration not ready (state: {self._state.value})")
            return self._config

    def update_config(self, **kwargs):
        """Sets the keyword arguments as environment variables and validates
        again."""
        with self._lock:
            if self._config is not None and self._state != ConfigState.INITIALIZED:
                raise RuntimeError(f"Cannot update configuration (state: {self._state.value})")
            self._change(("Updating", "updated", "update"), lambda: _export(kwargs))

    def reload_config(self):
        """A new ExporterConfig from the environment, validated."""
        def renew():
            self._config = ExporterConfig()
        self._change(("Reloading", "reloaded", "reload"), renew)

    def _change(self, words, change):
        """`change()` then validation, in state UPDATING; ERROR (and the
        exception) when either fails."""
        doing, done, noun = words
        with self._lock:
            if self._config is None:
                raise RuntimeError("Configuration not initialized")
            try:
                self._state = ConfigState.UPDATING
                logger.info("%s configuration...", doing)
                change()
                self._validate_config()
                self._state = ConfigState.INITIALIZED
                logger.info("Configuration %s successfully", done)
            except Exception as e:
                self._state = ConfigState.ERROR
                logger.error("Configuration %s failed: %s", noun, e)
                raise

    def cleanup(self):
        with self._lock:
            if self._state == ConfigState.UNINITIALIZED:
                return
            self._state = ConfigState.CLEANUP
            logger.info("Cleaning up configuration...")
            self._reset_fields()
            logger.info("Configuration cleanup completed")

    def _reset_fields(self):
        self._config = None
        self._validation_errors.clear()
        self._initialization_time = None
        self._state = ConfigState.UNINITIALIZED

    def reset(self):
        with self._lock:
            self._reset_fields()
            logger.info("Configuration manager reset")

    def get_config_summary(self):
        with self._lock:
            if self._config is None:
                return {"state": self._state.value, "initialized": False}
            return {
                "state": self._state.value,
                "initialized": True,
                "initialization_time": self._initialization_time,
                "validation_errors": list(self._validation_errors),
                "prometheus_port": self._config.prometheus_metrics_port,
                "redis_enabled": self._config.redis_enabled,
                "gunicorn_workers": self._config.gunicorn_workers,
            }

    def health_check(self):
        with self._lock:
            health = {"healthy": False, "state": self._state.value, "errors": []}
            if self._config is None:
                health["errors"].append("Configuration not initialized")
                return health
            if self._state != ConfigState.INITIALIZED:
                health["errors"].append(f"Configuration not ready (state: {self._state.value})")
                return health
            if self._config.redis_enabled:
                health["errors"].extend(
                    "Redis connection error: " + p.split(": ", 1)[-1]
                    for p in self._redis_problems(self._config))
            else:
                try:
                    os.makedirs(self._config.prometheus_multiproc_dir, exist_ok=True)
                except OSError as e:
                    health["errors"].append(f"Multiprocess directory error: {e}")
            health["healthy"] = not health["errors"]
            return health


_config_manager = None
_manager_lock = threading.Lock()


def get_config_manager():
    """The global ConfigManager (created on first use)."""
    global _config_manager
    with _manager_lock:
        if _config_manager is None:
            _config_manager = ConfigManager()
        return _config_manager


def initialize_config(config_file=None, **kwargs):
    """Initializes the global configuration (keyword arguments are
    environment variables: initialize_config(PROMETHEUS_METRICS_PORT="9091"))."""
    get_config_manager().initialize(config_file=config_file, **kwargs)


def get_config():
    """The global ExporterConfig, initialized on first use."""
    manager = get_config_manager()
    with manager._lock:
        if manager.state == ConfigState.UNINITIALIZED:
            manager.initialize()
    return manager.get_config()


def cleanup_config():
    """Cleans up and forgets the global configuration."""
    global _config_manager
    with _manager_lock:
        if _config_manager is not None:
            _config_manager.cleanup()
            _config_manager = None
