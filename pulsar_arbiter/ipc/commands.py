"""The one command registry: every command any process runs, declared once, by name.

A command is a function ``fn(actor, **kwargs)``, plain or async, where ``actor`` is the
process running it (the arbiter, a worker, or a supervised actor: see :mod:`.actor`). It
is declared with :meth:`Registry.command` (users declare theirs with the public
:func:`pulsar_arbiter.command`, which runs them in workers and actors):

    @COMMANDS.command(runs_in=("worker",), timeout=2.0)
    def ping(actor):
        return "pong"

saying which kinds of process run it (``runs_in``), whether a worker may ask the arbiter
for it (``workers``; never for ``stop``, ``reload`` or ``scale``), how long a caller waits
for it (``timeout``) and a check for each argument (``checks``: a function returning the
value or raising ValueError("expected ...")). The worker's IPC, the arbiter's IPC and the
control socket all dispatch through :meth:`Registry.call`, and ``ctl`` takes its choices
from :meth:`Registry.commands`. An unknown command, a refused caller, an unknown, missing
or bad argument, a handler that raises or overruns its timeout: each is a
:class:`CommandError` with a one-line reason (an error reply), never a crash.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import math
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar, overload

from .errors import CommandError
from .messages import MAX_NAME

__all__ = [
    "ACTOR_KINDS",
    "COMMANDS",
    "DEFAULT_TIMEOUT",
    "MAX_WORKERS",
    "Actor",
    "ActorKind",
    "ArbiterActor",
    "Command",
    "Param",
    "Registry",
    "WorkerActor",
    "within",
    "worker_count",
]

logger = logging.getLogger("pulsar_arbiter.ipc")

ActorKind = Literal["arbiter", "worker", "actor"]
ACTOR_KINDS: tuple[ActorKind, ...] = ("arbiter", "worker", "actor")

#: Seconds a caller waits for a command's answer unless the command says otherwise: far
#: above what a healthy process takes (micro- to milliseconds), short enough that an
#: operator waiting on ``ctl`` is told soon.
DEFAULT_TIMEOUT = 5.0

#: The most workers an arbiter runs: the bound of ``--workers`` and of ``scale``, so that
#: no request (a typo, a fuzzed number) makes the arbiter fork forever.
MAX_WORKERS = 4096

Handler = Callable[..., Any]
#: Checks (and converts) one argument: returns the value, or raises ValueError("expected ...").
Check = Callable[[Any], Any]
F = TypeVar("F", bound=Handler)
T = TypeVar("T")

if sys.version_info >= (3, 11):

    async def within(awaitable: Awaitable[T], timeout: float) -> T:
        """``await awaitable``, or TimeoutError after ``timeout`` seconds (cancelling it).
        It runs in the caller's task: no task per call, as ``asyncio.wait_for`` makes."""
        async with asyncio.timeout(timeout):
            return await awaitable

else:  # pragma: no cover - Python 3.10

    async def within(awaitable: Awaitable[T], timeout: float) -> T:
        """``await awaitable``, or TimeoutError after ``timeout`` seconds (cancelling it)."""
        return await asyncio.wait_for(awaitable, timeout)


@dataclass(frozen=True)
class Param:
    """One keyword argument of a command, read from its handler's signature."""

    name: str
    required: bool
    check: Check | None = None


@dataclass(frozen=True)
class Command:
    name: str
    handler: Handler
    runs_in: frozenset[ActorKind]
    #: May a worker ask the arbiter to run it?
    workers: bool
    #: Seconds a caller waits for the answer (and an async handler may run).
    timeout: float
    params: tuple[Param, ...]
    #: The handler takes ``**kwargs``: any keyword is accepted.
    any_keyword: bool
    #: The control socket answers the result itself instead of ``{"ok", "result"}``.
    bare_answer: bool
    help: str

    def bind(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments for the handler, checked; CommandError if they do not fit."""
        known = {param.name: param for param in self.params}
        kwargs: dict[str, Any] = {}
        for key, value in args.items():
            param = known.get(key)
            if param is None and not self.any_keyword:
                raise CommandError(f"{self.name}: unknown argument {_short(key)}")
            if param is not None and param.check is not None:
                try:
                    value = param.check(value)
                except ValueError as exc:
                    raise CommandError(f"{self.name}: {key}: {exc}") from None
            kwargs[key] = value
        for param in self.params:
            if param.required and param.name not in kwargs:
                raise CommandError(f"{self.name}: missing argument {param.name!r}")
        return kwargs


def _params(handler: Handler, checks: Mapping[str, Check]) -> tuple[tuple[Param, ...], bool]:
    signature = inspect.signature(handler)
    found = list(signature.parameters.values())
    if not found or found[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise TypeError(f"command {handler!r} must take the actor as its first argument")
    params: list[Param] = []
    any_keyword = False
    for param in found[1:]:
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            any_keyword = True
        elif param.kind in (
            inspect.Parameter.KEYWORD_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            required = param.default is inspect.Parameter.empty
            params.append(Param(param.name, required, checks.get(param.name)))
        else:
            raise TypeError(f"command {handler!r}: argument {param.name!r} must be a keyword")
    unknown = set(checks) - {param.name for param in params}
    if unknown:
        raise TypeError(f"command {handler!r}: checks for unknown arguments {sorted(unknown)}")
    return tuple(params), any_keyword


class Registry:
    """Commands by (kind of process, name). ``COMMANDS`` is the one instance in use."""

    def __init__(self) -> None:
        self._commands: dict[tuple[ActorKind, str], Command] = {}

    def add(self, command: Command) -> Command:
        """Register ``command``; ValueError if a process kind already has that name."""
        if not isinstance(command.name, str) or not 0 < len(command.name) <= MAX_NAME:
            raise ValueError(f"command name must be 1..{MAX_NAME} characters: {command.name!r}")
        if not command.runs_in or not command.runs_in <= set(ACTOR_KINDS):
            raise ValueError(f"command {command.name!r}: runs_in must name {ACTOR_KINDS}")
        if not (math.isfinite(command.timeout) and command.timeout > 0):
            raise ValueError(f"command {command.name!r}: timeout must be a positive number")
        for kind in command.runs_in:
            if (kind, command.name) in self._commands:
                raise ValueError(f"command {command.name!r} is already declared for {kind}")
        for kind in command.runs_in:
            self._commands[kind, command.name] = command
        return command

    @overload
    def command(self, fn: F, /) -> F: ...

    @overload
    def command(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        runs_in: Iterable[ActorKind] = ("worker",),
        workers: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        checks: Mapping[str, Check] | None = None,
        bare_answer: bool = False,
    ) -> Callable[[F], F]: ...

    def command(
        self,
        fn: F | None = None,
        /,
        *,
        name: str | None = None,
        runs_in: Iterable[ActorKind] = ("worker",),
        workers: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        checks: Mapping[str, Check] | None = None,
        bare_answer: bool = False,
    ) -> F | Callable[[F], F]:
        """Declare ``fn(actor, **kwargs)`` as a command; usable as ``@command`` or
        ``@command(name=..., ...)``. Returns ``fn`` unchanged."""

        def declare(handler: F) -> F:
            params, any_keyword = _params(handler, checks or {})
            doc = inspect.getdoc(handler) or ""
            self.add(
                Command(
                    name=name or handler.__name__,
                    handler=handler,
                    runs_in=frozenset(runs_in),
                    workers=workers,
                    timeout=float(timeout),
                    params=params,
                    any_keyword=any_keyword,
                    bare_answer=bare_answer,
                    help=doc.splitlines()[0] if doc else "",
                )
            )
            return handler

        return declare(fn) if fn is not None else declare

    def get(self, kind: ActorKind, name: object) -> Command | None:
        return self._commands.get((kind, name)) if isinstance(name, str) else None

    def commands(self, kind: ActorKind) -> list[Command]:
        """The commands a kind of process runs, by name."""
        return sorted(
            (c for (k, _), c in self._commands.items() if k == kind), key=lambda c: c.name
        )

    def lookup(self, kind: ActorKind, name: object, *, from_worker: bool = False) -> Command:
        """The command ``name`` of ``kind``; CommandError if unknown or refused."""
        command = self.get(kind, name)
        if command is None:
            raise CommandError(f"unknown command {_short(name)}")
        if from_worker and not command.workers:
            raise CommandError(f"command {command.name!r} cannot be called by a worker")
        return command

    def allow_workers(self, *names: str) -> None:
        """Let workers (and actors) ask the arbiter for its commands ``names`` (``reload``,
        ``scale``, ``stop``: never allowed unless the app says so here, in a module the
        arbiter imports: the app with ``--preload``)."""
        for name in names:
            command = self.lookup("arbiter", name)
            self._commands["arbiter", name] = dataclasses.replace(command, workers=True)

    def start(
        self,
        actor: Any,
        kind: ActorKind,
        name: object,
        args: Mapping[str, Any],
        *,
        from_worker: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """Run command ``name`` in ``actor`` (a process of ``kind``): the result of a plain
        handler at once, an awaitable of it for an async one (so that a plain command
        costs no task). Failures as :meth:`call`, raised here or by the awaitable."""
        command = self.lookup(kind, name, from_worker=from_worker)
        kwargs = command.bind(args)
        try:
            result = command.handler(actor, **kwargs)
        except CommandError:
            raise
        except Exception as exc:
            raise _failed(command, exc) from None
        if inspect.isawaitable(result):
            limit = command.timeout if timeout is None else min(timeout, command.timeout)
            return _finish(command, result, limit)
        return result

    async def call(
        self,
        actor: Any,
        kind: ActorKind,
        name: object,
        args: Mapping[str, Any],
        *,
        from_worker: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """Run command ``name`` in ``actor`` (a process of ``kind``) and return its result.

        Raises CommandError (one line) for anything that goes wrong; a handler's own
        exception is logged with its traceback and reported as ``TYPE: message`` (and
        its type in ``CommandError.type``). An async handler runs at most the command's
        timeout, or ``timeout`` when shorter (the caller's).
        """
        result = self.start(actor, kind, name, args, from_worker=from_worker, timeout=timeout)
        if inspect.isawaitable(result):
            result = await result
        return result


def _failed(command: Command, exc: Exception) -> CommandError:
    """The error reply for a handler that raised ``exc`` (logged with its traceback)."""
    logger.error("command %r failed", command.name, exc_info=exc)
    return CommandError(f"{command.name}: {type(exc).__name__}: {exc}", type=type(exc).__name__)


async def _finish(command: Command, running: Awaitable[Any], limit: float) -> Any:
    """The result of an async handler, within ``limit`` seconds."""
    try:
        return await within(running, limit)
    except CommandError:
        raise
    except asyncio.TimeoutError:
        raise CommandError(
            f"{command.name}: no answer within {limit:g}s", type="TimeoutError"
        ) from None
    except Exception as exc:
        raise _failed(command, exc) from None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def worker_count(value: object) -> int:
    """A number of workers, 1..MAX_WORKERS."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_WORKERS:
        return value
    raise ValueError(
        f"expected an integer number of workers in 1..{MAX_WORKERS}, got {_short(value)}"
    )


# -- the built-in commands ---------------------------------------------------------------------


class Actor(Protocol):
    """A process as its commands see it (:func:`pulsar_arbiter.get_actor`): ``name``
    (``"arbiter"``, ``"worker:3"``, ``"actor:scheduler"``), ``kind``, ``id`` (the arbiter's
    is 0), ``pid``, and :meth:`info`, its identity and stats."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> ActorKind: ...
    @property
    def id(self) -> int: ...
    @property
    def pid(self) -> int: ...
    def info(self) -> dict[str, Any]: ...


class ArbiterActor(Protocol):
    """What the arbiter's built-in commands drive."""

    async def stats(self) -> dict[str, Any]: ...
    def reload(self) -> str: ...
    def scale(self, workers: int) -> int: ...
    def stop(self, graceful: bool = True) -> None: ...
    def live_workers(self) -> list[dict[str, Any]]: ...
    async def route(
        self, target: str, name: str, args: dict[str, Any], timeout: float
    ) -> dict[str, dict[str, Any]]: ...


class WorkerActor(Protocol):
    """What a worker's built-in commands drive."""

    def stats(self) -> dict[str, Any]: ...
    def reopen_logs(self) -> None: ...


COMMANDS = Registry()

_EVERYWHERE: tuple[ActorKind, ...] = ACTOR_KINDS


@COMMANDS.command(runs_in=_EVERYWHERE, workers=True)
def ping(actor: object) -> str:
    """Answer "pong"."""
    return "pong"


@COMMANDS.command(runs_in=_EVERYWHERE, workers=True)
def echo(actor: object, *, value: Any) -> Any:
    """Answer VALUE."""
    return value


@COMMANDS.command(runs_in=_EVERYWHERE, workers=True)
def info(actor: Actor) -> dict[str, Any]:
    """This process's identity and stats."""
    return actor.info()


@COMMANDS.command(runs_in=("arbiter",), workers=True)
def workers(actor: ArbiterActor) -> list[dict[str, Any]]:
    """The live workers: id, pid, generation, phase."""
    return actor.live_workers()


@COMMANDS.command(name="stats", runs_in=("arbiter",), bare_answer=True, workers=True)
async def arbiter_stats(actor: ArbiterActor) -> dict[str, Any]:
    """The arbiter's, every worker's and the summed stats."""
    return await actor.stats()


@COMMANDS.command(runs_in=("arbiter",))
def reload(actor: ArbiterActor) -> str:
    """Reload the settings and roll every worker, one at a time (like HUP)."""
    return actor.reload()


@COMMANDS.command(runs_in=("arbiter",), checks={"workers": worker_count})
def scale(actor: ArbiterActor, *, workers: int) -> int:
    """Run this many workers."""
    return actor.scale(workers)


@COMMANDS.command(runs_in=("arbiter",))
def stop(actor: ArbiterActor) -> str:
    """Stop gracefully (like TERM)."""
    actor.stop(True)
    return "stopping"


@COMMANDS.command(name="stats", runs_in=("worker", "actor"))
def worker_stats(actor: WorkerActor) -> dict[str, Any]:
    """This process's stats."""
    return actor.stats()


@COMMANDS.command(runs_in=("worker", "actor"))
def reopen_logs(actor: WorkerActor) -> bool:
    """Reopen the log files (sent as a notification on USR1)."""
    actor.reopen_logs()
    return True
