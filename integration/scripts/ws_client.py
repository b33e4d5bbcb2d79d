"""A WebSocket client (the `websockets` library) for rampart's tests.

Usage: ws_client.py URL SECONDS [HEADER=VALUE ...]
Connects, expects the upstream's greeting first, then sends one message a second for
SECONDS seconds, each answered by its echo, while the upstream's ticks arrive in between.
With SECONDS 0 it says nothing at all and reports after how long the connection was closed
(at most 20 s). Prints one JSON line: what happened ("ok", "closed", or the handshake's
refusal status), the greeting, echoes and ticks received, and `closed_after_s`.
"""
import asyncio
import json
import sys
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus


async def main():
    url, seconds = sys.argv[1], int(sys.argv[2])
    headers = [tuple(h.split("=", 1)) for h in sys.argv[3:]]
    result = {"outcome": "ok", "greeting": None, "echoes": 0, "ticks": 0}
    try:
        async with connect(url, additional_headers=headers, ping_interval=None,
                           open_timeout=10) as ws:
            result["greeting"] = await asyncio.wait_for(ws.recv(), 5)
            if seconds == 0:
                opened = time.monotonic()
                try:
                    while time.monotonic() - opened < 20:
                        if (await asyncio.wait_for(ws.recv(), 20)).startswith("tick"):
                            result["ticks"] += 1
                except ConnectionClosed:
                    result["outcome"] = "closed"
                result["closed_after_s"] = round(time.monotonic() - opened, 1)
            for i in range(seconds):
                await ws.send(f"message {i}")
                while True:
                    got = await asyncio.wait_for(ws.recv(), 5)
                    if got.startswith("tick"):
                        result["ticks"] += 1
                        continue
                    if got != f"echo:message {i}":
                        raise RuntimeError(f"unexpected {got!r}")
                    result["echoes"] += 1
                    break
                await asyncio.sleep(1)
    except InvalidStatus as e:
        result["outcome"] = f"refused {e.response.status_code}"
    except Exception as e:  # the tunnel torn down, a timeout: reported, not raised
        result["outcome"] = f"failed: {type(e).__name__}: {e}"
    print(json.dumps(result), flush=True)


asyncio.run(main())
