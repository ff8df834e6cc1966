"""Bare HTTP/1.1 hello on uvloop + httptools: the floor of a Python HTTP server.

One asyncio.Protocol per connection, one httptools parser fed straight from
data_received, and one prebuilt response written on every complete request.
No request object, no routing, no headers kept - what is left is the cost of
the loop, the parser callbacks and the write, which is what any uvloop +
httptools server (ours, uvicorn) builds on.  It still behaves as an HTTP/1.1
server should: keep-alive unless the client says otherwise, pipelined
requests answered in order (the parser calls back once per message), a
``Date`` header (refreshed once a second, as real servers cache it too, so
the comparison is like for like), and a 400 + close on malformed input.

``--workers N`` (N > 1) pre-forks N children sharing one listening socket,
the bare counterpart of the process-level servers in the 2-worker table;
the parent only forwards SIGTERM/SIGINT and reaps.

Usage: bare_httptools.py --host 127.0.0.1 --port N [--workers 1]
(ready = port accepts)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
import traceback
from email.utils import formatdate
from typing import cast

import httptools
import uvloop

BODY = b"Hello, World!"
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\ndate: " % len(BODY)
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class Clock:
    """Holds the prebuilt response; its ``Date`` is rebuilt once a second."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.response = b""
        self.tick()

    def tick(self) -> None:
        date = formatdate(time.time(), usegmt=True).encode()
        self.response = HEAD + date + b"\r\n\r\n" + BODY
        self.loop.call_later(1.0, self.tick)


class HelloProtocol(asyncio.Protocol):
    """One connection: feed the parser, answer each complete message."""

    transport: asyncio.Transport

    def __init__(self, clock: Clock, live: set[asyncio.Transport]) -> None:
        self.clock = clock
        self.live = live
        self.parser = httptools.HttpRequestParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not subclass asyncio's.
        self.transport = cast(asyncio.Transport, transport)
        self.live.add(self.transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:  # malformed, or an upgrade we do not do
            self.transport.write(BAD_REQUEST)
            self.transport.close()

    def on_message_complete(self) -> None:
        """httptools callback, once per request (so pipelining just works)."""
        self.transport.write(self.clock.response)
        if not self.parser.should_keep_alive():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.live.discard(self.transport)


async def serve(sock: socket.socket) -> None:
    """Serve on an already listening socket until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    clock = Clock(loop)
    live: set[asyncio.Transport] = set()
    server = await loop.create_server(lambda: HelloProtocol(clock, live), sock=sock)
    try:
        await stop.wait()
    finally:
        server.close()
        for transport in list(live):
            transport.abort()
        await asyncio.sleep(0)


def listen(host: str, port: int) -> socket.socket:
    """Bind before forking, so every worker accepts from the same queue."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def prefork(sock: socket.socket, workers: int) -> int:
    """Fork ``workers`` children serving ``sock``; forward stop signals; reap."""
    children: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            status = 0
            try:
                uvloop.run(serve(sock))
            except BaseException:  # a child must never return into the parent's code
                traceback.print_exc()
                status = 1
            finally:
                sys.stdout.flush()
                os._exit(status)
        children.append(pid)
    status = 0
    for _ in children:
        _, code = os.wait()
        status = status or os.waitstatus_to_exitcode(code)
    return 0 if status in (0, -signal.SIGTERM, -signal.SIGINT) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    sock = listen(args.host, args.port)
    if args.workers <= 1:
        uvloop.run(serve(sock))
        return 0
    return prefork(sock, args.workers)


if __name__ == "__main__":
    sys.exit(main())
