"""TcpServer, Connection and ProtocolConsumer over real loopback sockets, on both loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

import pytest

from pulsar_arbiter import Connection, ProtocolConsumer
from tests.conftest import Runner
from tests.consumers import (
    Boom,
    Line,
    SlowLine,
    line_server,
    open_client,
    port_of,
    read_lines,
    reset,
    wait_for,
)

CHUNKINGS = [
    [b"one\ntwo\nthree\n"],  # three requests packed in one packet
    [b"o", b"ne\ntw", b"o\nthr", b"ee\n"],  # requests split across packets
    [b"one\n", b"two\nthree", b"\n"],
    [bytes([c]) for c in b"one\ntwo\nthree\n"],  # a byte at a time
]


@pytest.mark.parametrize("chunks", CHUNKINGS, ids=["packed", "split", "mixed", "bytewise"])
def test_pipelined_requests_are_answered_in_order(run: Runner, chunks: list[bytes]) -> None:
    async def main() -> None:
        server = await line_server()
        reader, writer = await open_client(server)
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.001)
        assert await read_lines(reader, 3) == [b"ONE\n", b"TWO\n", b"THREE\n"]
        writer.close()
        await server.close(1)
        assert server.requests_processed == 3
        assert server.sessions == 1

    run(main())


def test_pipelined_requests_wait_for_a_slow_consumer(run: Runner) -> None:
    async def main() -> None:
        SlowLine.delay = 0.05
        server = await line_server(SlowLine)
        reader, writer = await open_client(server)
        writer.write(b"a\nb\nc\n")
        assert await read_lines(reader, 3) == [b"A\n", b"B\n", b"C\n"]
        writer.close()
        await server.close(1)

    run(main())


def test_event_order_and_counts(run: Runner) -> None:
    async def main() -> None:
        server = await line_server()
        log: list[tuple[str, Any]] = []

        def record(name: str) -> Any:
            def callback(arg: Any, **kw: Any) -> None:
                log.append((name, arg))
                if name == "connection_made":
                    arg.bind_event("connection_lost", lambda c, **kw: log.append(("lost", c)))

            return callback

        for name in ("connection_made", "pre_request", "post_request", "connection_lost"):
            server.bind_event(name, record(name))
        reader, writer = await open_client(server)
        writer.write(b"x\ny\n")
        assert await read_lines(reader, 2) == [b"X\n", b"Y\n"]
        writer.close()
        await wait_for(lambda: len(log) == 7)
        names = [name for name, _ in log]
        assert names == [
            "connection_made",
            "pre_request",
            "post_request",
            "pre_request",
            "post_request",
            "lost",
            "connection_lost",
        ]
        connection = log[0][1]
        assert isinstance(connection, Connection)
        assert connection.processed == 2
        consumers = [arg for name, arg in log if name == "post_request"]
        assert all(isinstance(c, Line) and c.connection is connection for c in consumers)
        assert consumers[0] is not consumers[1]
        assert consumers[0].has_fired("post_request")
        assert server.requests_processed == 2
        assert server.sessions == 1
        await server.close(1)

    run(main())


def test_consumer_events_and_on_finished(run: Runner) -> None:
    async def main() -> None:
        server = await line_server()
        finished: list[Any] = []

        def on_connection(connection: Any, **kw: Any) -> None:
            consumer = connection.current_consumer()
            consumer.bind_event("data_received", lambda c, data: finished.append(("data", data)))
            consumer.bind_event("post_request", lambda c, **kw: finished.append(("post", c)))

        server.bind_event("connection_made", on_connection)
        reader, writer = await open_client(server)
        writer.write(b"hi\n")
        assert await reader.readline() == b"HI\n"
        await wait_for(lambda: len(finished) == 2)
        assert finished[0] == ("data", b"hi\n")
        consumer = finished[1][1]
        assert await consumer.on_finished is consumer
        writer.close()
        await server.close(1)

    run(main())


class Upgradable(Line):
    def answer(self, line: bytes) -> None:
        if line == b"upgrade\n":
            assert isinstance(self.connection, Connection)
            self.connection.upgrade(Reverse)
        super().answer(line)


class Reverse(Line):
    def answer(self, line: bytes) -> None:
        self.write(line[:-1][::-1] + b"\n")
        self.finished()


def test_upgrade_takes_effect_after_the_current_request(run: Runner) -> None:
    async def main() -> None:
        server = await line_server(Upgradable)
        reader, writer = await open_client(server)
        writer.write(b"abc\nupgrade\nabc\n")
        assert await read_lines(reader, 3) == [b"ABC\n", b"UPGRADE\n", b"cba\n"]
        writer.close()
        await server.close(1)

    run(main())


def test_upgrade_without_a_request_takes_effect_at_once(run: Runner) -> None:
    async def main() -> None:
        server = await line_server()
        server.bind_event("connection_made", lambda c, **kw: c.upgrade(Reverse))
        reader, writer = await open_client(server)
        writer.write(b"abc\n")
        assert await reader.readline() == b"cba\n"
        writer.close()
        await server.close(1)

    run(main())


BLOCK = b"x" * 65536
BLOCKS = 256  # 16 MiB: far more than the kernel and transport buffers hold


class Flood(ProtocolConsumer):
    """Writes BLOCKS blocks, awaiting the back-pressure future whenever write gives one."""

    paused_seen: list[bool] = []

    def data_received(self, data: bytes) -> None:
        self.task = asyncio.ensure_future(self.flood())

    async def flood(self) -> None:
        for _ in range(BLOCKS):
            waiter = self.write(BLOCK)
            if waiter:
                Flood.paused_seen.append(True)
                await waiter
        self.finished()


def test_write_back_pressure_against_a_reader_that_does_not_read(run: Runner) -> None:
    async def main() -> None:
        Flood.paused_seen = []
        server = await line_server(Flood)
        # A small receive buffer, so the kernel cannot absorb what the server writes.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port_of(server)))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"go\n")
        await wait_for(lambda: bool(Flood.paused_seen))
        connection = next(iter(server.connections))
        assert isinstance(connection, Connection)
        assert connection.writing_paused
        # Nothing is dropped: every byte arrives once the client reads.
        received = 0
        while received < BLOCKS * len(BLOCK):
            chunk = await reader.read(1 << 20)
            assert chunk, "connection closed before all data arrived"
            received += len(chunk)
        assert received == BLOCKS * len(BLOCK)
        await wait_for(lambda: server.requests_processed == 1)
        writer.close()
        await server.close(1)

    run(main())


def test_write_after_close_raises(run: Runner) -> None:
    async def main() -> None:
        server = await line_server()
        reader, writer = await open_client(server)
        writer.write(b"a\n")
        await reader.readline()
        connection = next(iter(server.connections))
        assert isinstance(connection, Connection)
        await connection.close()
        assert connection.closed
        with pytest.raises(ConnectionResetError):
            connection.write(b"late")
        writer.close()
        await server.close(1)

    run(main())


def test_idle_connection_is_closed_after_keep_alive(run: Runner) -> None:
    async def main() -> None:
        server = await line_server(keep_alive=0.2)
        reader, writer = await open_client(server)
        loop = asyncio.get_running_loop()
        writer.write(b"a\n")
        assert await reader.readline() == b"A\n"
        start = loop.time()
        assert await asyncio.wait_for(reader.read(), 3) == b""  # closed by the server
        assert loop.time() - start >= 0.15
        writer.close()
        await server.close(1)

    run(main())


def test_request_in_progress_is_not_idle(run: Runner) -> None:
    async def main() -> None:
        SlowLine.delay = 0.5
        server = await line_server(SlowLine, keep_alive=0.2)
        reader, writer = await open_client(server)
        writer.write(b"slow\n")
        assert await asyncio.wait_for(reader.readline(), 3) == b"SLOW\n"
        assert await asyncio.wait_for(reader.read(), 3) == b""
        writer.close()
        await server.close(1)

    run(main())


def test_close_drains_in_flight_and_closes_idle(run: Runner) -> None:
    async def main() -> None:
        SlowLine.delay = 0.3
        server = await line_server(SlowLine)
        idle_reader, idle_writer = await open_client(server)
        idle_writer.write(b"first\n")  # served once, then idle (keep-alive)
        assert await idle_reader.readline() == b"FIRST\n"
        busy_reader, busy_writer = await open_client(server)
        busy_writer.write(b"busy\n")
        await wait_for(lambda: len(server.connections) == 2)
        await asyncio.sleep(0.05)
        port = port_of(server)
        closing = asyncio.ensure_future(server.close(5))
        # The idle connection is closed at once; the busy one gets its answer first.
        assert await asyncio.wait_for(idle_reader.read(), 1) == b""
        assert not closing.done()
        assert await busy_reader.readline() == b"BUSY\n"
        assert await asyncio.wait_for(busy_reader.read(), 1) == b""
        await closing
        assert server.has_fired("stop")
        assert server.requests_processed == 2
        assert not server.connections
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        idle_writer.close()
        busy_writer.close()

    run(main())


def test_close_serves_the_first_request_of_a_just_accepted_connection(run: Runner) -> None:
    async def main() -> None:
        server = await line_server()
        reader, writer = await open_client(server)
        await wait_for(lambda: len(server.connections) == 1)
        closing = asyncio.ensure_future(server.close(5))
        await asyncio.sleep(0.05)
        writer.write(b"late\n")  # its request arrives after the drain began
        assert await reader.readline() == b"LATE\n"
        assert await asyncio.wait_for(reader.read(), 1) == b""
        await closing
        writer.close()

    run(main())


def test_close_aborts_what_outlives_the_grace_period(run: Runner) -> None:
    async def main() -> None:
        server = await line_server(SlowLine)
        reader, writer = await open_client(server)
        writer.write(b"never\n")
        await wait_for(lambda: len(server.connections) == 1)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await server.close(0.2)
        assert loop.time() - start < 2
        # Aborted: the peer sees a reset (or an EOF if it raced the abort).
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), 1) == b""
        assert not server.connections
        writer.close()

    run(main())


def test_consumer_that_raises_closes_only_its_connection(
    run: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        server = await line_server(Boom)
        good_reader, good_writer = await open_client(server)
        bad_reader, bad_writer = await open_client(server)
        bad_writer.write(b"boom\n")
        assert await asyncio.wait_for(bad_reader.read(), 2) == b""
        good_writer.write(b"fine\n")
        assert await good_reader.readline() == b"FINE\n"
        new_reader, new_writer = await open_client(server)
        new_writer.write(b"again\n")
        assert await new_reader.readline() == b"AGAIN\n"
        for writer in (good_writer, bad_writer, new_writer):
            writer.close()
        await server.close(1)

    with caplog.at_level(logging.ERROR):
        run(main())
    errors = [r for r in caplog.records if "unhandled error in consumer" in r.getMessage()]
    assert len(errors) == 1
    assert errors[0].exc_info is not None


class Abandons(Line):
    """Abandons the request ``drop`` (a consumer that cannot answer it)."""

    def answer(self, line: bytes) -> None:
        if line.strip() == b"drop":
            self.abort_request()
        else:
            super().answer(line)


def test_abort_request_ends_the_request_with_an_error_and_its_connection(
    run: Runner,
) -> None:
    async def main() -> None:
        server = await line_server(Abandons)
        posts: list[Any] = []
        server.bind_event("post_request", lambda c, exc=None: posts.append((c, exc)))
        reader, writer = await open_client(server)
        writer.write(b"keep\n")
        assert await reader.readline() == b"KEEP\n"
        writer.write(b"drop\n")
        assert await asyncio.wait_for(reader.read(), 2) == b""
        await wait_for(lambda: len(posts) == 2)
        (kept, ok), (dropped, exc) = posts
        assert ok is None and kept.finished_ok
        assert isinstance(exc, ConnectionError) and not dropped.finished_ok
        assert server.requests_processed == 1, "an abandoned request is not counted"
        other_reader, other_writer = await open_client(server)
        other_writer.write(b"still\n")
        assert await other_reader.readline() == b"STILL\n"
        for w in (writer, other_writer):
            w.close()
        await server.close(1)

    run(main())


def test_peer_reset_mid_request(run: Runner) -> None:
    async def main() -> None:
        server = await line_server()
        lost: list[Any] = []
        posts: list[Any] = []
        server.bind_event("connection_lost", lambda c, exc=None: lost.append(exc))
        server.bind_event("post_request", lambda c, exc=None: posts.append(exc))
        reader, writer = await open_client(server)
        writer.write(b"partial request without newl")
        await writer.drain()
        await wait_for(lambda: bool(server.connections))
        await asyncio.sleep(0.02)
        reset(writer)
        await wait_for(lambda: len(lost) == 1)
        assert len(posts) == 1 and isinstance(posts[0], ConnectionError)
        assert server.requests_processed == 0
        # The server keeps serving.
        reader, writer = await open_client(server)
        writer.write(b"ok\n")
        assert await reader.readline() == b"OK\n"
        writer.close()
        await server.close(1)

    run(main())


def test_half_closed_peer_still_gets_its_answer(run: Runner) -> None:
    async def main() -> None:
        SlowLine.delay = 0.05
        server = await line_server(SlowLine)
        reader, writer = await open_client(server)
        writer.write(b"a\nb\n")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 2) == b"A\nB\n"
        writer.close()
        await server.close(1)

    run(main())


def test_start_without_connection_raises() -> None:
    with pytest.raises(RuntimeError, match="no connection"):
        Line().start()


class UntilEof(ProtocolConsumer):
    """Collects everything up to the peer's EOF, then answers its length."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.size = 0

    def data_received(self, data: bytes) -> None:
        self.size += len(data)

    def eof_received(self) -> None:
        self.write(b"%d\n" % self.size)
        self.finished()


def test_consumer_is_told_of_the_peer_eof(run: Runner) -> None:
    async def main() -> None:
        server = await line_server(UntilEof)
        reader, writer = await open_client(server)
        writer.write(b"abc")
        writer.write(b"defg")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 2) == b"7\n"
        writer.close()
        await server.close(1)

    run(main())
