"""Drive python-docker-mcp's files with the official MCP Python SDK.

Usage: files_client.py URL TOKEN. Starts a session whose code writes hello.txt, reads the
resource_link items of the result, reads the first link with resources/read, and prints one
JSON line: the session id, the links (uri, name, mimeType), the text read, and whether the
server declared the resources capability.
"""

import asyncio
import json
import sys

from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def main(url: str, token: str) -> None:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode="legacy") as client:
            result = await client.call_tool(
                "execute-persistent", {"code": "open('hello.txt', 'w').write('hi from the sandbox')"}
            )
            links = [
                {"uri": str(c.uri), "name": c.name, "mimeType": c.mime_type}
                for c in result.content
                if getattr(c, "type", "") == "resource_link"
            ]
            read = await client.read_resource(links[0]["uri"]) if links else None
            text = read.contents[0].text if read and read.contents else None
            session = (result.structured_content or {}).get("session_id")
            await client.call_tool("cleanup-session", {"session_id": session})
            print(
                json.dumps(
                    {
                        "session_id": session,
                        "links": links,
                        "read": text,
                        "resources_capability": client.server_capabilities.resources is not None,
                    }
                )
            )


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
