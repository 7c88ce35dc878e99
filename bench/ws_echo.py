#!/usr/bin/env python3
"""WebSocket echo messages/s: ferrocorn -k asgi against granian --interface
asgi, the same app (bench/apps/ws_echo.py) and the same client, interleaved.

    /tmp/bench-venv/bin/python bench/ws_echo.py [--conns 50] [--seconds 10] [--runs 3]

The client (asyncio + websockets, in this process) keeps `conns`
connections, each sending a 32-byte text message and waiting for its echo,
for `seconds`; it reports messages echoed per second. The client shares the
2-core machine, so above some rate it paces both servers alike: read the
ratio with the client's CPU in mind (printed)."""
import argparse
import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def servers(port):
    ferro = os.environ.get("FERROCORN_BIN", os.path.join(ROOT, "target/release/ferrocorn"))
    venv = os.environ.get("FERRO_VENV", os.path.join(ROOT, ".venv"))
    granian = os.path.join(os.path.dirname(sys.executable), "granian")
    return {
        "ferrocorn -k asgi": ([ferro, "-k", "asgi", "-w", "1", "-b", "127.0.0.1:%d" % port,
                               "--no-metrics", "ws_echo:app"], dict(os.environ, VIRTUAL_ENV=venv)),
        "granian --interface asgi": ([granian, "--interface", "asgi", "--workers", "1", "--host", "127.0.0.1",
                                      "--port", str(port), "--log-level", "warning", "ws_echo:app"], dict(os.environ)),
    }


async def load(port, conns, seconds):
    from websockets.asyncio.client import connect
    count = 0
    stop = time.monotonic() + seconds

    async def one():
        nonlocal count
        async with connect("ws://127.0.0.1:%d/" % port, compression=None) as ws:
            msg = "x" * 32
            while time.monotonic() < stop:
                await ws.send(msg)
                await ws.recv()
                count += 1

    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(conns)))
    return count / (time.monotonic() - t0)


def wait_port(port, proc, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("server exited with %s" % proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("server did not listen")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    results = {}
    for run in range(a.runs):
        names = list(servers(0))
        if run % 2:
            names.reverse()
        for name in names:
            port = free_port()
            cmd, env = servers(port)[name]
            proc = subprocess.Popen(cmd, cwd=os.path.join(HERE, "apps"), env=env, start_new_session=True,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_port(port, proc)
                asyncio.run(load(port, 5, 1))          # warm-up
                c0 = resource.getrusage(resource.RUSAGE_SELF)
                rate = asyncio.run(load(port, a.conns, a.seconds))
                c1 = resource.getrusage(resource.RUSAGE_SELF)
                client_cpu = (c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime) / a.seconds * 100
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)
            results.setdefault(name, []).append(rate)
            print("run %d  %-26s %9.0f msg/s   client CPU %3.0f%%" % (run + 1, name, rate, client_cpu), flush=True)
    med = {n: sorted(v)[len(v) // 2] for n, v in results.items()}
    f, g = med["ferrocorn -k asgi"], med["granian --interface asgi"]
    print("median: ferrocorn %.0f msg/s, granian %.0f msg/s, ratio %.2f" % (f, g, f / g))


if __name__ == "__main__":
    main()
