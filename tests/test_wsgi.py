"""WSGI apps on the HTTP consumer, inline and threaded, over loopback on both loops."""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pulsar_arbiter.http import Limits
from pulsar_arbiter.http.wsgi import STREAM_HIGH, WsgiInput, _encode_headers, _status, build_environ
from tests.conftest import Runner
from tests.consumers import wait_for
from tests.test_http import (
    BLOCK,
    BLOCKS,
    connect,
    fetch,
    get,
    read_eof,
    read_reply,
    read_slowly,
    serving,
)
from tests.test_http_state import checked_states  # noqa: F401 - a fixture
from tests.test_tls import self_signed

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], None]]

# Every state change a connection makes over loopback must be one the table lists.
pytestmark = pytest.mark.usefixtures("checked_states")

# Every behaviour holds inline (threads=0) and in a thread pool.
THREADS = pytest.mark.parametrize("threads", [0, 2], ids=["inline", "threaded"])


def hello(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello, World!"]


def echo(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [body]


@THREADS
def test_hello_keep_alive_and_pipelined(run: Runner, threads: int) -> None:
    async def main() -> None:
        async with serving(hello, kind="wsgi", threads=threads) as server:
            reader, writer = await connect(server)
            writer.write(get("/1") + get("/2") + get("/3"))
            for _ in range(3):
                reply = await read_reply(reader)
                assert reply.status == 200
                assert reply.body == b"Hello, World!"
                assert reply.header("content-length") == "13"
                assert reply.header("content-type") == "text/plain"
            writer.write(get("/4", "Connection: close"))
            assert (await read_reply(reader)).header("connection") == "close"
            assert await read_eof(reader) == b""
            writer.close()
            assert server.requests_processed == 4

    run(main())


@THREADS
def test_environ(run: Runner, threads: int) -> None:
    seen: list[Environ] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        seen.append(dict(environ))
        start_response("204 No Content", [])
        return []

    async def main() -> None:
        async with serving(app, kind="wsgi", threads=threads) as server:
            raw = (
                b"POST /a%20b/c?x=1&y=%20 HTTP/1.1\r\nHost: example.com:8080\r\n"
                b"Content-Type: text/plain\r\nContent-Length: 3\r\nX-Twice: 1\r\nx-twice: 2\r\n"
                b"Cookie: a=1\r\nCookie: b=2\r\nX_Spoofed: evil\r\n\r\nabc"
            )
            reply = await fetch(server, raw)
            assert reply.status == 204

    run(main())
    (environ,) = seen
    assert environ["REQUEST_METHOD"] == "POST"
    assert environ["SCRIPT_NAME"] == ""
    assert environ["PATH_INFO"] == "/a b/c"
    assert environ["QUERY_STRING"] == "x=1&y=%20"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["CONTENT_TYPE"] == "text/plain"
    assert environ["CONTENT_LENGTH"] == "3"
    assert "HTTP_CONTENT_TYPE" not in environ
    assert environ["HTTP_HOST"] == "example.com:8080"
    assert environ["HTTP_X_TWICE"] == "1,2"
    assert environ["HTTP_COOKIE"] == "a=1; b=2"
    assert "HTTP_X_SPOOFED" not in environ  # underscores could pose as dashes
    assert environ["REMOTE_ADDR"] == "127.0.0.1"
    assert int(environ["REMOTE_PORT"]) > 0
    assert environ["SERVER_NAME"] == "127.0.0.1"
    assert int(environ["SERVER_PORT"]) > 0
    assert environ["wsgi.version"] == (1, 0)
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi.multithread"] is bool(threads)
    assert environ["wsgi.multiprocess"] is True
    assert environ["wsgi.run_once"] is False
    assert environ["wsgi.input_terminated"] is True
    environ["wsgi.errors"].write("a line for the error log\n")
    environ["wsgi.errors"].writelines(["more\n"])
    environ["wsgi.errors"].flush()
    for key, value in environ.items():
        if key.isupper():
            assert type(value) is str, key  # PEP 3333: native strings


def test_environ_of_http10_and_absolute_targets(run: Runner) -> None:
    seen: list[Environ] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        seen.append(environ)
        start_response("200 OK", [])
        return [b""]

    async def main() -> None:
        async with serving(app, kind="wsgi") as server:
            await fetch(server, b"GET http://example.com/p?q HTTP/1.0\r\n\r\n")

    run(main())
    assert seen[0]["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert seen[0]["PATH_INFO"] == "/p"
    assert seen[0]["QUERY_STRING"] == "q"


@THREADS
def test_wsgi_input(run: Runner, threads: int) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        first = stream.readline()
        two = stream.read(2)
        rest = list(stream)
        start_response("200 OK", [])
        return [b"|".join([first, two, *rest, stream.read()])]

    async def main() -> None:
        async with serving(app, kind="wsgi", threads=threads) as server:
            body = b"line one\nxyline two\nthree"
            raw = get("/", f"Content-Length: {len(body)}", method="POST") + body
            reply = await fetch(server, raw)
            assert reply.body == b"line one\n|xy|line two\n|three|"
            chunked = (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nline \r\n4\r\none\n\r\n2\r\nab\r\n0\r\n\r\n"
            )
            assert (await fetch(server, chunked)).body == b"line one\n|ab|"

    run(main())


def test_threaded_input_streams_a_large_body(run: Runner) -> None:
    """Read as it arrives: the app sees the first bytes before the last are sent."""
    first_read = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        total = len(stream.read(1000))
        first_read.set()
        while True:
            data = stream.read(65536)
            if not data:
                break
            total += len(data)
        lines = stream.readlines()
        start_response("200 OK", [])
        return [str(total).encode(), str(len(lines)).encode()]

    async def main() -> None:
        size = 3 * 1024 * 1024
        async with serving(app, kind="wsgi", threads=1, limits=Limits(max_body=size)) as server:
            reader, writer = await connect(server)
            writer.write(get("/", f"Content-Length: {size}", method="POST"))
            writer.write(b"x" * 1000)
            await wait_for(first_read.is_set)
            for _ in range(size // 65536):
                writer.write(b"y" * 65536)
                await writer.drain()
            writer.write(b"z" * (size - 1000 - (size // 65536) * 65536))
            reply = await read_reply(reader)
            assert reply.body == str(size).encode() + b"0"
            writer.close()

    run(main())


@THREADS
def test_expect_100_continue(run: Runner, threads: int) -> None:
    async def main() -> None:
        async with serving(echo, kind="wsgi", threads=threads) as server:
            reader, writer = await connect(server)
            writer.write(get("/", "Content-Length: 4", "Expect: 100-continue", method="PUT"))
            assert (await read_reply(reader)).status == 100
            writer.write(b"data")
            assert (await read_reply(reader)).body == b"data"
            writer.close()

    run(main())


@THREADS
def test_body_over_the_limit(run: Runner, threads: int) -> None:
    async def main() -> None:
        limits = Limits(max_body=1000)
        async with serving(echo, kind="wsgi", threads=threads, limits=limits) as server:
            reader, writer = await connect(server)
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(8):
                writer.write(b"c8\r\n" + b"x" * 200 + b"\r\n")
            reply = await read_reply(reader)
            assert reply.status == 413
            assert reply.header("connection") == "close"
            assert await read_eof(reader) == b""
            writer.close()
            assert (await fetch(server, get())).status == 200

    run(main())


def test_a_threaded_app_may_answer_before_reading_the_body(run: Runner) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("403 Forbidden", [("Content-Length", "2")])
        return [b"no"]

    async def main() -> None:
        async with serving(app, kind="wsgi", threads=1) as server:
            reader, writer = await connect(server)
            writer.write(get("/", "Content-Length: 100000", method="POST") + b"x" * 1000)
            reply = await read_reply(reader)
            assert reply.status == 403
            # The body was not read: the connection cannot be reused.
            assert reply.header("connection") == "close"
            assert await read_eof(reader) == b""
            writer.close()

    run(main())


def test_threaded_apps_run_concurrently(run: Runner) -> None:
    barrier = threading.Barrier(2, timeout=5)

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        barrier.wait()  # both requests must be in the app at once
        start_response("200 OK", [])
        return [b"met"]

    async def main() -> None:
        async with serving(app, kind="wsgi", threads=2) as server:
            pairs = [await connect(server) for _ in range(2)]
            for _, writer in pairs:
                writer.write(get())
            for reader, writer in pairs:
                assert (await read_reply(reader)).body == b"met"
                writer.close()

    run(main())


# -------------------------------------------------------------------- start_response
@THREADS
def test_start_response_twice_without_exc_info_is_an_error(
    run: Runner, caplog: pytest.LogCaptureFixture, threads: int
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        start_response("201 Created", [])
        return [b""]

    async def main() -> None:
        async with serving(app, kind="wsgi", threads=threads) as server:
            assert (await fetch(server, get())).status == 500

    with caplog.at_level(logging.ERROR):
        run(main())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "second time" in str(errors[0].exc_info[1])  # type: ignore[index]


@THREADS
def test_exc_info_before_the_head_replaces_the_response(run: Runner, threads: int) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("X-First", "1")])
        try:
            raise ValueError("failed after start_response")
        except ValueError:
            start_response("503 Service Unavailable", [("X-Second", "2")], sys.exc_info())
        return [b"sorry"]

    async def main() -> None:
        async with serving(app, kind="wsgi", threads=threads) as server:
            reply = await fetch(server, get())
            assert reply.status == 503
            assert reply.header("x-second") == "2"
            assert reply.header("x-first") is None
            assert reply.body == b"sorry"

    run(main())


@THREADS
def test_exc_info_after_the_head_is_reraised(
    run: Runner, caplog: pytest.LogCaptureFixture, threads: int
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"first chunk"
        try:
            raise ValueError("failed mid-body")
        except ValueError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        yield b"never sent"

    async def main() -> None:
        async with serving(app, kind="wsgi", threads=threads) as server:
            reader, writer = await connect(server)
            writer.write(get())
            # The head and the first chunk went out; then the connection is aborted.
            with pytest.raises((ValueError, EOFError, AssertionError, ConnectionError)):
                await read_reply(reader)
            writer.close()

    with caplog.at_level(logging.ERROR):
        run(main())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "failed mid-body" in str(errors[0].exc_info[1])  # type: ignore[index]


@THREADS
def test_the_write_callable(run: Runner, threads: int) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written, ")
        write(b"")
        return [b"then returned"]

    async def main() -> None:
        async with serving(app, kind="wsgi", threads=threads) as server:
            reader, writer = await connect(server)
            writer.write(get() + get())
            for _ in range(2):
                reply = await read_reply(reader)
                assert reply.body == b"written, then returned"
                assert reply.header("transfer-encoding") == "chunked"
            writer.close()

    run(main())


class Tracked:
    """A response iterable that records whether the server closed it."""

    closed: list[str] = []

    def __init__(self, name: str, chunks: list[bytes], fail: bool = False) -> None:
        self.name = name
        self.chunks = chunks
        self.fail = fail

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.fail:
            raise RuntimeError("iteration failed")

    def close(self) -> None:
        Tracked.closed.append(self.name)


@THREADS
def test_iterables_are_closed(run: Runner, caplog: pytest.LogCaptureFixture, threads: int) -> None:
    Tracked.closed = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        name = environ["PATH_INFO"][1:]
        start_response("200 OK", [])
        return Tracked(name, [b"a", b"", b"b"], fail=name == "failing")

    async def main() -> None:
        async with serving(app, kind="wsgi", threads=threads) as server:
            assert (await fetch(server, get("/ok"))).body == b"ab"
            assert (await fetch(server, get("/head", method="HEAD"), head=True)).status == 200
            reader, writer = await connect(server)
            writer.write(get("/failing"))
            assert await read_eof(reader)  # a partial answer, then the abort
            writer.close()
            await wait_for(lambda: len(Tracked.closed) == 3)

    with caplog.at_level(logging.ERROR):
        run(main())
    assert sorted(Tracked.closed) == ["failing", "head", "ok"]


@THREADS
def test_app_that_raises_gets_a_500_logged_once_and_keeps_the_connection(
    run: Runner, caplog: pytest.LogCaptureFixture, threads: int
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/boom":
            raise RuntimeError("wsgi app exploded")
        start_response("200 OK", [])
        return [b"fine"]

    async def main() -> None:
        async with serving(app, kind="wsgi", threads=threads) as server:
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
    assert "wsgi app exploded" in str(errors[0].exc_info[1])


def _no_start_response(environ: Environ, start_response: StartResponse) -> Any:
    return [b"body"]


def _bad_status(environ: Environ, start_response: StartResponse) -> Any:
    start_response("OK", [])
    return []


def _bytes_header(environ: Environ, start_response: StartResponse) -> Any:
    start_response("200 OK", [(b"X", b"1")])
    return []


def _hop_by_hop(environ: Environ, start_response: StartResponse) -> Any:
    start_response("200 OK", [("Transfer-Encoding", "chunked")])
    return []


def _injection(environ: Environ, start_response: StartResponse) -> Any:
    start_response("200 OK", [("X", "a\r\nInjected: 1")])
    return []


def _not_iterable(environ: Environ, start_response: StartResponse) -> Any:
    start_response("200 OK", [])
    return 42


def _str_body(environ: Environ, start_response: StartResponse) -> Any:
    start_response("200 OK", [])
    return ["text, not bytes"]


def _str_chunk(environ: Environ, start_response: StartResponse) -> Any:
    start_response("200 OK", [])
    yield "text, not bytes"


BAD_APPS: dict[str, Callable[[Environ, StartResponse], Any]] = {
    "str body": _str_body,
    "str chunk": _str_chunk,
    "no start_response": _no_start_response,
    "bad status": _bad_status,
    "bytes header": _bytes_header,
    "hop-by-hop header": _hop_by_hop,
    "header injection": _injection,
    "not iterable": _not_iterable,
}


@pytest.mark.parametrize("name", sorted(BAD_APPS))
def test_protocol_violations_are_500s(
    run: Runner, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    async def main() -> None:
        async with serving(BAD_APPS[name], kind="wsgi") as server:
            reply = await fetch(server, get())
            assert reply.status == 500
            assert reply.header("injected") is None

    with caplog.at_level(logging.ERROR):
        run(main())
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1


@THREADS
def test_content_length_mismatches_close_the_connection(run: Runner, threads: int) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        declared = environ["PATH_INFO"][1:]
        start_response("200 OK", [("Content-Length", declared)])
        yield b"12345"
        yield b"67890"

    async def main() -> None:
        async with serving(app, kind="wsgi", threads=threads) as server:
            reader, writer = await connect(server)
            writer.write(get("/4") + get("/never"))
            reply = await read_reply(reader)
            assert reply.body == b"1234"  # truncated to what was announced
            assert await read_eof(reader) == b""
            writer.close()

            reader, writer = await connect(server)
            writer.write(get("/20"))
            with pytest.raises(asyncio.IncompleteReadError):
                await read_reply(reader)  # the close cuts the announced body short
            writer.close()

            reply = await fetch(server, get("/10"))
            assert reply.body == b"1234567890"

    run(main())


@THREADS
def test_head(run: Runner, threads: int) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"twelve bytes"]

    async def main() -> None:
        async with serving(app, kind="wsgi", threads=threads) as server:
            reader, writer = await connect(server)
            writer.write(get(method="HEAD") + get())
            head = await read_reply(reader, head=True)
            assert head.header("content-length") == "12"
            assert (await read_reply(reader)).body == b"twelve bytes"
            writer.close()

    run(main())


@THREADS
def test_app_connection_close_header_closes(run: Runner, threads: int) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Connection", "close")])
        return [b"bye"]

    async def main() -> None:
        async with serving(app, kind="wsgi", threads=threads) as server:
            reader, writer = await connect(server)
            writer.write(get() + get())
            reply = await read_reply(reader)
            assert reply.body == b"bye"
            assert reply.header("connection") == "close"
            assert await read_eof(reader) == b""
            writer.close()

    run(main())


# --------------------------------------------------------------------- flow control
def big(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Length", str(BLOCKS * len(BLOCK)))])
    for _ in range(BLOCKS):
        yield BLOCK


@THREADS
def test_slow_reader_gets_every_byte(run: Runner, threads: int) -> None:
    async def main() -> None:
        async with serving(big, kind="wsgi", threads=threads) as server:
            reader, writer = await connect(server)
            writer.write(get())
            await wait_for(lambda: len(server.connections) == 1)
            (connection,) = server.connections
            await wait_for(lambda: connection.writing_paused)  # type: ignore[attr-defined]
            body = await read_slowly(reader)
            assert len(body) == BLOCKS * len(BLOCK)
            writer.write(get())
            assert len((await read_reply(reader)).body) == BLOCKS * len(BLOCK)
            writer.close()

    run(main())


def test_threaded_writer_to_a_vanished_client_stops(run: Runner) -> None:
    Tracked.closed = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return Tracked("endless", [BLOCK] * 10_000)

    async def main() -> None:
        async with serving(app, kind="wsgi", threads=1) as server:
            reader, writer = await connect(server)
            writer.write(get())
            assert await reader.read(100)
            writer.transport.abort()
            await wait_for(lambda: Tracked.closed == ["endless"])

    run(main())


def test_build_environ_is_usable_alone(run: Runner) -> None:
    seen: list[Environ] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        seen.append(environ)
        start_response("200 OK", [])
        return []

    async def main() -> None:
        async with serving(app, kind="wsgi") as server:
            await fetch(server, get("/x"))

    run(main())
    assert seen[0]["PATH_INFO"] == "/x"
    assert callable(build_environ)


@THREADS
def test_a_close_that_raises_is_logged(
    run: Runner, caplog: pytest.LogCaptureFixture, threads: int
) -> None:
    class BadClose:
        def __iter__(self) -> Iterator[bytes]:
            yield b"body"

        def close(self) -> None:
            raise OSError("close failed")

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return BadClose()

    async def main() -> None:
        async with serving(app, kind="wsgi", threads=threads) as server:
            reader, writer = await connect(server)
            writer.write(get())
            assert (await read_reply(reader)).body == b"body"
            writer.close()

    with caplog.at_level(logging.ERROR):
        run(main())
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1


def test_threaded_app_waiting_for_a_stalled_body_times_out(
    run: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        limits = Limits(body_timeout=0.2)
        async with serving(echo, kind="wsgi", threads=1, limits=limits) as server:
            reader, writer = await connect(server)
            writer.write(get("/", "Content-Length: 10", method="POST") + b"abc")
            assert await read_eof(reader) == b""  # aborted: no half answer
            writer.close()
            assert (await fetch(server, get())).status == 200

    with caplog.at_level(logging.ERROR):
        run(main())


def test_threaded_client_gone_mid_body(run: Runner, caplog: pytest.LogCaptureFixture) -> None:
    entered = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        entered.set()
        environ["wsgi.input"].read()
        start_response("200 OK", [])
        return [b"unreachable"]

    async def main() -> None:
        async with serving(app, kind="wsgi", threads=1) as server:
            _, writer = await connect(server)
            writer.write(get("/", "Content-Length: 10", method="POST") + b"abc")
            await wait_for(entered.is_set)
            writer.transport.abort()
            await wait_for(lambda: not server.connections)
            assert (await fetch(server, get())).status == 200

    with caplog.at_level(logging.WARNING):
        run(main())
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# ------------------------------------------------------------------------ pure pieces
def test_status_strings() -> None:
    assert _status("200 OK") == (200, b"HTTP/1.1 200 OK\r\n")
    assert _status("299 Custom") == (299, b"HTTP/1.1 299 Custom\r\n")
    assert _status("404") == (404, b"HTTP/1.1 404 Not Found\r\n")
    for bad in ("OK", "20 OK", "200OK", "099 Low", "200 OK\r\nX: 1", b"200 OK"):
        with pytest.raises(ValueError):
            _status(bad)


def test_response_headers() -> None:
    block, length, close = _encode_headers(
        [("Content-Type", "text/plain"), ("Content-Length", "5"), ("Date", "then")]
    )
    assert block == b"Content-Type: text/plain\r\n"
    assert (length, close) == (5, False)
    assert _encode_headers([("Connection", "Close")]) == (b"", None, True)
    bad_headers: list[Any] = [
        (("X", "1"),),
        [["X", "a list"]],
        [("X", "1", "extra")],
        [("X", 1)],
        [("X:Y", "1")],
        [("Content-Length", "-1")],
        [("Upgrade", "h2c")],
    ]
    for headers in bad_headers:
        with pytest.raises((TypeError, ValueError)):
            _encode_headers(headers)


class FakeLoop:
    """Runs what a thread hands to the loop at once, in that thread."""

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any) -> None:
        callback(*args)


class FakeConnection:
    """What WsgiInput needs from its connection: its public reading holds and loop."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.limits = Limits(body_timeout=timeout)
        self.loop = FakeLoop()
        self.holds: list[str] = []

    def hold_reading(self, reason: int) -> None:
        self.holds.append("hold")

    def release_reading(self, reason: int) -> None:
        self.holds.append("release")

    def abort(self) -> None:
        self.holds.append("abort")


def test_wsgi_input_reads() -> None:
    stream = WsgiInput(FakeConnection(), b"one\ntwo\nthr", False)
    stream.feed(b"ee\nfour")
    stream.feed_eof()
    assert stream.readline(2) == b"on"
    assert stream.readline() == b"e\n"
    assert stream.readlines(1) == [b"two\n"]
    assert stream.read(3) == b"thr"
    assert list(stream) == [b"ee\n", b"four"]
    assert stream.read() == b""
    assert stream.read(5) == b""


def test_wsgi_input_waits_for_bytes_and_fails_cleanly() -> None:
    connection = FakeConnection()
    stream = WsgiInput(connection, b"", False)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(stream.read(6)))
    reader.start()
    stream.feed(b"abc")
    stream.feed(b"def")
    reader.join(5)
    assert got == [b"abcdef"]
    stream.feed(b"x" * (STREAM_HIGH + 1))
    assert connection.holds == ["hold"]
    stream.fail(ConnectionResetError("gone"))
    assert len(stream.read(STREAM_HIGH + 1)) == STREAM_HIGH + 1
    assert connection.holds == ["hold", "release"]
    with pytest.raises(ConnectionResetError):
        stream.read(1)
    slow = FakeConnection(timeout=0.05)
    timed = WsgiInput(slow, b"", False)
    with pytest.raises(TimeoutError):
        timed.readline()
    assert slow.holds == ["abort"]


def test_over_tls(run: Runner, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    schemes: list[str] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        schemes.append(environ["wsgi.url_scheme"])
        start_response("200 OK", [])
        return [b"private"]

    async def main() -> None:
        async with serving(app, kind="wsgi", sslcontext=server_ctx) as server:
            port = server.address[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
            writer.write(get() + get())
            for _ in range(2):
                assert (await read_reply(reader)).body == b"private"
            writer.write(b"NOT HTTP\r\n\r\n")
            assert (await read_reply(reader)).status == 400
            assert await read_eof(reader) == b""
            writer.close()

    run(main())
    assert schemes == ["https", "https"]
