"""Two "hosts" behind a real nginx, on loopback: every operation, zero failed requests.

Two arbiters on their own ports (``--http testapps.hello:raw``, ``--drain-delay``) are the
upstream servers of one nginx (scripts/chaos.py's, upstream keep-alive, ``max_fails=1``).
The chaos suite's load driver sends HTTP/1.1 keep-alive requests through nginx and counts
every one, without retries. Then, one host after the other: HUP (a rolling reload), USR2
(a new arbiter takes over the sockets), TERM with ``--drain-delay`` (nginx's retry on the
other host and ``max_fails`` take it out once it stops listening), then it starts again.
Each phase is a separate count, and each must read **0 failed** at the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import uvloop

from tests.runtime import HOST, REPO_ROOT, Arbiter, free_port, reap_orphans, report, wait_until
from tests.test_deploy import stop_by_pid
from tests.test_runtime import no_leaks

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import chaos  # scripts/ is not a package: on sys.path above

__all__ = ["no_leaks"]


@pytest.fixture(scope="module", autouse=True)
def libuv_signal_pipe() -> None:
    """libuv's signal pipe, made once per process by the first uvloop loop (the load
    driver's): made before the leak check's fd snapshot, it is not taken for a leak."""
    uvloop.new_event_loop().close()


pytestmark = pytest.mark.timeout(120)

KEEP_ALIVE = 5.0
DRAIN = 1.0
WORKERS = 2
ARGS = (
    "--http",
    "--keep-alive",
    f"{KEEP_ALIVE:g}",
    "--drain-delay",
    f"{DRAIN:g}",
    "--graceful-timeout",
    "3",
)
CLIENTS = chaos.Clients(http_keepalive=16)
# Seconds of load before and after each operation, so each phase sees both sides of it.
SETTLE = 0.5


class Host:
    """One arbiter on a fixed port, followed through USR2 and restarts."""

    def __init__(self, home: Path, name: str) -> None:
        self.home = home
        self.name = name
        self.port = free_port()
        self.runs: list[Arbiter] = []
        self.pid = 0  # the arbiter serving now

    @property
    def arbiter(self) -> Arbiter:
        return self.runs[-1]

    def start(self) -> None:
        home = self.home / f"{self.name}-{len(self.runs)}"
        home.mkdir(parents=True)
        arbiter = Arbiter(
            home, "testapps.hello:raw", *ARGS, workers=WORKERS, bind=f"{HOST}:{self.port}"
        )
        self.runs.append(arbiter)
        arbiter.start().wait_serving()
        self.pid = arbiter.pid

    def hup(self) -> None:
        before = chaos.generation(self.arbiter)
        psutil.Process(self.pid).send_signal(signal.SIGHUP)
        chaos.wait_rolled(self.arbiter, WORKERS, before)

    def usr2(self) -> None:
        old = self.pid
        psutil.Process(old).send_signal(signal.SIGUSR2)
        new = wait_until(lambda: new_arbiter_of(self.arbiter, old), 15.0, "the new arbiter")
        self.arbiter.remember([new])
        with contextlib.suppress(psutil.NoSuchProcess, ChildProcessError):
            psutil.Process(old).wait(15.0)  # the old one hands over and exits
        reap_orphans()
        self.pid = new
        wait_until(lambda: serving(self.arbiter), 10.0, "the new arbiter's workers")

    def term_and_start(self) -> None:
        proc = psutil.Process(self.pid)
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(psutil.NoSuchProcess, ChildProcessError):
            proc.wait(15.0)
        reap_orphans()
        self.start()

    def close(self) -> None:
        for arbiter in self.runs:
            if self.pid and self.pid != arbiter.pid:
                stop_by_pid(self.pid)
            arbiter.close()

    def log(self) -> str:
        return "\n".join(arbiter.log() for arbiter in self.runs)


def serving(arbiter: Arbiter) -> bool:
    workers = arbiter.stats()["workers"]
    return len(workers) == WORKERS and all(w["phase"] == "ready" for w in workers)


def new_arbiter_of(arbiter: Arbiter, old: int) -> int | None:
    pid = int(arbiter.stats()["arbiter"]["pid"])
    return pid if pid != old else None


@contextlib.contextmanager
def two_hosts(home: Path) -> Iterator[tuple[Host, Host]]:
    hosts = (Host(home, "a"), Host(home, "b"))
    try:
        for host in hosts:
            host.start()
        yield hosts
    finally:
        for host in hosts:
            host.close()
            print(host.log()[-3000:])


def phase(port: int, action: Callable[[], Any]) -> chaos.Tally:
    """Load through nginx while ``action`` runs (in a thread); the requests counted."""
    driver = chaos.Driver(port)

    async def run(driver: chaos.Driver) -> None:
        await asyncio.sleep(SETTLE)
        await chaos.in_thread(action)
        await asyncio.sleep(SETTLE)

    chaos.run_async(driver.drive(CLIENTS, run, limit=60.0))
    return driver.tally


def test_two_arbiters_behind_nginx_hup_usr2_term_zero_failed(tmp_path: Path) -> None:
    tallies: dict[str, chaos.Tally] = {}
    with two_hosts(tmp_path) as (a, b):
        upstreams = [a.port, b.port]
        options = "max_fails=1 fail_timeout=1s"
        with chaos.nginx(tmp_path / "nginx", upstreams, KEEP_ALIVE, options) as (port, errors):
            for host in (a, b):
                tallies[f"HUP {host.name}"] = phase(port, host.hup)
                tallies[f"USR2 {host.name}"] = phase(port, host.usr2)
                tallies[f"TERM+start {host.name}"] = phase(port, host.term_and_start)
            nginx_log = errors.read_text(errors="replace")
    lines = {name: tally.line() for name, tally in tallies.items()}
    for name, line in lines.items():
        print(f"{name}: {line}")
    retried = [line for line in nginx_log.splitlines() if chaos.NGINX_UPSTREAM_ERRORS.search(line)]
    print(f"nginx upstream errors (retried on the other host): {len(retried)}")
    report(
        "two_hosts_nginx",
        nginx_upstream_error_lines=len(retried),
        **{name.replace(" ", "_"): [t.sent, t.failures] for name, t in tallies.items()},
    )
    # The promise, stated: zero failed requests at the client, in every phase.
    assert all(t.sent > 0 for t in tallies.values()), lines
    assert all(t.failures == 0 for t in tallies.values()), lines
    assert "[emerg]" not in nginx_log
