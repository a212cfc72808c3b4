"""A WebSocket client of Python websockets driven by JSON lines, for interop tests.

Usage: python3 python_peer.py URL [OFFER]
OFFER is "none" (the default: no compression), "default" (websockets' own offer:
permessage-deflate; client_max_window_bits), "no-context" (also server_no_context_takeover
and client_no_context_takeover) or "window-10" (also server_max_window_bits=10).
Reads commands on stdin ({"op": "send", "text": ...}, {"op": "sendBinary", "b64": ...},
{"op": "sendFragments", "parts": [...]}, {"op": "close", "code": C, "reason": R}, code and
reason optional) and prints events on stdout ({"ev": "open", "extensions": ...},
{"ev": "text", "data": ...}, {"ev": "binary", "b64": ...}, {"ev": "close", "code": C, "reason": R}).
"""
import asyncio
import base64
import json
import sys

import websockets
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory


def emit(event):
    print(json.dumps(event), flush=True)


def extensions(offer):
    if offer == "none":
        return []
    no_context = offer == "no-context"
    return [ClientPerMessageDeflateFactory(
        server_no_context_takeover=no_context,
        client_no_context_takeover=no_context,
        server_max_window_bits=10 if offer == "window-10" else None,
    )]


async def main(url, offer):
    async with websockets.connect(url, max_size=None, compression=None, extensions=extensions(offer)) as ws:
        emit({"ev": "open", "extensions": ws.response_headers.get("Sec-WebSocket-Extensions")})

        async def receive():
            try:
                async for message in ws:
                    if isinstance(message, str):
                        emit({"ev": "text", "data": message})
                    else:
                        emit({"ev": "binary", "b64": base64.b64encode(message).decode()})
            except websockets.ConnectionClosed:
                pass
            emit({"ev": "close", "code": ws.close_code, "reason": ws.close_reason})

        receiver = asyncio.ensure_future(receive())
        loop = asyncio.get_running_loop()
        while not receiver.done():
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            command = json.loads(line)
            if command["op"] == "send":
                await ws.send(command["text"])
            elif command["op"] == "sendBinary":
                await ws.send(base64.b64decode(command["b64"]))
            elif command["op"] == "sendFragments":
                await ws.send(command["parts"])  # one message, a frame for each part
            elif command["op"] == "close":
                await ws.close(command.get("code", 1000), command.get("reason", ""))
                break
        await asyncio.wait_for(receiver, 10)


asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "none"))
