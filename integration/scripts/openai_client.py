"""The official openai client calling rampart as it would call OpenAI.

Usage: openai_client.py BASE_URL API_KEY ORIGIN_SECRET [stream]
Prints one JSON line: {"ok": true, "content": ...} or {"ok": false, "status": ..., "error": ...}.
"""
import json
import sys

import openai

base_url, api_key, origin = sys.argv[1:4]
stream = len(sys.argv) > 4 and sys.argv[4] == "stream"
client = openai.OpenAI(
    base_url=base_url,
    api_key=api_key,
    default_headers={"X-Origin-Verify": origin},
    max_retries=0,
    timeout=20,
)
messages = [{"role": "user", "content": "Say hello to the gateway."}]
try:
    if stream:
        parts = client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)
        content = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
    else:
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        content = reply.choices[0].message.content
    print(json.dumps({"ok": True, "content": content}))
except openai.APIStatusError as e:
    print(json.dumps({"ok": False, "status": e.status_code, "error": type(e).__name__}))
