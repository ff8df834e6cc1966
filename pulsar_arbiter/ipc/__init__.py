"""The arbiter <-> worker channel: one socketpair per worker, small framed JSON messages.

Four modules, each over the one before:

* :mod:`.messages`: the one table of message types (direction, fields, and whether a
  reply is due: notifications never get one), their constructors and :func:`validate`;
* :mod:`.frames`: the wire format, pure (:func:`encode`, :class:`FrameDecoder`);
* :mod:`.channel`: :class:`Channel`, the asyncio I/O, which answers every request once;
* :mod:`.commands`: the one command registry (:data:`COMMANDS`) that the worker, the
  arbiter and the control socket dispatch through.
"""

from __future__ import annotations

from .channel import MAX_RUNNING_COMMANDS, MAX_WRITE_BUFFER, Channel, OnCommand, OnMessage
from .commands import (
    COMMANDS,
    DEFAULT_TIMEOUT,
    MAX_WORKERS,
    ActorKind,
    Command,
    Param,
    Registry,
)
from .errors import ChannelClosed, CommandError, ProtocolError
from .frames import HEADER, MAX_DEPTH, MAX_FRAME, FrameDecoder, encode, nesting_exceeds
from .messages import (
    MESSAGE_TYPES,
    MESSAGES,
    Direction,
    Kind,
    Message,
    MessageType,
    boot_error,
    command,
    draining,
    heartbeat,
    notify,
    ready,
    reply,
    retiring,
    route,
    stop,
    validate,
)

__all__ = [
    "COMMANDS",
    "DEFAULT_TIMEOUT",
    "HEADER",
    "MAX_DEPTH",
    "MAX_FRAME",
    "MAX_RUNNING_COMMANDS",
    "MAX_WORKERS",
    "MAX_WRITE_BUFFER",
    "MESSAGES",
    "MESSAGE_TYPES",
    "ActorKind",
    "Channel",
    "ChannelClosed",
    "Command",
    "CommandError",
    "Direction",
    "FrameDecoder",
    "Kind",
    "Message",
    "MessageType",
    "OnCommand",
    "OnMessage",
    "Param",
    "ProtocolError",
    "Registry",
    "boot_error",
    "command",
    "draining",
    "encode",
    "heartbeat",
    "nesting_exceeds",
    "notify",
    "ready",
    "reply",
    "retiring",
    "route",
    "stop",
    "validate",
]
