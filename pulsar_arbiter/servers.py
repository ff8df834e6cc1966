"""TcpServer and DatagramServer: producers that serve listening sockets.

Both serve sockets handed to them already bound (as the arbiter does, the workers inherit
them) or bind an address themselves. ``close()`` is graceful: stop accepting, let requests
in flight finish within a grace period, close idle connections at once, abort the rest.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Iterable
from typing import Any, ClassVar

from mypy_extensions import mypyc_attr

from .protocols import (
    Connection,
    DatagramProtocol,
    Handoff,
    Producer,
    ProtocolFactory,
    PulsarProtocol,
)
from .proxyproto import proxy_protocol_gate

__all__ = ["DatagramServer", "TcpServer"]

# Seconds a graceful close waits for requests in flight when no grace is given.
DEFAULT_GRACE = 30.0
# Loop iterations between "stop accepting" and closing the listeners on the stock asyncio
# loop: it makes an accepted connection's transport and protocol one and two iterations
# after the accept, and refuses them (the client sees a reset) if the server closed in
# between. One more for margin.
SETTLE_ITERATIONS = 3


def _sock_address(sock: socket.socket) -> Any:
    name = sock.getsockname()
    return name if name else None


def _split_address(address: Any) -> tuple[str | None, int | None, str | None]:
    """(host, port, unix path) from a ``(host, port)`` tuple, ``"host:port"`` or a path."""
    if isinstance(address, tuple):
        return address[0], int(address[1]), None
    if isinstance(address, str):
        if address.startswith("unix:"):
            return None, None, address[5:]
        if address.startswith("/") or address.startswith("."):
            return None, None, address
        host, _, port = address.rpartition(":")
        return host.strip("[]") or None, int(port), None
    raise ValueError(f"cannot serve address {address!r}: give (host, port), 'host:port' or a path")


@mypyc_attr(allow_interpreted_subclasses=True)
class _Server(Producer):
    """What both servers share: sockets, start/stop events, uptime, stats."""

    ONE_TIME_EVENTS: ClassVar[tuple[str, ...]] = ("start", "stop", "max_requests")

    def __init__(
        self,
        protocol_factory: ProtocolFactory | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        address: Any = None,
        name: str | None = None,
        sockets: Iterable[socket.socket] | None = None,
        max_requests: int | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(loop, protocol_factory, name, max_requests, logger)
        self._given_address = address
        self._sockets: list[Any] = list(sockets) if sockets else []
        self._started_at: float | None = None
        self._closing: asyncio.Future[None] | None = None
        self.graceful_timeout = DEFAULT_GRACE

    @property
    def sockets(self) -> list[Any]:
        return list(self._sockets)

    @property
    def address(self) -> Any:
        """The first socket's address (what was asked for until the server started)."""
        if self._sockets:
            return _sock_address(self._sockets[0])
        return self._given_address

    @property
    def closing(self) -> bool:
        """True once ``close()`` has begun: connections are being drained."""
        return self._closing is not None

    @property
    def draining(self) -> bool:
        """The same as ``closing`` (a name that reads well in a drain's callbacks)."""
        return self._closing is not None

    @property
    def uptime(self) -> float:
        return time.monotonic() - self._started_at if self._started_at is not None else 0.0

    def _started(self) -> None:
        self._started_at = time.monotonic()
        self.fire_event("start")


@mypyc_attr(allow_interpreted_subclasses=True)
class TcpServer(_Server):
    """Serve stream connections (TCP or Unix) with ``protocol_factory``.

    ``keep_alive`` is the idle timeout, in seconds, of its connections. ``handoff_raw``
    lets a drain hand off connections whose protocol is not ``HANDOFF_SAFE`` (raw
    consumers that keep no state between requests: ``--handoff``).
    """

    def __init__(
        self,
        protocol_factory: ProtocolFactory | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        address: Any = None,
        name: str | None = None,
        sockets: Iterable[socket.socket] | None = None,
        max_requests: int | None = None,
        keep_alive: float | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(protocol_factory, loop, address, name, sockets, max_requests, logger)
        self.keep_alive = keep_alive
        self._servers: list[Any] = []
        self._connections: set[PulsarProtocol] = set()
        self._accepting = False
        self._handoff: Handoff | None = None
        self.handoff_raw = False
        #: Each connection first sends a PROXY protocol header (v1 or v2) naming its
        #: client; one that does not is closed (see :mod:`pulsar_arbiter.proxyproto`).
        self.proxy_protocol = False

    @property
    def connections(self) -> frozenset[PulsarProtocol]:
        """The live connections."""
        return frozenset(self._connections)

    async def start_serving(
        self, backlog: int = 100, sslcontext: ssl.SSLContext | None = None
    ) -> None:
        """Serve the given sockets, or bind the address; fires ``start``."""
        if self._servers:
            raise RuntimeError(f"{self!r} is already serving")
        loop = self.loop
        factory: Any = self.create_protocol
        if self.proxy_protocol:
            factory = proxy_protocol_gate(self.create_protocol)
        if self._sockets:
            for sock in self._sockets:
                server = await loop.create_server(
                    factory, sock=sock, backlog=backlog, ssl=sslcontext
                )
                self._servers.append(server)
        else:
            if self._given_address is None:
                raise RuntimeError(f"{self!r} has neither sockets nor an address to serve")
            host, port, path = _split_address(self._given_address)
            if path is not None:
                bound = await loop.create_unix_server(
                    factory, path, backlog=backlog, ssl=sslcontext
                )
            else:
                bound = await loop.create_server(
                    factory, host, port or 0, backlog=backlog, ssl=sslcontext
                )
            self._servers.append(bound)
            # Socket-like views (asyncio TransportSocket, uvloop PseudoSocket).
            listening: Any = bound  # uvloop's sockets is a list (typeshed says a tuple)
            self._sockets.extend(listening.sockets)
        self._accepting = True
        self._started()
        self.logger.info("%s serving on %s", self.name, self.address)

    def _protocol_made(self, protocol: PulsarProtocol) -> None:
        self._connections.add(protocol)
        if self._closing is not None and isinstance(protocol, Connection):
            # Accepted just before we stopped listening, or handed to us while we drain:
            # drained like the others (its first request is served).
            protocol.begin_drain(self._handoff_for(protocol))
        super()._protocol_made(protocol)

    def _handoff_for(self, protocol: Connection) -> Handoff | None:
        if protocol.HANDOFF_SAFE or self.handoff_raw:
            return self._handoff
        return None

    async def adopt(self, sock: socket.socket) -> PulsarProtocol:
        """Serve a connection accepted elsewhere: one a draining worker handed over.

        Whatever its client sent meanwhile is waiting in the socket and is read now.
        """
        _, protocol = await self.loop.connect_accepted_socket(self.create_protocol, sock)
        return protocol

    def _protocol_lost(self, protocol: PulsarProtocol, exc: BaseException | None) -> None:
        self._connections.discard(protocol)
        super()._protocol_lost(protocol, exc)

    def stop_accepting(self) -> None:
        """Stop accepting now; other processes sharing the sockets keep accepting.

        uvloop makes a connection's transport when it accepts it, so its servers close at
        once. The stock asyncio loop makes it an iteration later and resets it if the
        server closed meanwhile: there the listening sockets are only unwatched now, and
        ``close()`` closes them once the pending accepts have settled.
        """
        if not self._accepting:
            return
        self._accepting = False
        loop = self.loop
        if isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
            for server in self._servers:
                for sock in server.sockets:
                    loop.remove_reader(sock.fileno())
        else:
            self._close_listeners()

    def _close_listeners(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()

    async def close(self, grace: float | None = None, handoff: Handoff | None = None) -> None:
        """Stop accepting, drain the connections for ``grace`` seconds, then abort.

        Every connection is drained (:meth:`Connection.begin_drain`): it finishes the request
        in progress, then, at a request boundary, goes to ``handoff`` (a serving worker)
        if given, or lets go its own way (an HTTP connection answers its next request
        with ``Connection: close``; a raw one closes). Silent connections close after
        ``DRAIN_IDLE``. Fires ``stop``. Safe to call more than once.
        """
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        self._closing = self.loop.create_future()
        self._handoff = handoff
        try:
            await self._drain(self.graceful_timeout if grace is None else grace)
        finally:
            self._closing.set_result(None)
            self.fire_event("stop")

    async def _drain(self, grace: float) -> None:
        self.stop_accepting()
        for _ in range(SETTLE_ITERATIONS):
            await asyncio.sleep(0)
        self._close_listeners()
        for protocol in list(self._connections):
            if isinstance(protocol, Connection):
                protocol.begin_drain(self._handoff_for(protocol))
            else:
                protocol.close()
        if not await self._wait_connections(grace):
            for protocol in list(self._connections):
                protocol.abort()
            await self._wait_connections(1.0)

    async def _wait_connections(self, timeout: float) -> bool:
        """Wait until every connection is gone (True), or ``timeout`` seconds (False)."""
        loop = self.loop
        deadline = loop.time() + timeout
        while self._connections:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            waiters = [p.event("connection_lost").waiter() for p in self._connections]
            done, _ = await asyncio.wait(waiters, timeout=remaining)
            for waiter in done:  # retrieved, so a reset does not log "never retrieved"
                if not waiter.cancelled():
                    waiter.exception()
        return True

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": str(self.address),
            "uptime": self.uptime,
            "sessions": self.sessions,
            "connections": len(self._connections),
            "requests": self.requests_processed,
            "max_requests": self.max_requests,
            "keep_alive": self.keep_alive,
        }


@mypyc_attr(allow_interpreted_subclasses=True)
class DatagramServer(_Server):
    """Serve datagram sockets with ``protocol_factory``: one datagram, one request."""

    def __init__(
        self,
        protocol_factory: ProtocolFactory | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        address: Any = None,
        name: str | None = None,
        sockets: Iterable[socket.socket] | None = None,
        max_requests: int | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(protocol_factory, loop, address, name, sockets, max_requests, logger)
        self.endpoints: list[asyncio.DatagramTransport] = []
        self._protocols: list[PulsarProtocol] = []

    async def create_endpoint(self, **kw: Any) -> None:
        """Open a datagram endpoint per socket (or on the address); fires ``start``."""
        if self.endpoints:
            raise RuntimeError(f"{self!r} already has endpoints")
        loop = self.loop
        if self._sockets:
            targets: list[dict[str, Any]] = [{"sock": sock} for sock in self._sockets]
        elif self._given_address is not None:
            host, port, _ = _split_address(self._given_address)
            targets = [{"local_addr": (host, port)}]
        else:
            raise RuntimeError(f"{self!r} has neither sockets nor an address to serve")
        for target in targets:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: self.create_protocol(**kw), **target
            )
            self.endpoints.append(transport)
            self._protocols.append(protocol)
            if "local_addr" in target:
                self._sockets.append(transport.get_extra_info("socket"))
        self._started()
        self.logger.info("%s serving datagrams on %s", self.name, self.address)

    async def close(self, grace: float | None = None) -> None:
        """Close every endpoint; fires ``stop``. Datagrams answer at once: no drain."""
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        self._closing = self.loop.create_future()
        try:
            waiters = [p.event("connection_lost") for p in self._protocols]
            for transport in self.endpoints:
                transport.close()
            if waiters:
                await asyncio.wait([w.waiter() for w in waiters], timeout=1.0)
        finally:
            self._closing.set_result(None)
            self.fire_event("stop")

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": str(self.address),
            "uptime": self.uptime,
            "requests": self.requests_processed,
            "max_requests": self.max_requests,
        }


def datagram_protocol_factory(consumer_factory: Any) -> ProtocolFactory:
    """The protocol factory serving ``consumer_factory`` on datagram endpoints."""

    def factory(**kw: Any) -> DatagramProtocol:
        return DatagramProtocol(consumer_factory, **kw)

    return factory
