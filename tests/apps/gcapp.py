"""A WSGI app that reports its worker's garbage collector as JSON: pid,
gc.get_freeze_count(), gc.isenabled(), gc.get_threshold() (now and while
the app was imported), and on /cycle
whether a reference cycle made by this request was collected automatically
(no gc.collect() call) once enough objects were allocated after it. `app`
is WSGI, `asgi_app` ASGI.

GCAPP_IMPORT=disable makes the app call gc.disable() at import,
GCAPP_IMPORT=threshold gc.set_threshold(1000, 20, 30): the server must keep
the app's choice."""
import gc
import json
import os
import weakref

# What the collector was set to while the app was imported.
AT_IMPORT = list(gc.get_threshold())

_how = os.environ.get("GCAPP_IMPORT", "")
if _how == "disable":
    gc.disable()
elif _how == "threshold":
    gc.set_threshold(1000, 20, 30)

# Some import-time state, as a real app has.
TABLE = [[i, str(i)] for i in range(20000)]  # lists: always tracked by gc


class Node:
    pass


def cycle_collected():
    a, b = Node(), Node()
    a.other, b.other = b, a
    ref = weakref.ref(a)
    del a, b
    keep = []
    for i in range(100):
        # 100 x 1000 new container objects: many times threshold0.
        keep.append([[i] for _ in range(1000)])
        if ref() is None:
            return True
    return ref() is None


def report(path):
    info = {
        "pid": os.getpid(),
        "freeze_count": gc.get_freeze_count(),
        "enabled": gc.isenabled(),
        "threshold": list(gc.get_threshold()),
        "threshold_at_import": AT_IMPORT,
    }
    if path == "/cycle":
        info["collected"] = cycle_collected()
    return json.dumps(info).encode()


def app(environ, start_response):
    body = report(environ["PATH_INFO"])
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


async def asgi_app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = report(scope["path"])
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
