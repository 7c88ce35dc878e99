"""A WSGI app whose worker grows by 5 MB (written, so resident) per request
to /grow; /pid answers the worker's pid."""
import os

KEEP = []


def app(environ, start_response):
    if environ["PATH_INFO"] == "/grow":
        KEEP.append(b"x" * (5 * 1024 * 1024))
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
