"""Forking a child of the arbiter, and the hygiene on both sides of the fork.

The arbiter blocks the signals it handles around ``fork()``, so none lands in the child
before it has reset their handlers; the child then undoes what it inherited from the
arbiter's running loop (the running-loop marker, handlers, the wakeup fd, the arbiter's
private descriptors) and asks Linux to signal it when the arbiter dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
from collections.abc import Callable, Iterable
from typing import Any

from .signals import ARBITER_SIGNALS, IGNORED_IN_WORKER

__all__ = ["loop_fds", "reset_after_fork", "start_process"]

PR_SET_PDEATHSIG = 1


def start_process(
    context: Any, target: Callable[..., Any], args: tuple[Any, ...], name: str
) -> Any:
    """Start ``target(*args)`` in a forked child, with the arbiter's signals blocked
    across the fork (and restored in the parent). Raises OSError (EAGAIN, ENOMEM)."""
    proc = context.Process(target=target, args=args, name=name, daemon=False)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, ARBITER_SIGNALS)
    try:
        proc.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    return proc


def loop_fds(loop: asyncio.AbstractEventLoop | None) -> list[int]:
    """The descriptors of the arbiter's own loop (selector, self-pipe): a child closes
    them, or a write to its copy would wake the arbiter."""
    fds = []
    selector = getattr(loop, "_selector", None)
    if selector is not None:
        fds.append(selector.fileno())
    for name in ("_ssock", "_csock"):
        sock = getattr(loop, name, None)
        if sock is not None:
            fds.append(sock.fileno())
    return fds


def _set_parent_death_signal(signum: int) -> None:
    """Ask Linux to signal us when the arbiter dies (tied to the forking thread)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)


def reset_after_fork(arbiter_pid: int, close_fds: Iterable[int]) -> None:
    """Undo the arbiter's loop and signal state in the freshly forked child."""
    asyncio.events._set_running_loop(None)
    asyncio.set_event_loop_policy(None)
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    for signum in ARBITER_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    for signum in IGNORED_IN_WORKER:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for fd in close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != arbiter_pid:  # the arbiter died before prctl took effect
        os._exit(0)
