"""The HTTP/1.1 consumer over real loopback sockets, on both loops, with raw handlers."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pulsar_arbiter import Connection, ProtocolConsumer, TcpServer
from pulsar_arbiter.echo import Echo
from pulsar_arbiter.http import (
    HttpConnection,
    HttpConsumer,
    HttpProtocolFactory,
    HttpRequest,
    Limits,
    Response,
    date_header,
    error_response,
    http_protocol_factory,
    status_line,
)
from pulsar_arbiter.http.wsgi import wsgi_protocol_factory
from tests.conftest import Runner
from tests.consumers import port_of, reset, wait_for
from tests.http_corpus import BAD_REQUESTS, GOOD, LIMITS
from tests.test_http_state import checked_states  # noqa: F401 - a fixture

# Seconds any single read of an answer may take: generous, but a hang fails the test.
READ_TIMEOUT = 5.0

# Every state change a connection makes over loopback must be one the table lists.
pytestmark = pytest.mark.usefixtures("checked_states")


# ------------------------------------------------------------------------------ client
@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n == name.lower()]
        return ", ".join(values) if values else None


async def _read_reply(reader: asyncio.StreamReader, head: bool) -> Reply:
    line = await reader.readline()
    if not line:
        raise EOFError("connection closed before a response")
    match = re.fullmatch(rb"HTTP/1\.1 (\d{3}) ?[^\r\n]*\r\n", line)
    assert match, f"bad status line {line!r}"
    status = int(match.group(1))
    headers: list[tuple[str, str]] = []
    while True:
        line = await reader.readline()
        assert line, "connection closed inside a response head"
        if line == b"\r\n":
            break
        name, sep, value = line.decode("latin-1").partition(":")
        assert sep and line.endswith(b"\r\n"), f"bad header line {line!r}"
        headers.append((name.lower(), value.strip()))
    reply = Reply(status, headers, b"")
    length = reply.header("content-length")
    if head or status < 200 or status in (204, 304):
        return reply
    if length is not None:
        reply.body = await reader.readexactly(int(length))
    elif reply.header("transfer-encoding") == "chunked":
        parts = []
        while True:
            size = int((await reader.readline()).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            assert chunk.endswith(b"\r\n")
            if not size:
                break
            parts.append(chunk[:-2])
        reply.body = b"".join(parts)
    else:
        reply.body = await reader.read()
    return reply


async def read_reply(reader: asyncio.StreamReader, head: bool = False) -> Reply:
    """Read one response (its body by Content-Length, chunks or up to the close)."""
    return await asyncio.wait_for(_read_reply(reader, head), READ_TIMEOUT)


async def read_eof(reader: asyncio.StreamReader) -> bytes:
    """Whatever is left until the server closes (a reset counts as a close)."""
    try:
        return await asyncio.wait_for(reader.read(), READ_TIMEOUT)
    except ConnectionResetError:
        return b""


async def connect(server: TcpServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port_of(server))


async def fetch(server: TcpServer, raw: bytes, head: bool = False) -> Reply:
    """One request on a new connection."""
    reader, writer = await connect(server)
    try:
        writer.write(raw)
        return await read_reply(reader, head)
    finally:
        writer.close()


def get(path: str = "/", *headers: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: test", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


@contextlib.asynccontextmanager
async def serving(
    app: Any,
    kind: str = "raw",
    threads: int = 0,
    limits: Limits | None = None,
    factory: HttpProtocolFactory | None = None,
    sslcontext: ssl.SSLContext | None = None,
    **kw: Any,
) -> AsyncIterator[TcpServer]:
    """An HTTP server on a free loopback port, closed (and its threads stopped) after."""
    if factory is None:
        if kind == "wsgi":
            factory = wsgi_protocol_factory(app, threads=threads, limits=limits)
        else:
            factory = HttpProtocolFactory(app, kind=kind, threads=threads, limits=limits)
    server = TcpServer(factory, asyncio.get_running_loop(), address=("127.0.0.1", 0), **kw)
    await server.start_serving(sslcontext=sslcontext)
    try:
        yield server
    finally:
        await server.close(1)
        factory.close(wait=True)


def describe(request: HttpRequest) -> Response:
    """Answers what it received: method, path, query and body."""
    text = f"{request.method} {request.path} {request.query} {len(request.body)}:"
    return Response(text.encode() + request.body, content_type="text/plain")


# --------------------------------------------------------------------------- keep-alive
def test_keep_alive_serves_many_requests_on_one_connection(run: Runner) -> None:
    async def main() -> None:
        async with serving(describe) as server:
            reader, writer = await connect(server)
            for i in range(5):
                writer.write(get(f"/n{i}?q={i}"))
                reply = await read_reply(reader)
                assert reply.status == 200
                assert reply.body == f"GET /n{i} q={i} 0:".encode()
                assert reply.header("connection") is None
                assert reply.header("date")
                assert reply.header("content-type") == "text/plain"
            assert server.sessions == 1
            assert server.requests_processed == 5
            writer.close()

    run(main())


def test_static_response_is_encoded_once_and_reused(run: Runner) -> None:
    hello = Response(b"Hello, World!", content_type="text/plain")

    async def main() -> None:
        async with serving(lambda request: hello) as server:
            reader, writer = await connect(server)
            writer.write(get() * 3 + get(method="HEAD") + get("/", "Connection: close"))
            replies = [await read_reply(reader) for _ in range(3)]
            assert [r.body for r in replies] == [b"Hello, World!"] * 3
            head = await read_reply(reader, head=True)
            assert head.header("content-length") == "13"
            last = await read_reply(reader)
            assert last.body == b"Hello, World!"
            assert last.header("connection") == "close"
            assert await read_eof(reader) == b""
            writer.close()

    run(main())


CHUNKINGS = {
    "one packet": lambda data: [data],
    "bytewise": lambda data: [data[i : i + 1] for i in range(len(data))],
    "sevens": lambda data: [data[i : i + 7] for i in range(0, len(data), 7)],
    "uneven": lambda data: [data[:5], data[5:60], data[60:61], data[61:]],
}


@pytest.mark.parametrize("chunking", sorted(CHUNKINGS))
def test_pipelined_requests_are_answered_in_order(run: Runner, chunking: str) -> None:
    async def main() -> None:
        async with serving(describe) as server:
            requests = [get(f"/p{i}") for i in range(8)]
            requests[3] = (
                b"POST /p3 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
            )
            requests[5] = b"PUT /p5 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nwxyz"
            reader, writer = await connect(server)
            for chunk in CHUNKINGS[chunking](b"".join(requests)):
                writer.write(chunk)
                await writer.drain()
            replies = [await read_reply(reader) for _ in range(8)]
            bodies = [r.body for r in replies]
            assert bodies[3] == b"POST /p3  5:abcde"
            assert bodies[5] == b"PUT /p5  4:wxyz"
            assert [b.split()[1] for b in bodies] == [b"/p%d" % i for i in range(8)]
            assert server.sessions == 1
            writer.close()

    run(main())


def test_pipelined_requests_wait_for_a_slow_async_handler(run: Runner) -> None:
    async def app(request: HttpRequest) -> Response:
        # The first requests are the slowest: answers must still come in order.
        await asyncio.sleep(0.02 * (5 - int(request.path[2:])) / 5)
        return Response(request.path.encode())

    async def main() -> None:
        async with serving(app) as server:
            reader, writer = await connect(server)
            writer.write(b"".join(get(f"/a{i}") for i in range(6)))
            replies = [await read_reply(reader) for _ in range(6)]
            assert [r.body for r in replies] == [b"/a%d" % i for i in range(6)]
            writer.close()

    run(main())


def test_a_full_pipeline_pauses_reading_and_everything_is_answered(run: Runner) -> None:
    async def app(request: HttpRequest) -> Response:
        await asyncio.sleep(0)
        return Response(request.path.encode())

    async def main() -> None:
        limits = Limits(max_pipeline=4)
        async with serving(app, limits=limits) as server:
            reader, writer = await connect(server)
            count = 200
            writer.write(b"".join(get(f"/{i}") for i in range(count)))
            replies = [await read_reply(reader) for _ in range(count)]
            assert [r.body for r in replies] == [b"/%d" % i for i in range(count)]
            writer.close()

    run(main())


def test_half_closed_client_gets_every_pipelined_answer(run: Runner) -> None:
    async def app(request: HttpRequest) -> Response:
        await asyncio.sleep(0.01)
        return Response(request.path.encode())

    async def main() -> None:
        async with serving(app) as server:
            reader, writer = await connect(server)
            writer.write(get("/1") + get("/2") + get("/3"))
            writer.write_eof()
            replies = [await read_reply(reader) for _ in range(3)]
            assert [r.body for r in replies] == [b"/1", b"/2", b"/3"]
            assert await read_eof(reader) == b""
            writer.close()

    run(main())


# ------------------------------------------------------------------------------ bodies
def test_chunked_request_body_split_across_packets(run: Runner) -> None:
    async def main() -> None:
        async with serving(describe) as server:
            reader, writer = await connect(server)
            head = b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            parts = [head, b"5\r\nhel", b"lo\r\n", b"7\r\n, worl", b"d\r\n0\r\n", b"\r\n"]
            for part in parts:
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0.005)
            reply = await read_reply(reader)
            assert reply.body == b"POST /up  12:hello, world"
            writer.close()

    run(main())


def test_expect_100_continue(run: Runner) -> None:
    async def main() -> None:
        async with serving(describe, limits=LIMITS) as server:
            reader, writer = await connect(server)
            writer.write(
                b"POST /c HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
            )
            interim = await read_reply(reader)
            assert interim.status == 100
            writer.write(b"12345")
            reply = await read_reply(reader)
            assert reply.status == 200
            assert reply.body == b"POST /c  5:12345"
            # Too large: refused at once, without a 100, and closed.
            writer.write(
                b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 99999\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            refused = await read_reply(reader)
            assert refused.status == 413
            assert refused.header("connection") == "close"
            assert await read_eof(reader) == b""
            writer.close()

    run(main())


def test_expect_100_continue_without_a_body_gets_no_interim_answer(run: Runner) -> None:
    async def main() -> None:
        async with serving(describe) as server:
            reply = await fetch(server, get("/e", "Expect: 100-continue"))
            assert reply.status == 200
            assert reply.body == b"GET /e  0:"

    run(main())


# -------------------------------------------------------------------- closing and HEAD
def test_connection_close_request(run: Runner) -> None:
    async def main() -> None:
        async with serving(describe) as server:
            reader, writer = await connect(server)
            writer.write(get("/x", "Connection: close") + get("/never"))
            reply = await read_reply(reader)
            assert reply.body == b"GET /x  0:"
            assert reply.header("connection") == "close"
            assert await read_eof(reader) == b""
            assert server.requests_processed == 1
            writer.close()

    run(main())


def test_http10_closes_unless_kept_alive(run: Runner) -> None:
    async def main() -> None:
        async with serving(describe) as server:
            reader, writer = await connect(server)
            writer.write(get("/ten", version="1.0"))
            reply = await read_reply(reader)
            assert reply.body == b"GET /ten  0:"
            assert reply.header("connection") == "close"
            assert await read_eof(reader) == b""
            writer.close()

            reader, writer = await connect(server)
            for _ in range(2):
                writer.write(get("/ka", "Connection: keep-alive", version="1.0"))
                reply = await read_reply(reader)
                assert reply.header("connection") == "keep-alive"
                assert reply.header("content-length") == str(len(reply.body))
            writer.close()

    run(main())


def test_http10_streamed_response_is_delimited_by_the_close(run: Runner) -> None:
    def app(request: HttpRequest) -> Response:
        return Response(iter([b"one ", b"two"]))

    async def main() -> None:
        async with serving(app) as server:
            reader, writer = await connect(server)
            writer.write(get("/", "Connection: keep-alive", version="1.0"))
            reply = await read_reply(reader)
            assert reply.body == b"one two"
            assert reply.header("transfer-encoding") is None
            assert reply.header("connection") == "close"
            writer.close()

    run(main())


def test_head_has_the_length_of_get_and_no_body(run: Runner) -> None:
    async def main() -> None:
        async with serving(describe) as server:
            reader, writer = await connect(server)
            writer.write(get("/h", method="HEAD") + get("/h"))
            head = await read_reply(reader, head=True)
            full = await read_reply(reader)
            assert head.status == full.status == 200
            # The GET answer follows the HEAD one at once: the HEAD sent no body bytes.
            assert full.body == b"GET /h  0:"
            assert head.header("content-length") == str(len(b"HEAD /h  0:"))
            writer.close()

    run(main())


def test_no_body_statuses(run: Runner) -> None:
    def app(request: HttpRequest) -> Response:
        return Response(b"ignored", status=int(request.path[1:]))

    async def main() -> None:
        async with serving(app) as server:
            reader, writer = await connect(server)
            for status in (204, 304):
                writer.write(get(f"/{status}"))
                reply = await read_reply(reader)
                assert reply.status == status
                assert reply.header("content-length") is None
            writer.write(get("/200"))
            assert (await read_reply(reader)).body == b"ignored"
            writer.close()

    run(main())


def test_draining_server_answers_with_connection_close(run: Runner) -> None:
    async def main() -> None:
        entered = asyncio.Event()
        release = asyncio.Event()

        async def app(request: HttpRequest) -> Response:
            entered.set()
            await release.wait()
            return Response(b"late")

        async with serving(app) as server:
            reader, writer = await connect(server)
            writer.write(get("/slow"))
            await asyncio.wait_for(entered.wait(), READ_TIMEOUT)
            closing = asyncio.ensure_future(server.close(5))
            await wait_for(lambda: server.closing)
            assert server.draining
            (connection,) = server.connections
            assert isinstance(connection, HttpConnection)
            assert connection.closing_after_request
            release.set()
            reply = await read_reply(reader)
            assert reply.body == b"late"
            assert reply.header("connection") == "close"
            assert await read_eof(reader) == b""
            await closing
            writer.close()

    run(main())


def test_idle_keep_alive_connection_is_closed(run: Runner) -> None:
    async def main() -> None:
        async with serving(describe, keep_alive=0.2) as server:
            reader, writer = await connect(server)
            writer.write(get())
            assert (await read_reply(reader)).status == 200
            assert await read_eof(reader) == b""
            writer.close()

    run(main())


# ---------------------------------------------------------------------- limits, errors
LIMIT_CASES = [(name, data, status) for name, data, status in BAD_REQUESTS if status != 400]


@pytest.mark.parametrize(("name", "data", "status"), LIMIT_CASES, ids=[c[0] for c in LIMIT_CASES])
def test_limits_answer_close_and_keep_serving(
    run: Runner, name: str, data: bytes, status: int
) -> None:
    async def main() -> None:
        async with serving(describe, limits=LIMITS) as server:
            reader, writer = await connect(server)
            writer.write(data)
            reply = await read_reply(reader)
            assert reply.status == status
            assert reply.header("connection") == "close"
            assert reply.body.startswith(str(status).encode())
            assert await read_eof(reader) == b""
            writer.close()
            assert (await fetch(server, GOOD)).status == 200

    run(main())


def test_default_limits(run: Runner) -> None:
    async def main() -> None:
        async with serving(describe) as server:
            assert (await fetch(server, get("/" + "a" * 8000))).status == 200
            assert (await fetch(server, get("/" + "a" * 8200))).status == 414
            many = [f"X-{i}: v" for i in range(101)]
            assert (await fetch(server, get("/", *many))).status == 431
            assert (await fetch(server, get("/", *many[:99]))).status == 200  # + Host: 100
            assert (await fetch(server, get("/", "X: " + "v" * 8200))).status == 431
            big = get("/", "Content-Length: 1048577", method="POST")
            assert (await fetch(server, big)).status == 413
            ok = get("/", "Content-Length: 1048576", method="POST") + b"x" * 1048576
            reply = await fetch(server, ok)
            assert reply.status == 200
            assert reply.body.startswith(b"POST /  1048576:")

    run(main())


def test_a_head_sent_slowly_is_bounded_too(run: Runner) -> None:
    async def main() -> None:
        async with serving(describe, limits=LIMITS) as server:
            reader, writer = await connect(server)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
            for i in range(40):
                writer.write(b"X-%d: %s\r\n" % (i % 9, b"v" * 40))
                await writer.drain()
                await asyncio.sleep(0.001)
            reply = await read_reply(reader)
            assert reply.status == 431
            writer.close()

    run(main())


def test_a_head_trickled_past_the_keep_alive_timeout_gets_408(run: Runner) -> None:
    """A slowloris client sending a byte now and then is closed at the keep-alive timeout
    counted from its connect (or its last answer), with a 408; a normal client is not."""

    async def main() -> None:
        async with serving(describe, keep_alive=0.3) as server:
            reader, writer = await connect(server)
            writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n")
            for _ in range(10):
                await asyncio.sleep(0.05)
                if writer.is_closing():
                    break
                writer.write(b"X: y\r\n")
            reply = await read_reply(reader)
            assert reply.status == 408
            assert reply.header("connection") == "close"
            assert await read_eof(reader) == b""
            writer.close()
            assert (await fetch(server, get())).status == 200

    run(main())


def test_a_header_that_never_ends_is_bounded(run: Runner) -> None:
    async def main() -> None:
        async with serving(describe, limits=LIMITS) as server:
            reader, writer = await connect(server)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ")
            for _ in range(30):
                writer.write(b"v" * 50)
                await writer.drain()
                await asyncio.sleep(0.002)
            reply = await read_reply(reader)
            assert reply.status == 431
            assert await read_eof(reader) == b""
            writer.close()

    run(main())


def test_a_peer_that_stops_mid_request_is_closed(run: Runner) -> None:
    async def main() -> None:
        async with serving(describe) as server:
            for partial in (
                b"GET / HTTP/1.1\r\nHost: a",
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nabc",
            ):
                reader, writer = await connect(server)
                writer.write(partial)
                writer.write_eof()
                assert await read_eof(reader) == b""
                writer.close()
            # Answered requests before the cut still get their answers.
            reader, writer = await connect(server)
            writer.write(get("/done") + b"GET /cut HTTP/1.1\r\nHost: x\r\n")
            writer.write_eof()
            assert (await read_reply(reader)).body == b"GET /done  0:"
            assert await read_eof(reader) == b""
            writer.close()
            await wait_for(lambda: not server.connections)

    run(main())


def test_bad_request_corpus(run: Runner, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with serving(describe, limits=LIMITS) as server:
            for name, data, status in BAD_REQUESTS:
                reader, writer = await connect(server)
                writer.write(data)
                reply = await read_reply(reader)
                assert reply.status == status, name
                assert reply.header("connection") == "close", name
                assert await read_eof(reader) == b"", name
                writer.close()
            assert (await fetch(server, GOOD)).status == 200
            assert server.requests_processed == 1

    with caplog.at_level(logging.WARNING):
        run(main())
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_bad_request_behind_a_good_one_is_answered_in_order(run: Runner) -> None:
    async def app(request: HttpRequest) -> Response:
        await asyncio.sleep(0.02)
        return Response(b"first")

    async def main() -> None:
        async with serving(app) as server:
            reader, writer = await connect(server)
            writer.write(get("/1") + b"BAD REQUEST\r\n\r\n" + get("/never"))
            assert (await read_reply(reader)).body == b"first"
            refused = await read_reply(reader)
            assert refused.status == 400
            assert refused.header("connection") == "close"
            assert await read_eof(reader) == b""
            writer.close()

    run(main())


def test_a_broken_body_behind_a_slow_request(run: Runner) -> None:
    async def app(request: HttpRequest) -> Response:
        await asyncio.sleep(0.02)
        return Response(b"first")

    async def main() -> None:
        async with serving(app) as server:
            reader, writer = await connect(server)
            writer.write(
                get("/1")
                + b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab"
            )
            await writer.drain()
            await asyncio.sleep(0.005)
            writer.write(b"cX\r\n")
            assert (await read_reply(reader)).body == b"first"
            assert (await read_reply(reader)).status == 400
            assert await read_eof(reader) == b""
            writer.close()

    run(main())


def test_pipelined_mix_of_sync_and_async_handlers_with_bodies(run: Runner) -> None:
    async def later(request: HttpRequest) -> Response:
        await asyncio.sleep(0.01)
        return describe(request)

    def app(request: HttpRequest) -> Any:
        return later(request) if request.path.startswith("/async") else describe(request)

    async def main() -> None:
        async with serving(app) as server:
            reader, writer = await connect(server)
            requests = [
                get("/async1"),
                get("/sync1"),
                get("/sync2", "Content-Length: 3", method="POST") + b"abc",
                get("/async2", "Content-Length: 2", method="POST") + b"de",
                get("/sync3"),
            ]
            writer.write(b"".join(requests))
            bodies = [(await read_reply(reader)).body for _ in requests]
            assert bodies == [
                b"GET /async1  0:",
                b"GET /sync1  0:",
                b"POST /sync2  3:abc",
                b"POST /async2  2:de",
                b"GET /sync3  0:",
            ]
            writer.close()

    run(main())


def test_body_over_the_limit_while_an_async_handler_waits(run: Runner) -> None:
    async def main() -> None:
        async with serving(describe, limits=LIMITS) as server:
            reader, writer = await connect(server)
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(8):
                writer.write(b"c8\r\n" + b"x" * 200 + b"\r\n")
                await writer.drain()
            reply = await read_reply(reader)
            assert reply.status == 413
            assert await read_eof(reader) == b""
            writer.close()
            assert (await fetch(server, GOOD)).status == 200

    run(main())


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


VALID = [
    GOOD,
    b"POST /f HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /f HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"GET /g?x=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid request (or two, pipelined) with a few bytes replaced, dropped or added."""
    data = bytearray(b"".join(draw(st.lists(st.sampled_from(VALID), min_size=1, max_size=2))))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["replace", "drop", "insert"]))
        byte = draw(st.integers(0, 255))
        if action == "replace":
            data[at] = byte
        elif action == "drop":
            del data[at]
        else:
            data.insert(at, byte)
    return bytes(data)


RESPONSE_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) ")


def test_fuzzed_requests_in_every_chunking(run: Runner, caplog: pytest.LogCaptureFixture) -> None:
    """Any bytes, cut anywhere: the server answers or closes, and serves the next client."""
    factory = http_protocol_factory(describe, kind="raw", limits=LIMITS)

    async def start() -> TcpServer:
        server = TcpServer(factory, asyncio.get_running_loop(), address=("127.0.0.1", 0))
        await server.start_serving()
        return server

    server = run(start())

    async def exchange(chunks: list[bytes]) -> None:
        reader, writer = await connect(server)
        for chunk in chunks:
            writer.write(chunk)
        writer.write_eof()
        received = await read_eof(reader)
        writer.close()
        # Whatever came back is a sequence of whole answers.
        for status in RESPONSE_LINE.findall(received):
            assert int(status) in (200, 400, 413, 414, 431, 505), received
        if received:
            assert received.startswith(b"HTTP/1.1 "), received
        good = await fetch(server, GOOD)
        assert good.status == 200

    @settings(
        max_examples=50,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        data=st.one_of(st.binary(min_size=1, max_size=300), mutated()),
        cuts=st.lists(st.integers(0, 400), max_size=6),
    )
    def check(data: bytes, cuts: list[int]) -> None:
        run(exchange(_split(data, cuts)))

    try:
        with caplog.at_level(logging.ERROR):
            check()
    finally:
        run(server.close(1))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# ------------------------------------------------------------------ application errors
def test_handler_that_raises_gets_a_500_and_the_connection_is_kept(
    run: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    def app(request: HttpRequest) -> Response:
        if request.path == "/boom":
            raise RuntimeError("handler exploded")
        return Response(b"fine")

    async def main() -> None:
        async with serving(app) as server:
            reader, writer = await connect(server)
            writer.write(get("/boom") + get("/ok"))
            failed = await read_reply(reader)
            assert failed.status == 500
            assert failed.header("connection") is None
            assert (await read_reply(reader)).body == b"fine"
            writer.close()

    with caplog.at_level(logging.ERROR):
        run(main())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert "handler exploded" in str(errors[0].exc_info[1])


@pytest.mark.parametrize(
    "result", ["not a response", "bad header", "async raise", "async bad header", "async junk"]
)
def test_bad_handler_results_are_500s(
    run: Runner, caplog: pytest.LogCaptureFixture, result: str
) -> None:
    async def fails() -> Response:
        raise ValueError("async handler failed")

    async def bad_header() -> Response:
        return Response(b"x", headers=[("X-Split", "a\r\nInjected: yes")])

    async def junk() -> Any:
        return 42

    def app(request: HttpRequest) -> Any:
        if result == "not a response":
            return b"bytes are not a Response"
        if result == "bad header":
            return Response(b"x", headers=[("X-Split", "a\r\nInjected: yes")])
        if result == "async bad header":
            return bad_header()
        if result == "async junk":
            return junk()
        return fails()

    async def main() -> None:
        async with serving(app) as server:
            reply = await fetch(server, get())
            assert reply.status == 500
            assert reply.header("injected") is None

    with caplog.at_level(logging.ERROR):
        run(main())
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1


def _broken_sync() -> Any:
    yield b"partial"
    raise RuntimeError("stream broke")


def _broken_after_pause() -> Any:
    yield from [BLOCK] * 64  # enough to fill the buffers: the rest runs in a task
    raise RuntimeError("stream broke")


async def _broken_async() -> AsyncIterator[bytes]:
    yield b"partial"
    raise RuntimeError("stream broke")


@pytest.mark.parametrize("body", [_broken_sync, _broken_after_pause, _broken_async])
def test_stream_that_fails_midway_aborts_the_connection(
    run: Runner, caplog: pytest.LogCaptureFixture, body: Callable[[], Any]
) -> None:
    def app(request: HttpRequest) -> Response:
        return Response(body() if request.path == "/broken" else b"fine")

    async def main() -> None:
        async with serving(app) as server:
            reader, writer = await connect(server)
            writer.write(get("/broken"))
            with pytest.raises((asyncio.IncompleteReadError, ValueError, AssertionError)):
                await read_reply(reader)
            writer.close()
            assert (await fetch(server, get())).status == 200

    with caplog.at_level(logging.ERROR):
        run(main())
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1


def test_async_handler_that_outlives_its_client(
    run: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    done = asyncio.Event()

    async def app(request: HttpRequest) -> Response:
        await asyncio.sleep(0.05)
        done.set()
        return Response(b"nobody listens")

    async def main() -> None:
        async with serving(app) as server:
            _, writer = await connect(server)
            writer.write(get())
            await wait_for(lambda: bool(server.connections))
            await asyncio.sleep(0.01)
            reset(writer)
            await wait_for(lambda: not server.connections)
            await asyncio.wait_for(done.wait(), READ_TIMEOUT)
            await asyncio.sleep(0.01)
            assert (await fetch(server, GOOD)).status == 200
            assert server.requests_processed == 1

    with caplog.at_level(logging.WARNING):
        run(main())
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_max_requests_fires_once(run: Runner) -> None:
    async def main() -> None:
        async with serving(describe, max_requests=2) as server:
            fired: list[Any] = []
            server.bind_event("max_requests", lambda arg, **kw: fired.append(arg))
            reader, writer = await connect(server)
            writer.write(get() * 3)
            for _ in range(3):
                await read_reply(reader)
            assert fired == [server]
            writer.close()

    run(main())


class CountingServer(TcpServer):
    built = 0

    def build_consumer(self, consumer_factory: Any) -> ProtocolConsumer:
        CountingServer.built += 1
        return super().build_consumer(consumer_factory)


def test_a_producer_that_builds_its_consumers(run: Runner) -> None:
    async def main() -> None:
        factory = http_protocol_factory(describe, kind="raw")
        server = CountingServer(factory, asyncio.get_running_loop(), address=("127.0.0.1", 0))
        await server.start_serving()
        try:
            reader, writer = await connect(server)
            writer.write(get() * 2)
            for _ in range(2):
                assert (await read_reply(reader)).status == 200
            assert CountingServer.built == 2
            writer.close()
        finally:
            await server.close(1)

    CountingServer.built = 0
    run(main())


class ExplodingConsumer(HttpConsumer):
    """A consumer with a bug: the connection's firewall must contain it."""

    def on_message(self) -> None:
        raise KeyError("consumer bug")


def test_a_consumer_bug_closes_only_its_connection(
    run: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        factory = HttpProtocolFactory(describe, kind="raw", consumer_factory=ExplodingConsumer)
        async with serving(None, factory=factory) as server:
            reader, writer = await connect(server)
            writer.write(get())
            assert await read_eof(reader) == b""
            writer.close()
            reader, writer = await connect(server)
            writer.write(get())
            assert await read_eof(reader) == b""
            writer.close()

    with caplog.at_level(logging.ERROR):
        run(main())
    errors = [r for r in caplog.records if "unhandled error in consumer" in r.getMessage()]
    assert len(errors) == 2  # once per connection


def test_peer_reset_mid_request(run: Runner) -> None:
    async def main() -> None:
        async with serving(describe) as server:
            _, writer = await connect(server)
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial")
            await writer.drain()
            await wait_for(lambda: bool(server.connections))
            await asyncio.sleep(0.01)
            reset(writer)
            await wait_for(lambda: not server.connections)
            assert (await fetch(server, GOOD)).status == 200

    run(main())


# ----------------------------------------------------------------- streaming, upgrades
BLOCK = b"x" * 65536
BLOCKS = 128  # 8 MiB: far more than the socket and transport buffers hold


async def read_slowly(reader: asyncio.StreamReader, slow_reads: int = 5) -> bytes:
    """The body of one response, read a little at a time at first, then at full speed."""
    parts: list[bytes] = []
    done = asyncio.Event()

    class Parser:
        def on_body(self, body: bytes) -> None:
            parts.append(body)

        def on_message_complete(self) -> None:
            done.set()

    parser = httptools.HttpResponseParser(Parser())
    reads = 0
    while not done.is_set():
        data = await asyncio.wait_for(reader.read(4096 if reads < slow_reads else 1 << 20), 5)
        assert data, "connection closed before the whole body arrived"
        parser.feed_data(data)
        reads += 1
        if reads < slow_reads:
            await asyncio.sleep(0.01)
    return b"".join(parts)


def big_sync(request: HttpRequest) -> Response:
    return Response(BLOCK for _ in range(BLOCKS))


async def _blocks() -> AsyncIterator[bytes]:
    for _ in range(BLOCKS):
        yield BLOCK


def big_async(request: HttpRequest) -> Response:
    return Response(_blocks(), headers=[("Content-Length", str(BLOCKS * len(BLOCK)))])


@pytest.mark.parametrize("app", [big_sync, big_async], ids=["iterable", "async iterable"])
def test_slow_reader_gets_every_byte_with_flow_control(
    run: Runner, app: Callable[[HttpRequest], Response]
) -> None:
    async def main() -> None:
        async with serving(app) as server:
            reader, writer = await connect(server)
            writer.write(get())
            await wait_for(lambda: len(server.connections) == 1)
            (connection,) = server.connections
            assert isinstance(connection, Connection)
            await wait_for(lambda: connection.writing_paused)
            body = await read_slowly(reader)
            assert len(body) == BLOCKS * len(BLOCK)
            assert body.count(b"x") == len(body)
            writer.write(get("/after"))
            assert (await read_reply(reader)).status == 200
            assert server.requests_processed == 2
            writer.close()

    run(main())


def test_slow_reader_body_is_complete(run: Runner) -> None:
    async def main() -> None:
        async with serving(big_sync) as server:
            reader, writer = await connect(server)
            writer.write(get())
            await wait_for(lambda: any(c.writing_paused for c in server.connections))  # type: ignore[attr-defined]
            reply = await read_reply(reader)
            assert len(reply.body) == BLOCKS * len(BLOCK)
            assert reply.header("transfer-encoding") == "chunked"
            writer.close()

    run(main())


def test_upgrade_hands_the_following_bytes_to_the_new_consumer(run: Runner) -> None:
    def app(request: HttpRequest) -> Response:
        if request.header("upgrade") == "echo":
            request.connection.upgrade(Echo)
            return Response(status=101, headers=[("Upgrade", "echo"), ("Connection", "Upgrade")])
        return Response(b"plain http")

    async def main() -> None:
        async with serving(app) as server:
            reader, writer = await connect(server)
            writer.write(get("/", "Upgrade: echo", "Connection: Upgrade") + b"hello")
            switched = await read_reply(reader)
            assert switched.status == 101
            assert switched.header("connection") == "Upgrade"
            assert await reader.readexactly(5) == b"hello"
            writer.write(b"raw bytes")
            assert await reader.readexactly(9) == b"raw bytes"
            writer.close()

            # An upgrade the handler declines: HTTP goes on.
            reader, writer = await connect(server)
            writer.write(get("/", "Upgrade: other", "Connection: Upgrade") + get("/next"))
            assert (await read_reply(reader)).body == b"plain http"
            assert (await read_reply(reader)).body == b"plain http"
            writer.close()

    run(main())


def test_async_upgrade_holds_the_following_bytes(run: Runner) -> None:
    async def app(request: HttpRequest) -> Response:
        await asyncio.sleep(0.02)
        request.connection.upgrade(Echo)
        return Response(status=101, headers=[("Upgrade", "echo"), ("Connection", "Upgrade")])

    async def main() -> None:
        async with serving(app) as server:
            reader, writer = await connect(server)
            writer.write(get("/", "Upgrade: echo", "Connection: Upgrade") + b"early")
            await writer.drain()
            writer.write(b" bytes")
            assert (await read_reply(reader)).status == 101
            echoed = b""
            while len(echoed) < 11:
                echoed += await asyncio.wait_for(reader.read(100), READ_TIMEOUT)
            assert echoed == b"early bytes"
            writer.close()

    run(main())


def test_connect_that_is_not_tunnelled_closes(run: Runner) -> None:
    def app(request: HttpRequest) -> Response:
        return Response(b"no tunnels", status=405)

    async def main() -> None:
        async with serving(app) as server:
            reader, writer = await connect(server)
            writer.write(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\ntls...")
            reply = await read_reply(reader)
            assert reply.status == 405
            assert reply.body == b"no tunnels"
            assert await read_eof(reader) == b""
            writer.close()

    run(main())


# --------------------------------------------------------------------- the request API
def test_request_attributes(run: Runner) -> None:
    seen: list[HttpRequest] = []

    def app(request: HttpRequest) -> Response:
        seen.append(request)
        return Response(b"")

    async def main() -> None:
        async with serving(app) as server:
            raw = b"GET /a%20b/c?x=1&y=%20 HTTP/1.1\r\nHost: t\r\nX-Twice: 1\r\nx-twice: 2\r\n\r\n"
            assert (await fetch(server, raw)).status == 200
            assert (await fetch(server, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")).status == 200
            absolute = b"GET http://example.com/p%41th?q=v HTTP/1.1\r\nHost: x\r\n\r\n"
            assert (await fetch(server, absolute)).status == 200

    run(main())
    request, star, proxy = seen
    assert request.method == "GET"
    assert request.version == "1.1"
    assert request.target == b"/a%20b/c?x=1&y=%20"
    assert request.path == "/a b/c"
    assert request.raw_path == b"/a%20b/c"
    assert request.query == "x=1&y=%20"
    assert request.header("x-twice") == "1, 2"
    assert request.header("missing", "default") == "default"
    assert request.keep_alive and request.complete
    assert request.address[0] == "127.0.0.1"
    assert "GET" in repr(request)
    assert star.method == "OPTIONS" and star.path == "*"
    assert proxy.path == "/pAth" and proxy.query == "q=v"


def test_server_events_and_counts(run: Runner) -> None:
    async def main() -> None:
        async with serving(describe) as server:
            posts: list[Any] = []
            server.bind_event("post_request", lambda consumer, exc=None: posts.append(consumer))
            reader, writer = await connect(server)
            writer.write(get("/1") + get("/2"))
            for _ in range(2):
                await read_reply(reader)
            await wait_for(lambda: len(posts) == 2)
            assert all(isinstance(c, HttpConsumer) for c in posts)
            assert [c.request.path for c in posts] == ["/1", "/2"]
            assert posts[0] is not posts[1]
            (connection,) = server.connections
            assert isinstance(connection, HttpConnection)
            assert connection.processed == 2
            writer.close()

    run(main())


# ------------------------------------------------------------------------- pure pieces
def test_limits_are_validated() -> None:
    assert Limits().max_body == 1024 * 1024
    with pytest.raises(ValueError, match="max_headers"):
        Limits(max_headers=0)
    with pytest.raises(ValueError, match="max_body"):
        Limits(max_body=True)
    with pytest.raises(ValueError, match="body_timeout"):
        Limits(body_timeout=0)


def test_factory_arguments_are_validated() -> None:
    with pytest.raises(TypeError):
        http_protocol_factory("not callable")
    with pytest.raises(TypeError):
        wsgi_protocol_factory("not callable")  # type: ignore[arg-type]
    # The choice of WSGI lives above HTTP: http_protocol_factory serves raw handlers only.
    with pytest.raises(ValueError, match="wsgi_protocol_factory"):
        http_protocol_factory(describe, kind="wsgi")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="consumer_factory"):
        HttpProtocolFactory(describe, kind="asgi")
    with pytest.raises(ValueError, match="threads"):
        HttpProtocolFactory(describe, kind="raw", threads=2)
    with pytest.raises(ValueError, match="threads"):
        wsgi_protocol_factory(describe, threads=-1)  # type: ignore[arg-type]
    assert "raw" in repr(http_protocol_factory(describe, kind="raw"))
    assert "wsgi" in repr(wsgi_protocol_factory(describe, threads=2))  # type: ignore[arg-type]


def test_static_bytes() -> None:
    assert status_line(200) == b"HTTP/1.1 200 OK\r\n"
    assert status_line(599) == b"HTTP/1.1 599 \r\n"
    with pytest.raises(ValueError):
        status_line(1000)
    assert re.fullmatch(rb"date: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT\r\n", date_header())
    answer = error_response(431, "too many headers")
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"connection: close\r\n" in answer
    assert answer.endswith(b"\r\n\r\n431 Request Header Fields Too Large: too many headers\n")


def test_hello_worker_apps() -> None:
    from testapps import hello

    response = hello.raw(None)  # type: ignore[arg-type]
    assert response.body == b"Hello, World!"
    started: list[Any] = []
    body = hello.wsgi({}, lambda status, headers: started.append((status, headers)))
    assert list(body) == [b"Hello, World!"]
    assert started[0][0] == "200 OK"
    assert ("Content-Type", "text/plain") in started[0][1]


def test_plain_consumer_is_refused_by_type() -> None:
    # HttpConnection serves HttpConsumers; ProtocolConsumer subclasses are for raw bytes.
    assert issubclass(HttpConsumer, ProtocolConsumer)
