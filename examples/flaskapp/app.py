"""Example Flask application served by ferrocorn (and by the tests).

Run from examples/flaskapp:  ferrocorn app:app
"""
import hashlib
import json
import os
import tempfile
import time

from flask import Flask, Response, request, send_file, stream_with_context
from prometheus_client import Counter

app = Flask(__name__)
# The app's own metric: ferrocorn serves it on its /metrics next to its own
# families (prometheus_client multiprocess mode, no set-up in the app).
PAGES = Counter("example_pages_served", "Pages served by the example app", ["endpoint"])


@app.after_request
def _count_page(response):
    PAGES.labels(endpoint=request.endpoint or "none").inc()
    return response
# A real file for /file, written once to the temp dir (keeps the work tree clean).
DATA_FILE = os.path.join(tempfile.gettempdir(), "ferrocorn-example-data-%d.bin" % os.getuid())

FORM_PAGE = """<!doctype html>
<title>Form</title>
<form method="post" action="/form">
  <input name="name"> <input name="message"> <button>Send</button>
</form>
<form method="post" action="/upload" enctype="multipart/form-data">
  <input type="file" name="file"> <button>Upload</button>
</form>
"""


def _ensure_data_file():
    # A deterministic 256 KiB file, created on first use.
    if not os.path.exists(DATA_FILE):
        block = bytes(range(256)) * 1024
        tmp = DATA_FILE + ".%d.tmp" % os.getpid()
        with open(tmp, "wb") as f:
            f.write(block)
        os.replace(tmp, DATA_FILE)
    return DATA_FILE


@app.get("/")
def index():
    return "<h1>ferrocorn example</h1><p>Hello from Flask!</p>"


@app.get("/hello/<name>")
def hello(name):
    return "Hello, %s!" % name


@app.get("/form")
def form_page():
    return FORM_PAGE


@app.post("/form")
def form_post():
    # urlencoded or multipart: both land in request.form
    return {"form": request.form.to_dict(flat=False),
            "content_type": request.content_type}


@app.post("/upload")
def upload():
    f = request.files.get("file")
    if f is None:
        return {"error": "no file"}, 400
    data = f.read()
    return {"filename": f.filename, "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "fields": request.form.to_dict()}


@app.route("/rawupload", methods=["POST", "PUT"])
def rawupload():
    # Body read whole (Content-Length or chunked request bodies).
    data = request.get_data()
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@app.get("/stream")
def stream():
    n = int(request.args.get("n", 10))
    size = int(request.args.get("size", 1024))

    def gen():
        for i in range(n):
            yield (b"%c" % (ord("a") + i % 26)) * size

    # No Content-Length: chunked on HTTP/1.1, close-delimited on HTTP/1.0.
    return Response(stream_with_context(gen()), mimetype="application/octet-stream")


@app.get("/file")
def file_download():
    # send_file uses wsgi.file_wrapper when the server provides one.
    return send_file(_ensure_data_file(), mimetype="application/octet-stream",
                     conditional=False, etag=False)


@app.route("/echo", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def echo():
    body = request.get_data()
    return {
        "method": request.method,
        "path": request.path,
        "query": request.query_string.decode("latin-1"),
        "headers": dict(request.headers.items()),
        "body": body.decode("latin-1"),
    }


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


@app.get("/environ")
def environ():
    return {k: _jsonable(v) for k, v in request.environ.items()}


@app.get("/sleep")
def sleep():
    s = float(request.args.get("s", 1))
    time.sleep(s)
    return "slept %s" % s


@app.get("/error")
def error():
    raise RuntimeError("boom: this error is intentional")


application = app
