# The API reference's PrometheusTornadoWorker usage (it gives no full
# config; the rest is the Sync Worker configuration's).
import os

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", "/tmp/prometheus_multiproc")
os.environ.setdefault("PROMETHEUS_METRICS_PORT", "9090")
os.environ.setdefault("PROMETHEUS_BIND_ADDRESS", "0.0.0.0")
os.environ.setdefault("GUNICORN_WORKERS", "2")

from gunicorn_prometheus_exporter import PrometheusTornadoWorker  # noqa: F401

# Usage in gunicorn.conf.py
bind = "0.0.0.0:8000"
workers = 2
worker_class = "gunicorn_prometheus_exporter.PrometheusTornadoWorker"
