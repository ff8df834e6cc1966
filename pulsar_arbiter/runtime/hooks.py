"""Server hooks with gunicorn's names: ``--hooks MODULE`` (``hooks = "MODULE"`` in TOML).

The module's functions named below, when present, run at gunicorn's points. Where the
caller has an event loop running (the arbiter's, the worker's), a hook may be an
``async def``; ``post_fork`` also runs in the worker's loop, before the servers start.

================== ================= ====================================================
hook               runs in           when
================== ================= ====================================================
on_starting        arbiter           before the sockets are bound (raise: exit 2)
when_ready         arbiter           the sockets are bound, before the first fork
pre_fork           arbiter           before each worker is forked
post_fork          worker            in the child, first thing (raise: a failed boot)
post_worker_init   worker            the app is loaded and the servers serve
worker_int         worker            told to stop fast (the arbiter's INT or QUIT)
worker_abort       worker            ABRT on --timeout (signal handler; then it exits 1)
pre_exec           arbiter           before USR2 execs the new arbiter
on_reload          arbiter           on HUP (or --reload), before the workers roll
worker_exit        worker            exiting, after its servers closed (not on KILL)
child_exit         arbiter           a worker was reaped
on_exit            arbiter           the arbiter is exiting
================== ================= ====================================================

A hook that raises in the arbiter while it starts (``on_starting``, ``when_ready``) stops
the start with its error (exit 2); one that raises later is logged and the arbiter carries
on. ``worker_exit`` runs in the worker (gunicorn's place too: ``worker_exit(arbiter,
worker)`` where ``arbiter`` is None here, the worker holds no arbiter object).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["HOOK_NAMES", "HookError", "Hooks", "load_hooks"]

LOGGER = logging.getLogger("pulsar_arbiter.hooks")

HOOK_NAMES = (
    "on_starting",
    "when_ready",
    "pre_fork",
    "post_fork",
    "post_worker_init",
    "worker_int",
    "worker_abort",
    "pre_exec",
    "on_reload",
    "worker_exit",
    "child_exit",
    "on_exit",
)
#: Hooks whose caller runs no event loop when it calls them: they must be plain functions.
#: (on_starting runs before the loop; pre_fork between the decision and the fork;
#: pre_exec right before the exec.)
SYNC_ONLY = frozenset({"on_starting", "pre_fork", "pre_exec", "worker_int", "worker_abort"})


class HookError(Exception):
    """A hook module cannot be used, or a start hook raised: the message says which."""


class Hooks:
    """The hooks of one module (or none: every call is a no-op)."""

    def __init__(self, functions: dict[str, Callable[..., Any]] | None = None) -> None:
        self.functions = dict(functions or {})

    def __bool__(self) -> bool:
        return bool(self.functions)

    def has(self, name: str) -> bool:
        return name in self.functions

    def call(self, name: str, *args: Any) -> Any:
        """Call hook ``name`` if defined; what it returns (an awaitable for ``async
        def``). Exceptions propagate."""
        function = self.functions.get(name)
        if function is None:
            return None
        return function(*args)

    async def acall(self, name: str, *args: Any) -> None:
        """Call hook ``name`` and await it if it is a coroutine. Exceptions propagate."""
        result = self.call(name, *args)
        if inspect.isawaitable(result):
            await result

    def call_logged(self, name: str, *args: Any) -> None:
        """A sync-point hook; an exception is logged and swallowed."""
        try:
            self.call(name, *args)
        except Exception:
            LOGGER.exception("hook %s raised", name)

    async def acall_logged(self, name: str, *args: Any) -> None:
        """An async-capable hook; an exception is logged and swallowed."""
        try:
            await self.acall(name, *args)
        except Exception:
            LOGGER.exception("hook %s raised", name)

    async def acall_start(self, name: str, *args: Any) -> None:
        """A start hook: an exception becomes HookError (the arbiter exits 2)."""
        try:
            await self.acall(name, *args)
        except Exception as exc:
            raise HookError(f"hook {name} failed: {type(exc).__name__}: {exc}") from exc


def load_hooks(module_name: str | None) -> Hooks:
    """Import ``module_name`` (from the current directory) and collect its hooks.

    Raises HookError if it cannot be imported, a hook is not callable, or a hook that runs
    where there is no loop is an ``async def``.
    """
    if not module_name:
        return Hooks()
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise HookError(
            f"--hooks: cannot import {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    functions: dict[str, Callable[..., Any]] = {}
    for name in HOOK_NAMES:
        function = getattr(module, name, None)
        if function is None:
            continue
        if not callable(function):
            raise HookError(f"--hooks: {module_name}.{name} is not callable")
        if name in SYNC_ONLY and inspect.iscoroutinefunction(function):
            raise HookError(
                f"--hooks: {module_name}.{name} is async, but it runs where no loop runs"
            )
        functions[name] = function
    return Hooks(functions)
