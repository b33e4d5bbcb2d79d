"""A WebSocket upstream (the `websockets` library) for rampart's tests.

Usage: ws_upstream.py PORT
Prints "ready" once listening, then one JSON line per accepted handshake (path and the
headers it arrived with). Each connection is greeted at once, before the client says anything
(the "fast answer" that races a proxy's switch to the tunnel), then every message is echoed
back prefixed "echo:", and a "tick N" is pushed every second (except on a path ending in
"/quiet", which only answers).
"""
import asyncio
import json
import logging
import sys

from websockets.asyncio.server import serve


async def handler(ws):
    request = ws.request
    print(json.dumps({"path": request.path,
                      "headers": {k.lower(): v for k, v in request.headers.raw_items()}}),
          flush=True)
    await ws.send("hello")

    async def ticks():
        n = 0
        while True:
            await asyncio.sleep(1)
            n += 1
            await ws.send(f"tick {n}")

    ticker = asyncio.create_task(ticks() if not request.path.endswith("/quiet") else asyncio.sleep(0))
    try:
        async for message in ws:
            await ws.send("echo:" + message)
    finally:
        ticker.cancel()


class HealthCheckConnects(logging.Filter):
    """rampart's TCP health checks connect and close without a request; websockets logs each
    as a failed handshake with its traceback. Those (a connection closed before any request
    byte) are dropped; every other handshake failure is still logged."""

    def filter(self, record):
        cause = record.exc_info[1] if record.exc_info else None
        closed_early = cause is not None and isinstance(cause.__cause__, EOFError)
        return not (record.getMessage() == "opening handshake failed" and closed_early)


async def main():
    logging.getLogger("websockets.server").addFilter(HealthCheckConnects())
    async with serve(handler, "127.0.0.1", int(sys.argv[1]), ping_interval=None):
        print("ready", flush=True)
        await asyncio.Future()


asyncio.run(main())
