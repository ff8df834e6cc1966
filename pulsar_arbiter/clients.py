"""Clients: producers of outgoing connections, and a pool of open connections.

:class:`AbstractClient` opens TCP or Unix connections through the same protocol factories a
server uses, so one :class:`~pulsar_arbiter.protocols.Connection` with a client consumer
sends a request (``consumer.start(request)`` calls ``start_request()``) and reads its
response (``await consumer.on_finished``). :class:`AbstractUdpClient` does the same for
datagram endpoints. :class:`Pool` keeps open connections for reuse, bounded by
``pool_size``, with waiters served in FIFO order; :class:`PoolConnection` is what a user
holds while a connection is checked out.

The pool never trusts a connection it cannot vouch for: one closed while idle is dropped
at checkout, and one given back in the middle of a request (its answer could still
arrive and be read by the next user) is aborted instead of reused.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import inspect
import logging
import os
import warnings
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

from mypy_extensions import mypyc_attr

from .protocols import Connection, Producer, ProtocolFactory, PulsarProtocol

__all__ = [
    "AbstractClient",
    "AbstractUdpClient",
    "Pool",
    "PoolClosedError",
    "PoolConnection",
]

# Seconds ``close()`` lets connections flush what they buffered before aborting them: a
# peer that stopped reading must not make a client or pool shutdown hang.
CLOSE_TIMEOUT = 5.0
# Seconds to wait for ``connection_lost`` after an abort; the loop delivers it on its next
# iteration, so this only bounds a misbehaving transport.
ABORT_TIMEOUT = 1.0

C = TypeVar("C")


@mypyc_attr(native_class=False)
class PoolClosedError(RuntimeError):
    """The pool was closed: no connection will be given, and waiters are woken with this."""


# Exceptions that leave a checked-out connection in an unknown state: the request may be
# half-written or its answer half-read, so the connection must not serve anyone else.
# TimeoutError and CancelledError are in the list because a request abandoned on a deadline
# may still be answered later, onto the next user of the connection.
_BROKEN = (OSError, EOFError, asyncio.TimeoutError, asyncio.CancelledError)


def _where(address: Any) -> str:
    """``host:port`` for a TCP address, the path for a Unix one: for error messages."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if isinstance(address, (str, os.PathLike)):
        return os.fsdecode(address)
    return repr(address)


def _connect_error(exc: OSError, address: Any) -> OSError | None:
    """The same kind of OSError as ``exc``, with the address in its message.

    uvloop says only "Connection refused" and asyncio's wording differs: rebuilding the
    error gives every loop the same message while callers keep catching the type they
    expect (ConnectionRefusedError, socket.gaierror, FileNotFoundError, ...). None when
    the type cannot be rebuilt from (errno, message); the caller then re-raises ``exc``.
    """
    reason = exc.strerror or str(exc) or type(exc).__name__
    message = f"cannot connect to {_where(address)}: {reason}"
    try:
        error = type(exc)(exc.errno, message) if exc.errno is not None else type(exc)(message)
    except Exception:
        return None
    error.__dict__.update(exc.__dict__)  # extra attributes (ssl's reason, library, ...)
    # The cause set here too: the compiled core (mypyc) drops ``raise ... from exc``'s cause
    # in a coroutine.
    error.__cause__ = exc
    return error


def _when_fired(protocol: PulsarProtocol, name: str) -> asyncio.Future[None]:
    """A private future resolved when the one-time event ``name`` of ``protocol`` fires.

    Bound as a callback rather than awaiting the event's shared waiter: cancelling a wait
    on the shared waiter cancels it for every other caller awaiting the same event.
    """
    future: asyncio.Future[None] = protocol.loop.create_future()

    def fired(_arg: Any, **_kw: Any) -> None:
        if not future.done():
            future.set_result(None)

    protocol.event(name).bind(fired)
    return future


def _when_lost(protocol: PulsarProtocol) -> asyncio.Future[None]:
    return _when_fired(protocol, "connection_lost")


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a failure as seen: errors of closing are expected and must not be logged."""
    if not future.cancelled():
        future.exception()


def _shut(connection: Any, abort: bool = False) -> asyncio.Future[Any] | None:
    """Start closing ``connection``; a future resolved once it is closed, if that can be known.

    Protocols of this package are closed through their transport and awaited through
    ``connection_lost``. Anything else a pool creator returns is closed with its own
    ``abort()`` or ``close()``; when that returns an awaitable it is scheduled (so a
    coroutine is never left un-awaited) and its future returned.
    """
    if isinstance(connection, PulsarProtocol):
        if abort:
            connection.abort()
        else:
            connection.close()
        return _when_lost(connection)
    method = getattr(connection, "abort", None) if abort else None
    method = method or getattr(connection, "close", None)
    if method is None:
        return None
    result = method()
    if not inspect.isawaitable(result):
        return None
    future = asyncio.ensure_future(result)
    future.add_done_callback(_retrieve)
    return future


async def _settle(futures: list[asyncio.Future[Any]], timeout: float) -> set[asyncio.Future[Any]]:
    """Wait up to ``timeout`` for ``futures``, ignoring their errors; the ones still pending."""
    if not futures:
        return set()
    done, pending = await asyncio.wait(futures, timeout=timeout)
    for future in done:
        _retrieve(future)
    return set(pending)


async def _shut_all(connections: list[Any], timeout: float) -> None:
    """Close ``connections``, letting them flush for ``timeout`` seconds, then abort the rest."""
    closing = {}
    for connection in connections:
        future = _shut(connection)
        if future is not None:
            closing[future] = connection
    pending = await _settle(list(closing), timeout)
    if not pending:
        return
    aborting = []
    for future in pending:
        connection = closing[future]
        if isinstance(connection, PulsarProtocol):
            aborting.append(_shut(connection, abort=True))
        else:
            future.cancel()
    await _settle([f for f in aborting if f is not None], ABORT_TIMEOUT)


def _is_closed(connection: Any) -> bool:
    return bool(getattr(connection, "closed", False))


def _mid_request(connection: Any) -> bool:
    """True when ``connection`` is not at a request boundary and cannot serve another user.

    A started consumer that has not finished is still waiting for its answer; bytes held
    for a next consumer were sent by the server unasked. Either way the next user would
    read what was not its answer.
    """
    if not isinstance(connection, Connection):
        return False
    consumer = connection._current_consumer
    return (consumer is not None and consumer._started) or connection._buffered is not None


_P = TypeVar("_P", bound="_ClientProducer")


@mypyc_attr(allow_interpreted_subclasses=True)
class _ClientProducer(Producer):
    """What TCP and UDP clients share: the protocols they opened, and closing them."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        protocol_factory: ProtocolFactory | None = None,
        name: str | None = None,
        max_requests: int | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._check_implemented()
        super().__init__(loop, protocol_factory, name, max_requests, logger)
        self._connections: set[PulsarProtocol] = set()
        self._closed = False

    def _check_implemented(self) -> None:
        """Refuse an instance whose class left an abstract method out: ABCMeta does it in
        pure Python, not for a subclass of the compiled core (mypyc), so it is said here."""

    def _refuse_abstract(self, method: str) -> None:
        raise TypeError(
            f"Can't instantiate abstract class {type(self).__name__} with abstract method {method}"
        )

    @property
    def connections(self) -> frozenset[PulsarProtocol]:
        """The protocols this client opened that are still connected."""
        return frozenset(self._connections)

    @property
    def closed(self) -> bool:
        """True once ``close()`` or ``abort()`` was called: no new connection is opened."""
        return self._closed

    def _protocol_made(self, protocol: PulsarProtocol) -> None:
        self._connections.add(protocol)
        super()._protocol_made(protocol)

    def _protocol_lost(self, protocol: PulsarProtocol, exc: BaseException | None) -> None:
        self._connections.discard(protocol)
        super()._protocol_lost(protocol, exc)

    def _check_open(self, target: Any) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed: cannot connect to {_where(target)}")

    def _check_factory(self, protocol_factory: ProtocolFactory | None) -> None:
        # Fail before any socket is opened, not inside the loop's connection callback.
        if protocol_factory is None and self.protocol_factory is None:
            raise RuntimeError(f"{self!r} has no protocol_factory")

    async def _connected(self, protocol: PulsarProtocol, target: Any) -> PulsarProtocol:
        """``protocol`` once ``connection_made`` fired, unless the client closed meanwhile."""
        if not protocol.has_fired("connection_made"):
            # Both loops call connection_made before their create_* returns; a loop that
            # did not would be waited for here.
            try:
                await _when_fired(protocol, "connection_made")
            except BaseException:
                protocol.abort()
                raise
        if self._closed:
            protocol.abort()
            raise ConnectionAbortedError(
                f"{self!r} was closed while connecting to {_where(target)}"
            )
        return protocol

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close every connection this client opened and refuse new ones.

        Connections get ``timeout`` seconds to flush what they buffered, then are aborted.
        Safe to call more than once.
        """
        self._closed = True
        await _shut_all(list(self._connections), timeout)

    async def abort(self) -> None:
        """Abort every connection this client opened, dropping buffered data."""
        self._closed = True
        lost = [_when_lost(p) for p in self._connections]
        for protocol in list(self._connections):
            protocol.abort()
        await _settle(lost, ABORT_TIMEOUT)

    async def __aenter__(self: _P) -> _P:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


@mypyc_attr(allow_interpreted_subclasses=True)
class AbstractClient(_ClientProducer, metaclass=abc.ABCMeta):
    """A producer of outgoing stream connections (TCP, or Unix for a path address).

    Subclasses implement ``connect()``, typically ``create_connection(self.address)``; a
    :class:`Pool` can use that method as its creator. Usable as ``async with``: leaving
    the block closes every connection the client opened.
    """

    @abc.abstractmethod
    async def connect(self) -> Any:
        """Open a new connection to the client's server."""

    def _check_implemented(self) -> None:
        if type(self).connect is AbstractClient.connect:
            self._refuse_abstract("connect")

    async def create_connection(
        self, address: Any, protocol_factory: ProtocolFactory | None = None, **kw: Any
    ) -> PulsarProtocol:
        """Connect to ``address`` and return the protocol once ``connection_made`` fired.

        ``address`` is ``(host, port)`` for TCP, or a path (``str`` or path-like) for a
        Unix socket. The protocol comes from ``create_protocol`` with ``protocol_factory``
        (default: the client's), so it is a ``Connection`` for the usual
        ``functools.partial(Connection, Consumer)``. ``kw`` goes to the loop's
        ``create_connection`` / ``create_unix_connection`` (``ssl``, ``server_hostname``,
        ``local_addr``, ...). For a deadline on connecting, wrap the call in
        ``asyncio.wait_for``: a cancelled connect leaves no socket open.

        A failure raises the loop's OSError type (ConnectionRefusedError, socket.gaierror,
        FileNotFoundError, ...) with the address in its message, chained to the original.
        """
        self._check_open(address)
        self._check_factory(protocol_factory)

        def factory() -> PulsarProtocol:
            return self.create_protocol(protocol_factory=protocol_factory)

        loop = self.loop
        try:
            if isinstance(address, (str, os.PathLike)):
                _, protocol = await loop.create_unix_connection(factory, os.fspath(address), **kw)
            else:
                host, port = address[0], address[1]  # IPv6 may add flowinfo, scope id
                _, protocol = await loop.create_connection(factory, host, port, **kw)
        except OSError as exc:
            error = _connect_error(exc, address)
            if error is None:
                raise
            raise error from exc
        return await self._connected(protocol, address)


@mypyc_attr(allow_interpreted_subclasses=True)
class AbstractUdpClient(_ClientProducer, metaclass=abc.ABCMeta):
    """A producer of datagram endpoints, each a ``DatagramProtocol`` (or subclass).

    Subclasses implement ``create_endpoint()``, typically
    ``create_datagram_endpoint(remote_addr=self.address)``; replies arrive in the
    protocol's ``datagram_received``, which a client subclass overrides.
    """

    @abc.abstractmethod
    async def create_endpoint(self) -> Any:
        """Open a new datagram endpoint."""

    def _check_implemented(self) -> None:
        if type(self).create_endpoint is AbstractUdpClient.create_endpoint:
            self._refuse_abstract("create_endpoint")

    async def create_datagram_endpoint(
        self, protocol_factory: ProtocolFactory | None = None, **kw: Any
    ) -> PulsarProtocol:
        """Open a datagram endpoint; return its protocol once ``connection_made`` fired.

        ``kw`` goes to the loop's ``create_datagram_endpoint`` (``remote_addr``,
        ``local_addr``, ``family``, ...). A failure raises the loop's OSError type with
        the address in its message.
        """
        target = kw.get("remote_addr") or kw.get("local_addr")
        self._check_open(target)
        self._check_factory(protocol_factory)

        def factory() -> PulsarProtocol:
            return self.create_protocol(protocol_factory=protocol_factory)

        try:
            _, protocol = await self.loop.create_datagram_endpoint(factory, **kw)
        except OSError as exc:
            error = _connect_error(exc, target)
            if error is None:
                raise
            raise error from exc
        return await self._connected(protocol, target)


@mypyc_attr(allow_interpreted_subclasses=True)
class _Slot:
    """Handed to a waiter instead of a connection: "a slot is free, create one"."""

    __slots__ = ()


_SLOT = _Slot()


@mypyc_attr(allow_interpreted_subclasses=True)
class Pool(Generic[C]):
    """An asynchronous pool of at most ``pool_size`` open connections made by ``creator``.

    ``await pool.connect()`` gives a :class:`PoolConnection`: an idle connection at once
    (the most recently released, so surplus connections age out at the server's
    keep-alive), else a new one from ``await creator()`` while fewer than ``pool_size``
    exist (connections being created count), else it waits in FIFO order. ``timeout``
    bounds that wait (None: wait as long as it takes); it does not bound ``creator()``,
    whose connect deadline is its own.

    A released connection goes straight to the first waiter, so a newcomer never jumps
    the queue; a connection closed while idle is dropped at checkout; a slot freed by a
    detached, dead or failed connection lets the first waiter create a new one.
    """

    def __init__(
        self,
        creator: Callable[[], Awaitable[C]],
        pool_size: int = 10,
        loop: asyncio.AbstractEventLoop | None = None,
        timeout: float | None = None,
    ) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, not {pool_size!r}")
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be None or >= 0, not {timeout!r}")
        self._creator = creator
        self._pool_size = pool_size
        self._loop = loop
        self.timeout = timeout
        self._idle: collections.deque[C] = collections.deque()
        # Keyed by id(): connections need not be hashable, and being stored here keeps
        # each one alive, so its id cannot be reused while it is a key.
        self._in_use: dict[int, C] = {}
        self._creating = 0  # creator() calls in flight + slots handed to waiters
        self._waiters: collections.deque[asyncio.Future[C | _Slot]] = collections.deque()
        self._closed = False
        self._closing: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return (
            f"<Pool pool_size={self._pool_size} available={self.available} "
            f"in_use={self.in_use} waiting={self.waiting}{' closed' if self._closed else ''}>"
        )

    @property
    def pool_size(self) -> int:
        """The most connections this pool holds, idle, in use and being created."""
        return self._pool_size

    @property
    def available(self) -> int:
        """Idle connections that are still open, ready to be handed out at once."""
        return sum(1 for connection in self._idle if not _is_closed(connection))

    @property
    def in_use(self) -> int:
        """Connections checked out (or being handed to a waiter)."""
        return len(self._in_use)

    @property
    def waiting(self) -> int:
        """``connect()`` calls waiting for a connection."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    async def connect(self) -> PoolConnection[C]:
        """A connection from the pool: idle, new, or the next one released.

        Raises PoolClosedError once the pool is closed, asyncio.TimeoutError when the wait
        outlasts ``timeout``, and whatever ``creator()`` raises when it fails.
        """
        self._check_open()
        if self._loop is None:  # known from the first call on: __del__ and timers need it
            self._loop = asyncio.get_running_loop()
        connection = self._take_idle()
        if connection is None:
            if len(self._idle) + len(self._in_use) + self._creating < self._pool_size:
                self._creating += 1
                connection = await self._create()
            else:
                got = await self._wait()
                if self._closed:  # closed between the hand-over and this task resuming
                    if isinstance(got, _Slot):
                        self._creating -= 1
                    raise PoolClosedError(f"{self!r} was closed while waiting for a connection")
                connection = await self._create() if isinstance(got, _Slot) else got
            self._in_use[id(connection)] = connection
        return PoolConnection(self, connection)

    def _check_open(self) -> None:
        if self._closed:
            raise PoolClosedError(f"{self!r} is closed")

    def _take_idle(self) -> C | None:
        idle = self._idle
        while idle:
            connection = idle.pop()
            if not _is_closed(connection):
                self._in_use[id(connection)] = connection
                return connection
            # Closed while idle (the server's keep-alive, a reset): dropped, its slot is
            # the caller's to fill.
        return None

    async def _create(self) -> C:
        """``await creator()`` in a slot already counted in ``_creating``."""
        try:
            connection = await self._creator()
        except BaseException:
            self._creating -= 1
            self._slot_freed()
            raise
        self._creating -= 1
        if self._closed:
            _shut(connection, abort=True)
            raise PoolClosedError(f"{self!r} was closed while a connection was being created")
        return connection

    async def _wait(self) -> C | _Slot:
        loop = self.loop
        waiter: asyncio.Future[C | _Slot] = loop.create_future()
        self._waiters.append(waiter)
        timer = None
        if self.timeout is not None:
            timer = loop.call_later(self.timeout, self._expire, waiter)
        try:
            return await waiter
        except BaseException:
            self._unclaim(waiter)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self, waiter: asyncio.Future[C | _Slot]) -> None:
        # The timer, not asyncio.wait_for, decides: the waiter future then either holds a
        # connection or the timeout, and a connection handed over at the last moment
        # cannot be lost between the two.
        if not waiter.done():
            waiter.set_exception(
                asyncio.TimeoutError(
                    f"no connection became free within timeout={self.timeout}s: all "
                    f"{self._pool_size} connections of the pool (pool_size="
                    f"{self._pool_size}) are in use"
                )
            )

    def _unclaim(self, waiter: asyncio.Future[C | _Slot]) -> None:
        """The waiting caller left (timeout, cancellation): give back what it was handed."""
        if not waiter.done() or waiter.cancelled() or waiter.exception() is not None:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            return
        got = waiter.result()
        if isinstance(got, _Slot):
            self._creating -= 1
            self._slot_freed()
        else:
            self._release(got)

    def _next_waiter(self) -> asyncio.Future[C | _Slot] | None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                return waiter
        return None

    def _slot_freed(self) -> None:
        """A connection left the pool for good: the first waiter may create one."""
        if self._closed:
            return
        waiter = self._next_waiter()
        if waiter is not None:
            self._creating += 1
            waiter.set_result(_SLOT)

    def _release(self, connection: C) -> None:
        """Take ``connection`` back: to the first waiter, else idle; dropped if unusable."""
        if self._in_use.pop(id(connection), None) is None:
            return  # detached, or the pool was closed: not ours anymore
        if _is_closed(connection):
            self._slot_freed()
            return
        if _mid_request(connection):
            _shut(connection, abort=True)
            self._slot_freed()
            return
        waiter = self._next_waiter()
        if waiter is not None:
            self._in_use[id(connection)] = connection
            waiter.set_result(connection)
        else:
            self._idle.append(connection)

    def _detach(self, connection: C) -> None:
        if self._in_use.pop(id(connection), None) is not None:
            self._slot_freed()

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close the pool: wake waiters with PoolClosedError, close every connection.

        Idle and checked-out connections get ``timeout`` seconds to flush, then are
        aborted; releasing a checked-out one afterwards is a no-op. Safe to call more
        than once: later calls wait for the first to finish.
        """
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        self._closed = True
        self._closing = self.loop.create_future()
        try:
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(
                        PoolClosedError(f"{self!r} was closed while waiting for a connection")
                    )
            connections = [*self._idle, *self._in_use.values()]
            self._idle.clear()
            self._in_use.clear()
            await _shut_all(connections, timeout)
        finally:
            self._closing.set_result(None)

    async def __aenter__(self) -> Pool[C]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


_CHECKED_OUT, _RELEASED, _DETACHED = "checked out", "released", "detached"


# A proxy (__getattr__/__setattr__ to its connection): a regular class under mypyc too.
@mypyc_attr(native_class=False)
class PoolConnection(Generic[C]):
    """A connection checked out of a :class:`Pool`; attribute access goes to the connection.

    ``close()`` gives it back to the pool (idempotent); ``detach()`` takes it out of the
    pool for good (the caller then owns it and closes it). ``async with await
    pool.connect() as conn:`` (or a plain ``with``, as pulsar code has it) releases it on
    exit, or detaches and aborts it when the block raised a connection error, timed out or
    was cancelled: a request cut short would leave its answer for the next user. Once
    released, using it raises RuntimeError rather than touching a connection someone else
    may hold.
    """

    __slots__ = ("_connection", "_pool", "_state")

    def __init__(self, pool: Pool[C], connection: C) -> None:
        self._pool = pool
        self._connection = connection
        self._state = _CHECKED_OUT

    def __repr__(self) -> str:
        return f"<PoolConnection {self._state} {self._connection!r}>"

    def __getattr__(self, name: str) -> Any:
        # Slots not set yet (a failed __init__, copy, pickle) and dunder probes are not
        # proxied: they must raise AttributeError, never recurse or hit a released check.
        if name in PoolConnection.__slots__ or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(name)
        return getattr(self.connection, name)

    @property
    def pool(self) -> Pool[C]:
        return self._pool

    @property
    def current_consumer(self) -> Any:
        """The connection's ``current_consumer``, the one attribute a client reads on every
        request: found on the class, not through ``__getattr__``, whose fallback costs
        a failed lookup and an AttributeError each time. The same result, and the same
        AttributeError (then from ``__getattr__``) for a connection without it."""
        return cast(Any, self.connection).current_consumer

    @property
    def connection(self) -> C:
        """The pooled connection; RuntimeError once it was given back."""
        if self._state == _RELEASED:
            raise RuntimeError(f"{self!r}: the connection was given back to the pool")
        return self._connection

    @property
    def released(self) -> bool:
        return self._state == _RELEASED

    @property
    def detached(self) -> bool:
        return self._state == _DETACHED

    def close(self) -> None:
        """Give the connection back to the pool (no-op if released or detached already)."""
        if self._state == _CHECKED_OUT:
            self._state = _RELEASED
            self._pool._release(self._connection)

    def detach(self) -> C:
        """Remove the connection from the pool, freeing its slot; return it, now yours."""
        if self._state == _RELEASED:
            raise RuntimeError(f"{self!r}: cannot detach a connection given back to the pool")
        if self._state == _CHECKED_OUT:
            self._state = _DETACHED
            self._pool._detach(self._connection)
        return self._connection

    def __enter__(self) -> PoolConnection[C]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """``with conn:`` (pulsar's form) as ``async with``: release, or drop if broken."""
        if exc is not None and isinstance(exc, _BROKEN) and self._state == _CHECKED_OUT:
            _shut(self.detach(), abort=True)
        else:
            self.close()

    async def __aenter__(self) -> PoolConnection[C]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __del__(self) -> None:
        # A PoolConnection dropped without close() would hold its slot forever and, after
        # pool_size such leaks, hang every connect(): give it back, and say so.
        if getattr(self, "_state", None) != _CHECKED_OUT:
            return
        pool = self._pool
        loop = pool._loop
        if pool._closed or loop is None or loop.is_closed():
            return
        message = (
            f"{self!r} was garbage collected without being released; use "
            "'async with await pool.connect() as conn:' or call conn.close()"
        )
        self._state = _RELEASED
        loop.call_soon_threadsafe(pool._release, self._connection)
        warnings.warn(message, ResourceWarning, source=self, stacklevel=2)
