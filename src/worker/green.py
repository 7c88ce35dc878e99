"""The Python side of ferrocorn's gevent and eventlet worker kinds.

The connection layer's loop runs on its own OS thread and hands complete
requests over through a queue and an eventfd; here, on the main thread, the
library's hub runs one greenlet per request. Everything that waits (the
eventfd here, a request's socket in the connection layer) waits through the
hub, so the app's blocking calls, patched by the library, yield to the other
requests.
"""


def patch(lib):
    """Monkey-patches the standard library before the app is imported, as
    gunicorn's gevent and eventlet workers do."""
    if lib == "gevent":
        from gevent import monkey

        monkey.patch_all()
    else:
        import eventlet

        eventlet.monkey_patch()


def waits(lib):
    """(wait_read, wait_write): each takes (fd, timeout in seconds), returns
    once the descriptor is ready, raises TimeoutError after the timeout."""
    if lib == "gevent":
        from gevent.socket import wait_read, wait_write

        def read(fd, timeout):
            wait_read(fd, timeout, TimeoutError("timed out"))

        def write(fd, timeout):
            wait_write(fd, timeout, TimeoutError("timed out"))

    else:
        from eventlet.hubs import trampoline

        def read(fd, timeout):
            trampoline(fd, read=True, timeout=timeout, timeout_exc=TimeoutError)

        def write(fd, timeout):
            trampoline(fd, write=True, timeout=timeout, timeout_exc=TimeoutError)

    return read, write


def run(lib, take, wake_fd, beat):
    """Serves until the loop is done: `take()` returns the requests handed
    over since the last call (callables), or None once the loop has ended.
    `beat()` tells the master the worker is alive: a greenlet calls it every
    second, so an app that blocks the hub misses --timeout."""
    read, _ = waits(lib)
    if lib == "gevent":
        from gevent import sleep, spawn_raw as spawn
    else:
        from eventlet import sleep, spawn_n as spawn

    def heartbeat():
        while True:
            beat()
            sleep(1.0)

    spawn(heartbeat)
    while True:
        read(wake_fd, None)
        jobs = take()
        if jobs is None:
            return
        for job in jobs:
            spawn(job)
