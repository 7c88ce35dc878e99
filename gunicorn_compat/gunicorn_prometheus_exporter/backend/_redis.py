"""redis-py, which the Redis backend API needs (the server's own Redis push
does not: ferrocorn's exporter speaks Redis natively)."""

try:
    import redis
except ImportError:  # a clear message when something needs it
    redis = None


def require(what):
    """The redis module; ImportError naming redis-py when it is missing."""
    if redis is None:
        raise ImportError(
            "%s needs redis-py, which is not installed in this environment: "
            "pip install redis (ferrocorn's own Redis push, REDIS_ENABLED=true, "
            "does not need it)" % what)
    return redis
