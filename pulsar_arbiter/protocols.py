"""Protocols, connections and consumers: the pulsar Protocols/Transports API.

A :class:`Connection` bridges one transport and a stream of :class:`ProtocolConsumer`
objects, one per request. Bytes a finished consumer did not use go to a fresh consumer,
so pipelined requests are answered in order. A :class:`Producer` (a server or a client)
creates the protocols, builds the consumers, counts sessions and requests, and re-fires
the connection and request events of everything it created as its own.

Exceptions raised by consumer code are caught at the protocol boundary: they close that
connection only and are logged once, never reaching the event loop.
"""

from __future__ import annotations

import asyncio
import asyncio.protocols
import contextlib
import inspect
import logging
from collections.abc import Callable
from typing import Any, ClassVar, Generic

from mypy_extensions import mypyc_attr
from typing_extensions import TypeVar

from .events import AbstractEvent, EventHandler
from .mixins import FlowControl, Timeout

__all__ = [
    "Connection",
    "DatagramProtocol",
    "Producer",
    "Protocol",
    "ProtocolConsumer",
    "PulsarProtocol",
]

LOGGER = logging.getLogger("pulsar_arbiter")

# Bytes of pipelined requests held while the current consumer is still answering. Past
# this the connection stops reading, so a client that pipelines without reading the
# answers is slowed down by TCP instead of growing our memory.
MAX_BUFFERED_PIPELINE = 256 * 1024

# Seconds a draining server keeps a connection on which nothing arrives (counted from
# the start of the drain, or the connection's last request if the keep-alive timeout is
# shorter). A client silent this long is not about to send; without a bound, a client that
# connected and never sent a byte (a pool's spare connection, a browser's preconnect)
# would hold a recycled worker, or a library user's ``close()``, for the whole grace.
DRAIN_IDLE = 2.0
# Seconds between two checks of a connection waiting, at a request boundary, for its last
# answer to leave the write buffer before it can be handed to another worker.
HANDOFF_RETRY = 0.01

ConsumerFactory = Callable[..., "ProtocolConsumer"]
ProtocolFactory = Callable[..., "PulsarProtocol"]
#: Takes a connection idle at a request boundary to another process; True when it did
#: (then it calls the connection's ``_handed_off()`` once the socket is on its way).
Handoff = Callable[["Connection"], bool]
NO_WRITE: tuple[()] = ()
#: What a consumer's ``request`` is: whatever ``start(request)`` was given (an
#: ``HttpRequest`` for HTTP consumers, the message for a client's).
RequestT = TypeVar("RequestT", default=Any)


def class_default(obj: object, name: str) -> Any:
    """A class attribute of ``obj`` as written in the class body, never bound: a factory
    declared as ``protocol_factory = partial(Connection, Echo)``, a class or a function."""
    value = inspect.getattr_static(type(obj), name, None)
    if isinstance(value, (staticmethod, classmethod)):
        return value.__get__(None, type(obj))
    return value


@mypyc_attr(allow_interpreted_subclasses=True)
class Producer(EventHandler):
    """Creates protocols and consumers; servers and clients are producers.

    Its many-times events fire for every connection and request it handles:
    ``connection_made``, ``pre_request``, ``post_request``, ``connection_lost``.
    ``max_requests`` fires once when ``requests_processed`` reaches ``max_requests``.
    """

    ONE_TIME_EVENTS: ClassVar[tuple[str, ...]] = ("max_requests",)
    MANY_TIMES_EVENTS: ClassVar[tuple[str, ...]] = (
        "connection_made",
        "pre_request",
        "post_request",
        "connection_lost",
    )

    #: The default factory of the protocols it creates; a subclass may declare it in its
    #: class body (``protocol_factory = partial(Connection, EchoProtocol)``), as in pulsar.
    protocol_factory: ProtocolFactory | None = None

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        protocol_factory: ProtocolFactory | None = None,
        name: str | None = None,
        max_requests: int | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if loop is None:  # made inside a coroutine: its loop (``self.loop`` asks later)
            with contextlib.suppress(RuntimeError):
                loop = asyncio.get_running_loop()
        super().__init__(loop)
        self.protocol_factory = protocol_factory or class_default(self, "protocol_factory")
        self.name = name or type(self).__name__.lower()
        self.max_requests = max_requests or 0
        self.logger = logger or LOGGER
        self.sessions = 0
        self.requests_processed = 0
        self.keep_alive: float | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def create_protocol(self, **kw: Any) -> PulsarProtocol:
        """A new protocol from ``protocol_factory``, with this producer as its producer."""
        factory = kw.pop("protocol_factory", None) or self.protocol_factory
        if factory is None:
            raise RuntimeError(f"{self!r} has no protocol_factory")
        self.sessions += 1
        return factory(
            loop=self.loop, session=self.sessions, producer=self, logger=self.logger, **kw
        )

    def build_consumer(self, consumer_factory: ConsumerFactory) -> ProtocolConsumer:
        """A new consumer from ``consumer_factory`` (called with the ``loop`` keyword)."""
        return consumer_factory(loop=self._loop)

    # Called by the protocols this producer created.
    def _protocol_made(self, protocol: PulsarProtocol) -> None:
        if self._events:
            self.fire_event("connection_made", protocol)

    def _protocol_lost(self, protocol: PulsarProtocol, exc: BaseException | None) -> None:
        if self._events:
            self.fire_event("connection_lost", protocol, exc=exc)

    def _request_finished(self) -> None:
        self.requests_processed += 1
        if self.max_requests:
            self._check_max_requests()

    def _check_max_requests(self) -> None:
        if self.requests_processed == self.max_requests:
            self.fire_event("max_requests", self)


@mypyc_attr(allow_interpreted_subclasses=True)
class PulsarProtocol(EventHandler, asyncio.BaseProtocol):
    """What TCP, Unix and datagram protocols share: events, session, transport, closing.

    ``close()`` and ``abort()`` return the ``connection_lost`` event, which can be awaited.
    """

    ONE_TIME_EVENTS: ClassVar[tuple[str, ...]] = ("connection_made", "connection_lost")

    #: Any: the transports are duck-typed (uvloop's are not asyncio's classes), and one
    #: type along the hierarchy (a stream or a datagram transport) as mypyc requires.
    _transport: Any = None
    _address: Any = None

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        session: int = 1,
        producer: Producer | None = None,
        logger: logging.Logger | None = None,
        **kw: Any,
    ) -> None:
        # Not super(): mypyc (2.4) passes a super() call's **kw positionally.
        EventHandler.__init__(self, loop or asyncio.get_running_loop(), **kw)
        self._session = session
        self._producer = producer
        self.logger = logger or (producer.logger if producer is not None else LOGGER)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} session={self._session} address={self._address!r}>"

    @property
    def session(self) -> int:
        return self._session

    @property
    def producer(self) -> Producer | None:
        return self._producer

    @property
    def transport(self) -> asyncio.BaseTransport | None:
        transport: asyncio.BaseTransport | None = self._transport
        return transport

    @property
    def sock(self) -> Any:
        transport = self._transport
        return transport.get_extra_info("socket") if transport is not None else None

    @property
    def address(self) -> Any:
        """The peer's address (a datagram endpoint's own address)."""
        return self._address

    @property
    def closed(self) -> bool:
        transport = self._transport
        return transport is None or transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._address = transport.get_extra_info("peername")
        self._on_connection_made(transport)
        self.fire_event("connection_made")
        producer = self._producer
        if producer is not None:
            producer._protocol_made(self)

    def _on_connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Hook for mixins: limits, timers."""

    def connection_lost(self, exc: BaseException | None) -> None:
        self._on_connection_lost(exc)
        if exc is not None:
            fired = self.fire_event("connection_lost", exc=exc)
        else:
            fired = self.fire_event("connection_lost")
        if fired:
            producer = self._producer
            if producer is not None:
                producer._protocol_lost(self, exc)

    def _on_connection_lost(self, exc: BaseException | None) -> None:
        """Hook for mixins: cancel timers, fail waiters, finish the consumer."""

    def eof_received(self) -> bool | None:
        return None

    def close(self) -> AbstractEvent:
        """Close the transport once its buffer is flushed; await the result to wait for it."""
        transport = self._transport
        if transport is not None:
            transport.close()
        else:
            self.fire_event("connection_lost")
        return self.event("connection_lost")

    def abort(self) -> AbstractEvent:
        """Close the transport at once, dropping what is buffered."""
        transport = self._transport
        if transport is not None:
            abort = getattr(transport, "abort", None)
            if abort is not None:
                abort()
            else:
                transport.close()
        else:
            self.fire_event("connection_lost")
        return self.event("connection_lost")


@mypyc_attr(allow_interpreted_subclasses=True)
class Protocol(PulsarProtocol, FlowControl, asyncio.Protocol):
    """A stream protocol with write flow control."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        session: int = 1,
        producer: Producer | None = None,
        logger: logging.Logger | None = None,
        low_limit: int | None = None,
        high_limit: int | None = None,
        **kw: Any,
    ) -> None:
        self._init_flow_control(low_limit, high_limit)
        PulsarProtocol.__init__(self, loop, session, producer, logger, **kw)

    def _on_connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._set_write_limits(transport)

    def _on_connection_lost(self, exc: BaseException | None) -> None:
        self._fail_write_waiter(exc)

    def write(self, data: bytes | bytearray | memoryview) -> tuple[()] | asyncio.Future[None]:
        """Write ``data``; a Future to await when the transport has paused writing.

        Raises ConnectionResetError when the connection is closed: data is never dropped
        silently.
        """
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError(f"cannot write to {self!r}: connection closed")
        transport.write(data)
        if self._writing_paused:
            return self._writing_waiter()
        return NO_WRITE

    async def drain(self) -> None:
        """Wait until the transport accepts more data (at once when it does already)."""
        if self._writing_paused:
            await self._writing_waiter()


@mypyc_attr(allow_interpreted_subclasses=True)
class Connection(Protocol, Timeout):
    """One transport, a stream of consumers: one per request, built on demand.

    ``timeout`` (default: the producer's ``keep_alive``) closes the connection when it has
    been idle that long; a request in progress or a pending write is not idle.

    When its server drains (``begin_drain()``), the one-time ``draining`` event fires, so a
    consumer can tell its client; the connection then lets go at its next request
    boundary (see ``begin_drain``).
    """

    ONE_TIME_EVENTS: ClassVar[tuple[str, ...]] = (
        "connection_made",
        "connection_lost",
        "draining",
    )
    #: Whether the connection may be handed to another worker by default: a raw consumer
    #: may keep state between requests, so only with the server's ``handoff_raw``.
    HANDOFF_SAFE: ClassVar[bool] = False

    def __init__(
        self,
        consumer_factory: ConsumerFactory | None = None,
        timeout: float | None = None,
        **kw: Any,
    ) -> None:
        Protocol.__init__(self, **kw)
        producer = self._producer
        if timeout is None and producer is not None:
            timeout = producer.keep_alive
        self._init_timeout(timeout)
        self._consumer_factory = consumer_factory
        # The factory it was made with: an upgraded connection is never handed off.
        self._served_factory = consumer_factory
        self._current_consumer: ProtocolConsumer | None = None
        self._upgrade_factory: ConsumerFactory | None = None
        self._buffered: bytearray | None = None
        self._processing = False
        self._close_after_request = False
        self._peer_eof = False
        self._failed = False
        self._draining = False
        self._handoff: Handoff | None = None
        self._handoff_retry: asyncio.TimerHandle | None = None
        self.processed = 0
        # Call the factory directly unless the producer customises build_consumer: one
        # call less on every request.
        self._default_build = (
            producer is None or type(producer).build_consumer is Producer.build_consumer
        )

    @property
    def consumer_factory(self) -> ConsumerFactory | None:
        return self._consumer_factory

    def current_consumer(self) -> ProtocolConsumer:
        """The consumer of the request in progress, built on demand."""
        consumer = self._current_consumer
        if consumer is None:
            factory = self._consumer_factory
            if factory is None:
                raise RuntimeError(f"{self!r} has no consumer factory")
            if self._default_build:
                consumer = factory(loop=self._loop)
            else:
                consumer = self._producer.build_consumer(factory)  # type: ignore[union-attr]
            self._current_consumer = consumer
            consumer.connection_made(self)
        return consumer

    def upgrade(self, consumer_factory: ConsumerFactory) -> None:
        """Serve the next requests with ``consumer_factory`` (after the current one)."""
        if self._current_consumer is None:
            self._consumer_factory = consumer_factory
        else:
            self._upgrade_factory = consumer_factory

    def close_after_request(self) -> None:
        """Close once the request in progress has finished, or now if the connection is idle.

        A connection that has not received its first request yet is not idle: its client
        has just connected and its request is on the way (closing now would lose it), so
        it is closed after that first request, or by the idle timeout.
        """
        self._close_after_request = True
        if self._current_consumer is None and not self._processing and self.processed:
            self.close()

    @property
    def closing_after_request(self) -> bool:
        return self._close_after_request

    @property
    def draining(self) -> bool:
        """True once the server began draining this connection."""
        return self._draining

    def begin_drain(self, handoff: Handoff | None = None) -> None:
        """The server is draining: finish what is in progress, then let go of the client.

        Fires ``draining`` once. At the next request boundary (no request in progress,
        nothing buffered, the last answer written) the connection is given to
        ``handoff``, which passes the socket to a serving worker: the client never sees
        a close, and what it has sent meanwhile waits in the socket for the new owner.
        Without ``handoff``, or when it cannot take the connection, :meth:`_let_go`
        decides (a raw connection closes, keeping one that has not received its first
        request for that request). A connection silent for ``DRAIN_IDLE`` is closed.
        """
        if self._draining:
            return
        self._draining = True
        self._handoff = handoff
        self.fire_event("draining")
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._timeout is None or self._timeout > DRAIN_IDLE:
            self._timeout = DRAIN_IDLE
        self._cancel_timeout()
        self._arm_timeout()
        if self._at_boundary():
            self._boundary_reached()

    def _at_boundary(self) -> bool:
        """No request in progress and nothing of the next one held by us."""
        return self._current_consumer is None and not self._processing and self._buffered is None

    def _boundary_reached(self) -> None:
        """A draining connection is between requests: hand it off, or let it go."""
        if self._handoff is not None and self._try_handoff():
            return
        self._let_go()

    def _let_go(self) -> None:
        """No handoff: close now; keep one still waiting for its first request for it.

        A raw protocol has no way to tell its client that it closes; a consumer that
        has one does it on the ``draining`` event, or the server hands the connection
        off (``--handoff``).
        """
        self.close_after_request()

    def _try_handoff(self) -> bool:
        """Give the connection to the handoff; False when it cannot go (then let go)."""
        handoff, transport = self._handoff, self._transport
        if (
            handoff is None
            or transport is None
            or transport.is_closing()
            or self._peer_eof
            or self._consumer_factory is not self._served_factory
            or transport.get_extra_info("sslcontext") is not None
            or self.sock is None
        ):
            return False
        if transport.get_write_buffer_size():
            # The last answer is still being written: its bytes would be lost with our
            # buffer. Look again shortly (the grace period bounds a peer that never reads).
            if self._handoff_retry is None:
                self._handoff_retry = self._loop_or_running().call_later(
                    HANDOFF_RETRY, self._retry_handoff
                )
            return True
        transport.pause_reading()  # what arrives from now on stays in the socket
        if handoff(self):
            self._handoff = None
            return True
        self._handoff = None
        self._handoff_failed()
        return False

    def _retry_handoff(self) -> None:
        self._handoff_retry = None
        if self._handoff is not None and self._at_boundary():
            self._boundary_reached()

    def _handed_off(self) -> None:
        """The socket is on its way to another worker: close ours, without a shutdown.

        The kernel keeps the connection open while the message carrying it is in
        flight, so the peer sees nothing; closing (not aborting) would wait for a write
        buffer that is empty anyway.
        """
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.abort()

    def _handoff_failed(self) -> None:
        """The handoff could not take the connection after all: serve it here again."""
        self._handoff = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if not self._writing_paused and self._may_resume_reading():
            transport.resume_reading()
        if self._at_boundary():
            self._let_go()

    # asyncio.Protocol
    def _on_connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._set_write_limits(transport)
        self._arm_timeout()

    def data_received(self, data: bytes) -> None:
        buffered = self._buffered
        if buffered is not None:
            buffered += data
            if len(buffered) > MAX_BUFFERED_PIPELINE and self._transport is not None:
                self._transport.pause_reading()
            return
        # The per-request hot path: kept flat on purpose (every call here costs on every
        # request of every connection).
        self._processing = True
        try:
            while data:
                consumer = self._current_consumer
                if consumer is None:
                    factory = self._consumer_factory
                    if factory is None or not self._default_build:
                        consumer = self.current_consumer()
                    else:  # current_consumer(), inlined
                        consumer = self._current_consumer = factory(loop=self._loop)
                        consumer.connection_made(self)
                if not consumer._started:
                    consumer.start()
                left = consumer._feed(data)  # data_received, with its events if watched
                if not left:
                    break
                if consumer is self._current_consumer:
                    # The consumer has its request and is still answering it: keep the
                    # next requests' bytes until it finishes, so answers stay in order.
                    self._buffered = bytearray(left)
                    break
                if self._close_after_request:
                    break
                data = left
        except Exception as exc:
            self._consumer_failed(exc)
        finally:
            self._processing = False
        if self._current_consumer is None:
            if (self._close_after_request or self._peer_eof) and self._should_close():
                self.close()
            elif self._draining and self._buffered is None:
                self._boundary_reached()

    def _should_close(self) -> bool:
        return self._close_after_request or (self._peer_eof and self._buffered is None)

    def _consumer_failed(self, exc: BaseException) -> None:
        if not self._failed:
            self._failed = True
            self.logger.error("closing %r: unhandled error in consumer", self, exc_info=exc)
        self.abort()

    def _consumer_finished(self, consumer: ProtocolConsumer, exc: BaseException | None) -> None:
        if consumer is not self._current_consumer:
            return
        self._current_consumer = None
        if exc is None:
            self.processed += 1
            producer = self._producer
            if producer is not None:
                producer.requests_processed += 1
                if producer.max_requests:
                    producer._check_max_requests()
        if self._upgrade_factory is not None:
            self._consumer_factory, self._upgrade_factory = self._upgrade_factory, None
        if self._timeout is not None:
            self._last_activity = self._loop.time()  # type: ignore[union-attr]
        if not self._processing:
            if self._buffered is not None and not self._close_after_request:
                self._loop_or_running().call_soon(self._resume_buffered)
            elif self._should_close():
                self.close()
            elif self._draining:
                self._boundary_reached()

    def _loop_or_running(self) -> asyncio.AbstractEventLoop:
        return self._loop or asyncio.get_running_loop()

    def _resume_buffered(self) -> None:
        buffered, self._buffered = self._buffered, None
        transport = self._transport
        if buffered is None or transport is None or transport.is_closing():
            return
        if not self._writing_paused:
            transport.resume_reading()
        self.data_received(bytes(buffered))

    def _may_resume_reading(self) -> bool:
        buffered = self._buffered
        return buffered is None or len(buffered) <= MAX_BUFFERED_PIPELINE

    def _busy(self) -> bool:
        transport = self._transport
        return (
            self._current_consumer is not None
            or self._buffered is not None
            or (transport is not None and transport.get_write_buffer_size() > 0)
        )

    def eof_received(self) -> bool | None:
        # A peer that half-closes after sending its request still gets the answer; the
        # consumer in progress is told (a client reading a response up to EOF ends there).
        transport = self._transport
        consumer = self._current_consumer
        if consumer is not None:
            try:
                consumer.eof_received()
            except Exception as exc:
                self._consumer_failed(exc)
                return None
        if (
            (self._current_consumer is not None or self._buffered is not None)
            and transport is not None
            and transport.get_extra_info("sslcontext") is None
        ):
            self._peer_eof = True
            return True
        return None

    def _on_connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_timeout()
        self._fail_write_waiter(exc)
        self._buffered = None
        retry, self._handoff_retry = self._handoff_retry, None
        if retry is not None:
            retry.cancel()
        consumer = self._current_consumer
        if consumer is not None:
            try:
                consumer.connection_lost(exc)
            except Exception:
                self.logger.exception("error in %r.connection_lost", consumer)
            self._current_consumer = None


@mypyc_attr(allow_interpreted_subclasses=True)
class ProtocolConsumer(EventHandler, Generic[RequestT]):
    """Consumes one request (server side) or one request/response (client side).

    ``data_received(data)`` returns the bytes it did not use (the start of the next
    request), or None; ``finished()`` ends it, fires ``post_request`` (also awaitable as
    ``on_finished``) and hands the connection to the next consumer. ``RequestT`` is the
    type of its ``request`` (``class Echo(ProtocolConsumer)`` leaves it unchecked).
    """

    ONE_TIME_EVENTS: ClassVar[tuple[str, ...]] = ("pre_request", "post_request")
    MANY_TIMES_EVENTS: ClassVar[tuple[str, ...]] = ("data_received", "data_processed")

    _connection: Any = None
    _producer: Producer | None = None
    _request: Any = None
    _started = False
    _finished = False
    _finish_exc: BaseException | None = None
    _peer: Any = None

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        one_time_events: Any = None,
        many_times_events: Any = None,
    ) -> None:
        self._loop = loop
        if one_time_events or many_times_events:
            EventHandler.__init__(self, loop, one_time_events, many_times_events)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self._connection!r}>"

    @property
    def connection(self) -> Connection | DatagramProtocol | None:
        """The Connection (or DatagramProtocol) this consumer reads from and writes to."""
        return self._connection  # type: ignore[no-any-return]

    @property
    def transport(self) -> asyncio.BaseTransport | None:
        connection = self._connection
        return connection.transport if connection is not None else None

    @property
    def producer(self) -> Producer | None:
        return self._producer

    @property
    def request(self) -> RequestT:
        """What ``start(request)`` was given (None before the request started)."""
        return self._request  # type: ignore[no-any-return]

    @property
    def address(self) -> Any:
        """The peer's address."""
        if self._peer is not None:
            return self._peer
        connection = self._connection
        return connection.address if connection is not None else None

    @property
    def on_finished(self) -> AbstractEvent:
        """The ``post_request`` event: await it for the end of the request."""
        events = self._events
        if events is not None:
            ev = events.get("post_request")
            if ev is not None:
                return ev
        # Not self.event(): no method lookup for a consumer subclassed in Python.
        return ProtocolConsumer.event(self, "post_request")

    @property
    def finished_ok(self) -> bool:
        """The request ended, and without an error."""
        return self._finished and self._finish_exc is None

    def connection_made(self, connection: Any) -> None:
        """Attach to ``connection``; called once, before the first byte."""
        self._connection = connection
        self._producer = connection._producer
        if self._loop is None:
            self._loop = connection._loop

    def start(self, request: RequestT | None = None) -> None:
        """Start the request: fires ``pre_request``, then ``start_request()`` for clients."""
        if self._started:
            raise RuntimeError(f"{self!r} already started")
        connection = self._connection
        if connection is None or connection._transport is None:
            raise RuntimeError(f"{self!r} has no connection: cannot start a request")
        self._started = True
        self._request = request
        events = self._events
        if events is not None:
            # The event itself, not fire_event(): a consumer subclassed in Python pays a
            # method lookup per call. One not created yet has nobody bound; event()
            # fires it on creation (ProtocolConsumer.event).
            ev = events.get("pre_request")
            if ev is not None:
                ev.fire(self)
        producer = self._producer
        if producer is not None:
            events = producer._events
            if events:
                # The event itself, as fire_event() would find it (one lookup, no
                # keyword dict): the server's pre/post_request fire on every request.
                ev = events.get("pre_request")
                if ev is not None:
                    ev.fire(self)
        if request is not None:
            self.start_request()

    def start_request(self) -> None:
        """Client side: write the request. Override in client consumers."""

    def data_received(self, data: bytes) -> bytes | None:
        """Consume ``data``; return the bytes that belong to the next request, or None."""
        return None

    def eof_received(self) -> None:
        """The peer will send nothing more; a consumer that reads up to EOF finishes here."""

    def _feed(self, data: bytes) -> bytes | None:
        events = self._events
        if events is not None and ("data_received" in events or "data_processed" in events):
            self.fire_event("data_received", data=data)
            left = self.data_received(data)
            self.fire_event("data_processed", data=data)
            return left
        return self.data_received(data)

    def write(self, data: bytes | bytearray | memoryview) -> tuple[()] | asyncio.Future[None]:
        """Write to the peer: the connection's transport, or the datagram's sender."""
        connection = self._connection
        if connection is None:
            raise RuntimeError(f"{self!r} has no connection: cannot write")
        if self._peer is None:
            return connection.write(data)  # type: ignore[no-any-return]
        return connection.write(data, self._peer)  # type: ignore[no-any-return]

    def finished(self, exc: BaseException | None = None) -> bool:
        """End this request; False if it had already ended."""
        if self._finished:
            return False
        self._finished = True
        if exc is not None:
            self._finish_exc = exc
        connection = self._connection
        if connection is not None:
            connection._consumer_finished(self, exc)
        events = self._events
        if events is not None:
            ev = events.get("post_request")  # as in start(): created on demand, fired then
            if ev is not None:
                if exc is not None:
                    ev.fire(self, exc=exc)
                else:
                    ev.fire(self)
        producer = self._producer
        if producer is not None:
            events = producer._events
            if events:
                ev = events.get("post_request")
                if ev is not None:
                    ev.fire(self, exc=exc)
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        """The connection went away mid-request: the request ends with an error."""
        if not self._finished:
            self.finished(
                exc or ConnectionResetError("connection closed before the request finished")
            )

    def abort_request(self) -> None:
        """Abandon the request by aborting its connection."""
        connection = self._connection
        if connection is not None:
            connection.abort()
        else:
            self.finished(ConnectionAbortedError("request aborted"))

    # EventHandler is initialised lazily: most consumers never bind an event.
    def event(self, name: str) -> AbstractEvent:
        ev = EventHandler.event(self, name)
        if name == "post_request" and self._finished and not ev.fired():
            if self._finish_exc is not None:
                ev.fire(self, exc=self._finish_exc)
            else:
                ev.fire(self)
        elif name == "pre_request" and self._started and not ev.fired():
            ev.fire(self)
        return ev

    def has_fired(self, name: str) -> bool:
        if name == "post_request":
            return self._finished
        if name == "pre_request":
            return self._started
        return EventHandler.has_fired(self, name)


@mypyc_attr(allow_interpreted_subclasses=True)
class DatagramProtocol(PulsarProtocol, asyncio.DatagramProtocol):
    """A datagram endpoint: each datagram is one request, served by a fresh consumer."""

    def __init__(
        self,
        consumer_factory: ConsumerFactory | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        session: int = 1,
        producer: Producer | None = None,
        logger: logging.Logger | None = None,
        **kw: Any,
    ) -> None:
        # Not super(): mypyc (2.4) passes a super() call's **kw positionally.
        PulsarProtocol.__init__(self, loop, session, producer, logger, **kw)
        self._consumer_factory = consumer_factory
        self._writing_paused = False
        self._failed = False
        self.processed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._address = transport.get_extra_info("sockname")

    def datagram_received(self, data: bytes, addr: Any) -> None:
        factory = self._consumer_factory
        if factory is None:
            raise NotImplementedError(
                f"{type(self).__name__} needs a consumer_factory or a datagram_received method"
            )
        producer = self._producer
        if producer is not None:
            consumer = producer.build_consumer(factory)
        else:
            consumer = factory(loop=self._loop)
        consumer._peer = addr
        try:
            consumer.connection_made(self)
            consumer.start()
            consumer._feed(data)
            if not consumer._finished:
                consumer.finished()
        except Exception as exc:
            if not self._failed:
                self._failed = True
                self.logger.error(
                    "unhandled error in consumer for datagram from %r", addr, exc_info=exc
                )
            if not consumer._finished:
                consumer.finished(exc)

    def _consumer_finished(self, consumer: ProtocolConsumer, exc: BaseException | None) -> None:
        if exc is None:
            self.processed += 1
            producer = self._producer
            if producer is not None:
                producer._request_finished()

    def write(self, data: bytes | bytearray | memoryview, addr: Any = None) -> tuple[()]:
        """Send ``data`` to ``addr`` (the connected peer when None)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError(f"cannot send from {self!r}: endpoint closed")
        transport.sendto(data, addr)
        return NO_WRITE

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable) for one peer must not end the endpoint.
        self.logger.debug("%r: %s", self, exc)
