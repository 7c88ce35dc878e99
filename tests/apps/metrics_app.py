"""A WSGI app with its own prometheus_client metrics, in multiprocess mode
(PROMETHEUS_MULTIPROC_DIR is set by ferrocorn, or by the test).

Routes:
  /work?n=K        counts K in app_jobs_total{kind="work"}, observes K/10 s in
                   app_job_seconds, sets one gauge per multiprocess mode to K
  /summary?v=X     observes X in app_payload_bytes (a Summary)
  /pid             the worker's pid
  /collect         prometheus_client's own MultiProcessCollector over the
                   directory, as JSON {sample_name|labels: value}
  /                "ok"
"""
import json
import os
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary
from prometheus_client import multiprocess

MODES = ("all", "liveall", "min", "max", "sum", "livesum", "mostrecent", "livemostrecent")

JOBS = Counter("app_jobs", "Jobs done", ["kind"])
JOB_SECONDS = Histogram("app_job_seconds", "Job duration", buckets=(0.1, 0.5, 1.0, 5.0))
PAYLOAD = Summary("app_payload_bytes", "Payload sizes")
GAUGES = {m: Gauge("app_gauge_%s" % m, "Gauge in mode %s" % m, multiprocess_mode=m) for m in MODES}


def collect_json():
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, os.environ["PROMETHEUS_MULTIPROC_DIR"])
    out = {}
    for fam in registry.collect():
        for s in fam.samples:
            key = "%s|%s" % (s.name, json.dumps(sorted(s.labels.items())))
            out[key] = s.value
    return out


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    q = parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/work":
        n = int(q.get("n", ["1"])[0])
        JOBS.labels(kind="work").inc(n)
        JOB_SECONDS.observe(n / 10.0)
        for g in GAUGES.values():
            g.set(n)
        body = b"ok"
    elif path == "/summary":
        PAYLOAD.observe(float(q.get("v", ["1"])[0]))
        body = b"ok"
    elif path == "/pid":
        body = str(os.getpid()).encode()
    elif path == "/collect":
        body = json.dumps(collect_json()).encode()
    elif path == "/dir":
        body = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "<unset>").encode()
    else:
        body = b"ok"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
