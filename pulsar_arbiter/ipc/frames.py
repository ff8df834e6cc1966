"""The wire format: a 4-byte big-endian length, then that many bytes of compact UTF-8 JSON,
one message of :mod:`.messages` per frame.

Pure: :func:`encode` and :class:`FrameDecoder` never touch a socket. Bad bytes from the
peer raise :class:`ProtocolError`; a message of ours that cannot be sent is a ValueError.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ProtocolError
from .messages import Direction, Message, validate

__all__ = [
    "HEADER",
    "MAX_DEPTH",
    "MAX_FRAME",
    "FrameDecoder",
    "encode",
    "may_nest_deeper",
    "nesting_exceeds",
]

#: Largest frame payload accepted or sent. Messages are control messages and per-worker
#: stats (well under 4 KiB); 64 KiB leaves room for command results such as a stack dump
#: while bounding what a confused or compromised peer can make us buffer per frame.
MAX_FRAME = 64 * 1024

#: Deepest nesting of arrays and objects accepted in a message. Ours are at most a few
#: levels deep; the bound keeps whatever we accept re-encodable (the arbiter passes worker
#: stats on to ``ctl stats``) far below Python's recursion limit, whatever the call depth.
MAX_DEPTH = 32

#: The length prefix of every frame.
HEADER = struct.Struct(">I")


#: Compact JSON, built once (``json.dumps`` with options builds an encoder per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode(msg: Mapping[str, Any]) -> bytes:
    """One frame for ``msg``. Raises ValueError for a message that is ours to fix:
    malformed, not JSON-serialisable, nested deeper than MAX_DEPTH or larger than
    MAX_FRAME: what the peer's decoder would refuse is never sent."""
    try:
        payload = _ENCODER.encode(validate(dict(msg))).encode("utf-8")
    except (ProtocolError, TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"cannot encode IPC message: {exc}") from None
    if may_nest_deeper(payload, MAX_DEPTH) and nesting_exceeds(msg, MAX_DEPTH):
        raise ValueError(f"cannot encode IPC message: nested deeper than {MAX_DEPTH} levels")
    if len(payload) > MAX_FRAME:
        raise ValueError(f"IPC message too large: {len(payload)} bytes (max {MAX_FRAME})")
    return HEADER.pack(len(payload)) + payload


def may_nest_deeper(payload: bytes, limit: int) -> bool:
    """Could the JSON text ``payload`` nest arrays and objects deeper than ``limit``?
    False is certain: every level opens with a ``[`` or ``{`` byte, so a payload with at
    most ``limit`` of them (counting those inside strings too) cannot. Two C-speed scans,
    where :func:`nesting_exceeds` walks every value in Python."""
    return payload.count(b"{") + payload.count(b"[") > limit


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


#: Strict JSON (no NaN or Infinity), built once (``json.loads`` with options builds a
#: decoder per call).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _decode_payload(payload: bytes, receiving: Direction) -> Message:
    try:
        value = _DECODER.decode(payload.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ProtocolError(f"invalid JSON payload: {exc}") from None
    if may_nest_deeper(payload, MAX_DEPTH) and nesting_exceeds(value, MAX_DEPTH):
        raise ProtocolError(f"JSON payload nested deeper than {MAX_DEPTH} levels")
    return validate(value, receiving)


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, get whole messages back.

    ``receiving`` says which side decodes (a worker receives ``Direction.TO_WORKER``
    messages): a message the peer may not send is a ProtocolError. After a ProtocolError
    the stream cannot be resynchronised: every later ``feed`` raises too, and the caller
    should close the channel.
    """

    def __init__(self, max_frame: int = MAX_FRAME, receiving: Direction = Direction.BOTH) -> None:
        self.max_frame = max_frame
        self.receiving = receiving
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
            while len(buffer) - offset >= HEADER.size:
                (size,) = HEADER.unpack_from(buffer, offset)
                if size > self.max_frame:
                    raise ProtocolError(f"frame of {size} bytes exceeds {self.max_frame}")
                end = offset + HEADER.size + size
                if len(buffer) < end:
                    break
                payload = bytes(buffer[offset + HEADER.size : end])
                messages.append(_decode_payload(payload, self.receiving))
                offset = end
        except ProtocolError as exc:
            self._error = exc
            buffer.clear()
            raise
        del buffer[:offset]
        return messages
