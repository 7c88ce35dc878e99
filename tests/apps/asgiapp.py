"""A plain ASGI 3 app for tests/test_asgi.py (no framework in the way).

Lifespan: records startup/shutdown lines (with the pid) in $ASGI_EVENTS when
set; ASGI_STARTUP=fail|raise makes startup fail. Endpoints:

  /kind       where the request ran: thread, event loop class, current task
  /scope      the scope as JSON (bytes as latin-1 strings)
  /echo       the body back, with the number of http.request messages
  /stream?n=  n chunks, no Content-Length (chunked)
  /sleep?s=   sleeps, then answers
  /raise      raises before the response starts
  /noresponse returns without a response
  /halfway    starts the response, then raises
  /wait-disconnect  reads the body, then waits for http.disconnect; records it
  /slowstream?n=&s= n chunks, s seconds apart; records a disconnect
  /stats      tasks alive, disconnects seen
  /task?id=&s= the current task before and after an optional wait (inside
              an anyio cancel scope), and a context variable set per request
"""
import asyncio
import contextvars
import json
import os
import threading
import urllib.parse

import anyio

REQUEST_ID = contextvars.ContextVar("request_id")
STATS = {"disconnects": 0, "stream_disconnects": 0, "cancelled": 0, "cleanup_ran": 0}


def _record(line):
    path = os.environ.get("ASGI_EVENTS")
    if path:
        with open(path, "a") as f:
            f.write("%s %d\n" % (line, os.getpid()))


async def _lifespan(scope, receive, send):
    while True:
        m = await receive()
        if m["type"] == "lifespan.startup":
            mode = os.environ.get("ASGI_STARTUP")
            if mode == "fail":
                await send({"type": "lifespan.startup.failed", "message": "no database here"})
                return
            if mode == "raise":
                raise RuntimeError("startup exploded")
            scope["state"]["started_by"] = os.getpid()
            _record("startup")
            await send({"type": "lifespan.startup.complete"})
        elif m["type"] == "lifespan.shutdown":
            _record("shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _body(receive):
    chunks, messages = [], 0
    while True:
        m = await receive()
        if m["type"] == "http.disconnect":
            return None, messages
        messages += 1
        chunks.append(m.get("body", b""))
        if not m.get("more_body"):
            return b"".join(chunks), messages


async def _json(send, obj, status=200):
    body = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def _scope_json(scope):
    def conv(v):
        if isinstance(v, bytes):
            return v.decode("latin-1")
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return conv(scope)


async def _websocket(scope, receive, send):
    assert (await receive())["type"] == "websocket.connect"
    if scope["path"] == "/ws-reject":
        await send({"type": "websocket.close"})
        return
    if scope["path"] == "/ws-raise":
        raise RuntimeError("websocket refused by an exception")
    await send({"type": "websocket.accept"})
    while True:
        m = await receive()
        if m["type"] == "websocket.disconnect":
            _record("ws-disconnect-%s" % m["code"])
            return
        if m.get("text") == "scope":
            await send({"type": "websocket.send", "text": json.dumps(_scope_json(scope))})
        elif m.get("text") is not None:
            await send({"type": "websocket.send", "text": m["text"]})
        else:
            await send({"type": "websocket.send", "bytes": m["bytes"]})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await _lifespan(scope, receive, send)
    if scope["type"] == "websocket":
        return await _websocket(scope, receive, send)
    assert scope["type"] == "http", scope["type"]
    path = scope["path"]
    q = dict(urllib.parse.parse_qsl(scope["query_string"].decode()))
    if path == "/kind":
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        return await _json(send, {
            "pid": os.getpid(),
            "native_thread_id": threading.get_native_id(),
            "main_thread": threading.current_thread() is threading.main_thread(),
            "loop": type(loop).__module__ + "." + type(loop).__name__,
            "task": task is not None,
            "state": scope.get("state", {}).get("started_by"),
        })
    if path.startswith("/scope"):
        return await _json(send, _scope_json(scope))
    if path == "/echo":
        body, messages = await _body(receive)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"x-messages", str(messages).encode())]})
        await send({"type": "http.response.body", "body": body or b""})
        return
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        for i in range(int(q.get("n", "3"))):
            await send({"type": "http.response.body", "body": b"chunk%d\n" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/big":
        n = int(q.get("n", "60000"))
        if "s" in q:
            await asyncio.sleep(float(q["s"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": bytes(range(256)) * (n // 256) + b"x" * (n % 256)})
        return
    if path == "/sleep":
        await asyncio.sleep(float(q.get("s", "0.1")))
        return await _json(send, {"slept": True, "pid": os.getpid()})
    if path == "/raise":
        raise ValueError("boom")
    if path == "/noresponse":
        return
    if path == "/halfway":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("halfway")
    if path == "/wait-disconnect":
        await _body(receive)
        m = await receive()
        if m["type"] == "http.disconnect":
            STATS["disconnects"] += 1
        return
    if path == "/slowstream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        n, s = int(q.get("n", "100")), float(q.get("s", "0.01"))
        try:
            for i in range(n):
                await send({"type": "http.response.body", "body": b"x" * 1024, "more_body": True})
                await asyncio.sleep(s)
            await send({"type": "http.response.body", "body": b""})
        finally:
            pass
        return
    if path == "/forever":
        # streams until cancelled; after http.disconnect it keeps going
        # (a slow cleanup): the grace period then cancels it
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"y" * 1024, "more_body": True})
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            STATS["cancelled"] += 1
            raise
    if path == "/task":
        before = asyncio.current_task()
        seen = REQUEST_ID.get(None)
        REQUEST_ID.set(q.get("id"))
        with anyio.CancelScope():
            if float(q.get("s", "0")):
                await asyncio.sleep(float(q["s"]))
        after = asyncio.current_task()
        return await _json(send, {
            "is_task": isinstance(before, asyncio.Task),
            "same_task": before is after,
            "task": id(before),
            "seen_before": seen,
            "id_after_wait": REQUEST_ID.get(None),
        })
    if path == "/stats":
        return await _json(send, {"tasks": len(asyncio.all_tasks()), **STATS,
                                  "fds": len(os.listdir("/proc/self/fd"))})
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")]})
    await send({"type": "http.response.body", "body": b"Hello, World!"})
