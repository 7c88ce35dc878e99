"""A gunicorn.conf.py defining every gunicorn 27 server hook (but ssl_context).

Each call appends one JSON line to the file named by $LC_HOOK_LOG: the hook
name, the calling process (pid, ppid) and what the hook received (types and
key attributes). One os.write() per line on an O_APPEND descriptor, so the
lines of the master and of every worker land whole and in call order.

$LC_HOOK_RAISE selects hooks that raise after recording their call
(comma-separated names; "pre_request" raises only for paths starting with
/boom). Used by tests/test_hooks.py and tests/test_signals.py.
"""
import json
import os

workers = 2


def _record(hook, **data):
    data["hook"] = hook
    data["pid"] = os.getpid()
    data["ppid"] = os.getppid()
    line = (json.dumps(data, sort_keys=True, default=repr) + "\n").encode("utf-8")
    fd = os.open(os.environ["LC_HOOK_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _raises(hook):
    return hook in os.environ.get("LC_HOOK_RAISE", "").split(",")


def _server(server):
    return {
        "type": type(server).__name__,
        "pid": getattr(server, "pid", None),
        "num_workers": getattr(server, "num_workers", None),
        "cfg_workers": server.cfg.workers,
        "worker_pids": sorted(getattr(server, "WORKERS", {}) or {}),
    }


def _worker(worker):
    pid = worker.pid
    return {
        "type": type(worker).__name__,
        "pid": pid if isinstance(pid, int) else repr(pid),
        "ppid": worker.ppid,
        "age": worker.age,
        "nr": worker.nr,
        "booted": worker.booted,
        "aborted": worker.aborted,
        "cfg_timeout": worker.cfg.timeout,
    }


def _req(req):
    return {
        "type": type(req).__name__,
        "method": req.method,
        "path": req.path,
        "query": req.query,
        "uri": req.uri,
        "version": list(req.version),
        "headers": [list(h) for h in req.headers],
    }


def on_starting(server):
    _record("on_starting", server=_server(server))


def on_reload(server):
    _record("on_reload", server=_server(server))


def when_ready(server):
    _record("when_ready", server=_server(server))


def pre_fork(server, worker):
    _record("pre_fork", server=_server(server), worker=_worker(worker))


def post_fork(server, worker):
    _record("post_fork", server=_server(server), worker=_worker(worker))


def post_worker_init(worker):
    _record("post_worker_init", worker=_worker(worker),
            wsgi_callable=callable(worker.wsgi))


def worker_int(worker):
    _record("worker_int", worker=_worker(worker))


def worker_abort(worker):
    _record("worker_abort", worker=_worker(worker))


def pre_exec(server):
    _record("pre_exec", server=_server(server))


def pre_request(worker, req):
    _record("pre_request", worker=_worker(worker), req=_req(req))
    if _raises("pre_request") and req.path.startswith("/boom"):
        raise RuntimeError("lc_hooks: pre_request raising for %s" % req.path)


def post_request(worker, req, environ, resp):
    _record("post_request", worker=_worker(worker), req=_req(req),
            environ_type=type(environ).__name__,
            environ={k: environ[k] for k in ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING",
                                             "SERVER_PROTOCOL", "HTTP_X_LC") if k in environ},
            environ_has_input="wsgi.input" in environ,
            resp=None if resp is None else {
                "type": type(resp).__name__,
                "status": resp.status,
                "status_code": getattr(resp, "status_code", None),
                "headers": [list(h) for h in (resp.headers or [])],
                "response_length": resp.response_length,
            })
    if _raises("post_request"):
        raise RuntimeError("lc_hooks: post_request raising")


def child_exit(server, worker):
    _record("child_exit", server=_server(server), worker=_worker(worker))


def worker_exit(server, worker):
    _record("worker_exit", server=_server(server), worker=_worker(worker))


def nworkers_changed(server, new_value, old_value):
    _record("nworkers_changed", server=_server(server), new=new_value, old=old_value)


def on_exit(server):
    _record("on_exit", server=_server(server))
