"""The one table of IPC messages: type, direction, fields and whether a reply is due.

=========  ===============  ============  ===============================================
type       direction        kind          fields
=========  ===============  ============  ===============================================
ready      worker->arbiter  notification  ``pid`` (int): the worker serves
heartbeat  worker->arbiter  notification  ``stats`` (object): sent from the worker's loop
retiring   worker->arbiter  notification  ``reason`` (str): e.g. ``"max_requests"``
draining   worker->arbiter  notification  (none): the worker stopped accepting
boot_error worker->arbiter  notification  ``error`` (str): why the worker cannot serve
stop       arbiter->worker  notification  ``graceful`` (bool), ``timeout`` (number >= 0 or
                                          null), ``handoff`` (bool)
command    both             request       ``id`` (int >= 1), ``name`` (str), ``args``
                                          (object): run a registered command, answer it;
                                          optional ``timeout``: the caller gives up then
route      worker->arbiter  request       ``id``, ``target`` (str), ``name``, ``args``,
                                          ``timeout`` (number > 0): run a command in
                                          ``target`` (``send``); answered with an object
                                          of ``{"result"}`` or ``{"error", "type"}`` per
                                          member (see :mod:`.actor`)
notify     both             notification  ``name`` (str), ``args`` (object): run a
                                          registered command, answer nothing
reply      both             reply         ``id`` (int >= 1), ``result`` (any), ``error``
                                          (str or null): the answer to one request;
                                          optional ``error_type``: what the command raised
=========  ===============  ============  ===============================================

A request gets exactly one reply (the channel sends it, whatever the handler does); a
notification never gets one. Extra fields are allowed and ignored. Everything here is
pure: :func:`validate` raises :class:`ProtocolError` for a message that breaks the table.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ProtocolError

__all__ = [
    "MAX_NAME",
    "MESSAGES",
    "MESSAGE_TYPES",
    "Direction",
    "Field",
    "Kind",
    "Message",
    "MessageType",
    "boot_error",
    "command",
    "draining",
    "heartbeat",
    "notify",
    "ready",
    "reply",
    "retiring",
    "route",
    "stop",
    "validate",
]

#: One decoded message: a JSON object with at least a string "type".
Message = dict[str, Any]

#: Longest command name: names are identifiers; a longer one is not ours to look up.
MAX_NAME = 100


class Direction(enum.Enum):
    """Who may send a message type."""

    TO_WORKER = "arbiter->worker"
    TO_ARBITER = "worker->arbiter"
    BOTH = "both"

    def allows(self, receiving: Direction) -> bool:
        """May a message of this direction arrive at the side that receives ``receiving``?"""
        return self is Direction.BOTH or receiving is Direction.BOTH or self is receiving


class Kind(enum.Enum):
    """Whether a message type expects an answer."""

    REQUEST = "request"  # answered by exactly one reply with the same id
    REPLY = "reply"  # the answer to one request
    NOTIFICATION = "notification"  # never answered


@dataclass(frozen=True)
class Field:
    """A required field and the check of its value (``expected`` names it in errors)."""

    name: str
    expected: str
    check: Callable[[object], bool]


@dataclass(frozen=True)
class MessageType:
    type: str
    direction: Direction
    kind: Kind
    fields: tuple[Field, ...]
    doc: str


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: object) -> bool:
    return _is_int(value) and value >= 1  # type: ignore[operator]


def _is_timeout(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and value >= 0


def _is_name(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


def _is_object(value: object) -> bool:
    return isinstance(value, dict)


def _any(value: object) -> bool:
    return True


def _is_positive(value: object) -> bool:
    return _is_timeout(value) and value is not None and value > 0  # type: ignore[operator]


_ID = Field("id", "an integer >= 1", _is_id)
_NAME = Field("name", f"a non-empty string of at most {MAX_NAME} characters", _is_name)
_ARGS = Field("args", "an object", _is_object)
_TO_ARBITER, _TO_WORKER, _BOTH = Direction.TO_ARBITER, Direction.TO_WORKER, Direction.BOTH
_NOTE, _REQUEST = Kind.NOTIFICATION, Kind.REQUEST

#: The table: every message type, in the order of the module docstring.
MESSAGES: Mapping[str, MessageType] = {
    m.type: m
    for m in (
        MessageType("ready", _TO_ARBITER, _NOTE, (Field("pid", "an integer", _is_int),), "serving"),
        MessageType(
            "heartbeat",
            _TO_ARBITER,
            _NOTE,
            (Field("stats", "an object", _is_object),),
            "alive, with its stats",
        ),
        MessageType(
            "retiring",
            _TO_ARBITER,
            _NOTE,
            (Field("reason", "a string", _is_str),),
            "wants a replacement",
        ),
        MessageType("draining", _TO_ARBITER, _NOTE, (), "stopped accepting"),
        MessageType(
            "boot_error",
            _TO_ARBITER,
            _NOTE,
            (Field("error", "a string", _is_str),),
            "cannot serve, and why",
        ),
        MessageType(
            "stop",
            _TO_WORKER,
            _NOTE,
            (
                Field("graceful", "a boolean", _is_bool),
                Field("timeout", "a number >= 0 or null", _is_timeout),
                Field("handoff", "a boolean", _is_bool),
            ),
            "stop serving",
        ),
        MessageType("command", _BOTH, _REQUEST, (_ID, _NAME, _ARGS), "run a command, answer"),
        MessageType(
            "route",
            _TO_ARBITER,
            _REQUEST,
            (
                _ID,
                Field("target", "a string", _is_str),
                _NAME,
                _ARGS,
                Field("timeout", "a number > 0", _is_positive),
            ),
            "run a command in a target, answer per member",
        ),
        MessageType("notify", _BOTH, _NOTE, (_NAME, _ARGS), "run a command, answer nothing"),
        MessageType(
            "reply",
            _BOTH,
            Kind.REPLY,
            (
                _ID,
                Field("result", "any value", _any),
                Field("error", "a string or null", lambda v: v is None or isinstance(v, str)),
            ),
            "the answer to one command",
        ),
    )
}

MESSAGE_TYPES = frozenset(MESSAGES)


def validate(msg: object, receiving: Direction = Direction.BOTH) -> Message:
    """Return ``msg`` if it is a well-formed message that may arrive at the side that
    receives ``receiving`` messages, else raise ProtocolError."""
    if not isinstance(msg, dict):
        raise ProtocolError(f"expected a JSON object, got {type(msg).__name__}")
    kind = msg.get("type")
    spec = MESSAGES.get(kind) if isinstance(kind, str) else None
    if spec is None:
        raise ProtocolError(f"unknown message type {kind!r:.80}")
    if not spec.direction.allows(receiving):
        raise ProtocolError(f"{kind}: not a message this side receives ({spec.direction.value})")
    for field in spec.fields:
        if field.name not in msg:
            raise ProtocolError(f"{kind}: missing field {field.name!r}")
        value = msg[field.name]
        if not field.check(value):
            raise ProtocolError(
                f"{kind}: {field.name!r} must be {field.expected}, got {value!r:.80}"
            )
    return msg


# -- constructors, one per type -----------------------------------------------------------


def ready(pid: int) -> Message:
    return {"type": "ready", "pid": pid}


def heartbeat(stats: Mapping[str, Any]) -> Message:
    return {"type": "heartbeat", "stats": dict(stats)}


def retiring(reason: str) -> Message:
    return {"type": "retiring", "reason": reason}


def draining() -> Message:
    """A worker stopped accepting (after a stop): the arbiter may close the listeners."""
    return {"type": "draining"}


def boot_error(error: str) -> Message:
    """A worker cannot serve (the arbiter shows ``error`` when it gives up)."""
    return {"type": "boot_error", "error": error}


def stop(graceful: bool = True, timeout: float | None = None, handoff: bool = False) -> Message:
    """Stop serving; ``handoff``: idle connections may go to the workers still serving."""
    return {"type": "stop", "graceful": graceful, "timeout": timeout, "handoff": handoff}


def command(
    id: int, name: str, args: Mapping[str, Any] | None = None, timeout: float | None = None
) -> Message:
    msg = {"type": "command", "id": id, "name": name, "args": dict(args or {})}
    if timeout is not None:
        msg["timeout"] = timeout
    return msg


def route(id: int, target: str, name: str, args: Mapping[str, Any], timeout: float) -> Message:
    """Ask the arbiter to run command ``name`` in ``target`` (an actor's ``send``)."""
    return {
        "type": "route",
        "id": id,
        "target": target,
        "name": name,
        "args": dict(args),
        "timeout": timeout,
    }


def notify(name: str, args: Mapping[str, Any] | None = None) -> Message:
    return {"type": "notify", "name": name, "args": dict(args or {})}


def reply(
    id: int, result: Any = None, error: str | None = None, error_type: str | None = None
) -> Message:
    msg = {"type": "reply", "id": id, "result": result, "error": error}
    if error_type is not None:
        msg["error_type"] = error_type
    return msg
