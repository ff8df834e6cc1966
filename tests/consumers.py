"""Consumers and helpers that the protocol tests serve and drive."""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
import struct
from typing import Any

from pulsar_arbiter import Connection, ProtocolConsumer, TcpServer


class Line(ProtocolConsumer):
    """One request per newline-terminated line, answered upper-cased."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.buffer = b""

    def data_received(self, data: bytes) -> bytes | None:
        data = self.buffer + data
        end = data.find(b"\n")
        if end < 0:
            self.buffer = data
            return None
        self.answer(data[: end + 1])
        return data[end + 1 :]

    def answer(self, line: bytes) -> None:
        self.write(line.upper())
        self.finished()


class SlowLine(Line):
    """Answers each line after ``delay`` seconds (a line ``never`` is never answered)."""

    delay = 0.3

    def answer(self, line: bytes) -> None:
        if line.strip() != b"never":
            asyncio.get_running_loop().call_later(self.delay, Line.answer, self, line)


class Boom(Line):
    """Raises on the line ``boom``."""

    def answer(self, line: bytes) -> None:
        if line.strip() == b"boom":
            raise RuntimeError("consumer exploded")
        super().answer(line)


async def line_server(
    consumer: type[ProtocolConsumer] = Line, sslcontext: ssl.SSLContext | None = None, **kw: Any
) -> TcpServer:
    server = TcpServer(
        functools.partial(Connection, consumer),
        asyncio.get_running_loop(),
        address=("127.0.0.1", 0),
        **kw,
    )
    await server.start_serving(sslcontext=sslcontext)
    return server


def port_of(server: TcpServer) -> int:
    return int(server.address[1])


async def open_client(
    server: TcpServer,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port_of(server))


async def read_lines(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    return [await reader.readline() for _ in range(count)]


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN (SO_LINGER with a zero timeout)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` is true, checking at every loop iteration, with a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s: {predicate}")
        await asyncio.sleep(0.005)
