"""A WSGI app wrapped in wsgiref.validate.validator.

Every request type the server must handle is here. When the server breaks
the WSGI contract, the validator raises AssertionError (a 500 response and a
traceback in the error log); WSGI warnings are turned into errors too. Tests
send each kind of request and assert the log holds no traceback.

Routes (the body of POST routes may come with Content-Length or chunked):
  GET/HEAD /            fixed body with Content-Length
  POST /read?n=N        read with read(N) until EOF; JSON size + sha256
  POST /readline        readline() until EOF (and readline(size) on the first line)
  POST /readlines       readlines()
  POST /iter            for line in wsgi.input
  GET /status/CODE      e.g. 204, 304: no body, no Content-Type
  GET /stream?n=N       generator response without Content-Length
  GET /write            the write() callable of start_response, then an iterable
  GET /file             wsgi.file_wrapper over a real file
  GET /query            echoes QUERY_STRING
"""
import hashlib
import json
import os
import tempfile
import warnings
from urllib.parse import parse_qs
from wsgiref.validate import WSGIWarning, validator

warnings.simplefilter("error", WSGIWarning)

FILE = os.path.join(tempfile.gettempdir(), "ferrocorn-validator-%d.bin" % os.getuid())


def _data_file():
    if not os.path.exists(FILE):
        tmp = FILE + ".%d.tmp" % os.getpid()
        with open(tmp, "wb") as f:
            f.write(b"".join(b"line %05d of the validator file\n" % i for i in range(4000)))
        os.replace(tmp, FILE)
    return FILE


def _json(start_response, obj, status="200 OK"):
    body = json.dumps(obj).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]


def _digest(data):
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def inner(environ, start_response):
    method = environ["REQUEST_METHOD"]
    path = environ.get("PATH_INFO", "/")
    qs = parse_qs(environ.get("QUERY_STRING", ""))
    inp = environ["wsgi.input"]

    if path == "/":
        body = b"validated hello\n"
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    if path == "/read" and method == "POST":
        n = int(qs.get("n", ["8192"])[0])
        parts = []
        while True:
            chunk = inp.read(n)
            assert len(chunk) <= n, "read(%d) returned %d bytes" % (n, len(chunk))
            if not chunk:
                break
            parts.append(chunk)
        return _json(start_response, _digest(b"".join(parts)))

    if path == "/readline" and method == "POST":
        parts = []
        first = inp.readline(5)
        assert len(first) <= 5, "readline(5) returned %d bytes" % len(first)
        parts.append(first)
        while True:
            line = inp.readline()
            if not line:
                break
            assert line.endswith(b"\n") or b"\n" not in line
            parts.append(line)
        return _json(start_response, _digest(b"".join(parts)))

    if path == "/readlines" and method == "POST":
        return _json(start_response, _digest(b"".join(inp.readlines())))

    if path == "/iter" and method == "POST":
        return _json(start_response, _digest(b"".join(line for line in inp)))

    if path.startswith("/status/"):
        code = int(path.rsplit("/", 1)[1])
        reasons = {204: "No Content", 304: "Not Modified"}
        start_response("%d %s" % (code, reasons.get(code, "Whatever")), [])
        return []

    if path == "/stream":
        n = int(qs.get("n", ["5"])[0])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"chunk %d\n" % i for i in range(n))

    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written by write()\n")
        write(b"second write\n")
        return [b"then the iterable\n"]

    if path == "/file":
        fn = _data_file()
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(os.path.getsize(fn)))])
        return environ["wsgi.file_wrapper"](open(fn, "rb"), 8192)

    if path == "/query":
        return _json(start_response, {"query": environ.get("QUERY_STRING", "")})

    body = b"not found\n"
    start_response("404 Not Found", [("Content-Type", "text/plain"),
                                     ("Content-Length", str(len(body)))])
    return [body]


app = application = validator(inner)
