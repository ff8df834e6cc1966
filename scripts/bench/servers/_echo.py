"""Shared plumbing for the bare reference echo servers.

The reference servers exist to show what an event loop costs with *nothing*
on top: one Protocol callback that writes the bytes straight back.  The
protocol classes live here so the uvloop and stock-asyncio rows run the very
same Python code and differ only in the loop underneath.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Coroutine
from typing import Any, cast


def parse_args(description: str) -> argparse.Namespace:
    """``--host``/``--port``, the interface every benchmark server shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    return parser.parse_args()


class EchoProtocol(asyncio.Protocol):
    """TCP echo: data_received writes the bytes back, nothing else.

    ``transport`` is set in connection_made and never None afterwards, so the
    hot path carries no checks - this is the floor being measured.
    """

    transport: asyncio.Transport

    def __init__(self, live: set[asyncio.Transport]) -> None:
        self.live = live

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not subclass asyncio's.
        self.transport = cast(asyncio.Transport, transport)
        self.live.add(self.transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.live.discard(self.transport)


class EchoDatagramProtocol(asyncio.DatagramProtocol):
    """UDP echo: every datagram goes back to its sender."""

    transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.transport.sendto(data, addr)


async def wait_for_stop_signal() -> None:
    """Return on SIGTERM or SIGINT, so shutdown runs in the loop, cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_tcp(host: str, port: int) -> None:
    """Serve TCP echo until signalled, then close the listener and clients.

    Client transports are aborted explicitly: leaving them open at loop
    close would warn, and Server.wait_closed() waits for clients on 3.12+.
    """
    loop = asyncio.get_running_loop()
    live: set[asyncio.Transport] = set()
    server = await loop.create_server(
        lambda: EchoProtocol(live), host, port, reuse_address=True, backlog=4096
    )
    try:
        await wait_for_stop_signal()
    finally:
        server.close()
        for transport in list(live):
            transport.abort()
        await asyncio.sleep(0)  # let connection_lost callbacks run


async def serve_udp(host: str, port: int) -> None:
    """Serve UDP echo until signalled; prints ``READY <port>`` once bound,
    because a datagram server cannot be probed for readiness from outside."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        EchoDatagramProtocol, local_addr=(host, port)
    )
    try:
        print(f"READY {transport.get_extra_info('sockname')[1]}", flush=True)
        await wait_for_stop_signal()
    finally:
        transport.close()


def run(main: Coroutine[Any, Any, None], *, use_uvloop: bool) -> None:
    """Run ``main`` on uvloop or on the stock asyncio loop."""
    if use_uvloop:
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)
    sys.stdout.flush()
