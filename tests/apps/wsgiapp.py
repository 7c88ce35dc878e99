"""Plain WSGI app used by the integration tests (no framework in the way).

Routes:
  /                 "Hello, World!" with Content-Length
  /echo             reads the whole body (wsgi.input.read()), answers JSON
  /environ          the environ as JSON (str() of non-JSON values)
  /osenv?k=NAME     os.environ[NAME] (or "<unset>")
  /stream?n=&size=  generator without Content-Length
  /status/CODE      that status; tries to send a body anyway
  /sleep?s=         sleeps, then answers
  /spin?s=          busy for s seconds (yields to no greenlet hub)
  /error            raises
  /noread           answers without reading the body
  /headers          sets response headers used by the access-log tests
  /pid              the worker's pid
  /kind?sleep=      which worker kind runs this request: the thread, greenlet, whether
                    gevent or eventlet patched the standard library, and
                    wsgi.multithread / wsgi.multiprocess
"""
import hashlib
import json
import os
import sys
import threading
import time
from urllib.parse import parse_qs


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def _send(start_response, body, status="200 OK", ctype="text/plain", extra=()):
    if isinstance(body, str):
        body = body.encode("utf-8")
    start_response(status, [("Content-Type", ctype),
                            ("Content-Length", str(len(body)))] + list(extra))
    return [body]


def _patched(name):
    """True when gevent or eventlet monkey-patched the time module."""
    if name == "gevent":
        mod = sys.modules.get("gevent.monkey")
        return bool(mod and mod.is_module_patched("time"))
    mod = sys.modules.get("eventlet.patcher")
    return bool(mod and mod.is_monkey_patched("time"))


def _kind(environ):
    return {
        "pid": os.getpid(),
        "native_thread_id": threading.get_native_id(),
        "main_thread": threading.current_thread() is threading.main_thread(),
        "thread_name": _native_thread_name(),
        "gevent": _patched("gevent"),
        "eventlet": _patched("eventlet"),
        "greenlet": _greenlet_id(),
        "multithread": environ["wsgi.multithread"],
        "multiprocess": environ["wsgi.multiprocess"],
    }


def _greenlet_id():
    """The running greenlet, where a greenlet library is loaded."""
    mod = sys.modules.get("greenlet")
    return id(mod.getcurrent()) if mod else None


def _native_thread_name():
    try:
        with open("/proc/self/task/%d/comm" % threading.get_native_id()) as f:
            return f.read().strip()
    except OSError:
        return ""


KEPT = []


def _objects(environ, start_response):
    return {"sr": id(start_response), "input": id(environ["wsgi.input"]),
            "hints": id(environ["wsgi.early_hints"])}


def _try(call):
    """A call's result, or the name and message of what it raised."""
    try:
        value = call()
        return {"ok": repr(value)}
    except Exception as e:  # noqa: BLE001 - reported to the test
        return {"raised": type(e).__name__, "message": str(e)}


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    qs = parse_qs(environ.get("QUERY_STRING", ""))

    if path == "/":
        return _send(start_response, b"Hello, World!")

    if path == "/echo":
        body = environ["wsgi.input"].read()
        out = {
            "method": environ["REQUEST_METHOD"],
            "path": path,
            "query": environ.get("QUERY_STRING", ""),
            "headers": {k: v for k, v in environ.items() if k.startswith("HTTP_")},
            "content_length": environ.get("CONTENT_LENGTH"),
            "content_type": environ.get("CONTENT_TYPE"),
            "size": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "body": body.decode("latin-1"),
        }
        return _send(start_response, json.dumps(out), ctype="application/json")

    if path == "/environ" or path.startswith("/environ/"):
        env = {k: _jsonable(v) for k, v in environ.items()}
        return _send(start_response, json.dumps(env, sort_keys=True), ctype="application/json")

    if path == "/osenv":
        name = qs.get("k", [""])[0]
        return _send(start_response, os.environ.get(name, "<unset>"))

    if path == "/stream":
        n = int(qs.get("n", ["5"])[0])
        size = int(qs.get("size", ["10"])[0])
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return ((b"%c" % (ord("a") + i % 26)) * size for i in range(n))

    if path.startswith("/status/"):
        code = int(path.rsplit("/", 1)[1])
        start_response("%d Whatever" % code, [("Content-Type", "text/plain")])
        return [b"this body must not be sent"]

    if path == "/sleep":
        s = float(qs.get("s", ["1"])[0])
        time.sleep(s)
        return _send(start_response, "slept %s" % s)

    if path == "/spin":
        # Busy for s seconds without a call that could yield to a hub.
        s = float(qs.get("s", ["1"])[0])
        end = time.perf_counter() + s
        n = 0
        while time.perf_counter() < end:
            n += 1
        return _send(start_response, "spun %s" % s)

    if path == "/error":
        raise RuntimeError("intentional error from /error")

    if path == "/readline":
        line = environ["wsgi.input"].readline()
        return _send(start_response, json.dumps({"line": line.decode("latin-1")}),
                     ctype="application/json")

    if path == "/noread":
        return _send(start_response, b"did not read the body")

    if path == "/headers":
        return _send(start_response, b"with headers",
                     extra=[("X-Resp", "resp-value"), ("X-Other", "o")])

    if path == "/kind":
        time.sleep(float(qs.get("sleep", ["0"])[0]))
        return _send(start_response, json.dumps(_kind(environ)), ctype="application/json")

    if path == "/pid":
        return _send(start_response, str(os.getpid()))

    if path == "/objects":
        # The identities of the objects this request was handed.
        return _send(start_response, json.dumps(_objects(environ, start_response)),
                     ctype="application/json")

    if path == "/keep":
        # Keeps this request's objects for /kept (a later request).
        write = start_response("200 OK", [("Content-Type", "application/json")])
        KEPT[:] = [start_response, write, environ["wsgi.input"], environ["wsgi.early_hints"]]
        return [json.dumps(_objects(environ, start_response)).encode()]

    if path == "/kept":
        # What the objects kept by /keep do now, during another request. No
        # Content-Length: bytes the kept write() let through would show.
        sr, write, inp, hints = KEPT
        start_response("200 OK", [("Content-Type", "application/json")])
        result = {"now": _objects(environ, start_response),
                  "kept": {"sr": id(sr), "input": id(inp)},
                  "write": _try(lambda: write(b"LATE")),
                  "input_read": _try(inp.read),
                  "hints": _try(lambda: hints([("Link", "</a.css>; rel=preload")])),
                  "start_response": _try(lambda: sr("500 Oops", []))}
        return [json.dumps(result).encode()]

    return _send(start_response, b"not found", status="404 Not Found")


application = app
