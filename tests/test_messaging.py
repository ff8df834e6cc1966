"""Actor messaging with real processes: commands between the arbiter, workers and actors.

The app is ``testapps.commands`` (whoami plus commands); ``relay`` makes a worker call
``send()`` itself, which is how a worker talks to the others (through the arbiter).
Calls from outside go through the control socket, as ``ctl call`` does.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulsar_arbiter.ops.control import request as control_request

from .runtime import REPO_ROOT, Arbiter, become_subreaper, live_children, report, wait_until, whoami

pytestmark = pytest.mark.timeout(90)

APP = "testapps.commands:WhoAmI"


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    become_subreaper()
    before = {p.pid for p in live_children()}
    yield
    left = [p for p in live_children() if p.pid not in before]
    assert not left, f"processes left behind: {left}"


def call(
    arbiter: Arbiter,
    name: str,
    to: str = "arbiter",
    args: dict[str, Any] | None = None,
    timeout: float = 5.0,
) -> Any:
    """``ctl call``: the answers, one per member."""
    answer = control_request(
        arbiter.control_socket,
        {"call": name, "to": to, "args": args or {}, "timeout": timeout},
        timeout + 10.0,
    )
    assert isinstance(answer, dict) and "answers" in answer, answer
    return answer["answers"]


def result(
    arbiter: Arbiter, name: str, to: str = "arbiter", args: dict[str, Any] | None = None
) -> Any:
    """The result of a call of one member; fails on an error."""
    (entry,) = call(arbiter, name, to, args, timeout=60.0).values()
    assert "result" in entry, entry
    return entry["result"]


def relay(arbiter: Arbiter, target: str, name: str, via: str = "worker:1", **kw: Any) -> Any:
    """``send(target, name, ...)`` made by the worker ``via``; its last answer."""
    out = result(arbiter, "relay", via, {"target": target, "name": name, **kw})
    return out["last"]


def actors(arbiter: Arbiter) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in arbiter.stats()["actors"]}


def wait_actor(arbiter: Arbiter, name: str, timeout: float = 10.0) -> dict[str, Any]:
    return wait_until(
        lambda: (a := actors(arbiter).get(name)) and a["phase"] == "ready" and a,
        timeout,
        f"actor {name} ready",
    )


def test_every_target_form_and_what_a_call_answers(tmp_path: Path) -> None:
    stop_file = tmp_path / "stopped"
    with Arbiter(
        tmp_path,
        APP,
        "--actor",
        "clock=testapps.commands:clock",
        workers=2,
        env={"ACTOR_STOP_FILE": str(stop_file)},
    ) as arbiter:
        arbiter.wait_serving()
        clock = wait_actor(arbiter, "clock")
        arbiter.remember([clock["pid"]])
        # From outside (the control socket), every target form.
        assert call(arbiter, "ping") == {"arbiter": {"result": "pong"}}
        pongs = call(arbiter, "ping", "workers")
        assert pongs == {"worker:1": {"result": "pong"}, "worker:2": {"result": "pong"}}
        assert result(arbiter, "ping", "worker:2") == "pong"
        assert call(arbiter, "ping", "actors") == {"actor:clock": {"result": "pong"}}
        value = {"nested": [1, 2.5, None, {"x": "é"}]}
        assert result(arbiter, "echo", "actor:clock", {"value": value}) == value
        me = result(arbiter, "whoami", "worker:1")
        assert me["name"] == "worker:1" and me["kind"] == "worker" and me["id"] == 1
        assert result(arbiter, "info", "actor:clock")["kind"] == "actor"
        assert result(arbiter, "info")["name"] == "arbiter"
        live = result(arbiter, "workers")
        assert [(w["id"], w["phase"]) for w in live] == [(1, "ready"), (2, "ready")]
        # Errors are answers: unknown command, unknown keyword, a command that raises.
        assert "unknown command" in call(arbiter, "nope", "worker:1")["worker:1"]["error"]
        assert (
            "unknown argument" in call(arbiter, "ping", "worker:1", {"x": 1})["worker:1"]["error"]
        )
        failed = call(arbiter, "fail", "workers", {"message": "hi"})
        assert failed["worker:2"]["error"] == "fail: ValueError: hi"
        assert failed["worker:2"]["type"] == "ValueError"
        # From a worker: send() to each form, routed by the arbiter.
        everyone = relay(arbiter, "workers", "whoami")
        assert {m: a["kind"] for m, a in everyone.items()} == {
            "worker:1": "worker",
            "worker:2": "worker",
        }
        assert relay(arbiter, "actor:clock", "whoami")["name"] == "actor:clock"
        assert relay(arbiter, "arbiter", "ping") == "pong"
        assert relay(arbiter, "worker:2", "fail") == {
            "error": "fail: ValueError: boom",
            "type": "ValueError",
        }
        assert relay(arbiter, "actors", "ping", via="actor:clock") == {"actor:clock": "pong"}
        # Security: a worker may not stop, reload or scale.
        for name in ("stop", "reload", "scale"):
            refused = relay(arbiter, "arbiter", name)
            assert "cannot be called by a worker" in refused["error"], refused
        # JSON only: the sender gets the TypeError, naming the argument.
        assert "argument 'value' is not JSON-serialisable" in result(
            arbiter, "bad_argument", "worker:1"
        )
        # ctl call from the command line: exit codes 0, 1 and 2.
        done = arbiter.ctl_cli("call", "echo", "--to", "workers", "value=[1,2]")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {
            "worker:1": {"result": [1, 2]},
            "worker:2": {"result": [1, 2]},
        }
        assert arbiter.ctl_cli("call", "echo", "value=text").returncode == 0
        assert arbiter.ctl_cli("call", "fail", "--to", "worker:1").returncode == 1
        assert arbiter.ctl_cli("call", "ping", "--to", "worker:99").returncode == 1
        assert arbiter.ctl_cli("call", "ping", "--to", "everyone").returncode == 2
        assert arbiter.ctl_cli("call", "ping", "novalue").returncode == 2
        # HUP rolls the actor too: the old one is cancelled, a new one starts.
        arbiter.send(signal.SIGHUP)
        rolled = wait_until(
            lambda: (
                (a := actors(arbiter)["clock"])["pid"] not in (None, clock["pid"])
                and a["phase"] == "ready"
                and a
            ),
            15.0,
            "the actor rolled",
        )
        arbiter.remember([rolled["pid"]])
        assert stop_file.read_text() == f"actor:clock {clock['pid']} stopped\n"
        # TERM: the actor stops gracefully (its callable is cancelled, then it exits).
        arbiter.send(signal.SIGTERM)
        assert arbiter.wait_exit(15.0) == 0
        assert stop_file.read_text().splitlines()[-1] == f"actor:clock {rolled['pid']} stopped"


def test_a_hung_command_times_out_and_10000_calls_leak_nothing(tmp_path: Path) -> None:
    with Arbiter(tmp_path, APP, workers=2) as arbiter:
        arbiter.wait_serving()
        started = time.monotonic()
        answers = call(arbiter, "hang", "workers", timeout=0.3)
        assert time.monotonic() - started < 3.0
        assert {a["type"] for a in answers.values()} == {"TimeoutError"}
        # 10,000 calls from worker 1 to a command that never answers, in worker 2.
        out = result(
            arbiter,
            "relay",
            "worker:1",
            {
                "target": "worker:2",
                "name": "hang",
                "timeout": 0.002,
                "times": 10_000,
                "concurrency": 16,
            },
        )
        assert out["calls"] == 10_000 and "error" in out["last"]
        report("hung_calls", calls=out["calls"], seconds=round(out["elapsed"], 2))

        def quiet() -> bool:
            me, other = result(arbiter, "info", "worker:1"), result(arbiter, "info", "worker:2")
            mine = result(arbiter, "info")
            return bool(
                me["calls_pending"] == 0
                # info is a plain command: answered at once, it runs no task
                and other["commands_running"] == 0
                and mine["calls_pending"] == 0
                and me["commands_running"] == 0
            )

        wait_until(quiet, 5.0, "no pending call and no command left running")
        assert whoami(arbiter.port)


def test_kill_9_of_a_worker_mid_call_answers_at_once(tmp_path: Path) -> None:
    with Arbiter(tmp_path, APP, workers=2) as arbiter:
        arbiter.wait_serving()
        pids = {w["id"]: w["pid"] for w in arbiter.workers()}
        got: dict[str, Any] = {}

        def hang() -> None:
            got.update(call(arbiter, "hang", "worker:1", timeout=20.0))

        thread = threading.Thread(target=hang, daemon=True)
        started = time.monotonic()
        thread.start()
        wait_until(
            lambda: result(arbiter, "info", "worker:1")["commands_running"] >= 1,
            5.0,
            "the hang running",
        )
        os.kill(pids[1], signal.SIGKILL)
        thread.join(10.0)
        elapsed = time.monotonic() - started
        assert got["worker:1"]["type"] == "ChannelClosed", got
        assert "exited before answering" in got["worker:1"]["error"]
        assert elapsed < 5.0, "the death is reported at once, not after the timeout"
        arbiter.wait_serving()


def test_a_group_call_during_a_hup_rollout(tmp_path: Path) -> None:
    with Arbiter(tmp_path, APP, workers=2) as arbiter:
        arbiter.wait_serving()
        seen: list[dict[str, Any]] = []
        stop = threading.Event()

        def caller() -> None:
            while not stop.is_set():
                seen.append(call(arbiter, "whoami", "workers", timeout=5.0))

        thread = threading.Thread(target=caller, daemon=True)
        thread.start()
        arbiter.send(signal.SIGHUP)
        arbiter.wait_workers(
            lambda ws: len(ws) == 2 and all(w["generation"] == 2 for w in ws),
            "generation 2",
            timeout=20.0,
        )
        stop.set()
        thread.join(10.0)
        assert len(seen) > 5
        members = set()
        for answers in seen:
            assert answers, "a call always reaches the live workers"
            for member, answer in answers.items():
                assert "result" in answer, (member, answer)
                assert answer["result"]["name"] == member
                members.add(member)
        assert {"worker:1", "worker:2"} < members, "old and new workers answered"


def test_an_actor_that_crashes_at_boot_backs_off_and_the_arbiter_serves_on(
    tmp_path: Path,
) -> None:
    with Arbiter(
        tmp_path,
        APP,
        "--actor",
        "bad=testapps.commands:crash_at_boot",
        "--actor",
        "sync=testapps.commands:not_async",
        "--actor",
        "gone=testapps.no_such_module:run",
        workers=1,
    ) as arbiter:
        arbiter.wait_serving()

        def failing() -> dict[str, dict[str, Any]] | None:
            found = actors(arbiter)
            ok = all(a["failing"] and a["restarts"] >= 2 for a in found.values())
            return found if ok and len(found) == 3 else None

        found = wait_until(failing, 15.0, "three failing actors, restarted twice")
        assert "RuntimeError: cannot start" in found["bad"]["last_error"]
        assert "must be an `async def`" in found["sync"]["last_error"]
        assert "No module named 'testapps.no_such_module'" in found["gone"]["last_error"]
        assert arbiter.exited() is None
        assert whoami(arbiter.port)
        assert call(arbiter, "ping", "actors") == {}, "no live actor: nobody to answer"


def test_a_command_flood_does_not_starve_requests(tmp_path: Path) -> None:
    """Commands run on the worker's loop, at most --max-commands at once: a flood of
    busy commands (2 ms of CPU each) leaves requests answered promptly."""
    with Arbiter(tmp_path, APP, "--max-commands", "16", workers=1) as arbiter:
        arbiter.wait_serving()
        port = arbiter.port
        quiet = [_timed(port) for _ in range(20)]
        flood: dict[str, Any] = {}

        def flooding() -> None:
            args = {
                "target": "worker:1",
                "name": "spin",
                "args": {"ms": 2},
                "times": 3000,
                "concurrency": 64,
            }
            flood.update(call(arbiter, "relay", "worker:1", args, timeout=60.0))

        thread = threading.Thread(target=flooding, daemon=True)
        thread.start()
        wait_until(
            lambda: "busy" in call(arbiter, "ping", "worker:1")["worker:1"].get("error", ""),
            10.0,
            "the flood filling the worker's commands",
        )
        during = [_timed(port) for _ in range(50)]
        thread.join(60.0)
        assert flood["worker:1"]["result"]["calls"] == 3000
        worst = max(during)
        report(
            "command_flood",
            quiet_p50_ms=round(sorted(quiet)[10] * 1000, 2),
            flood_p50_ms=round(sorted(during)[25] * 1000, 2),
            flood_max_ms=round(worst * 1000, 2),
        )
        # 16 commands of 2 ms between two turns of the loop: tens of ms, never seconds.
        assert worst < 0.5, f"a request waited {worst:.3f}s during the flood"


def _timed(port: int) -> float:
    start = time.perf_counter()
    whoami(port)
    return time.perf_counter() - start


def test_the_scheduler_example(tmp_path: Path) -> None:
    """examples/scheduler: one actor refreshes every worker's cache, over and over."""
    with Arbiter(
        tmp_path,
        "app:handler",
        "--http",
        "--actor",
        "scheduler=app:scheduler",
        workers=2,
        cwd=REPO_ROOT / "examples" / "scheduler",
        env={"SCHEDULER_EVERY": "0.2"},
    ) as arbiter:
        arbiter.wait_serving()
        wait_actor(arbiter, "scheduler")

        def refreshed() -> bool:
            answers = call(arbiter, "cached", "workers")
            ticks = result(arbiter, "ticks", "actor:scheduler")
            return (
                len(answers) == 2
                and ticks["count"] >= 3
                and all(a["result"]["refreshed_at"] for a in answers.values())
            )

        wait_until(refreshed, 10.0, "every worker refreshed by the scheduler")


json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_value = st.recursive(
    json_leaf,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(), kids, max_size=4),
    max_leaves=20,
)
TARGETS = ["arbiter", "workers", "actors", "worker:1", "worker:0", "worker:99", "actor:x", ""]
targets = st.sampled_from(TARGETS) | st.text(max_size=30)
NAMES = ["ping", "echo", "info", "stop", "reload", "scale", "hang", "relay"]
names = st.sampled_from(NAMES) | st.text(max_size=120)
keyword_args = st.dictionaries(st.text(max_size=10), json_value, max_size=3)


def deep_text(depth: int) -> Any:
    value: Any = ""
    for _ in range(depth):
        value = [value]
    return value


def test_fuzzed_command_messages_never_crash_a_process(tmp_path: Path) -> None:
    """Wrong types, huge, nested arguments, unknown targets and names: from outside (the
    control socket) and from a worker (send()); every process serves on."""
    with Arbiter(tmp_path, APP, workers=2) as arbiter:
        arbiter.wait_serving()
        pids = arbiter.worker_pids()

        @settings(max_examples=60, deadline=None, database=None)
        @given(name=names | json_value, to=targets | json_value, args=json_value)
        def from_outside(name: Any, to: Any, args: Any) -> None:
            payload = {"call": name, "to": to, "args": args, "timeout": 0.5}
            answer = control_request(arbiter.control_socket, payload, 15.0)
            assert isinstance(answer, dict) and ("answers" in answer or "error" in answer)

        @settings(max_examples=60, deadline=None, database=None)
        @given(name=names, to=targets, args=keyword_args)
        def from_a_worker(name: str, to: str, args: dict[str, Any]) -> None:
            if name in ("stop", "reload", "scale") and to == "arbiter":
                return  # refused anyway; tested above
            relayed = {"target": to, "name": name, "args": args, "timeout": 0.5}
            answer = call(arbiter, "relay", "worker:1", relayed, timeout=20.0)["worker:1"]
            assert "result" in answer or "error" in answer

        from_outside()
        from_a_worker()
        big = result(arbiter, "oversize", "worker:1", {"size": 70_000})
        assert big.startswith("ValueError") and "exceed the message limit" in big
        assert result(arbiter, "oversize", "worker:1", {"depth": 20}) == deep_text(20)
        for depth in (40, 10_000):
            assert "Error" in result(arbiter, "oversize", "worker:1", {"depth": depth})
        assert arbiter.worker_pids() == pids
        assert arbiter.exited() is None
        assert whoami(arbiter.port)
