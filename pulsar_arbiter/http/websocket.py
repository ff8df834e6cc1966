"""WebSocket (RFC 6455) on the HTTP consumer, through ``Connection.upgrade()``.

The opening handshake is an HTTP request: :func:`handshake_error` checks it (a GET with
``Upgrade: websocket``, ``Connection: upgrade``, ``Sec-WebSocket-Version: 13`` and a
valid ``Sec-WebSocket-Key``) and the HTTP consumer answers ``101 Switching Protocols``
(:func:`accept_fields`), then the connection switches, with ``Connection.upgrade()``, to
a :class:`WebSocketConsumer` for the rest of the connection's life: frames are read and
written by :mod:`.wsframes`, messages assembled (and checked: UTF-8, fragments, close
codes) here. ``wsproto`` negotiates and runs per-message deflate (RFC 7692) and makes the
handshake's accept token.

A raw HTTP handler upgrades with :func:`websocket_upgrade`::

    class Echo(WebSocketConsumer):
        def on_text(self, text: str) -> None:
            self.send(text)

    def app(request: HttpRequest) -> Response:
        return websocket_upgrade(request, Echo)

What the consumer does on its own (:class:`WebSocketSettings`, the ``--ws-*`` flags):

* keep-alive: a ping every ``ping_interval`` seconds; a peer that has not answered one
  within ``ping_timeout`` is closed with 1011;
* a message larger than ``max_size`` bytes, counted over its fragments (a frame from its
  header, before its bytes are held; a compressed one as it inflates) closes with 1009;
* a peer that breaks the protocol gets a close with 1002 (or 1007 for text that is not
  UTF-8) and the connection closes;
* the close handshake: a peer's close is echoed, then the connection closes; ours waits
  ``CLOSE_TIMEOUT`` seconds for the peer's answer, then the connection is aborted;
* drains: when its server drains (a recycle, a HUP, a TERM) the connection's ``draining``
  event sends a close 1012 (service restart), so clients reconnect elsewhere;
* back-pressure: reading stops while more than ``MAX_PENDING_MESSAGES`` messages (or
  ``MAX_PENDING_BYTES``) wait for the application; ``send()`` returns a Future to await
  while the transport's write buffer is full, as ``Protocol.write`` does.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from mypy_extensions import mypyc_attr
from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, Opcode, RsvBits
from wsproto.handshake import server_extensions_handshake
from wsproto.utilities import generate_accept_token, split_comma_header

from ..protocols import NO_WRITE, ProtocolConsumer
from .request import Response
from .state import UPGRADED
from .wsdeflate import BoundedDeflate
from .wsframes import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    RSV1,
    TEXT,
    Frame,
    FrameReader,
    ProtocolError,
    close_payload,
    encode_frame,
    parse_close,
)

if TYPE_CHECKING:
    from .connection import HttpConnection
    from .request import HttpRequest

__all__ = [
    "CLOSE_TIMEOUT",
    "DEFAULT_WEBSOCKET",
    "BoundedDeflate",
    "ClientDisconnected",
    "Handshake",
    "WebSocketConsumer",
    "WebSocketSettings",
    "accept_fields",
    "handshake_error",
    "head_block",
    "is_websocket_request",
    "rejection",
    "requested_subprotocols",
    "settings_of",
    "switch_to",
    "websocket_upgrade",
]

#: Close codes (RFC 6455, 7.4.1).
NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
NO_STATUS = 1005
ABNORMAL_CLOSURE = 1006
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
SERVICE_RESTART = 1012

# Seconds a close we sent waits for the peer's close (and a failed connection for its
# close frame to leave the buffer) before the connection is aborted: a peer that never
# completes the handshake must not hold a draining worker for its whole grace period.
CLOSE_TIMEOUT = 5.0
# Complete messages received but not yet handled by the application before the
# connection stops reading: enough to absorb a burst without a pause/resume per message,
# few enough that a slow application slows its peer (TCP) instead of growing our memory.
MAX_PENDING_MESSAGES = 16
# Bytes of such messages before it stops reading, whatever their number.
MAX_PENDING_BYTES = 1024 * 1024

_GUID_KEY_LENGTH = 16  # a Sec-WebSocket-Key is 16 random bytes, base64-encoded


@dataclass(frozen=True)
class WebSocketSettings:
    """How WebSocket connections behave (the ``--ws-*`` flags).

    ``ping_interval`` seconds between keep-alive pings (0: none); ``ping_timeout``
    seconds a ping may stay unanswered before the connection closes with 1011 (0: no
    bound); ``max_size`` the largest message in bytes (1009 past it); ``per_message_deflate``
    whether compression (RFC 7692) is accepted when a client offers it.
    """

    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    max_size: int = 16 * 1024 * 1024
    per_message_deflate: bool = True

    def __post_init__(self) -> None:
        if self.ping_interval < 0 or self.ping_timeout < 0:
            raise ValueError("ping_interval and ping_timeout must be >= 0")
        if self.max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {self.max_size!r}")


DEFAULT_WEBSOCKET = WebSocketSettings()


@mypyc_attr(native_class=False)  # mypyc compiles subclasses of Exception only
class ClientDisconnected(OSError):
    """Sending on a WebSocket whose connection has closed (ASGI: an ``OSError``)."""


class HandshakeRequest(Protocol):
    """What the handshake checks read of a request: an :class:`HttpRequest`, or any
    object alike (the checks are pure; the compiled build checks no class here)."""

    @property
    def method(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def simple(self) -> bool: ...

    @property
    def has_body(self) -> bool: ...

    def header(self, name: str) -> str | None: ...


def _tokens(request: HandshakeRequest, name: str) -> set[str]:
    value = request.header(name)
    if value is None:
        return set()
    return {token.strip().lower() for token in value.split(",")}


def is_websocket_request(request: HandshakeRequest) -> bool:
    """Does the request ask for a WebSocket (``Upgrade: websocket``)? Valid or not."""
    if request.simple:  # no Connection field: not an upgrade
        return False
    return "websocket" in _tokens(request, "upgrade")


def handshake_error(request: HandshakeRequest) -> tuple[int, str] | None:
    """Why ``request`` is not a valid opening handshake, as (status, reason); None if it is.

    426 when only the version is wrong (the answer says which one we speak), else 400.
    """
    if request.method != "GET":
        return 400, f"a WebSocket handshake is a GET, not {request.method}"
    if request.version != "1.1":
        return 400, "a WebSocket handshake needs HTTP/1.1"
    if request.has_body:
        return 400, "a WebSocket handshake has no body"
    if "websocket" not in _tokens(request, "upgrade"):
        return 400, "missing Upgrade: websocket"
    if "upgrade" not in _tokens(request, "connection"):
        return 400, "missing Connection: upgrade"
    key = request.header("sec-websocket-key")
    if key is None:
        return 400, "missing Sec-WebSocket-Key"
    try:
        decoded = base64.b64decode(key.strip(), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) != _GUID_KEY_LENGTH:
        return 400, "invalid Sec-WebSocket-Key"
    version = request.header("sec-websocket-version")
    if version is None or version.strip() != "13":
        return 426, "unsupported Sec-WebSocket-Version (13 is supported)"
    return None


def rejection(status: int, reason: str) -> Response:
    """The answer to a bad handshake: one line saying why; 426 names version 13."""
    headers: list[tuple[str | bytes, str | bytes]] = [("connection", "close")]
    if status == 426:
        headers.append(("sec-websocket-version", "13"))
    return Response(
        f"{status} {reason}\n".encode(),
        status=status,
        headers=headers,
        content_type="text/plain; charset=utf-8",
    )


@dataclass
class Handshake:
    """What the opening handshake agreed, handed to the :class:`WebSocketConsumer`."""

    request: HttpRequest
    settings: WebSocketSettings
    extensions: list[Extension]
    subprotocol: str | None = None


def requested_subprotocols(request: HandshakeRequest) -> list[str]:
    value = request.header("sec-websocket-protocol")
    return split_comma_header(value.encode("latin-1")) if value else []


def accept_fields(
    request: HttpRequest,
    settings: WebSocketSettings,
    subprotocol: str | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> tuple[list[tuple[bytes, bytes]], Handshake]:
    """The fields of the ``101 Switching Protocols`` answer to a valid handshake, and
    what it agreed.

    Per-message deflate is accepted when the client offers it and ``settings`` allow it.
    ``headers`` are extra response fields (an ASGI app's); they may not repeat the
    handshake's own fields.
    """
    key = (request.header("sec-websocket-key") or "").strip().encode("ascii")
    fields = [
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-accept", generate_accept_token(key)),
    ]
    extensions: list[Extension] = []
    offers = request.header("sec-websocket-extensions")
    if offers and settings.per_message_deflate:
        deflate = BoundedDeflate(settings.max_size)
        accepted = server_extensions_handshake(
            split_comma_header(offers.encode("latin-1")), [deflate]
        )
        if accepted:
            extensions.append(deflate)
            fields.append((b"sec-websocket-extensions", accepted))
    if subprotocol is not None:
        if subprotocol not in requested_subprotocols(request):
            raise ValueError(f"subprotocol {subprotocol!r} was not offered by the client")
        fields.append((b"sec-websocket-protocol", subprotocol.encode("ascii")))
    for name, value in headers:
        name, value = bytes(name), bytes(value)
        if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name or b":" in name:
            raise ValueError(f"invalid character in WebSocket response header {name!r}")
        lname = name.lower()
        if lname.startswith(b"sec-websocket-") or lname in (b"upgrade", b"connection"):
            raise ValueError(f"header {name!r} is the server's to set in a WebSocket handshake")
        fields.append((name, value))
    return fields, Handshake(request, settings, extensions, subprotocol)


def head_block(fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The header block of a ``101`` answer with ``fields`` (from :func:`accept_fields`),
    but ``Connection``: the HTTP consumer frames that one (``HttpConsumer.frame``)."""
    return b"".join(
        name + b": " + value + b"\r\n" for name, value in fields if name != b"connection"
    )


def settings_of(connection: HttpConnection) -> WebSocketSettings:
    """The WebSocket settings of the server ``connection`` belongs to."""
    http = connection.http
    settings = getattr(http, "websocket", None) if http is not None else None
    return settings if settings is not None else DEFAULT_WEBSOCKET


def switch_to(
    connection: HttpConnection, consumer_factory: Callable[..., WebSocketConsumer], shake: Handshake
) -> Callable[[], None]:
    """After the current request, serve ``connection`` with a WebSocket consumer.

    The consumer is made as soon as the connection has switched (not on the first frame
    from the client): it pings, and closes on a drain, even if the client stays silent.
    Returns what makes it: a caller that knows the switch happened calls it at once.
    """

    def build(loop: asyncio.AbstractEventLoop | None = None) -> WebSocketConsumer:
        consumer = consumer_factory(loop=loop)
        consumer.handshake = shake
        return consumer

    connection.upgrade(build)

    def open_now() -> None:
        if (
            connection.closed
            or connection.consumer_factory is not build
            or connection.state is not UPGRADED
        ):
            return
        consumer = connection.current_consumer()
        if not consumer._started:
            consumer.start()

    # A handler that answers at once does so before the connection has seen the end of
    # the upgrade request: it switches when that request's parsing returns. One that
    # answers later switches when its consumer finishes.
    connection._loop_or_running().call_soon(open_now)
    answering = connection._current_consumer
    if answering is not None:
        answering.bind_event("post_request", lambda *args, **kw: open_now())
    return open_now


def websocket_upgrade(
    request: HttpRequest,
    consumer_factory: Callable[..., WebSocketConsumer],
    subprotocol: str | None = None,
) -> Response:
    """A raw handler's answer to a WebSocket handshake: 101 and the switch, or why not.

    ``consumer_factory`` (a :class:`WebSocketConsumer` subclass) serves the connection
    once switched; ``subprotocol`` is one the client offered
    (``requested_subprotocols(request)``), or None. A bad handshake gets 400 or 426
    with one line saying what is wrong, and the connection closes.
    """
    connection = request.connection
    error = handshake_error(request)
    if error is not None:
        connection.close_after_request()
        return rejection(*error)
    fields, shake = accept_fields(request, settings_of(connection), subprotocol)
    switch_to(connection, consumer_factory, shake)
    return Response(status=101, headers=list(fields))


@mypyc_attr(allow_interpreted_subclasses=True)
class WebSocketConsumer(ProtocolConsumer):
    """Serves one WebSocket connection, after the handshake; subclass it.

    Override :meth:`on_open`, :meth:`on_text`, :meth:`on_bytes` and :meth:`on_close`;
    answer with :meth:`send`, :meth:`ping` and :meth:`close`. ``on_text`` and
    ``on_bytes`` may return an awaitable: the next message is handled once it is done
    (messages stay in order), and reading stops while too many wait.
    """

    #: Set by the handshake before the consumer is attached to its connection.
    handshake: Handshake | None = None
    #: What wsproto's extensions ask of the frame layer they are called from.
    client = False

    _reader: FrameReader | None = None
    _extension: Extension | None = None
    _closed_with: tuple[int, str] | None = None
    _close_sent: int | None = None
    _close_reason = ""
    _close_timer: asyncio.TimerHandle | None = None
    _ping_timer: asyncio.TimerHandle | None = None
    _pong_timer: asyncio.TimerHandle | None = None
    _ping_payload: bytes | None = None
    _handling: asyncio.Future[Any] | None = None
    _held = False
    _message_opcode: int | None = None

    # -- hooks for subclasses
    def on_open(self) -> None:
        """The connection has switched to WebSocket: ``handshake`` says what was agreed."""

    def on_text(self, text: str) -> Awaitable[None] | None:
        """A whole text message arrived."""
        return None

    def on_bytes(self, data: bytes) -> Awaitable[None] | None:
        """A whole binary message arrived."""
        return None

    def on_close(self, code: int, reason: str) -> None:
        """The WebSocket closed: the close handshake completed (``code`` is the peer's
        when it began it, ours when we did) or the connection was lost (1006)."""

    # -- API
    @property
    def settings(self) -> WebSocketSettings:
        shake = self.handshake
        return shake.settings if shake is not None else DEFAULT_WEBSOCKET

    @property
    def open(self) -> bool:
        """True from the switch until a close frame has been sent or received."""
        return self._reader is not None and self._close_sent is None and self._closed_with is None

    @property
    def close_code(self) -> int | None:
        """The code the WebSocket closed with (see :meth:`on_close`), None while open."""
        closed = self._closed_with
        return closed[0] if closed is not None else None

    def send(self, data: str | bytes | bytearray | memoryview) -> tuple[()] | asyncio.Future[None]:
        """Send a text (str) or binary message; a Future to await while writing is paused.

        Raises :class:`ClientDisconnected` once the WebSocket is closing or closed.
        """
        if not self.open:
            raise ClientDisconnected("the WebSocket is closed")
        if type(data) is str:
            return self._write(self._encode(TEXT, data.encode("utf-8")))
        if type(data) is not bytes:
            if not isinstance(data, (bytearray, memoryview)):
                raise TypeError(f"a WebSocket message is str or bytes, not {type(data).__name__}")
            data = bytes(data)
        return self._write(self._encode(BINARY, data))

    def ping(self, payload: bytes = b"") -> tuple[()] | asyncio.Future[None]:
        """Send a ping (the peer answers with a pong carrying ``payload``, <= 125 bytes)."""
        if not self.open:
            raise ClientDisconnected("the WebSocket is closed")
        if len(payload) > 125:
            raise ValueError("a ping payload is at most 125 bytes")
        return self._write(encode_frame(PING, bytes(payload)))

    async def drain(self) -> None:
        """Wait until the transport's write buffer accepts more."""
        connection = self._connection
        if connection is not None and connection._writing_paused:
            await connection._writing_waiter()

    def close(self, code: int = NORMAL_CLOSURE, reason: str = "") -> None:
        """Begin the close handshake; the connection closes when the peer answers, or is
        aborted after ``CLOSE_TIMEOUT`` seconds."""
        if self._reader is None or self._close_sent is not None or self._closed_with is not None:
            return
        self._close_sent = code
        self._close_reason = reason
        self._stop_pinging()
        self._write(encode_frame(CLOSE, close_payload(code, reason)))
        self._arm_close_timer()

    # -- lifecycle
    def start(self, request: Any = None) -> None:
        super().start(request)
        self._open()

    def _open(self) -> None:
        shake = self.handshake
        extension = shake.extensions[0] if shake is not None and shake.extensions else None
        self._extension = extension
        self._reader = FrameReader(self.settings.max_size, RSV1 if extension else 0)
        self._parts: list[bytes] = []
        self._size = 0
        # Messages waiting for a handler still running, with their sizes in bytes.
        self._pending: deque[tuple[str | bytes, int]] = deque()
        self._pending_bytes = 0
        self._schedule_ping()
        try:
            self.on_open()
        except Exception as exc:
            self._app_failed(exc)
            return
        connection = self._connection
        if connection is not None and getattr(connection, "bind_event", None) is not None:
            # Fired at once if the server already drains (a handshake accepted late).
            connection.bind_event("draining", self._on_draining)

    def _on_draining(self, *args: Any, **kw: Any) -> None:
        self.close(SERVICE_RESTART, "server restarting")

    # -- frames in
    def data_received(self, data: bytes) -> bytes | None:
        reader = self._reader
        if reader is None or self._closed_with is not None:
            return None  # after the close handshake: nothing more is read
        try:
            for frame in reader.feed(data):
                opcode = frame[0]
                if opcode == TEXT and frame[1] and self._extension is None:
                    # The usual message: whole in one frame, not compressed.
                    if self._message_opcode is not None:
                        raise ProtocolError(PROTOCOL_ERROR, "a new message inside another")
                    if self._close_sent is None:
                        try:
                            text = frame[3].decode("utf-8")
                        except UnicodeDecodeError:
                            raise ProtocolError(1007, "text message is not UTF-8") from None
                        self._deliver(text, len(frame[3]))
                elif opcode < CLOSE:
                    self._data_frame(frame)
                elif opcode == PING:
                    if self._close_sent is None:
                        with contextlib.suppress(ClientDisconnected):
                            self._write(encode_frame(PONG, frame[3]))
                elif opcode == PONG:
                    self._pong_received(frame[3])
                else:
                    self._close_frame(frame[3])
                    break
        except ProtocolError as exc:
            self._fail(exc.code, exc.reason)
        return None

    def _data_frame(self, frame: Frame) -> None:
        opcode, fin, rsv, payload = frame
        if self._extension is not None:
            payload = self._inflate(self._extension, opcode, fin, rsv, payload)
        if opcode == CONTINUATION:
            # Read into its own Optional local: the compiled build checks an assignment
            # to the int ``opcode`` before the None test could run.
            message_opcode = self._message_opcode
            if message_opcode is None:
                raise ProtocolError(PROTOCOL_ERROR, "a continuation frame outside a message")
            opcode = message_opcode
        elif self._message_opcode is not None:
            raise ProtocolError(PROTOCOL_ERROR, "a new message inside another")
        max_size = self.settings.max_size
        size = self._size + len(payload)
        if size > max_size:
            raise ProtocolError(MESSAGE_TOO_BIG, f"message larger than {max_size} bytes")
        if not fin:
            self._message_opcode = opcode
            self._parts.append(payload)
            self._size = size
            return
        if self._parts:
            self._parts.append(payload)
            payload = b"".join(self._parts)
            self._parts = []
        self._message_opcode = None
        self._size = 0
        if self._close_sent is not None:
            return  # closing: what arrives until the peer's close is not handled
        if opcode == TEXT:
            try:
                self._deliver(payload.decode("utf-8"), size)
            except UnicodeDecodeError:
                raise ProtocolError(1007, "text message is not UTF-8") from None
        else:
            self._deliver(payload, size)

    def _inflate(
        self, extension: Extension, opcode: int, fin: bool, rsv: int, payload: bytes
    ) -> bytes:
        """The payload through the negotiated extension (per-message deflate)."""
        proto: Any = self
        bits = RsvBits(bool(rsv & 0x40), bool(rsv & 0x20), bool(rsv & 0x10))
        checked = extension.frame_inbound_header(proto, Opcode(opcode), bits, len(payload))
        if isinstance(checked, CloseReason):
            raise ProtocolError(int(checked), "invalid compressed frame")
        data = extension.frame_inbound_payload_data(proto, payload)
        if isinstance(data, CloseReason):
            raise ProtocolError(int(data), "invalid compressed frame")
        tail = extension.frame_inbound_complete(proto, fin)
        if isinstance(tail, CloseReason):
            raise ProtocolError(int(tail), "invalid compressed frame")
        return bytes(data) + tail if tail else bytes(data)

    def _close_frame(self, payload: bytes) -> None:
        code, reason = parse_close(payload)
        if self._close_sent is None:
            # The peer began the close: echo its code, then close the connection.
            self._close_sent = code
            self._write(encode_frame(CLOSE, close_payload(code, reason)))
            self._finish(code, reason)
        else:
            # The peer's answer to our close: ours is the code it closed with.
            self._finish(self._close_sent, self._close_reason)

    def _fail(self, code: int, reason: str) -> None:
        """The peer broke the protocol: close with ``code``, without waiting for its close."""
        self.close(code, reason)
        self._finish(code, reason, abort_later=True)

    # -- delivering messages
    def _deliver(self, message: str | bytes, size: int) -> None:
        if self._handling is not None or self._pending:
            self._pending.append((message, size))
            self._pending_bytes += size
            if not self._held and (
                len(self._pending) > MAX_PENDING_MESSAGES or self._pending_bytes > MAX_PENDING_BYTES
            ):
                self._hold(True)
            return
        self._handle(message)

    def _handle(self, message: str | bytes) -> None:
        try:
            result = self.on_text(message) if isinstance(message, str) else self.on_bytes(message)
        except Exception as exc:
            self._app_failed(exc)
            return
        if result is not None:
            handling = self._handling = asyncio.ensure_future(result)
            handling.add_done_callback(self._handled)

    def _handled(self, task: asyncio.Future[Any]) -> None:
        self._handling = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._app_failed(exc)
            return
        pending = self._pending
        while pending and self._handling is None and self._closed_with is None:
            message, size = pending.popleft()
            self._pending_bytes -= size
            self._handle(message)
        if not pending:
            self._pending_bytes = 0
        if (
            self._held
            and len(pending) <= MAX_PENDING_MESSAGES // 2
            and self._pending_bytes <= MAX_PENDING_BYTES // 2
        ):
            self._hold(False)

    def _hold(self, hold: bool) -> None:
        """Stop (or resume) reading while the application is behind."""
        self._held = hold
        connection = self._connection
        if connection is None:
            return
        method = getattr(connection, "hold_reading" if hold else "release_reading", None)
        if method is not None:
            from .connection import HOLD_STREAM

            method(HOLD_STREAM)
            return
        transport = connection.transport
        if transport is not None and not transport.is_closing():
            if hold:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def _app_failed(self, exc: BaseException) -> None:
        connection = self._connection
        if connection is not None:
            connection.logger.error("error in WebSocket consumer %r", self, exc_info=exc)
        self.close(INTERNAL_ERROR, "internal error")

    # -- the end
    def _finish(self, code: int, reason: str, abort_later: bool = False) -> None:
        """The WebSocket is closed: tell the subclass, close the connection."""
        self._stop_pinging()
        if self._closed_with is not None:
            return
        self._closed_with = (code, reason)
        self._pending.clear()
        connection = self._connection
        if connection is not None:
            connection.close()
            timer, self._close_timer = self._close_timer, None
            if timer is not None:
                timer.cancel()
            # Bounds a peer that never reads what we wrote last (our close, its echo).
            self._arm_close_timer()
        self._closed(code, reason)

    def _closed(self, code: int, reason: str) -> None:
        try:
            self.on_close(code, reason)
        except Exception as exc:
            connection = self._connection
            if connection is not None:
                connection.logger.error("error in %r.on_close", self, exc_info=exc)

    def eof_received(self) -> None:
        # The peer sends nothing more: without its close frame the WebSocket has failed
        # (1006); after it, the close handshake is over. Either way the connection closes.
        if self._closed_with is None:
            self._finish(ABNORMAL_CLOSURE, "")
        else:
            connection = self._connection
            if connection is not None:
                connection.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_pinging()
        timer, self._close_timer = self._close_timer, None
        if timer is not None:
            timer.cancel()
        handling = self._handling
        if handling is not None and not handling.done():
            handling.cancel()
        if self._closed_with is None:
            self._closed_with = (ABNORMAL_CLOSURE, "")
            if self._reader is not None:
                self._closed(ABNORMAL_CLOSURE, "")
        if not self._finished:
            # A WebSocket ends with its connection, closed cleanly or not: not an error.
            self.finished()

    # -- close timer
    def _arm_close_timer(self) -> None:
        if self._close_timer is None and self._loop is not None:
            self._close_timer = self._loop.call_later(CLOSE_TIMEOUT, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self._close_timer = None
        connection = self._connection
        if connection is not None:
            connection.abort()

    # -- keep-alive
    def _schedule_ping(self) -> None:
        interval = self.settings.ping_interval
        if interval and self._loop is not None:
            self._ping_timer = self._loop.call_later(interval, self._send_ping)

    def _send_ping(self) -> None:
        self._ping_timer = None
        if not self.open:
            return
        if self._ping_payload is None:
            payload = self._ping_payload = os.urandom(4)
            try:
                self._write(encode_frame(PING, payload))
            except ClientDisconnected:
                return
            timeout = self.settings.ping_timeout
            if timeout and self._loop is not None:
                self._pong_timer = self._loop.call_later(timeout, self._pong_timed_out)
        self._schedule_ping()

    def _pong_received(self, payload: bytes) -> None:
        if self._ping_payload is not None and payload == self._ping_payload:
            self._ping_payload = None
            timer, self._pong_timer = self._pong_timer, None
            if timer is not None:
                timer.cancel()

    def _pong_timed_out(self) -> None:
        self._pong_timer = None
        # The peer is gone or stuck: fail the connection (our close may never be read).
        self._fail(INTERNAL_ERROR, "keepalive ping timeout")

    def _stop_pinging(self) -> None:
        for name in ("_ping_timer", "_pong_timer"):
            timer = getattr(self, name)
            if timer is not None:
                timer.cancel()
                setattr(self, name, None)

    # -- frames out
    def _encode(self, opcode: int, payload: bytes) -> bytes:
        extension = self._extension
        if extension is None:
            return encode_frame(opcode, payload)
        proto: Any = self
        rsv, data = extension.frame_outbound(
            proto, Opcode(opcode), RsvBits(False, False, False), payload, True
        )
        return encode_frame(opcode, data, RSV1 if rsv[0] else 0)

    def _write(self, data: bytes) -> tuple[()] | asyncio.Future[None]:
        connection: Any = self._connection
        transport = connection._transport if connection is not None else None
        if transport is None or transport.is_closing():
            if self._closed_with is None and self._close_sent is None:
                raise ClientDisconnected("the WebSocket's connection is closed")
            return NO_WRITE
        transport.write(data)
        if connection._writing_paused:
            return connection._writing_waiter()  # type: ignore[no-any-return]
        return NO_WRITE
