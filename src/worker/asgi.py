"""The Python side of ferrocorn's asgi worker kind.

An asyncio loop (uvloop when asked for or, with --asgi-loop auto, when
installed) runs on the worker's main thread. The connection layer's loop is
one of its readers: when the loop's epoll descriptor is readable (and on a
timer for deadlines and the heartbeat) it calls turn(), which reads, parses
and starts requests. Each request's app coroutine starts at once inside the
turn (see starter); one that finishes without waiting (most do) costs no
Task of its own. One that waits goes on in a Task from where it stopped.

receive() and send() are native (src/worker/asgi.rs). When they must wait
for the socket, they return one of the coroutines below, which wait with the
loop's add_reader/add_writer.
"""

import asyncio
import sys
import types


def new_loop(kind):
    """The event loop for --asgi-loop (auto, asyncio, uvloop)."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise RuntimeError(
                    "--asgi-loop uvloop: uvloop is not installed in the app's "
                    "virtualenv (pip install uvloop)"
                ) from None
        else:
            loop = uvloop.new_event_loop()
            asyncio.set_event_loop(loop)
            return loop
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


@types.coroutine
def _drive(ctx, coro, fut):
    """Goes on with `coro`, which has yielded `fut` to its driver: passes
    each thing it yields up to the Task, and what the Task sends or throws
    back down (a Task's protocol, as `yield from` would), each step in the
    request's own context `ctx`."""
    while True:
        try:
            sent = yield fut
        except BaseException as e:  # noqa: BLE001 - cancellation goes down too
            try:
                fut = ctx.run(coro.throw, e)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            fut = ctx.run(coro.send, sent)
        except StopIteration as stop:
            return stop.value


def starter(loop):
    """What asgi.rs's Starter needs to run each request's first step at once.

    Most requests finish without waiting. Making an asyncio Task for each
    would cost more than the rest of the request (about 15,000 instructions
    on 3.11), so one Task stands by, parked on a future, and is the current
    task while a request's first step runs (anyio and others look it up).
    A request that has to wait is handed to that Task, which goes on with
    it to its end, and a new Task stands by for the next requests. So every
    request that waits has a Task of its own, and the requests that share
    the standing Task run one after the other, never interleaved. Each
    request runs in a copy of the context, as in a Task of its own.

    Returns stand_by() -> (task, handoff), the set of those Tasks (cancelled
    at the end), and asyncio's _enter_task / _leave_task."""
    tasks = set()

    async def carry(handoff):
        try:
            cycle, ctx, coro, fut = await handoff
        except asyncio.CancelledError:
            return  # the worker stops (or an app cancelled its current task)
        try:
            await _drive(ctx, coro, fut)
        except BaseException as e:  # noqa: BLE001 - reported to the server
            cycle.done(e)
        else:
            cycle.done(None)

    def stand_by():
        handoff = loop.create_future()
        # (A name given saves formatting "Task-N" per Task.)
        task = loop.create_task(carry(handoff), name="ferrocorn-request")
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task, handoff

    return stand_by, tasks, asyncio.tasks._enter_task, asyncio.tasks._leave_task


def canceller(loop):
    """cancel_later(task, seconds): --asgi-disconnect-grace-period, the time
    an app has after its client went away before its Task is cancelled."""

    def cancel_later(task, seconds):
        if not task.done():
            loop.call_later(seconds, task.cancel)

    return cancel_later


def waits(loop, timeout):
    """The coroutines receive() and send() return when they must wait."""

    async def ready(cycle, fd, write, timeout=timeout):
        """Waits until `fd` is readable (writable). True when it is; False
        when the request ended meanwhile or after `timeout` seconds. The
        registration is gone before the request's connection goes back to
        the server (cycle.on_finish), so a later owner of the descriptor
        never sees it."""
        fut = loop.create_future()
        registered = [True]

        def unregister():
            if registered[0]:
                registered[0] = False
                if write:
                    loop.remove_writer(fd)
                else:
                    loop.remove_reader(fd)

        def settle(result):
            unregister()
            if not fut.done():
                fut.set_result(result)

        if write:
            loop.add_writer(fd, settle, True)
        else:
            loop.add_reader(fd, settle, True)
        timer = None if timeout is None else loop.call_later(timeout, settle, False)
        cycle.on_finish(settle)
        try:
            return await fut
        finally:
            if timer is not None:
                timer.cancel()
            unregister()
            cycle.off_finish(settle)

    async def receive_body(cycle, fd):
        while True:
            if not await ready(cycle, fd, False):
                return cycle.timed_out_receive()
            msg = cycle.receive_now()
            if msg is not None:
                return msg

    async def receive_disconnect(cycle, fd):
        """The body is all read: the next message is http.disconnect, when
        the client goes away (or the response is done)."""
        while await ready(cycle, fd, False):
            if cycle.peer_gone():
                break
            # The client sent more (a pipelined request): it is still there;
            # wait for the response to end.
            fut = loop.create_future()

            def ended(_ended):
                fut.done() or fut.set_result(None)

            cycle.on_finish(ended)
            try:
                await fut
            finally:
                cycle.off_finish(ended)
            break
        return cycle.disconnect()

    async def send_rest(cycle, fd):
        while not cycle.flush():
            if not await ready(cycle, fd, True):
                cycle.abort("timed out writing the response")
                return

    async def ws_receive(cycle, fd):
        """The next WebSocket message: an idle session waits as long as
        the client keeps it open."""
        while await ready(cycle, fd, False, None):
            msg = cycle.receive_now()
            if msg is not None:
                return msg
        return cycle.disconnect()

    return receive_body, receive_disconnect, send_rest, ws_receive


def run(loop, turn, loop_fd, lifespan, tasks, graceful_timeout):
    """Runs the connection loop's turns on `loop` until the worker is done;
    returns the worker's exit code. Lifespan startup has run (see
    `startup`); shutdown runs here, after the last request."""
    done = loop.create_future()
    # The timer's handle and when it is due (uvloop's handles have no when()).
    timer = [None, 0.0]

    def step():
        if done.done():
            return
        result = turn()
        if type(result) is int:
            loop.remove_reader(loop_fd)
            if timer[0] is not None:
                timer[0].cancel()
            done.set_result(result)
            return
        # `result`: seconds until the loop needs a turn without events
        # (deadlines, the heartbeat).
        due = loop.time() + result
        if timer[0] is None or timer[1] > due + 0.001:
            if timer[0] is not None:
                timer[0].cancel()
            timer[0] = loop.call_at(due, tick)
            timer[1] = due

    def tick():
        timer[0] = None
        step()

    loop.add_reader(loop_fd, step)
    loop.call_soon(step)
    code = loop.run_until_complete(done)
    if lifespan is not None:
        loop.run_until_complete(lifespan.shutdown(graceful_timeout))
    for t in list(tasks):
        t.cancel()
    if tasks:
        loop.run_until_complete(asyncio.wait(list(tasks), timeout=1))
    return code


class Lifespan:
    """The ASGI lifespan protocol for one worker (--asgi-lifespan)."""

    def __init__(self, app, mode, state, log_info, log_error):
        self.app = app
        self.mode = mode
        self.state = state
        self.info = log_info
        self.error = log_error
        self.inbox = asyncio.Queue()
        self.started = None
        self.stopped = None
        self.task = None
        self.failure = None
        self.received = False

    async def _receive(self):
        self.received = True
        return await self.inbox.get()

    async def _send(self, message):
        kind = message.get("type")
        if kind == "lifespan.startup.complete":
            self.started.set_result(None) if not self.started.done() else None
        elif kind == "lifespan.startup.failed":
            self.failure = message.get("message", "") or "lifespan.startup.failed"
            self.started.done() or self.started.set_result(None)
        elif kind == "lifespan.shutdown.complete":
            self.stopped.done() or self.stopped.set_result(None)
        elif kind == "lifespan.shutdown.failed":
            self.error("ASGI lifespan shutdown failed: %s" % (message.get("message", ""),))
            self.stopped.done() or self.stopped.set_result(None)
        else:
            raise RuntimeError("Unexpected ASGI message %r in the lifespan protocol" % (kind,))

    async def _main(self):
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as e:  # noqa: BLE001
            if not self.started.done():
                # Before startup completed: the app does not speak lifespan
                # (auto), or its startup failed.
                self.failure = e
                self.started.set_result(None)
            else:
                self.error("Exception in ASGI lifespan: %r" % (e,))
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
        finally:
            # An app that returns without a word (`if scope["type"] !=
            # "http": return`) has no lifespan to wait for, as uvicorn's.
            if self.started is not None and not self.started.done():
                self.started.set_result(None)
            if self.stopped is not None and not self.stopped.done():
                self.stopped.set_result(None)

    async def startup(self):
        """None when the app is started (or does not use lifespan in auto
        mode); else the error message that stops the server."""
        loop = asyncio.get_running_loop()
        self.started = loop.create_future()
        self.stopped = loop.create_future()
        self.inbox.put_nowait({"type": "lifespan.startup"})
        self.task = loop.create_task(self._main())
        await self.started
        if self.failure is None:
            return None
        if isinstance(self.failure, str):
            return "ASGI lifespan startup failed: %s" % (self.failure,)
        # auto: an app that raises without asking for the startup message
        # does not speak lifespan; one that took it and then raised failed
        # its startup.
        if self.mode == "auto" and not self.received:
            self.info("ASGI 'lifespan' protocol appears unsupported: %r" % (self.failure,))
            self.task = None
            return None
        import traceback

        return "ASGI lifespan startup failed:\n" + "".join(
            traceback.format_exception(type(self.failure), self.failure, self.failure.__traceback__)
        )

    async def shutdown(self, timeout):
        if self.task is None or self.task.done():
            return
        self.inbox.put_nowait({"type": "lifespan.shutdown"})
        try:
            await asyncio.wait_for(asyncio.shield(self.stopped), timeout)
        except asyncio.TimeoutError:
            self.error("ASGI lifespan shutdown did not complete in %ss" % (timeout,))
            self.task.cancel()


def startup(loop, app, mode, state, log_info, log_error):
    """Runs lifespan startup (unless --asgi-lifespan off): (lifespan or
    None, error message or None)."""
    if mode == "off":
        return None, None
    ls = Lifespan(app, mode, state, log_info, log_error)
    err = loop.run_until_complete(ls.startup())
    if err is not None:
        return None, err
    return (ls if ls.task is not None else None), None


def tornado_app(app):
    """The tornado kind: an ASGI app that serves a tornado.web.Application
    (any tornado HTTPServerConnectionDelegate), or a WSGI app through
    tornado's WSGIContainer, as gunicorn's tornado worker serves them.
    Tornado runs on the worker's asyncio loop (tornado 6 IOLoops are
    asyncio loops); each request is fed to the app's delegate as tornado's
    HTTPServer would, and its HTTPConnection writes go out as ASGI sends.
    A WebSocketHandler gets a WebSocketProtocol that speaks ASGI websocket
    messages (AsgiWebSocket): the server does the framing."""
    import tornado.web
    import tornado.websocket as tws
    from tornado import escape, httputil
    from tornado.httpserver import _CallableAdapter
    from tornado.wsgi import WSGIContainer

    if not isinstance(app, (WSGIContainer, tornado.web.Application)) and not isinstance(
        app, httputil.HTTPServerConnectionDelegate
    ):
        app = WSGIContainer(app)
    if isinstance(app, httputil.HTTPServerConnectionDelegate):

        def delegate_for(conn):
            return app.start_request(None, conn)

    else:

        def delegate_for(conn):
            return _CallableAdapter(app, conn)

    class Context:
        def __init__(self, scope):
            client = scope.get("client")
            self.remote_ip = client[0] if client else "127.0.0.1"
            self.address = tuple(client) if client else ("127.0.0.1", 0)
            self.protocol = "https" if scope.get("scheme") in ("https", "wss") else "http"
            self.trusted_downstream = set()

        def __str__(self):
            return self.remote_ip

    class Connection(httputil.HTTPConnection):
        def __init__(self, context, ws=None):
            self.context = context
            self.out = asyncio.Queue()
            self.close_callback = None
            # A websocket scope: (receive, send, the session's end).
            self.ws = ws

        def set_close_callback(self, callback):
            self.close_callback = callback

        def _push(self, message):
            sent = asyncio.get_running_loop().create_future()
            self.out.put_nowait((message, sent))
            return sent

        def write_headers(self, start_line, headers, chunk=None):
            if self.ws is not None:
                return self._ws_answer(start_line.code)
            sent = self._push({
                "type": "http.response.start",
                "status": start_line.code,
                "headers": [(k.lower().encode("latin-1"), v.encode("latin-1"))
                            for k, v in headers.get_all()],
            })
            if chunk:
                sent = self.write(chunk)
            return sent

        @staticmethod
        def _done():
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

        def _ws_answer(self, code):
            """A handler's response on a websocket scope: the 101 of an
            accepted session (AsgiWebSocket sent websocket.accept), or a
            refusal (400, 403, 404, ...): websocket.close before the
            handshake, which the client sees as a 403."""
            if code != 101:
                receive, send, end = self.ws
                if not end.done():
                    end.set_result(send({"type": "websocket.close"}))
            return self._done()

        def write(self, chunk):
            if self.ws is not None:
                # No body goes out on a websocket scope.
                return self._done()
            return self._push({"type": "http.response.body", "body": bytes(chunk), "more_body": True})

        def finish(self):
            if self.ws is None:
                self._push({"type": "http.response.body", "body": b"", "more_body": False})

        def detach(self):
            # WebSocketHandler._detach_stream(): AsgiWebSocket needs no stream.
            return None

    class AsgiWebSocket(tws.WebSocketProtocol):
        """tornado's WebSocketProtocol over ASGI websocket messages: the
        server frames, answers pings and compresses; the handler's open,
        on_message, write_message, close and on_close keep their meaning.
        Handler pings (ping(), ping_interval) are not sent: the server
        answers the client's pings and sees a dead peer itself."""

        def __init__(self, handler, conn):
            super().__init__(handler)
            self.conn = conn
            self._subprotocol = None
            self._closed = False
            self._last = None

        @property
        def selected_subprotocol(self):
            return self._subprotocol

        def _send(self, message):
            """Sends in the order called, whether or not the caller awaits."""
            receive, send, end = self.conn.ws
            prev = self._last

            async def in_order():
                if prev is not None:
                    try:
                        await prev
                    except Exception:
                        pass
                await send(message)

            fut = self._last = asyncio.ensure_future(in_order())
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            return fut

        async def accept_connection(self, handler):
            receive, send, end = self.conn.ws
            try:
                offered = [p.strip() for p in
                           handler.request.headers.get("Sec-WebSocket-Protocol", "").split(",")
                           if p.strip()]
                if offered:
                    self._subprotocol = handler.select_subprotocol(offered)
                    if self._subprotocol is not None and self._subprotocol not in offered:
                        raise ValueError("select_subprotocol returned %r, not one offered"
                                         % self._subprotocol)
                await send({"type": "websocket.accept", "subprotocol": self._subprotocol})
                handler.set_status(101)
                handler.finish()
                handler._detach_stream()
                try:
                    opened = handler.open(*handler.open_args, **handler.open_kwargs)
                    if opened is not None:
                        await opened
                except Exception:
                    handler.log_exception(*sys.exc_info())
                    self._abort()
                    return
                while True:
                    m = await receive()
                    if m["type"] == "websocket.disconnect":
                        self._closed = True
                        handler.on_ws_connection_close(m.get("code"), m.get("reason") or None)
                        return
                    data = m.get("text")
                    if data is None:
                        data = m.get("bytes")
                    handled = self._run_callback(handler.on_message, data)
                    if handled is not None:
                        await handled
            finally:
                if not end.done():
                    end.set_result(None)

        def write_message(self, message, binary=False):
            if self._closed:
                raise tws.WebSocketClosedError()
            if isinstance(message, dict):
                message = escape.json_encode(message)
            if binary:
                if isinstance(message, str):
                    message = message.encode("utf-8")
                return self._send({"type": "websocket.send", "bytes": bytes(message)})
            if not isinstance(message, str):
                message = bytes(message).decode("utf-8")
            return self._send({"type": "websocket.send", "text": message})

        def close(self, code=None, reason=None):
            if not self._closed:
                self._closed = True
                self._send({"type": "websocket.close", "code": code or 1000,
                            "reason": reason or ""})

        def is_closing(self):
            return self._closed

        def write_ping(self, data):
            pass

        def start_pinging(self):
            pass

        def set_nodelay(self, x):
            pass

        def _process_server_headers(self, key, headers):
            raise NotImplementedError("client side only")

        async def _receive_frame_loop(self):
            raise NotImplementedError("the server reads the frames")

    original_protocol = tws.WebSocketHandler.get_websocket_protocol

    def get_websocket_protocol(handler):
        conn = handler.request.connection
        if isinstance(conn, Connection):
            # An Upgrade request the server did not take as a WebSocket
            # handshake (no key, HTTP/1.0): tornado's 426.
            return AsgiWebSocket(handler, conn) if conn.ws is not None else None
        return original_protocol(handler)

    tws.WebSocketHandler.get_websocket_protocol = get_websocket_protocol

    def request_of(scope, method, version):
        headers = httputil.HTTPHeaders()
        for name, value in scope["headers"]:
            headers.add(name.decode("latin-1"), value.decode("latin-1"))
        uri = scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            uri += "?" + scope["query_string"].decode("latin-1")
        return httputil.RequestStartLine(method, uri, version), headers

    async def websocket(scope, receive, send):
        if (await receive())["type"] != "websocket.connect":
            return
        start, headers = request_of(scope, "GET", "HTTP/1.1")
        end = asyncio.get_running_loop().create_future()
        conn = Connection(Context(scope), ws=(receive, send, end))
        delegate = delegate_for(conn)
        pending = delegate.headers_received(start, headers)
        if pending is not None:
            await pending
        delegate.finish()
        # Until the session ends (or the handler refused it).
        refused = await end
        if refused is not None:
            await refused

    async def asgi(scope, receive, send):
        if scope["type"] == "websocket":
            return await websocket(scope, receive, send)
        if scope["type"] != "http":
            raise RuntimeError("the tornado worker serves HTTP only (scope type %r)" % scope["type"])
        start, headers = request_of(scope, scope["method"], "HTTP/" + scope["http_version"])
        conn = Connection(Context(scope))
        delegate = delegate_for(conn)
        pending = delegate.headers_received(start, headers)
        if pending is not None:
            await pending
        while True:
            m = await receive()
            if m["type"] == "http.disconnect":
                if conn.close_callback is not None:
                    conn.close_callback()
                delegate.on_connection_close()
                return
            if m.get("body"):
                pending = delegate.data_received(m["body"])
                if pending is not None:
                    await pending
            if not m.get("more_body"):
                break
        delegate.finish()
        while True:
            message, sent = await conn.out.get()
            await send(message)
            if not sent.done():
                sent.set_result(None)
            if message["type"] == "http.response.body" and not message["more_body"]:
                return

    return asgi
