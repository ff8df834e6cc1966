"""ASGI 3 applications (HTTP spec 2.x and lifespan) on the HTTP consumer.

Each request runs ``await app(scope, receive, send)`` in a task on the worker's loop, on
the same connection and state machine as the raw and WSGI paths. A request with a body
is handed to its app as soon as its head has arrived; ``receive()`` gives the body as it
arrives (``http.request`` events with ``more_body``), and reading pauses while the app has
not received the bytes it was given (more than ``STREAM_HIGH``). ``Expect: 100-continue``
is answered when the app first calls ``receive()``. Once the body is received,
``receive()`` waits until the client goes away (or closes its side) or the response is
complete, then returns ``http.disconnect``.

The scope follows the HTTP spec 2.x: ``path`` is percent-decoded (UTF-8) and, like
``raw_path``, begins with ``root_path`` (``--root-path``: the prefix a proxy stripped, as
uvicorn does; the spec derives ``PATH_INFO`` by stripping ``root_path`` from ``path``);
header names are lowercased; ``state`` is a shallow copy of the lifespan's;
``extensions`` offers ``http.response.trailers`` (one dict shared by every scope: apps
read it, none should write it).

``send()`` takes ``http.response.start`` then ``http.response.body`` events; it waits
while the client is slow to read, and raises ``ClientDisconnected`` (an ``OSError``) once
the client has gone. A response whose whole body comes in one event gets a
``Content-Length``, else it is chunked (HTTP/1.1) or ends with the close (HTTP/1.0); HEAD
responses send no body. An app that raises before its first body event gets a 500 (logged
once); after, its connection is aborted.

Trailers (the ``http.response.trailers`` extension): a start with ``trailers: True`` is
completed by ``http.response.trailers`` events (``more_trailers``) after the last body.
They are sent, in the trailer section of a chunked body, only to an HTTP/1.1 client that
sent ``TE: trailers`` (as the extension says), and never for HEAD or a status without a
body; otherwise they are dropped and the response is framed as any other. A response with
trailers is always chunked (an app's ``Content-Length`` is dropped: the two cannot go
together).

A silent app is bounded by ``timeout`` (``--asgi-timeout``, 60 s by default; 0: none): an
app that has neither received a body part nor sent an event for that long is cancelled.
Before its response has started it is answered 500; after, its connection is aborted, so
the client sees a cut response instead of a hang (uvicorn has no such bound, and our
keep-alive timeout does not apply to a request in progress; ``--timeout`` only watches the
worker's loop). A
response that sends nothing while the client does not read counts as silent too. A
long-lived stream (server-sent events, long polling) must send something (an SSE comment)
more often than the timeout, or run with ``--asgi-timeout 0``. The deadlines are checked
by one periodic sweep per worker (every quarter of the timeout, only while requests are
in progress), so an app is cancelled between ``timeout`` and 1.25 x ``timeout`` after it
went silent, and a request costs no timer of its own.

Cost per request (a keep-alive GET answered in one body event): one task (frameworks
need ``asyncio.current_task()``; made directly, named ``pulsar_arbiter.asgi``, when the
loop has no task factory), which runs the app in a wrapper that ends the request
itself (no done callback); no timer (the sweep above); the scope is a copy of a
per-connection template, with the path parts of repeated targets cached per factory;
``send()`` is a plain method that writes in the call and returns a done future, or the
connection's drain while the client is slow (an awaitable, as granian's is, not a
coroutine); header blocks are encoded once per distinct set of headers, and the usual head
(HTTP/1.1 kept alive, a length) is a cached prefix plus the Date field, written with the
body in one ``write``.

Lifespan (:class:`Lifespan`): ``startup()`` runs the app's lifespan scope up to
``lifespan.startup.complete``; its ``state`` dict is copied into every request's scope.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal

from mypy_extensions import mypyc_attr

from .connection import HOLD_STREAM, HttpConnection
from .consumer import HttpConsumer
from .factory import HttpProtocolFactory
from .limits import Limits
from .request import HttpRequest
from .rules import FORBIDDEN_TRAILERS
from .wire import CONTINUE, date_header, status_line

__all__ = [
    "AsgiConsumer",
    "AsgiProtocolFactory",
    "ClientDisconnected",
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
# Seconds an app may stay silent when the factory is given no timeout.
DEFAULT_TIMEOUT = 60.0
# The sweep of deadlines runs this many times per timeout (see the module's docstring).
SWEEPS_PER_TIMEOUT = 4
# Entries of the status line cache: codes repeat, but an app could send many.
CACHE_SIZE = 512
# The path parts of origin-form targets up to PATH_CACHE_TARGET bytes are cached per
# factory (paths repeat: routes, health checks), up to PATH_CACHE_SIZE of them.
PATH_CACHE_SIZE = 1024
PATH_CACHE_TARGET = 256
# The attribute a recording subclass reads the length of a counted body from.
ANSWER_LENGTH = "answer_length"
# The name of every request's task (a name given costs less than the unique default).
TASK_NAME = "pulsar_arbiter.asgi"
_Task = asyncio.Task
# The extensions every HTTP scope offers: one dict, read by apps, for all of them.
EXTENSIONS: dict[str, Any] = {"http.response.trailers": {}}

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
# The response header names the encoder treats apart, by length: one dict lookup tells
# an ordinary name (most of them) from one to compare.
_SPECIAL_LENGTHS = frozenset(
    len(name) for name in (*_HOP_BY_HOP, b"connection", b"content-length", b"date")
)
_status_lines: dict[int, bytes] = {}
# Encoded response header blocks by their fields: an app that sends the same headers for
# many responses (a constant list, or equal ones) has them encoded and checked once.
_header_blocks: dict[tuple[Any, ...], tuple[bytes, int | None, bool]] = {}
# Response heads up to the Date field, by (status line, header block, Content-Length).
_head_prefixes: dict[tuple[bytes, bytes, int], bytes] = {}


class LifespanError(Exception):
    """The app's lifespan startup (or, with ``lifespan="on"``, support) failed."""


@mypyc_attr(native_class=False)  # mypyc compiles subclasses of Exception only
class ClientDisconnected(ConnectionResetError):
    """Raised by ``send()`` once the client has gone (spec 2.4: an ``OSError``)."""


def _status_line(status: object) -> bytes:
    if type(status) is not int:
        raise ValueError(f"invalid ASGI response status {status!r}")
    line = _status_lines.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise ValueError(f"invalid ASGI response status {status!r}")
        if len(_status_lines) >= CACHE_SIZE:
            _status_lines.clear()
        line = _status_lines[status] = status_line(status)
    return line


def _response_headers(headers: Any) -> tuple[bytes, int | None, bool]:
    """:func:`_encode_headers` of ``headers``, cached by their value."""
    try:
        key = tuple(headers)
        found = _header_blocks.get(key)
    except TypeError:  # [name, value] lists (the spec allows them): not hashable
        return _encode_headers(headers)
    if found is None:
        found = _encode_headers(key)
        if len(_header_blocks) >= CACHE_SIZE:
            _header_blocks.clear()
        _header_blocks[key] = found
    return found


def _encode_headers(headers: Any) -> tuple[bytes, int | None, bool]:
    """(header block, Content-Length or None, close) of ASGI response headers."""
    parts: list[bytes] = []
    length: int | None = None
    close = False
    for name, value in headers:
        if type(name) is not bytes:
            name = bytes(name)
        if type(value) is not bytes:
            value = bytes(value)
        if b":" in name:
            raise ValueError(f"invalid character in ASGI response header name {name!r}")
        if len(name) in _SPECIAL_LENGTHS:
            lname = name.lower()
            if lname == b"connection":
                close = b"close" in value.lower()
                continue
            if lname == b"content-length":
                if b"\r" in value or b"\n" in value:
                    raise ValueError(f"invalid Content-Length {value!r}")
                length = int(value)
                if length < 0:
                    raise ValueError(f"negative Content-Length {value!r}")
                continue
            if lname == b"date":
                continue  # the server's own, cached per second
            if lname in _HOP_BY_HOP:
                raise ValueError(f"hop-by-hop header {name!r} is not allowed in an ASGI response")
        parts.append(name + b": " + value + b"\r\n")
    block = b"".join(parts)
    # Each field line holds exactly one CR and one LF: its end.
    count = len(parts)
    if block.count(b"\n") != count or block.count(b"\r") != count:
        raise ValueError(f"invalid character in ASGI response headers {headers!r}")
    return block, length, close


def _encode_trailers(headers: Any) -> bytes:
    """The trailer section's field lines; fields a trailer may not carry are dropped."""
    parts: list[bytes] = []
    for name, value in headers:
        name, value = bytes(name), bytes(value)
        if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name or b":" in name:
            raise ValueError(f"invalid character in ASGI response trailer {(name, value)!r}")
        if not name or name.lower() in FORBIDDEN_TRAILERS:
            continue
        parts.append(name + b": " + value + b"\r\n")
    return b"".join(parts)


def _accepts_trailers(request: Any) -> bool:
    """Did the client send ``TE: trailers`` (RFC 9110, 10.1.4)?"""
    for name, value in request.headers:
        if len(name) == 2 and name.lower() == b"te":
            for coding in value.lower().split(b","):
                if coding.split(b";", 1)[0].strip() == b"trailers":
                    return True
    return False


def _unquote(path: bytes) -> str:
    from urllib.parse import unquote_to_bytes

    return unquote_to_bytes(path).decode("utf-8", "surrogateescape")


class _ConnectionState:
    """What the scopes of a connection's requests share (its ``adapter_state``): a
    template scope (scheme and addresses) that each request's copies, and the done
    future ``send()`` returns when it need not wait."""

    __slots__ = ("done", "template")

    def __init__(self, connection: HttpConnection, root_path: str) -> None:
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
        # Every key a scope has, so that a request's copy only replaces values (copying
        # a dict is cheaper than building one).
        self.template: dict[str, Any] = {
            "type": "http",
            "asgi": ASGI_VERSION,
            "http_version": "1.1",
            "method": "GET",
            "scheme": "https" if ssl is not None else "http",
            "path": root_path,
            "raw_path": b"",
            "query_string": b"",
            "root_path": root_path,
            "headers": (),
            "client": client,
            "server": server,
            "extensions": EXTENSIONS,
        }
        loop = connection._loop or asyncio.get_running_loop()
        # Awaiting a done future costs no frame: send() returns it when it has written.
        self.done: asyncio.Future[None] = loop.create_future()
        self.done.set_result(None)


def _path_parts(request: Any, root_path: str) -> tuple[str, bytes, bytes]:
    """``(path, raw_path, query_string)`` of ``request``'s target under ``root_path``."""
    target = request.target
    if target[:1] == b"/":
        raw_path, _, query = target.partition(b"?")
    else:
        raw_path, query = request.split_target()
    if b"%" in raw_path:
        path = _unquote(raw_path)
    elif raw_path.isascii():
        path = raw_path.decode("ascii")
    else:
        path = raw_path.decode("utf-8", "surrogateescape")
    if root_path:
        return root_path + path, root_path.encode("utf-8") + raw_path, query
    return path, raw_path, query


def build_scope(
    request: HttpRequest,
    root_path: str = "",
    state: dict[str, Any] | None = None,
    paths: dict[bytes, tuple[str, bytes, bytes]] | None = None,
) -> dict[str, Any]:
    """The ASGI HTTP scope of ``request`` (an :class:`HttpRequest`).

    ``path`` and ``raw_path`` include ``root_path`` (as uvicorn's do, so that frameworks
    that strip it, like Starlette, route the rest); ``state`` is copied (shallow);
    ``paths`` caches the path parts of targets (for one ``root_path``).
    """
    connection = request.connection
    base: _ConnectionState | None = connection.adapter_state
    if base is None:
        base = _ConnectionState(connection, root_path)
        connection.adapter_state = base
    target = request.target
    parts = paths.get(target) if paths is not None else None
    if parts is None:
        parts = _path_parts(request, root_path)
        if paths is not None and len(target) <= PATH_CACHE_TARGET and target[:1] == b"/":
            if len(paths) >= PATH_CACHE_SIZE:
                paths.clear()
            paths[target] = parts
    scope = base.template.copy()
    scope["http_version"] = request.version
    scope["method"] = request.method
    scope["path"], scope["raw_path"], scope["query_string"] = parts
    scope["headers"] = [(name.lower(), value) for name, value in request.headers]
    if state is not None:
        scope["state"] = state.copy()
    return scope


class _Deadlines:
    """The silence deadlines of one factory's requests, checked by one periodic sweep.

    A request stamps the sweep count (``tick``) when it starts and at each sign of life
    (a body part received, an event sent); the sweep, every ``timeout / 4``, times out
    those whose stamp is more than four sweeps old. It runs only while requests are in
    progress, so an idle worker is not woken.
    """

    __slots__ = ("_handle", "_loop", "interval", "running", "tick", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.interval = timeout / SWEEPS_PER_TIMEOUT
        self.tick = 0
        self.running: set[AsgiConsumer] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Sweep from now on, while requests are in progress (``running``), on ``loop``
        (a factory served by a new loop, as tests do, drops the old loop's sweep)."""
        self._loop = loop
        self._handle = loop.call_later(self.interval, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self.tick = tick = self.tick + 1
        running = self.running
        expired = [c for c in running if tick - c._stamp > SWEEPS_PER_TIMEOUT]
        self._handle = None
        try:
            for consumer in expired:
                running.discard(consumer)
                try:
                    consumer._timed_out(self.timeout)
                except Exception:  # one request's failure must not stop the sweeps
                    LOGGER.exception("error timing out %r", consumer)
        finally:
            if running and self._loop is loop and not loop.is_closed():
                self._handle = loop.call_later(self.interval, self._sweep, loop)


@mypyc_attr(allow_interpreted_subclasses=True)
class AsgiConsumer(HttpConsumer):
    """Runs the connection's ASGI app for one request, in a task on the loop."""

    continue_at_once = False
    _task_: asyncio.Task[None] | None = None
    _deadlines: _Deadlines | None = None
    _stamp = 0
    # The response: (status, status line, header block, Content-Length, close), once
    # ``http.response.start`` is sent; then whether its trailers are awaited and sent.
    _start: tuple[int, bytes, bytes, int | None, bool] | None = None
    _trailers = False
    _send_trailers = False
    _trailer_block = b""
    _body_done = False
    # Body bytes of a response framed without a length (chunked, or up to the close),
    # counted for the access log: ``answer_length`` once the response is complete.
    _counted: int | None = None
    answer_length: int | None = None
    _complete = False
    _lost = False
    _peer_eof = False
    _streaming = False
    _given = False
    _continued = False
    _held = False
    _eof = False
    _timed = False
    _error: BaseException | None = None
    _wakeup: asyncio.Future[None] | None = None
    _buffer: bytes | bytearray = b""
    _done: asyncio.Future[None]

    def on_head(self) -> None:
        request = self._request
        self._buffer = bytearray(request.body)
        self._streaming = True
        request.body_stream = self
        self._run()

    def on_message(self) -> None:
        if self._task_ is None:
            request = self._request
            body = request._body
            self._buffer = body if type(body) is bytes else request.body
            self._eof = True
            self._run()

    def _run(self) -> None:
        # Typed locals: the compiled build reads their attributes from the C structs.
        connection: HttpConnection = self._connection
        factory: AsgiProtocolFactory = connection.http  # type: ignore[assignment]
        request: HttpRequest = self._request
        lifespan = factory.lifespan
        scope = build_scope(
            request,
            factory.root_path,
            lifespan.state if lifespan.supported else None,
            factory._paths,
        )
        base: _ConnectionState = connection.adapter_state
        self._done = base.done
        if not request.simple:  # a Connection field: perhaps a WebSocket handshake
            from .asgi_websocket import serve_websocket

            if serve_websocket(self, scope):
                return
        loop: asyncio.AbstractEventLoop = connection._loop  # type: ignore[assignment]
        deadlines = factory._deadlines
        if deadlines is not None:
            self._deadlines = deadlines
            self._stamp = deadlines.tick
            deadlines.running.add(self)
            if deadlines._handle is None or deadlines._loop is not loop:
                deadlines.start(loop)
        coro = self._main(connection.app, scope)
        if loop.get_task_factory() is None:
            # What create_task() does without a task factory, minus its Python-level call
            # and the formatting of a unique "Task-N" name: a third of the task's cost.
            self._task_ = _Task(coro, loop=loop, name=TASK_NAME)
        else:
            self._task_ = loop.create_task(coro)

    async def _main(self, app: AsgiApp, scope: Scope) -> None:
        try:
            await app(scope, self.asgi_receive, self.asgi_send)
        except asyncio.CancelledError as exc:
            if not self._timed:
                self._ended(exc)
                raise
        except Exception as exc:
            self._ended(exc)
        except BaseException as exc:
            self._ended(exc)
            raise
        else:
            if not self._finished:
                self._ended(None)

    # -- the body stream the connection feeds (see HttpRequest.body_stream)
    def feed(self, data: bytes) -> None:
        buffer = self._buffer
        assert type(buffer) is bytearray
        buffer += data
        if len(buffer) > STREAM_HIGH and not self._held:
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
        waiter = self._wakeup = self._connection._loop.create_future()
        try:
            await waiter
        finally:
            self._wakeup = None

    # -- the app's side
    async def asgi_receive(self) -> Message:
        """The next ``http.request`` event, then ``http.disconnect`` when it applies."""
        if not self._given:
            if not self._streaming:
                self._given = True
                return {"type": "http.request", "body": self._buffer, "more_body": False}
            request = self._request
            if request.expect_continue and not self._continued:
                self._continued = True
                if not self._head_sent and not self._lost:
                    self._write_raw(CONTINUE)
            buffer = self._buffer
            assert type(buffer) is bytearray
            while not buffer and not self._eof:
                if self._lost or self._error is not None:
                    return {"type": "http.disconnect"}
                await self._wait()
            body = bytes(buffer)
            buffer.clear()
            if self._held:
                self._held = False
                self._connection.release_reading(HOLD_STREAM)
            deadlines = self._deadlines
            if deadlines is not None:
                self._stamp = deadlines.tick
            if self._eof and not buffer:
                self._given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.request", "body": body, "more_body": True}
        while not (self._lost or self._peer_eof or self._complete or self._error is not None):
            await self._wait()
        return {"type": "http.disconnect"}

    def asgi_send(self, message: Message) -> Awaitable[None]:
        """Take an ``http.response.start``, ``http.response.body`` or
        ``http.response.trailers`` event.

        The event is handled (and written) in the call, which returns what the app awaits:
        a done future, or, while the client is slow to read, the connection's drain (as
        granian's send does, an awaitable rather than a coroutine: no frame per event).
        """
        if self._lost:
            raise ClientDisconnected("the client went away")
        if self._finished and not self._complete:
            raise RuntimeError("the server has already answered (the app failed or timed out)")
        # Events are dicts (any other mapping is read as one): the compiled build then
        # reads them with the dict's own lookups.
        event: dict[str, Any] = message if type(message) is dict else dict(message)
        kind = event["type"]
        if kind == "http.response.start":
            if self._start is not None:
                raise RuntimeError("http.response.start sent twice")
            status = event["status"]
            line = _status_lines.get(status) if type(status) is int else None
            if line is None:
                line = _status_line(status)
            block, length, close = _response_headers(event.get("headers", ()))
            self._start = (status, line, block, length, close)
            if event.get("trailers", False):
                self._trailers = True
            return self._done
        deadlines = self._deadlines
        if deadlines is not None:
            self._stamp = deadlines.tick
        if kind == "http.response.body":
            start = self._start
            if start is None:
                raise RuntimeError("http.response.body sent before http.response.start")
            if self._body_done:
                raise RuntimeError("http.response.body sent after the response's last body")
            body = event.get("body", b"")
            more = event.get("more_body", False)
            if self._head is None and not self._head_sent:
                status, line, block, length, close = start
                if self._trailers:
                    self._send_trailers = self._trailers_go(status)
                    if self._send_trailers:
                        length = None  # chunked: the trailer section ends the body
                if length is None and not more and not self._send_trailers:
                    length = len(body)
                request: HttpRequest = self._request
                connection: HttpConnection = self._connection
                if (
                    type(self) is AsgiConsumer  # a subclass may hook frame() (access log)
                    and request.simple  # HTTP/1.1, kept alive, not HEAD
                    and length is not None
                    and status >= 200
                    and status != 204
                    and status != 304
                    and not close
                    and request.complete
                    and not connection._drain_close
                ):
                    # What frame() makes of the usual response, with its unchanging part
                    # cached: status line, headers and Content-Length.
                    key = (line, block, length)
                    prefix = _head_prefixes.get(key)
                    if prefix is None:
                        if len(_head_prefixes) >= CACHE_SIZE:
                            _head_prefixes.clear()
                        prefix = _head_prefixes[key] = b"%scontent-length: %d\r\n" % (
                            line + block,
                            length,
                        )
                    head = prefix + date_header() + b"\r\n"
                    self._length_left = length
                else:
                    head = self.frame(status, line, block, length, None, close)
                if not more and not self._trailers and length == len(body):
                    # The usual answer: head and whole body in one write, then done.
                    transport = connection._transport
                    if transport is not None and not transport.is_closing():
                        transport.write(head if self._no_body or not body else head + body)
                    self._head_sent = True
                    self._length_left = None
                    self._body_done = self._complete = True
                    if deadlines is not None:
                        deadlines.running.discard(self)
                    if not self._keep:
                        connection.close_after_request()
                    self.finished()
                    return self._done
                self._head = head
                if length is None:
                    self._counted = 0
            waiter: Awaitable[None] = self._done
            if body:
                if self._counted is not None:
                    self._counted += len(body)
                written = self.send_body(body)
                if written:
                    waiter = written
            if not more:
                self._body_done = True
                if not self._trailers:
                    self._finish_response()
            return waiter
        if kind == "http.response.trailers":
            if not self._trailers:
                raise RuntimeError("http.response.trailers sent without trailers in the start")
            if not self._body_done:
                raise RuntimeError("http.response.trailers sent before the response's last body")
            if self._complete:
                raise RuntimeError("http.response.trailers sent after the response completed")
            if self._send_trailers:
                self._trailer_block += _encode_trailers(event.get("headers", ()))
            if not event.get("more_trailers", False):
                self._finish_response()
            return self._done
        raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def _trailers_go(self, status: int) -> bool:
        """Whether the trailers the app will send go to this client."""
        request = self._request
        return (
            request.version == "1.1"
            and request.method != "HEAD"
            and status >= 200
            and status != 204
            and status != 304
            and _accepts_trailers(request)
        )

    def _finish_response(self) -> None:
        self._complete = True
        if self._counted is not None and not self._no_body:
            # For a subclass that records answers (the access log's, whose own class
            # attribute of that name would hide a compiled slot): a plain setattr.
            setattr(self, ANSWER_LENGTH, self._counted)
        deadlines = self._deadlines
        if deadlines is not None:
            # What the app does after its response (background tasks) is not bounded.
            deadlines.running.discard(self)
        self._wake()
        if self._finished:
            return
        if self._send_trailers and self._chunked:
            tail = self._encode_body(b"")  # the head, if no body part was written
            self._write_raw(tail + b"0\r\n" + self._trailer_block + b"\r\n")
            self.end_request()
            return
        self.end()

    # -- ending
    def _timed_out(self, timeout: float) -> None:
        """Silent for ``timeout`` seconds: cancel the app; a 500, or abort once started."""
        task = self._task_
        if task is None or task.done():
            return
        self._timed = True
        task.cancel()  # a client gone before the response ended leaves no app behind
        if self._finished:
            return
        if self._head_sent:
            what = f"the ASGI app sent nothing for {timeout:g}s after its response started"
        else:
            what = f"the ASGI app did not answer within {timeout:g}s"
        self.body_failed(TimeoutError(what))

    def _ended(self, exc: BaseException | None) -> None:
        """The app's call returned (``exc`` None) or raised."""
        deadlines = self._deadlines
        if deadlines is not None:
            deadlines.running.discard(self)
        if exc is not None:
            if self._finished:
                if not self._lost and not isinstance(exc, OSError | asyncio.CancelledError):
                    LOGGER.error("error in ASGI app after its response", exc_info=exc)
                return
            if isinstance(exc, ClientDisconnected):
                self.finished(exc)  # the client went away: nothing to log (spec 2.4)
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
        self._deadlines = _Deadlines(timeout) if timeout else None
        self._paths: dict[bytes, tuple[str, bytes, bytes]] = {}
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
    ``await factory.shutdown()`` after); ``timeout`` the seconds an app may stay silent
    before or during its response (0: no bound; see the module's docstring). Serve it with
    ``TcpServer(asgi_protocol_factory(app), loop, address=...)``.
    """
    return AsgiProtocolFactory(
        app, limits=limits, root_path=root_path, lifespan=lifespan, timeout=timeout
    )
