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
