"""The example Flask and Django apps, served with 1 and 4 workers."""
import hashlib
import json
import os
import tempfile

import pytest
import requests

from conftest import EXAMPLES, IS_GUNICORN
from helpers import RawConn, chunked

WORKERS = ["1", "4"]
BLOB = os.urandom(3 * 1024 * 1024 + 17)
BLOB_SHA = hashlib.sha256(BLOB).hexdigest()


# Every test runs against each worker kind (conftest's `kind` fixture; each
# server checks that its workers run that kind).
pytestmark = pytest.mark.usefixtures("kind")


@pytest.fixture(scope="module", params=WORKERS, ids=lambda w: "w%s" % w)
def flask_srv(module_server, request, kind):
    s = module_server(["-w", request.param, "app:app"], cwd=os.path.join(EXAMPLES, "flaskapp"))
    assert s.kind == kind or IS_GUNICORN
    return s


@pytest.fixture(scope="module", params=WORKERS, ids=lambda w: "w%s" % w)
def django_srv(module_server, request, kind):
    s = module_server(["-w", request.param, "djangoproj.wsgi:application"],
                      cwd=os.path.join(EXAMPLES, "djangoproj"))
    assert s.kind == kind or IS_GUNICORN
    return s


# -- Flask ---------------------------------------------------------------------

def test_flask_pages(flask_srv):
    r = requests.get(flask_srv.url + "/", timeout=10)
    assert r.status_code == 200
    assert "Hello from Flask!" in r.text
    assert r.headers["Content-Type"].startswith("text/html")
    r = requests.get(flask_srv.url + "/hello/w%C3%B6rld", timeout=10)
    assert r.text == "Hello, w\u00f6rld!"
    r = requests.get(flask_srv.url + "/nope", timeout=10)
    assert r.status_code == 404


def test_flask_form_get_and_post(flask_srv):
    r = requests.get(flask_srv.url + "/form", timeout=10)
    assert "<form" in r.text
    r = requests.post(flask_srv.url + "/form", data={"name": "Ann", "message": "hi there & more"}, timeout=10)
    assert r.json()["form"] == {"name": ["Ann"], "message": ["hi there & more"]}
    assert r.json()["content_type"] == "application/x-www-form-urlencoded"
    r = requests.post(flask_srv.url + "/form", files={"name": (None, "Bob"), "message": (None, "multi")}, timeout=10)
    assert r.json()["form"] == {"name": ["Bob"], "message": ["multi"]}
    assert r.json()["content_type"].startswith("multipart/form-data")


def test_flask_upload(flask_srv):
    r = requests.post(flask_srv.url + "/upload", files={"file": ("blob.bin", BLOB)},
                      data={"note": "x"}, timeout=30)
    assert r.status_code == 200
    assert r.json() == {"filename": "blob.bin", "size": len(BLOB), "sha256": BLOB_SHA, "fields": {"note": "x"}}


def test_flask_upload_chunked(flask_srv):
    def gen():
        for i in range(0, len(BLOB), 65536):
            yield BLOB[i:i + 65536]
    # a generator body makes requests send Transfer-Encoding: chunked
    r = requests.post(flask_srv.url + "/rawupload", data=gen(), timeout=30)
    assert r.status_code == 200
    assert r.json() == {"size": len(BLOB), "sha256": BLOB_SHA}


def test_flask_multipart_upload_chunked(flask_srv):
    boundary = b"xXxBoundaryxXx"
    body = (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c.bin\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + BLOB[:200000] + b"\r\n--" + boundary + b"--\r\n")
    with RawConn(flask_srv.port, timeout=30) as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
               b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n\r\n")
        c.send(chunked(body, sizes=[7, 100, 5000, 65536]))
        r = c.read_response()
    assert r.status == 200, r
    d = json.loads(r.body)
    assert d["size"] == 200000
    assert d["sha256"] == hashlib.sha256(BLOB[:200000]).hexdigest()


def test_flask_stream(flask_srv):
    r = requests.get(flask_srv.url + "/stream?n=30&size=10000", timeout=30)
    assert r.status_code == 200
    assert r.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in r.headers
    assert len(r.content) == 300000
    assert r.content[:10000] == b"a" * 10000 and r.content[-10000:] == b"d" * 10000


def test_flask_file(flask_srv):
    r = requests.get(flask_srv.url + "/file", timeout=30)
    assert r.status_code == 200
    expected = bytes(range(256)) * 1024
    assert r.headers["Content-Length"] == str(len(expected))
    assert r.content == expected


def test_flask_echo(flask_srv):
    r = requests.put(flask_srv.url + "/echo?a=1&b=2", data=b"payload", headers={"X-Test": "yes"}, timeout=10)
    d = r.json()
    assert d["method"] == "PUT"
    assert d["path"] == "/echo"
    assert d["query"] == "a=1&b=2"
    assert d["headers"]["X-Test"] == "yes"
    assert d["body"] == "payload"


def test_flask_environ(flask_srv):
    d = requests.get(flask_srv.url + "/environ", timeout=10).json()
    assert d["REQUEST_METHOD"] == "GET"
    assert d["PATH_INFO"] == "/environ"
    assert d["wsgi.url_scheme"] == "http"


def test_flask_error_is_500(flask_srv):
    r = requests.get(flask_srv.url + "/error", timeout=10)
    assert r.status_code == 500
    # the server is still there
    assert requests.get(flask_srv.url + "/", timeout=10).status_code == 200


def test_flask_sleep(flask_srv):
    r = requests.get(flask_srv.url + "/sleep?s=0.2", timeout=10)
    assert r.text == "slept 0.2"


def test_flask_many_requests(flask_srv):
    with requests.Session() as s:
        for i in range(50):
            assert s.get(flask_srv.url + "/hello/%d" % i, timeout=10).text == "Hello, %d!" % i


def test_flask_concurrent_requests(flask_srv):
    from concurrent.futures import ThreadPoolExecutor

    def one(i):
        return requests.get(flask_srv.url + "/hello/%d" % i, timeout=20).text

    with ThreadPoolExecutor(8) as ex:
        assert list(ex.map(one, range(40))) == ["Hello, %d!" % i for i in range(40)]


# -- Django --------------------------------------------------------------------

def test_django_page(django_srv):
    r = requests.get(django_srv.url + "/", timeout=10)
    assert r.status_code == 200
    assert "Hello from Django!" in r.text
    assert requests.get(django_srv.url + "/missing", timeout=10).status_code == 404


def test_django_form(django_srv):
    assert "<form" in requests.get(django_srv.url + "/form", timeout=10).text
    r = requests.post(django_srv.url + "/form", data={"name": "Zoë", "k": ["1", "2"]}, timeout=10)
    assert r.json()["form"] == {"name": ["Zoë"], "k": ["1", "2"]}


def test_django_upload(django_srv):
    r = requests.post(django_srv.url + "/upload", files={"file": ("d.bin", BLOB)}, data={"f": "v"}, timeout=30)
    assert r.status_code == 200
    assert r.json() == {"filename": "d.bin", "size": len(BLOB), "sha256": BLOB_SHA, "fields": {"f": "v"}}


def test_django_raw_body(django_srv):
    r = requests.post(django_srv.url + "/upload", data=BLOB[:100000],
                      headers={"Content-Type": "application/octet-stream"}, timeout=30)
    assert r.json() == {"size": 100000, "sha256": hashlib.sha256(BLOB[:100000]).hexdigest()}


def test_django_stream(django_srv):
    r = requests.get(django_srv.url + "/stream?n=20&size=5000", timeout=30)
    assert r.status_code == 200
    assert r.headers.get("Transfer-Encoding") == "chunked"
    assert len(r.content) == 100000


def test_django_echo_query(django_srv):
    r = requests.post(django_srv.url + "/echo?x=%20y", data=b"body!", timeout=10)
    assert r.json() == {"method": "POST", "path": "/echo", "query": "x=%20y", "body": "body!"}


# -- the example config ----------------------------------------------------------

def test_example_config(server):
    """examples/gunicorn.conf.py, as scripts/serve-example.sh uses it (bind overridden)."""
    s = server(["-c", os.path.join(EXAMPLES, "gunicorn.conf.py"), "--access-logfile", "-"],
               cwd=tempfile.gettempdir())
    r = requests.get(s.url + "/hello/example", timeout=10)
    assert r.text == "Hello, example!"
    s.wait_log('"GET /hello/example HTTP/1.1" 200')
    if not IS_GUNICORN:
        # ferrocorn's metrics (port from the test's environment, which wins
        # over the config's os.environ.setdefault) with the app's own counter
        m = requests.get("http://127.0.0.1:%d/metrics" % s.metrics_port, timeout=10).text
        assert 'example_pages_served_total{endpoint="hello"} 1.0' in m, m
        assert 'gunicorn_requests_total{method="GET",status="200"}' in m, m


def test_hello_example(server):
    s = server(["hello:app"], cwd=EXAMPLES)
    r = requests.get(s.url + "/", timeout=10)
    assert r.text == "Hello, World!"
    assert r.headers["Content-Length"] == "13"
    s2 = server(["hello"], cwd=EXAMPLES)  # default name: application
    assert requests.get(s2.url + "/", timeout=10).text == "Hello, World!"
