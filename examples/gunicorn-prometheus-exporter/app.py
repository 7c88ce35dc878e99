"""The small WSGI app every example here serves: `app:app`."""


def app(environ, start_response):
    body = b"Hello from an app served with gunicorn-prometheus-exporter's config\n"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
