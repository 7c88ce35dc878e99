"""The Redis backend API of gunicorn-prometheus-exporter: ``service``
(RedisStorageManager and its functions) and ``core`` (RedisStorageClient,
RedisStorageDict, RedisValue, RedisMultiProcessCollector, RedisDict).

Importing it needs nothing; using it needs redis-py (an ImportError says
so). ferrocorn's own Redis push (REDIS_ENABLED=true) needs none of this."""

from . import core, service
from .core import *  # noqa: F401,F403
from .service import *  # noqa: F401,F403

__all__ = service.__all__ + core.__all__
