"""Egress approval (network.ask) through the official MCP Python SDK's elicitation callback.

Usage: elicit_client.py URL ANSWER CODE, where ANSWER is `yes` (accept, allow: true) or `no`
(decline). Starts a session with network ["allowed.test:8080"] running CODE, runs CODE
again in the same session, ends the session, and prints one JSON line: the questions the
server asked, and for each run its value, isError, text and structured `network`.
"""

import asyncio
import json
import sys

from mcp import types
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client


async def main(url: str, answer: str, code: str) -> None:
    questions = []

    async def on_elicit(context, params):
        questions.append(params.message)
        if answer == "yes":
            return types.ElicitResult(action="accept", content={"allow": True})
        return types.ElicitResult(action="decline")

    runs = []
    async with Client(streamable_http_client(url), mode="legacy", elicitation_callback=on_elicit) as client:
        first = await client.call_tool(
            "execute-persistent", {"code": code, "network": ["allowed.test:8080"]}
        )
        session = (first.structured_content or {}).get("session_id")
        second = await client.call_tool("execute-persistent", {"code": code, "session_id": session})
        for r in (first, second):
            s = r.structured_content or {}
            runs.append(
                {
                    "value": s.get("value"),
                    "is_error": bool(r.is_error),
                    "text": "\n".join(c.text for c in r.content if getattr(c, "type", "") == "text"),
                    "network": s.get("network"),
                }
            )
        await client.call_tool("cleanup-session", {"session_id": session})
    print(json.dumps({"questions": questions, "runs": runs}))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
