"""The asyncio I/O around the framing: one :class:`Channel` per socketpair end.

The channel sorts what arrives by the message table: a ``reply`` resolves the request
waiting for it; a ``command`` (a request) runs through ``on_command`` and gets exactly one
reply, sent by the channel, with the result or the error; a ``route`` (a request: run a
command elsewhere) runs through ``on_route`` the same way; a ``notify`` runs through
``on_command`` too and is never answered; every other notification goes to ``on_message``.
A request that says how long its caller waits (``timeout``) is cancelled then, so that
nothing of a call the caller gave up on stays behind.

Costs per message, kept small: a plain (not async) handler is answered at once, without
a task; the first frame of a loop turn is written at once, the next ones are queued and
written together (at the end of the read that produced them, else at the end of the
turn, by a ``call_soon``), one syscall for many; a request's
timeout is one timer (``loop.call_later``), not a ``wait_for`` task.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import math
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from .commands import within
from .errors import ChannelClosed, CommandError, ProtocolError
from .frames import FrameDecoder, encode
from .messages import MESSAGES, Direction, Kind, Message, command, notify, reply, route

__all__ = [
    "MAX_RUNNING_COMMANDS",
    "MAX_WRITE_BUFFER",
    "ROUTE_MARGIN",
    "Channel",
    "OnCommand",
    "OnMessage",
    "OnRoute",
]

logger = logging.getLogger("pulsar_arbiter.ipc")

#: Bytes queued towards a peer that is not reading before it is declared dead. A live
#: peer drains its end between events; 1 MiB is many seconds of heartbeats and replies, so
#: reaching it means a stuck or dead peer, and growing further would only waste memory.
MAX_WRITE_BUFFER = 1024 * 1024

#: Bytes of queued frames written at once, without waiting for the end of the loop turn:
#: what one turn queues stays bounded, and the write buffer's bound is checked as it grows.
FLUSH_AT = 64 * 1024

#: Commands from the peer running at once on one channel (unless the channel is given
#: its own bound: a worker's is --max-commands). Ours take microseconds (a few are in
#: flight at most); beyond this a peer is flooding us, and each extra command is refused
#: at once (an error reply) instead of queueing tasks without bound.
MAX_RUNNING_COMMANDS = 64

#: Seconds a ``route`` caller waits past its own timeout: the arbiter answers a member
#: that timed out with an error at the timeout, and that answer needs a moment to arrive.
ROUTE_MARGIN = 0.5

#: Called with the channel and each notification (other than ``notify``). May return an
#: awaitable (e.g. be an ``async def``): it then runs as a task, which outlives the
#: channel (a ``stop`` handler must finish even if the arbiter goes away).
OnMessage = Callable[["Channel", Message], "Awaitable[object] | None"]
#: Runs the command ``name`` with ``args`` and returns its result, or an awaitable of it;
#: raises CommandError (the error reply) when it cannot. Usually ``Registry.start`` bound
#: to this process. A result returned at once is answered at once, without a task.
OnCommand = Callable[[str, dict[str, Any]], Any]
#: Runs a ``route`` request (the whole message) and returns its result, or an awaitable.
OnRoute = Callable[[Message], Any]


class _ChannelProtocol(asyncio.Protocol):
    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.channel._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.channel._data_received(data)

    def eof_received(self) -> bool:
        return False  # close our side too: the peer is gone or leaving

    def connection_lost(self, exc: Exception | None) -> None:
        self.channel._connection_lost(exc)


class Channel:
    """A message channel over one connected stream socket (an end of a socketpair).

    Create with :meth:`connect` inside the loop that will run it (the arbiter's loop or a
    worker's). ``send`` and ``notify`` never block; ``request`` sends a command and awaits
    its reply; ``closed`` resolves (with the error, or None) once the connection is gone.
    ``receiving`` says which messages the peer may send (the arbiter's channels receive
    ``Direction.TO_ARBITER``); any other is a protocol error that closes the channel.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_message: OnMessage,
        max_write_buffer: int = MAX_WRITE_BUFFER,
        *,
        on_command: OnCommand | None = None,
        receiving: Direction = Direction.BOTH,
        on_route: OnRoute | None = None,
        max_commands: int = MAX_RUNNING_COMMANDS,
    ) -> None:
        self.loop = loop
        self.on_message = on_message
        self.on_command = on_command
        self.on_route = on_route
        self.max_commands = max_commands
        self.max_write_buffer = max_write_buffer
        self.closed: asyncio.Future[Exception | None] = loop.create_future()
        self._transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder(receiving=receiving)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[object]] = set()
        self._commands: set[asyncio.Task[None]] = set()
        #: Frames queued, written in one go at the end of the read being handled
        #: (``_reading``) or of the loop turn (a ``call_soon`` of :meth:`_flush`).
        self._outbox: list[bytes] = []
        self._queued = 0  # bytes in _outbox
        self._reading = False
        self._turn = False  # a frame went out this loop turn: queue the next ones

    @classmethod
    async def connect(
        cls,
        sock: socket.socket,
        on_message: OnMessage,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        on_command: OnCommand | None = None,
        receiving: Direction = Direction.BOTH,
        max_write_buffer: int = MAX_WRITE_BUFFER,
        on_route: OnRoute | None = None,
        max_commands: int = MAX_RUNNING_COMMANDS,
    ) -> Channel:
        """Wrap a connected stream socket; the channel's transport owns it from now on."""
        loop = loop or asyncio.get_running_loop()
        channel = cls(
            loop,
            on_message,
            max_write_buffer,
            on_command=on_command,
            receiving=receiving,
            on_route=on_route,
            max_commands=max_commands,
        )
        await loop.connect_accepted_socket(lambda: _ChannelProtocol(channel), sock)
        return channel

    @property
    def pending(self) -> int:
        """Requests of ours awaiting their reply."""
        return len(self._pending)

    @property
    def running(self) -> int:
        """Commands of the peer's running here."""
        return len(self._commands)

    @property
    def is_closing(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def send(self, msg: Mapping[str, Any]) -> bool:
        """Queue ``msg`` without blocking. Returns False if the channel is closing.

        Raises ValueError if ``msg`` cannot be encoded (see :func:`encode`). If the peer
        has left more than ``max_write_buffer`` bytes unread, it is considered dead and
        the channel is aborted.
        """
        frame = encode(msg)
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        if not (self._reading or self._turn):
            # The first frame of a loop turn goes out now (no added latency); the rest of
            # the turn's are queued, and written together when it ends.
            self._turn = True
            self.loop.call_soon(self._end_turn)
            self._outbox.append(frame)
            self._flush()
            return True
        self._outbox.append(frame)
        self._queued += len(frame)
        if self._queued >= FLUSH_AT:
            self._flush()
        return True

    def _end_turn(self) -> None:
        self._turn = False
        self._flush()

    def _flush(self) -> None:
        """Write the queued frames (one syscall), or drop them if the channel is closing."""
        outbox, transport = self._outbox, self._transport
        if not outbox:
            return
        data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
        outbox.clear()
        self._queued = 0
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if transport.get_write_buffer_size() > self.max_write_buffer:
            logger.warning(
                "IPC peer has not read %d bytes; considering it dead and closing the channel",
                transport.get_write_buffer_size(),
            )
            transport.abort()

    def notify(self, name: str, args: Mapping[str, Any] | None = None) -> bool:
        """Ask the peer to run command ``name``, expecting no answer (none will come)."""
        return self.send(notify(name, args))

    async def request(
        self, name: str, args: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """Send command ``name`` and return the peer's result.

        Raises CommandError if the peer replied with an error, ChannelClosed if the channel
        closed first, and asyncio.TimeoutError after ``timeout`` seconds (the peer is told
        the timeout, and gives the command up then too).
        """
        return await self._request(lambda id: command(id, name, args, timeout), name, timeout)

    async def route(self, target: str, name: str, args: Mapping[str, Any], timeout: float) -> Any:
        """Ask the peer (the arbiter) to run command ``name`` in ``target``; its answer
        is an object of ``{"result": ...}`` or ``{"error": ..., "type": ...}`` per member.
        Raises as :meth:`request` does (TimeoutError ``ROUTE_MARGIN`` s after ``timeout``)."""
        return await self._request(
            lambda id: route(id, target, name, args, timeout), name, timeout + ROUTE_MARGIN
        )

    async def _request(
        self, build: Callable[[int], Message], name: str, timeout: float | None
    ) -> Any:
        id = next(self._ids)
        msg = build(id)  # ValueError here (a bad message of ours) leaves nothing behind
        future: asyncio.Future[Any] = self.loop.create_future()
        self._pending[id] = future
        timer = None if timeout is None else self.loop.call_later(timeout, _expire, future)
        try:
            if not self.send(msg):
                raise ChannelClosed(f"IPC channel closed, cannot send {name!r}")
            return await future
        finally:
            self._pending.pop(id, None)
            if timer is not None:
                timer.cancel()

    def close(self) -> None:
        """Close after flushing what is queued; idempotent."""
        if self._transport is not None:
            self._flush()
            self._transport.close()

    def abort(self) -> None:
        """Close now, dropping what is queued; idempotent."""
        self._outbox.clear()
        self._queued = 0
        if self._transport is not None:
            self._transport.abort()

    # -- protocol callbacks --

    def _data_received(self, data: bytes) -> None:
        try:
            messages = self._decoder.feed(data)
        except ProtocolError as exc:
            logger.error("IPC peer sent an invalid frame, closing the channel: %s", exc)
            self.abort()
            return
        self._reading = True
        try:
            for msg in messages:
                if self.is_closing:
                    return
                kind = MESSAGES[msg["type"]].kind
                if kind is Kind.REPLY:
                    self._resolve(msg)
                elif kind is Kind.REQUEST or msg["type"] == "notify":
                    self._serve(msg, answer=kind is Kind.REQUEST)
                else:
                    self._dispatch(msg)
        finally:
            self._reading = False
            self._flush()

    def _resolve(self, msg: Message) -> None:
        future = self._pending.get(msg["id"])
        if future is None or future.done():
            logger.debug("IPC reply to unknown or expired request %d", msg["id"])
        elif msg["error"] is not None:
            kind = msg.get("error_type")
            kind = kind if isinstance(kind, str) and len(kind) <= 100 else None
            future.set_exception(CommandError(msg["error"], type=kind))
        else:
            future.set_result(msg["result"])

    def _serve(self, msg: Message, answer: bool) -> None:
        refusal = None
        handler = self.on_route if msg["type"] == "route" else self.on_command
        if handler is None:
            refusal = "this process runs no commands"
        elif len(self._commands) >= self.max_commands:
            refusal = f"busy: {self.max_commands} commands running, try again"
        if refusal is not None:
            if answer:
                self.send(reply(msg["id"], error=refusal))
            else:
                logger.warning("IPC notify %.80r dropped: %s", msg["name"], refusal)
            return
        try:
            if msg["type"] == "route":
                assert self.on_route is not None
                running = self.on_route(msg)
            else:
                assert self.on_command is not None
                running = self.on_command(msg["name"], msg["args"])
        except Exception as exc:
            self._answer(msg, answer, *_outcome(msg, exc))
            return
        if not inspect.isawaitable(running):  # a plain command: answered now, no task
            self._answer(msg, answer, running, None, None)
            return
        task = asyncio.ensure_future(self._run(msg, running, answer), loop=self.loop)
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)

    async def _run(self, msg: Message, running: Awaitable[Any], answer: bool) -> None:
        timeout = _caller_timeout(msg)
        try:
            result = await (running if timeout is None else within(running, timeout))
        except Exception as exc:
            self._answer(msg, answer, *_outcome(msg, exc))
        else:
            self._answer(msg, answer, result, None, None)

    def _answer(
        self,
        msg: Message,
        answer: bool,
        result: Any,
        error: str | None,
        error_type: str | None,
    ) -> None:
        """Reply to request ``msg`` (or, for a notification, log its error)."""
        name = msg["name"]
        if not answer:
            if error is not None:
                logger.warning("IPC notify %.80r failed: %s", name, error)
            return
        try:
            self.send(reply(msg["id"], result, error, error_type))
        except ValueError as exc:  # the result is not JSON, or too large
            self.send(reply(msg["id"], error=f"{name}: the result cannot be sent: {exc}"))

    def _dispatch(self, msg: Message) -> None:
        try:
            result = self.on_message(self, msg)
        except Exception:
            logger.exception("IPC %s handler failed", msg["type"])
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result, loop=self.loop)
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("IPC message handler failed", exc_info=task.exception())

    def _connection_lost(self, exc: Exception | None) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ChannelClosed("IPC channel closed before the reply"))
        if not self.closed.done():
            self.closed.set_result(exc)


def _expire(future: asyncio.Future[Any]) -> None:
    """A request's timer: its caller stops waiting (``asyncio.wait_for``'s TimeoutError)."""
    if not future.done():
        future.set_exception(asyncio.TimeoutError())


def _outcome(msg: Message, exc: Exception) -> tuple[None, str, str | None]:
    """The error reply's ``(result, error, error_type)`` for a command that raised."""
    name = msg["name"]
    if isinstance(exc, CommandError):
        return None, str(exc), exc.type
    if isinstance(exc, asyncio.TimeoutError):  # the caller gave up: so do we
        return None, f"{name}: no answer within {msg['timeout']:g}s", "TimeoutError"
    # A bug of the dispatcher's: answer, serve on.
    logger.error("IPC command %.80r failed", name, exc_info=exc)
    return None, f"internal error: {type(exc).__name__}: {exc}", None


def _caller_timeout(msg: Message) -> float | None:
    """How long the caller of ``msg`` waits (a command's optional ``timeout``), if it said
    so with a usable number; a ``route`` is bounded by the arbiter per member instead."""
    if msg["type"] != "command":
        return None
    value = msg.get("timeout")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None
