"""A WebSocket peer driven by JSON lines, for interop tests with Python websockets.

Usage: python3 python_peer.py URL
Reads commands on stdin ({"op": "send", "text": ...}, {"op": "sendBinary", "size": N},
{"op": "close", "code": C, "reason": R}) and prints events on stdout ({"ev": "open"},
{"ev": "text", "data": ...}, {"ev": "binary", "length": N, "sum": S},
{"ev": "close", "code": C, "reason": R}).
"""
import asyncio
import json
import sys

import websockets


def emit(event):
    print(json.dumps(event), flush=True)


async def main(url):
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        emit({"ev": "open"})

        async def receive():
            try:
                async for message in ws:
                    if isinstance(message, str):
                        emit({"ev": "text", "data": message})
                    else:
                        emit({"ev": "binary", "length": len(message), "sum": sum(message) % 2**32})
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
                await ws.send(bytes(i % 251 for i in range(command["size"])))
            elif command["op"] == "close":
                await ws.close(command["code"], command["reason"])
                break
        await asyncio.wait_for(receiver, 10)


asyncio.run(main(sys.argv[1]))
