"""The event machinery, without sockets."""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

import pytest

from pulsar_arbiter import EventHandler, OneTime
from tests.conftest import Runner


class Thing(EventHandler):
    ONE_TIME_EVENTS = ("start", "stop")
    MANY_TIMES_EVENTS = ("tick",)


def recorder() -> tuple[list[tuple[Any, dict[str, Any]]], Any]:
    calls: list[tuple[Any, dict[str, Any]]] = []

    def callback(arg: Any, **kw: Any) -> None:
        calls.append((arg, kw))

    return calls, callback


def test_many_times_event_calls_every_callback_each_fire() -> None:
    thing = Thing()
    calls, callback = recorder()
    thing.bind_event("tick", callback)
    thing.fire_event("tick")
    thing.fire_event("tick", 5, extra=1)
    assert calls == [(thing, {}), (5, {"extra": 1})]


def test_arg_defaults_to_sender() -> None:
    thing = Thing()
    calls, callback = recorder()
    thing.bind_event("start", callback)
    thing.fire_event("start")
    assert calls == [(thing, {})]


def test_one_time_fires_once() -> None:
    thing = Thing()
    calls, callback = recorder()
    thing.bind_event("start", callback)
    assert thing.fire_event("start", 1) is True
    assert thing.fire_event("start", 2) is False
    assert calls == [(1, {})]
    assert thing.has_fired("start")
    assert not thing.has_fired("stop")


def test_callback_bound_after_fire_runs_at_once() -> None:
    thing = Thing()
    thing.fire_event("stop", "done", reason="x")
    calls, callback = recorder()
    thing.bind_event("stop", callback)
    assert calls == [("done", {"reason": "x"})]


def test_failing_callback_is_logged_and_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    thing = Thing()
    calls, callback = recorder()

    def boom(arg: Any, **kw: Any) -> None:
        raise ValueError("boom")

    thing.bind_event("tick", boom)
    thing.bind_event("tick", callback)
    with caplog.at_level(logging.ERROR):
        thing.fire_event("tick")
    assert calls == [(thing, {})]
    assert "boom" in caplog.text


def test_remove_callback() -> None:
    thing = Thing()
    calls, callback = recorder()
    thing.bind_event("tick", callback)
    assert thing.remove_callback("tick", callback)
    assert not thing.remove_callback("tick", callback)
    assert not thing.remove_callback("start", callback)
    thing.fire_event("tick")
    assert calls == []


def test_unknown_event_is_an_error() -> None:
    thing = Thing()
    with pytest.raises(KeyError, match="nope"):
        thing.fire_event("nope")
    with pytest.raises(KeyError, match="nope"):
        thing.bind_event("nope", print)
    with pytest.raises(TypeError):
        thing.bind_event("tick", "not callable")  # type: ignore[arg-type]


def test_instance_may_declare_more_events() -> None:
    thing = Thing(one_time_events=("ready",), many_times_events=("beat",))
    calls, callback = recorder()
    thing.bind_event("beat", callback)
    thing.fire_event("beat")
    thing.fire_event("ready")
    assert thing.has_fired("ready")
    assert calls == [(thing, {})]
    assert "ready" not in Thing()._one_time_names


def test_firing_with_no_callbacks_creates_no_many_times_event() -> None:
    thing = Thing()
    for _ in range(3):
        thing.fire_event("tick")
    assert not thing._events


def test_copy_many_times_events() -> None:
    source, target = Thing(), Thing()
    calls, callback = recorder()
    source.bind_event("tick", callback)
    target.copy_many_times_events(source)
    target.fire_event("tick")
    assert calls == [(target, {})]


def test_one_time_is_awaitable(run: Runner) -> None:
    async def main() -> None:
        thing = Thing()
        asyncio.get_running_loop().call_soon(thing.fire_event, "start", 42)
        assert await thing.event("start") == 42
        # Awaiting again, after it fired, resolves at once.
        assert await thing.event("start") == 42

    run(main())


def test_one_time_awaited_raises_its_exc(run: Runner) -> None:
    async def main() -> None:
        thing = Thing()
        thing.fire_event("stop", exc=RuntimeError("failed"))
        with pytest.raises(RuntimeError, match="failed"):
            await thing.event("stop")

    run(main())


def test_coroutine_callback_runs_as_task(run: Runner) -> None:
    async def main() -> None:
        thing = Thing()
        done = asyncio.get_running_loop().create_future()

        async def callback(arg: Any, **kw: Any) -> None:
            await asyncio.sleep(0)
            done.set_result(arg)

        thing.bind_event("start", callback)
        thing.fire_event("start", "x")
        assert await asyncio.wait_for(done, 1) == "x"

    run(main())


def test_one_time_event_api() -> None:
    ev = OneTime("x")
    _, callback = recorder()
    ev.bind(callback)
    assert ev.handlers == (callback,)
    assert not ev.fired()
    ev.fire(1, exc=ValueError("v"))
    assert ev.fired()
    assert ev.result == 1
    assert isinstance(ev.exception, ValueError)
    assert not ev.handlers


def test_a_cancelled_awaiter_does_not_cancel_the_event(run: Runner) -> None:
    async def main() -> None:
        thing = Thing()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(thing.event("start"), 0.01)
        asyncio.get_running_loop().call_soon(thing.fire_event, "start", 7)
        assert await thing.event("start") == 7

    run(main())


def test_every_awaiter_of_a_one_time_event_sees_it_and_cancelled_ones_are_dropped(
    run: Runner,
) -> None:
    """Each await has its own future: many awaiters all resume with the argument, one
    cancelled leaves the others waiting, and abandoned waits do not pile up."""

    async def main() -> None:
        thing = Thing()
        event = thing.event("start")
        for _ in range(100):  # a deadline that keeps expiring, as on connection_lost
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(event, 0)
        pending = getattr(event, "_awaiters", None) or []
        assert len(pending) <= 32
        awaiters = [asyncio.ensure_future(asyncio.wait_for(event, 5)) for _ in range(3)]
        cancelled = asyncio.ensure_future(asyncio.wait_for(event, 5))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.sleep(0)
        thing.fire_event("start", "go")
        assert await asyncio.gather(*awaiters) == ["go", "go", "go"]
        assert cancelled.cancelled()
        assert await event == "go"

    run(main())


def test_a_many_times_event_awaits_its_next_firing(run: Runner) -> None:
    """Every event is awaitable, with no cast: a many-times one for its next firing."""

    async def main() -> None:
        thing = Thing()
        thing.fire_event("tick", 1)  # before anyone waits: not seen
        loop = asyncio.get_running_loop()
        loop.call_soon(thing.fire_event, "tick", 2)
        assert await thing.event("tick") == 2
        loop.call_soon(partial(thing.fire_event, "tick", None, exc=ValueError("bad tick")))
        with pytest.raises(ValueError, match="bad tick"):
            await thing.event("tick")
        # A cancelled awaiter does not stop the others from seeing the firing.
        first = asyncio.ensure_future(asyncio.wait_for(thing.event("tick"), 0.01))
        second = asyncio.ensure_future(thing.event("tick").waiter())
        with pytest.raises(asyncio.TimeoutError):
            await first
        thing.fire_event("tick", 3)
        assert await second == 3

    run(main())


def test_finished_ok_only_without_an_error() -> None:
    from pulsar_arbiter import ProtocolConsumer

    ok, failed = ProtocolConsumer(), ProtocolConsumer()
    before = ok.finished_ok
    ok.finished()
    failed.finished(ConnectionResetError("gone"))
    assert (before, ok.finished_ok, failed.finished_ok) == (False, True, False)
