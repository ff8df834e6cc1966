"""WSGI (PEP 3333) applications on the HTTP consumer: inline, or in a thread pool.

Inline (the default, like a sync worker with one loop per process): the application runs
in the loop's thread once the whole request has arrived; ``wsgi.input`` is the buffered
body (bounded by ``Limits.max_body``). Simple and the cheapest per request, but an app
that blocks blocks the worker's loop for that long.

Threaded (``threads=N``): the application runs in a pool of N threads and the loop keeps
serving. A request with a body is handed to its thread as soon as its head has arrived:
``wsgi.input`` streams the body as it arrives (reading pauses while the app has not read
what it was given). Response bytes go back to the loop in order; a thread that writes
faster than the client reads waits for the transport to drain.

Both follow PEP 3333: ``start_response`` may be called again only with ``exc_info`` (and
re-raises it once the head is out), returns the legacy ``write`` callable, and headers go
out with the first non-empty body chunk; the iterable's ``close`` is always called. An app
that raises gets a 500 (logged once with its traceback) if nothing was sent yet, else its
connection is aborted. Hop-by-hop headers are refused, except ``Connection: close``, which
closes the connection after the response. Request headers whose names contain ``_`` are
dropped from the environ, so ``X_Forwarded_For`` cannot pose as ``X-Forwarded-For``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, ClassVar

from mypy_extensions import mypyc_attr

from .connection import HOLD_STREAM, HttpConnection
from .consumer import HttpConsumer
from .factory import HttpProtocolFactory
from .limits import Limits
from .request import HttpRequest
from .wire import status_line

__all__ = [
    "ThreadedWsgiConsumer",
    "WsgiConsumer",
    "WsgiInput",
    "build_environ",
    "wsgi_protocol_factory",
]

LOGGER = logging.getLogger("pulsar_arbiter.wsgi")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], None]]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

# Body bytes a threaded app may leave unread before the connection stops reading: enough
# for a few socket reads, small next to Limits.max_body.
STREAM_HIGH = 256 * 1024
STREAM_LOW = 64 * 1024
# Bytes a thread may hand to the loop before it waits for them to be written: bounds what
# a fast app can queue for a slow client (the transport's own buffer comes on top).
THREAD_WRITE_SYNC = 256 * 1024
# Entries of the caches below before they are cleared: header names and response header
# lists repeat, but a peer or an app could otherwise grow them without bound.
CACHE_SIZE = 512

_HOP_BY_HOP = frozenset(
    (
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
    )
)
_UNKNOWN: Any = object()
_environ_keys: dict[bytes, str | None] = {}
_status_lines: dict[str, tuple[int, bytes]] = {}
_header_blocks: dict[Any, tuple[bytes, int | None, bool]] = {}


@mypyc_attr(allow_interpreted_subclasses=True)
class _ErrorStream:
    """``wsgi.errors``: what the app writes goes to the ``pulsar_arbiter.wsgi`` logger."""

    def write(self, text: str) -> int:
        text = text.rstrip("\n")
        if text:
            LOGGER.error("%s", text)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        return None


ERRORS = _ErrorStream()


def _environ_key(name: bytes) -> str | None:
    """The environ key of request header ``name``; None for names with an underscore."""
    key: str | None = None
    if b"_" not in name:
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        if key in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
            key = key[5:]
    if len(_environ_keys) >= CACHE_SIZE:
        _environ_keys.clear()
    _environ_keys[name] = key
    return key


def _base_environ(connection: HttpConnection, multithread: bool) -> dict[str, Any]:
    transport = connection.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    peername = transport.get_extra_info("peername") if transport is not None else None
    ssl = transport.get_extra_info("sslcontext") if transport is not None else None
    if isinstance(sockname, tuple):
        server_name, server_port = str(sockname[0]), str(sockname[1])
    else:
        server_name, server_port = str(sockname or "localhost"), ""
    if isinstance(peername, tuple):
        remote_addr, remote_port = str(peername[0]), str(peername[1])
    else:
        remote_addr, remote_port = str(peername or ""), ""
    return {
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https" if ssl is not None else "http",
        "wsgi.errors": ERRORS,
        "wsgi.multithread": multithread,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "SCRIPT_NAME": "",
        "SERVER_NAME": server_name,
        "SERVER_PORT": server_port,
        "REMOTE_ADDR": remote_addr,
        "REMOTE_PORT": remote_port,
        "SERVER_SOFTWARE": "pulsar-arbiter",
    }


def build_environ(request: HttpRequest, stream: Any, multithread: bool = False) -> dict[str, Any]:
    """The PEP 3333 environ of ``request``, with ``stream`` as ``wsgi.input``."""
    connection = request.connection
    base: dict[str, Any] | None = connection.adapter_state
    if base is None:
        base = connection.adapter_state = _base_environ(connection, multithread)
    environ = base.copy()
    target = request.target
    if target[:1] == b"/":
        path, _, query = target.partition(b"?")
    else:
        path, query = request.split_target()
    environ["REQUEST_METHOD"] = request.method
    environ["PATH_INFO"] = (
        path.decode("latin-1") if b"%" not in path else _unquote(path).decode("latin-1")
    )
    environ["QUERY_STRING"] = query.decode("latin-1")
    environ["SERVER_PROTOCOL"] = "HTTP/1.1" if request.version == "1.1" else "HTTP/1.0"
    environ["wsgi.input"] = stream
    keys = _environ_keys
    for name, value in request.headers:
        key = keys.get(name, _UNKNOWN)
        if key is _UNKNOWN:
            key = _environ_key(name)
        if key is None:
            continue
        if key in environ:
            sep = "; " if key == "HTTP_COOKIE" else ","
            environ[key] += sep + value.decode("latin-1")
        else:
            environ[key] = value.decode("latin-1")
    if target[:1] != b"/":
        authority = request.authority
        if authority is not None and target != b"*":
            # RFC 9112, 3.2.2: an absolute-form target's host replaces the Host field.
            environ["HTTP_HOST"] = authority.decode("latin-1")
    return environ


def _unquote(path: bytes) -> bytes:
    from urllib.parse import unquote_to_bytes

    return unquote_to_bytes(path)


def _status(status: Any) -> tuple[int, bytes]:
    """The code and status line of a WSGI status string such as ``"200 OK"``.

    ``status`` is whatever the app gave (Any: as a compiled ``str`` parameter, bytes would
    fail with a TypeError before the check below says what is wrong).
    """
    cached = _status_lines.get(status)
    if cached is not None:
        return cached
    if (
        type(status) is not str
        or len(status) < 3
        or not status[:3].isdigit()
        or (len(status) > 3 and status[3] != " ")
        or "\r" in status
        or "\n" in status
    ):
        raise ValueError(f"invalid WSGI status {status!r}: expected e.g. '200 OK'")
    code = int(status[:3])
    if code < 100:
        raise ValueError(f"invalid WSGI status {status!r}")
    line = (
        b"HTTP/1.1 " + status.encode("latin-1") + b"\r\n" if len(status) > 4 else status_line(code)
    )
    if len(_status_lines) >= CACHE_SIZE:
        _status_lines.clear()
    result = _status_lines[status] = (code, line)
    return result


def _encode_headers(headers: list[tuple[str, str]]) -> tuple[bytes, int | None, bool]:
    """(header block, Content-Length or None, close) of a WSGI header list, validated."""
    try:
        key: Any = tuple(headers)
        cached = _header_blocks.get(key)
    except TypeError:  # unhashable items (lists): encode without the cache
        key, cached = None, None
    if cached is not None:
        return cached
    if type(headers) is not list:
        raise TypeError(f"WSGI response headers must be a list, got {type(headers).__name__}")
    parts: list[bytes] = []
    length: int | None = None
    close = False
    for item in headers:
        if type(item) is not tuple or len(item) != 2:
            raise TypeError(f"WSGI response header must be a (name, value) tuple, got {item!r}")
        name, value = item
        if type(name) is not str or type(value) is not str:
            raise TypeError(f"WSGI response header name and value must be str: {item!r}")
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"invalid character in WSGI response header {item!r}")
        lname = name.lower()
        if lname == "content-length":
            length = int(value)
            if length < 0:
                raise ValueError(f"negative Content-Length {value!r}")
            continue
        if lname == "connection":
            close = "close" in value.lower()
            continue
        if lname == "date":
            continue  # the server's own, cached per second
        if lname in _HOP_BY_HOP:
            raise ValueError(f"hop-by-hop header {name!r} is not allowed in a WSGI response")
        parts.append(name.encode("latin-1") + b": " + value.encode("latin-1") + b"\r\n")
    result = (b"".join(parts), length, close)
    if key is not None:
        if len(_header_blocks) >= CACHE_SIZE:
            _header_blocks.clear()
        _header_blocks[key] = result
    return result


@mypyc_attr(allow_interpreted_subclasses=True)
class WsgiConsumer(HttpConsumer):
    """Runs the connection's WSGI app inline, once the whole request has arrived."""

    _response: tuple[int, bytes, bytes, int | None, bool] | None = None
    multithread: ClassVar[bool] = False

    def on_message(self) -> None:
        request = self._request
        environ = build_environ(request, io.BytesIO(request.body), self.multithread)
        try:
            result = self._connection.app(environ, self.start_response)
            data = self._whole_response(result)
        except Exception as exc:
            self.body_failed(exc)
            return
        if data is not None:
            self._write_raw(data)
            self.end_request()
            return
        close = getattr(result, "close", None)
        try:
            iterator = iter(result)
        except Exception as exc:
            self._close_iterable(close)
            self.body_failed(exc)
            return
        self.stream(iterator, close)

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
    ) -> Callable[[bytes], None]:
        """PEP 3333 ``start_response``; returns the ``write`` callable."""
        if exc_info is not None:
            try:
                if self._head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self._response is not None:
            raise RuntimeError("start_response called a second time without exc_info")
        code, line = _status(status)
        block, length, close = _encode_headers(headers)
        self._response = (code, line, block, length, close)
        return self.wsgi_write

    def wsgi_write(self, data: bytes) -> None:
        """The legacy ``write`` callable: inline, it buffers in the transport."""
        self.send_body(data)

    def _whole_response(self, result: Any) -> bytes | None:
        """Head and body of a list or tuple result, framed with a Content-Length."""
        if type(result) is not list and type(result) is not tuple:
            return None
        response = self._response
        if response is None or self._head_sent:
            return None
        code, line, block, length, close = response
        body = result[0] if len(result) == 1 else b"".join(result)
        if type(body) is not bytes:
            return None  # the general path says what is wrong with it
        if length is None:
            length = len(body)
        elif length != len(body):
            return None
        head = self.frame(code, line, block, length, None, close)
        self._head_sent = True
        self._length_left = None
        return head if self._no_body else head + body

    def _frame_late(self) -> bytes:
        response = self._response
        if response is None:
            raise RuntimeError("the WSGI app returned body bytes before calling start_response")
        code, line, block, length, close = response
        return self.frame(code, line, block, length, None, close)

    def _encode_body(self, chunk: object) -> bytes:
        if self._head is None and not self._head_sent:
            self._head = self._frame_late()
        return HttpConsumer._encode_body(self, chunk)


@mypyc_attr(allow_interpreted_subclasses=True)
class ThreadedWsgiConsumer(WsgiConsumer):
    """Runs the connection's WSGI app in the factory's thread pool.

    A request with a body is handed over as soon as its head arrived, with a streaming
    ``wsgi.input``; one without, once complete.
    """

    multithread: ClassVar[bool] = True
    _input: Any = None
    _lost = False
    _unsynced = 0

    def on_head(self) -> None:
        request = self._request
        if request.has_body and not request.complete:
            stream = WsgiInput(self._connection, request.body, request.complete)
            request.body_stream = stream
            self._submit(stream)

    def on_message(self) -> None:
        if self._input is None:
            self._submit(io.BytesIO(self._request.body))

    def _submit(self, stream: Any) -> None:
        self._input = stream
        http = self._connection.http
        assert http is not None, "a threaded WSGI consumer needs its HttpProtocolFactory"
        http.executor.submit(self._run)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost = True
        stream = self._input
        if isinstance(stream, WsgiInput):
            stream.fail(exc or ConnectionResetError("connection lost"))
        super().connection_lost(exc)

    # -- in the worker thread
    def _run(self) -> None:
        loop = self._connection.loop
        close = None
        try:
            environ = build_environ(self._request, self._input, True)
            result = self._connection.app(environ, self.start_response)
            close = getattr(result, "close", None)
            if not self._whole_from_thread(result):
                for chunk in result:
                    if chunk:
                        self._post(self._encode_body(chunk), False)
                self._post(self._end_bytes(), True)
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody to answer
                loop.call_soon_threadsafe(self._thread_failed, exc)
        finally:
            if close is not None:
                try:
                    close()
                except Exception:
                    self._connection.logger.exception("error closing the response of %r", self)

    def _whole_from_thread(self, result: Any) -> bool:
        data = self._whole_response(result)
        if data is None:
            return False
        self._post(data, True)
        return True

    def _end_bytes(self) -> bytes:
        tail = self._encode_body(b"")
        if self._chunked:
            tail += b"0\r\n\r\n"
        elif self._length_left:
            self._keep = False
        return tail

    def wsgi_write(self, data: bytes) -> None:
        """The legacy ``write`` callable: waits while the client is slow to read."""
        self._post(self._encode_body(data), False)

    def _post(self, data: bytes, end: bool) -> None:
        if self._lost:
            raise ConnectionResetError("connection lost while answering")
        loop = self._connection.loop
        loop.call_soon_threadsafe(self._deliver, data, end)
        if end:
            return
        self._unsynced += len(data)
        if self._unsynced > THREAD_WRITE_SYNC:
            self._unsynced = 0
            future = asyncio.run_coroutine_threadsafe(self._drained(), loop)
            try:
                future.result(self._connection.limits.body_timeout)
            except concurrent.futures.TimeoutError:
                future.cancel()
                loop.call_soon_threadsafe(self._connection.abort)
                raise

    # -- back on the loop
    async def _drained(self) -> None:
        if self._lost or self._finished:
            raise ConnectionResetError("connection lost while answering")
        await self._connection.drain()

    def _deliver(self, data: bytes, end: bool) -> None:
        if self._finished:
            return
        if data:
            self._write_raw(data)
        if end:
            self.end_request()

    def _thread_failed(self, exc: BaseException) -> None:
        if self._finished:
            LOGGER.debug("%r failed after its request ended: %r", self, exc)
            return
        self.body_failed(exc)


@mypyc_attr(allow_interpreted_subclasses=True)
class WsgiInput:
    """``wsgi.input`` of a threaded app: the body as it arrives, read with blocking calls.

    The loop feeds it (``feed``, ``feed_eof``, ``fail``); the app's thread reads it. Reads
    wait at most ``Limits.body_timeout`` for more bytes. While more than ``STREAM_HIGH``
    unread bytes are buffered the connection stops reading.
    """

    def __init__(self, connection: Any, initial: bytes, eof: bool) -> None:
        # connection: an HttpConnection (Any: anything with its limits and read holds).
        self._connection = connection
        self._cond = threading.Condition()
        self._buffer = bytearray(initial)
        self._eof = eof
        self._error: BaseException | None = None
        self._held = False
        self._timeout = connection.limits.body_timeout

    # -- the loop's side
    def feed(self, data: bytes) -> None:
        with self._cond:
            self._buffer += data
            self._cond.notify_all()
            if len(self._buffer) > STREAM_HIGH and not self._held:
                self._held = True
                self._connection.hold_reading(HOLD_STREAM)

    def feed_eof(self) -> None:
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self._cond:
            if self._error is None and not self._eof:
                self._error = exc
            self._cond.notify_all()

    # -- the app's side
    def _wait(self, ready: Callable[[], bool]) -> None:
        cond = self._cond
        while not ready():
            if self._error is not None:
                raise self._error
            if self._eof:
                return
            if not cond.wait(self._timeout):
                error = TimeoutError(f"no request body bytes for {self._timeout}s")
                self._error = error
                self._connection.loop.call_soon_threadsafe(self._connection.abort)
                raise error

    def _take(self, size: int) -> bytes:
        buffer = self._buffer
        data = bytes(buffer[:size])
        del buffer[:size]
        if self._held and len(buffer) < STREAM_LOW:
            self._held = False
            self._connection.loop.call_soon_threadsafe(
                self._connection.release_reading, HOLD_STREAM
            )
        return data

    def read(self, size: int | None = -1) -> bytes:
        with self._cond:
            if size is None or size < 0:
                self._wait(lambda: False)
                return self._take(len(self._buffer))
            self._wait(lambda: len(self._buffer) >= size)
            return self._take(size)

    def readline(self, size: int | None = -1) -> bytes:
        with self._cond:
            limit = -1 if size is None else size

            def ready() -> bool:
                return b"\n" in self._buffer or 0 <= limit <= len(self._buffer)

            self._wait(ready)
            end = self._buffer.find(b"\n") + 1 or len(self._buffer)
            if limit >= 0:
                end = min(end, limit)
            return self._take(end)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line


def wsgi_protocol_factory(
    app: WsgiApp, threads: int = 0, limits: Limits | None = None
) -> HttpProtocolFactory:
    """The protocol factory serving WSGI application ``app`` over HTTP/1.1.

    ``threads`` = 0 runs the app inline in the loop's thread; N > 0 runs it in a pool of
    N threads (see the module docstring). ``limits`` bounds what a peer may send. Serve it
    with ``TcpServer(wsgi_protocol_factory(app), loop, address=...)``.
    """
    if not isinstance(threads, int) or threads < 0:
        raise ValueError(f"threads must be a non-negative integer, got {threads!r}")
    consumer = ThreadedWsgiConsumer if threads else WsgiConsumer
    return HttpProtocolFactory(
        app, kind="wsgi", threads=threads, limits=limits, consumer_factory=consumer
    )
