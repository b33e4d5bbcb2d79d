"""Sends traces of LLM calls whose inputs and outputs hold code, with the installed
`langfuse` SDK (2.x: the ingestion API, JSON; 3.x and later: OTLP protobuf, gzip by default).

Usage: langfuse_traces.py HOST ORIGIN_SECRET TRACES
ORIGIN_SECRET may be empty (an internal peer sends none). Prints one JSON line:
{"sdk": VERSION, "traces": N}.
"""
import json
import sys
from importlib.metadata import version

import httpx
from langfuse import Langfuse

host, origin, traces = sys.argv[1], sys.argv[2], int(sys.argv[3])
headers = {"X-Origin-Verify": origin} if origin else {}
sdk = version("langfuse")
major = int(sdk.split(".")[0])

from agent_code import CODE


def messages(i):
    code = CODE[i % len(CODE)]
    return [
        {"role": "system", "content": "You are a coding assistant."},
        {"role": "user", "content": f"Why does this fail?\n```\n{code}\n```"},
    ]


def answer(i):
    return f"Line 2 is the problem. A fixed version:\n```\n{CODE[(i + 3) % len(CODE)]}\n```"


if major >= 3:
    client = Langfuse(
        public_key="pk-lf-test",
        secret_key="sk-lf-test",
        base_url=host,
        additional_headers=headers,
        flush_at=5,
    )

    def agent_step(code, attempt=1):
        return {"patched": code, "attempt": attempt}

    for i in range(traces):
        with client.start_as_current_observation(
            as_type="span", name="agent-turn", input={"args": [CODE[i % len(CODE)]], "kwargs": {"attempt": i}}
        ) as turn:
            with client.start_as_current_observation(
                as_type="generation", name="chat", model="gpt-4o-mini", input=messages(i)
            ) as gen:
                gen.update(
                    output={"role": "assistant", "content": answer(i)},
                    metadata={"tool_result": CODE[(i + 5) % len(CODE)], "file": "src/../app/main.py"},
                    usage_details={"input": 120, "output": 80},
                )
            with client.start_as_current_observation(as_type="tool", name="run_shell", input={"command": CODE[2]}) as tool:
                tool.update(output=CODE[(i + 1) % len(CODE)])
            turn.update(output=agent_step(CODE[(i + 7) % len(CODE)]))
    client.flush()
    client.shutdown()
else:
    client = Langfuse(
        public_key="pk-lf-test",
        secret_key="sk-lf-test",
        host=host,
        httpx_client=httpx.Client(headers=headers, timeout=20),
        flush_at=5,
        max_retries=0,
    )
    for i in range(traces):
        # What `@observe` records: the function's arguments under input.args and kwargs.
        trace = client.trace(
            name="agent-turn",
            user_id="user-42",
            input={"args": [CODE[i % len(CODE)]], "kwargs": {"attempt": i}},
            output={"patched": CODE[(i + 7) % len(CODE)]},
            metadata={"repo": "platform", "snippet": CODE[(i + 4) % len(CODE)]},
            tags=["agent", "coding"],
        )
        trace.generation(
            name="chat",
            model="gpt-4o-mini",
            input=messages(i),
            output={"role": "assistant", "content": answer(i)},
            metadata={"tool_result": CODE[(i + 5) % len(CODE)]},
            usage={"input": 120, "output": 80},
        )
        trace.span(name="run_shell", input={"command": CODE[2]}, output=CODE[(i + 1) % len(CODE)])
    client.flush()
    client.shutdown()

print(json.dumps({"sdk": sdk, "traces": traces}))
