"""ASGI 3 applications (HTTP spec 2.x and lifespan) on the HTTP consumer.

Each request runs ``await app(scope, receive, send)`` as a task on the worker's loop, on
the same connection and state machine as the raw and WSGI paths. A request with a body
is handed to its app as soon as its head has arrived; ``receive()`` gives the body as it
arrives (``http.request`` events with ``more_body``), and reading pauses while the app has
not received the bytes it was given (more than ``STREAM_HIGH``). ``Expect: 100-continue``
is answered when the app first calls ``receive()``. Once the body is received,
``receive()`` waits until the client goes away (or closes its side) or the response is
complete, then returns ``http.disconnect``.

``send()`` takes ``http.response.start`` then ``http.response.body`` events; it waits
while the client is slow to read. A response whose whole body comes in one event gets a
``Content-Length``, else it is chunked (HTTP/1.1) or ends with the close (HTTP/1.0); HEAD
responses send no body. An app that raises before starting its response gets a 500
(logged once); after, its connection is aborted. An app that has not started its response
``timeout`` seconds after the request was dispatched (or after it last received body
bytes) is cancelled and answered 500; once the response has started it is not bounded.

Lifespan (:class:`Lifespan`): ``startup()`` runs the app's lifespan scope up to
``lifespan.startup.complete``; its ``state`` dict is copied into every request's scope.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal

from .connection import HOLD_STREAM, HttpConnection
from .consumer import HttpConsumer
from .factory import HttpProtocolFactory
from .limits import Limits
from .wire import CONTINUE, status_line

__all__ = [
    "AsgiConsumer",
    "AsgiProtocolFactory",
    "Lifespan",
    "LifespanError",
    "asgi_protocol_factory",
    "build_scope",
]

LOGGER = logging.getLogger("pulsar_arbiter.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Any, Any, Any], Awaitable[None]]
LifespanMode = Literal["auto", "on", "off"]

ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}
LIFESPAN_VERSION = {"version": "3.0", "spec_version": "2.0"}
# Body bytes an app may leave unreceived before the connection stops reading: a few
# socket reads; what receive() hands over at once is bounded by it too (plus one read).
STREAM_HIGH = 64 * 1024
# Seconds an app has to start its response when the factory is given no timeout.
DEFAULT_TIMEOUT = 60.0
# Entries of the status line cache: codes repeat, but an app could send many.
CACHE_SIZE = 512

_HOP_BY_HOP = frozenset(
    (
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    )
)
_status_lines: dict[int, bytes] = {}


class LifespanError(Exception):
    """The app's lifespan startup (or, with ``lifespan="on"``, support) failed."""


def _status_line(status: object) -> bytes:
    if type(status) is not int or not 100 <= status <= 999:
        raise ValueError(f"invalid ASGI response status {status!r}")
    line = _status_lines.get(status)
    if line is None:
        if len(_status_lines) >= CACHE_SIZE:
            _status_lines.clear()
        line = _status_lines[status] = status_line(status)
    return line


def _encode_headers(headers: Any) -> tuple[bytes, int | None, bool]:
    """(header block, Content-Length or None, close) of ASGI response headers."""
    parts: list[bytes] = []
    length: int | None = None
    close = False
    for item in headers:
        name, value = item
        name, value = bytes(name), bytes(value)
        if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name or b":" in name:
            raise ValueError(f"invalid character in ASGI response header {item!r}")
        lname = name.lower()
        if lname == b"content-length":
            length = int(value)
            if length < 0:
                raise ValueError(f"negative Content-Length {value!r}")
            continue
        if lname == b"connection":
            close = b"close" in value.lower()
            continue
        if lname == b"date":
            continue  # the server's own, cached per second
        if lname in _HOP_BY_HOP:
            raise ValueError(f"hop-by-hop header {name!r} is not allowed in an ASGI response")
        parts.append(name + b": " + value + b"\r\n")
    return b"".join(parts), length, close


def _unquote(path: bytes) -> str:
    from urllib.parse import unquote_to_bytes

    return unquote_to_bytes(path).decode("utf-8", "surrogateescape")


def _base_scope(connection: HttpConnection, root_path: str) -> dict[str, Any]:
    transport = connection.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    peername = transport.get_extra_info("peername") if transport is not None else None
    ssl = transport.get_extra_info("sslcontext") if transport is not None else None
    server: Any = None
    if isinstance(sockname, tuple):
        server = (str(sockname[0]), int(sockname[1]))
    elif sockname:
        server = (str(sockname), None)
    client: Any = None
    if isinstance(peername, tuple):
        client = (str(peername[0]), int(peername[1]))
    return {
        "type": "http",
        "asgi": ASGI_VERSION,
        "scheme": "https" if ssl is not None else "http",
        "root_path": root_path,
        "server": server,
        "client": client,
    }


def build_scope(
    request: Any, root_path: str = "", state: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ASGI HTTP scope of ``request`` (an :class:`HttpRequest`).

    ``path`` and ``raw_path`` include ``root_path`` (as uvicorn's do, so that frameworks
    that strip it, like Starlette, route the rest); ``state`` is copied (shallow).
    """
    connection: HttpConnection = request.connection
    base: dict[str, Any] | None = connection.adapter_state
    if base is None:
        base = connection.adapter_state = _base_scope(connection, root_path)
    scope = base.copy()
    target = request.target
    if target[:1] == b"/":
        raw_path, _, query = target.partition(b"?")
    else:
        raw_path, query = request.split_target()
    path = raw_path.decode("latin-1") if b"%" not in raw_path else _unquote(raw_path)
    if not path.isascii() and b"%" not in raw_path:
        path = raw_path.decode("utf-8", "surrogateescape")
    scope["http_version"] = request.version
    scope["method"] = request.method
    scope["path"] = root_path + path
    scope["raw_path"] = root_path.encode("utf-8") + raw_path
    scope["query_string"] = query
    scope["headers"] = [(name.lower(), value) for name, value in request.headers]
    if state is not None:
        scope["state"] = state.copy()
    return scope


class AsgiConsumer(HttpConsumer):
    """Runs the connection's ASGI app for one request, in a task on the loop."""

    continue_at_once = False
    _task_: asyncio.Task[None] | None = None
    _timer: asyncio.TimerHandle | None = None
    _start: Message | None = None
    _complete = False
    _lost = False
    _peer_eof = False
    _continued = False
    _held = False
    _eof = False
    _error: BaseException | None = None
    _wakeup: asyncio.Future[None] | None = None

    def on_head(self) -> None:
        request = self._request
        self._buffer = bytearray(request.body)
        request.body_stream = self
        self._run()

    def on_message(self) -> None:
        if self._task_ is None:
            self._buffer = bytearray(self._request.body)
            self._eof = True
            self._run()

    def _run(self) -> None:
        connection = self._connection
        factory = connection.http
        root_path = getattr(factory, "root_path", "")
        lifespan: Lifespan | None = getattr(factory, "lifespan", None)
        state = lifespan.state if lifespan is not None and lifespan.supported else None
        scope = build_scope(self._request, root_path, state)
        coro = connection.app(scope, self.asgi_receive, self.asgi_send)
        task = self._task_ = asyncio.ensure_future(coro)
        task.add_done_callback(self._done)
        self._arm_timer()

    def _arm_timer(self) -> None:
        """(Re)start the deadline of the response's start: from the dispatch, then from
        each body part the app receives (a slow upload is not a silent app)."""
        self._stop_timer()
        timeout = getattr(self._connection.http, "timeout", DEFAULT_TIMEOUT)
        if timeout:
            self._timer = self._connection.loop.call_later(timeout, self._timed_out, timeout)

    # -- the body stream the connection feeds (see HttpRequest.body_stream)
    def feed(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > STREAM_HIGH and not self._held:
            self._held = True
            self._connection.hold_reading(HOLD_STREAM)
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        self._error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._wakeup
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        waiter = self._wakeup = self._connection.loop.create_future()
        try:
            await waiter
        finally:
            self._wakeup = None

    # -- the app's side
    async def asgi_receive(self) -> Message:
        """The next ``http.request`` event, then ``http.disconnect`` when it applies."""
        if not self._eof or self._buffer:
            request = self._request
            if request.expect_continue and not self._continued:
                self._continued = True
                if not self._head_sent and not self._lost:
                    self._write_raw(CONTINUE)
            while not self._buffer and not self._eof:
                if self._lost or self._error is not None:
                    return {"type": "http.disconnect"}
                await self._wait()
            body = bytes(self._buffer)
            self._buffer.clear()
            if self._held:
                self._held = False
                self._connection.release_reading(HOLD_STREAM)
            if self._timer is not None:
                self._arm_timer()
            return {"type": "http.request", "body": body, "more_body": not self._eof}
        while not (self._lost or self._peer_eof or self._complete or self._error is not None):
            await self._wait()
        return {"type": "http.disconnect"}

    async def asgi_send(self, message: Message) -> None:
        """Take an ``http.response.start`` or ``http.response.body`` event."""
        kind = message["type"]
        if self._lost:
            raise ConnectionResetError("the client went away")
        if kind == "http.response.start":
            if self._start is not None:
                raise RuntimeError("http.response.start sent twice")
            _status_line(message["status"])
            _encode_headers(message.get("headers", ()))
            self._start = message
            self._stop_timer()
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        if self._start is None:
            raise RuntimeError("http.response.body sent before http.response.start")
        if self._complete:
            raise RuntimeError("http.response.body sent after the response completed")
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if not self._head_sent and self._head is None:
            self._frame_start(None if more else len(body))
        if body:
            waiter = self.send_body(body)
            if waiter:
                await waiter
        if not more:
            self._complete = True
            self._wake()
            if not self._finished:
                self.end()

    def _frame_start(self, whole: int | None) -> None:
        start = self._start
        assert start is not None
        status = start["status"]
        block, length, close = _encode_headers(start.get("headers", ()))
        if length is None:
            length = whole
        self.begin(status, _status_line(status), block, length, None, close)

    # -- ending
    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _timed_out(self, timeout: float) -> None:
        self._timer = None
        task = self._task_
        if task is not None and not task.done() and self._start is None:
            task.remove_done_callback(self._done)
            task.cancel()
            self.body_failed(TimeoutError(f"the ASGI app did not answer within {timeout:g}s"))

    def _done(self, task: asyncio.Future[None]) -> None:
        self._stop_timer()
        if task.cancelled():
            exc: BaseException | None = asyncio.CancelledError("the ASGI app was cancelled")
        else:
            exc = task.exception()
        if exc is not None:
            if self._finished:
                if not self._lost:
                    LOGGER.error("error in ASGI app after its response", exc_info=exc)
                return
            self.body_failed(exc)
            return
        if self._finished:
            return
        if self._peer_eof and not self._head_sent:
            # The client has gone and the app stopped on http.disconnect: nobody to answer.
            self._connection.close()
            self.finished(ConnectionResetError("the client went away"))
            return
        if self._start is None:
            self.body_failed(RuntimeError("the ASGI app returned without starting a response"))
        else:
            self.body_failed(RuntimeError("the ASGI app returned before its response ended"))

    def on_peer_eof(self) -> None:
        # A client that closed its side has gone for the app (``http.disconnect``), as
        # for uvicorn; the answer may still go out on the half-open connection.
        self._peer_eof = True
        self._wake()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost = True
        self._stop_timer()
        self._wake()
        super().connection_lost(exc)


class Lifespan:
    """Runs the lifespan scope of an ASGI app: ``await startup()``, ``await shutdown()``.

    ``mode`` "auto" serves an app that raises before completing startup (or that does not
    support lifespan) without it, with a warning; "on" makes that a failed startup; "off"
    never runs it. ``lifespan.startup.failed`` is a failed startup in any mode but "off".
    """

    def __init__(self, app: AsgiApp, mode: LifespanMode = "auto") -> None:
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"lifespan must be auto, on or off, got {mode!r}")
        self.app = app
        self.mode = mode
        self.state: dict[str, Any] = {}
        self.supported = False
        self._task: asyncio.Task[None] | None = None
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()

    async def startup(self) -> None:
        """Run the app's startup; raises :class:`LifespanError` if it failed."""
        if self.mode == "off":
            return
        scope = {"type": "lifespan", "asgi": LIFESPAN_VERSION, "state": self.state}
        self._task = asyncio.ensure_future(self._main(scope))
        await self._to_app.put({"type": "lifespan.startup"})
        message = await self._from_app.get()
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self.supported = True
            return
        if kind == "lifespan.startup.failed":
            raise LifespanError(f"lifespan startup failed: {message.get('message', '')}")
        error = message.get("error")
        if self.mode == "on":
            raise LifespanError(f"lifespan startup failed: {error!r}")
        LOGGER.info("ASGI lifespan not supported by the app (%r): serving without it", error)

    async def shutdown(self) -> None:
        """Run the app's shutdown, if its startup completed."""
        task = self._task
        if not self.supported or task is None or task.done():
            return
        await self._to_app.put({"type": "lifespan.shutdown"})
        message = await self._from_app.get()
        if message["type"] == "lifespan.shutdown.failed":
            LOGGER.error("lifespan shutdown failed: %s", message.get("message", ""))
        elif message["type"] == "lifespan.error":
            LOGGER.error("lifespan shutdown failed: %r", message.get("error"))

    async def _main(self, scope: Scope) -> None:
        try:
            await self.app(scope, self._to_app.get, self._send)
        except BaseException as exc:
            if self.supported or self.mode == "on":
                LOGGER.error("error in the ASGI lifespan", exc_info=exc)
            await self._from_app.put({"type": "lifespan.error", "error": exc})
            if not isinstance(exc, Exception):
                raise
        else:
            await self._from_app.put({"type": "lifespan.error", "error": "app returned"})

    async def _send(self, message: Message) -> None:
        await self._from_app.put(message)


class AsgiProtocolFactory(HttpProtocolFactory):
    """An :class:`HttpProtocolFactory` of an ASGI app, with its lifespan."""

    def __init__(
        self,
        app: AsgiApp,
        limits: Limits | None = None,
        root_path: str = "",
        lifespan: LifespanMode = "auto",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(app, kind="asgi", limits=limits, consumer_factory=AsgiConsumer)
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0, got {timeout!r}")
        self.root_path = root_path.rstrip("/")
        self.timeout = timeout
        self.lifespan = Lifespan(app, lifespan)

    async def startup(self) -> None:
        """The app's lifespan startup: before the worker says it is ready."""
        await self.lifespan.startup()

    async def shutdown(self) -> None:
        """The app's lifespan shutdown: when the worker stops."""
        await self.lifespan.shutdown()


def asgi_protocol_factory(
    app: AsgiApp,
    limits: Limits | None = None,
    root_path: str = "",
    lifespan: LifespanMode = "auto",
    timeout: float = DEFAULT_TIMEOUT,
) -> AsgiProtocolFactory:
    """The protocol factory serving ASGI 3 application ``app`` over HTTP/1.1.

    ``root_path`` is the prefix the app is mounted at (behind a proxy); ``lifespan``
    whether its lifespan scope runs (``await factory.startup()`` before serving,
    ``await factory.shutdown()`` after); ``timeout`` the seconds an app has to start its
    response (0: no bound). Serve it with
    ``TcpServer(asgi_protocol_factory(app), loop, address=...)``.
    """
    return AsgiProtocolFactory(
        app, limits=limits, root_path=root_path, lifespan=lifespan, timeout=timeout
    )
