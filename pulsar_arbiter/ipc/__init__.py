"""The arbiter <-> worker channel: one socketpair per worker, small framed JSON messages.

A frame is a 4-byte big-endian length followed by that many bytes of compact UTF-8 JSON,
an object whose ``"type"`` is one of :data:`MESSAGE_TYPES`:

=========  ===============  ====================================================
type       direction        fields
=========  ===============  ====================================================
ready      worker->arbiter  ``pid`` (int): the worker serves
heartbeat  worker->arbiter  ``stats`` (object): sent from the worker's own loop
retiring   worker->arbiter  ``reason`` (str): e.g. ``"max_requests"``
stop       arbiter->worker  ``graceful`` (bool), ``timeout`` (number or null)
command    either way       ``id`` (int >= 0), ``name`` (str), ``args`` (object)
reply      either way       ``id`` (int >= 0), ``result`` (any), ``error`` (str or null)
=========  ===============  ====================================================

The framing (:func:`encode`, :class:`FrameDecoder`) is pure and raises :class:`ProtocolError`
on any bad byte from the peer; :class:`Channel` is the asyncio I/O around it.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import logging
import math
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, cast

__all__ = [
    "MAX_DEPTH",
    "MAX_FRAME",
    "MAX_WRITE_BUFFER",
    "MESSAGE_TYPES",
    "Channel",
    "ChannelClosed",
    "CommandError",
    "FrameDecoder",
    "Message",
    "ProtocolError",
    "command",
    "encode",
    "heartbeat",
    "ready",
    "reply",
    "retiring",
    "stop",
    "validate",
]

logger = logging.getLogger("pulsar_arbiter.ipc")

#: One decoded message: a JSON object with at least a string "type".
Message = dict[str, Any]

#: Largest frame payload accepted or sent. Messages are control messages and per-worker
#: stats (well under 4 KiB); 64 KiB leaves room for command results such as a stack dump
#: while bounding what a confused or compromised peer can make us buffer per frame.
MAX_FRAME = 64 * 1024

#: Bytes queued towards a peer that is not reading before it is declared dead. A live
#: peer drains its end between events; 1 MiB is many seconds of heartbeats and replies, so
#: reaching it means a stuck or dead peer, and growing further would only waste memory.
MAX_WRITE_BUFFER = 1024 * 1024

#: Deepest nesting of arrays and objects accepted in a message. Ours are at most a few
#: levels deep; the bound keeps whatever we accept re-encodable (the arbiter passes worker
#: stats on to ``ctl stats``) far below Python's recursion limit, whatever the call depth.
MAX_DEPTH = 32

_HEADER = struct.Struct(">I")

MESSAGE_TYPES = frozenset(
    {"ready", "heartbeat", "retiring", "draining", "stop", "command", "reply"}
)


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid frame or message; close the channel."""


class ChannelClosed(ConnectionError):
    """The channel closed before a request got its reply (or was closed when sending)."""


class CommandError(Exception):
    """The peer answered a command with an error; ``str(exc)`` is the peer's message."""


# -- message constructors -------------------------------------------------------------


def ready(pid: int) -> Message:
    return {"type": "ready", "pid": pid}


def heartbeat(stats: Mapping[str, Any]) -> Message:
    return {"type": "heartbeat", "stats": dict(stats)}


def retiring(reason: str) -> Message:
    return {"type": "retiring", "reason": reason}


def draining() -> Message:
    """A worker stopped accepting (after a stop): the arbiter may close the listeners."""
    return {"type": "draining"}


def stop(graceful: bool = True, timeout: float | None = None, handoff: bool = False) -> Message:
    """Stop serving; ``handoff``: idle connections may go to the workers still serving."""
    return {"type": "stop", "graceful": graceful, "timeout": timeout, "handoff": handoff}


def command(id: int, name: str, args: Mapping[str, Any] | None = None) -> Message:
    return {"type": "command", "id": id, "name": name, "args": dict(args or {})}


def reply(id: int, result: Any = None, error: str | None = None) -> Message:
    return {"type": "reply", "id": id, "result": result, "error": error}


# -- validation -----------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_timeout(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and value >= 0


#: For each type, the required fields and a check of their values.
_FIELDS: dict[str, dict[str, tuple[str, Callable[[object], bool]]]] = {
    "ready": {"pid": ("an integer", _is_int)},
    "heartbeat": {"stats": ("an object", lambda v: isinstance(v, dict))},
    "retiring": {"reason": ("a string", lambda v: isinstance(v, str))},
    "draining": {},
    "stop": {
        "graceful": ("a boolean", lambda v: isinstance(v, bool)),
        "timeout": ("a number >= 0 or null", _is_timeout),
    },
    "command": {
        "id": ("an integer >= 0", _is_id),
        "name": ("a string", lambda v: isinstance(v, str)),
        "args": ("an object", lambda v: isinstance(v, dict)),
    },
    "reply": {
        "id": ("an integer >= 0", _is_id),
        "result": ("any value", lambda v: True),
        "error": ("a string or null", lambda v: v is None or isinstance(v, str)),
    },
}


def validate(msg: object) -> Message:
    """Return ``msg`` if it is a well-formed message, else raise ProtocolError.

    Extra fields are allowed (and ignored by this module).
    """
    if not isinstance(msg, dict):
        raise ProtocolError(f"expected a JSON object, got {type(msg).__name__}")
    kind = msg.get("type")
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        raise ProtocolError(f"unknown message type {kind!r}")
    for field, (expected, check) in _FIELDS[kind].items():
        if field not in msg:
            raise ProtocolError(f"{kind}: missing field {field!r}")
        if not check(msg[field]):
            raise ProtocolError(f"{kind}: {field!r} must be {expected}, got {msg[field]!r:.80}")
    return msg


# -- framing ----------------------------------------------------------------------------


def encode(msg: Mapping[str, Any]) -> bytes:
    """One frame for ``msg``. Raises ValueError for a message that is ours to fix:
    malformed, not JSON-serialisable, or larger than MAX_FRAME."""
    try:
        payload = json.dumps(
            validate(dict(msg)), separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except (ProtocolError, TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"cannot encode IPC message: {exc}") from None
    if nesting_exceeds(msg, MAX_DEPTH):
        raise ValueError(f"cannot encode IPC message: nested deeper than {MAX_DEPTH} levels")
    if len(payload) > MAX_FRAME:
        raise ValueError(f"IPC message too large: {len(payload)} bytes (max {MAX_FRAME})")
    return _HEADER.pack(len(payload)) + payload


def nesting_exceeds(value: object, limit: int) -> bool:
    """Do arrays and objects in the decoded JSON ``value`` nest deeper than ``limit``?
    Iterative, so that it works on any depth."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _decode_payload(payload: bytes) -> Message:
    try:
        value = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ProtocolError(f"invalid JSON payload: {exc}") from None
    if nesting_exceeds(value, MAX_DEPTH):
        raise ProtocolError(f"JSON payload nested deeper than {MAX_DEPTH} levels")
    return validate(value)


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, get whole messages back.

    After a ProtocolError the stream cannot be resynchronised: every later ``feed``
    raises too, and the caller should close the channel.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded (part of an incomplete frame)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Message]:
        if self._error is not None:
            raise ProtocolError(f"stream already broken: {self._error}")
        buffer = self._buffer
        buffer += data
        messages: list[Message] = []
        offset = 0
        try:
            while len(buffer) - offset >= _HEADER.size:
                (size,) = _HEADER.unpack_from(buffer, offset)
                if size > self.max_frame:
                    raise ProtocolError(f"frame of {size} bytes exceeds {self.max_frame}")
                end = offset + _HEADER.size + size
                if len(buffer) < end:
                    break
                messages.append(_decode_payload(bytes(buffer[offset + _HEADER.size : end])))
                offset = end
        except ProtocolError as exc:
            self._error = exc
            buffer.clear()
            raise
        del buffer[:offset]
        return messages


# -- the channel ------------------------------------------------------------------------

#: Called with the channel and each message that is not a reply. May return an awaitable
#: (e.g. be an ``async def``): it then runs as a task, which outlives the channel (a
#: ``stop`` handler must finish even if the arbiter goes away).
OnMessage = Callable[["Channel", Message], "Awaitable[object] | None"]


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
    worker's). ``send`` never blocks; ``request`` sends a command and awaits its reply;
    ``closed`` resolves (with the error, or None) once the connection is gone.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_message: OnMessage,
        max_write_buffer: int = MAX_WRITE_BUFFER,
    ) -> None:
        self.loop = loop
        self.on_message = on_message
        self.max_write_buffer = max_write_buffer
        self.closed: asyncio.Future[Exception | None] = loop.create_future()
        self._transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[object]] = set()

    @classmethod
    async def connect(
        cls,
        sock: socket.socket,
        on_message: OnMessage,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        max_write_buffer: int = MAX_WRITE_BUFFER,
    ) -> Channel:
        """Wrap a connected stream socket; the channel's transport owns it from now on."""
        loop = loop or asyncio.get_running_loop()
        channel = cls(loop, on_message, max_write_buffer)
        await loop.connect_accepted_socket(lambda: _ChannelProtocol(channel), sock)
        return channel

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
        transport.write(frame)
        if transport.get_write_buffer_size() > self.max_write_buffer:
            logger.warning(
                "IPC peer has not read %d bytes; considering it dead and closing the channel",
                transport.get_write_buffer_size(),
            )
            transport.abort()
        return True

    async def request(
        self, name: str, args: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """Send command ``name`` and return the peer's result.

        Raises CommandError if the peer replied with an error, ChannelClosed if the channel
        closed first, and asyncio.TimeoutError after ``timeout`` seconds.
        """
        id = next(self._ids)
        future: asyncio.Future[Any] = self.loop.create_future()
        self._pending[id] = future
        try:
            if not self.send(command(id, name, args)):
                raise ChannelClosed(f"IPC channel closed, cannot send {name!r}")
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(id, None)

    def close(self) -> None:
        """Close after flushing what is queued; idempotent."""
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Close now, dropping what is queued; idempotent."""
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
        for msg in messages:
            if self.is_closing:
                return
            if msg["type"] == "reply":
                self._resolve(msg)
            else:
                self._dispatch(msg)

    def _resolve(self, msg: Message) -> None:
        future = self._pending.get(msg["id"])
        if future is None or future.done():
            logger.debug("IPC reply to unknown or expired request %d", msg["id"])
        elif msg["error"] is not None:
            future.set_exception(CommandError(msg["error"]))
        else:
            future.set_result(msg["result"])

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
