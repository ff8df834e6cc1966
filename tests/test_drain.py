"""Draining keep-alive connections without losing a request, over real loopback sockets.

The race these tests pin down: a client reuses an idle keep-alive connection at the moment
its server drains. Closing the connection then fails the request on the wire; the server
must instead answer it (with ``Connection: close``), or hand the socket to a server still
serving, where the request waits in the socket for its new owner.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pulsar_arbiter import Connection, TcpServer
from pulsar_arbiter.http import HttpConnection, HttpRequest, Response, http_protocol_factory
from pulsar_arbiter.protocols import DRAIN_IDLE
from pulsar_arbiter.runtime.handoff import HandoffReceiver, HandoffSender, handoff_socketpair
from tests.conftest import Runner
from tests.consumers import Line, port_of, wait_for
from tests.test_http import connect, get, read_eof, read_reply


def hello(request: HttpRequest) -> Response:
    return Response(b"hello", content_type="text/plain")


async def http_server(**kw: object) -> TcpServer:
    server = TcpServer(
        http_protocol_factory(hello, kind="raw"),
        asyncio.get_running_loop(),
        address=("127.0.0.1", 0),
        **kw,  # type: ignore[arg-type]
    )
    await server.start_serving()
    return server


async def line_server(**kw: object) -> TcpServer:
    server = TcpServer(
        functools.partial(Connection, Line),
        asyncio.get_running_loop(),
        address=("127.0.0.1", 0),
        **kw,  # type: ignore[arg-type]
    )
    await server.start_serving()
    return server


@asynccontextmanager
async def handoff_between(old: TcpServer, new: TcpServer) -> AsyncIterator[HandoffSender]:
    """What two workers share: ``old`` hands connections to ``new`` (bind index 0)."""
    loop = asyncio.get_running_loop()
    outbox, inbox = handoff_socketpair()
    adopted: list[asyncio.Task[object]] = []

    def adopt(bind: int, sock: object) -> None:
        assert bind == 0
        adopted.append(loop.create_task(new.adopt(sock)))  # type: ignore[arg-type]

    receiver = HandoffReceiver(inbox, loop, adopt)
    receiver.start()
    sender = HandoffSender(outbox, loop)
    try:
        yield sender
    finally:
        receiver.stop()
        sender.close()
        if adopted:
            await asyncio.gather(*adopted)
        outbox.close()
        inbox.close()


# ----------------------------------------------------------------- without a handoff (TERM)
def test_idle_http_connection_answers_the_next_request_with_close(run: Runner) -> None:
    """The request a client sends on an idle connection after the drain began is answered
    (it used to meet a closed connection: EOF before response)."""

    async def main() -> None:
        server = await http_server(keep_alive=30)
        reader, writer = await connect(server)
        writer.write(get())
        assert (await read_reply(reader)).status == 200
        closing = asyncio.ensure_future(server.close(10))
        await wait_for(lambda: server.closing)
        await asyncio.sleep(0.05)  # the drain has reached the idle connection
        writer.write(get())
        reply = await read_reply(reader)
        assert (reply.status, reply.body) == (200, b"hello")
        assert reply.header("connection") == "close"
        assert await read_eof(reader) == b""
        await closing
        writer.close()

    run(main())


def test_first_request_of_a_connection_accepted_before_the_drain_is_answered(
    run: Runner,
) -> None:
    """The HTTP consumer refused it as "closing" and closed without an answer."""

    async def main() -> None:
        server = await http_server(keep_alive=30)
        reader, writer = await connect(server)
        await wait_for(lambda: len(server.connections) == 1)
        closing = asyncio.ensure_future(server.close(10))
        await wait_for(lambda: server.closing)
        await asyncio.sleep(0.05)
        writer.write(get())
        reply = await read_reply(reader)
        assert (reply.status, reply.header("connection")) == (200, "close")
        await closing
        writer.close()

    run(main())


def test_pipelined_requests_behind_a_close_answer_are_not_read(run: Runner) -> None:
    async def main() -> None:
        server = await http_server(keep_alive=30)
        reader, writer = await connect(server)
        writer.write(get())
        assert (await read_reply(reader)).status == 200
        closing = asyncio.ensure_future(server.close(10))
        await asyncio.sleep(0.05)
        writer.write(get("/a") + get("/b"))
        reply = await read_reply(reader)
        assert reply.header("connection") == "close"
        assert await read_eof(reader) == b""
        await closing
        writer.close()

    run(main())


def test_a_silent_connection_does_not_hold_the_drain_for_the_grace(run: Runner) -> None:
    """A client that connected and never sent a byte used to keep close() waiting for
    the whole grace period (30 s by default)."""

    async def main() -> None:
        for server in (await http_server(), await line_server()):
            reader, writer = await connect(server)
            await wait_for(lambda s=server: len(s.connections) == 1)
            started = time.monotonic()
            await server.close(30)
            elapsed = time.monotonic() - started
            assert elapsed < DRAIN_IDLE + 3.0, elapsed
            assert await read_eof(reader) == b""
            writer.close()

    run(main())


def test_draining_event_fires_on_every_connection(run: Runner) -> None:
    async def main() -> None:
        server = await line_server()
        fired: list[object] = []
        _, writer = await connect(server)
        await wait_for(lambda: len(server.connections) == 1)
        (connection,) = server.connections
        assert isinstance(connection, Connection)
        connection.bind_event("draining", fired.append)
        await server.close(1)
        assert fired == [connection]
        assert connection.draining
        writer.close()

    run(main())


# ------------------------------------------------------------------- with a handoff (HUP)
def test_idle_http_connections_move_to_the_serving_server(run: Runner) -> None:
    """The client never sees a close: the next request is answered by the new server."""

    async def main() -> None:
        old, new = await http_server(keep_alive=30), await http_server(keep_alive=30)
        async with handoff_between(old, new) as sender:
            clients = [await connect(old) for _ in range(5)]
            for reader, writer in clients:
                writer.write(get())
                assert (await read_reply(reader)).status == 200
            await old.close(5, handoff=functools.partial(sender.offer, 0))
            assert sender.sent == 5
            assert not old.connections
            await wait_for(lambda: len(new.connections) == 5)
            for _ in range(3):
                for reader, writer in clients:
                    writer.write(get())
                    reply = await read_reply(reader)
                    assert (reply.status, reply.header("connection")) == (200, None)
            assert new.requests_processed == 15
            for _, writer in clients:
                writer.close()
        await new.close(1)

    run(main())


def test_a_request_sent_during_the_handoff_waits_in_the_socket(run: Runner) -> None:
    """Bytes that arrive while the socket travels are read by the new owner."""

    async def main() -> None:
        old, new = await http_server(keep_alive=30), await http_server(keep_alive=30)
        async with handoff_between(old, new) as sender:
            reader, writer = await connect(old)
            writer.write(get())
            assert (await read_reply(reader)).status == 200
            closing = asyncio.ensure_future(
                old.close(5, handoff=functools.partial(sender.offer, 0))
            )
            writer.write(get("/during"))  # races the handoff, on purpose
            reply = await read_reply(reader)
            assert reply.status == 200
            await closing
            assert old.requests_processed + new.requests_processed == 2
            writer.close()
        await new.close(1)

    run(main())


def test_a_busy_connection_is_handed_off_after_its_request(run: Runner) -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def slow(request: HttpRequest) -> Response:
            await release.wait()
            return Response(b"late")

        factory = http_protocol_factory(slow, kind="raw")
        loop = asyncio.get_running_loop()
        old = TcpServer(factory, loop, address=("127.0.0.1", 0), keep_alive=30)
        await old.start_serving()
        new = await http_server(keep_alive=30)
        async with handoff_between(old, new) as sender:
            reader, writer = await connect(old)
            writer.write(get())
            await wait_for(lambda: old.connections and _busy(old))
            closing = asyncio.ensure_future(
                old.close(5, handoff=functools.partial(sender.offer, 0))
            )
            await asyncio.sleep(0.05)
            release.set()
            reply = await read_reply(reader)
            assert (reply.body, reply.header("connection")) == (b"late", None)
            await closing
            assert sender.sent == 1
            writer.write(get())
            assert (await read_reply(reader)).body == b"hello"  # the new server's answer
            writer.close()
        await new.close(1)

    run(main())


def _busy(server: TcpServer) -> bool:
    (connection,) = server.connections
    assert isinstance(connection, HttpConnection)
    return connection._current_consumer is not None


def test_raw_connections_are_handed_off_only_when_the_server_allows_it(run: Runner) -> None:
    """A raw consumer may keep state between requests: its connections move only with
    ``handoff_raw`` (``--handoff``); otherwise they close at a request boundary."""

    async def main() -> None:
        for handoff_raw in (False, True):
            old, new = await line_server(), await line_server()
            old.handoff_raw = handoff_raw
            async with handoff_between(old, new) as sender:
                reader, writer = await connect(old)
                writer.write(b"one\n")
                assert await reader.readline() == b"ONE\n"
                await old.close(5, handoff=functools.partial(sender.offer, 0))
                if handoff_raw:
                    writer.write(b"two\n")
                    assert await asyncio.wait_for(reader.readline(), 5) == b"TWO\n"
                    assert new.requests_processed == 1
                else:
                    assert await read_eof(reader) == b""
                    assert sender.sent == 0
                writer.close()
            await new.close(1)

    run(main())


def test_an_upgraded_or_tls_connection_is_never_handed_off(run: Runner) -> None:
    async def main() -> None:
        old, new = await line_server(), await line_server()
        old.handoff_raw = True
        async with handoff_between(old, new) as sender:
            reader, writer = await connect(old)
            writer.write(b"one\n")
            assert await reader.readline() == b"ONE\n"
            (connection,) = old.connections
            assert isinstance(connection, Connection)
            connection.upgrade(functools.partial(Line))
            await old.close(5, handoff=functools.partial(sender.offer, 0))
            assert sender.sent == 0
            assert await read_eof(reader) == b""
            writer.close()
        await new.close(1)

    run(main())


def test_port_of_a_drained_server_is_free(run: Runner) -> None:
    async def main() -> None:
        server = await line_server()
        port = port_of(server)
        await server.close(1)
        again = TcpServer(
            functools.partial(Connection, Line),
            asyncio.get_running_loop(),
            address=("127.0.0.1", port),
        )
        await again.start_serving()
        await again.close(1)

    run(main())
