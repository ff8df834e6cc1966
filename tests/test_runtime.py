"""The runtime for real: ``python -m pulsar_arbiter`` in a subprocess, judged from outside.

Each test starts the real command from the repository root (``testapps/`` holds the apps it
serves), talks to it over real sockets on 127.0.0.1, signals it with real signals and
reads ``ctl stats`` from its control socket. Nothing is mocked.

Load clients open one new connection per request (connect, send a line, read the answer,
close). That is deliberate: on a graceful stop, a recycle (``--max-requests``) or a
reload (HUP), a worker closes its idle keep-alive connections at a request boundary, by
design; a client that reuses a connection must be ready to reconnect. A fresh connection
per request, on the other hand, must never fail: zero failures is the bar for recycles
and reloads.

Housekeeping: every process is stopped by pid at teardown (TERM, a bounded wait, then
KILL of the arbiter and of every worker pid seen); a module fixture fails a test that
leaves a child process behind (the test process is made a subreaper, so even workers
orphaned by a killed arbiter count) or a file descriptor open. Waits poll a condition
with a deadline; pytest-timeout is only the backstop. The arbiter's log is printed at
teardown, which pytest shows when a test fails. The load tests print their counts (sent,
failed, pids) and append them to the JSON-lines file named by $RUNTIME_REPORT, if set.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.runtime import (
    HOST,
    REPO_ROOT,
    Arbiter,
    InFlight,
    Load,
    become_subreaper,
    exchange,
    live_children,
    report,
    wait_until,
    whoami,
)

pytestmark = pytest.mark.timeout(30)

Start = Callable[..., Arbiter]

# Requests of the recycle test, and the limit that makes every worker recycle many times.
RECYCLE_REQUESTS = 1000
RECYCLE_MAX = 50
# Concurrent clients of the load tests: enough to keep every worker busy on a small box.
CONCURRENCY = 12


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves a child process running, or a file descriptor open in the
    test process, once its fixtures are torn down."""
    become_subreaper()
    before = {p.pid for p in live_children()}
    fds = _open_fds()
    yield

    def leaked() -> list[psutil.Process]:
        return [p for p in live_children() if p.pid not in before]

    with contextlib.suppress(AssertionError):
        wait_until(lambda: not leaked(), 5.0, "child processes to exit")
    left = leaked()
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    assert not left, f"leaked child processes: {[(p.pid, _cmdline(p)) for p in left]}"
    left_fds = {fd: _fd_target(fd) for fd in _open_fds() - fds}
    assert not left_fds, f"leaked file descriptors: {left_fds}"


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def _fd_target(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return "?"


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Start arbiters (``Arbiter`` arguments); all stopped and their logs printed after."""
    started: list[Arbiter] = []

    def start(app: str | None = "testapps.whoami:WhoAmI", *args: str, **kw: Any) -> Arbiter:
        home = tmp_path / f"arbiter{len(started)}"
        home.mkdir()
        arbiter = Arbiter(home, app, *args, **kw)
        started.append(arbiter)
        return arbiter.start()

    try:
        yield start
    finally:
        for arbiter in started:
            arbiter.close()
        for arbiter in started:
            print(f"--- {' '.join(arbiter.argv[1:])} (pid {arbiter.pid}) ---")
            print(arbiter.log())


def _pids(workers: list[dict[str, Any]]) -> set[int]:
    return {int(w["pid"]) for w in workers}


def _none_running(arbiter: Arbiter, pids: set[int]) -> bool:
    return not any(arbiter.running(pid) for pid in pids)


# -- serving ---------------------------------------------------------------------------


def test_two_workers_serve_and_the_arbiter_answers_nothing(start: Start) -> None:
    arbiter = start(workers=2).wait_serving()
    port = arbiter.port
    workers = arbiter.worker_pids()
    assert len(workers) == 2 and arbiter.pid not in workers

    result = Load(port, concurrency=CONCURRENCY, total=200).start().join(20)
    assert result.failed == 0, result
    assert set(result.pids) <= workers, f"served by {set(result.pids)}, workers {workers}"

    # Hold connections open; once the workers own them all, the arbiter owns none.
    held = [socket.create_connection((HOST, port)) for _ in range(8)]
    try:

        def established(pid: int) -> int:
            return sum(
                1
                for c in psutil.Process(pid).net_connections("tcp")
                if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
            )

        wait_until(
            lambda: sum(established(pid) for pid in workers) == len(held),
            5.0,
            "the workers to accept every held connection",
        )
        assert established(arbiter.pid) == 0
        listening = [
            c
            for c in psutil.Process(arbiter.pid).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port
        ]
        assert listening, "the arbiter holds the listening socket"
    finally:
        for sock in held:
            sock.close()


def test_term_drains_in_flight_requests_and_exits_0(start: Start) -> None:
    arbiter = start("testapps.slow:Slow", workers=2, env={"SLOW_DELAY": "1.5"}).wait_serving()
    workers = arbiter.worker_pids()
    requests = InFlight(arbiter.port, 6).start()
    wait_until(
        lambda: arbiter.stats()["totals"]["connections"] == 6, 5.0, "every request in flight"
    )
    arbiter.send(signal.SIGTERM)
    assert arbiter.wait_exit(15.0) == 0
    answered = requests.answered()
    assert len(answered) == 6, requests.answers
    assert set(answered.values()) <= workers
    wait_until(lambda: _none_running(arbiter, workers), 5.0, "no worker left")
    assert "exiting: stopped" in arbiter.log()


def test_term_cuts_requests_longer_than_the_graceful_timeout(start: Start) -> None:
    arbiter = start(
        "testapps.slow:Slow", "--graceful-timeout", "1", workers=1, env={"SLOW_DELAY": "30"}
    ).wait_serving()
    requests = InFlight(arbiter.port, 2).start()
    wait_until(lambda: arbiter.stats()["totals"]["connections"] == 2, 5.0, "the requests in flight")
    began = time.monotonic()
    arbiter.send(signal.SIGTERM)
    assert arbiter.wait_exit(10.0) == 0
    assert 1.0 <= time.monotonic() - began < 5.0
    assert requests.answered() == {}, "cut after the grace, not answered"


@pytest.mark.parametrize(
    ("first", "signum"),
    [(None, signal.SIGINT), (None, signal.SIGQUIT), (signal.SIGTERM, signal.SIGINT)],
    ids=["INT", "QUIT", "INT during a TERM drain"],
)
def test_int_and_quit_stop_at_once_without_draining(
    start: Start, first: int | None, signum: int
) -> None:
    """A fast stop does not drain; sent during a graceful stop, it cuts that drain short."""
    arbiter = start("testapps.slow:Slow", workers=2, env={"SLOW_DELAY": "60"}).wait_serving()
    port, workers = arbiter.port, arbiter.worker_pids()
    with socket.create_connection((HOST, port), timeout=10.0) as client:
        client.sendall(b"never answered\n")
        wait_until(
            lambda: arbiter.stats()["totals"]["connections"] == 1, 5.0, "the request in flight"
        )
        if first is not None:  # graceful: would wait --graceful-timeout (30 s)
            arbiter.send(first)
            name = signal.Signals(first).name
            wait_until(lambda: f"arbiter got {name}" in arbiter.log(), 5.0, name)
        began = time.monotonic()
        arbiter.send(signum)
        assert arbiter.wait_exit(10.0) == 0
        assert time.monotonic() - began < 5.0, "no drain on a fast stop"
        with contextlib.suppress(ConnectionResetError):
            assert client.recv(100) == b""
    wait_until(lambda: _none_running(arbiter, workers), 5.0, "no worker left")


def test_ctrl_c_to_the_process_group_stops_through_the_arbiter(start: Start) -> None:
    """Workers ignore a terminal's SIGINT: the arbiter stops them, once, cleanly."""
    arbiter = start(workers=2).wait_serving()
    workers = arbiter.worker_pids()
    os.killpg(arbiter.pid, signal.SIGINT)
    assert arbiter.wait_exit(10.0) == 0
    log = arbiter.log()
    for pid in workers:
        assert f"worker {pid} exiting" in log
    assert "unexpectedly" not in log


def test_killed_worker_is_replaced(start: Start) -> None:
    arbiter = start(workers=2).wait_serving()
    before = arbiter.worker_pids()
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    ready = arbiter.wait_workers(
        lambda ws: len(ws) == 2 and victim not in _pids(ws), "a replacement worker"
    )
    after = _pids(ready)
    assert after - before and after & before == before - {victim}
    new = (after - before).pop()
    wait_until(lambda: whoami(arbiter.port) == new, 5.0, "the new worker to answer")
    assert "exited with signal SIGKILL" in arbiter.log()


# -- recycling and reloading under load -----------------------------------------------------


@pytest.mark.parametrize(
    ("workers", "loop"), [(2, "uvloop"), (1, "uvloop"), (2, "asyncio")], ids=str
)
def test_max_requests_recycles_with_no_failed_request(
    start: Start, workers: int, loop: str
) -> None:
    arbiter = start(
        "testapps.whoami:WhoAmI",
        *("--max-requests", str(RECYCLE_MAX), "--loop", loop),
        workers=workers,
    ).wait_serving()
    load = Load(arbiter.port, concurrency=CONCURRENCY, total=RECYCLE_REQUESTS).start()
    while load.running:  # stats during the churn never count a request twice
        counted = arbiter.stats()["totals"]["requests"]
        assert counted <= load.sent, f"stats count {counted} requests, {load.sent} sent"
    result = load.join(25.0)
    arbiter.remember(result.pids)
    report(
        f"recycle-workers-{workers}-{loop}",
        sent=result.sent,
        failed=result.failed,
        pids=len(result.pids),
        errors=dict(result.errors),
    )
    assert result.sent == RECYCLE_REQUESTS
    assert result.failed == 0, result
    # A worker asks to retire at RECYCLE_MAX requests and serves on until its replacement
    # is ready: how many more it serves depends on the load and the boot time (under this
    # load, about 100 to 500), never fewer. So several generations of workers serve.
    assert len(result.pids) >= workers + 1, result
    final = _pids(arbiter.wait_workers(lambda ws: len(ws) == workers, f"{workers} workers"))
    retired = {pid: n for pid, n in result.pids.items() if pid not in final}
    assert retired and min(retired.values()) >= RECYCLE_MAX, result
    stats = wait_until(
        lambda: (s := arbiter.stats())["totals"]["requests"] == RECYCLE_REQUESTS and s,
        5.0,
        f"stats to count {RECYCLE_REQUESTS} requests",
    )
    totals = stats["totals"]
    assert totals["recycles"] == totals["spawned"] - workers >= max(2, len(retired))
    _assert_replaced_before_retired(arbiter.log(), "max_requests", initial=workers)
    assert "unexpectedly" not in arbiter.log()


def _tcp_migrate_req() -> bool:
    try:
        return Path("/proc/sys/net/ipv4/tcp_migrate_req").read_text().strip() == "1"
    except OSError:
        return False


def test_reuse_port_workers_serve_every_connection(start: Start) -> None:
    """With --reuse-port each worker listens on its own socket; the arbiter's socket only
    keeps the port (a listening one would get its share of connections, never served)."""
    arbiter = start("testapps.whoami:WhoAmI", "--reuse-port", workers=2).wait_serving()
    port, workers = arbiter.port, arbiter.worker_pids()
    assert port != 0
    served = {whoami(port, f"r{i}") for i in range(60)}
    assert served <= workers
    listening = [
        c
        for c in psutil.Process(arbiter.pid).net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    ]
    assert listening == []


@pytest.mark.skipif(
    not _tcp_migrate_req(), reason="--reuse-port recycles need net.ipv4.tcp_migrate_req=1"
)
def test_reuse_port_recycles_with_no_failed_request(start: Start) -> None:
    arbiter = start(
        "testapps.whoami:WhoAmI", "--reuse-port", "--max-requests", str(RECYCLE_MAX), workers=2
    ).wait_serving()
    load = Load(arbiter.port, concurrency=CONCURRENCY, total=RECYCLE_REQUESTS).start()
    result = load.join(25.0)
    arbiter.remember(result.pids)
    assert result.failed == 0, result
    assert len(result.pids) >= 3, result


def test_recycles_drain_the_requests_in_flight(start: Start) -> None:
    """Slow requests are in flight whenever a worker retires: each must still be answered."""
    arbiter = start(
        "testapps.slow:Slow", "--max-requests", "10", workers=2, env={"SLOW_DELAY": "0.05"}
    ).wait_serving()
    result = Load(arbiter.port, concurrency=CONCURRENCY, total=240).start().join(25.0)
    arbiter.remember(result.pids)
    report("recycle-slow", sent=result.sent, failed=result.failed, pids=len(result.pids))
    assert result.failed == 0, result
    assert len(result.pids) >= 4, result


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_hup_replaces_every_worker_with_no_failed_request(start: Start, loop: str) -> None:
    arbiter = start("testapps.whoami:WhoAmI", "--loop", loop, workers=2).wait_serving()
    port, old = arbiter.port, arbiter.worker_pids()
    with Load(port, concurrency=CONCURRENCY) as load:
        wait_until(lambda: load.ok >= 200, 10.0, "load before the reload")
        arbiter.send(signal.SIGHUP)
        ready = arbiter.wait_workers(
            lambda ws: len(ws) == 2 and all(w["generation"] == 2 for w in ws),
            "generation 2 to serve",
            timeout=15.0,
        )
        wait_until(lambda: _none_running(arbiter, old), 10.0, "the old workers to exit")
        mark = load.ok
        wait_until(lambda: load.ok >= mark + 200, 10.0, "load after the reload")
        result = load.join(10.0)
    report(
        f"hup-{loop}",
        sent=result.sent,
        failed=result.failed,
        pids=len(result.pids),
        errors=dict(result.errors),
    )
    assert result.failed == 0, result
    new = _pids(ready)
    assert not new & old
    assert set(result.pids) <= old | new
    assert new & set(result.pids), "the new workers serve"
    assert arbiter.stats()["arbiter"]["generation"] == 2
    _assert_replaced_before_retired(arbiter.log(), "reload", initial=2)


def _assert_replaced_before_retired(log: str, reason: str, initial: int) -> None:
    """From the arbiter's log: each worker stopped for ``reason`` was stopped only once
    one more replacement (a worker id above ``initial``) was ready."""
    ready = stopped = 0
    for line in log.splitlines():
        if "pulsar_arbiter.arbiter: worker " in line and line.endswith(" is ready"):
            ready += int(line.split("arbiter: worker ")[1].split()[0]) > initial
        elif "arbiter: stopping worker " in line and line.endswith(f": {reason}"):
            stopped += 1
            assert stopped <= ready, f"stopped before its replacement was ready: {line}"
    assert stopped, f"no worker stopped for {reason}"


HUP_APP = "from testapps.whoami import WhoAmI as App\n"
BROKEN_APP = "raise RuntimeError('hupapp: broken on purpose')\n"


def test_hup_with_a_broken_app_keeps_the_old_workers(start: Start, tmp_path: Path) -> None:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    module = app_dir / "hupapp.py"
    module.write_text(HUP_APP)
    arbiter = start(
        "hupapp:App", workers=2, cwd=app_dir, env={"PYTHONDONTWRITEBYTECODE": "1"}
    ).wait_serving()
    port, old = arbiter.port, arbiter.worker_pids()

    module.write_text(BROKEN_APP)
    arbiter.send(signal.SIGHUP)
    wait_until(lambda: "rollout stopped" in arbiter.log(), 10.0, "the rollout to stop")
    assert "hupapp: broken on purpose" in arbiter.log()
    served = {whoami(port, f"after-{i}") for i in range(40)}
    assert served <= old
    stats = arbiter.stats()
    assert _pids(arbiter.workers()) == old
    assert stats["totals"]["spawned"] == 3, "one failed replacement, no respawn loop"
    assert stats["arbiter"]["rollout_stopped"] is True
    assert arbiter.exited() is None

    # Fixed, a new HUP rolls through.
    module.write_text(HUP_APP)
    arbiter.send(signal.SIGHUP)
    ready = arbiter.wait_workers(
        lambda ws: len(ws) == 2 and all(w["generation"] == 3 for w in ws),
        "generation 3 to serve",
    )
    assert not _pids(ready) & old
    assert arbiter.stats()["arbiter"]["rollout_stopped"] is False


VERSIONED_APP = """
import os
from pulsar_arbiter import ProtocolConsumer

class App(ProtocolConsumer):
    def data_received(self, data):
        self.write(b"%d VERSION\\n" % os.getpid())
        self.finished()
"""


@pytest.mark.parametrize("preload", [False, True], ids=["fork", "preload"])
def test_hup_serves_the_new_app_code(start: Start, tmp_path: Path, preload: bool) -> None:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    module = app_dir / "verapp.py"
    module.write_text(VERSIONED_APP.replace("VERSION", "v1"))
    arbiter = start(
        "verapp:App",
        *(["--preload"] if preload else []),
        workers=2,
        cwd=app_dir,
        env={"PYTHONDONTWRITEBYTECODE": "1"},
    ).wait_serving()
    port = arbiter.port
    assert exchange(port, b"x").split()[1] == b"v1"

    module.write_text(VERSIONED_APP.replace("VERSION", "v2"))
    arbiter.send(signal.SIGHUP)
    arbiter.wait_workers(
        lambda ws: len(ws) == 2 and all(w["generation"] == 2 for w in ws), "generation 2"
    )
    assert {exchange(port, b"x").split()[1] for _ in range(20)} == {b"v2"}

    module.write_text(BROKEN_APP)
    arbiter.send(signal.SIGHUP)
    expected = "reload refused, the app does not import" if preload else "rollout stopped"
    wait_until(lambda: expected in arbiter.log(), 10.0, expected)
    assert {exchange(port, b"x").split()[1] for _ in range(20)} == {b"v2"}
    assert arbiter.stats()["arbiter"]["generation"] == (2 if preload else 3)


def test_ttin_and_ttou_change_the_worker_count_never_below_one(start: Start) -> None:
    arbiter = start(workers=2).wait_serving()
    first = arbiter.worker_pids()

    def desired() -> int:
        return int(arbiter.stats()["arbiter"]["desired_workers"])

    arbiter.send(signal.SIGTTIN)
    arbiter.wait_workers(lambda ws: len(ws) == 3, "3 workers after TTIN")
    for expected in (2, 1, 1):
        arbiter.send(signal.SIGTTOU)
        wait_until(lambda e=expected: desired() == e, 5.0, f"{expected} desired workers")  # type: ignore[misc]
        arbiter.wait_workers(lambda ws, e=expected: len(ws) == e, f"{expected} workers")  # type: ignore[misc]
    assert arbiter.log().count("arbiter got SIGTTOU") == 3
    last = arbiter.worker_pids()
    assert len(last) == 1
    gone = (first | set(arbiter.seen_workers())) - last
    wait_until(lambda: _none_running(arbiter, gone), 10.0, "the retired workers to exit")
    assert whoami(arbiter.port) in last


def test_kill_9_of_the_arbiter_frees_the_port_and_leaves_no_worker(start: Start) -> None:
    """The workers notice, finish what they are serving, exit: nothing lingers."""
    arbiter = start("testapps.slow:Slow", workers=2, env={"SLOW_DELAY": "1"}).wait_serving()
    port, workers = arbiter.port, arbiter.worker_pids()
    requests = InFlight(port, 4).start()
    wait_until(lambda: arbiter.stats()["totals"]["connections"] == 4, 5.0, "the requests in flight")
    os.kill(arbiter.pid, signal.SIGKILL)
    assert arbiter.wait_exit(5.0) == -signal.SIGKILL

    def port_free() -> bool:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((HOST, port))
            sock.listen(1)
        return True

    began = time.monotonic()
    wait_until(lambda: _none_running(arbiter, workers), 5.0, "the orphaned workers to exit")
    wait_until(port_free, 5.0, f"port {port} to be free")
    assert time.monotonic() - began < 5.0
    assert set(requests.answered().values()) <= workers
    assert len(requests.answered()) == 4, requests.answers


# -- faulty apps --------------------------------------------------------------------------


def test_blocked_worker_is_killed_after_the_timeout_and_replaced(start: Start) -> None:
    arbiter = start("testapps.faulty:Faulty", "--timeout", "2", workers=1).wait_serving()
    port, (victim,) = arbiter.port, arbiter.worker_pids()
    blocked = socket.create_connection((HOST, port))
    try:
        blocked.sendall(b"block 30\n")
        began = time.monotonic()
        wait_until(lambda: not arbiter.running(victim), 15.0, "the blocked worker to die")
        took = time.monotonic() - began
        ready = arbiter.wait_workers(
            lambda ws: len(ws) == 1 and victim not in _pids(ws), "a replacement"
        )
    finally:
        blocked.close()
    # Its last beat came up to a heartbeat interval (0.5 s) before the block; ABRT ends it
    # at once (its handler exits), no TERM-then-KILL grace.
    assert 1.5 <= took < 8.0, took
    (new,) = _pids(ready)
    assert exchange(port, b"echo hi") == b"%d hi" % new
    log = arbiter.log()
    assert "no heartbeat" in log and f"(pid {victim}) with SIGABRT" in log


def test_busy_but_beating_worker_is_not_killed(start: Start) -> None:
    arbiter = start("testapps.faulty:Faulty", "--timeout", "2", workers=1).wait_serving()
    port, (pid,) = arbiter.port, arbiter.worker_pids()
    assert exchange(port, b"busy 4", timeout=15.0) == b"%d done" % pid
    assert arbiter.worker_pids() == {pid}
    assert "killing worker" not in arbiter.log()


BAD_APPS = {
    "testapps.faulty_import:X": "faulty_import: this module fails to import on purpose",
    "testapps.no_such_module:X": "No module named 'testapps.no_such_module'",
    "testapps.faulty:boot_crash": "boot_crash: this app fails to start on purpose",
}


@pytest.mark.parametrize("preload", [False, True], ids=["fork", "preload"])
@pytest.mark.parametrize("app", sorted(BAD_APPS))
def test_bad_app_exits_non_zero_with_the_error_and_no_respawn(
    start: Start, app: str, preload: bool
) -> None:
    arbiter = start(app, *(["--preload"] if preload else []), workers=2)
    began = time.monotonic()
    code = arbiter.wait_exit(10.0)
    log = arbiter.log()
    assert code != 0, log
    assert time.monotonic() - began < 10.0
    assert BAD_APPS[app] in log
    assert log.count("spawned worker") <= 2, "no respawn loop"


@pytest.mark.parametrize(
    ("flag", "value"), [("--workers", "abc"), ("--bind", "nonsense"), ("--timeout", "-1")]
)
def test_bad_flag_exits_2_with_one_line_naming_it(flag: str, value: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pulsar_arbiter",
            "testapps.whoami:WhoAmI",
            flag,
            value,
            "--control-socket",
            str(tmp_path / "ctl.sock"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    assert flag in lines[0]


def test_raising_consumer_closes_only_its_connection(start: Start) -> None:
    arbiter = start("testapps.faulty:Faulty", workers=1).wait_serving()
    port, (pid,) = arbiter.port, arbiter.worker_pids()
    with socket.create_connection((HOST, port), timeout=5.0) as other:
        assert exchange(port, b"echo first") == b"%d first" % pid
        with socket.create_connection((HOST, port), timeout=5.0) as victim:
            victim.sendall(b"raise\n")
            with contextlib.suppress(ConnectionResetError):
                assert victim.recv(4096) == b"", "no answer, the connection closes"
        other.sendall(b"echo still here\n")
        assert other.recv(4096) == b"%d still here\n" % pid
    assert exchange(port, b"echo after") == b"%d after" % pid
    assert arbiter.worker_pids() == {pid}
    log = arbiter.log()
    assert log.count("unhandled error in consumer") == 1
    assert "faulty consumer raised on purpose" in log


# -- the control socket -----------------------------------------------------------------------


def test_ctl_stats_totals_match_the_requests_sent(start: Start) -> None:
    arbiter = start(workers=2).wait_serving()
    port, sent = arbiter.port, 37
    for index in range(sent):
        whoami(port, f"n{index}")
    stats = arbiter.stats()
    assert stats["totals"]["requests"] == sent
    assert sum(w["requests"] for w in stats["workers"]) == sent
    assert stats["totals"]["workers"] == 2
    done = arbiter.ctl_cli("stats")
    assert done.returncode == 0, done.stderr
    cli = json.loads(done.stdout)
    assert cli["totals"]["requests"] == sent
    assert {w["pid"] for w in cli["workers"]} == arbiter.worker_pids()


def test_ctl_scale_reload_and_stop(start: Start) -> None:
    arbiter = start(workers=1).wait_serving()
    first = arbiter.worker_pids()
    done = arbiter.ctl_cli("scale", "3")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"] == 3
    three = _pids(arbiter.wait_workers(lambda ws: len(ws) == 3, "3 workers"))
    assert first <= three

    done = arbiter.ctl_cli("reload")
    assert done.returncode == 0, done.stderr
    ready = arbiter.wait_workers(
        lambda ws: len(ws) == 3 and all(w["generation"] == 2 for w in ws),
        "generation 2",
        timeout=15.0,
    )
    assert not _pids(ready) & three

    done = arbiter.ctl_cli("scale", "0")
    assert done.returncode != 0 and "scale" in done.stderr

    done = arbiter.ctl_cli("stop")
    assert done.returncode == 0, done.stderr
    assert arbiter.wait_exit(10.0) == 0


def test_a_second_arbiter_does_not_take_over_the_control_socket(start: Start) -> None:
    first = start(workers=1).wait_serving()
    second = start(workers=1, control_socket=first.control_socket)
    wait_until(lambda: "control socket disabled" in second.log(), 10.0, "the warning")
    assert first.stats()["arbiter"]["pid"] == first.pid
    second.send(signal.SIGTERM)
    assert second.wait_exit(10.0) == 0
    assert first.stats()["arbiter"]["pid"] == first.pid, "still first's socket"


def test_usr1_reopens_the_log_files_in_the_arbiter_and_the_workers(
    start: Start, tmp_path: Path
) -> None:
    log = tmp_path / "error.log"
    arbiter = start(None, "--error-log", str(log), workers=2).wait_serving()
    workers = arbiter.worker_pids()
    log.rename(tmp_path / "error.log.1")  # what logrotate does
    arbiter.send(signal.SIGUSR1)
    wait_until(log.exists, 5.0, "the log file to be reopened")
    arbiter.send(signal.SIGTERM)
    assert arbiter.wait_exit(10.0) == 0
    text = log.read_text()
    assert "exiting: stopped" in text, "the arbiter writes to the new file"
    for pid in workers:
        assert f"worker {pid} exiting" in text, "so do the workers"
