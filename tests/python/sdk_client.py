"""Drive python-docker-mcp over streamable HTTP with the official MCP Python SDK.

Usage: sdk_client.py URL TOKEN MODE, where MODE is `legacy` (the 2025-11-25 initialize
handshake with Mcp-Session-Id) or `2026-07-28` (the stateless generation). Prints one JSON
line: the negotiated protocol version, the tool names, and execute-transient's result.
"""

import asyncio
import json
import sys

import httpx2
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def main(url: str, token: str, mode: str) -> None:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=mode) as client:
            tools = await client.list_tools()
            result = await client.call_tool("execute-transient", {"code": "print(6 * 7)\n6 * 7"})
            print(
                json.dumps(
                    {
                        "protocol_version": client.protocol_version,
                        "tools": sorted(t.name for t in tools.tools),
                        "is_error": bool(result.is_error),
                        "structured": result.structured_content,
                        "text": [c.text for c in result.content if getattr(c, "type", "") == "text"],
                    }
                )
            )


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
