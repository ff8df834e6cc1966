"""The actor-facing API: ``@command``, ``send()`` and ``get_actor()``.

Every process of a server is an actor: the arbiter, each worker, each supervised actor
(``--actor NAME=MODULE:CALLABLE``). The runtime registers the process's actor at start
(:func:`set_actor`) with its *router*, the function that carries a call to its target:
in a worker or an actor, a ``route`` request to the arbiter over its channel; in the
arbiter, the arbiter itself. Workers never talk to each other directly: the arbiter routes.

A call names a target (:data:`TARGET`): ``"arbiter"``, ``"worker:N"``, ``"workers"``
(every live worker), ``"actor:NAME"`` or ``"actors"``. The router answers with one entry
per member that was live when the call was made, ``{"result": ...}`` or
``{"error": ..., "type": ...}`` (:func:`member_answer`); :func:`send` turns that into the
result (or a :class:`CommandError`) of a single target, or a dict of them for a group.

Everything here is pure or runs on the caller's loop; nothing imports the runtime.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, overload

from .commands import COMMANDS, DEFAULT_TIMEOUT, Actor, ActorKind, Check, F, within
from .errors import ChannelClosed, CommandError
from .frames import MAX_FRAME
from .messages import MAX_NAME

__all__ = [
    "GROUPS",
    "TARGET",
    "Actor",
    "Router",
    "answer_here",
    "command",
    "get_actor",
    "member_answer",
    "members",
    "parse_target",
    "send",
    "set_actor",
]

#: The targets of a call: one process, or a group of them.
TARGET = re.compile(r"arbiter|workers|actors|worker:[1-9][0-9]{0,9}|actor:[A-Za-z0-9][\w.-]*")
#: Targets that name a group: the answer is one entry per member.
GROUPS = frozenset({"workers", "actors"})

#: Room in a frame for the message around a call's arguments (type, id, target, name).
_ENVELOPE = 512

#: Carries a call: ``router(target, name, args, timeout)`` returns one answer per member
#: (see :func:`member_answer`), or raises CommandError for a target with no live member.
Router = Callable[[str, str, dict[str, Any], float], Awaitable[dict[str, dict[str, Any]]]]

_current: tuple[Actor, Router] | None = None


def set_actor(actor: Actor | None, router: Router | None = None) -> None:
    """The runtime's: register this process's actor and its router (None: forget them)."""
    global _current
    _current = None if actor is None or router is None else (actor, router)


def get_actor() -> Actor:
    """This process's actor: ``name``, ``kind``, ``id``, ``pid`` and ``info()``.

    Raises RuntimeError outside a process started by the runtime (a plain script)."""
    if _current is None:
        raise RuntimeError("no actor: this process was not started by pulsar_arbiter")
    return _current[0]


@overload
def command(fn: F, /) -> F: ...


@overload
def command(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    runs_in: Iterable[ActorKind] = ("worker", "actor"),
    workers: bool = False,
    checks: Mapping[str, Check] | None = None,
) -> Callable[[F], F]: ...


def command(
    fn: F | None = None,
    /,
    *,
    name: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    runs_in: Iterable[ActorKind] = ("worker", "actor"),
    workers: bool = False,
    checks: Mapping[str, Check] | None = None,
) -> F | Callable[[F], F]:
    """Declare ``fn(actor, **kwargs)`` (plain or async) as a command of the processes that
    import its module: the app's module and what it imports for the workers, an actor's
    module for that actor. ``@command`` or ``@command(name=..., timeout=...)``.

    ``timeout``: how long a caller waits by default (and an async ``fn`` may run);
    ``runs_in``: the kinds of process that run it (``"arbiter"`` too, for a module the
    arbiter imports with ``--preload``); ``workers``: an arbiter's command that workers
    may call; ``checks``: a converter per argument, raising ValueError("expected ...").
    """
    declare = COMMANDS.command(
        name=name, runs_in=runs_in, workers=workers, timeout=timeout, checks=checks
    )
    return declare(fn) if fn is not None else declare


def parse_target(target: object) -> tuple[ActorKind, str | None]:
    """The kind of process ``target`` names and its member name, None for a group
    (``"worker:3"`` -> ``("worker", "3")``, ``"workers"`` -> ``("worker", None)``).
    Raises CommandError for anything else."""
    if not isinstance(target, str) or not TARGET.fullmatch(target) or len(target) > MAX_NAME:
        raise CommandError(
            f"unknown target {target!r:.80}: expected arbiter, worker:N, workers, "
            "actor:NAME or actors"
        )
    if target == "arbiter":
        return "arbiter", "arbiter"
    if target in GROUPS:
        return ("worker" if target == "workers" else "actor"), None
    kind, _, member = target.partition(":")
    return ("worker" if kind == "worker" else "actor"), member


def members(target: str, workers: Iterable[int], actors: Iterable[str]) -> list[str]:
    """The members a call to ``target`` reaches, given the live workers' ids and actors'
    names; CommandError for a single target that is not live."""
    kind, member = parse_target(target)
    if kind == "arbiter":
        return ["arbiter"]
    if kind == "worker":
        live = [f"worker:{w}" for w in sorted(workers)]
    else:
        live = [f"actor:{a}" for a in sorted(actors)]
    if member is None:
        return live
    if target not in live:
        raise CommandError(f"{target}: no such live {kind}")
    return [target]


async def member_answer(call: Any, name: str, timeout: float) -> dict[str, Any]:
    """One member's entry in a call's answer: ``{"result": ...}``, or ``{"error": ...,
    "type": ...}`` when it failed, timed out (TimeoutError) or died meanwhile
    (ChannelClosed), at once in that case, not after the timeout. ``call``: an awaitable
    of the result, or the result itself (a plain command's, from ``Registry.start``)."""
    if not inspect.isawaitable(call):
        return {"result": call}
    try:
        return {"result": await within(call, timeout)}
    except CommandError as exc:
        return {"error": str(exc), "type": exc.type}
    except asyncio.TimeoutError:
        return {"error": f"{name}: no answer within {timeout:g}s", "type": "TimeoutError"}
    except ChannelClosed:
        return {"error": f"{name}: the process exited before answering", "type": "ChannelClosed"}
    except ValueError as exc:  # the message or the result could not be sent
        return {"error": f"{name}: {exc}", "type": "ValueError"}


def answer_here(
    member: str, start: Callable[[], Any], name: str, timeout: float
) -> dict[str, dict[str, Any]] | Awaitable[dict[str, dict[str, Any]]]:
    """A routed call's answers when its one member is this process: ``start()`` runs the
    command (``Registry.start``). A plain command's answer comes at once, so the channel
    replies without a task; an async one's is awaitable, bounded by ``timeout``."""
    try:
        call = start()
    except CommandError as exc:
        return {member: {"error": str(exc), "type": exc.type}}
    if not inspect.isawaitable(call):
        return {member: {"result": call}}
    return _answers_of(member, member_answer(call, name, timeout))


async def _answers_of(member: str, answer: Awaitable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {member: await answer}


def _checked_args(name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` if each is JSON and all fit in a frame; TypeError naming the argument."""
    size = 0
    for key, value in kwargs.items():
        try:
            size += len(json.dumps(value, allow_nan=False, ensure_ascii=False))
        except (TypeError, ValueError, RecursionError) as exc:
            raise TypeError(
                f"send({name!r}): argument {key!r} is not JSON-serialisable: {exc}"
            ) from None
    if size + _ENVELOPE > MAX_FRAME:
        raise ValueError(
            f"send({name!r}): arguments of {size} bytes of JSON exceed the message limit "
            f"({MAX_FRAME - _ENVELOPE})"
        )
    return dict(kwargs)


def _default_timeout(kind: ActorKind, name: str) -> float:
    """The command's own timeout when this process knows it, else DEFAULT_TIMEOUT."""
    known = COMMANDS.get(kind, name)
    return known.timeout if known is not None else DEFAULT_TIMEOUT


async def send(target: str, name: str, /, *, timeout: float | None = None, **kwargs: Any) -> Any:
    """Run command ``name`` with ``kwargs`` in ``target`` and return its result.

    ``target``: ``"arbiter"``, ``"worker:N"``, ``"workers"``, ``"actor:NAME"`` or
    ``"actors"``. A single target returns the result or raises :class:`CommandError`
    (``.type`` names the remote exception); a group returns ``{member: result or
    CommandError}`` for every member live when the call was made. ``timeout``: seconds
    (default: the command's, else 5). An argument that is not JSON raises TypeError here.
    """
    if _current is None:
        raise RuntimeError("send() needs an actor: call it inside a pulsar_arbiter process")
    kind, member = parse_target(target)
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
        raise CommandError(f"bad command name {name!r:.80}")
    args = _checked_args(name, kwargs)
    wait = _default_timeout(kind, name) if timeout is None else float(timeout)
    if not wait > 0:
        raise ValueError(f"send({name!r}): timeout must be > 0, got {timeout!r}")
    _, router = _current
    try:
        answers = await router(target, name, args, wait)
    except asyncio.TimeoutError:
        raise CommandError(f"{name}: no answer within {wait:g}s", type="TimeoutError") from None
    except ChannelClosed:
        raise CommandError(f"{name}: the arbiter is gone", type="ChannelClosed") from None
    results = {m: _result(m, a) for m, a in answers.items()}
    if member is None:
        return results
    result = results.get(target)
    if result is None:
        raise CommandError(f"{target}: no answer", target=target)
    if isinstance(result, CommandError):
        raise result
    return result


def _result(member: str, answer: object) -> Any:
    if isinstance(answer, dict) and "error" in answer:
        kind = answer.get("type")
        return CommandError(
            str(answer["error"]), type=kind if isinstance(kind, str) else None, target=member
        )
    if isinstance(answer, dict) and "result" in answer:
        return answer["result"]
    return CommandError(f"{member}: malformed answer {answer!r:.80}", target=member)
