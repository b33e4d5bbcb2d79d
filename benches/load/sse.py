#!/usr/bin/env python3
"""Server-sent event streams for the load run: an upstream that answers every request with a
slow stream, and a client that holds many streams open through a proxy and times their events.

  sse.py serve PORT EVENTS INTERVAL
      Answers each request (any path, body read by Content-Length) with `text/event-stream`:
      EVENTS chat-completion chunks, one every INTERVAL seconds, then `data: [DONE]`. One
      timer writes the due event to every open stream, so the upstream's own cost stays small.

  sse.py stream PORT COUNT REQUEST_FILE
      Opens COUNT connections, sends REQUEST_FILE's bytes on each, and reads the streams to
      their end. Prints JSON: streams completed, events seen, and the longest gap between two
      events of one stream (a stall), in milliseconds.
"""

import asyncio
import json
import sys
import time

CHUNK = ('data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","model":"gpt-4o-mini",'
         '"choices":[{"index":0,"delta":{"content":"token "},"finish_reason":null}]}\n\n')


def chunked(text):
    data = text.encode()
    return b"%x\r\n%s\r\n" % (len(data), data)


async def serve(port, events, interval):
    pending = {}

    async def handle(reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
        except (asyncio.IncompleteReadError, ValueError, ConnectionError):
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                     b"X-Accel-Buffering: no\r\nTransfer-Encoding: chunked\r\n\r\n")
        stream = [writer, 0]
        pending[id(stream)] = stream

    async def tick():
        while True:
            await asyncio.sleep(interval)
            for key, stream in list(pending.items()):
                writer = stream[0]
                if writer.is_closing():
                    pending.pop(key)
                    continue
                stream[1] += 1
                if stream[1] <= events:
                    writer.write(chunked(CHUNK))
                else:
                    writer.write(chunked("data: [DONE]\n\n") + b"0\r\n\r\n")
                    pending.pop(key)

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    asyncio.get_running_loop().create_task(tick())
    async with server:
        await server.serve_forever()


class Stream(asyncio.Protocol):
    def __init__(self, request, done):
        self.request, self.done = request, done
        self.events, self.last, self.gap, self.buffer = 0, None, 0.0, b""

    def connection_made(self, transport):
        transport.write(self.request)

    def data_received(self, data):
        now = time.monotonic()
        self.buffer = (self.buffer + data)[-64:]
        n = data.count(b"data: ")
        if n:
            # The wait for the first event is the request's way through; stalls come after.
            if self.last is not None:
                self.gap = max(self.gap, now - self.last)
            self.last = now
            self.events += n
        if b"[DONE]" in data or b"[DONE]" in self.buffer:
            if not self.done.done():
                self.done.set_result(True)

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(False)


async def stream(port, count, request):
    loop = asyncio.get_running_loop()
    streams, waits = [], []
    for _ in range(count):
        done = loop.create_future()
        proto = Stream(request, done)
        await loop.create_connection(lambda p=proto: p, "127.0.0.1", port)
        streams.append(proto)
        waits.append(done)
    results = await asyncio.gather(*waits)
    print(json.dumps({
        "completed": sum(1 for r in results if r),
        "events": sum(s.events for s in streams),
        "max_gap_ms": round(max(s.gap for s in streams) * 1000, 1),
    }))


def main():
    if sys.argv[1] == "serve":
        asyncio.run(serve(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
    else:
        with open(sys.argv[4], "rb") as f:
            request = f.read()
        asyncio.run(stream(int(sys.argv[2]), int(sys.argv[3]), request))


if __name__ == "__main__":
    main()
