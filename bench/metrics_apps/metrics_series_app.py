"""WSGI app for bench/metrics.sh's scrape-under-churn measurement.

At import (i.e. in every worker, after the fork: the app must NOT be preloaded) it
creates METRICS_APP_SERIES (500) series of one labelled prometheus_client Counter and
increments each once, and counts its own boot.  With PROMETHEUS_MULTIPROC_DIR set,
prometheus_client writes them to counter_<pid>.db in that directory, so each worker
holds 500 application series in multiprocess file mode.

Expected values in a scrape (a check that merging / compaction of dead workers'
files loses nothing):
  bench_app_worker_boots_total       == number of worker processes ever booted
  bench_app_series_total{series=X}   == boots (+ requests, for series="s000")

GET / -> 200 "Hello, World!" (text/plain, Content-Length), and +1 on series s000.
"""
import os

from prometheus_client import Counter

N_SERIES = int(os.environ.get("METRICS_APP_SERIES", "500"))

BOOTS = Counter("bench_app_worker_boots", "Worker processes that imported the app")
SERIES = Counter("bench_app_series", "Synthetic application series", ["series"])

_children = [SERIES.labels(series=f"s{i:03d}") for i in range(N_SERIES)]
for _c in _children:
    _c.inc()
BOOTS.inc()
_HOT = _children[0]

BODY = b"Hello, World!"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ, start_response):
    _HOT.inc()
    start_response("200 OK", HEADERS)
    return [BODY]


application = app
