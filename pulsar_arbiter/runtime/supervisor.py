"""What the arbiter decides, apart from how it does it.

The arbiter feeds this module what happened (a worker forked, beat, asked to retire,
exited; a signal asked for a reload or a new size) and asks :meth:`Supervisor.decide`
what to do now. The answer is a list of actions (spawn, stop, signal, exit) that a thin
I/O layer carries out. Nothing here forks, sleeps or reads a clock: tests drive it with
plain numbers for time. Every rule lives here: when to spawn and retire, the crash-loop
backoff and give-up, what a reload keeps, how a stop escalates to TERM and KILL, what a
death means (a recycle, a failed boot, a stopped rollout).

Worker lifecycle, one table, one transition function::

    booting --ready--> ready --retire--> retiring --stop--> stopping --exit--> dead
       |                 |                   |                  |
       +-----------------+---- overdue ------+------------------+--> terminating (TERM/ABRT)
                                                                        |
                                              overdue (or a fast stop's) v
                                                                      killed (KILL) --> dead

A phase with a deadline escalates when the deadline passes (``ESCALATION``): a worker
that does not boot or stop in time gets TERM (one that stops beating gets ABRT, as from
gunicorn), then KILL ``KILL_GRACE`` later; a worker told to stop *fast* that is still there
gets KILL at once (TERM would only ask it again). Any phase may die.
"""

from __future__ import annotations

import collections
import enum
import signal
from dataclasses import dataclass, field, replace
from typing import Any

from .exits import EXIT_BOOT_FAILURE, EXIT_OK, WORKER_BOOT_ERROR

__all__ = [
    "ESCALATION",
    "TRANSITIONS",
    "Exit",
    "Exited",
    "IllegalTransition",
    "Kill",
    "Phase",
    "Reason",
    "Settings",
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
    TERMINATING = "terminating"  # TERM sent: it did not boot, beat or stop in time
    KILLED = "killed"  # KILL sent: waiting to reap it
    DEAD = "dead"


TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.BOOTING: frozenset({Phase.READY, Phase.STOPPING, Phase.TERMINATING, Phase.DEAD}),
    Phase.READY: frozenset({Phase.RETIRING, Phase.STOPPING, Phase.TERMINATING, Phase.DEAD}),
    Phase.RETIRING: frozenset({Phase.STOPPING, Phase.TERMINATING, Phase.DEAD}),
    Phase.STOPPING: frozenset({Phase.TERMINATING, Phase.KILLED, Phase.DEAD}),
    Phase.TERMINATING: frozenset({Phase.KILLED, Phase.DEAD}),
    Phase.KILLED: frozenset({Phase.DEAD}),
    Phase.DEAD: frozenset(),
}

#: What an overdue phase becomes, and the signal that goes with it. A fast stop that is
#: overdue skips TERM (see ``Supervisor._escalate``). A serving worker is overdue only for
#: its heartbeat timeout: it gets ABRT, as gunicorn sends on ``--timeout`` (the worker runs
#: the ``worker_abort`` hook and exits), then KILL ``KILL_GRACE`` later.
ESCALATION: dict[Phase, tuple[Phase, int]] = {
    Phase.BOOTING: (Phase.TERMINATING, signal.SIGTERM),
    Phase.READY: (Phase.TERMINATING, signal.SIGABRT),
    Phase.RETIRING: (Phase.TERMINATING, signal.SIGABRT),
    Phase.STOPPING: (Phase.TERMINATING, signal.SIGTERM),
    Phase.TERMINATING: (Phase.KILLED, signal.SIGKILL),
}

#: The phases of a worker still serving clients.
SERVING = (Phase.READY, Phase.RETIRING)


class Reason(str, enum.Enum):
    """Why a worker left, or is leaving: counted by reason, logged with a detail."""

    MAX_REQUESTS = "max_requests"  # a recycle
    RETIRED = "retired"  # it asked to be replaced for a reason we do not know
    RELOAD = "reload"
    SCALE_DOWN = "scale down"
    ARBITER_STOPPING = "arbiter stopping"
    BOOT_TIMEOUT = "boot timeout"
    HEARTBEAT_TIMEOUT = "heartbeat timeout"
    BOOT_FAILED = "failed to boot"
    CRASHED = "crashed"

    @property
    def asked(self) -> bool:
        """The worker was asked to go: its death is expected, never a crash."""
        return self in _ASKED

    def __str__(self) -> str:
        return self.value


_ASKED = frozenset(
    {Reason.MAX_REQUESTS, Reason.RETIRED, Reason.RELOAD, Reason.SCALE_DOWN, Reason.ARBITER_STOPPING}
)


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
    #: When the current phase must be left (stopping, terminating); booting and serving
    #: workers' deadlines follow from the boot timeout and the last heartbeat.
    deadline: float | None = None
    graceful: bool = True  # of its stop: a fast one escalates straight to KILL
    reason: Reason | None = None
    detail: str = ""  # what happened, for the log: "no heartbeat for 3.1s (timeout 2s)"
    exit_code: int | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    #: The supervised actor's name (``--actor NAME=...``); None for a worker.
    actor: str | None = None

    def to(self, phase: Phase) -> None:
        if phase not in TRANSITIONS[self.phase]:
            raise IllegalTransition(f"worker {self.id}: {self.phase.value} -> {phase.value}")
        self.phase = phase

    def why(self, reason: Reason, detail: str = "") -> None:
        """The first reason given is the one that counts (a reload that then times out
        is still a reload)."""
        if self.reason is None:
            self.reason = reason
            self.detail = detail or reason.value

    @property
    def alive(self) -> bool:
        return self.phase is not Phase.DEAD


@dataclass
class ActorState:
    """The restart state of one named actor."""

    name: str
    #: Boot failures in a row (a crash within STABLE_AFTER of being ready counts).
    failures: int = 0
    next_spawn_at: float = 0.0
    restarts: int = 0
    last_error: str = ""
    #: The id of its live process, if any.
    record_id: int | None = None


def _backoff(failures: int) -> float:
    return 0.0 if failures <= 0 else min(BACKOFF_BASE * 2 ** (failures - 1), BACKOFF_MAX)


@dataclass(frozen=True)
class Settings:
    """The settings the supervisor's rules use (a reload may change any of them)."""

    workers: int = 1
    timeout: float = 30.0
    boot_timeout: float = 30.0
    graceful_timeout: float = 30.0
    max_requests: int = 0
    max_requests_jitter: int = 0
    #: On TERM, seconds the workers keep serving (health already 503) before they stop.
    drain_delay: float = 0.0
    #: The names of the supervised actors (``--actor``), one process each.
    actors: tuple[str, ...] = ()


@dataclass(frozen=True)
class Spawn:
    """Fork a new worker of ``generation``."""

    worker: WorkerRecord


@dataclass(frozen=True)
class Stop:
    """Ask a worker to stop over IPC; ``graceful`` drains. If the message cannot be
    delivered, the arbiter says so (``Supervisor.undeliverable``) and TERM follows.

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


@dataclass(frozen=True)
class Exited:
    """What a worker's death means, for the arbiter to report."""

    worker: WorkerRecord
    #: It was asked to go (a recycle, reload, scale-down or stop): no replacement rush.
    expected: bool
    #: It was of a new generation that could not boot: the rollout stops here, and the
    #: old workers keep serving until the next reload.
    rollout_stopped: bool


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
        drain_delay: float = 0.0,
    ) -> None:
        self._jitter = jitter  # callable(n) -> 0..n, injected so tests are deterministic
        self.settings = Settings(
            workers,
            timeout,
            boot_timeout,
            graceful_timeout,
            max_requests,
            max_requests_jitter,
            drain_delay,
        )
        self.desired = max(1, workers)
        self.generation = 1
        self.workers: dict[int, WorkerRecord] = {}
        # The supervised actors' processes, by id (ids are shared with the workers), and
        # each actor's restart state, by name (see "supervised actors" below).
        self.actors: dict[int, WorkerRecord] = {}
        self.actor_states: dict[str, ActorState] = {}
        self._ids = 0
        self.stopping: str | None = None  # None, "graceful" or "fast"
        # A graceful stop's drain: until then the workers serve on while health says 503.
        self.drain_until: float | None = None
        # When the workers were first told to stop (after any drain delay).
        self.stop_began: float | None = None
        self.ever_ready = False
        self.boot_failures = 0
        self.last_failure_at = 0.0
        self.next_spawn_at = 0.0
        self.replacement_blocked_generation: int | None = None
        self.exits = 0
        self.exits_by_reason: collections.Counter[Reason] = collections.Counter()
        self.dead: collections.deque[WorkerRecord] = collections.deque(maxlen=RECENT_DEAD)
        self.last_error = ""

    @classmethod
    def from_settings(cls, settings: Settings, jitter: Any = None) -> Supervisor:
        supervisor = cls(
            settings.workers,
            settings.timeout,
            settings.boot_timeout,
            settings.graceful_timeout,
            settings.max_requests,
            settings.max_requests_jitter,
            jitter=jitter,
            drain_delay=settings.drain_delay,
        )
        supervisor.set_actors(settings.actors)
        return supervisor

    # The settings the rules read, by name.
    @property
    def timeout(self) -> float:
        return self.settings.timeout

    @property
    def boot_timeout(self) -> float:
        return self.settings.boot_timeout

    @property
    def graceful_timeout(self) -> float:
        return self.settings.graceful_timeout

    @property
    def max_requests(self) -> int:
        return self.settings.max_requests

    @property
    def max_requests_jitter(self) -> int:
        return self.settings.max_requests_jitter

    @property
    def drain_delay(self) -> float:
        return self.settings.drain_delay

    @property
    def recycles(self) -> int:
        """Workers replaced after reaching their max requests."""
        return self.exits_by_reason[Reason.MAX_REQUESTS]

    # -- what happened --------------------------------------------------------------

    def spawned(self, worker_id: int, pid: int) -> None:
        record = self._record(worker_id)
        if record is not None:
            record.pid = pid

    def fork_failed(self, worker_id: int, error: str, now: float) -> Exited | None:
        """The fork itself failed (EAGAIN, ENOMEM): a failed boot like any other."""
        self.last_error = f"cannot fork a worker: {error}"
        return self.exited(worker_id, None, now)

    def boot_error(self, worker_id: int, error: str) -> None:
        """A worker says why it cannot boot: the arbiter prints it if it gives up."""
        if worker_id in self.actors:
            self._actor_state(worker_id).last_error = error
        elif worker_id in self.workers:
            self.last_error = error

    def ready(self, worker_id: int, now: float) -> None:
        worker = self._record(worker_id)
        if worker is None or worker.phase is not Phase.BOOTING:
            return
        worker.to(Phase.READY)
        worker.ready_at = worker.last_beat = now
        if worker.actor is None:  # an actor serving says nothing of the app's workers
            self.ever_ready = True

    def heartbeat(self, worker_id: int, stats: dict[str, Any], now: float) -> None:
        worker = self._record(worker_id)
        if worker is not None and worker.alive:
            worker.last_beat = now
            worker.stats = stats

    def retiring(self, worker_id: int, reason: str) -> None:
        """The worker asked to be replaced (its max requests): replace it, then stop it."""
        worker = self.workers.get(worker_id)
        if worker is not None and worker.phase is Phase.READY:
            worker.to(Phase.RETIRING)
            known = reason == Reason.MAX_REQUESTS.value
            worker.why(Reason.MAX_REQUESTS if known else Reason.RETIRED, reason)

    def undeliverable(self, worker_id: int, now: float) -> list[Kill]:
        """A stop could not be sent over IPC (the channel is gone): TERM it now."""
        worker = self._record(worker_id)
        if worker is None or worker.phase is not Phase.STOPPING:
            return []
        return [self._escalate_now(worker, now, "cannot reach it over IPC")]

    def exited(self, worker_id: int, code: int | None, now: float) -> Exited | None:
        """A worker is gone: classify its death; a crash soon after boot is a boot
        failure (backoff, maybe a stopped rollout, maybe giving up)."""
        if worker_id in self.actors:
            return self._actor_exited(worker_id, code, now)
        worker = self.workers.pop(worker_id, None)
        if worker is None:
            return None
        worker.phase = Phase.DEAD
        worker.exit_code = code
        if code == WORKER_BOOT_ERROR:
            worker.why(Reason.BOOT_FAILED)
        worker.why(Reason.CRASHED, f"exited with {code}")
        assert worker.reason is not None
        self.exits += 1
        self.exits_by_reason[worker.reason] += 1
        self.dead.append(worker)
        if worker.reason.asked or self.stopping:
            return Exited(worker, expected=True, rollout_stopped=False)
        crashed_early = worker.ready_at is None or now - worker.ready_at < STABLE_AFTER
        blocked_before = self.replacement_blocked_generation
        if crashed_early:
            self._boot_failed(worker, now)
        else:
            self.boot_failures = 0
        stopped = self.replacement_blocked_generation not in (None, blocked_before)
        return Exited(worker, expected=False, rollout_stopped=stopped)

    def _boot_failed(self, worker: WorkerRecord, now: float) -> None:
        self.boot_failures += 1
        self.last_failure_at = now
        delay = min(BACKOFF_BASE * 2 ** (self.boot_failures - 1), BACKOFF_MAX)
        self.next_spawn_at = now + delay
        # A new generation that cannot boot stops the rollout: the workers of the older
        # generations keep serving until the next reload. A recycle's replacement (same
        # generation) is retried with backoff instead; its retiring worker serves on.
        serving = self._by_phase(*SERVING)
        if any(w.generation < worker.generation for w in serving):
            self.replacement_blocked_generation = worker.generation

    def reload(self, settings: Settings | None = None) -> None:
        """HUP: a new generation replaces the old one, one worker at a time.

        With new ``settings``: a worker count set at run time (TTIN/TTOU, ``ctl scale``)
        survives unless the settings themselves now ask for a different count.
        """
        if settings is not None:
            if settings.workers != self.settings.workers:
                self.scale(settings.workers)
            self.settings = settings
            self.set_actors(settings.actors)
        self.generation += 1
        self.replacement_blocked_generation = None
        self.boot_failures = 0
        self.next_spawn_at = 0.0

    def scale(self, workers: int) -> None:
        self.desired = max(1, workers)

    def stop(self, graceful: bool, now: float | None = None, drain: bool = True) -> None:
        """TERM: graceful. INT/QUIT: fast, and during a graceful stop, hurry it.

        A graceful stop at ``now`` with a drain delay first drains: health turns 503 at
        once, the workers serve on for ``drain_delay`` seconds, then they are told to stop
        (``drain=False``: no drain, e.g. a hand-over to a new arbiter that serves already).
        A fast stop cuts a drain short.
        """
        if not graceful:
            self.stopping = "fast"
            self.drain_until = None
        elif self.stopping is None:
            self.stopping = "graceful"
            if drain and now is not None and self.drain_delay > 0:
                self.drain_until = now + self.drain_delay

    def draining(self, now: float) -> bool:
        """Stopping, the workers still serving until the drain delay ends."""
        return self.drain_until is not None and now < self.drain_until

    def health(self) -> tuple[bool, str]:
        """Whether a balancer should send to us, and why (one line)."""
        ready = len(self._by_phase(Phase.READY))
        total = len(self.workers)
        if self.stopping:
            return False, f"stopping ({self.stopping}): {ready}/{total} workers ready"
        if not ready:
            return False, f"no worker ready (0/{total})"
        return True, f"ok: {ready}/{total} workers ready"

    def rollout_done(self) -> bool:
        """The current generation serves with every worker asked for, none old is left."""
        return (
            not self.stopping
            and len(self._fresh_ready()) >= self.desired
            and not self.old_serving()
            and not self._booting()
        )

    # -- what to do -----------------------------------------------------------------

    def decide(self, now: float) -> list[Action]:
        actions = self._escalate(now)
        if self.stopping:
            return [*actions, *self._decide_stop(now)]
        self._forgive_boot_failures(now)
        exit_action = self._check_give_up()
        if exit_action is not None:
            return [*actions, exit_action]
        actions.extend(self._spawn(now))
        actions.extend(self._retire_excess(now))
        actions.extend(self._decide_actors(now))
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
            w for w in self._by_phase(*SERVING) if w.phase is Phase.RETIRING or not self._current(w)
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
            for w in self._by_phase(*SERVING)
        ):
            self.boot_failures = 0

    def _check_give_up(self) -> Exit | None:
        if not self.ever_ready and self.boot_failures:
            return Exit(EXIT_BOOT_FAILURE, "the first workers failed to boot")
        serving = self._by_phase(*SERVING)
        if self.boot_failures >= MAX_BOOT_FAILURES and not serving:
            return Exit(
                EXIT_BOOT_FAILURE,
                f"{self.boot_failures} workers in a row failed to boot and none is serving",
            )
        return None

    def _dying(self) -> list[WorkerRecord]:
        """Workers being killed for a timeout: each holds its place until it is reaped
        (then its death counts, as a crash or a failed boot, with its backoff)."""
        return [
            w
            for w in self._by_phase(Phase.TERMINATING, Phase.KILLED)
            if w.reason is None or not w.reason.asked
        ]

    def _spawn(self, now: float) -> list[Action]:
        booting = self._booting()
        dying = self._dying()
        old = self.old_serving() + [w for w in dying if not self._current(w)]
        fresh = len(self._fresh_ready()) + sum(1 for w in dying if self._current(w))
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
            reason = Reason.RELOAD if not self._current(worker) else Reason.SCALE_DOWN
            actions.append(self._stop(worker, True, now, reason, handoff=True))
        return actions

    def _stop(
        self,
        worker: WorkerRecord,
        graceful: bool,
        now: float,
        reason: Reason,
        handoff: bool = False,
    ) -> Stop:
        timeout = self.graceful_timeout if graceful else 0.0
        worker.to(Phase.STOPPING)
        worker.graceful = graceful
        worker.why(reason)
        worker.deadline = now + timeout + STOP_MARGIN
        return Stop(worker, graceful, timeout, str(worker.reason), handoff)

    # -- escalation: one table, one rule ----------------------------------------------

    def _overdue(self, worker: WorkerRecord, now: float) -> tuple[Reason | None, str] | None:
        """Why ``worker`` must escalate now (a reason if it had none, and a detail)."""
        phase = worker.phase
        if phase is Phase.BOOTING and now - worker.started_at > self.boot_timeout:
            return Reason.BOOT_TIMEOUT, f"not ready after {self.boot_timeout:g}s (boot timeout)"
        if phase in SERVING and now - worker.last_beat > self.timeout:
            return (
                Reason.HEARTBEAT_TIMEOUT,
                f"no heartbeat for {now - worker.last_beat:.1f}s (timeout {self.timeout:g}s)",
            )
        if worker.deadline is not None and now > worker.deadline:
            if phase is Phase.STOPPING:
                return None, "still running after the graceful timeout"
            if phase is Phase.TERMINATING:
                return None, "did not exit after TERM"
        return None

    def _escalate(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for worker in [*self.workers.values(), *self.actors.values()]:
            overdue = self._overdue(worker, now)
            if overdue is not None:
                reason, detail = overdue
                if reason is not None:
                    worker.why(reason, detail)
                actions.append(self._escalate_now(worker, now, detail))
        return actions

    def _escalate_now(self, worker: WorkerRecord, now: float, detail: str) -> Kill:
        phase, signum = ESCALATION[worker.phase]
        if worker.phase is Phase.STOPPING and not worker.graceful:
            # Told to stop fast and still there: TERM would only ask it again.
            phase, signum = Phase.KILLED, signal.SIGKILL
        worker.to(phase)
        worker.deadline = now + KILL_GRACE if phase is Phase.TERMINATING else None
        return Kill(worker, signum, detail)

    def _decide_stop(self, now: float) -> list[Action]:
        graceful = self.stopping == "graceful"
        actions: list[Action] = []
        if graceful and self.draining(now):
            return actions  # the drain delay: everyone serves on, health says 503
        if self.stop_began is None:
            self.stop_began = now
        for worker in self._every(Phase.BOOTING, *SERVING):
            actions.append(self._stop(worker, graceful, now, Reason.ARBITER_STOPPING))
        if not graceful:
            for worker in self._every(Phase.STOPPING):
                if worker.graceful:
                    # Draining, and now asked to stop fast (a second Ctrl-C): cut it short.
                    worker.graceful = False
                    deadline = now + STOP_MARGIN
                    if worker.deadline is None or worker.deadline > deadline:
                        worker.deadline = deadline
                    actions.append(Stop(worker, False, 0.0, "fast stop"))
        if not self.workers and not self.actors:
            actions.append(Exit(EXIT_OK, "stopped"))
        return actions

    # -- reporting --------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        result = {phase.value: 0 for phase in Phase if phase is not Phase.DEAD}
        for worker in self.workers.values():
            result[worker.phase.value] += 1
        return result

    # -- supervised actors ----------------------------------------------------------------
    #
    # An actor (``--actor NAME=MODULE:CALLABLE``) is one process that serves no sockets. Its
    # record is a WorkerRecord (``actor`` set) with the same lifecycle table and escalation: a
    # boot timeout, the heartbeat timeout, TERM then KILL, a graceful stop on the arbiter's.
    # Its own rules: there is exactly one process per name, so a reload (HUP) stops the old
    # generation's process first and starts the new one once it is gone (two schedulers must
    # never run at once); a crash soon after boot backs off per actor (0.5 s doubling to 10 s)
    # and is retried forever: an actor that cannot start is reported as failing, it never
    # stops the arbiter or its workers.

    def set_actors(self, names: tuple[str, ...] | list[str]) -> None:
        """The actors to run (at start, and on a reload): new names start, removed ones stop."""
        wanted = tuple(dict.fromkeys(names))
        for name in wanted:
            self.actor_states.setdefault(name, ActorState(name))
        for name in list(self.actor_states):
            state = self.actor_states[name]
            if name not in wanted and state.record_id is None:
                del self.actor_states[name]
        if self.settings.actors != wanted:
            self.settings = replace(self.settings, actors=wanted)

    def _record(self, record_id: int) -> WorkerRecord | None:
        """The live worker or actor ``record_id``."""
        return self.workers.get(record_id) or self.actors.get(record_id)

    def _actor_state(self, record_id: int) -> ActorState:
        name = self.actors[record_id].actor
        assert name is not None
        return self.actor_states.setdefault(name, ActorState(name))

    def _every(self, *phases: Phase) -> list[WorkerRecord]:
        """Workers, then actors, in ``phases``."""
        actors = sorted((a for a in self.actors.values() if a.phase in phases), key=lambda a: a.id)
        return [*self._by_phase(*phases), *actors]

    def _decide_actors(self, now: float) -> list[Action]:
        """Start each missing actor (after its backoff); stop those of an old generation or
        no longer wanted; forgive the failures of one that has served for STABLE_AFTER."""
        actions: list[Action] = []
        for name, state in list(self.actor_states.items()):
            record = self.actors.get(state.record_id) if state.record_id is not None else None
            wanted = name in self.settings.actors
            if record is None:
                if not wanted:
                    del self.actor_states[name]
                elif now >= state.next_spawn_at:
                    self._ids += 1
                    record = WorkerRecord(self._ids, self.generation, now, actor=name)
                    self.actors[record.id] = record
                    state.record_id = record.id
                    actions.append(Spawn(record))
                continue
            if record.phase in (Phase.BOOTING, *SERVING):
                if not wanted:
                    actions.append(self._stop(record, True, now, Reason.SCALE_DOWN))
                elif record.generation != self.generation:
                    actions.append(self._stop(record, True, now, Reason.RELOAD))
                elif record.ready_at is not None and now - record.ready_at >= STABLE_AFTER:
                    state.failures = 0
        return actions

    def _actor_exited(self, record_id: int, code: int | None, now: float) -> Exited:
        """An actor is gone: asked to (no backoff), or a crash (backoff when it crashed soon
        after boot). It is started again by ``_decide_actors`` unless the arbiter stops."""
        record = self.actors.pop(record_id)
        state = self.actor_states.get(record.actor or "")
        record.phase = Phase.DEAD
        record.exit_code = code
        if code == WORKER_BOOT_ERROR:
            record.why(Reason.BOOT_FAILED)
        record.why(Reason.CRASHED, f"exited with {code}")
        assert record.reason is not None
        expected = record.reason.asked or bool(self.stopping)
        if state is not None:
            state.record_id = None
            if not expected:
                state.restarts += 1
                crashed_early = record.ready_at is None or now - record.ready_at < STABLE_AFTER
                state.failures = state.failures + 1 if crashed_early else 0
                state.next_spawn_at = now + _backoff(state.failures)
        return Exited(record, expected=expected, rollout_stopped=False)

    def actor_report(self, now: float) -> list[dict[str, Any]]:
        """Each actor for ``stats``: its process, phase, restarts, and whether it is failing
        (crashing at boot, waiting out a backoff), with the last error it gave."""
        report = []
        for name, state in sorted(self.actor_states.items()):
            record = self.actors.get(state.record_id) if state.record_id is not None else None
            report.append(
                {
                    "name": name,
                    "id": record.id if record else None,
                    "pid": record.pid if record else None,
                    "phase": record.phase.value if record else "dead",
                    "generation": record.generation if record else None,
                    "restarts": state.restarts,
                    "failing": state.failures > 0,
                    "failures": state.failures,
                    "last_error": state.last_error,
                    "next_start_in": max(0.0, state.next_spawn_at - now) if not record else 0.0,
                }
            )
        return report
