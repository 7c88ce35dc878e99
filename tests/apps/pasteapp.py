"""A PasteDeploy app factory (tests/apps/paste/app.ini): the app answers with
the configuration PasteDeploy gave it, as JSON."""
import json


def make_app(global_conf, **local_conf):
    conf = {"global": dict(global_conf), "local": dict(local_conf)}

    def app(environ, start_response):
        body = json.dumps(conf, sort_keys=True).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    return app
