"""Low-level Redis operations of the backend."""

from .client import RedisStorageClient, RedisStorageDict, RedisValueClass
from .collector import RedisMultiProcessCollector
from .dict import RedisDict, redis_key
from .values import (
    RedisValue,
    cleanup_process_keys_for_pid,
    get_redis_value_class,
    mark_process_dead_redis,
)

__all__ = [
    "redis_key",
    "RedisDict",
    "RedisValue",
    "get_redis_value_class",
    "mark_process_dead_redis",
    "cleanup_process_keys_for_pid",
    "RedisStorageClient",
    "RedisStorageDict",
    "RedisValueClass",
    "RedisMultiProcessCollector",
]
