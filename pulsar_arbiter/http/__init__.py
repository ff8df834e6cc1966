"""HTTP/1.1 on the Protocols/Transports API: a connection, consumers, a raw handler API.

Shape
-----
One :class:`HttpConnection` per socket owns one ``httptools`` parser, so the byte stream
is parsed exactly once however it is chunked. Each request gets its own
:class:`HttpConsumer` (the API's model: one consumer per request), built when the request
is *dispatched*: as soon as its head is complete if a body follows (so the body can be
streamed, or ``Expect: 100-continue`` answered), else when the request is complete.
Requests that arrive while another is being answered (pipelining) wait, already parsed,
in a bounded queue; the next is dispatched when the current consumer calls
``finished()``, so answers always go out in request order, and reading pauses while the
queue is full.

Errors go by fault:

* malformed bytes or a limit broken by the peer (see :class:`Limits`) get a 400, 413,
  414, 431 or 505 answer with ``Connection: close`` and a one-line reason, in request
  order; that connection then closes (lingering, so the answer is not lost to a reset);
* an application that raises gets a 500, logged once with its traceback; the connection
  is kept when the response had not started and the request was read whole, else closed;
* a bug in a consumer closes that connection only and is logged (the Connection's
  firewall); the worker is never harmed.

Raw handlers
------------
The fastest way to answer: ``handler(request: HttpRequest) -> Response``, or an
``async def`` handler returning a Response. It is called once the whole request has
arrived (``request.body``, bounded by ``Limits.max_body``). A plain function returning a
Response costs no task, no future and no thread hop; an ``async def`` handler costs one
task (it is not cancelled if the client goes away: its answer is dropped). A Response
encodes its status line and headers on first use and caches them, so a response built
once at import time and returned for every request costs no encoding at all::

    HELLO = Response(b"Hello, World!", content_type="text/plain")

    def hello(request: HttpRequest) -> Response:
        return HELLO

    server = TcpServer(http_protocol_factory(hello, kind="raw"), loop, address=...)

``Response.body`` may be bytes, an iterable of bytes or an async iterable of bytes; the
iterables are streamed with write flow control, ``chunked`` unless a ``content-length``
header is given. The server owns framing: ``content-length`` of a bytes body,
``transfer-encoding``, ``date`` and ``connection`` are computed per request. A raw handler
may upgrade the connection (``request.connection.upgrade(consumer_factory)``) and answer
``Response(status=101, headers=[("upgrade", ...), ("connection", "Upgrade")])``: the bytes
after that request go to the new consumer.

WSGI applications are served by :mod:`pulsar_arbiter.wsgi`;
:func:`http_protocol_factory` builds the protocol factory a TcpServer needs for either.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import unquote_to_bytes

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpRequestParser,
    parse_url,
)

from ..events import OneTime
from ..protocols import MAX_BUFFERED_PIPELINE, NO_WRITE, Connection, Handoff, ProtocolConsumer

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

__all__ = [
    "HttpConnection",
    "HttpConsumer",
    "HttpProtocolFactory",
    "HttpRequest",
    "Limits",
    "RawHttpConsumer",
    "Response",
    "http_protocol_factory",
]

# ----------------------------------------------------------------------------- bounds
# The request-target of one request line. 8190 is Apache's LimitRequestLine and
# gunicorn's ceiling: longer URLs are almost always attacks or bugs, and browsers, proxies
# and CDNs cap URLs near 8 KiB anyway. Broken: 414.
MAX_REQUEST_LINE = 8190
# Header fields per request. 100 is Apache's LimitRequestFields and gunicorn's default;
# real clients send 5 to 30. Broken: 431.
MAX_HEADERS = 100
# One header field, name plus value. 8190 is Apache's LimitRequestFieldSize and gunicorn's
# limit_request_field_size: large cookies and bearer tokens fit. Broken: 431.
MAX_HEADER_SIZE = 8190
# The whole head (request line and headers): what one request may make us hold before
# anything is dispatched. 64 KiB lets a few large cookies through and bounds the memory a
# slow sender of headers ties up. Broken: 431.
MAX_HEAD_SIZE = 64 * 1024
# A request body. 1 MiB is nginx's client_max_body_size default: enough for forms and
# JSON APIs, and since inline apps get the body buffered, it bounds what one connection
# holds. Uploads need it raised, per server. Broken: 413, announced (Content-Length) or not
# (chunked).
MAX_BODY = 1024 * 1024
# Parsed requests waiting behind the one being answered (pipelining) before reading
# pauses. Browsers do not pipeline; benchmark tools pipeline 16 or so. 64 keeps a fast
# pipelining client busy while bounding what a client that never reads can queue.
MAX_PIPELINE = 64
# Seconds a connection closed for a peer error keeps reading (and discarding) before it
# closes: closing with unread bytes makes the kernel send a reset, which can destroy the
# error answer before the client reads it. Bounded, so a client that keeps sending
# cannot keep the socket.
LINGER_SECONDS = 2.0
# Why reading is paused, besides write back-pressure (flags of HttpConnection._holds).
HOLD_PIPELINE = 1  # too many requests, or too many body bytes, queued behind the current one
HOLD_STREAM = 2  # a threaded app has not read the body bytes it was given
HOLD_UPGRADE = 4  # bytes after an upgrade request wait for its answer
HOLD_ALL = HOLD_PIPELINE | HOLD_STREAM | HOLD_UPGRADE
# Bodies at least this long are written apart from their head instead of joined to it:
# copying a large body to prepend 100 bytes costs more than a second write call.
JOIN_BODY_LIMIT = 16 * 1024


@dataclass(frozen=True)
class Limits:
    """Bounds on what a peer may send; each broken bound is answered and closes.

    ``max_request_line`` (414) bounds the request-target; ``max_headers`` and
    ``max_header_size`` (one field) and ``max_head_size`` (all of them, 431) bound the
    head; ``max_body`` (413) bounds a body, announced or chunked; ``max_pipeline`` is how
    many parsed requests may wait behind the one being answered before reading pauses;
    ``body_timeout`` is how long a threaded WSGI app waits for more body bytes.
    """

    max_request_line: int = MAX_REQUEST_LINE
    max_headers: int = MAX_HEADERS
    max_header_size: int = MAX_HEADER_SIZE
    max_head_size: int = MAX_HEAD_SIZE
    max_body: int = MAX_BODY
    max_pipeline: int = MAX_PIPELINE
    body_timeout: float = 60.0

    def __post_init__(self) -> None:
        for name in (
            "max_request_line",
            "max_headers",
            "max_header_size",
            "max_head_size",
            "max_body",
            "max_pipeline",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer, got {value!r}")
        if not self.body_timeout > 0:
            raise ValueError(f"Limits.body_timeout must be positive, got {self.body_timeout!r}")


DEFAULT_LIMITS = Limits()

# ------------------------------------------------------------------------ static bytes
CRLF = b"\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CHUNKED_END = b"0\r\n\r\n"
CONNECTION_CLOSE = b"connection: close\r\n"
CONNECTION_KEEP_ALIVE = b"connection: keep-alive\r\n"
TRANSFER_CHUNKED = b"transfer-encoding: chunked\r\n"

STATUS_LINES: dict[int, bytes] = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode("latin-1"))
    for status in HTTPStatus
}

_METHODS: dict[bytes, str] = {
    m.encode(): m
    for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE")
}

# Request headers the connection itself looks at, by length: one dict lookup per header.
_SPECIAL_BY_LENGTH = {
    len(name): name for name in (b"content-length", b"connection", b"expect", b"transfer-encoding")
}
# Headers whose value the server computes: given by a raw handler they are replaced.
_FRAMING = frozenset((b"content-length", b"transfer-encoding", b"connection", b"date"))


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n`` for any status from 100 to 999."""
    line = STATUS_LINES.get(status)
    if line is None:
        if not isinstance(status, int) or not 100 <= status <= 999:
            raise ValueError(f"invalid HTTP status {status!r}")
        line = b"HTTP/1.1 %d \r\n" % status
    return line


def _no_body_status(status: int) -> bool:
    return status < 200 or status == 204 or status == 304


# The Date header, formatted at most once a second (it has a one-second resolution).
_date_expires = 0.0
_date_line = b""
_time = time.time


def date_header() -> bytes:
    """``date: <IMF-fixdate>\\r\\n`` for the current second, cached."""
    global _date_expires, _date_line
    now = _time()
    if now >= _date_expires:
        second = int(now)
        _date_line = b"date: " + formatdate(second, usegmt=True).encode("ascii") + CRLF
        _date_expires = second + 1.0
    return _date_line


def error_response(status: int, reason: str) -> bytes:
    """A complete ``text/plain`` answer for a peer error, with ``Connection: close``."""
    body = f"{status} {_phrase(status)}: {reason}\n".encode("utf-8", "replace")
    return b"".join(
        (
            status_line(status),
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            date_header(),
            CONNECTION_CLOSE,
            CRLF,
            body,
        )
    )


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class _Reject(Exception):
    """Raised inside a parser callback to stop parsing: the peer broke a rule."""


class _PeerError:
    """A peer error queued behind the requests received before it."""

    __slots__ = ("reason", "status")

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason


# ----------------------------------------------------------------------------- request
class HttpRequest:
    """One parsed request: request line, headers and (once complete) body.

    ``headers`` is the list of ``(name, value)`` byte pairs as received (names keep their
    case); :meth:`header` looks one up case-insensitively. ``path`` is percent-decoded,
    ``query`` is the raw query string, ``target`` the raw request-target.
    """

    __slots__ = (
        "_body",
        "_body_size",
        "_stream",
        "chunked",
        "complete",
        "connection",
        "content_length",
        "expect_continue",
        "headers",
        "keep_alive",
        "method",
        "simple",
        "target",
        "upgrade",
        "version",
    )

    def __init__(self, connection: HttpConnection) -> None:
        self.connection = connection
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.method = "GET"
        self.version = "1.1"
        self.keep_alive = True
        self.simple = True
        self.upgrade = False
        self.content_length: int | None = None
        self.chunked = False
        self.expect_continue = False
        self.complete = False
        self._body: bytes | bytearray = b""
        self._body_size = 0
        self._stream: Any = None

    def __repr__(self) -> str:
        return f"<HttpRequest {self.method} {self.target.decode('latin-1')!r}>"

    @property
    def body(self) -> bytes:
        """The body received so far: all of it once ``complete``."""
        body = self._body
        if type(body) is not bytes:
            body = self._body = bytes(body)
        return body

    def _add_body(self, chunk: bytes) -> None:
        body = self._body
        if not body:
            self._body = chunk
        elif type(body) is bytes:
            self._body = bytearray(body) + chunk
        else:
            body += chunk

    @property
    def address(self) -> Any:
        """The peer's address."""
        return self.connection.address

    @property
    def has_body(self) -> bool:
        """True when the head announced a body (a non-zero length, or chunked)."""
        return bool(self.content_length) or self.chunked

    def _split_target(self) -> tuple[bytes, bytes]:
        target = self.target
        if target[:1] != b"/" and target != b"*":
            if self.method == "CONNECT":
                return target, b""
            url = parse_url(target)
            return url.path or b"/", url.query or b""
        path, _, query = target.partition(b"?")
        return path, query

    @property
    def raw_path(self) -> bytes:
        """The path of the target, still percent-encoded."""
        return self._split_target()[0]

    @property
    def path(self) -> str:
        """The path, percent-decoded, as a latin-1 string (WSGI's PATH_INFO rule)."""
        path = self._split_target()[0]
        if b"%" in path:
            path = unquote_to_bytes(path)
        return path.decode("latin-1")

    @property
    def query(self) -> str:
        """The raw query string, without the ``?``."""
        return self._split_target()[1].decode("latin-1")

    def header(self, name: str, default: str | None = None) -> str | None:
        """The value of header ``name`` (case-insensitive); repeats are joined by commas."""
        key = name.lower().encode("latin-1")
        values = [v for n, v in self.headers if n.lower() == key]
        if not values:
            return default
        return b", ".join(values).decode("latin-1")


# ---------------------------------------------------------------------------- response
class Response:
    """What a raw handler answers: ``body``, ``status`` and ``headers``.

    ``body`` is bytes, an iterable of bytes or an async iterable of bytes. ``headers`` are
    ``(name, value)`` pairs of str or bytes; ``content_type`` is a shortcut for one.
    Headers are encoded on first use and cached: treat a Response as immutable once it
    has been returned, and reuse static ones freely.
    """

    __slots__ = ("_encoded", "body", "headers", "status")

    def __init__(
        self,
        body: bytes | Iterable[bytes] | AsyncIterable[bytes] = b"",
        status: int = 200,
        headers: Iterable[tuple[str | bytes, str | bytes]] | None = None,
        content_type: str | bytes | None = None,
    ) -> None:
        self.body = body
        self.status = status
        self.headers: list[tuple[str | bytes, str | bytes]] = list(headers) if headers else []
        if content_type is not None:
            self.headers.append(("content-type", content_type))
        self._encoded: _Encoded | None = None

    def __repr__(self) -> str:
        return f"<Response {self.status}>"

    def _encode(self) -> _Encoded:
        encoded = self._encoded
        if encoded is None:
            encoded = self._encoded = _Encoded(self.status, self.headers, self.body)
        return encoded


def _body_bytes(chunk: object) -> bytes:
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        return bytes(chunk)
    raise TypeError(f"response body chunks must be bytes, not {type(chunk).__name__}")


def _as_bytes(value: str | bytes, what: str) -> bytes:
    data = value.encode("latin-1") if isinstance(value, str) else bytes(value)
    if b"\r" in data or b"\n" in data:
        raise ValueError(f"response {what} contains a line break: {value!r}")
    return data


class _Encoded:
    """A Response's status line and headers as bytes, with what framing needs to know."""

    __slots__ = (
        "block",
        "connection",
        "length",
        "prefix",
        "status",
        "status_line",
        "tail",
        "whole",
        "whole_until",
    )

    def __init__(
        self, status: int, headers: list[tuple[str | bytes, str | bytes]], body: Any
    ) -> None:
        self.status = status
        self.status_line = status_line(status)
        self.length: int | None = None
        self.connection: bytes | None = None
        parts: list[bytes] = []
        for name, value in headers:
            bname = _as_bytes(name, "header name")
            bvalue = _as_bytes(value, "header value")
            lname = bname.lower()
            if lname in _FRAMING:
                if lname == b"content-length":
                    self.length = int(bvalue)
                elif lname == b"connection":
                    self.connection = bvalue
                continue
            parts.append(bname + b": " + bvalue + CRLF)
        self.block = b"".join(parts)
        # For a bytes body on a kept-alive HTTP/1.1 GET-like request: the head but the
        # date, and the blank line plus the body; and the whole answer with the date of
        # the current second, rebuilt when the date changes.
        self.prefix: bytes | None = None
        self.tail = b""
        self.whole = b""
        self.whole_until = 0.0
        if (
            isinstance(body, bytes)
            and self.connection is None
            and not _no_body_status(status)
            and len(body) < JOIN_BODY_LIMIT
        ):
            self.prefix = self.status_line + self.block + b"content-length: %d\r\n" % len(body)
            self.tail = CRLF + body


# ---------------------------------------------------------------------------- consumers
class HttpConsumer(ProtocolConsumer):
    """Answers one request of an :class:`HttpConnection`.

    The connection calls :meth:`on_head` when the request line and headers are parsed and
    a body is still arriving (``self.request`` is set), :meth:`on_message` when the whole
    message has arrived (at once, without ``on_head``, if it had arrived by the time the
    consumer got it), and :meth:`on_peer_error` if the peer breaks the protocol
    mid-body. Subclasses answer with :meth:`send`, or with :meth:`begin`,
    :meth:`send_body` and :meth:`end` to stream; the request ends with ``finished()``,
    which :meth:`end` calls.
    """

    _connection: HttpConnection
    _request: HttpRequest
    _head: bytes | None = None
    _head_sent = False
    _chunked = False
    _no_body = False
    _keep = True
    _length_left: int | None = None

    def on_head(self) -> None:
        """The request line and headers are parsed; the body is on its way."""

    def on_message(self) -> None:
        """The whole request has arrived."""

    def on_peer_error(self, status: int, reason: str) -> None:
        """The peer broke the protocol or a limit while sending this request's body."""
        if not self._head_sent:
            self._write_raw(error_response(status, reason))
        else:
            self._connection.abort()
        self.finished(ConnectionError(f"{status}: {reason}"))

    # -- answering
    def frame(
        self,
        status: int,
        line: bytes,
        block: bytes,
        length: int | None,
        connection_value: bytes | None = None,
        close: bool = False,
    ) -> bytes:
        """The response head for ``status`` with header ``block``, framed for this request.

        Sets how the body is sent (``content-length``, chunked, nothing for HEAD, 1xx,
        204 and 304, or up to the close for HTTP/1.0) and whether the connection is kept.
        Touches no connection state: threaded WSGI apps call it off the loop.
        """
        request = self._request
        keep = (
            request.keep_alive
            and request.complete
            and not close
            and not self._connection._drain_close
        )
        if status < 200 or status == 204 or status == 304:
            framing = b""
            self._no_body = True
        elif request.method == "HEAD":
            framing = b"content-length: %d\r\n" % length if length is not None else b""
            self._no_body = True
        elif length is not None:
            framing = b"content-length: %d\r\n" % length
            self._length_left = length
        elif request.version == "1.1":
            framing = TRANSFER_CHUNKED
            self._chunked = True
        else:
            framing = b""
            keep = False
        if not keep:
            conn = CONNECTION_CLOSE
        elif connection_value is not None:
            conn = b"connection: " + connection_value + CRLF
        elif request.version == "1.0":
            conn = CONNECTION_KEEP_ALIVE
        else:
            conn = b""
        self._keep = keep
        return line + block + framing + date_header() + conn + CRLF

    def send(self, response: Response) -> None:
        """Answer with ``response`` and, for a bytes body, finish the request at once."""
        encoded = response._encoded or response._encode()
        prefix = encoded.prefix
        if prefix is not None and self._request.simple:
            connection = self._connection
            if not connection._drain_close and self._request.complete:
                transport = connection._transport
                if transport is not None and not transport.is_closing():
                    if _time() < encoded.whole_until:
                        transport.write(encoded.whole)
                    else:
                        whole = encoded.whole = prefix + date_header() + encoded.tail
                        encoded.whole_until = _date_expires
                        transport.write(whole)
                self._head_sent = True
                self.finished()
                return
        body = response.body
        if isinstance(body, (bytes, bytearray, memoryview)):
            status = encoded.status
            head = self.frame(
                status,
                encoded.status_line,
                encoded.block,
                None if _no_body_status(status) else len(body),
                encoded.connection,
            )
            if self._no_body or not body:
                self._write_raw(head)
            elif len(body) < JOIN_BODY_LIMIT:
                self._write_raw(head + body)
            else:
                self._write_raw(head)
                self._write_raw(body)
            self._head_sent = True
            self._length_left = None
            self.end_request()
            return
        self.begin(
            encoded.status,
            encoded.status_line,
            encoded.block,
            encoded.length,
            encoded.connection,
        )
        if isinstance(body, AsyncIterable):
            self._spawn(self._stream_async(body))
        else:
            self.stream(iter(body))

    def begin(
        self,
        status: int,
        line: bytes,
        block: bytes,
        length: int | None,
        connection_value: bytes | None = None,
        close: bool = False,
    ) -> None:
        """Frame the head; it is written with the first body bytes or by :meth:`end`."""
        self._head = self.frame(status, line, block, length, connection_value, close)

    def send_body(self, data: bytes) -> tuple[()] | asyncio.Future[None]:
        """Write body bytes (with the head, the first time); await the result if any."""
        return self._write(self._encode_body(data))

    def _encode_body(self, chunk: object) -> bytes:
        data = chunk if type(chunk) is bytes else _body_bytes(chunk)
        head = self._head
        if self._no_body or not data:
            data = b""
        else:
            left = self._length_left
            if left is not None:
                if len(data) > left:
                    data = data[:left]
                    self._keep = False
                self._length_left = left - len(data)
            if self._chunked and data:
                data = b"%x\r\n" % len(data) + data + CRLF
        if head is not None:
            self._head = None
            self._head_sent = True
            return head + data
        return data

    def end(self) -> None:
        """Write what is left of the response and finish the request."""
        tail = self._encode_body(b"")
        if self._chunked:
            tail += CHUNKED_END
        elif self._length_left:
            # Fewer bytes than announced: only closing tells the client.
            self._keep = False
        if tail:
            self._write_raw(tail)
        self.end_request()

    def end_request(self) -> None:
        """Finish the request; the connection closes after it unless it is kept."""
        if not self._keep:
            self._connection.close_after_request()
        self.finished()

    def stream(self, iterator: Iterator[bytes], close: Callable[[], Any] | None = None) -> None:
        """Write ``iterator``'s chunks then :meth:`end`; continues in a task if paused.

        While the transport accepts data the chunks are written in this call; when it
        pauses (a slow reader), the rest is written by a task that awaits each drain.
        ``close`` (an iterable's ``close``) is called in every case.
        """
        try:
            for chunk in iterator:
                if chunk:
                    waiter = self.send_body(chunk)
                    if waiter:
                        self._spawn(self._stream_paused(iterator, waiter, close))
                        return
        except Exception as exc:
            self._close_iterable(close)
            self.body_failed(exc)
            return
        self._close_iterable(close)
        self.end()

    async def _stream_paused(
        self,
        iterator: Iterator[bytes],
        waiter: Awaitable[None],
        close: Callable[[], Any] | None,
    ) -> None:
        try:
            await waiter
            for chunk in iterator:
                if chunk:
                    paused = self.send_body(chunk)
                    if paused:
                        await paused
        except Exception as exc:
            self.body_failed(exc)
            return
        finally:
            self._close_iterable(close)
        self.end()

    async def _stream_async(self, body: AsyncIterable[bytes]) -> None:
        try:
            async for chunk in body:
                if chunk:
                    waiter = self.send_body(chunk)
                    if waiter:
                        await waiter
        except Exception as exc:
            self.body_failed(exc)
            return
        finally:
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        self.end()

    def _close_iterable(self, close: Callable[[], Any] | None) -> None:
        if close is not None:
            try:
                close()
            except Exception:
                self._connection.logger.exception("error closing the response of %r", self)

    def body_failed(self, exc: BaseException) -> None:
        """Answering failed: quietly if the peer is gone, else as an app error (logged)."""
        if self._finished:
            return
        if self._connection.closed:
            self.finished(exc)
            return
        self.app_failed(exc)

    def app_failed(self, exc: BaseException) -> None:
        """The application raised: a 500 if nothing was sent yet, else abort. Logged once."""
        connection = self._connection
        connection.logger.error(
            "error answering %r from %s", self._request, connection.address, exc_info=exc
        )
        if self._finished:
            return
        if self._head_sent:
            connection.abort()
            self.finished(exc)
            return
        self._head = None
        self._chunked = self._no_body = False
        self._length_left = None
        self.send(INTERNAL_ERROR)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._task = task

    # -- writing
    def _write(self, data: bytes) -> tuple[()] | asyncio.Future[None]:
        if not data:
            return NO_WRITE
        connection = self._connection
        transport = connection._transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("connection closed while answering")
        transport.write(data)
        if connection._writing_paused:
            return connection._writing_waiter()
        return NO_WRITE

    def _write_raw(self, data: bytes | bytearray | memoryview) -> None:
        transport = self._connection._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)


INTERNAL_ERROR = Response(
    b"500 Internal Server Error\n",
    status=500,
    content_type="text/plain; charset=utf-8",
)


class RawHttpConsumer(HttpConsumer):
    """Serves a raw handler: ``handler(request) -> Response`` (or an awaitable of one).

    The handler is the ``app`` of the connection's :class:`HttpProtocolFactory`.
    """

    def on_message(self) -> None:
        try:
            result = self._connection.app(self._request)
        except Exception as exc:
            self.app_failed(exc)
            return
        if type(result) is Response:
            try:
                self.send(result)
            except Exception as exc:
                self.app_failed(exc)
        elif isinstance(result, Awaitable):
            task = asyncio.ensure_future(result)
            self._task = task
            task.add_done_callback(self._handled)
        else:
            self.app_failed(TypeError(f"handler returned {result!r}, not a Response"))

    def _handled(self, task: asyncio.Future[Any]) -> None:
        if self._finished:
            if not task.cancelled():
                task.exception()
            return
        if task.cancelled():
            self.app_failed(asyncio.CancelledError("handler cancelled"))
            return
        exc = task.exception()
        if exc is not None:
            self.app_failed(exc)
            return
        result = task.result()
        if isinstance(result, Response):
            try:
                self.send(result)
            except Exception as error:
                self.app_failed(error)
        else:
            self.app_failed(TypeError(f"handler returned {result!r}, not a Response"))


# --------------------------------------------------------------------------- connection
class HttpConnection(Connection):
    """An HTTP/1.1 connection: one parser, one :class:`HttpConsumer` per request.

    ``http`` is the :class:`HttpProtocolFactory` it serves (its ``app``, ``limits`` and
    thread pool). Keep-alive and pipelining follow the Connection's model: the next
    request is dispatched when the current consumer calls ``finished()``. The connection
    parses, so its consumers get parsed requests, never raw bytes: their
    ``data_received``/``data_processed`` events do not fire (the server's ``pre_request``
    and ``post_request`` do). After an upgrade (``upgrade()`` during a request that asked
    for one) the bytes go to the new consumers exactly as on a plain Connection.
    """

    _current_consumer: HttpConsumer | None
    #: HTTP/1.1 keeps no state between requests: a drain hands idle connections off.
    HANDOFF_SAFE = True

    def __init__(
        self,
        consumer_factory: Callable[..., HttpConsumer] | None = None,
        http: HttpProtocolFactory | None = None,
        limits: Limits | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(consumer_factory, **kw)
        self.http = http
        self.app: Any = http.app if http is not None else None
        self.limits = limits = limits or (http.limits if http is not None else DEFAULT_LIMITS)
        # The limits checked on every request, as plain attributes.
        self._max_target = limits.max_request_line
        self._max_field = limits.max_header_size
        self._max_headers = limits.max_headers
        self._max_head = limits.max_head_size
        self._max_body = limits.max_body
        # Up to this many fields, each within max_header_size, cannot exceed max_head_size:
        # the headers are only counted and summed past it.
        self._few_headers = min(limits.max_head_size // limits.max_header_size, limits.max_headers)
        self._http_factory = consumer_factory
        self._parser = HttpRequestParser(self)
        self._parsing: HttpRequest | None = None
        self._active: HttpRequest | None = None
        self._pending: deque[HttpRequest | _PeerError] | None = None
        self._backlog = 0
        self._messages = 0
        self._in_head = False
        self._head_bytes = 0
        self._head_size = 0
        self._rejection: tuple[int, str] | None = None
        self._stopped = False
        # Answers framed from now on say ``Connection: close`` (a drain without handoff).
        self._drain_close = False
        self._upgraded = False
        self._upgrade_request: HttpRequest | None = None
        self._leftover: bytearray | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._linger_on_close = False
        self._running_pending = False
        self._last: HttpRequest | None = None
        self._holds = 0
        self._wsgi_environ: dict[str, Any] | None = None  # per connection, see wsgi.py

    # -- parser callbacks (called by httptools inside feed_data): the hot path, kept flat.
    # ``self._parsing`` is set from on_message_begin to on_message_complete.
    # A request begins with its target (llhttp always reports one): no on_message_begin,
    # one callback less per request.
    def on_url(self, url: bytes) -> None:
        request = self._parsing
        if request is None:
            if self._stopped or self._close_after_request:
                # The request in progress (or the last one) closes the connection: what
                # follows was sent before the client could know, and is not read.
                self._stopped = True
                raise _Reject("closing")
            request = self._parsing = HttpRequest(self)
            self._messages += 1
            self._in_head = True
            self._head_bytes = 0
        elif request.target:
            url = request.target + url
        request.target = url
        if len(url) > self._max_target:
            raise self._reject(414, f"request-target longer than {self._max_target} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        request: HttpRequest = self._parsing  # type: ignore[assignment]
        headers = request.headers
        headers.append((name, value))
        if len(name) + len(value) > self._max_field or len(headers) > self._few_headers:
            self._check_headers(headers)
        special = _SPECIAL_BY_LENGTH.get(len(name))
        if special is not None and name.lower() == special:
            self._special_header(request, special, value)

    def _check_headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Limits on a field, the count and the total; the total is only kept past the
        number of fields that cannot exceed it (``_few_headers``)."""
        limits = self.limits
        name, value = headers[-1]
        size = len(name) + len(value)
        if size > limits.max_header_size:
            raise self._reject(431, f"header field longer than {limits.max_header_size} bytes")
        count = len(headers)
        if count > limits.max_headers:
            raise self._reject(431, f"more than {limits.max_headers} header fields")
        if count == self._few_headers + 1:
            self._head_size = sum(len(n) + len(v) for n, v in headers)
        else:
            self._head_size += size
        if self._head_size > limits.max_head_size:
            raise self._reject(431, f"headers longer than {limits.max_head_size} bytes")

    def _special_header(self, request: HttpRequest, name: bytes, value: bytes) -> None:
        if name == b"content-length":
            try:
                request.content_length = int(value)
            except ValueError:
                raise self._reject(400, "invalid Content-Length") from None
        elif name == b"expect":
            request.expect_continue = value.lower() == b"100-continue"
        elif name == b"transfer-encoding":
            request.chunked = True
        elif name == b"connection":
            request.simple = False  # the version is not implied by keep-alive: ask for it

    def on_headers_complete(self) -> None:
        request: HttpRequest = self._parsing  # type: ignore[assignment]
        self._in_head = False
        parser = self._parser
        method = parser.get_method()
        request.method = _METHODS.get(method) or method.decode("ascii")
        if parser.should_keep_alive() and request.simple:
            # llhttp keeps alive by default only HTTP/1.1 (it accepts 0.9, 1.0, 1.1 and
            # 2.0); the others need a Connection header, and then we ask for the version.
            if method == b"HEAD":
                request.simple = False
        else:
            request.simple = False
            version = parser.get_http_version()
            if version != "1.1" and version != "1.0":
                raise self._reject(505, f"HTTP/{version} is not supported")
            request.version = version
            request.keep_alive = parser.should_keep_alive()
        length = request.content_length
        if length or request.chunked:
            # A body follows: dispatch now, so the consumer may stream it (or answer
            # ``Expect: 100-continue``). Requests without one go on message complete.
            if length is not None and length > self._max_body:
                raise self._reject(413, f"body longer than {self._max_body} bytes")
            if self._active is None and not self._pending:
                self._dispatch(request)
            else:
                self._queue(request)

    def on_body(self, chunk: bytes) -> None:
        request: HttpRequest = self._parsing  # type: ignore[assignment]
        size = request._body_size + len(chunk)
        if size > self._max_body:
            raise self._reject(413, f"body longer than {self._max_body} bytes")
        request._body_size = size
        stream = request._stream
        if stream is not None:
            stream.feed(chunk)
        else:
            request._add_body(chunk)
            if request is not self._active:
                self._backlog += len(chunk)
                if self._backlog > MAX_BUFFERED_PIPELINE:
                    self._hold_reading(HOLD_PIPELINE)

    def on_message_complete(self) -> None:
        request: HttpRequest = self._parsing  # type: ignore[assignment]
        self._parsing = None
        self._last = request
        request.complete = True
        if not request.keep_alive:
            # Nothing after a request that closes the connection is read.
            self._stopped = True
        if request is self._active:
            # Dispatched when its head arrived (it has a body).
            if request._stream is not None:
                request._stream.feed_eof()
            consumer = self._current_consumer
            if consumer is not None and not consumer._finished:
                consumer.on_message()
        elif not request.content_length and not request.chunked:
            if self._active is None and not self._pending:
                self._dispatch(request)
            else:
                self._queue(request)

    def _reject(self, status: int, reason: str) -> _Reject:
        self._rejection = (status, reason)
        return _Reject(reason)

    # -- requests to consumers
    def _dispatch(self, request: HttpRequest) -> None:
        self._active = request
        # What current_consumer() does, inlined: this runs for every request.
        factory = self._consumer_factory
        producer = self._producer
        if self._default_build:
            consumer: HttpConsumer = factory(loop=self._loop)  # type: ignore[misc, assignment]
        else:
            consumer = producer.build_consumer(factory)  # type: ignore[union-attr, arg-type, assignment]
        self._current_consumer = consumer
        consumer.connection_made(self)
        events = producer._events if producer is not None else None
        if consumer._events or (events and "pre_request" in events):
            consumer.start(request)
        else:
            # What start() does when no event has a listener, without the call.
            consumer._started = True
            consumer._request = request
        if request.complete:
            consumer.on_message()
            return
        if request.expect_continue:
            self._write_now(CONTINUE)
        consumer.on_head()

    def _queue(self, item: HttpRequest | _PeerError) -> None:
        pending = self._pending
        if pending is None:
            pending = self._pending = deque()
        pending.append(item)
        if len(pending) >= self.limits.max_pipeline:
            self._hold_reading(HOLD_PIPELINE)

    def _run_pending(self) -> None:
        if self._running_pending:
            return
        pending = self._pending
        self._running_pending = True
        try:
            while pending and self._current_consumer is None and not self._close_after_request:
                item = pending.popleft()
                if type(item) is _PeerError:
                    pending.clear()
                    self._send_error(item.status, item.reason)
                    break
                assert isinstance(item, HttpRequest)
                self._backlog -= item._body_size
                self._dispatch(item)
        except Exception as exc:
            self._consumer_failed(exc)
        finally:
            self._running_pending = False
        if not pending:
            self._backlog = 0
            if self._holds & HOLD_PIPELINE:
                self._release_reading(HOLD_PIPELINE)

    # -- bytes in
    def data_received(self, data: bytes) -> None:
        if self._upgraded:
            Connection.data_received(self, data)
            return
        if self._stopped:
            leftover = self._leftover
            if leftover is not None:
                leftover += data
                if len(leftover) > MAX_BUFFERED_PIPELINE:
                    self._hold_reading(HOLD_UPGRADE)
            return
        messages = self._messages
        self._processing = True
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade as exc:
            self._upgrade_requested(data[exc.args[0] :])
        except HttpParserError as exc:
            self._parse_failed(exc)
        except Exception as exc:
            self._consumer_failed(exc)
        finally:
            self._processing = False
        if self._in_head and not self._stopped:
            if messages == self._messages:
                # The head began in an earlier read: all these bytes are head bytes.
                self._head_bytes += len(data)
            if self._head_bytes > self._max_head:
                self._peer_error(431, f"head longer than {self._max_head} bytes")
        if self._current_consumer is None:
            if (self._close_after_request or self._peer_eof) and self._should_close():
                self.close()
            elif self._draining and self._at_boundary():
                self._boundary_reached()

    def _parse_failed(self, exc: HttpParserError) -> None:
        rejection = self._rejection
        if rejection is not None:
            self._peer_error(*rejection)
        elif self._stopped:
            return
        elif isinstance(exc, HttpParserCallbackError) and exc.__context__ is not None:
            # Not the peer's fault: a consumer or this module raised inside a callback.
            self._consumer_failed(exc.__context__)
        else:
            self._peer_error(400, str(exc) or "malformed request")

    def _peer_error(self, status: int, reason: str) -> None:
        """The peer broke the protocol: answer in order, then close (lingering)."""
        self._stopped = True
        self._in_head = False
        active = self._active
        parsing, self._parsing = self._parsing, None
        if active is not None:
            consumer = self._current_consumer
            if active is parsing and consumer is not None and not consumer._finished:
                self._linger_on_close = True
                self.close_after_request()
                stream = active._stream
                if stream is not None:
                    stream.fail(ConnectionError(f"bad request body: {reason}"))
                consumer.on_peer_error(status, reason)
            else:
                pending = self._pending
                if parsing is not None and pending and pending[-1] is parsing:
                    pending.pop()
                self._queue(_PeerError(status, reason))
            return
        if self._pending:
            self._queue(_PeerError(status, reason))
            return
        self._send_error(status, reason)

    def _send_error(self, status: int, reason: str) -> None:
        self._write_now(error_response(status, reason))
        self._linger_on_close = True
        self._close_after_request = True
        if not self._processing:
            self.close()

    def _write_now(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    # -- upgrades (Upgrade: and CONNECT)
    def _upgrade_requested(self, leftover: bytes) -> None:
        request = self._last
        self._parsing = None
        if request is None:  # pragma: no cover - httptools upgrades after a message only
            self._peer_error(400, "unexpected upgrade")
            return
        request.upgrade = True
        if request is self._active or (self._pending is not None and request in self._pending):
            # Its consumer is still answering: hold what follows until it finishes.
            self._stopped = True
            self._upgrade_request = request
            self._leftover = bytearray(leftover)
            return
        self._after_upgrade(request, leftover)

    def _after_upgrade(self, request: HttpRequest, leftover: bytes) -> None:
        """The upgrade request was answered: switch protocols, or go on with HTTP."""
        if self._consumer_factory is not self._http_factory:
            self._upgraded = True
            self._stopped = False
            self._release_reading(HOLD_ALL)
            if leftover:
                Connection.data_received(self, leftover)
        elif self._close_after_request:
            return
        elif request.method == "CONNECT":
            # A tunnel that was not opened: what follows is not HTTP.
            self._close_after_request = True
            if not self._processing:
                self.close()
        else:
            # The upgrade was declined: the bytes that follow are HTTP again.
            self._stopped = False
            self._release_reading(HOLD_ALL)
            if leftover:
                self.data_received(leftover)

    # -- consumer lifecycle
    def _consumer_finished(self, consumer: ProtocolConsumer, exc: BaseException | None) -> None:
        if self._upgraded:
            Connection._consumer_finished(self, consumer, exc)
            return
        current: ProtocolConsumer | None = self._current_consumer
        if consumer is not current:
            return
        # What Connection._consumer_finished does, inlined: this runs for every request.
        self._current_consumer = None
        request, self._active = self._active, None
        if exc is None:
            self.processed += 1
            producer = self._producer
            if producer is not None:
                producer.requests_processed += 1
                if producer.max_requests:
                    producer._check_max_requests()
        if self._timeout is not None:
            self._last_activity = self._loop.time()  # type: ignore[union-attr]
        if self._close_after_request:
            self._stopped = True  # that answer said it closes: nothing more is read
        if request is not None and not request.complete:
            # Answered before its body arrived: what is left of it cannot be read
            # cheaply and safely, so the connection closes (it said so in the head).
            self._stopped = True
            self._linger_on_close = True
            self._close_after_request = True
        if self._upgrade_factory is not None or self._upgrade_request is not None:
            self._upgrade_finished(request)
            return
        if self._pending:
            self._run_pending()
        if self._current_consumer is None and not self._processing:
            if (self._close_after_request or self._peer_eof) and self._should_close():
                self.close()
            elif self._draining and self._at_boundary():
                self._boundary_reached()

    def _upgrade_finished(self, request: HttpRequest | None) -> None:
        if self._upgrade_factory is not None:
            self._consumer_factory, self._upgrade_factory = self._upgrade_factory, None
        upgrade = self._upgrade_request
        if upgrade is not None and upgrade is request:
            self._upgrade_request = None
            leftover, self._leftover = self._leftover, None
            if not self.closed:
                self._after_upgrade(upgrade, bytes(leftover or b""))
            return
        if self._pending:
            self._run_pending()
        if self._current_consumer is None and not self._processing and self._should_close():
            self.close()

    def _should_close(self) -> bool:
        if self._upgraded:
            return Connection._should_close(self)
        return self._close_after_request or (
            self._peer_eof and not self._pending and self._active is None
        )

    # -- draining (see Connection.begin_drain)
    def _at_boundary(self) -> bool:
        return (
            self._current_consumer is None
            and not self._processing
            and self._parsing is None
            and self._active is None
            and not self._pending
            and not self._stopped
            and not self._upgraded
            and self._upgrade_request is None
            and not self._holds
            and self._linger is None
        )

    def begin_drain(self, handoff: Handoff | None = None) -> None:
        if handoff is None:
            self._drain_close = True  # the answer in progress already says it closes
        super().begin_drain(handoff)

    def _let_go(self) -> None:
        """Answer the next request with ``Connection: close``, then close.

        Closing an idle keep-alive connection now would fail the request its client may
        be sending at this moment; answering it tells the client to reconnect (to a
        worker still accepting). A connection that stays silent is closed by the idle
        timeout (shortened to ``DRAIN_IDLE``), with a lingering close.
        """
        self._drain_close = True

    @property
    def closing_after_request(self) -> bool:
        return self._close_after_request or self._drain_close

    def _idle_timeout(self) -> None:
        if self._parsing is not None and self._current_consumer is None:
            # A head still arriving after the whole keep-alive timeout (a slowloris
            # client, a stalled one): it will not be served; say so, then close.
            self._peer_error(408, f"request head not received within {self._timeout:g}s")
            return
        if self._draining:
            # A request already on the wire gets our FIN, not a reset.
            self._linger_on_close = True
        self.close()

    def _busy(self) -> bool:
        return Connection._busy(self) or bool(self._pending)

    def eof_received(self) -> bool | None:
        if self._upgraded:
            return Connection.eof_received(self)
        if self._linger is not None:
            return None
        parsing, self._parsing = self._parsing, None
        if parsing is not None:
            # The peer stopped mid-request: that request can never complete.
            self._stopped = True
            pending = self._pending
            if parsing is self._active:
                self.abort()
                return None
            if pending and pending[-1] is parsing:
                pending.pop()
        transport = self._transport
        if (
            (self._current_consumer is not None or self._pending)
            and transport is not None
            and transport.get_extra_info("sslcontext") is None
        ):
            self._peer_eof = True
            return True
        return None

    # -- reading holds: a full pipeline queue, a full body stream, a held upgrade
    def _hold_reading(self, reason: int) -> None:
        self._holds |= reason
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()

    def _release_reading(self, reason: int) -> None:
        self._holds &= ~reason
        transport = self._transport
        if (
            not self._holds
            and not self._writing_paused
            and transport is not None
            and not transport.is_closing()
        ):
            transport.resume_reading()

    def _may_resume_reading(self) -> bool:
        if self._upgraded:
            return Connection._may_resume_reading(self)
        return not self._holds

    # -- closing
    def close(self) -> OneTime:
        """Close once written; after a peer error, shut writing and linger first.

        While lingering, the connection closes when the peer does, or after
        ``LINGER_SECONDS``; ``abort()`` still closes it at once.
        """
        if self._linger is not None:
            return cast(OneTime, self.event("connection_lost"))
        transport = self._transport
        if (
            self._linger_on_close
            and transport is not None
            and not transport.is_closing()
            and transport.can_write_eof()
            and transport.get_extra_info("sslcontext") is None
        ):
            self._stopped = True
            with contextlib.suppress(OSError, RuntimeError):
                if self._holds or self._writing_paused:
                    self._holds = 0
                    transport.resume_reading()
                transport.write_eof()
                self._linger = self._loop_or_running().call_later(
                    LINGER_SECONDS, Connection.close, self
                )
                return cast(OneTime, self.event("connection_lost"))
        return super().close()

    def _on_connection_lost(self, exc: BaseException | None) -> None:
        linger, self._linger = self._linger, None
        if linger is not None:
            linger.cancel()
        self._stopped = True
        self._pending = None
        self._leftover = None
        self._parsing = None
        super()._on_connection_lost(exc)


# ------------------------------------------------------------------------------ factory
Kind = Literal["raw", "wsgi"]


class HttpProtocolFactory:
    """The protocol factory of an HTTP server: ``TcpServer(HttpProtocolFactory(app), ...)``.

    ``kind`` is ``"wsgi"`` (a PEP 3333 application) or ``"raw"`` (a raw handler, see the
    module docstring). ``threads`` > 0 runs WSGI applications in a pool of that many
    threads, so blocking apps do not block the loop; 0 runs them inline, like a sync
    worker. The pool is created on first use (after a fork) and shut down by
    :meth:`close`. ``consumer_factory`` overrides the consumer class.
    """

    def __init__(
        self,
        app: Any,
        kind: Kind = "wsgi",
        threads: int = 0,
        limits: Limits | None = None,
        consumer_factory: Callable[..., HttpConsumer] | None = None,
    ) -> None:
        if not callable(app):
            raise TypeError(f"the HTTP app must be callable, got {app!r}")
        if kind not in ("raw", "wsgi"):
            raise ValueError(f"kind must be 'raw' or 'wsgi', got {kind!r}")
        if not isinstance(threads, int) or threads < 0:
            raise ValueError(f"threads must be a non-negative integer, got {threads!r}")
        if threads and kind != "wsgi":
            raise ValueError("threads only apply to WSGI apps")
        self.app = app
        self.kind = kind
        self.threads = threads
        self.limits = limits or DEFAULT_LIMITS
        self._executor: ThreadPoolExecutor | None = None
        if consumer_factory is None:
            if kind == "raw":
                consumer_factory = RawHttpConsumer
            else:
                from .wsgi import ThreadedWsgiConsumer, WsgiConsumer

                consumer_factory = ThreadedWsgiConsumer if threads else WsgiConsumer
        self.consumer_factory = consumer_factory

    def __repr__(self) -> str:
        return f"<HttpProtocolFactory {self.kind} {self.app!r} threads={self.threads}>"

    def __call__(self, **kw: Any) -> HttpConnection:
        return HttpConnection(self.consumer_factory, http=self, **kw)

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The thread pool of threaded WSGI apps, created on first use."""
        executor = self._executor
        if executor is None:
            from concurrent.futures import ThreadPoolExecutor

            executor = self._executor = ThreadPoolExecutor(
                max_workers=self.threads or 1, thread_name_prefix="pulsar-wsgi"
            )
        return executor

    def close(self, wait: bool = True) -> None:
        """Shut the thread pool down (if one was started)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=wait)


def http_protocol_factory(
    app: Any,
    kind: Kind = "wsgi",
    threads: int = 0,
    limits: Limits | None = None,
) -> HttpProtocolFactory:
    """The protocol factory serving ``app`` over HTTP/1.1.

    ``kind="wsgi"`` serves a PEP 3333 application, inline or in ``threads`` threads;
    ``kind="raw"`` serves a raw handler, ``handler(request) -> Response``. ``limits``
    bounds what a peer may send (:class:`Limits`). Serve it with
    ``TcpServer(http_protocol_factory(app), loop, address=...)``.
    """
    return HttpProtocolFactory(app, kind=kind, threads=threads, limits=limits)
