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
import logging
import os
import pwd
import signal
import sys
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, NoReturn

from ..ops.config import Config
from .exits import WORKER_BOOT_ERROR
from .signals import ARBITER_SIGNALS, IGNORED_IN_WORKER

__all__ = [
    "drop_privileges",
    "loop_fds",
    "new_loop",
    "reset_after_fork",
    "run_child",
    "set_title",
    "start_process",
]

LOGGER = logging.getLogger("pulsar_arbiter.worker")

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


def drop_privileges(cfg: Config) -> None:
    """Become ``--user``/``--group`` (after the arbiter bound any privileged port).

    The supplementary groups go too: a worker that kept root's (group 0 among them)
    could read what root made group-readable. They become the user's own groups.
    """
    if cfg.user is None and cfg.group is None:
        return
    gid = cfg.group if cfg.group is not None else os.getegid()
    if os.geteuid() == 0:
        name = None
        if cfg.user is not None:
            with contextlib.suppress(KeyError):
                name = pwd.getpwuid(cfg.user).pw_name
        if name is not None:
            os.initgroups(name, gid)
        else:
            os.setgroups([gid])
    if os.getegid() != gid:
        os.setgid(gid)
    if cfg.user is not None and os.geteuid() != cfg.user:
        os.setuid(cfg.user)


def set_title(title: str) -> None:
    """What ``ps`` shows for this process (when setproctitle is installed)."""
    with contextlib.suppress(ImportError):
        import setproctitle

        setproctitle.setproctitle(title)


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    """A fresh loop of kind ``name`` ("uvloop" or "asyncio"), made in the child only."""
    if name == "uvloop":
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


def run_child(
    arbiter_pid: int,
    close_fds: Iterable[int],
    cfg: Config,
    title: str,
    main: Callable[[asyncio.AbstractEventLoop], Coroutine[Any, Any, int]],
) -> NoReturn:
    """A forked child of the arbiter (a worker, an actor) from the fork to the exit.

    Undo the arbiter's state, name the process, make the loop (with the arbiter's
    rights: they may be the only ones that can read the Python install), drop to
    ``--user``/``--group``, run ``main(loop)`` and exit with its status.
    """
    reset_after_fork(arbiter_pid, close_fds)
    set_title(title)
    loop = new_loop(cfg.loop)
    try:
        drop_privileges(cfg)
    except OSError as exc:
        LOGGER.error("cannot switch user/group: %s", exc)
        sys.exit(WORKER_BOOT_ERROR)
    asyncio.set_event_loop(loop)
    try:
        code = loop.run_until_complete(main(loop))
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    sys.exit(code)
