"""A WebSocket echo server of Python websockets, for the client's interop tests.

Usage: python3 python_echo_server.py [deflate]
Listens on 127.0.0.1 on a free port and prints {"port": N}. Echoes every message,
except a text "close CODE REASON", which it answers by closing with that code and
reason; with "deflate", offers of permessage-deflate are accepted. Prints {"closed": CODE, "reason": R} when a connection has ended. Exits when
its stdin closes.
"""
import asyncio
import json
import sys

import websockets


def emit(event):
    print(json.dumps(event), flush=True)


async def echo(ws):
    try:
        async for message in ws:
            if isinstance(message, str) and message.startswith("close "):
                _, code, reason = message.split(" ", 2)
                await ws.close(int(code), reason)
                break
            await ws.send(message)
    except websockets.ConnectionClosed:
        pass
    await ws.wait_closed()
    emit({"closed": ws.close_code, "reason": ws.close_reason})


async def main():
    compression = "deflate" if "deflate" in sys.argv[1:] else None
    async with websockets.serve(echo, "127.0.0.1", 0, max_size=None, compression=compression) as server:
        emit({"port": server.sockets[0].getsockname()[1]})
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, sys.stdin.readline):
            pass


asyncio.run(main())
