"""A tornado.web.Application for the tornado worker kind (tests/test_asgi.py)."""
import asyncio
import json
import os
import threading

import tornado.ioloop
import tornado.web
import tornado.websocket


class Kind(tornado.web.RequestHandler):
    def get(self):
        loop = asyncio.get_running_loop()
        self.write({
            "pid": os.getpid(),
            "main_thread": threading.current_thread() is threading.main_thread(),
            "loop": type(loop).__module__ + "." + type(loop).__name__,
            "ioloop_wraps_it": tornado.ioloop.IOLoop.current().asyncio_loop is loop,
            "remote_ip": self.request.remote_ip,
            "protocol": self.request.protocol,
            "host": self.request.host,
        })


class Hello(tornado.web.RequestHandler):
    def get(self):
        self.write("Hello from Tornado")


class Echo(tornado.web.RequestHandler):
    def post(self):
        self.set_header("X-Arg", self.get_argument("a", ""))
        self.write(self.request.body)


class Stream(tornado.web.RequestHandler):
    async def get(self):
        for i in range(int(self.get_argument("n", "3"))):
            self.write("part %d\n" % i)
            await self.flush()
            await asyncio.sleep(0.001)


class Sleep(tornado.web.RequestHandler):
    async def get(self):
        await asyncio.sleep(float(self.get_argument("s", "0.1")))
        self.write(json.dumps({"slept": True}))


class Missing(tornado.web.RequestHandler):
    def get(self):
        raise tornado.web.HTTPError(418)


CLOSES = []


class Echo2(tornado.websocket.WebSocketHandler):
    def select_subprotocol(self, subprotocols):
        return "chat" if "chat" in subprotocols else None

    def check_origin(self, origin):
        return "evil" not in origin

    async def open(self, room="lobby"):
        self.room = room
        await asyncio.sleep(0)
        self.write_message({"room": room, "subprotocol": self.selected_subprotocol})

    async def on_message(self, message):
        if message == "bye":
            self.close(4001, "bye now")
        elif isinstance(message, bytes):
            await self.write_message(message[::-1], binary=True)
        else:
            self.write_message("%s:%s" % (self.room, message))

    def on_close(self):
        CLOSES.append([self.room, self.close_code, self.close_reason])


class Closes(tornado.web.RequestHandler):
    def get(self):
        self.write({"closes": CLOSES})


app = tornado.web.Application([
    (r"/ws", Echo2), (r"/ws/(\w+)", Echo2), (r"/closes", Closes),
    (r"/", Hello), (r"/kind", Kind), (r"/echo", Echo), (r"/stream", Stream),
    (r"/sleep", Sleep), (r"/teapot", Missing),
])
