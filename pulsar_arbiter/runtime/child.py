"""What a worker process and an actor process share: the arbiter's end of their life.

Both beat from inside their own event loop (a blocked loop stops beating, and the arbiter
notices and aborts the process), both stop when the arbiter goes away (the channel closes,
or the parent changes: the arbiter died and something else adopted us), and both answer
``info`` and route ``send()`` through the arbiter. One class, so the two cannot drift.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from .. import ipc
from ..ipc.commands import ActorKind
from ..ops.config import Config

__all__ = ["ChildActor", "heartbeat_interval"]

LOGGER = logging.getLogger("pulsar_arbiter.child")


def heartbeat_interval(timeout: float) -> float:
    """Beat four times per timeout, at most every 5 s and at least every 0.1 s."""
    return max(0.1, min(timeout / 4.0, 5.0))


class ChildActor:
    """The base of :class:`.worker.Worker` and :class:`.actor.ActorProcess`.

    Subclasses say who they are (``kind``, ``name``, ``stats()``), whether they are already
    stopping (``stopping``) and what to do when the arbiter is gone (``_on_arbiter_gone``).
    """

    kind: ActorKind

    def __init__(
        self, id: int, cfg: Config, arbiter_pid: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.cfg = cfg
        self.loop = loop
        self.pid = os.getpid()
        self.started = time.monotonic()
        self.channel: ipc.Channel | None = None
        self._id = id
        self._arbiter_pid = arbiter_pid
        self._beat: asyncio.TimerHandle | None = None

    @property
    def id(self) -> int:
        return self._id

    @property
    def name(self) -> str:
        raise NotImplementedError

    @property
    def stopping(self) -> bool:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        raise NotImplementedError

    def _on_arbiter_gone(self) -> None:
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """The actor's identity and stats (the ``info`` command)."""
        channel = self.channel
        return {
            "name": self.name,
            "kind": self.kind,
            **self.stats(),
            "commands_running": channel.running if channel is not None else 0,
            "calls_pending": channel.pending if channel is not None else 0,
        }

    async def _route(
        self, target: str, name: str, args: dict[str, Any], timeout: float
    ) -> dict[str, dict[str, Any]]:
        """``send()`` from this process: the arbiter routes it."""
        if self.channel is None:
            raise ipc.ChannelClosed("no channel to the arbiter")
        answers: dict[str, dict[str, Any]] = await self.channel.route(target, name, args, timeout)
        return answers

    # -- the heartbeat
    def start_heartbeat(self) -> None:
        self._beat = self.loop.call_later(heartbeat_interval(self.cfg.timeout), self._heartbeat)

    def stop_heartbeat(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None

    def send_last_beat(self) -> None:
        """The final stats, then the channel closes: the arbiter's figures are complete."""
        channel = self.channel
        if channel is not None and not channel.is_closing:
            channel.send(ipc.heartbeat(self.stats()))
            channel.close()

    def _heartbeat(self) -> None:
        if os.getppid() != self._arbiter_pid:
            self._arbiter_gone(None)
            return
        if self.channel is not None and not self.channel.is_closing:
            self.channel.send(ipc.heartbeat(self.stats()))
        self.start_heartbeat()

    def _arbiter_gone(self, _: Any) -> None:
        """The channel closed or the parent changed: stop (once)."""
        if not self.stopping:
            LOGGER.warning("%s (pid %d): the arbiter is gone, stopping", self.name, self.pid)
            self._on_arbiter_gone()
