"""The official openai client asking about code (agent_code.CODE), streamed and not.

Usage: openai_prompts.py BASE_URL API_KEY ORIGIN_SECRET
Prints one JSON line: {"ok": N, "failed": [[index, stream, status], ...]}.
"""
import json
import sys

import openai
from agent_code import CODE

base_url, api_key, origin = sys.argv[1:4]
headers = {"X-Origin-Verify": origin} if origin else {}
client = openai.OpenAI(base_url=base_url, api_key=api_key, default_headers=headers, max_retries=0, timeout=30)
ok, failed = 0, []
for i, code in enumerate(CODE):
    messages = [
        {"role": "system", "content": "You are a coding assistant."},
        {"role": "user", "content": f"Why does this fail?\n```\n{code}\n```"},
    ]
    for stream in (False, True):
        try:
            if stream:
                parts = client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)
                text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
            else:
                text = client.chat.completions.create(model="gpt-4o-mini", messages=messages).choices[0].message.content
            ok += 1 if text else 0
        except openai.APIStatusError as e:
            failed.append([i, stream, e.status_code])
print(json.dumps({"ok": ok, "failed": failed}))
