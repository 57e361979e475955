#!/usr/bin/env python3
"""A TCP proxy that can freeze: it relays LISTEN_PORT to TARGET_HOST:TARGET_PORT and,
after SIGUSR1, stops relaying bytes in both directions (connections stay open and
silent, as with a database that stopped answering). SIGUSR2 thaws it.

Usage: freeze_proxy.py LISTEN_PORT TARGET_HOST TARGET_PORT
"""

import asyncio
import signal
import sys

frozen = asyncio.Event()  # set while frozen
thawed = asyncio.Event()


async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if frozen.is_set():
                await thawed.wait()
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def handle(client_reader, client_writer, host, port):
    try:
        server_reader, server_writer = await asyncio.open_connection(host, port)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))


def freeze():
    thawed.clear()
    frozen.set()


def thaw():
    frozen.clear()
    thawed.set()


async def main():
    listen, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, freeze)
    loop.add_signal_handler(signal.SIGUSR2, thaw)
    thaw()
    server = await asyncio.start_server(lambda r, w: handle(r, w, host, port), "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
