"""gunicorn 23 config for gunicorn-prometheus-exporter 0.2.4 (file / multiprocess mode),
wired as its docs say: worker_class PrometheusWorker + its default_* hooks.

Environment (bench/metrics.sh sets it): PROMETHEUS_MULTIPROC_DIR, PROMETHEUS_METRICS_PORT,
PROMETHEUS_BIND_ADDRESS, GUNICORN_WORKERS, METRICS_BENCH_BIND, METRICS_BENCH_MAX_REQUESTS.
Same settings as /work/shared/bench-anchors/conf/gunicorn_prom_conf_common.py, plus max_requests.
"""
import os

# Importing the package patches gunicorn's Arbiter with PrometheusMaster.
from gunicorn_prometheus_exporter.hooks import (  # noqa: E402
    default_on_exit,
    default_on_starting,
    default_post_fork,
    default_when_ready,
    default_worker_int,
)

bind = os.environ.get("METRICS_BENCH_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "1"))
worker_class = "gunicorn_prometheus_exporter.PrometheusWorker"
max_requests = int(os.environ.get("METRICS_BENCH_MAX_REQUESTS", "0"))
max_requests_jitter = 0
loglevel = "warning"
accesslog = None

on_starting = default_on_starting
when_ready = default_when_ready
post_fork = default_post_fork
worker_int = default_worker_int
on_exit = default_on_exit
