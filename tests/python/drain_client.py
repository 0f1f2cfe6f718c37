"""Hold one call across the daemon's drain, with the official MCP Python SDK.

Usage: drain_client.py URL TOKEN MODE CODE, MODE as in sdk_client.py (`legacy` for the
2025-11-25 handshake with Mcp-Session-Id, `2026-07-28` for the stateless generation).
Connects, prints {"event": "calling", ...} as it sends execute-transient with CODE, then
one line with the call's result ({"event": "result", ...}) or the error that ended it
({"event": "error", ...}). The test judges those lines; what happens after them (the
daemon has gone by then) only goes to stderr.

It does not list the tools first, on purpose: then the SDK lists them right after the
answer arrives (to check it against the tool's output schema), a new request during the
shutdown that must still be served, or the call fails although its answer came.
"""

import asyncio
import json
import sys
import time
import traceback

from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def say(**line: object) -> None:
    print(json.dumps(line), flush=True)


async def main(url: str, token: str, mode: str, code: str) -> None:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=mode) as client:
            say(event="calling", protocol_version=client.protocol_version)
            started = time.monotonic()
            try:
                result = await client.call_tool("execute-transient", {"code": code})
            except Exception as e:  # the failure under test: report it, do not crash
                say(event="error", error=f"{type(e).__name__}: {e}", seconds=time.monotonic() - started)
                return
            say(
                event="result",
                seconds=time.monotonic() - started,
                is_error=bool(result.is_error),
                text=[c.text for c in result.content if getattr(c, "type", "") == "text"],
            )


if __name__ == "__main__":
    try:
        asyncio.run(main(*sys.argv[1:5]))
    except BaseException as e:  # closing a session whose daemon has exited may fail
        print("ended by:", "".join(traceback.format_exception(e)), file=sys.stderr)
