"""RedisStorageDict (metric values in Redis hashes), RedisValueClass and
RedisStorageClient.

Layout: one hash per value and process,
``{prefix}:{type}:{pid}:metric:{md5(key)}`` with ``value``, ``timestamp``
and ``updated_at``, and its metadata hash ``...:meta:{md5(key)}`` with
``original_key`` (see dict.redis_key), ``typ`` and ``multiprocess_mode``.
Keys expire after REDIS_TTL_SECONDS unless REDIS_TTL_DISABLED."""

import hashlib
import logging
import os
import threading
import time

from ...config import get_config
from .dict import _text

logger = logging.getLogger(__name__)


def _ttl():
    """Seconds of TTL for new writes, or None when disabled."""
    config = get_config()
    if config.redis_ttl_disabled or config.redis_ttl_seconds <= 0:
        return None
    return config.redis_ttl_seconds


def _as_float(raw, default=0.0):
    try:
        return float(_text(raw))
    except (TypeError, ValueError):
        return default


def _type_part(typ, mode):
    return "%s_%s" % (typ, mode) if typ == "gauge" and mode else typ


class RedisStorageDict:
    """Metric values of this process in Redis (thread-safe)."""

    def __init__(self, redis_client, key_prefix=None):
        self._redis = redis_client
        self._key_prefix = (key_prefix or get_config().redis_key_prefix).rstrip(":")
        self._lock = threading.Lock()

    @property
    def key_prefix(self):
        return self._key_prefix

    def _keys(self, key, typ, mode):
        digest = hashlib.md5(key.encode("utf-8")).hexdigest()
        base = "%s:%s:%d" % (self._key_prefix, _type_part(typ, mode), os.getpid())
        return "%s:metric:%s" % (base, digest), "%s:meta:%s" % (base, digest)

    def _now(self):
        try:
            sec, usec = self._redis.time()
            return sec + usec / 1e6
        except Exception:
            return time.time()

    def ensure_metadata(self, key, typ="counter", multiprocess_mode="all"):
        _, meta = self._keys(key, typ, multiprocess_mode)
        with self._lock:
            self._write_meta(meta, key, typ, multiprocess_mode)

    def _write_meta(self, meta, key, typ, mode):
        pipe = self._redis.pipeline()
        pipe.hsetnx(meta, "original_key", key)
        pipe.hsetnx(meta, "typ", typ)
        pipe.hsetnx(meta, "multiprocess_mode", mode or "")
        pipe.hsetnx(meta, "created_at", str(self._now()))
        ttl = _ttl()
        if ttl:
            pipe.expire(meta, ttl)
        pipe.execute()

    def read_value(self, key, metric_type="counter", multiprocess_mode=""):
        """(value, timestamp); (0.0, 0.0) for a value not written yet."""
        metric, _ = self._keys(key, metric_type, multiprocess_mode)
        with self._lock:
            value, ts = self._redis.hmget(metric, ["value", "timestamp"])
        if value is None:
            return 0.0, 0.0
        return _as_float(value), _as_float(ts)

    def write_value(self, key, value, timestamp, metric_type="counter", multiprocess_mode=""):
        metric, meta = self._keys(key, metric_type, multiprocess_mode)
        with self._lock:
            self._redis.hset(metric, mapping={
                "value": value, "timestamp": timestamp, "updated_at": self._now()})
            ttl = _ttl()
            if ttl:
                self._redis.expire(metric, ttl)
            self._write_meta(meta, key, metric_type, multiprocess_mode)

    def read_all_values(self):
        """(original key, value, timestamp) of every value under the prefix."""
        for pid, typ, mode, key, value, ts in self.read_all_entries():
            yield key, value, ts

    def read_all_entries(self):
        """(pid, type, multiprocess_mode, original key, value, timestamp) of
        every value under the prefix, all processes."""
        for metric in self._redis.scan_iter(match="%s:*:*:metric:*" % self._key_prefix,
                                            count=100):
            metric = _text(metric)
            meta = metric.replace(":metric:", ":meta:", 1)
            info = {_text(k): _text(v) for k, v in self._redis.hgetall(meta).items()}
            key = info.get("original_key")
            if not key:
                continue
            value, ts = self._redis.hmget(metric, ["value", "timestamp"])
            if value is None:
                continue
            parts = metric[len(self._key_prefix) + 1:].split(":")
            try:
                pid = int(parts[1])
            except (IndexError, ValueError):
                continue
            typ = info.get("typ") or parts[0].split("_", 1)[0]
            yield pid, typ, info.get("multiprocess_mode", ""), key, _as_float(value), _as_float(ts)

    @staticmethod
    def read_all_values_from_redis(redis_client, key_prefix=None):
        return RedisStorageDict(redis_client, key_prefix).read_all_values()

    def close(self):
        """The client belongs to the caller: nothing to close."""


class RedisValueClass:
    """A prometheus_client ValueClass whose values live in Redis."""

    def __init__(self, redis_client, key_prefix=None):
        self._redis_client = redis_client
        self._key_prefix = key_prefix or get_config().redis_key_prefix

    def __call__(self, *args, **kwargs):
        from .values import RedisValue
        kwargs.setdefault("redis_client", self._redis_client)
        kwargs.setdefault("redis_key_prefix", self._key_prefix)
        return RedisValue(*args, **kwargs)


class RedisStorageClient:
    """The Redis operations of the backend: value class, per-process cleanup."""

    def __init__(self, redis_client, key_prefix=None):
        self._redis_client = redis_client
        self._key_prefix = (key_prefix or get_config().redis_key_prefix).rstrip(":")
        self._value_class = RedisValueClass(redis_client, self._key_prefix)

    def get_value_class(self):
        return self._value_class

    def get_client(self):
        return self._redis_client

    def cleanup_process_keys(self, pid):
        """Deletes the keys of process `pid` (at most 1000 per call);
        returns how many were deleted."""
        deleted = 0
        batch = []
        try:
            for key in self._redis_client.scan_iter(match="%s:*:%d:*" % (self._key_prefix, pid),
                                                    count=100):
                batch.append(key)
                if len(batch) >= 100:
                    deleted += self._redis_client.delete(*batch)
                    batch = []
                    if deleted >= 1000:
                        break
            if batch:
                deleted += self._redis_client.delete(*batch)
        except Exception as e:
            logger.warning("Failed to cleanup Redis keys for process %d: %s", pid, e)
        return deleted
