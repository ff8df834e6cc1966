"""What the arbiter decides, apart from how it does it.

The arbiter feeds this module what happened (a worker forked, beat, asked to retire,
exited; a signal asked for a reload or a new size) and asks :meth:`Supervisor.decide`
what to do now. The answer is a list of actions (spawn, stop, signal, exit) that a thin
I/O layer carries out. Nothing here forks, sleeps or reads a clock: tests drive it with
plain numbers for time.

Worker lifecycle, one table, one transition function::

    booting --ready--> ready --retire--> retiring --stop--> stopping --exit--> dead
       |                 |                                      ^
       +------stop-------+--------------------------------------+   (any phase may die)
"""

from __future__ import annotations

import collections
import enum
import signal
from dataclasses import dataclass, field
from typing import Any

from .exits import EXIT_BOOT_FAILURE

__all__ = [
    "Exit",
    "IllegalTransition",
    "Kill",
    "Phase",
    "Spawn",
    "Stop",
    "Supervisor",
    "WorkerRecord",
]

# Seconds between TERM and KILL for a worker that stopped beating or will not stop.
KILL_GRACE = 3.0
# Extra seconds past the graceful timeout before a stopping worker is killed: it needs
# a moment to exit after its own grace period ends.
STOP_MARGIN = 2.0
# Crash-loop backoff: first delay, cap, and how many boot failures in a row with no worker
# serving make the arbiter give up (exit non-zero) instead of spawning forever.
BACKOFF_BASE = 0.5
BACKOFF_MAX = 10.0
MAX_BOOT_FAILURES = 5
# A worker that dies sooner than this after it was ready counts as a failed boot (a
# crash loop), not as an ordinary death to replace at once.
STABLE_AFTER = 5.0
# Records of dead workers kept for inspection. An arbiter recycling workers for months
# must not keep every record it ever had: the count is kept, the records are bounded.
RECENT_DEAD = 64


class Phase(enum.Enum):
    BOOTING = "booting"
    READY = "ready"
    RETIRING = "retiring"
    STOPPING = "stopping"
    DEAD = "dead"


TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.BOOTING: frozenset({Phase.READY, Phase.STOPPING, Phase.DEAD}),
    Phase.READY: frozenset({Phase.RETIRING, Phase.STOPPING, Phase.DEAD}),
    Phase.RETIRING: frozenset({Phase.STOPPING, Phase.DEAD}),
    Phase.STOPPING: frozenset({Phase.DEAD}),
    Phase.DEAD: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A worker was asked to move between phases the lifecycle table forbids: our bug."""


@dataclass
class WorkerRecord:
    """What the arbiter knows of one worker."""

    id: int
    generation: int
    started_at: float
    max_requests: int = 0
    pid: int | None = None
    phase: Phase = Phase.BOOTING
    ready_at: float | None = None
    last_beat: float = 0.0
    stop_deadline: float | None = None
    term_sent_at: float | None = None
    killed: bool = False
    hurried: bool = False  # told to stop fast after a graceful stop had begun
    reason: str = ""
    exit_code: int | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    def to(self, phase: Phase) -> None:
        if phase not in TRANSITIONS[self.phase]:
            raise IllegalTransition(f"worker {self.id}: {self.phase.value} -> {phase.value}")
        self.phase = phase

    @property
    def alive(self) -> bool:
        return self.phase is not Phase.DEAD


@dataclass(frozen=True)
class Spawn:
    """Fork a new worker of ``generation``."""

    worker: WorkerRecord


@dataclass(frozen=True)
class Stop:
    """Ask a worker to stop (over IPC, and TERM as a fallback); ``graceful`` drains.

    ``handoff``: other workers keep serving (a recycle, a reload, a scale-down), so the
    worker may hand its idle connections to them instead of closing them.
    """

    worker: WorkerRecord
    graceful: bool
    timeout: float
    reason: str
    handoff: bool = False


@dataclass(frozen=True)
class Kill:
    """Send ``signum`` to a worker that does not answer."""

    worker: WorkerRecord
    signum: int
    reason: str


@dataclass(frozen=True)
class Exit:
    """The arbiter is done: exit with ``code``."""

    code: int
    reason: str


Action = Spawn | Stop | Kill | Exit


class Supervisor:
    """The arbiter's state and its decisions. Times are seconds on any monotonic clock."""

    def __init__(
        self,
        workers: int,
        timeout: float,
        boot_timeout: float,
        graceful_timeout: float,
        max_requests: int = 0,
        max_requests_jitter: int = 0,
        jitter: Any = None,
    ) -> None:
        self.desired = max(1, workers)
        self.timeout = timeout
        self.boot_timeout = boot_timeout
        self.graceful_timeout = graceful_timeout
        self.max_requests = max_requests
        self.max_requests_jitter = max_requests_jitter
        self._jitter = jitter  # callable(n) -> 0..n, injected so tests are deterministic
        self.generation = 1
        self.workers: dict[int, WorkerRecord] = {}
        self._ids = 0
        self.stopping: str | None = None  # None, "graceful" or "fast"
        self.ever_ready = False
        self.boot_failures = 0
        self.last_failure_at = 0.0
        self.next_spawn_at = 0.0
        self.replacement_blocked_generation: int | None = None
        self.recycles = 0
        self.exits = 0
        self.dead: collections.deque[WorkerRecord] = collections.deque(maxlen=RECENT_DEAD)
        self.last_error = ""

    # -- what happened --------------------------------------------------------------

    def spawned(self, worker_id: int, pid: int) -> None:
        self.workers[worker_id].pid = pid

    def ready(self, worker_id: int, now: float) -> None:
        worker = self.workers.get(worker_id)
        if worker is None or worker.phase is not Phase.BOOTING:
            return
        worker.to(Phase.READY)
        worker.ready_at = worker.last_beat = now
        self.ever_ready = True

    def heartbeat(self, worker_id: int, stats: dict[str, Any], now: float) -> None:
        worker = self.workers.get(worker_id)
        if worker is not None and worker.alive:
            worker.last_beat = now
            worker.stats = stats

    def retiring(self, worker_id: int, reason: str) -> None:
        """The worker reached its max requests: replace it, then stop it."""
        worker = self.workers.get(worker_id)
        if worker is not None and worker.phase is Phase.READY:
            worker.to(Phase.RETIRING)
            worker.reason = reason

    def exited(self, worker_id: int, code: int | None, now: float) -> WorkerRecord | None:
        worker = self.workers.pop(worker_id, None)
        if worker is None:
            return None
        was = worker.phase
        worker.phase = Phase.DEAD
        worker.exit_code = code
        self.exits += 1
        self.dead.append(worker)
        if was is Phase.STOPPING:
            if worker.reason in ("max_requests",):
                self.recycles += 1
            return worker
        if self.stopping:
            return worker
        crashed_early = was is Phase.BOOTING or (
            worker.ready_at is not None and now - worker.ready_at < STABLE_AFTER
        )
        if crashed_early:
            self._boot_failed(worker, now)
        else:
            self.boot_failures = 0
        return worker

    def _boot_failed(self, worker: WorkerRecord, now: float) -> None:
        self.boot_failures += 1
        self.last_failure_at = now
        delay = min(BACKOFF_BASE * 2 ** (self.boot_failures - 1), BACKOFF_MAX)
        self.next_spawn_at = now + delay
        # A new generation that cannot boot stops the rollout: the workers of the older
        # generations keep serving until the next reload. A recycle's replacement (same
        # generation) is retried with backoff instead; its retiring worker serves on.
        serving = self._by_phase(Phase.READY, Phase.RETIRING)
        if any(w.generation < worker.generation for w in serving):
            self.replacement_blocked_generation = worker.generation

    def reload(self) -> None:
        """HUP: a new generation replaces the old one, one worker at a time."""
        self.generation += 1
        self.replacement_blocked_generation = None
        self.boot_failures = 0
        self.next_spawn_at = 0.0

    def scale(self, workers: int) -> None:
        self.desired = max(1, workers)

    def stop(self, graceful: bool) -> None:
        """TERM: graceful. INT/QUIT: fast, and during a graceful stop, hurry it."""
        if not graceful:
            self.stopping = "fast"
        elif self.stopping is None:
            self.stopping = "graceful"

    # -- what to do -----------------------------------------------------------------

    def decide(self, now: float) -> list[Action]:
        if self.stopping:
            return self._decide_stop(now)
        actions: list[Action] = []
        actions.extend(self._check_timeouts(now))
        self._forgive_boot_failures(now)
        exit_action = self._check_give_up()
        if exit_action is not None:
            return [*actions, exit_action]
        actions.extend(self._spawn(now))
        actions.extend(self._retire_excess(now))
        return actions

    def _by_phase(self, *phases: Phase) -> list[WorkerRecord]:
        return sorted((w for w in self.workers.values() if w.phase in phases), key=lambda w: w.id)

    def _current(self, worker: WorkerRecord) -> bool:
        return worker.generation == self.generation

    def _fresh_ready(self) -> list[WorkerRecord]:
        return [w for w in self._by_phase(Phase.READY) if self._current(w)]

    def old_serving(self) -> list[WorkerRecord]:
        """Workers still serving that are to be replaced: retiring, or of an old generation."""
        return [
            w
            for w in self._by_phase(Phase.READY, Phase.RETIRING)
            if w.phase is Phase.RETIRING or not self._current(w)
        ]

    def _booting(self) -> list[WorkerRecord]:
        return self._by_phase(Phase.BOOTING)

    def _forgive_boot_failures(self, now: float) -> None:
        """The crash loop is over once a worker spawned after the last failure has served
        for STABLE_AFTER seconds: failures hours apart must not add up to a give-up."""
        if self.boot_failures and any(
            w.started_at > self.last_failure_at
            and w.ready_at is not None
            and now - w.ready_at >= STABLE_AFTER
            for w in self._by_phase(Phase.READY, Phase.RETIRING)
        ):
            self.boot_failures = 0

    def _check_give_up(self) -> Exit | None:
        if not self.ever_ready and self.boot_failures:
            return Exit(EXIT_BOOT_FAILURE, "the first workers failed to boot")
        serving = self._by_phase(Phase.READY, Phase.RETIRING)
        if self.boot_failures >= MAX_BOOT_FAILURES and not serving:
            return Exit(
                EXIT_BOOT_FAILURE,
                f"{self.boot_failures} workers in a row failed to boot and none is serving",
            )
        return None

    def _spawn(self, now: float) -> list[Action]:
        booting = self._booting()
        old = self.old_serving()
        fresh = len(self._fresh_ready())
        deficit = self.desired - fresh - len(booting)
        if deficit <= 0 or now < self.next_spawn_at:
            return []
        # Capacity that is simply missing (start, crash, scale up) is spawned at once;
        # replacements of serving workers come one at a time, each ready before the next.
        missing = max(0, self.desired - fresh - len(booting) - len(old))
        count = missing
        blocked = self.replacement_blocked_generation == self.generation
        if old and not blocked and not booting and count < deficit:
            count += 1
        if self.boot_failures:
            count = min(count, 1)
        return [Spawn(self._new_worker(now)) for _ in range(count)]

    def _new_worker(self, now: float) -> WorkerRecord:
        self._ids += 1
        limit = self.max_requests
        if limit and self.max_requests_jitter and self._jitter is not None:
            limit += int(self._jitter(self.max_requests_jitter))
        worker = WorkerRecord(self._ids, self.generation, now, max_requests=limit)
        self.workers[worker.id] = worker
        return worker

    def _retire_excess(self, now: float) -> list[Action]:
        """Stop old workers once enough fresh ones serve; the oldest first."""
        fresh = self._fresh_ready()
        old = self.old_serving()
        # Retiring workers go first, then old generations, then (scale down) fresh ones.
        candidates = [w for w in old if w.phase is Phase.RETIRING]
        candidates += [w for w in old if w.phase is not Phase.RETIRING]
        excess = len(fresh) + len(old) - self.desired
        if excess > len(old):
            candidates += fresh
        actions: list[Action] = []
        for worker in candidates[: max(0, excess)]:
            reason = worker.reason or ("reload" if not self._current(worker) else "scale down")
            actions.append(self._stop(worker, True, now, reason, handoff=True))
        return actions

    def _stop(
        self, worker: WorkerRecord, graceful: bool, now: float, reason: str, handoff: bool = False
    ) -> Stop:
        timeout = self.graceful_timeout if graceful else 0.0
        worker.to(Phase.STOPPING)
        worker.hurried = not graceful
        worker.reason = worker.reason or reason
        worker.stop_deadline = now + timeout + STOP_MARGIN
        return Stop(worker, graceful, timeout, reason, handoff)

    def _check_timeouts(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for worker in list(self.workers.values()):
            if worker.killed:
                continue
            if worker.term_sent_at is not None:
                if now - worker.term_sent_at >= KILL_GRACE:
                    worker.killed = True
                    actions.append(Kill(worker, signal.SIGKILL, "did not exit after TERM"))
                continue
            reason = self._overdue(worker, now)
            if reason:
                worker.term_sent_at = now
                worker.reason = worker.reason or reason
                actions.append(Kill(worker, signal.SIGTERM, reason))
        return actions

    def _overdue(self, worker: WorkerRecord, now: float) -> str:
        if worker.phase is Phase.BOOTING and now - worker.started_at > self.boot_timeout:
            return f"not ready after {self.boot_timeout:g}s (boot timeout)"
        if worker.phase in (Phase.READY, Phase.RETIRING) and now - worker.last_beat > self.timeout:
            return f"no heartbeat for {now - worker.last_beat:.1f}s (timeout {self.timeout:g}s)"
        if (
            worker.phase is Phase.STOPPING
            and worker.stop_deadline is not None
            and now > worker.stop_deadline
        ):
            return "still running after the graceful timeout"
        return ""

    def _decide_stop(self, now: float) -> list[Action]:
        graceful = self.stopping == "graceful"
        actions: list[Action] = []
        for worker in self._by_phase(Phase.BOOTING, Phase.READY, Phase.RETIRING):
            actions.append(self._stop(worker, graceful, now, "arbiter stopping"))
        for worker in self._by_phase(Phase.STOPPING):
            if worker.killed:
                continue
            if not graceful and not worker.hurried:
                # Draining, and now asked to stop fast (a second Ctrl-C): cut it short.
                worker.hurried = True
                deadline = now + STOP_MARGIN
                if worker.stop_deadline is None or worker.stop_deadline > deadline:
                    worker.stop_deadline = deadline
                actions.append(Stop(worker, False, 0.0, "fast stop"))
            if worker.stop_deadline is not None and now > worker.stop_deadline:
                worker.killed = True
                actions.append(Kill(worker, signal.SIGKILL, "did not stop in time"))
        if not self.workers:
            actions.append(Exit(0, "stopped"))
        return actions

    # -- reporting --------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        result = {phase.value: 0 for phase in Phase if phase is not Phase.DEAD}
        for worker in self.workers.values():
            result[worker.phase.value] += 1
        return result
