"""Keys of metric values, and RedisDict: one Redis hash as a dictionary."""

import json
from collections.abc import MutableMapping


def redis_key(metric_name, name, labelnames, labelvalues, help_text):
    """The identity of one value (as prometheus_client's mmap_key): JSON of
    metric name, sample name, labels and help."""
    labels = dict(zip(labelnames or (), labelvalues or ()))
    return json.dumps([metric_name, name, labels, help_text], sort_keys=True)


def _text(v):
    return v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else v


class RedisDict(MutableMapping):
    """A Redis hash (``name``) as a mutable mapping of str to str:
    HGET / HSET / HDEL / HKEYS / HLEN."""

    def __init__(self, redis_client, name):
        self._redis = redis_client
        self.name = name

    def __getitem__(self, key):
        value = self._redis.hget(self.name, key)
        if value is None:
            raise KeyError(key)
        return _text(value)

    def __setitem__(self, key, value):
        self._redis.hset(self.name, key, value)

    def __delitem__(self, key):
        if not self._redis.hdel(self.name, key):
            raise KeyError(key)

    def __iter__(self):
        return iter([_text(k) for k in self._redis.hkeys(self.name)])

    def __len__(self):
        return int(self._redis.hlen(self.name))

    def __repr__(self):
        return "RedisDict(%r, %r)" % (self.name, dict(self))
