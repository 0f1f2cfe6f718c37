"""Drive python-docker-mcp over MCP's legacy HTTP+SSE transport (2024-11-05) with the
official MCP Python SDK's `mcp.client.sse.sse_client`.

Usage: sse_client.py URL TOKEN STEP [ARG], where URL is the daemon's `/sse` and STEP is:
- `session`: list the tools, start a session that sets a variable, read it back in a
  second call; prints the protocol version, the tool names, both results, the session id.
- `steal ID`: use the session ID (another client's) and list this client's sessions.
- `stream`: a run that prints for a few seconds, with a progress callback; prints the
  progress messages with when each came (seconds from the call), when the call ended, and
  the result.
Each step prints one JSON line. A connection that fails prints `{"error": ...}`.
"""

import asyncio
import json
import sys
import time

from mcp.client.client import Client
from mcp.client.sse import sse_client


def texts(result):
    return [c.text for c in result.content if getattr(c, "type", "") == "text"]


def outcome(result):
    return {
        "is_error": bool(result.is_error),
        "structured": result.structured_content,
        "text": texts(result),
    }


async def session(client, _arg):
    tools = await client.list_tools()
    first = await client.call_tool("execute-persistent", {"code": "x = 41\nprint('set')"})
    sid = (first.structured_content or {}).get("session_id")
    second = await client.call_tool("execute-persistent", {"code": "x + 1", "session_id": sid})
    return {
        "protocol_version": client.protocol_version,
        "tools": sorted(t.name for t in tools.tools),
        "first": outcome(first),
        "second": outcome(second),
        "session_id": sid,
    }


async def steal(client, sid):
    used = await client.call_tool("execute-persistent", {"code": "print(x)", "session_id": sid})
    listed = await client.call_tool("list-sessions", {})
    return {"used": outcome(used), "listed": outcome(listed)}


async def stream(client, _arg):
    progress = []
    start = time.monotonic()

    async def on_progress(value, total, message):
        progress.append({"at": time.monotonic() - start, "message": message or ""})

    code = "import time\nfor i in range(6):\n    print('tick', i, flush=True)\n    time.sleep(0.5)"
    result = await client.call_tool(
        "execute-transient", {"code": code}, progress_callback=on_progress
    )
    return {"progress": progress, "ended_at": time.monotonic() - start, "result": outcome(result)}


STEPS = {"session": session, "steal": steal, "stream": stream}


async def main(url, token, step, arg=None):
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        async with Client(sse_client(url, headers=headers), mode="legacy") as client:
            out = await STEPS[step](client, arg)
    except BaseException as e:  # noqa: BLE001 - the test reads what failed
        while isinstance(e, BaseExceptionGroup) and e.exceptions:
            e = e.exceptions[0]
        out = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
