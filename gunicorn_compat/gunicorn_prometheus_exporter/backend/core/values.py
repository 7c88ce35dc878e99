"""RedisValue: a metric value (prometheus_client's ValueClass protocol:
inc, set, get, ...) stored in Redis."""

import time

from ...config import get_config
from .dict import redis_key


class RedisValue:
    """One value in Redis.

    Two ways to make one: ``RedisValue(storage_dict, metric_name="x")`` (a
    RedisStorageDict, as in the exporter's guide), or prometheus_client's
    ``RedisValue(typ, metric_name, name, labelnames, labelvalues, help_text,
    multiprocess_mode, redis_client=..., redis_key_prefix=...)``."""

    _multiprocess = True

    def __init__(self, typ=None, metric_name=None, name=None, labelnames=(), labelvalues=(),
                 help_text="", multiprocess_mode="", redis_client=None, redis_key_prefix=None,
                 **_kwargs):
        from .client import RedisStorageDict

        if isinstance(typ, RedisStorageDict):
            storage, typ = typ, _kwargs.get("metric_type", "counter")
        elif redis_client is not None:
            storage = RedisStorageDict(redis_client,
                                       redis_key_prefix or get_config().redis_key_prefix)
        else:
            raise ValueError("redis_client must be provided")
        if metric_name is None:
            raise ValueError("metric_name must be provided")
        self._storage = storage
        self._typ = typ or "counter"
        self._mode = multiprocess_mode or ("all" if self._typ == "gauge" else "")
        self._key = redis_key(metric_name, name or metric_name, labelnames, labelvalues,
                              help_text)
        storage.ensure_metadata(self._key, self._typ, self._mode)
        self._value, self._timestamp = storage.read_value(self._key, self._typ, self._mode)
        # Written at once (as prometheus_client's files hold every value
        # from its creation): a histogram's empty buckets are collected too.
        self._write()

    def _write(self):
        self._storage.write_value(self._key, self._value, self._timestamp, self._typ, self._mode)

    def inc(self, amount=1):
        self._value += amount
        self._timestamp = 0.0
        self._write()

    def set(self, value, timestamp=None):
        self._value = value
        self._timestamp = time.time() if timestamp is None else float(timestamp)
        self._write()

    def set_exemplar(self, _exemplar):
        """Exemplars are not stored in Redis."""

    def get(self):
        return self._value

    def get_timestamp(self):
        return self._timestamp

    def get_exemplar(self):
        return None


def get_redis_value_class(redis_client, redis_key_prefix=None):
    """A ValueClass for prometheus_client whose values go to `redis_client`."""
    prefix = redis_key_prefix or get_config().redis_key_prefix

    class ConfiguredRedisValue(RedisValue):
        def __init__(self, typ, metric_name, name, labelnames, labelvalues, help_text,
                     multiprocess_mode="", **kwargs):
            kwargs.setdefault("redis_client", redis_client)
            kwargs.setdefault("redis_key_prefix", prefix)
            super().__init__(typ, metric_name, name, labelnames, labelvalues, help_text,
                             multiprocess_mode, **kwargs)

    return ConfiguredRedisValue


def cleanup_process_keys_for_pid(pid, redis_client, redis_key_prefix=None):
    from .client import RedisStorageClient
    return RedisStorageClient(redis_client, redis_key_prefix).cleanup_process_keys(pid)


def mark_process_dead_redis(pid, redis_client, redis_key_prefix=None):
    """A process died: its keys go."""
    return cleanup_process_keys_for_pid(pid, redis_client, redis_key_prefix)
