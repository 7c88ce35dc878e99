"""A Starlette app for tests/test_asgi.py: routing, lifespan state, a
streamed response, a request body, and a disconnect-aware stream."""
import asyncio
import os
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocketDisconnect


@asynccontextmanager
async def lifespan(app):
    path = os.environ.get("LIFESPAN_EVENTS")
    if path:
        with open(path, "a") as f:
            f.write("startup %d\n" % os.getpid())
    yield {"greeting": "hello"}
    if path:
        with open(path, "a") as f:
            f.write("shutdown %d\n" % os.getpid())


async def index(request):
    return PlainTextResponse("%s from Starlette" % request.state.greeting)


async def echo(request):
    body = await request.body()
    return JSONResponse({"len": len(body), "head": body[:20].decode("latin-1"),
                         "path": request.url.path, "query": dict(request.query_params)})


async def stream(request):
    async def gen():
        for i in range(int(request.query_params.get("n", "3"))):
            yield b"part %d\n" % i
            await asyncio.sleep(0)

    return StreamingResponse(gen(), media_type="text/plain")


async def ws_echo(websocket):
    await websocket.accept()
    try:
        while True:
            text = await websocket.receive_text()
            await websocket.send_text(text.upper())
    except WebSocketDisconnect:
        pass


app = Starlette(routes=[Route("/", index), Route("/echo", echo, methods=["POST"]),
                        Route("/stream", stream), WebSocketRoute("/ws", ws_echo)], lifespan=lifespan)
