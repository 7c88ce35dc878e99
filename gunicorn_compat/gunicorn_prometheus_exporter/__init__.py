"""gunicorn-prometheus-exporter's Python API, served by ferrocorn.

ferrocorn builds this package into its binary and imports it before
anything installed in the virtualenv (an installed gunicorn-prometheus-
exporter is never imported, so it patches nothing). Configs written for
gunicorn + gunicorn-prometheus-exporter run unchanged: the worker class
names map to ferrocorn's worker kinds, the hooks do their work on
ferrocorn's native parts (its exporter process serves /metrics and pushes
to Redis), and the configuration, manager and Redis backend APIs behave as
the exporter's documentation says. See docs/compatibility.md of ferrocorn.
"""

from .backend import (
    RedisStorageManager,
    get_redis_storage_manager,
    is_redis_enabled,
    setup_redis_metrics,
    teardown_redis_metrics,
)
from . import config
from .config import (
    ConfigManager,
    ConfigState,
    ExporterConfig,
    cleanup_config,
    get_config,
    get_config_manager,
    initialize_config,
    load_yaml_config,
)
from .master import PrometheusMaster
from .metrics import registry
from .plugin import (
    PrometheusEventletWorker,
    PrometheusGeventWorker,
    PrometheusThreadWorker,
    PrometheusTornadoWorker,
    PrometheusWorker,
    get_prometheus_eventlet_worker,
    get_prometheus_gevent_worker,
)

# Marks this package as ferrocorn's (tests and users can tell it from the
# original).
FERROCORN_COMPAT = True
__version__ = "0.2.4"

EVENTLET_AVAILABLE = True
GEVENT_AVAILABLE = True

__all__ = [
    "PrometheusWorker",
    "PrometheusThreadWorker",
    "PrometheusEventletWorker",
    "PrometheusGeventWorker",
    "PrometheusTornadoWorker",
    "PrometheusMaster",
    "registry",
    "RedisStorageManager",
    "get_redis_storage_manager",
    "setup_redis_metrics",
    "teardown_redis_metrics",
    "is_redis_enabled",
    "get_prometheus_eventlet_worker",
    "get_prometheus_gevent_worker",
] + config.__all__
