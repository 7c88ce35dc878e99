"""WSGI app for the lifecycle tests (tests/test_signals.py, tests/test_hooks.py).

Routes:
  /info       "<worker pid> <$LC_MARK>" (LC_MARK comes from raw_env)
  /pid        the worker's pid
  /sleep?s=   sleeps, then answers
  anything else: "Hello, World!"
"""
import os
import time
from urllib.parse import parse_qs


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/info":
        body = "%d %s" % (os.getpid(), os.environ.get("LC_MARK", "<unset>"))
    elif path == "/pid":
        body = str(os.getpid())
    elif path == "/sleep":
        s = float(parse_qs(environ.get("QUERY_STRING", "")).get("s", ["1"])[0])
        time.sleep(s)
        body = "slept %s" % s
    else:
        body = "Hello, World!"
    data = body.encode("utf-8")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
