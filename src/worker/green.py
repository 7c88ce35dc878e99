"""The Python side of ferrocorn's gevent and eventlet worker kinds.

The library's hub runs the connection layer's loop (its turns, when the
loop's epoll descriptor is readable) and one greenlet per request, started
by the turn that read it. A request's socket waits go through the hub, so
the app's blocking calls, patched by the library, yield to the other
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


def starter(lib, keep=256):
    """start(job): runs `job` at once in a greenlet whose parent is the hub,
    as the library's own greenlets: when the job waits, the hub gets control
    back here; when it ends, too. Greenlets are reused (up to `keep` idle
    ones): a new greenlet costs CPython a fresh frame stack (an mmap and a
    munmap per request)."""
    from greenlet import getcurrent, greenlet

    if lib == "gevent":
        from gevent.hub import get_hub

        hub = get_hub()
    else:
        from eventlet.hubs import get_hub

        hub = get_hub().greenlet
    idle = []

    def serve(job):
        while True:
            job()
            job = None
            if len(idle) >= keep:
                return
            idle.append(getcurrent())
            # Back to the hub until start() hands over the next job.
            job = hub.switch()

    def start(job):
        if idle:
            idle.pop().switch(job)
        else:
            greenlet(serve, parent=hub).switch(job)

    return start


def run(lib, turn, loop_fd):
    """Runs the connection loop's turns in the hub until the worker is done:
    when its epoll descriptor `loop_fd` is readable, and every 50 ms for
    its deadlines and heartbeat. Returns the worker's exit code."""
    if lib == "gevent":
        from gevent.event import AsyncResult
        from gevent.hub import get_hub

        loop = get_hub().loop
        done = AsyncResult()
        io = loop.io(loop_fd, 1)
        timer = loop.timer(0.05, 0.05)

        def step():
            code = turn()
            if code is not None and not done.ready():
                io.stop()
                timer.stop()
                done.set(code)

        io.start(step)
        timer.start(step)
        return done.get()

    from eventlet.event import Event
    from eventlet.hubs import get_hub

    hub = get_hub()
    done = Event()
    state = {}

    def step(*_):
        if done.ready():
            return
        code = turn()
        if code is not None:
            hub.remove(state["listener"])
            done.send(code)

    def tick():
        step()
        if not done.ready():
            hub.schedule_call_global(0.05, tick)

    noop = lambda *_: None  # noqa: E731
    state["listener"] = hub.add(hub.READ, loop_fd, step, noop, noop)
    hub.schedule_call_global(0.05, tick)
    return done.wait()
