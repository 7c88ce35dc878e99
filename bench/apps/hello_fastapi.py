"""FastAPI hello world for `SET=asgi bench/run.sh` (the ASGI anchor app is
/work/shared/bench-anchors/apps/hello_asgi.py; this is the framework case)."""
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

app = FastAPI()


@app.get("/", response_class=PlainTextResponse)
async def index():
    return "Hello, World!"
