"""RedisStorageManager: prometheus_client's values stored in Redis for the
process that sets it up (the exporter's backend API).

Under ferrocorn the server's metrics reach Redis without this: its exporter
process pushes them (REDIS_ENABLED=true), and ``redis_when_ready`` does not
call ``setup()``. Code of the app that calls ``setup_redis_metrics()`` gets
what the API promises: prometheus_client metrics created afterwards in that
process keep their values in Redis, and ``get_collector()`` reads them back
merged across processes."""

import logging
import os

from ...config import get_config
from .._redis import require

logger = logging.getLogger(__name__)


class RedisStorageManager:
    """Set-up and tear-down of Redis storage for prometheus_client values."""

    def __init__(self, redis_client_factory=None, value_class_factory=None):
        require("RedisStorageManager")
        self._redis_client = None
        self._redis_value_class = None
        self._original_value_class = None
        self._is_initialized = False
        self._redis_client_factory = redis_client_factory or self._create_redis_client
        self._value_class_factory = value_class_factory or self._create_value_class

    def setup(self):
        """Connects (REDIS_HOST, REDIS_PORT, REDIS_DB, REDIS_PASSWORD) and
        makes prometheus_client store values in Redis. False (and a log
        line) when Redis is not enabled or cannot be reached."""
        config = get_config()
        if not config.redis_enabled:
            logger.debug("Redis is not enabled, skipping Redis metrics setup")
            return False
        if self._is_initialized:
            logger.warning("Redis storage already initialized")
            return True
        try:
            self._redis_client = self._redis_client_factory()
            self._redis_client.ping()
            prefix = config.redis_key_prefix.rstrip(":")
            self._redis_value_class = self._value_class_factory(self._redis_client, prefix)
            from prometheus_client import values
            self._original_value_class = values.ValueClass
            values.ValueClass = self._redis_value_class
            self._is_initialized = True
            logger.debug("Redis metrics storage enabled - using Redis instead of files")
            return True
        except Exception as e:
            logger.error("Failed to setup Redis metrics: %s", e)
            self._close()
            return False

    def teardown(self):
        """Gives prometheus_client its own value class back and disconnects."""
        if not self._is_initialized:
            return
        if self._original_value_class is not None:
            from prometheus_client import values
            values.ValueClass = self._original_value_class
            self._original_value_class = None
        self._close()
        self._is_initialized = False

    def is_enabled(self):
        return self._is_initialized and self._redis_client is not None

    def is_connected(self):
        return self.is_enabled()

    def get_client(self):
        return self._redis_client

    def cleanup_keys(self):
        """Deletes this process's keys."""
        if self._redis_client is None:
            return
        from ..core.values import mark_process_dead_redis
        try:
            mark_process_dead_redis(os.getpid(), self._redis_client,
                                    get_config().redis_key_prefix.rstrip(":"))
        except Exception as e:
            logger.warning("Failed to cleanup Redis keys: %s", e)

    def get_collector(self):
        """A RedisMultiProcessCollector over this manager's client (not
        registered anywhere), or None when not set up."""
        if not self.is_enabled():
            return None
        from ..core.collector import RedisMultiProcessCollector
        return RedisMultiProcessCollector(None, self._redis_client,
                                          get_config().redis_key_prefix.rstrip(":"))

    def _create_redis_client(self):
        redis = require("RedisStorageManager")
        config = get_config()
        auth = ":%s@" % config.redis_password if config.redis_password else ""
        url = "redis://%s%s:%s/%s" % (auth, config.redis_host, config.redis_port, config.redis_db)
        os.environ["PROMETHEUS_REDIS_URL"] = url
        return redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0,
                              retry_on_timeout=True, health_check_interval=30)

    def _create_value_class(self, client, prefix):
        from ..core.values import get_redis_value_class
        return get_redis_value_class(client, prefix)

    def _close(self):
        client, self._redis_client = self._redis_client, None
        self._redis_value_class = None
        if client is not None:
            try:
                client.close()
            except Exception as e:
                logger.warning("Error disconnecting from Redis: %s", e)


_global_manager = None


def get_redis_storage_manager():
    """The global RedisStorageManager (ImportError naming redis-py when it
    is not installed)."""
    global _global_manager
    if _global_manager is None:
        _global_manager = RedisStorageManager()
    return _global_manager


def setup_redis_metrics():
    return get_redis_storage_manager().setup()


def teardown_redis_metrics():
    get_redis_storage_manager().teardown()


def is_redis_enabled():
    return get_redis_storage_manager().is_enabled()


def get_redis_client():
    return get_redis_storage_manager().get_client()


def cleanup_redis_keys():
    get_redis_storage_manager().cleanup_keys()


def get_redis_collector():
    return get_redis_storage_manager().get_collector()
