# Configuration used by scripts/serve-example.sh:
#   ferrocorn -c examples/gunicorn.conf.py
# It is an ordinary gunicorn configuration file (gunicorn -c examples/gunicorn.conf.py
# serves the same way).
import os

_here = os.path.dirname(os.path.abspath(__file__))

bind = "127.0.0.1:8000"
workers = 2
accesslog = "-"
loglevel = "info"
chdir = os.path.join(_here, "flaskapp")
wsgi_app = "app:app"

# Metrics are on by default; these are gunicorn-prometheus-exporter's
# variables, set the way its documentation does (the environment still wins).
os.environ.setdefault("PROMETHEUS_BIND_ADDRESS", "127.0.0.1")
os.environ.setdefault("PROMETHEUS_METRICS_PORT", "9091")
