"""The supervisor's rules for supervised actors, driven with plain numbers for time.

The same lifecycle as a worker (boot and heartbeat timeouts, TERM then KILL, a graceful
stop), plus their own: one process per name, a reload stops the old one before starting
the new one, crash-loop backoff per actor, retried forever without stopping the arbiter.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable

import pytest

from pulsar_arbiter.runtime.exits import WORKER_BOOT_ERROR
from pulsar_arbiter.runtime.supervisor import (
    BACKOFF_BASE,
    BACKOFF_MAX,
    KILL_GRACE,
    STABLE_AFTER,
    Action,
    Exit,
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

SETTINGS = Settings(workers=1, timeout=10.0, boot_timeout=20.0, graceful_timeout=5.0)


def supervisor(*actors: str) -> Supervisor:
    return Supervisor.from_settings(Settings(**{**SETTINGS.__dict__, "actors": tuple(actors)}))


def spawned(actions: Iterable[Action], sup: Supervisor) -> list[WorkerRecord]:
    """Carry out the Spawn actions (a fake pid each) and return their records."""
    records = [a.worker for a in actions if isinstance(a, Spawn)]
    for record in records:
        sup.spawned(record.id, 1000 + record.id)
    return records


def actors_of(records: Iterable[WorkerRecord]) -> list[str | None]:
    return [r.actor for r in records]


def start(sup: Supervisor, now: float = 0.0) -> dict[str | None, WorkerRecord]:
    """Spawn everything and make it ready; the records by actor name (None: a worker)."""
    records = spawned(sup.decide(now), sup)
    for record in records:
        sup.ready(record.id, now)
    return {r.actor: r for r in records}


def test_each_actor_is_one_process_beside_the_workers() -> None:
    sup = supervisor("scheduler", "mailer")
    records = start(sup)
    assert sorted(filter(None, records)) == ["mailer", "scheduler"]
    assert len(sup.workers) == 1 and len(sup.actors) == 2
    assert sup.counts()["ready"] == 1, "actors are not counted as workers"
    assert sup.decide(1.0) == [], "nothing more to start"
    report = {a["name"]: a for a in sup.actor_report(1.0)}
    assert report["scheduler"]["phase"] == "ready" and not report["scheduler"]["failing"]


def test_an_actor_that_crashes_at_boot_backs_off_and_never_stops_the_arbiter() -> None:
    sup = supervisor("broken")
    now = 0.0
    records = start(sup, now)
    actor = records["broken"]
    delays = []
    for _ in range(8):  # far more than the workers' MAX_BOOT_FAILURES
        sup.exited(actor.id, WORKER_BOOT_ERROR, now)
        assert sup.decide(now) == [], "restarted only after the backoff"
        state = sup.actor_states["broken"]
        delays.append(state.next_spawn_at - now)
        now = state.next_spawn_at
        actions = sup.decide(now)
        assert not any(isinstance(a, Exit) for a in actions)
        (actor,) = spawned(actions, sup)
        assert actor.actor == "broken"
    assert delays[:3] == [BACKOFF_BASE, BACKOFF_BASE * 2, BACKOFF_BASE * 4]
    assert delays[-1] == BACKOFF_MAX
    report = sup.actor_report(now)[0]
    assert report["failing"] and report["restarts"] == 8 and report["failures"] == 8
    assert sup.workers, "the worker serves on"


def test_an_actor_serving_for_a_while_is_forgiven_its_failures() -> None:
    sup = supervisor("flaky")
    actor = start(sup)["flaky"]
    sup.exited(actor.id, 1, 0.1)
    (actor,) = spawned(sup.decide(BACKOFF_BASE + 0.1), sup)
    sup.ready(actor.id, 1.0)
    sup.heartbeat(actor.id, {}, 1.0 + STABLE_AFTER)
    sup.decide(1.0 + STABLE_AFTER)
    assert not sup.actor_report(1.0 + STABLE_AFTER)[0]["failing"]
    # A death after serving a long time is replaced at once, without backoff.
    now = 1.0 + STABLE_AFTER + 1
    sup.exited(actor.id, -signal.SIGKILL, now)
    assert actors_of(spawned(sup.decide(now), sup)) == ["flaky"]


def test_an_actor_that_stops_beating_gets_abrt_then_kill() -> None:
    sup = supervisor("stuck")
    actor = start(sup)["stuck"]
    for record in sup.workers.values():  # the worker beats, the actor does not
        sup.heartbeat(record.id, {}, 10.5)
    (kill,) = [a for a in sup.decide(10.5) if isinstance(a, Kill)]
    assert kill.worker is actor and kill.signum == signal.SIGABRT
    assert actor.reason is Reason.HEARTBEAT_TIMEOUT
    (kill,) = [a for a in sup.decide(10.6 + KILL_GRACE) if isinstance(a, Kill)]
    assert kill.signum == signal.SIGKILL and actor.phase is Phase.KILLED


def test_a_reload_stops_the_old_actor_before_starting_the_new_one() -> None:
    sup = supervisor("scheduler")
    old = start(sup)["scheduler"]
    sup.reload()
    actions = sup.decide(1.0)
    stops = [a for a in actions if isinstance(a, Stop) and a.worker.actor]
    assert [s.worker for s in stops] == [old] and stops[0].graceful
    assert not [a for a in actions if isinstance(a, Spawn) and a.worker.actor], (
        "never two schedulers at once"
    )
    sup.exited(old.id, 0, 2.0)
    new = [r for r in spawned(sup.decide(2.0), sup) if r.actor]
    assert actors_of(new) == ["scheduler"] and new[0].generation == 2
    assert sup.actor_states["scheduler"].restarts == 0, "a reload is not a crash"


def test_a_reload_adds_and_removes_actors() -> None:
    sup = supervisor("a", "b")
    records = start(sup)
    sup.reload(Settings(**{**SETTINGS.__dict__, "actors": ("b", "c")}))
    actions = sup.decide(1.0)
    stopped = {a.worker.actor for a in actions if isinstance(a, Stop)}
    assert {"a", "b"} <= stopped
    assert actors_of(a.worker for a in actions if isinstance(a, Spawn)).count("c") == 1
    sup.exited(records["a"].id, 0, 2.0)
    assert "a" not in sup.actor_states or not [
        r for r in spawned(sup.decide(2.0), sup) if r.actor == "a"
    ]
    assert [a["name"] for a in sup.actor_report(2.0)] == ["b", "c"]


def test_the_arbiter_stops_its_actors_and_exits_once_they_are_gone() -> None:
    sup = supervisor("scheduler")
    records = start(sup)
    sup.stop(True)
    stops = [a for a in sup.decide(1.0) if isinstance(a, Stop)]
    assert {s.worker.actor for s in stops} == {None, "scheduler"}
    assert all(s.graceful for s in stops)
    sup.exited(records[None].id, 0, 2.0)
    assert not any(isinstance(a, Exit) for a in sup.decide(2.0)), "the actor is not gone"
    sup.exited(records["scheduler"].id, 0, 2.5)
    assert [a for a in sup.decide(2.5) if isinstance(a, Exit)]
    assert not sup.actor_states["scheduler"].failures, "asked to stop: not a failure"


def test_an_actor_that_ignores_a_stop_is_killed() -> None:
    sup = supervisor("deaf")
    actor = start(sup)["deaf"]
    sup.stop(True)
    sup.decide(1.0)
    deadline = actor.deadline
    assert deadline is not None
    kills = [a for a in sup.decide(deadline + 0.1) if isinstance(a, Kill)]
    assert [k.worker for k in kills if k.worker.actor] == [actor]
    assert kills[-1].signum == signal.SIGTERM
