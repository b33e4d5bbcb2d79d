"""The official openai client calling rampart as it would call OpenAI.

Usage: openai_client.py BASE_URL API_KEY ORIGIN_SECRET [stream]
The model is OPENAI_MODEL's, gpt-4o-mini by default.
Prints one JSON line: {"ok": true, "content": ...} or {"ok": false, "status": ..., "error": ...};
an error raised mid-stream also gives its message and the content received before it.
"""
import json
import os
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
model = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
messages = [{"role": "user", "content": "Say hello to the gateway."}]
received = []
try:
    if stream:
        parts = client.chat.completions.create(model=model, messages=messages, stream=True)
        for c in parts:
            if c.choices:
                received.append(c.choices[0].delta.content or "")
        content = "".join(received)
    else:
        reply = client.chat.completions.create(model=model, messages=messages)
        content = reply.choices[0].message.content
    print(json.dumps({"ok": True, "content": content}))
except openai.APIStatusError as e:
    print(json.dumps({"ok": False, "status": e.status_code, "error": type(e).__name__}))
except openai.APIError as e:
    print(json.dumps({"ok": False, "status": None, "error": type(e).__name__,
                      "message": e.message, "content": "".join(received)}))
