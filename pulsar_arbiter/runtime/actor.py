"""What runs inside a supervised actor's process (``--actor NAME=MODULE:CALLABLE``).

An actor serves no sockets: it runs ``async def CALLABLE(actor)`` on its own event loop and
answers the commands declared in its module (target ``actor:NAME``), with a worker's
lifecycle: the same fork hygiene (:mod:`.spawn`), a heartbeat from its loop, a boot error
reported to the arbiter, and a stop (the arbiter's ``stop`` message, or TERM) that cancels
the callable and waits for it up to the graceful timeout (the arbiter kills it after).

The callable returning is not the end: the actor serves its commands until stopped. The
callable raising is a crash (the arbiter restarts it, with backoff if it was early).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from .. import ipc
from ..ipc.actor import set_actor
from ..ipc.commands import ActorKind
from ..ops.config import ActorSpec, Config
from ..ops.logs import reopen_log_files
from .apps import AppError, import_app
from .child import ChildActor
from .exits import WORKER_ABORTED, WORKER_BOOT_ERROR
from .spawn import run_child

__all__ = ["ActorProcess", "ActorProcessSpec", "run_actor"]

LOGGER = logging.getLogger("pulsar_arbiter.actor")

#: The exit status of an actor whose callable raised: a crash, restarted by the arbiter.
ACTOR_CRASHED = 1


@dataclass
class ActorProcessSpec:
    """Everything an actor's process needs, prepared by the arbiter before the fork."""

    id: int
    generation: int
    actor: ActorSpec
    cfg: Config
    arbiter_pid: int
    channel: socket.socket
    close_fds: list[int] = field(default_factory=list)


def run_actor(spec: ActorProcessSpec) -> None:
    """The child process's entry point: run the actor until told to stop, then exit."""
    run_child(
        spec.arbiter_pid,
        spec.close_fds,
        spec.cfg,
        f"pulsar_arbiter: actor {spec.actor.name} [{spec.cfg.name}]",
        lambda loop: ActorProcess(spec, loop).main(),
    )


class ActorProcess(ChildActor):
    """One supervised actor: its callable, heartbeat and IPC; the process's actor."""

    kind: ActorKind = "actor"

    def __init__(self, spec: ActorProcessSpec, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(spec.id, spec.cfg, spec.arbiter_pid, loop)
        self.spec = spec
        self.task: asyncio.Task[Any] | None = None
        self._stop: asyncio.Future[float] = loop.create_future()

    @property
    def name(self) -> str:
        return f"actor:{self.spec.actor.name}"

    @property
    def stopping(self) -> bool:
        return self._stop.done()

    def _on_arbiter_gone(self) -> None:
        self.stop(0.0)

    def stats(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "id": self.spec.id,
            "actor": self.spec.actor.name,
            "target": self.spec.actor.target,
            "generation": self.spec.generation,
            "age": time.monotonic() - self.started,
            "running": self.task is not None and not self.task.done(),
            "commands": self.channel.running if self.channel is not None else 0,
        }

    def reopen_logs(self) -> None:
        reopen_log_files()

    async def main(self) -> int:
        self.channel = await ipc.Channel.connect(
            self.spec.channel,
            self._on_message,
            self.loop,
            on_command=self._run_command,
            receiving=ipc.Direction.TO_WORKER,
            max_commands=self.cfg.max_commands,
        )
        self.loop.add_signal_handler(signal.SIGTERM, self.stop, self.cfg.graceful_timeout)
        signal.signal(signal.SIGABRT, _aborted)  # its heartbeat timeout: the loop may be stuck
        self.channel.closed.add_done_callback(self._arbiter_gone)
        set_actor(self, self._route)
        try:
            function = import_app(self.spec.actor.target)
            running = function(self) if callable(function) else None
            if not inspect.isawaitable(running):
                raise AppError(
                    f"actor {self.spec.actor}: {self.spec.actor.target} must be an "
                    f"`async def` taking the actor, got {function!r:.80}"
                )
        except Exception as exc:
            LOGGER.error("actor %s failed to boot: %s", self.spec.actor.name, exc)
            return await self._boot_failed(exc)
        self.task = asyncio.ensure_future(running, loop=self.loop)
        self.channel.send(ipc.ready(self.pid))
        LOGGER.info("actor %s ready (%s)", self.spec.actor.name, self.spec.actor.target)
        self.start_heartbeat()
        await asyncio.wait([self.task, self._stop], return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if self.task.done() and not self._stop.done():
            code = self._ended(self.task)
            if code == 0:  # returned: serve commands until told to stop
                await self._stop
        if not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait({self.task}, timeout=self._stop.result())
        self.stop_heartbeat()
        self.stop(0.0)  # we are leaving: the channel closing is not the arbiter dying
        self.send_last_beat()
        LOGGER.info("actor %s exiting", self.spec.actor.name)
        return code

    def _ended(self, task: asyncio.Task[Any]) -> int:
        """The callable finished on its own: 0 if it returned, ACTOR_CRASHED if it raised."""
        exc = task.exception() if not task.cancelled() else None
        if exc is None:
            LOGGER.info("actor %s: its callable returned; serving commands", self.spec.actor.name)
            return 0
        LOGGER.error("actor %s crashed", self.spec.actor.name, exc_info=exc)
        if self.channel is not None and not self.channel.is_closing:
            self.channel.send(ipc.boot_error(f"{type(exc).__name__}: {exc}"))
        return ACTOR_CRASHED

    async def _boot_failed(self, exc: BaseException) -> int:
        if self.channel is not None and not self.channel.is_closing:
            error = str(exc) if isinstance(exc, AppError) else f"{type(exc).__name__}: {exc}"
            self.channel.send(ipc.boot_error(error))
            self.channel.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.channel.closed), 1.0)
        return WORKER_BOOT_ERROR

    def stop(self, timeout: float) -> None:
        """Cancel the callable and give it ``timeout`` seconds to finish."""
        if not self._stop.done():
            self._stop.set_result(timeout)

    def _on_message(self, channel: ipc.Channel, msg: ipc.Message) -> None:
        if msg["type"] == "stop":
            graceful, timeout = msg["graceful"], msg["timeout"]
            grace = self.cfg.graceful_timeout if timeout is None else timeout
            self.stop(grace if graceful else 0.0)

    def _run_command(self, name: str, args: dict[str, Any]) -> Any:
        """A command routed to this actor, through the registry."""
        return ipc.COMMANDS.start(self, "actor", name, args)  # plain: answered at once


def _aborted(signum: int, frame: Any) -> None:
    """ABRT: the arbiter's heartbeat timeout (as a worker's, without a hook): exit now."""
    LOGGER.error("actor %d: aborted (no heartbeat in time)", os.getpid())
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(WORKER_ABORTED)
