"""Time to the first streamed content chunk, directly and through rampart, alternating.

Usage: first_chunk.py DIRECT_BASE_URL VIA_BASE_URL ORIGIN_SECRET N
Prints one JSON line with the p50 and p90 of N calls each, in milliseconds (two warm-up
calls each are left out).
"""
import json
import statistics
import sys
import time

import openai

direct, via, origin, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])


def client(base_url):
    return openai.OpenAI(
        base_url=base_url,
        api_key="sk-client-key",
        default_headers={"X-Origin-Verify": origin},
        max_retries=0,
        timeout=20,
    )


clients = {"direct": client(direct), "via": client(via)}
times = {"direct": [], "via": []}
messages = [{"role": "user", "content": "Say hello to the gateway."}]
for i in range(n + 2):
    order = ("direct", "via") if i % 2 == 0 else ("via", "direct")
    for name in order:
        start = time.perf_counter()
        first = None
        stream = clients[name].chat.completions.create(
            model="gpt-4o-mini", messages=messages, stream=True
        )
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - start
        if i >= 2 and first is not None:
            times[name].append(first * 1000)


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


print(json.dumps({
    "n": len(times["via"]),
    "direct_p50_ms": round(statistics.median(times["direct"]), 3),
    "via_p50_ms": round(statistics.median(times["via"]), 3),
    "direct_p90_ms": round(pct(times["direct"], 0.9), 3),
    "via_p90_ms": round(pct(times["via"], 0.9), 3),
}))
