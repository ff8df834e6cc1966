"""Harness for the real-process tests: run ``python -m pulsar_arbiter`` and judge it from outside.

Everything here talks to the runtime the way an operator or a client would: real TCP
sockets on 127.0.0.1, real signals, the control socket, psutil for the process tree. No
import of the runtime's internals except :func:`pulsar_arbiter.ops.control.request`, the
control socket's client.

Waits are polls of a condition with a deadline (:func:`wait_until`), never fixed sleeps.
Every process a test starts is recorded, and :meth:`Arbiter.close` stops them all by pid:
TERM, a bounded wait, then KILL for the arbiter and every worker pid ever seen.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from pulsar_arbiter.ops.control import request as control_request

__all__ = [
    "REPO_ROOT",
    "Arbiter",
    "InFlight",
    "Load",
    "LoadResult",
    "become_subreaper",
    "exchange",
    "free_port",
    "live_children",
    "reap_orphans",
    "report",
    "wait_until",
    "whoami",
]

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
# Seconds one client request may take (connect, send, read the answer) before it counts
# as failed. Far above a healthy answer (milliseconds), far below the test timeouts.
REQUEST_TIMEOUT = 5.0
# Seconds to wait for an arbiter to start serving (bind, fork, workers ready).
START_TIMEOUT = 10.0
# Seconds a TERM gets in teardown before everything left is killed.
STOP_TIMEOUT = 10.0
# Poll interval of wait_until: short enough that tests do not idle, long enough that a
# poll that asks the control socket does not load the arbiter.
POLL = 0.05
# Linux prctl option: orphaned descendants are re-parented to us, not to init.
PR_SET_CHILD_SUBREAPER = 36


def wait_until(
    predicate: Callable[[], T | None], timeout: float, what: str, poll: float = POLL
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that; fail after
    ``timeout`` s. OS, decoding and psutil errors count as "not yet" (the process may be
    starting or stopping); the last one is shown if the wait fails."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        value: T | None = None
        try:
            value = predicate()
        except (OSError, ValueError, KeyError, psutil.Error) as exc:
            last_error = exc
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(poll)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def exchange(port: int, line: bytes, timeout: float = REQUEST_TIMEOUT) -> bytes:
    """One request on its own connection: connect, send ``line``, read one answer line.

    Returns the answer without its newline. Raises ConnectionError if the server closed
    the connection before answering, OSError/timeout on any other failure.
    """
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(line + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed after {len(data)} bytes, no full answer")
            data += chunk
    return data[:-1]


def whoami(port: int, text: str = "hello") -> int:
    """The pid of the worker that answered one request (apps answer ``<pid> <line>``)."""
    answer = exchange(port, text.encode())
    pid, _, echoed = answer.partition(b" ")
    if echoed != text.encode():
        raise AssertionError(f"unexpected answer {answer!r} to {text!r}")
    return int(pid)


@dataclass
class LoadResult:
    """What a load run saw: counts, the errors by kind, and the pids that answered."""

    sent: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    pids: Counter[int] = field(default_factory=Counter)

    @property
    def failed(self) -> int:
        return self.sent - self.ok

    def __str__(self) -> str:
        return (
            f"sent={self.sent} ok={self.ok} failed={self.failed} pids={len(self.pids)} "
            f"errors={dict(self.errors)}"
        )


class Load:
    """Concurrent clients in threads, one new connection per request.

    One connection per request is the point: on a recycle or a reload a worker closes its
    idle keep-alive connections at a request boundary (by design), so a keep-alive client
    would see those closes; a fresh connection per request must never fail.
    """

    def __init__(self, port: int, concurrency: int = 8, total: int | None = None) -> None:
        self.port = port
        self.concurrency = concurrency
        self.total = total
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Load:
        for index in range(self.concurrency):
            thread = threading.Thread(target=self._client, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _claim(self) -> bool:
        with self._lock:
            if self._stop.is_set() or (self.total is not None and self.result.sent >= self.total):
                return False
            self.result.sent += 1
            return True

    def _client(self, index: int) -> None:
        number = 0
        while self._claim():
            number += 1
            text = f"c{index}-{number}"
            try:
                pid = whoami(self.port, text)
            except (OSError, AssertionError, ValueError) as exc:
                with self._lock:
                    self.result.errors[f"{type(exc).__name__}: {exc}"] += 1
                continue
            with self._lock:
                self.result.ok += 1
                self.result.pids[pid] += 1

    @property
    def ok(self) -> int:
        with self._lock:
            return self.result.ok

    @property
    def sent(self) -> int:
        with self._lock:
            return self.result.sent

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def join(self, timeout: float) -> LoadResult:
        """Wait for ``total`` requests to be done (or stop now when there is no total)."""
        if self.total is None:
            self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        alive = [t for t in self._threads if t.is_alive()]
        if alive:
            raise AssertionError(f"{len(alive)} load clients still running after {timeout:g}s")
        return self.result

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(REQUEST_TIMEOUT * 2)


class InFlight:
    """``count`` requests sent at once, each on its own connection, answered in threads.

    For slow apps: start them, wait until the workers hold them, act (signal, kill),
    then :meth:`join` and look at what each client got.
    """

    def __init__(self, port: int, count: int, timeout: float = 15.0) -> None:
        self.port = port
        self.timeout = timeout
        self.answers: dict[int, bytes | OSError] = {}
        self._threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(count)
        ]

    def _client(self, index: int) -> None:
        try:
            self.answers[index] = exchange(self.port, b"in-flight-%d" % index, self.timeout)
        except OSError as exc:
            self.answers[index] = exc

    def start(self) -> InFlight:
        for thread in self._threads:
            thread.start()
        return self

    def join(self) -> dict[int, bytes | OSError]:
        for thread in self._threads:
            thread.join(self.timeout + 1.0)
        return dict(self.answers)

    def answered(self) -> dict[int, int]:
        """Client index -> pid of the worker that answered, for the answered ones."""
        return {
            i: int(a.split()[0])
            for i, a in self.join().items()
            if isinstance(a, bytes) and a.endswith(b" in-flight-%d" % i)
        }


def become_subreaper() -> None:
    """Make this process the reaper of its orphaned descendants (Linux).

    A worker whose arbiter was killed is then re-parented to the test process, so the leak
    check sees it among our children instead of losing it to init.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap_orphans() -> None:
    """Collect the exit status of orphans re-parented to us (we are their subreaper)."""
    me = psutil.Process()
    for child in me.children():
        with contextlib.suppress(psutil.Error):
            if child.status() == psutil.STATUS_ZOMBIE:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(child.pid, os.WNOHANG)


def live_children() -> list[psutil.Process]:
    """Descendants of the test process that are still running (zombies reaped first)."""
    reap_orphans()
    alive = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
    return alive


def report(name: str, **values: Any) -> None:
    """Print a test's numbers; also append them to $RUNTIME_REPORT (a JSON-lines file)."""
    line = json.dumps({"test": name, **values}, sort_keys=True)
    print(line)
    target = os.environ.get("RUNTIME_REPORT")
    if target:
        with open(target, "a", encoding="utf-8") as file:
            file.write(line + "\n")


class Arbiter:
    """One ``python -m pulsar_arbiter`` process started from the repository root.

    ``port`` is the real port, read from ``ctl stats`` after ``--bind 127.0.0.1:0``.
    Every pid seen (the arbiter's children, pids in stats and answers) is remembered in
    ``seen`` so that :meth:`close` can stop every one of them.
    """

    def __init__(
        self,
        tmp_path: Path,
        app: str | None = "testapps.whoami:WhoAmI",
        *args: str,
        workers: int = 2,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        bind: str | None = f"{HOST}:0",
        control_socket: str | None = None,
    ) -> None:
        self.tmp_path = tmp_path
        self.control_socket = control_socket or str(tmp_path / "ctl.sock")
        self.log_path = tmp_path / "arbiter.log"
        argv = [sys.executable, "-m", "pulsar_arbiter"]
        if app:
            argv.append(app)
        if bind:
            argv += ["--bind", bind]
        argv += ["--workers", str(workers), "--control-socket", self.control_socket]
        argv += ["--graceful-timeout", "5", *args]
        self.argv = argv
        self.env = {**os.environ, **(env or {})}
        if cwd is not None:
            path = self.env.get("PYTHONPATH")
            self.env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *([path] if path else [])])
        self.cwd = cwd or REPO_ROOT
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen: dict[int, psutil.Process] = {}
        self._port: int | None = None

    # -- start and stop ------------------------------------------------------------

    def start(self) -> Arbiter:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group, like a daemon's
            )
        self._remember(self.proc.pid)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def wait_serving(self, workers: int | None = None, timeout: float = START_TIMEOUT) -> Arbiter:
        """Wait until ``workers`` (default: as asked) workers are ready."""
        count = workers if workers is not None else self._asked_workers()
        self.wait_workers(lambda ws: len(ws) == count, f"{count} ready workers", timeout)
        return self

    def _asked_workers(self) -> int:
        return int(self.argv[self.argv.index("--workers") + 1])

    def exited(self) -> int | None:
        assert self.proc is not None
        return self.proc.poll()

    def wait_exit(self, timeout: float) -> int:
        """The arbiter's exit status; fails if it is still running after ``timeout`` s."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the arbiter is still running after {timeout:g}s") from None

    def send(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def close(self) -> None:
        """Stop everything this arbiter started: TERM, wait, then KILL what is left."""
        if self.proc is None:
            return
        with contextlib.suppress(psutil.Error):
            self._remember_children()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        leftovers = [p for p in self.seen.values() if p.pid != self.proc.pid and _running(p)]
        if leftovers:
            _, alive = psutil.wait_procs(leftovers, timeout=STOP_TIMEOUT / 2)
            for proc in alive:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            psutil.wait_procs(alive, timeout=STOP_TIMEOUT / 2)
        reap_orphans()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Arbiter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- processes -------------------------------------------------------------------

    def _remember(self, pid: int) -> None:
        if pid not in self.seen:
            with contextlib.suppress(psutil.Error):
                self.seen[pid] = psutil.Process(pid)

    def _remember_children(self) -> list[int]:
        assert self.proc is not None
        pids = [child.pid for child in psutil.Process(self.proc.pid).children()]
        for pid in pids:
            self._remember(pid)
        return pids

    def remember(self, pids: Iterable[int]) -> None:
        """Record pids seen elsewhere (in answers) so that teardown covers them too."""
        for pid in pids:
            self._remember(pid)

    def running(self, pid: int) -> bool:
        """Is the worker (or arbiter) ``pid`` seen earlier still running (not a zombie)?"""
        proc = self.seen.get(pid)
        return proc is not None and _running(proc)

    def seen_workers(self) -> list[int]:
        return [pid for pid in self.seen if pid != self.pid]

    # -- control socket ------------------------------------------------------------------

    def ctl(self, command: str, **args: Any) -> Any:
        """One request on the control socket (the same client as ``ctl``)."""
        answer = control_request(self.control_socket, {"command": command, **args})
        if isinstance(answer, dict) and "error" in answer:
            raise AssertionError(f"ctl {command}: {answer['error']}")
        return answer

    def ctl_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``python -m pulsar_arbiter ctl --control-socket PATH ARGS...``."""
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "pulsar_arbiter",
                "ctl",
                "--control-socket",
                self.control_socket,
                *args,
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=REQUEST_TIMEOUT * 2,
            check=False,
        )

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.ctl("stats")
        for worker in stats["workers"]:
            if worker.get("pid"):
                self._remember(int(worker["pid"]))
        return stats

    @property
    def port(self) -> int:
        if self._port is None:
            binds = self.stats()["arbiter"]["binds"]
            tcp = [b for b in binds if b.startswith("tcp://")]
            assert tcp, f"no TCP bind in {binds}"
            self._port = int(tcp[0].rpartition(":")[2])
        return self._port

    def workers(self, phase: str = "ready") -> list[dict[str, Any]]:
        """The workers in ``phase`` according to ``ctl stats``."""
        return [w for w in self.stats()["workers"] if w["phase"] == phase]

    def worker_pids(self, phase: str = "ready") -> set[int]:
        return {int(w["pid"]) for w in self.workers(phase)}

    def wait_workers(
        self,
        condition: Callable[[list[dict[str, Any]]], bool],
        what: str,
        timeout: float = START_TIMEOUT,
    ) -> list[dict[str, Any]]:
        """Wait until ``condition(ready workers)`` holds and no worker is in transition.

        Fails at once, with the log, if the arbiter exits meanwhile.
        """

        def check() -> list[dict[str, Any]] | None:
            if self.exited() is not None:
                raise AssertionError(
                    f"the arbiter exited with {self.exited()} while waiting for {what}:\n"
                    + self.log()
                )
            self._remember_children()
            workers = self.stats()["workers"]
            ready = [w for w in workers if w["phase"] == "ready"]
            settled = len(ready) == len(workers)
            return ready if settled and condition(ready) else None

        return wait_until(check, timeout, what)


def _running(proc: psutil.Process) -> bool:
    """True if ``proc`` (the same process, not a reused pid) runs and is not a zombie."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
