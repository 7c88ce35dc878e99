"""RedisMultiProcessCollector: prometheus_client's MultiProcessCollector
for values stored in Redis (RedisValue): the values of every process are
merged as prometheus_client merges its multiprocess files."""

import json
from collections import defaultdict

from ...config import get_config
from .._redis import require
from .client import RedisStorageDict

_LIVE = ("liveall", "livemin", "livemax", "livesum", "livemostrecent")


def _alive(pid):
    import os
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class RedisMultiProcessCollector:
    """Collects the metrics every process wrote to Redis under the prefix."""

    def __init__(self, registry, redis_client=None, redis_key_prefix=None):
        redis = require("RedisMultiProcessCollector")
        if redis_client is None:
            import os
            url = os.environ.get("PROMETHEUS_REDIS_URL")
            if url:
                redis_client = redis.from_url(url, socket_timeout=5.0,
                                              socket_connect_timeout=5.0)
            else:
                config = get_config()
                redis_client = redis.Redis(host=config.redis_host, port=config.redis_port,
                                           db=config.redis_db, password=config.redis_password,
                                           socket_timeout=5.0, socket_connect_timeout=5.0)
        self._redis_client = redis_client
        self._redis_key_prefix = (redis_key_prefix or get_config().redis_key_prefix).rstrip(":")
        if registry is not None:
            registry.register(self)

    @staticmethod
    def merge_from_redis(redis_client, redis_key_prefix=None, accumulate=True):
        """The merged metrics (prometheus_client Metric objects)."""
        from prometheus_client.metrics_core import Metric

        storage = RedisStorageDict(redis_client, redis_key_prefix)
        metrics = {}
        # (metric, sample name, labels tuple) -> merged value
        merged = defaultdict(dict)
        for pid, typ, mode, key, value, ts in storage.read_all_entries():
            try:
                metric_name, name, labels, help_text = json.loads(key)
            except (TypeError, ValueError):
                continue  # not a key this backend wrote
            metric = metrics.get(metric_name)
            if metric is None:
                metric = metrics[metric_name] = Metric(metric_name, help_text, typ)
            if typ == "gauge":
                if mode in _LIVE and not _alive(pid):
                    continue
                if mode in ("all", "liveall", ""):
                    labels = dict(labels, pid=str(pid))
            ident = (name, tuple(sorted(labels.items())))
            slot = merged[metric_name]
            old = slot.get(ident)
            if old is None:
                slot[ident] = (value, ts)
            elif typ == "gauge" and mode in ("min", "livemin"):
                slot[ident] = (min(old[0], value), ts)
            elif typ == "gauge" and mode in ("max", "livemax"):
                slot[ident] = (max(old[0], value), ts)
            elif typ == "gauge" and mode in ("mostrecent", "livemostrecent"):
                if ts >= old[1]:
                    slot[ident] = (value, ts)
            else:
                slot[ident] = (old[0] + value, ts)
        for metric_name, metric in metrics.items():
            samples = merged[metric_name]
            if metric.type == "histogram":
                RedisMultiProcessCollector._histogram(metric, samples, accumulate)
            else:
                for (name, labels), (value, _) in samples.items():
                    metric.add_sample(name, dict(labels), value)
        return list(metrics.values())

    @staticmethod
    def _histogram(metric, samples, accumulate):
        from prometheus_client.utils import floatToGoString

        buckets = defaultdict(dict)
        for (name, labels), (value, _) in samples.items():
            labels = dict(labels)
            if name.endswith("_bucket"):
                le = float(labels.pop("le"))
                buckets[tuple(sorted(labels.items()))][le] = value
            else:
                metric.add_sample(name, labels, value)
        for labels, by_bound in buckets.items():
            total = 0.0
            for bound in sorted(by_bound):
                total = total + by_bound[bound] if accumulate else by_bound[bound]
                metric.add_sample(metric.name + "_bucket",
                                  dict(labels, le=floatToGoString(bound)), total)
            if accumulate:
                metric.add_sample(metric.name + "_count", dict(labels), total)

    def collect(self):
        return self.merge_from_redis(self._redis_client, self._redis_key_prefix, accumulate=True)
