"""A FastAPI example for the asgi worker kind:

    ferrocorn -k asgi app:app                 (run from examples/fastapiapp)
    ferrocorn -k uvicorn.workers.UvicornWorker app:app

Lifespan startup/shutdown are recorded in $LIFESPAN_EVENTS when it is set
(the tests read it); /items is JSON in and out, /stream a streamed
response, /background answers first and then runs a background task.
"""
import asyncio
import os
from contextlib import asynccontextmanager

from fastapi import BackgroundTasks, FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

DONE = []
CLOSES = []


def record(event):
    path = os.environ.get("LIFESPAN_EVENTS")
    if path:
        with open(path, "a") as f:
            f.write("%s %d\n" % (event, os.getpid()))


@asynccontextmanager
async def lifespan(app):
    record("startup")
    yield {"started_by": os.getpid()}
    record("shutdown")


app = FastAPI(lifespan=lifespan)


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


@app.get("/")
async def index():
    return {"hello": "world"}


@app.get("/state")
async def state(request: Request):
    return {"started_by": request.state.started_by, "pid": os.getpid()}


@app.post("/items")
async def create(item: Item):
    return {"item": item.model_dump(), "total": item.price * 2}


@app.get("/stream")
async def stream(n: int = 5):
    async def gen():
        for i in range(n):
            yield "line %d\n" % i
            await asyncio.sleep(0.001)

    return StreamingResponse(gen(), media_type="text/plain")


@app.get("/background")
async def background(tasks: BackgroundTasks, tag: str = "x"):
    async def later():
        await asyncio.sleep(0.05)
        DONE.append(tag)

    tasks.add_task(later)
    return {"queued": tag}


@app.get("/done")
async def done():
    return {"done": DONE}


@app.get("/sleep")
async def sleep(s: float = 0.1):
    await asyncio.sleep(s)
    return {"slept": s}


@app.websocket("/ws")
async def ws_echo(websocket: WebSocket):
    """Echoes text and bytes; "close:<code>" makes the server close."""
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=offered[0] if offered else None)
    try:
        while True:
            msg = await websocket.receive()
            if msg["type"] == "websocket.disconnect":
                CLOSES.append(msg.get("code"))
                return
            if msg.get("text") is not None:
                if msg["text"].startswith("close:"):
                    await websocket.close(code=int(msg["text"][6:]))
                    return
                await websocket.send_text("echo:" + msg["text"])
            else:
                await websocket.send_bytes(msg["bytes"][::-1])
    except WebSocketDisconnect as e:
        CLOSES.append(e.code)


@app.get("/ws-closes")
async def ws_closes():
    return {"closes": CLOSES}
