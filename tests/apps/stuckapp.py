"""/stuck sleeps in stuck_here() for a minute (a request that never ends
in time); anything else answers at once. `app` is WSGI, `asgi_app` ASGI."""
import time


def stuck_here(seconds):
    time.sleep(seconds)


def app(environ, start_response):
    if environ["PATH_INFO"] == "/stuck":
        stuck_here(60)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


async def asgi_app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/stuck":
        stuck_here(60)  # blocks the event loop, as a careless handler would
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
