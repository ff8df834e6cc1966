"""Consumers: what answers one request of an :class:`HttpConnection`.

:class:`HttpConsumer` frames and writes a response (whole, or streamed with write flow
control); :class:`RawHttpConsumer` calls a raw handler and sends its :class:`Response`.
Application errors are answered here (a 500, or an abort once the head is out), logged
once; the connection never sees them as its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from mypy_extensions import mypyc_attr

from ..protocols import NO_WRITE, ProtocolConsumer
from .errors import PeerError
from .limits import JOIN_BODY_LIMIT
from .request import INTERNAL_ERROR, Response
from .wire import (
    CHUNKED_END,
    CONNECTION_CLOSE,
    CONNECTION_KEEP_ALIVE,
    CRLF,
    TRANSFER_CHUNKED,
    body_bytes,
    date_header,
    date_header_expires,
    error_response,
    no_body_status,
)

if TYPE_CHECKING:
    from .connection import HttpConnection

__all__ = ["HttpConsumer", "RawHttpConsumer"]

_time = time.time


@mypyc_attr(allow_interpreted_subclasses=True)
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

    # _connection (an HttpConnection) and _request (an HttpRequest) keep the base's
    # declarations (Any): the compiled core (mypyc) needs one type along the hierarchy.
    _head: bytes | None = None
    _head_sent = False
    _chunked = False
    _no_body = False
    _keep = True
    _length_left: int | None = None
    #: Whether the connection answers ``Expect: 100-continue`` when it dispatches the
    #: request; a consumer that sets it False writes ``CONTINUE`` itself, when its app
    #: first asks for the body (the ASGI one does).
    continue_at_once: ClassVar[bool] = True
    #: ``time.perf_counter()`` when the connection dispatched the request to this
    #: consumer: the worker's request-duration metric reads it at ``post_request`` (a
    #: clock read costs less than a ``pre_request`` callback per request).
    started_at = 0.0

    def on_head(self) -> None:
        """The request line and headers are parsed; the body is on its way."""

    def on_message(self) -> None:
        """The whole request has arrived."""

    def on_peer_eof(self) -> None:
        """The peer closed its side (its request had arrived whole); the answer may still
        go out on the half-open connection."""

    def on_peer_error(self, status: int, reason: str) -> None:
        """The peer broke the protocol or a limit while sending this request's body."""
        if not self._head_sent:
            self._write_raw(error_response(status, reason, self._request.method == "HEAD"))
        else:
            self._connection.abort()
        self.finished(PeerError(status, reason))

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
            # A drain closes HTTP connections, not one switching protocols (a WebSocket
            # is told by its own close frame).
            and (not self._connection._drain_close or status == 101)
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
                        encoded.whole_until = date_header_expires()
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
                None if no_body_status(status) else len(body),
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
        data = chunk if type(chunk) is bytes else body_bytes(chunk)
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
        connection: HttpConnection = self._connection
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


@mypyc_attr(allow_interpreted_subclasses=True)
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
