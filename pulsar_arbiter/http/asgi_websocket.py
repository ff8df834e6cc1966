"""ASGI WebSocket (spec 2.4) on the HTTP consumer and :mod:`.websocket`.

A request asking for a WebSocket reaches the :class:`~.asgi.AsgiConsumer` like any other;
it hands it to :func:`serve_websocket`. A bad handshake is answered 400 or 426 without
calling the app. Otherwise the app runs with a ``websocket`` scope (``state`` from the
lifespan, ``subprotocols``, the ``websocket.http.response`` extension) and first receives
``websocket.connect``. What it sends first decides the answer:

* ``websocket.accept`` (with ``subprotocol`` and ``headers``): ``101``, then the
  connection switches to a :class:`~.websocket.WebSocketConsumer` that turns frames into
  ``websocket.receive`` events (text or bytes) and ``websocket.send`` events into frames;
* ``websocket.close``: ``403``;
* ``websocket.http.response.start`` and ``.body``: that HTTP response (a denial);
* an error, or returning: ``500`` (logged); no answer within the ASGI timeout: ``500``.

After the accept, ``websocket.close`` (``code``, ``reason``) begins the close handshake;
the app receives ``websocket.disconnect`` (``code``, ``reason``) once it completes, when
the peer closes (its code), on a drain (1012), or when the connection is lost (1006).
``send()`` waits while the client is slow to read and raises :class:`ClientDisconnected`
(an ``OSError``) once the WebSocket is closed; reading stops while the app has not
received what arrived (see :mod:`.websocket`). An app that raises after the accept closes
the WebSocket with 1011; one that returns closes it with 1000.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from .websocket import (
    ABNORMAL_CLOSURE,
    INTERNAL_ERROR,
    MAX_PENDING_BYTES,
    MAX_PENDING_MESSAGES,
    NORMAL_CLOSURE,
    ClientDisconnected,
    WebSocketConsumer,
    accept_fields,
    handshake_error,
    head_block,
    is_websocket_request,
    rejection,
    requested_subprotocols,
    settings_of,
    switch_to,
)
from .wire import status_line

if TYPE_CHECKING:
    from .asgi import AsgiConsumer

__all__ = ["AsgiWebSocket", "AsgiWebSocketConsumer", "serve_websocket"]

LOGGER = logging.getLogger("pulsar_arbiter.asgi")

WEBSOCKET_VERSION = {"version": "3.0", "spec_version": "2.4"}
SWITCHING = status_line(101)
Message = MutableMapping[str, Any]

# Where the exchange is, from the app's side.
CONNECTING = "connecting"  # the handshake waits for the app's answer
ACCEPTED = "accepted"  # switched: frames flow
RESPONDING = "responding"  # the app denies with its own HTTP response
CLOSED = "closed"  # the app's close was sent, or the WebSocket is gone


def serve_websocket(consumer: AsgiConsumer, scope: dict[str, Any]) -> bool:
    """Serve the request of ``consumer`` as a WebSocket if it asks for one (True)."""
    request = consumer.request
    if not is_websocket_request(request):
        return False
    connection = consumer._connection
    error = handshake_error(request)
    if error is not None:
        connection.close_after_request()
        consumer.send(rejection(*error))
        return True
    session = AsgiWebSocket(consumer, websocket_scope(scope, request))
    session.run()
    return True


def websocket_scope(http_scope: dict[str, Any], request: Any) -> dict[str, Any]:
    """The ``websocket`` scope of a handshake, from its ``http`` scope."""
    scope = dict(http_scope)
    scope.pop("method", None)
    scope["type"] = "websocket"
    scope["asgi"] = WEBSOCKET_VERSION
    scope["scheme"] = "wss" if http_scope.get("scheme") == "https" else "ws"
    scope["subprotocols"] = requested_subprotocols(request)
    scope["extensions"] = {"websocket.http.response": {}}
    return scope


class AsgiWebSocketConsumer(WebSocketConsumer):
    """The WebSocket side of an :class:`AsgiWebSocket`: frames to and from the app."""

    def __init__(self, session: AsgiWebSocket, loop: asyncio.AbstractEventLoop | None = None):
        super().__init__(loop)
        self.session = session

    def on_text(self, text: str) -> None:
        self.session.push({"type": "websocket.receive", "text": text}, len(text))

    def on_bytes(self, data: bytes) -> None:
        self.session.push({"type": "websocket.receive", "bytes": data}, len(data))

    def on_close(self, code: int, reason: str) -> None:
        self.session.disconnected(code, reason)


class AsgiWebSocket:
    """One WebSocket exchange between a client and an ASGI app, across the switch.

    Made by the HTTP consumer of the handshake, it outlives it: the app's task, its
    receive queue and its state carry over to the :class:`AsgiWebSocketConsumer`.
    """

    def __init__(self, consumer: AsgiConsumer, scope: dict[str, Any]) -> None:
        self.http = consumer
        self.connection = consumer._connection
        self.scope = scope
        self.ws: AsgiWebSocketConsumer | None = None
        self.state = CONNECTING
        self._queue: deque[Message] = deque([{"type": "websocket.connect"}])
        self._queued_bytes = 0
        self._disconnect: Message | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def run(self) -> None:
        connection = self.connection
        coro = connection.app(self.scope, self.receive, self.send)
        task = self._task = asyncio.ensure_future(coro)
        task.add_done_callback(self._done)
        self.http.bind_event("post_request", self._http_finished)
        timeout = getattr(connection.http, "timeout", 0)  # the app's time to answer
        if timeout:
            self._timer = connection.loop.call_later(timeout, self._timed_out, timeout)

    # -- from the WebSocket consumer
    def push(self, message: Message, size: int) -> None:
        """A message for the app; reading stops while too many wait."""
        self._queue.append(message)
        self._queued_bytes += size
        ws = self.ws
        if (
            ws is not None
            and not ws._held
            and (len(self._queue) > MAX_PENDING_MESSAGES or self._queued_bytes > MAX_PENDING_BYTES)
        ):
            ws._hold(True)
        self._wake()

    def disconnected(self, code: int, reason: str) -> None:
        if self._disconnect is None:
            self._disconnect = {"type": "websocket.disconnect", "code": code, "reason": reason}
        self.state = CLOSED
        self._wake()

    def _http_finished(self, consumer: Any, exc: BaseException | None = None) -> None:
        # The handshake's HTTP consumer ended: answered, or its client went away.
        self._stop_timer()
        if exc is not None and self.state in (CONNECTING, RESPONDING):
            self.disconnected(ABNORMAL_CLOSURE, "")

    # -- the app's side
    async def receive(self) -> Message:
        """The next event: ``websocket.connect``, ``.receive``, then ``.disconnect``."""
        queue = self._queue
        while not queue:
            disconnect = self._disconnect
            if disconnect is not None:
                return disconnect
            waiter = self._waiter = self.connection.loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        message = queue.popleft()
        if message["type"] == "websocket.receive":
            size = len(message.get("text") or message.get("bytes") or b"")
            self._queued_bytes -= size
            ws = self.ws
            if (
                ws is not None
                and ws._held
                and len(queue) <= MAX_PENDING_MESSAGES // 2
                and self._queued_bytes <= MAX_PENDING_BYTES // 2
            ):
                ws._hold(False)
        return message

    async def send(self, message: Message) -> None:
        kind = message["type"]
        state = self.state
        if state is ACCEPTED:
            ws = self.ws
            assert ws is not None
            if kind == "websocket.send":
                data = message.get("bytes")
                if data is None:
                    data = message.get("text")
                if data is None:
                    raise RuntimeError("websocket.send needs bytes or text")
                waiter = ws.send(data)
                if waiter:
                    await waiter
            elif kind == "websocket.close":
                self.state = CLOSED
                ws.close(message.get("code") or NORMAL_CLOSURE, message.get("reason") or "")
            else:
                raise RuntimeError(f"unexpected ASGI message {kind!r} on an open WebSocket")
        elif state is CONNECTING:
            if kind == "websocket.accept":
                self._accept(message)
            elif kind == "websocket.close":
                self._deny(403)
            elif kind == "websocket.http.response.start":
                self.state = RESPONDING
                start = dict(message)
                start["type"] = "http.response.start"
                await self.http.asgi_send(start)
            else:
                raise RuntimeError(f"unexpected ASGI message {kind!r} before websocket.accept")
        elif state is RESPONDING:
            if kind != "websocket.http.response.body":
                raise RuntimeError(f"unexpected ASGI message {kind!r} in a denial response")
            body = dict(message)
            body["type"] = "http.response.body"
            await self.http.asgi_send(body)
            if not message.get("more_body", False):
                self.disconnected(ABNORMAL_CLOSURE, "")
        else:
            raise ClientDisconnected(f"the WebSocket is closed: cannot send {kind!r}")

    # -- answers to the handshake
    def _accept(self, message: Message) -> None:
        http = self.http
        connection = self.connection
        if connection.closed or http._finished:
            raise ClientDisconnected("the client went away before the WebSocket was accepted")
        subprotocol = message.get("subprotocol")
        fields, shake = accept_fields(
            http.request,
            settings_of(connection),
            subprotocol,
            [(bytes(name), bytes(value)) for name, value in message.get("headers") or ()],
        )
        self.state = ACCEPTED
        self._stop_timer()
        http._write_raw(http.frame(101, SWITCHING, head_block(fields), None, b"Upgrade"))
        http._head_sent = True
        open_now = switch_to(connection, self._build, shake)
        http.finished()
        open_now()  # switched when finished() returns: frames may be sent at once

    def _build(self, loop: asyncio.AbstractEventLoop | None = None) -> AsgiWebSocketConsumer:
        consumer = self.ws = AsgiWebSocketConsumer(self, loop=loop)
        return consumer

    def _deny(self, status: int) -> None:
        self.state = CLOSED
        self._stop_timer()
        http = self.http
        if not http._finished:
            self.connection.close_after_request()
            http.send(rejection(status, "WebSocket connection refused by the application"))
        self.disconnected(ABNORMAL_CLOSURE, "")

    # -- the app's end
    def _done(self, task: asyncio.Future[None]) -> None:
        self._stop_timer()
        exc = (
            asyncio.CancelledError("the ASGI app was cancelled")
            if task.cancelled()
            else task.exception()
        )
        state = self.state
        if state is CONNECTING:
            http = self.http
            if http._finished:
                return  # the client went away first
            if exc is None:
                exc = RuntimeError("the ASGI app returned without accepting the WebSocket")
            self.state = CLOSED
            http.app_failed(exc)
            return
        if state is RESPONDING:
            self.state = CLOSED
            if not self.http._finished:
                self.http.body_failed(
                    exc or RuntimeError("the ASGI app returned before its response ended")
                )
            return
        ws = self.ws
        if exc is not None and not isinstance(exc, ClientDisconnected):
            LOGGER.error("error in ASGI WebSocket app", exc_info=exc)
            if ws is not None:
                ws.close(INTERNAL_ERROR, "internal error")
        elif ws is not None:
            ws.close(NORMAL_CLOSURE)
        if ws is None and state is ACCEPTED:
            self.connection.close()

    def _timed_out(self, timeout: float) -> None:
        self._timer = None
        task = self._task
        if task is not None and not task.done() and self.state is CONNECTING:
            task.remove_done_callback(self._done)
            task.cancel()
            self.state = CLOSED
            self.http.body_failed(
                TimeoutError(f"the ASGI app did not accept the WebSocket within {timeout:g}s")
            )

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
