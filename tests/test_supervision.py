"""The arbiter's decisions, driven with plain numbers for time: no fork, no socket, no clock.

Each test plays the part of the arbiter's I/O layer: it carries out the Spawn actions by
giving the worker a fake pid, reports what the workers did (ready, heartbeat, retiring,
exited) at chosen times, and checks what :meth:`Supervisor.decide` answers.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import Iterable

import pytest

from pulsar_arbiter.runtime.exits import EXIT_BOOT_FAILURE, WORKER_BOOT_ERROR
from pulsar_arbiter.runtime.supervisor import (
    BACKOFF_BASE,
    BACKOFF_MAX,
    ESCALATION,
    KILL_GRACE,
    MAX_BOOT_FAILURES,
    RECENT_DEAD,
    SERVING,
    STABLE_AFTER,
    STOP_MARGIN,
    TRANSITIONS,
    Action,
    Exit,
    IllegalTransition,
    Kill,
    Phase,
    Reason,
    Settings,
    Spawn,
    Stop,
    Supervisor,
    WorkerRecord,
)

pytestmark = pytest.mark.timeout(10)

TIMEOUT = 10.0
BOOT_TIMEOUT = 20.0
GRACE = 5.0


def supervisor(workers: int = 2, **kw: float) -> Supervisor:
    settings = {
        "timeout": TIMEOUT,
        "boot_timeout": BOOT_TIMEOUT,
        "graceful_timeout": GRACE,
        **kw,
    }
    return Supervisor(workers=workers, **settings)  # type: ignore[arg-type]


def of(kind: type[Action], actions: Iterable[Action]) -> list[WorkerRecord]:
    """The workers of the actions of one kind."""
    return [a.worker for a in actions if isinstance(a, kind) and not isinstance(a, Exit)]


def spawn(sup: Supervisor, actions: list[Action]) -> list[WorkerRecord]:
    """Carry out the Spawn actions: every new worker gets a pid."""
    workers = of(Spawn, actions)
    for worker in workers:
        sup.spawned(worker.id, 1000 + worker.id)
    return workers


def start(sup: Supervisor, now: float = 0.0) -> list[WorkerRecord]:
    """Start the first generation and make every worker ready at ``now``."""
    workers = spawn(sup, sup.decide(now))
    for worker in workers:
        sup.ready(worker.id, now)
    assert sup.decide(now) == []
    return workers


def exits(actions: list[Action]) -> list[Exit]:
    return [a for a in actions if isinstance(a, Exit)]


def serving(sup: Supervisor) -> list[WorkerRecord]:
    return [w for w in sup.workers.values() if w.phase in (Phase.READY, Phase.RETIRING)]


# -- start ---------------------------------------------------------------------------------


def test_startup_spawns_every_worker_at_once() -> None:
    sup = supervisor(workers=4)
    workers = spawn(sup, sup.decide(0.0))
    assert len(workers) == 4
    assert {w.generation for w in workers} == {1}
    assert all(w.phase is Phase.BOOTING for w in workers)
    assert sup.decide(0.1) == [], "booting workers count: nothing more to spawn"
    for worker in workers:
        sup.ready(worker.id, 0.2)
    assert sup.decide(0.3) == []
    assert sup.counts() == {
        "booting": 0,
        "ready": 4,
        "retiring": 0,
        "stopping": 0,
        "terminating": 0,
        "killed": 0,
    }


def test_at_least_one_worker() -> None:
    assert len(of(Spawn, supervisor(workers=0).decide(0.0))) == 1


def test_max_requests_with_jitter_per_worker() -> None:
    jitters = itertools.count(3)
    sup = Supervisor(2, TIMEOUT, BOOT_TIMEOUT, GRACE, 100, 10, jitter=lambda n: next(jitters))
    limits = [w.max_requests for w in of(Spawn, sup.decide(0.0))]
    assert limits == [103, 104]


# -- recycling -------------------------------------------------------------------------------


@pytest.mark.parametrize("desired", [1, 2, 3])
def test_retiring_worker_is_replaced_before_it_is_stopped(desired: int) -> None:
    sup = supervisor(workers=desired)
    old = start(sup)[0]
    sup.retiring(old.id, "max_requests")
    actions = sup.decide(1.0)
    (new,) = spawn(sup, actions)
    assert of(Stop, actions) == [], "never stop before the replacement serves"
    assert old.phase is Phase.RETIRING and len(serving(sup)) == desired
    assert sup.decide(1.5) == [], "one replacement at a time"
    sup.ready(new.id, 2.0)
    actions = sup.decide(2.0)
    (stop,) = [a for a in actions if isinstance(a, Stop)]
    assert stop.worker is old and stop.graceful and stop.timeout == GRACE
    assert stop.reason == "max_requests"
    assert of(Spawn, actions) == []
    sup.exited(old.id, 0, 2.5)
    assert sup.recycles == 1
    assert sup.decide(3.0) == []
    assert len(serving(sup)) == desired


def test_workers_retiring_together_are_replaced_one_at_a_time() -> None:
    sup = supervisor(workers=2)
    first, second = start(sup)
    sup.retiring(first.id, "max_requests")
    sup.retiring(second.id, "max_requests")
    (new1,) = spawn(sup, sup.decide(1.0))
    sup.ready(new1.id, 1.1)
    actions = sup.decide(1.1)
    assert of(Stop, actions) == [first]
    (new2,) = spawn(sup, actions)
    assert second.phase is Phase.RETIRING, "still serving until its replacement is ready"
    sup.ready(new2.id, 1.2)
    assert of(Stop, sup.decide(1.2)) == [second]


# -- reload (HUP) --------------------------------------------------------------------------------


def test_reload_rolls_one_worker_at_a_time() -> None:
    sup = supervisor(workers=3)
    old = start(sup)
    sup.reload()
    assert sup.generation == 2
    now, stopped = 1.0, []
    actions = sup.decide(now)
    while True:
        booting = spawn(sup, actions)
        stopped += of(Stop, actions)
        assert len(booting) <= 1, "one new worker at a time"
        assert len(serving(sup)) >= 3, "capacity never drops during a rollout"
        for worker in of(Stop, actions):
            sup.exited(worker.id, 0, now)
        if not booting:
            break
        assert all(w.generation == 2 for w in booting)
        now += 1.0
        sup.ready(booting[0].id, now)
        actions = sup.decide(now)
    assert stopped == old, "the old workers, oldest first"
    assert all(w.reason == "reload" for w in stopped)
    assert sorted(w.generation for w in sup.workers.values()) == [2, 2, 2]
    assert sup.decide(now + 1) == []


def test_rollout_stops_when_a_new_worker_fails_to_boot_and_old_workers_keep_serving() -> None:
    sup = supervisor(workers=2)
    old = start(sup)
    sup.reload()
    (new,) = spawn(sup, sup.decide(1.0))
    sup.exited(new.id, 3, 1.2)  # the new app does not import
    assert sup.replacement_blocked_generation == 2
    for now in (1.5, 5.0, 60.0, 3600.0):
        for worker in old:
            sup.heartbeat(worker.id, {}, now)
        assert sup.decide(now) == [], "no respawn, no stop: the old workers serve on"
    assert serving(sup) == old and all(w.phase is Phase.READY for w in old)

    sup.reload()  # fixed, reloaded again: the rollout resumes
    for worker in old:
        sup.heartbeat(worker.id, {}, 4000.0)
    (fixed,) = spawn(sup, sup.decide(4000.0))
    assert fixed.generation == 3
    sup.ready(fixed.id, 4001.0)
    assert of(Stop, sup.decide(4001.0)) == [old[0]]


def test_rollout_stops_when_a_new_worker_dies_soon_after_ready() -> None:
    sup = supervisor(workers=2)
    old = start(sup)
    sup.reload()
    (new,) = spawn(sup, sup.decide(1.0))
    sup.ready(new.id, 1.5)
    actions = sup.decide(1.5)
    assert of(Stop, actions) == [old[0]]
    (second,) = spawn(sup, actions)  # the rollout goes on: the next new worker boots
    sup.exited(old[0].id, 0, 1.75)
    sup.exited(new.id, -signal.SIGSEGV, 1.5 + STABLE_AFTER / 2)  # the new code crashes
    assert sup.replacement_blocked_generation == 2
    assert sup.decide(4.5) == [], "no more new workers"
    sup.ready(second.id, 5.0)
    for now in (5.0, 8.0):
        sup.heartbeat(old[1].id, {}, now)
        assert sup.decide(now) == [], "the last old worker is kept"
    assert serving(sup) == [old[1], second]


def test_rollout_blocked_still_replaces_missing_capacity() -> None:
    sup = supervisor(workers=2)
    old = start(sup)
    sup.reload()
    (new,) = spawn(sup, sup.decide(1.0))
    sup.exited(new.id, 3, 1.1)
    sup.heartbeat(old[1].id, {}, 100.0)
    sup.exited(old[0].id, -signal.SIGKILL, 100.0)  # an old worker dies later on
    (again,) = spawn(sup, sup.decide(100.0))
    assert again.generation == 2


# -- crash loops -------------------------------------------------------------------------------


def test_first_generation_boot_failure_exits_3() -> None:
    sup = supervisor(workers=2)
    first, _ = spawn(sup, sup.decide(0.0))
    sup.exited(first.id, 3, 0.5)
    (done,) = exits(sup.decide(0.5))
    assert done.code == EXIT_BOOT_FAILURE == 3
    assert "first workers failed to boot" in done.reason


def test_crash_loop_backs_off_then_gives_up_when_nothing_serves() -> None:
    sup = supervisor(workers=1)
    (worker,) = start(sup)
    now = STABLE_AFTER * 10
    sup.exited(worker.id, 0, now)  # a stable worker dies: replaced at once
    (worker,) = spawn(sup, sup.decide(now))
    delays = []
    for failure in range(1, MAX_BOOT_FAILURES + 1):
        sup.exited(worker.id, 3, now)
        delay = min(BACKOFF_BASE * 2 ** (failure - 1), BACKOFF_MAX)
        delays.append(delay)
        if failure == MAX_BOOT_FAILURES:
            (done,) = exits(sup.decide(now))
            assert done.code == EXIT_BOOT_FAILURE
            assert f"{MAX_BOOT_FAILURES} workers in a row" in done.reason
            break
        assert sup.decide(now + delay * 0.99) == [], "backing off"
        now += delay
        (worker,) = spawn(sup, sup.decide(now))
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_backoff_is_capped_and_never_gives_up_while_a_worker_serves() -> None:
    sup = supervisor(workers=2)
    keeper, worker = start(sup)
    now, delays = 0.0, []
    for _ in range(MAX_BOOT_FAILURES * 2):
        sup.exited(worker.id, 3, now)
        delays.append(sup.next_spawn_at - now)
        now = sup.next_spawn_at
        sup.heartbeat(keeper.id, {}, now)
        actions = sup.decide(now)
        assert exits(actions) == [], "a worker still serves: never give up"
        (worker,) = spawn(sup, actions)
    assert max(delays) == delays[-1] == BACKOFF_MAX
    assert keeper.phase is Phase.READY


def test_crash_loop_spawns_one_worker_at_a_time() -> None:
    sup = supervisor(workers=3)
    workers = start(sup)
    for worker in workers[:2]:
        sup.exited(worker.id, -signal.SIGKILL, 1.0)  # died soon after ready: crash loop
    assert len(spawn(sup, sup.decide(1.0 + BACKOFF_MAX))) == 1


def test_boot_failures_are_forgiven_once_a_new_worker_is_stable() -> None:
    sup = supervisor(workers=1)
    (worker,) = start(sup)
    now = 0.0
    for _ in range(MAX_BOOT_FAILURES - 1):
        sup.exited(worker.id, -signal.SIGKILL, now + 1.0)  # crashes soon after ready
        now = sup.next_spawn_at
        (worker,) = spawn(sup, sup.decide(now))
        sup.ready(worker.id, now)
    assert sup.boot_failures == MAX_BOOT_FAILURES - 1
    now += STABLE_AFTER
    sup.heartbeat(worker.id, {}, now)
    assert sup.decide(now) == []
    assert sup.boot_failures == 0, "a stable worker ends the crash loop"
    # Days later the worker recycles and its replacement crashes early, once: that is
    # one failure, not the last straw of an old crash loop.
    now += 86400.0
    sup.heartbeat(worker.id, {}, now)
    sup.retiring(worker.id, "max_requests")
    (new,) = spawn(sup, sup.decide(now))
    sup.ready(new.id, now + 0.5)
    assert of(Stop, sup.decide(now + 0.5)) == [worker]
    sup.exited(worker.id, 0, now + 1.0)
    sup.exited(new.id, -signal.SIGKILL, now + 2.0)
    assert sup.boot_failures == 1
    actions = sup.decide(now + 2.0 + BACKOFF_BASE)
    assert exits(actions) == [] and len(of(Spawn, actions)) == 1


def test_stable_worker_death_is_replaced_at_once() -> None:
    sup = supervisor(workers=2)
    worker, _ = start(sup)
    now = STABLE_AFTER + 1
    sup.exited(worker.id, -signal.SIGKILL, now)
    assert sup.boot_failures == 0
    (new,) = spawn(sup, sup.decide(now))
    assert new.generation == 1


# -- timeouts ------------------------------------------------------------------------------------


def test_heartbeat_timeout_sends_abrt_then_kill_after_the_grace() -> None:
    """ABRT, as gunicorn sends on --timeout: the worker runs worker_abort and exits."""
    sup = supervisor(workers=1)
    (worker,) = start(sup)
    sup.heartbeat(worker.id, {"requests": 3}, 1.0)
    assert worker.stats == {"requests": 3}
    assert sup.decide(1.0 + TIMEOUT) == [], "exactly the timeout: not yet"
    now = 1.0 + TIMEOUT + 0.5
    (abort,) = sup.decide(now)
    assert isinstance(abort, Kill) and abort.worker is worker and abort.signum == signal.SIGABRT
    assert "no heartbeat" in abort.reason and worker.phase is Phase.TERMINATING
    assert sup.decide(now + KILL_GRACE) == [], "exactly the grace: not yet"
    (kill,) = sup.decide(now + KILL_GRACE + 0.01)
    assert isinstance(kill, Kill) and kill.signum == signal.SIGKILL
    assert kill.worker.phase is Phase.KILLED
    assert sup.decide(now + KILL_GRACE + 10) == [], "killed once"
    sup.exited(worker.id, -signal.SIGKILL, now + KILL_GRACE + 10)
    (new,) = spawn(sup, sup.decide(now + KILL_GRACE + 10))
    assert new is not worker


def test_heartbeats_keep_a_worker_alive() -> None:
    sup = supervisor(workers=1)
    (worker,) = start(sup)
    for beat in range(1, 100):
        sup.heartbeat(worker.id, {}, beat * TIMEOUT / 2)
        assert sup.decide(beat * TIMEOUT / 2 + TIMEOUT / 4) == []


def test_boot_timeout_sends_term_then_kill() -> None:
    sup = supervisor(workers=1)
    (worker,) = spawn(sup, sup.decide(0.0))
    assert sup.decide(BOOT_TIMEOUT) == []
    (term,) = sup.decide(BOOT_TIMEOUT + 0.5)
    assert isinstance(term, Kill) and term.signum == signal.SIGTERM
    assert "boot timeout" in term.reason
    assert sup.decide(BOOT_TIMEOUT + 0.5 + KILL_GRACE / 2) == []
    (kill,) = sup.decide(BOOT_TIMEOUT + 0.5 + KILL_GRACE + 0.01)
    assert isinstance(kill, Kill) and kill.signum == signal.SIGKILL
    sup.exited(worker.id, -signal.SIGKILL, BOOT_TIMEOUT + 4)
    (done,) = exits(sup.decide(BOOT_TIMEOUT + 4))
    assert done.code == EXIT_BOOT_FAILURE


def test_stopping_worker_is_killed_after_the_graceful_timeout() -> None:
    sup = supervisor(workers=1)
    (worker,) = start(sup)
    sup.retiring(worker.id, "max_requests")
    (new,) = spawn(sup, sup.decide(1.0))
    sup.ready(new.id, 2.0)
    assert of(Stop, sup.decide(2.0)) == [worker]
    deadline = 2.0 + GRACE + STOP_MARGIN
    sup.heartbeat(new.id, {}, deadline)
    assert sup.decide(deadline) == []
    (term,) = sup.decide(deadline + 0.5)
    assert isinstance(term, Kill) and term.worker is worker and term.signum == signal.SIGTERM
    assert "graceful timeout" in term.reason
    sup.heartbeat(new.id, {}, deadline + KILL_GRACE)
    (kill,) = sup.decide(deadline + 0.5 + KILL_GRACE + 0.01)
    assert isinstance(kill, Kill) and kill.signum == signal.SIGKILL


# -- scaling (TTIN / TTOU) -----------------------------------------------------------------------


def test_scale_up_and_down_never_below_one() -> None:
    sup = supervisor(workers=2)
    first, second = start(sup)
    sup.scale(sup.desired + 1)  # TTIN
    (third,) = spawn(sup, sup.decide(1.0))
    sup.ready(third.id, 1.0)
    assert sup.decide(1.0) == []
    sup.scale(sup.desired - 1)  # TTOU: the oldest goes
    (stop,) = sup.decide(2.0)
    assert isinstance(stop, Stop) and stop.worker is first and stop.graceful
    assert stop.reason == "scale down"
    sup.exited(first.id, 0, 2.1)
    sup.scale(sup.desired - 1)
    assert of(Stop, sup.decide(3.0)) == [second]
    sup.exited(second.id, 0, 3.1)
    sup.scale(sup.desired - 1)
    assert sup.desired == 1
    assert sup.decide(4.0) == [], "never below one worker"
    assert serving(sup) == [third]


# -- stopping ------------------------------------------------------------------------------------


@pytest.mark.parametrize("graceful", [True, False])
def test_stop_stops_every_worker_and_exits_0_once_all_are_dead(graceful: bool) -> None:
    sup = supervisor(workers=2)
    workers = start(sup)
    sup.scale(3)
    (booting,) = spawn(sup, sup.decide(1.0))
    sup.stop(graceful)
    actions = sup.decide(2.0)
    stops = [a for a in actions if isinstance(a, Stop)]
    assert [s.worker for s in stops] == [*workers, booting]
    assert all(s.graceful is graceful for s in stops)
    assert all(s.timeout == (GRACE if graceful else 0.0) for s in stops)
    assert exits(actions) == []
    assert sup.decide(2.1) == [], "each worker is asked once"
    for worker in workers:
        sup.exited(worker.id, 0, 2.5)
        assert exits(sup.decide(2.5)) == []
    sup.exited(booting.id, 0, 2.6)
    (done,) = sup.decide(2.6)
    assert done == Exit(0, "stopped")


def test_stop_escalates_a_worker_that_outlives_its_deadline() -> None:
    """The same rule as any stop: TERM past the deadline, KILL after the grace."""
    sup = supervisor(workers=1)
    (worker,) = start(sup)
    sup.stop(True)
    sup.decide(0.0)
    assert sup.decide(GRACE + STOP_MARGIN) == []
    (term,) = sup.decide(GRACE + STOP_MARGIN + 0.5)
    assert isinstance(term, Kill) and term.signum == signal.SIGTERM
    (kill,) = sup.decide(GRACE + STOP_MARGIN + 0.5 + KILL_GRACE + 0.01)
    assert isinstance(kill, Kill) and kill.signum == signal.SIGKILL
    assert sup.decide(GRACE + STOP_MARGIN + KILL_GRACE + 1) == []
    sup.exited(worker.id, -signal.SIGKILL, 9.0)
    assert exits(sup.decide(9.0)) == [Exit(0, "stopped")]


def test_a_fast_stop_is_not_downgraded_to_graceful() -> None:
    sup = supervisor(workers=1)
    sup.stop(False)
    sup.stop(True)
    assert sup.stopping == "fast"


def test_a_fast_stop_during_a_graceful_one_hurries_the_draining_workers() -> None:
    sup = supervisor(workers=2)
    workers = start(sup)
    sup.stop(True)
    assert all(s.graceful for s in sup.decide(1.0) if isinstance(s, Stop))
    sup.stop(False)  # a second Ctrl-C
    hurried = [a for a in sup.decide(2.0) if isinstance(a, Stop)]
    assert [s.worker for s in hurried] == workers
    assert not any(s.graceful for s in hurried)
    assert sup.decide(2.1) == [], "each worker is hurried once"
    kills = [a for a in sup.decide(2.0 + STOP_MARGIN + 0.1) if isinstance(a, Kill)]
    assert [k.worker for k in kills] == workers, "the deadline shrank to the fast one"


def test_deaths_while_stopping_are_not_replaced_nor_crash_loops() -> None:
    sup = supervisor(workers=2)
    first, _ = start(sup)
    sup.stop(True)
    sup.decide(0.5)
    sup.exited(first.id, -signal.SIGKILL, 0.6)
    assert sup.boot_failures == 0
    assert of(Spawn, sup.decide(0.7)) == []


# -- the lifecycle table ----------------------------------------------------------------------


LEGAL = [(a, b) for a in Phase for b in Phase if b in TRANSITIONS[a]]
ILLEGAL = [(a, b) for a in Phase for b in Phase if b not in TRANSITIONS[a]]


@pytest.mark.parametrize(("before", "after"), LEGAL, ids=[f"{a.value}-{b.value}" for a, b in LEGAL])
def test_legal_transitions(before: Phase, after: Phase) -> None:
    worker = WorkerRecord(1, 1, 0.0, phase=before)
    worker.to(after)
    assert worker.phase is after


@pytest.mark.parametrize(
    ("before", "after"), ILLEGAL, ids=[f"{a.value}-{b.value}" for a, b in ILLEGAL]
)
def test_illegal_transitions_raise(before: Phase, after: Phase) -> None:
    worker = WorkerRecord(1, 1, 0.0, phase=before)
    with pytest.raises(IllegalTransition, match=f"{before.value} -> {after.value}"):
        worker.to(after)
    assert worker.phase is before


def test_the_table_is_the_documented_lifecycle() -> None:
    assert set(TRANSITIONS) == set(Phase)
    assert TRANSITIONS[Phase.DEAD] == frozenset(), "dead is final"
    assert Phase.BOOTING not in set().union(*TRANSITIONS.values()), "nothing goes back"
    assert all(Phase.DEAD in TRANSITIONS[p] for p in Phase if p is not Phase.DEAD)


def test_events_about_unknown_or_dead_workers_are_ignored() -> None:
    sup = supervisor(workers=1)
    (worker,) = start(sup)
    sup.ready(99, 1.0)
    sup.heartbeat(99, {}, 1.0)
    sup.retiring(99, "max_requests")
    assert sup.exited(99, 0, 1.0) is None
    sup.ready(worker.id, 2.0)  # a second "ready" changes nothing
    assert worker.ready_at == 0.0
    sup.exited(worker.id, 0, 10.0)
    assert sup.exited(worker.id, 0, 10.0) is None, "reaped once"
    assert worker.phase is Phase.DEAD and list(sup.dead) == [worker] and sup.exits == 1


def test_a_recycle_replacement_that_fails_to_boot_is_retried_with_backoff() -> None:
    sup = supervisor(workers=1)
    (old,) = start(sup)
    sup.retiring(old.id, "max_requests")
    (new,) = spawn(sup, sup.decide(1.0))
    sup.exited(new.id, 1, 1.25)  # a transient failure (out of fds, a service down)
    assert sup.replacement_blocked_generation is None
    assert sup.decide(1.25 + BACKOFF_BASE / 2) == [], "backing off, the old worker serves on"
    (again,) = spawn(sup, sup.decide(1.25 + BACKOFF_BASE))
    sup.ready(again.id, 2.0)
    assert of(Stop, sup.decide(2.0)) == [old]


def test_dead_records_are_bounded_the_count_is_not() -> None:
    sup = supervisor(workers=1)
    (worker,) = start(sup)
    now = STABLE_AFTER
    for _ in range(RECENT_DEAD * 3):
        now += STABLE_AFTER * 2
        sup.exited(worker.id, 0, now)
        (worker,) = spawn(sup, sup.decide(now))
        sup.ready(worker.id, now)
    assert sup.exits == RECENT_DEAD * 3
    assert len(sup.dead) == RECENT_DEAD


# -- the rules moved out of the arbiter ---------------------------------------------------------


def test_a_scale_at_run_time_survives_a_reload_unless_the_settings_change_the_count() -> None:
    sup = supervisor(workers=2)
    start(sup)
    sup.scale(4)  # ctl scale 4
    sup.reload(Settings(workers=2, timeout=TIMEOUT, boot_timeout=BOOT_TIMEOUT))
    assert sup.desired == 4, "the file still says 2: the run-time count stays"
    sup.reload(Settings(workers=3, timeout=99.0, boot_timeout=BOOT_TIMEOUT))
    assert sup.desired == 3, "the file now asks for 3"
    assert sup.timeout == 99.0


def test_a_worker_exiting_with_the_boot_error_status_failed_to_boot() -> None:
    sup = supervisor(workers=1)
    (worker,) = spawn(sup, sup.decide(0.0))
    sup.boot_error(worker.id, "ImportError: no module named app")
    exited = sup.exited(worker.id, WORKER_BOOT_ERROR, 0.5)
    assert exited is not None and not exited.expected
    assert worker.reason is Reason.BOOT_FAILED
    assert sup.last_error == "ImportError: no module named app"
    assert sup.boot_failures == 1


def test_a_failed_fork_is_a_failed_boot_with_its_reason() -> None:
    sup = supervisor(workers=1)
    (worker,) = of(Spawn, sup.decide(0.0))
    exited = sup.fork_failed(worker.id, "[Errno 11] Resource temporarily unavailable", 0.0)
    assert exited is not None and exited.worker is worker
    assert sup.last_error.startswith("cannot fork a worker: [Errno 11]")
    (done,) = exits(sup.decide(0.1))
    assert done.code == EXIT_BOOT_FAILURE


def test_the_exit_report_says_once_that_the_rollout_stopped() -> None:
    sup = supervisor(workers=2)
    start(sup)
    sup.reload()
    (new,) = spawn(sup, sup.decide(1.0))
    exited = sup.exited(new.id, WORKER_BOOT_ERROR, 1.2)
    assert exited is not None and exited.rollout_stopped
    assert sup.decide(1.3) == []
    for worker in serving(sup):
        sup.heartbeat(worker.id, {}, 1.5 + BACKOFF_MAX)
    assert sup.decide(1.5 + BACKOFF_MAX) == [], "the rollout stays stopped"


def test_recycles_are_counted_by_reason_not_by_text() -> None:
    sup = supervisor(workers=2)
    first, second = start(sup)
    sup.retiring(first.id, "max_requests")
    sup.retiring(second.id, "something else")
    assert first.reason is Reason.MAX_REQUESTS and second.reason is Reason.RETIRED
    for _ in (first, second):
        new = spawn(sup, sup.decide(1.0))
        for fresh in new:
            sup.ready(fresh.id, 1.0)
        sup.decide(1.0)
    sup.exited(first.id, 0, 2.0)
    sup.exited(second.id, 0, 2.0)
    assert sup.recycles == 1
    assert sup.exits_by_reason == {Reason.MAX_REQUESTS: 1, Reason.RETIRED: 1}


def test_a_stop_that_cannot_be_delivered_escalates_at_once() -> None:
    sup = supervisor(workers=1)
    (worker,) = start(sup)
    sup.stop(True)
    sup.decide(1.0)
    (term,) = sup.undeliverable(worker.id, 1.0)
    assert term.signum == signal.SIGTERM and worker.phase is Phase.TERMINATING
    assert sup.undeliverable(worker.id, 1.1) == [], "only a stopping worker"

    fast = supervisor(workers=1)
    (worker,) = start(fast)
    fast.stop(False)
    fast.decide(1.0)
    (kill,) = fast.undeliverable(worker.id, 1.0)
    assert kill.signum == signal.SIGKILL and worker.phase is Phase.KILLED


def test_a_worker_killed_for_a_timeout_holds_its_place_until_reaped() -> None:
    """Replaced when its death is known, as a crash (with its backoff), not before."""
    sup = supervisor(workers=1)
    (worker,) = start(sup)
    now = TIMEOUT + 1.0
    (abort,) = sup.decide(now)
    assert isinstance(abort, Kill) and abort.worker is worker and abort.signum == signal.SIGABRT
    assert worker.phase is Phase.TERMINATING
    assert of(Spawn, sup.decide(now + 0.1)) == []
    exited = sup.exited(worker.id, 1, now + 0.2)  # the worker's ABRT handler exits 1
    assert exited is not None and not exited.expected
    assert worker.reason is Reason.HEARTBEAT_TIMEOUT
    assert len(of(Spawn, sup.decide(now + 0.3))) == 1


@pytest.mark.parametrize("phase", list(ESCALATION))
def test_every_escalation_is_a_legal_transition(phase: Phase) -> None:
    after, signum = ESCALATION[phase]
    assert after in TRANSITIONS[phase]
    # ABRT for a serving worker (only its heartbeat timeout makes it overdue), TERM for
    # one that does not boot or stop in time, KILL after that.
    expected = signal.SIGABRT if phase in SERVING else signal.SIGTERM
    assert signum == (signal.SIGKILL if phase is Phase.TERMINATING else expected)
    assert Phase.KILLED in TRANSITIONS[Phase.STOPPING], "a fast stop goes straight to KILL"


# -- drain delay (issue 12) ----------------------------------------------------------------------

DRAIN = 3.0


def test_term_with_a_drain_delay_turns_health_503_at_once_and_stops_after_it() -> None:
    sup = supervisor(workers=2, drain_delay=DRAIN)
    workers = start(sup)
    assert sup.health() == (True, "ok: 2/2 workers ready")
    sup.stop(True, now=1.0)
    healthy, why = sup.health()
    assert not healthy and why.startswith("stopping (graceful)")
    assert sup.draining(1.0) and sup.draining(1.0 + DRAIN - 0.01)
    assert sup.decide(1.0) == [], "the workers serve on: no stop during the drain"
    assert sup.decide(1.0 + DRAIN - 0.01) == []
    assert all(w.phase is Phase.READY for w in workers)
    assert sup.stop_began is None
    stops = of(Stop, sup.decide(1.0 + DRAIN))
    assert stops == workers and not sup.draining(1.0 + DRAIN)
    assert sup.stop_began == 1.0 + DRAIN


def test_a_fast_stop_cuts_the_drain_short() -> None:
    sup = supervisor(workers=1, drain_delay=DRAIN)
    (worker,) = start(sup)
    sup.stop(True, now=1.0)
    assert sup.decide(1.5) == []
    sup.stop(False)
    (stop,) = sup.decide(1.6)
    assert isinstance(stop, Stop) and stop.worker is worker and not stop.graceful


def test_a_stop_without_drain_skips_the_delay() -> None:
    """A hand-over to a new arbiter (USR2): the new one serves already, no drain."""
    sup = supervisor(workers=1, drain_delay=DRAIN)
    (worker,) = start(sup)
    sup.stop(True, now=1.0, drain=False)
    assert of(Stop, sup.decide(1.0)) == [worker]


def test_no_drain_delay_stops_at_once_and_a_stop_without_a_clock_never_drains() -> None:
    sup = supervisor(workers=1)
    (worker,) = start(sup)
    sup.stop(True, now=1.0)
    assert of(Stop, sup.decide(1.0)) == [worker]
    other = supervisor(workers=1, drain_delay=DRAIN)
    (second,) = start(other)
    other.stop(True)
    assert of(Stop, other.decide(1.0)) == [second]


def test_health_needs_a_ready_worker() -> None:
    sup = supervisor(workers=2)
    assert sup.health() == (False, "no worker ready (0/0)")
    booting = spawn(sup, sup.decide(0.0))
    assert sup.health() == (False, "no worker ready (0/2)")
    sup.ready(booting[0].id, 0.1)
    assert sup.health() == (True, "ok: 1/2 workers ready")


def test_rollout_done_after_a_reload_once_no_old_worker_serves() -> None:
    sup = supervisor(workers=1)
    (old,) = start(sup)
    assert sup.rollout_done()
    sup.reload()
    assert not sup.rollout_done()
    (new,) = spawn(sup, sup.decide(1.0))
    sup.ready(new.id, 1.1)
    assert not sup.rollout_done(), "the old worker still serves"
    assert of(Stop, sup.decide(1.2)) == [old]
    assert sup.rollout_done()


def test_settings_carry_the_drain_delay() -> None:
    sup = Supervisor.from_settings(Settings(workers=1, drain_delay=2.5))
    assert sup.drain_delay == 2.5
    sup.reload(Settings(workers=1, drain_delay=0.5))
    assert sup.drain_delay == 0.5
