"""A module inside a package: pkg.sub.mod:wsgi."""


def wsgi(environ, start_response):
    body = b"from pkg.sub.mod"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
