"""APP_MODULE forms: module:factory(args) and the default name `application`."""


def make_app(greeting="default", times=1):
    body = (("%s" % greeting) * times).encode()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    return app


def application(environ, start_response):
    body = b"default application"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
