r"""Chaos suite: real clients against a real arbiter, every request accounted for.

A load driver of its own, on raw sockets (asyncio streams on uvloop, no HTTP library),
runs these client kinds concurrently:

* ``http-fresh``: HTTP/1.1, a new connection per request (``Connection: close``);
* ``http-keepalive``: N persistent HTTP/1.1 connections, each sending its next request
  as soon as the previous answer is read whole. An answer with ``Connection: close``
  makes the client reconnect for the next request: that is not a failure;
* ``tcp-persistent``: N persistent connections of a line protocol (send a line, read the
  echoed line; ``<pid> <line>`` answers, as ``testapps/`` apps give, tell which worker
  served the connection);
* ``tcp-fresh``: the same line protocol, a new connection per request;
* ``udp``: datagrams with sequence numbers, one outstanding per client (lost, late,
  duplicated and mismatched answers are told apart).

Every request sent is either ok (a complete, valid answer) or failed, by kind:
``refused`` (connect refused), ``reset`` (connection reset, broken pipe), ``eof`` (the
peer closed before the answer was complete), ``timeout`` (no complete answer within
the request timeout), ``bad`` (a malformed or unexpected answer, an HTTP status other
than 200). There are no retries. Each run prints detail lines and then exactly one
summary line::

    sent=… ok=… failed=… by kind refused=… reset=… eof=… timeout=… bad=…

Scenarios (issue 8), each with a short variant (a few seconds, the pytest tests in
tests/test_chaos.py) and a long one (``--long``)::

    python scripts/chaos.py --list
    python scripts/chaos.py http-hup-keepalive            # one scenario, short
    python scripts/chaos.py http-hup-keepalive --long     # the same, long
    python scripts/chaos.py all --long          # every scenario; writes docs/reliability.md
    python scripts/chaos.py drive --port 8060 --http-keepalive 64 --duration 5   # any server

The scenarios start ``python -m pulsar_arbiter`` through the test harness
(tests/runtime.py: ``Arbiter``, ``wait_until``, ...), which stops every process it
started by pid; nginx, when a scenario runs it, is stopped by pid too. Only loopback
addresses are ever targeted. Every wait has a deadline; every load stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import errno
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import uvloop

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # tests/ (the harness) is a package of the repository root

from tests.runtime import (  # noqa: E402
    HOST,
    REQUEST_TIMEOUT,
    Arbiter,
    become_subreaper,
    exchange,
    free_port,
    reap_orphans,
    wait_until,
)

KINDS = ("refused", "reset", "eof", "timeout", "bad")
CLIENT_KINDS = ("http-fresh", "http-keepalive", "tcp-persistent", "tcp-fresh", "udp")

HELLO = b"Hello, World!"
# Seconds a client waits after a refused connect before it tries again: a refused port
# answers at once, and a tight loop of refusals would only burn the CPU the server needs.
REFUSED_PAUSE = 0.05
# Seconds one UDP request waits for its answer before it counts as lost.
UDP_TIMEOUT = 2.0
# Seconds the clients get to finish their last request once the load stops.
STOP_GRACE = REQUEST_TIMEOUT + 2.0
# Seconds a rollout (every worker of the newest generation ready) may take.
ROLL_TIMEOUT = 30.0
# Failure records kept for the checks and the report (the counts are always exact).
MAX_FAILURE_RECORDS = 10_000
RELIABILITY_DOC = REPO_ROOT / "docs" / "reliability.md"

# -- accounting --------------------------------------------------------------------------


@dataclass
class Tally:
    """Requests sent, answered whole and valid (ok), failed by kind."""

    sent: int = 0
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)

    @property
    def failures(self) -> int:
        return sum(self.failed.values())

    def merge(self, other: Tally) -> None:
        self.sent += other.sent
        self.ok += other.ok
        self.failed.update(other.failed)

    def line(self) -> str:
        kinds = " ".join(f"{kind}={self.failed[kind]}" for kind in KINDS)
        return f"sent={self.sent} ok={self.ok} failed={self.failures} by kind {kinds}"

    def kinds(self) -> str:
        """The non-zero failure kinds, ``eof 3, reset 1``, or ``-``."""
        return ", ".join(f"{k} {self.failed[k]}" for k in KINDS if self.failed[k]) or "-"


@dataclass(frozen=True)
class Failure:
    """One failed request, with what is needed to judge it afterwards."""

    client: str  # client kind
    conn: int  # serial number of the connection it was sent on (0: none)
    pid: int | None  # the worker that answered this connection last, if any
    reused: bool  # sent on a connection that had already answered
    started: float  # time.monotonic() when the request began (connect included)
    ended: float
    kind: str
    detail: str


class BadResponse(Exception):
    """A malformed or unexpected answer."""


def classify(exc: BaseException) -> str:
    """The failure kind of an exception raised while sending or awaiting a request."""
    if isinstance(exc, (asyncio.IncompleteReadError, EOFError)) or type(exc) is ConnectionError:
        return "eof"
    if isinstance(exc, BadResponse | asyncio.LimitOverrunError | ValueError):
        return "bad"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError):
        if exc.errno == errno.ECONNREFUSED:
            return "refused"
        if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
            return "reset"
        if exc.errno == errno.ETIMEDOUT:
            return "timeout"
    return "bad"


# Exceptions a request may end with; anything else is a bug of the driver and propagates.
REQUEST_ERRORS = (
    OSError,
    EOFError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
    BadResponse,
    ValueError,
    TimeoutError,
)

# -- protocol helpers ----------------------------------------------------------------------


def http_request(method: str, body: bytes, close: bool) -> bytes:
    head = [f"{method} /chaos HTTP/1.1", f"Host: {HOST}"]
    if method == "POST":
        head += ["Content-Type: application/octet-stream", f"Content-Length: {len(body)}"]
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + (body if method == "POST" else b"")


async def read_http_response(reader: asyncio.StreamReader, expect: bytes | None) -> bool:
    """Read one whole response; return True if the server will close the connection.

    Raises BadResponse for anything but a well-formed 200 with the expected body,
    IncompleteReadError for an EOF before the response is complete.
    """
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, _, rest = head[:-4].partition(b"\r\n")
    version, _, tail = status_line.partition(b" ")
    status = tail[:3]
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or not status.isdigit():
        raise BadResponse(f"bad status line {status_line[:80]!r}")
    headers: dict[bytes, bytes] = {}
    for line in rest.split(b"\r\n") if rest else ():
        name, sep, value = line.partition(b":")
        if not sep:
            raise BadResponse(f"bad header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    connection = headers.get(b"connection", b"").lower()
    close = b"close" in connection or (version == b"HTTP/1.0" and b"keep-alive" not in connection)
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            chunk = await reader.readexactly(size + 2)
            parts.append(chunk[:-2])
        body = b"".join(parts)
    elif b"content-length" in headers:
        body = await reader.readexactly(int(headers[b"content-length"]))
    elif close:
        body = await reader.read()
    else:
        raise BadResponse("no content-length, not chunked, not closing")
    if status != b"200":
        raise BadResponse(f"status {status_line.decode(errors='replace')}")
    if expect is not None and body != expect:
        raise BadResponse(f"unexpected body {body[:60]!r}")
    return close


def line_answer(answer: bytes, line: bytes) -> int | None:
    """Check an echoed line (``line`` or ``<pid> line``); return the pid if there is one."""
    if answer == line:
        return None
    pid, sep, echoed = answer.partition(b" ")
    if sep and echoed == line and pid.isdigit():
        return int(pid)
    raise BadResponse(f"answer {answer[:80]!r} to {line[:80]!r}")


# -- the driver ----------------------------------------------------------------------------


@dataclass
class Clients:
    """How many clients of each kind, and what the HTTP ones send."""

    http_fresh: int = 0
    http_keepalive: int = 0
    tcp_persistent: int = 0
    tcp_fresh: int = 0
    udp: int = 0
    method: str = "GET"
    body: bytes = b""
    expect: bytes | None = HELLO  # the HTTP body every answer must have (None: any)
    ramp: float = 0.0  # seconds between the starts of two clients (spreads connections)

    def describe(self) -> str:
        counts = {
            "http-fresh": self.http_fresh,
            "http-keepalive": self.http_keepalive,
            "tcp-persistent": self.tcp_persistent,
            "tcp-fresh": self.tcp_fresh,
            "udp": self.udp,
        }
        text = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
        if self.http_fresh or self.http_keepalive:
            text += f" ({self.method}{f' {len(self.body)} B' if self.method == 'POST' else ''})"
        return text


class _UdpClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.waiting: dict[int, asyncio.Future[bytes]] = {}
        self.answered: set[int] = set()
        self.late = 0
        self.duplicates = 0
        self.mismatched = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        text = data.rstrip(b"\n").rpartition(b" ")[2] if b" " in data else data.rstrip(b"\n")
        seq_text = text.rpartition(b"-")[2]
        if not seq_text.isdigit():
            self.mismatched += 1
            return
        seq = int(seq_text)
        future = self.waiting.pop(seq, None)
        if future is not None and not future.done():
            future.set_result(data)
        elif seq in self.answered:
            self.duplicates += 1
        else:
            self.late += 1

    def error_received(self, exc: Exception) -> None:
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(exc)
        self.waiting.clear()


class _Stream:
    """One client connection (none until the first request opens it)."""

    def __init__(self, track: bool = False) -> None:
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.conn = 0  # its serial number
        self.track = track  # kept in Driver.conn_pid while open

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Driver:
    """Runs :class:`Clients` against ``host:port`` (and ``udp_port``) and counts.

    ``drive()`` runs the clients until ``until`` (a coroutine: the scenario's actions)
    returns, or for ``duration`` seconds, then ``tail`` seconds more; then no new request
    starts and the ones in flight get up to their timeout to end. ``max_requests``
    bounds the count.
    """

    def __init__(
        self,
        port: int,
        *,
        host: str = HOST,
        udp_port: int | None = None,
        timeout: float = REQUEST_TIMEOUT,
        max_requests: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.udp_port = udp_port
        self.timeout = timeout
        self.max_requests = max_requests
        self.tallies: dict[str, Tally] = {kind: Tally() for kind in CLIENT_KINDS}
        self.failures: list[Failure] = []
        self.conn_pid: dict[int, int | None] = {}  # open persistent connection -> last pid
        self.fresh_in_flight: dict[int, float] = {}  # fresh request serial -> start time
        self.pids: Counter[int] = Counter()  # answers per worker pid
        self.pid_changes = 0  # answers on one connection from a new worker (handed over)
        self.closes = 0  # HTTP answers with Connection: close (the client reconnected)
        self.udp_late = 0
        self.udp_duplicates = 0
        self.udp_mismatched = 0
        self.started = 0.0
        self.stopped = 0.0
        self._serial = 0
        self._stop: asyncio.Event | None = None

    # -- accounting --

    @property
    def tally(self) -> Tally:
        total = Tally()
        for tally in self.tallies.values():
            total.merge(tally)
        return total

    @property
    def in_flight(self) -> int:
        total = self.tally
        return total.sent - total.ok - total.failures

    def _claim(self, kind: str) -> bool:
        if self._stop is None or self._stop.is_set():
            return False
        if self.max_requests is not None and self.tally.sent >= self.max_requests:
            return False
        self.tallies[kind].sent += 1
        return True

    def _next(self) -> int:
        self._serial += 1
        return self._serial

    def _fail(
        self,
        kind: str,
        exc: BaseException,
        conn: int,
        pid: int | None,
        reused: bool,
        started: float,
    ) -> str:
        what = classify(exc)
        self.tallies[kind].failed[what] += 1
        if len(self.failures) < MAX_FAILURE_RECORDS:
            detail = f"{type(exc).__name__}: {exc}"[:200]
            self.failures.append(
                Failure(kind, conn, pid, reused, started, time.monotonic(), what, detail)
            )
        return what

    def _answered(self, conn: int, pid: int | None) -> None:
        if pid is None:
            return
        self.pids[pid] += 1
        before = self.conn_pid.get(conn)
        if before is not None and before != pid:
            self.pid_changes += 1
        if conn in self.conn_pid:
            self.conn_pid[conn] = pid

    def stop(self) -> None:
        """No new request from now on (the ones in flight finish)."""
        if self._stop is not None:
            self._stop.set()

    def snapshot(self) -> dict[str, Any]:
        """Who holds what right now: for judging a kill afterwards."""
        return {
            "conn_pid": dict(self.conn_pid),
            "fresh_in_flight": len(self.fresh_in_flight),
            "at": time.monotonic(),
        }

    # -- clients --

    async def _open(self, stream: _Stream) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The stream's connection, opened now if it has none."""
        if stream.reader is None or stream.writer is None:
            stream.conn = self._next()
            if stream.track:
                self.conn_pid[stream.conn] = None
            stream.reader, stream.writer = await asyncio.open_connection(self.host, self.port)
        return stream.reader, stream.writer

    async def _http_once(self, stream: _Stream, request: bytes, expect: bytes | None) -> bool:
        reader, writer = await self._open(stream)
        writer.write(request)
        return await read_http_response(reader, expect)

    async def _line_once(self, stream: _Stream, line: bytes) -> int | None:
        reader, writer = await self._open(stream)
        writer.write(line + b"\n")
        answer = await reader.readuntil(b"\n")
        return line_answer(answer[:-1], line)

    async def _http_keepalive(self, method: str, body: bytes, expect: bytes | None) -> None:
        kind = "http-keepalive"
        request = http_request(method, body, close=False)
        stream = _Stream()
        try:
            while self._claim(kind):
                started = time.monotonic()
                reused = stream.writer is not None
                try:
                    close = await asyncio.wait_for(
                        self._http_once(stream, request, expect), self.timeout
                    )
                except REQUEST_ERRORS as exc:
                    stream.close()
                    if self._fail(kind, exc, stream.conn, None, reused, started) == "refused":
                        await asyncio.sleep(REFUSED_PAUSE)
                    continue
                self.tallies[kind].ok += 1
                if close:
                    self.closes += 1
                    stream.close()
        finally:
            stream.close()

    async def _http_fresh(self, method: str, body: bytes, expect: bytes | None) -> None:
        kind = "http-fresh"
        request = http_request(method, body, close=True)
        while self._claim(kind):
            started = time.monotonic()
            stream = _Stream()
            serial = self._next()
            self.fresh_in_flight[serial] = started
            try:
                await asyncio.wait_for(self._http_once(stream, request, expect), self.timeout)
            except REQUEST_ERRORS as exc:
                if self._fail(kind, exc, stream.conn, None, False, started) == "refused":
                    await asyncio.sleep(REFUSED_PAUSE)
                continue
            else:
                self.tallies[kind].ok += 1
            finally:
                stream.close()
                self.fresh_in_flight.pop(serial, None)

    async def _tcp_persistent(self, index: int) -> None:
        kind = "tcp-persistent"
        stream = _Stream(track=True)
        number = 0
        try:
            while self._claim(kind):
                number += 1
                line = b"p%d-%d" % (index, number)
                started = time.monotonic()
                reused = stream.writer is not None
                try:
                    pid = await asyncio.wait_for(self._line_once(stream, line), self.timeout)
                except REQUEST_ERRORS as exc:
                    stream.close()
                    before = self.conn_pid.pop(stream.conn, None)
                    if self._fail(kind, exc, stream.conn, before, reused, started) == "refused":
                        await asyncio.sleep(REFUSED_PAUSE)
                    continue
                self.tallies[kind].ok += 1
                self._answered(stream.conn, pid)
        finally:
            stream.close()
            self.conn_pid.pop(stream.conn, None)

    async def _tcp_fresh(self, index: int) -> None:
        kind = "tcp-fresh"
        number = 0
        while self._claim(kind):
            number += 1
            line = b"f%d-%d" % (index, number)
            started = time.monotonic()
            stream = _Stream()
            serial = self._next()
            self.fresh_in_flight[serial] = started
            try:
                pid = await asyncio.wait_for(self._line_once(stream, line), self.timeout)
            except REQUEST_ERRORS as exc:
                if self._fail(kind, exc, stream.conn, None, False, started) == "refused":
                    await asyncio.sleep(REFUSED_PAUSE)
                continue
            else:
                self.tallies[kind].ok += 1
                if pid is not None:
                    self.pids[pid] += 1
            finally:
                stream.close()
                self.fresh_in_flight.pop(serial, None)

    async def _udp(self, index: int) -> None:
        kind = "udp"
        assert self.udp_port is not None, "no UDP port"
        loop = asyncio.get_running_loop()
        transport, client = await loop.create_datagram_endpoint(
            _UdpClient, remote_addr=(self.host, self.udp_port)
        )
        seq = 0
        try:
            while self._claim(kind):
                seq += 1
                line = b"u%d-%d" % (index, seq)
                started = time.monotonic()
                future: asyncio.Future[bytes] = loop.create_future()
                client.waiting[seq] = future
                try:
                    transport.sendto(line + b"\n")
                    answer = await asyncio.wait_for(future, UDP_TIMEOUT)
                    pid = line_answer(answer.rstrip(b"\n"), line)
                except REQUEST_ERRORS as exc:
                    client.waiting.pop(seq, None)
                    if self._fail(kind, exc, 0, None, False, started) == "refused":
                        await asyncio.sleep(REFUSED_PAUSE)
                    continue
                client.answered.add(seq)
                self.tallies[kind].ok += 1
                if pid is not None:
                    self.pids[pid] += 1
        finally:
            transport.close()
            self.udp_late += client.late
            self.udp_duplicates += client.duplicates
            self.udp_mismatched += client.mismatched

    # -- running --

    async def _after(self, delay: float, coro: Awaitable[None]) -> None:
        if delay:
            await asyncio.sleep(delay)
        await coro

    async def drive(
        self,
        clients: Clients,
        until: Callable[[Driver], Awaitable[None]] | None = None,
        *,
        duration: float = 3.0,
        tail: float = 0.5,
        limit: float = 120.0,
    ) -> None:
        self._stop = asyncio.Event()
        coros: list[Awaitable[None]] = []
        coros += [
            self._http_keepalive(clients.method, clients.body, clients.expect)
            for _ in range(clients.http_keepalive)
        ]
        coros += [
            self._http_fresh(clients.method, clients.body, clients.expect)
            for _ in range(clients.http_fresh)
        ]
        coros += [self._tcp_persistent(i) for i in range(clients.tcp_persistent)]
        coros += [self._tcp_fresh(i) for i in range(clients.tcp_fresh)]
        coros += [self._udp(i) for i in range(clients.udp)]
        self.started = time.monotonic()
        tasks = [
            asyncio.ensure_future(self._after(index * clients.ramp, coro))
            for index, coro in enumerate(coros)
        ]
        try:
            if until is not None:
                await asyncio.wait_for(until(self), limit)
            else:
                await asyncio.sleep(duration)
            if not self._stop.is_set():
                await asyncio.sleep(tail)
        finally:
            self._stop.set()
            self.stopped = time.monotonic()
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=STOP_GRACE)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:  # a driver bug surfaces, it is not counted as a failure
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]


def run_async(coro: Awaitable[Any]) -> Any:
    """Run ``coro`` on a new uvloop loop, then close everything it left behind."""
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


async def in_thread(func: Callable[..., Any], *args: Any) -> Any:
    """A blocking harness call (ctl stats, a wait) without stopping the clients."""
    return await asyncio.to_thread(func, *args)


# -- outcomes --------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one scenario saw: the accounting, its checks, and figures worth reporting."""

    name: str
    setup: str = ""
    tally: Tally = field(default_factory=Tally)
    by_client: dict[str, Tally] = field(default_factory=dict)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    log: str = ""

    def check(self, what: str, ok: bool, detail: Any = "") -> bool:
        self.checks.append((what, bool(ok), str(detail)))
        return bool(ok)

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.checks)

    def absorb(self, driver: Driver) -> None:
        for kind, tally in driver.tallies.items():
            if tally.sent:
                self.by_client.setdefault(kind, Tally()).merge(tally)
                self.tally.merge(tally)
        self.figures["load_seconds"] = round(driver.stopped - driver.started, 2)
        if driver.closes:
            self.figures["connection_close_answers"] = driver.closes
        if driver.pid_changes:
            self.figures["connections_moved_to_another_worker"] = driver.pid_changes
        if driver.pids:
            self.figures["workers_that_answered"] = len(driver.pids)
        if self.by_client.get("udp"):
            self.figures.update(
                udp_late=driver.udp_late,
                udp_duplicates=driver.udp_duplicates,
                udp_mismatched=driver.udp_mismatched,
            )
        self.check(
            "every request accounted for (sent = ok + failed)",
            self.tally.sent == self.tally.ok + self.tally.failures,
            self.tally.line(),
        )

    def zero_failed(self) -> bool:
        return self.check("0 failed requests", self.tally.failures == 0, self.tally.line())

    def lines(self) -> list[str]:
        out = [f"== {self.name}: {self.setup}"]
        for kind, tally in self.by_client.items():
            out.append(f"  {kind}: {tally.line()}")
        for key, value in self.figures.items():
            out.append(f"  {key}: {value}")
        for what, ok, detail in self.checks:
            out.append(f"  [{'PASS' if ok else 'FAIL'}] {what}{f' -- {detail}' if detail else ''}")
        out.append(f"  {'passed' if self.passed else 'FAILED'} in {self.seconds:.1f}s")
        out.append(self.tally.line())
        return out

    def report(self) -> str:
        return "\n".join(self.lines())

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.splitlines()[-lines:])


@dataclass(frozen=True)
class Scenario:
    name: str
    row: str  # what it is, as the table or list says it
    run: Callable[[Path, bool], Outcome]
    needs: tuple[str, ...] = ()


SCENARIOS: dict[str, Scenario] = {}


def scenario(
    name: str, row: str, needs: tuple[str, ...] = ()
) -> Callable[[Callable[[Outcome, Path, bool], None]], Callable[[Path, bool], Outcome]]:
    """Register ``func(outcome, tmp, long)`` as a scenario; it fills ``outcome``."""

    def register(func: Callable[[Outcome, Path, bool], None]) -> Callable[[Path, bool], Outcome]:
        def run(tmp: Path, long: bool = False) -> Outcome:
            outcome = Outcome(name)
            home = tmp / name
            home.mkdir(parents=True, exist_ok=True)
            began = time.monotonic()
            try:
                func(outcome, home, long)
            finally:
                outcome.seconds = time.monotonic() - began
            return outcome

        run.__name__ = func.__name__
        run.__doc__ = func.__doc__
        SCENARIOS[name] = Scenario(name, row, run, needs)
        return run

    return register


def _arbiter(home: Path, app: str | None, *args: str, workers: int = 2, **kw: Any) -> Arbiter:
    home.mkdir(parents=True, exist_ok=True)
    return Arbiter(home, app, *args, workers=workers, **kw)


def _log_figures(outcome: Outcome, arbiter: Arbiter) -> None:
    log = arbiter.log()
    outcome.log = log
    outcome.figures["tracebacks_in_log"] = log.count("Traceback")
    spawned = log.count("spawned worker")
    if spawned:
        outcome.figures["workers_spawned"] = spawned


# -- actions ---------------------------------------------------------------------------------


def wait_rolled(arbiter: Arbiter, workers: int, after_generation: int) -> int:
    """Wait until ``workers`` workers, all of the newest generation (> after_generation),
    are ready and none is in transition; return that generation."""

    def rolled() -> int | None:
        stats = arbiter.stats()
        generation = int(stats["arbiter"]["generation"])
        current = stats["workers"]
        done = (
            generation > after_generation
            and len(current) == workers
            and all(w["phase"] == "ready" and w["generation"] == generation for w in current)
        )
        return generation if done else None

    return wait_until(rolled, ROLL_TIMEOUT, f"{workers} workers of a generation after HUP")


def generation(arbiter: Arbiter) -> int:
    return int(arbiter.stats()["arbiter"]["generation"])


async def hups(
    arbiter: Arbiter, workers: int, count: int, gap: tuple[float, float], seed: int = 8
) -> int:
    """``count`` HUPs ``gap`` seconds apart (uniform), then wait for the last rollout."""
    rng = random.Random(seed)
    for number in range(count):
        await asyncio.sleep(rng.uniform(*gap))
        if number == count - 1:
            before = await in_thread(generation, arbiter)
        arbiter.send(signal.SIGHUP)
    return int(await in_thread(wait_rolled, arbiter, workers, before))


def _hup_scenario(
    outcome: Outcome,
    home: Path,
    app: str,
    args: tuple[str, ...],
    clients: Clients,
    count: int,
    gap: tuple[float, float],
    workers: int = 2,
) -> None:
    outcome.setup = (
        f"{app} {' '.join(args)}, {workers} workers, {clients.describe()}, "
        f"{count} HUPs {gap[0]:g}-{gap[1]:g} s apart"
    )
    with _arbiter(home, app, *args, workers=workers) as arbiter:
        arbiter.wait_serving()
        driver = Driver(arbiter.port)

        async def actions(driver: Driver) -> None:
            await asyncio.sleep(0.3)  # every client connected and busy
            outcome.figures["generation"] = await hups(arbiter, workers, count, gap)

        run_async(driver.drive(clients, actions, limit=count * gap[1] + 60))
        outcome.absorb(driver)
        outcome.figures["hups"] = count
        _log_figures(outcome, arbiter)
    outcome.zero_failed()


def _recycle_scenario(
    outcome: Outcome,
    home: Path,
    app: str,
    args: tuple[str, ...],
    clients: Clients,
    duration: float,
    min_recycles: int,
    workers: int = 2,
) -> None:
    outcome.setup = (
        f"{app} {' '.join(args)}, {workers} workers, {clients.describe()}, {duration:g} s"
    )
    with _arbiter(home, app, *args, workers=workers) as arbiter:
        arbiter.wait_serving()
        driver = Driver(arbiter.port)
        run_async(driver.drive(clients, duration=duration, tail=0.0))
        recycles = int(arbiter.stats()["totals"]["recycles"])
        outcome.absorb(driver)
        outcome.figures["recycles"] = recycles
        _log_figures(outcome, arbiter)
    outcome.zero_failed()
    outcome.check(f"at least {min_recycles} recycles", recycles >= min_recycles, recycles)


# -- the table of issue 8 ------------------------------------------------------------------


def _hup_plan(long: bool) -> tuple[int, tuple[float, float]]:
    return (10, (1.0, 1.0)) if long else (3, (0.7, 0.7))


@scenario("http-hup-keepalive", "`--http` raw, 10 HUPs, keep-alive client")
def http_hup_keepalive(outcome: Outcome, home: Path, long: bool) -> None:
    """64 keep-alive connections through HUPs: 0 failed."""
    count, gap = _hup_plan(long)
    clients = Clients(http_keepalive=64)
    _hup_scenario(outcome, home, "testapps.hello:raw", ("--http",), clients, count, gap)


@scenario("http-recycle-keepalive", "`--http` raw, `--max-requests` recycling, keep-alive client")
def http_recycle_keepalive(outcome: Outcome, home: Path, long: bool) -> None:
    """64 keep-alive connections while workers recycle after --max-requests: 0 failed."""
    limit, jitter, duration, least = ("5000", "1000", 10.0, 6) if long else ("2000", "500", 4.0, 2)
    args = ("--http", "--max-requests", limit, "--max-requests-jitter", jitter)
    clients = Clients(http_keepalive=64)
    _recycle_scenario(outcome, home, "testapps.hello:raw", args, clients, duration, least)


@scenario("wsgi-hup-keepalive", "`--wsgi` inline, 10 HUPs, keep-alive")
def wsgi_hup_keepalive(outcome: Outcome, home: Path, long: bool) -> None:
    count, gap = _hup_plan(long)
    clients = Clients(http_keepalive=64)
    _hup_scenario(outcome, home, "testapps.hello:wsgi", ("--wsgi",), clients, count, gap)


@scenario("wsgi-threads-hup-keepalive", "`--wsgi --threads 4`, 10 HUPs, keep-alive")
def wsgi_threads_hup_keepalive(outcome: Outcome, home: Path, long: bool) -> None:
    count, gap = _hup_plan(long)
    clients = Clients(http_keepalive=64)
    args = ("--wsgi", "--threads", "4")
    _hup_scenario(outcome, home, "testapps.hello:wsgi", args, clients, count, gap)


@scenario("wsgi-recycle-fresh", "`--wsgi`, recycles, new connection per request")
def wsgi_recycle_fresh(outcome: Outcome, home: Path, long: bool) -> None:
    limit, duration, least = ("1000", 10.0, 6) if long else ("400", 4.0, 2)
    args = ("--wsgi", "--max-requests", limit, "--max-requests-jitter", "100")
    clients = Clients(http_fresh=16)
    _recycle_scenario(outcome, home, "testapps.hello:wsgi", args, clients, duration, least)


@scenario("wsgi-hup-fresh", "`--wsgi`, 10 HUPs, new connection per request")
def wsgi_hup_fresh(outcome: Outcome, home: Path, long: bool) -> None:
    count, gap = _hup_plan(long)
    clients = Clients(http_fresh=16)
    _hup_scenario(outcome, home, "testapps.hello:wsgi", ("--wsgi",), clients, count, gap)


@scenario(
    "tcp-hup-persistent-handoff",
    "raw TCP consumer, persistent connections, 10 HUPs, `--handoff`",
)
def tcp_hup_persistent_handoff(outcome: Outcome, home: Path, long: bool) -> None:
    """64 persistent line connections through HUPs with --handoff: 0 failed, and the
    connections were moved to the new workers (answered by a new pid, no reconnect)."""
    count, gap = _hup_plan(long)
    clients = Clients(tcp_persistent=64)
    app = "testapps.whoami:WhoAmI"
    _hup_scenario(outcome, home, app, ("--handoff",), clients, count, gap)
    moved = int(outcome.figures.get("connections_moved_to_another_worker", 0))
    outcome.check("connections handed to the new workers (same connection, new pid)", moved > 0)


@scenario("http-many-hups-fresh", "100 HUPs 0.1-0.3 s apart, `--http`, new connection per request")
def http_many_hups_fresh(outcome: Outcome, home: Path, long: bool) -> None:
    count = 100 if long else 15
    clients = Clients(http_fresh=16)
    _hup_scenario(outcome, home, "testapps.hello:raw", ("--http",), clients, count, (0.1, 0.3))


@scenario("udp-hup", "UDP with sequence numbers, 10 HUPs")
def udp_hup(outcome: Outcome, home: Path, long: bool) -> None:
    """Datagrams through HUPs: none lost, duplicated or mismatched."""
    count, gap = _hup_plan(long)
    clients = Clients(udp=16)
    outcome.setup = f"testapps.whoami:WhoAmI on udp://, 2 workers, 16 udp, {count} HUPs"
    with _arbiter(home, "testapps.whoami:WhoAmI", "--bind", f"udp://{HOST}:0") as arbiter:
        arbiter.wait_serving()
        binds = arbiter.stats()["arbiter"]["binds"]
        udp_port = int(next(b for b in binds if b.startswith("udp://")).rpartition(":")[2])
        driver = Driver(arbiter.port, udp_port=udp_port)

        async def actions(driver: Driver) -> None:
            await asyncio.sleep(0.3)
            outcome.figures["generation"] = await hups(arbiter, 2, count, gap)

        run_async(driver.drive(clients, actions, limit=count * gap[1] + 60))
        outcome.absorb(driver)
        _log_figures(outcome, arbiter)
    outcome.zero_failed()
    odd = driver.udp_duplicates + driver.udp_mismatched
    outcome.check("no duplicated or mismatched datagram", odd == 0, odd)


# -- nginx in front -----------------------------------------------------------------------------

NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {home}/nginx.pid;
error_log {home}/error.log info;
{user}
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {home}/body;
    proxy_temp_path {home}/proxy;
    fastcgi_temp_path {home}/fastcgi;
    uwsgi_temp_path {home}/uwsgi;
    scgi_temp_path {home}/scgi;
    keepalive_requests 1000000;
    upstream app {{
{servers}
        keepalive 64;
        keepalive_requests 1000000;
        # shorter than the server's --keep-alive ({keep_alive} s): nginx closes first
        keepalive_timeout {upstream_timeout}s;
    }}
    server {{
        listen {host}:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
{location_options}
        }}
    }}
}}
"""
# What in nginx's error log means the upstream let a request down.
NGINX_UPSTREAM_ERRORS = re.compile(
    r"upstream prematurely closed|reset by peer|\b502\b|Connection refused|"
    r"upstream timed out|no live upstreams|while reading response header from upstream"
)


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


@contextlib.contextmanager
def nginx(
    home: Path,
    upstream: int | Sequence[int],
    keep_alive: float,
    server_options: str = "",
    location_options: str = "",
) -> Iterator[tuple[int, Path]]:
    """nginx on a free loopback port proxying to ``upstream`` (one port, or several: one
    upstream server each, with ``server_options`` such as ``max_fails=1``); yields (port,
    error log). Stopped by pid (master, then its workers) on exit."""
    binary = nginx_binary()
    if binary is None:
        raise AssertionError("nginx is not installed (.ci/run installs nginx-light)")
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    conf = home / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            home=home,
            host=HOST,
            port=port,
            servers="\n".join(
                f"        server {HOST}:{up} {server_options};".replace(" ;", ";")
                for up in ([upstream] if isinstance(upstream, int) else upstream)
            ),
            keep_alive=keep_alive,
            upstream_timeout=max(1, int(keep_alive / 2)),
            user="user root;" if os.geteuid() == 0 else "",
            location_options=location_options,
        )
    )
    error_log = home / "error.log"
    with open(home / "stderr.log", "ab") as stderr:
        proc = subprocess.Popen(
            [binary, "-p", str(home), "-e", str(error_log), "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            start_new_session=True,
        )
    procs: dict[int, psutil.Process] = {proc.pid: psutil.Process(proc.pid)}
    try:

        def listening() -> bool:
            if proc.poll() is not None:
                raise AssertionError(
                    f"nginx exited with {proc.returncode}: "
                    + (home / "stderr.log").read_text(errors="replace")
                    + (error_log.read_text(errors="replace") if error_log.exists() else "")
                )
            with socket.create_connection((HOST, port), timeout=1.0):
                pass
            for child in psutil.Process(proc.pid).children():
                procs.setdefault(child.pid, child)
            return True

        wait_until(listening, 10.0, "nginx to listen")
        yield port, error_log
    finally:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(proc.pid).children():
                procs.setdefault(child.pid, child)
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)  # graceful: finish, then exit
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5.0)
        rest = [p for pid, p in procs.items() if pid != proc.pid]
        _, alive = psutil.wait_procs(rest, timeout=3.0)
        for left in alive:
            with contextlib.suppress(psutil.Error):
                left.kill()
        psutil.wait_procs(alive, timeout=3.0)


def _nginx_scenario(outcome: Outcome, home: Path, long: bool, method: str) -> None:
    count, gap = (8, (1.0, 1.0)) if long else (3, (0.7, 0.7))
    keep_alive = 5.0
    body = b"x" * 512 if method == "POST" else b""
    clients = Clients(http_keepalive=64, method=method, body=body)
    outcome.setup = (
        f"nginx (upstream keepalive 64, keepalive_timeout {int(keep_alive / 2)}s) -> "
        f"--http testapps.hello:raw --keep-alive {keep_alive:g}, 2 workers, "
        f"{clients.describe()}, {count} HUPs"
    )
    args = ("--http", "--keep-alive", f"{keep_alive:g}")
    with _arbiter(home / "arbiter", "testapps.hello:raw", *args) as arbiter:
        arbiter.wait_serving()
        with nginx(home / "nginx", arbiter.port, keep_alive) as (port, error_log):
            driver = Driver(port)

            async def actions(driver: Driver) -> None:
                await asyncio.sleep(0.5)
                outcome.figures["generation"] = await hups(arbiter, 2, count, gap)

            run_async(driver.drive(clients, actions, limit=count * gap[1] + 60))
            outcome.absorb(driver)
            errors = [
                line
                for line in error_log.read_text(errors="replace").splitlines()
                if NGINX_UPSTREAM_ERRORS.search(line)
            ]
        _log_figures(outcome, arbiter)
    outcome.figures["nginx_upstream_error_lines"] = len(errors)
    kinds = Counter(
        m.group(0) for line in errors if (m := NGINX_UPSTREAM_ERRORS.search(line)) is not None
    )
    if kinds:
        outcome.figures["nginx_upstream_errors_by_kind"] = dict(kinds)
        outcome.figures["nginx_first_error"] = errors[0][:240]
    outcome.zero_failed()
    outcome.check("0 upstream errors in nginx's error log", not errors, len(errors))


@scenario(
    "nginx-post",
    "nginx (upstream keepalive 64) in front, 8 HUPs, POST",
    needs=("nginx",),
)
def nginx_post(outcome: Outcome, home: Path, long: bool) -> None:
    _nginx_scenario(outcome, home, long, "POST")


@scenario("nginx-get", "same with GET", needs=("nginx",))
def nginx_get(outcome: Outcome, home: Path, long: bool) -> None:
    _nginx_scenario(outcome, home, long, "GET")


# -- faults ------------------------------------------------------------------------------------


@scenario("kill-worker", "kill -9 of one worker under load: only its requests in flight fail")
def kill_worker(outcome: Outcome, home: Path, long: bool) -> None:
    """Persistent and fresh line clients; one worker is killed with SIGKILL. A failed
    request must have been on that worker: on a connection it last answered (or one not
    answered yet), started before it died; never more than it held."""
    persistent, fresh = (64, 16) if long else (32, 8)
    # Started 10 ms apart, the connections spread over both workers.
    clients = Clients(tcp_persistent=persistent, tcp_fresh=fresh, ramp=0.01)
    outcome.setup = f"testapps.whoami:WhoAmI, 2 workers, {clients.describe()}, one SIGKILL"
    with _arbiter(home, "testapps.whoami:WhoAmI") as arbiter:
        arbiter.wait_serving()
        workers = arbiter.worker_pids()
        driver = Driver(arbiter.port)
        held: dict[str, Any] = {}

        async def actions(driver: Driver) -> None:
            await asyncio.sleep(1.5 if long else 0.8)
            held.update(driver.snapshot())
            # The victim: the worker holding the most persistent connections.
            holders = Counter(p for p in held["conn_pid"].values() if p in workers)
            victim = holders.most_common(1)[0][0] if holders else min(workers)
            held["victim"] = victim
            os.kill(victim, signal.SIGKILL)
            held["killed"] = time.monotonic()
            await in_thread(
                wait_until, lambda: not arbiter.running(victim), 5.0, "the victim to die"
            )
            held["dead"] = time.monotonic()
            await in_thread(
                arbiter.wait_workers,
                lambda ws: len(ws) == 2 and victim not in {w["pid"] for w in ws},
                "a replacement",
            )
            await asyncio.sleep(1.5 if long else 0.8)

        run_async(driver.drive(clients, actions, limit=60))
        outcome.absorb(driver)
        _log_figures(outcome, arbiter)
    victim = held["victim"]
    on_victim = sum(1 for pid in held["conn_pid"].values() if pid in (victim, None))
    bound = on_victim + held["fresh_in_flight"]
    outcome.figures.update(
        persistent_connections_on_the_victim=on_victim,
        persistent_connections_on_the_other=len(held["conn_pid"]) - on_victim,
        fresh_requests_in_flight_at_the_kill=held["fresh_in_flight"],
        seconds_to_die=round(held["dead"] - held["killed"], 3),
    )
    outcome.check(
        "failed <= requests the victim held at the kill",
        outcome.tally.failures <= bound,
        f"{outcome.tally.failures} failed, bound {bound}",
    )
    stray = [
        f
        for f in driver.failures
        if f.started > held["dead"]
        or (f.client == "tcp-persistent" and f.pid not in (victim, None))
    ]
    outcome.check(
        "every failed request was on the victim, started before it died",
        not stray and len(driver.failures) == outcome.tally.failures,
        stray[:3],
    )


@scenario("kill-arbiter", "kill -9 of the arbiter: no process left, port re-bindable within 1 s")
def kill_arbiter(outcome: Outcome, home: Path, long: bool) -> None:
    clients = Clients(tcp_persistent=16, tcp_fresh=4)
    outcome.setup = (
        f"testapps.whoami:WhoAmI, 2 workers, {clients.describe()}, SIGKILL to the arbiter"
    )
    with _arbiter(home, "testapps.whoami:WhoAmI") as arbiter:
        arbiter.wait_serving()
        port = arbiter.port
        tree = [psutil.Process(arbiter.pid), *(psutil.Process(p) for p in arbiter.worker_pids())]
        driver = Driver(port)
        times: dict[str, float] = {}

        def measure() -> None:
            def gone() -> bool:
                reap_orphans()
                return not any(_alive(p) for p in tree)

            wait_until(gone, 10.0, "every process of the tree to exit", poll=0.005)
            times["gone"] = time.monotonic()

            def rebind() -> bool:
                with socket.socket() as sock:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind((HOST, port))
                    sock.listen(1)
                return True

            wait_until(rebind, 10.0, f"port {port} to be re-bindable", poll=0.005)
            times["bound"] = time.monotonic()

        async def actions(driver: Driver) -> None:
            await asyncio.sleep(1.0)
            os.kill(arbiter.pid, signal.SIGKILL)
            times["killed"] = time.monotonic()
            driver.stop()
            await in_thread(measure)

        try:
            run_async(driver.drive(clients, actions, limit=60))
        finally:
            outcome.absorb(driver)
            _log_figures(outcome, arbiter)
    to_gone = times.get("gone", float("inf")) - times["killed"]
    to_bind = times.get("bound", float("inf")) - times.get("gone", float("inf"))
    outcome.figures.update(
        seconds_until_no_process_left=round(to_gone, 3),
        seconds_from_last_exit_to_rebindable=round(to_bind, 3),
    )
    outcome.check("no process of the tree left within 5 s", to_gone <= 5.0, f"{to_gone:.3f}s")
    outcome.check("port re-bindable within 1 s of the last exit", to_bind <= 1.0, f"{to_bind:.3f}s")


def _first_child(pid: int) -> psutil.Process | None:
    children = psutil.Process(pid).children()
    return children[0] if children else None


def _none_running(arbiter: Arbiter, pids: set[int]) -> bool:
    return not any(arbiter.running(pid) for pid in pids)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@scenario(
    "stuck-worker", "a stuck worker killed after --timeout, a busy but beating one left alone"
)
def stuck_worker(outcome: Outcome, home: Path, long: bool) -> None:
    timeout = 2.0
    busy = 6.0 if long else 3.0
    outcome.setup = (
        f"testapps.faulty:Faulty --timeout {timeout:g}, 1 worker: busy {busy:g}, block 30"
    )
    tally = outcome.by_client.setdefault("tcp-fresh", Tally())
    with _arbiter(
        home, "testapps.faulty:Faulty", "--timeout", f"{timeout:g}", workers=1
    ) as arbiter:
        arbiter.wait_serving()
        port, (pid,) = arbiter.port, arbiter.worker_pids()

        def ask(line: bytes, wait: float) -> bytes | None:
            tally.sent += 1
            try:
                answer = exchange(port, line, timeout=wait)
            except (OSError, ValueError) as exc:
                tally.failed[classify(exc)] += 1
                return None
            tally.ok += 1
            return answer

        answer = ask(b"busy %g" % busy, busy + 10)
        outcome.check("the busy worker answered", answer == b"%d done" % pid, answer)
        outcome.check(
            "the busy but beating worker was left alone",
            arbiter.worker_pids() == {pid} and "killing worker" not in arbiter.log(),
        )
        with socket.create_connection((HOST, port), timeout=30.0) as blocked:
            blocked.sendall(b"block 30\n")
            began = time.monotonic()
            wait_until(lambda: not arbiter.running(pid), 20.0, "the stuck worker to be killed")
            took = time.monotonic() - began
        ready = arbiter.wait_workers(lambda ws: len(ws) == 1 and ws[0]["pid"] != pid, "a new one")
        new = int(ready[0]["pid"])
        answer = ask(b"echo after", 5.0)
        log = arbiter.log()
        outcome.log = log
    outcome.figures.update(seconds_until_the_stuck_worker_died=round(took, 2))
    outcome.tally.merge(tally)
    outcome.check(
        f"the stuck worker was killed after --timeout ({timeout:g} s), not long after",
        # Its last beat came up to one interval (timeout / 4) before the block; then ABRT,
        # whose handler exits at once.
        timeout * 0.75 <= took <= timeout + 6.0,
        f"{took:.2f}s",
    )
    outcome.check("the replacement serves", answer == b"%d after" % new, answer)
    outcome.check("the kill was logged as a missed heartbeat", "no heartbeat" in log)
    outcome.zero_failed()


LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*spawned worker", re.M)


@scenario("boot-crash", "crash at boot: backoff, then exit 3 with the reason")
def boot_crash(outcome: Outcome, home: Path, long: bool) -> None:
    """A serving worker dies; every replacement crashes at boot: the arbiter retries
    with a growing delay, then exits with status 3 and the reason in its log."""
    flag = home / "crash.flag"
    outcome.setup = "testapps.boot_flag:app, 1 worker; flag set, the worker killed"
    env = {"CHAOS_CRASH_FLAG": str(flag)}
    with _arbiter(home, "testapps.boot_flag:app", workers=1, env=env) as arbiter:
        arbiter.wait_serving()
        (pid,) = arbiter.worker_pids()
        flag.touch()
        began = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        code = arbiter.wait_exit(40.0)
        took = time.monotonic() - began
        log = arbiter.log()
        outcome.log = log
    stamps = [
        datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for m in LOG_TIME.finditer(log)
    ]
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(stamps[1:])]
    outcome.figures.update(exit_status=code, seconds_to_exit=round(took, 2), respawn_gaps=gaps)
    outcome.check("exit status 3", code == 3, code)
    outcome.check(
        "the reason is in the log",
        "exiting with status 3" in log and "the crash flag is set" in log,
    )
    outcome.check(
        "respawns back off (each gap longer than the one before)",
        len(gaps) >= 2 and all(b > a for a, b in itertools.pairwise(gaps)),
        gaps,
    )


@scenario("term-slow", "TERM with slow requests: all finish within the grace, new ones refused")
def term_slow(outcome: Outcome, home: Path, long: bool) -> None:
    """Slow requests in flight, then TERM: every one is answered, the arbiter exits 0
    within the graceful timeout, and every connection attempted after the TERM is
    refused at once (ECONNREFUSED), not accepted then reset, not left hanging."""
    delay, count, grace = (3.0, 32, 10) if long else (1.5, 8, 5)
    outcome.setup = f"testapps.slow:Slow (delay {delay:g} s), 2 workers, {count} in flight, TERM"
    env = {"SLOW_DELAY": f"{delay:g}"}
    args = ("--graceful-timeout", str(grace))
    probes: Counter[str] = Counter()
    with _arbiter(home, "testapps.slow:Slow", *args, env=env) as arbiter:
        arbiter.wait_serving()
        port = arbiter.port
        driver = Driver(port, timeout=delay + grace + 5, max_requests=count)
        times: dict[str, float] = {}

        async def probe() -> str:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 1.0)
            except REQUEST_ERRORS as exc:
                return classify(exc)
            try:  # accepted by the kernel: what becomes of a request on it?
                writer.write(b"probe\n")
                await asyncio.wait_for(reader.readuntil(b"\n"), delay + grace + 5)
                return "accepted, answered"
            except REQUEST_ERRORS as exc:
                return f"accepted, then {classify(exc)}"
            finally:
                writer.close()

        async def actions(driver: Driver) -> None:
            await in_thread(
                wait_until,
                lambda: arbiter.stats()["totals"]["connections"] >= count,
                5.0,
                "every slow request in flight",
            )
            arbiter.send(signal.SIGTERM)
            times["term"] = time.monotonic()
            tasks = []
            for _ in range(10):
                await asyncio.sleep(0.1)
                tasks.append(asyncio.ensure_future(probe()))
            for result in await asyncio.gather(*tasks):
                probes[result] += 1
            times["code"] = float(await in_thread(arbiter.wait_exit, grace + 10.0))
            times["exited"] = time.monotonic()

        clients = Clients(tcp_fresh=count)
        run_async(driver.drive(clients, actions, limit=grace + 30))
        outcome.absorb(driver)
        _log_figures(outcome, arbiter)
    took = times["exited"] - times["term"]
    outcome.figures.update(
        exit_status=int(times["code"]),
        seconds_from_term_to_exit=round(took, 2),
        probes_after_term=dict(probes),
    )
    outcome.zero_failed()
    outcome.check("exit status 0", times["code"] == 0, int(times["code"]))
    outcome.check(f"exited within the grace ({grace} s)", took <= grace + 1.0, f"{took:.2f}s")
    outcome.check(
        "every connection attempted after TERM refused",
        probes["refused"] == sum(probes.values()),
        dict(probes),
    )


@scenario("quick-hups-flat", "100 quick HUPs: arbiter fds, RSS and children flat")
def quick_hups_flat(outcome: Outcome, home: Path, long: bool) -> None:
    count = 100
    gap = (0.02, 0.05) if long else (0.005, 0.02)
    clients = Clients(tcp_fresh=4)
    outcome.setup = f"testapps.whoami:WhoAmI, 2 workers, {clients.describe()}, {count} HUPs"
    with _arbiter(home, "testapps.whoami:WhoAmI") as arbiter:
        arbiter.wait_serving()
        me = psutil.Process(arbiter.pid)
        samples: dict[str, dict[str, int]] = {}

        def sample() -> dict[str, int]:
            children = [c for c in me.children() if _alive(c)]
            return {"fds": me.num_fds(), "rss": me.memory_info().rss, "children": len(children)}

        async def actions(driver: Driver) -> None:
            await hups(arbiter, 2, 5, (0.05, 0.1))  # warm up: first-reload allocations
            await asyncio.sleep(0.5)
            samples["before"] = await in_thread(sample)
            await hups(arbiter, 2, count, gap)
            await asyncio.sleep(0.5)
            samples["after"] = await in_thread(sample)

        driver = Driver(arbiter.port)
        run_async(driver.drive(clients, actions, limit=120))
        outcome.absorb(driver)
        outcome.figures["arbiter_before"] = samples.get("before")
        outcome.figures["arbiter_after"] = samples.get("after")
        outcome.figures["generation"] = generation(arbiter)
        _log_figures(outcome, arbiter)
    before, after = samples["before"], samples["after"]
    outcome.check("fds flat (+-2)", abs(after["fds"] - before["fds"]) <= 2, (before, after))
    grown = (after["rss"] - before["rss"]) / 2**20
    outcome.check("RSS flat (< 4 MiB growth)", grown < 4.0, f"{grown:+.2f} MiB")
    outcome.check("children flat", after["children"] == before["children"] == 2, after)


@scenario("pid1-orphans", "PID 1 in `unshare --pid --fork` with orphans: reaped")
def pid1_orphans(outcome: Outcome, home: Path, long: bool) -> None:
    """The arbiter is PID 1 of a new PID namespace; the app leaves orphans that are
    re-parented to it and exit: none may stay a zombie.

    The arbiter's stats name pids of its namespace, so the harness's ctl-based waits are
    not used here (they would remember the wrong pids): readiness is read from the log
    and from answers, and the processes are judged from outside with psutil."""
    orphans = 100 if long else 10
    outcome.setup = (
        f"unshare --pid --fork --mount-proc, testapps.orphans:Orphans, {orphans} orphans"
    )
    unshare = shutil.which("unshare")
    if unshare is None:
        raise AssertionError("unshare (util-linux) is not installed")
    port = free_port()
    arbiter = _arbiter(home, "testapps.orphans:Orphans", bind=f"{HOST}:{port}")
    arbiter.argv = [unshare, "--pid", "--fork", "--mount-proc", "--kill-child", *arbiter.argv]
    tally = outcome.by_client.setdefault("tcp-fresh", Tally())
    proc = None
    init: psutil.Process | None = None
    try:
        arbiter.start()
        proc = arbiter.proc
        assert proc is not None
        init = wait_until(partial(_first_child, proc.pid), 10.0, "the namespace init")
        ns_init = init
        wait_until(lambda: arbiter.log().count("is ready") >= 2, 10.0, "2 workers ready")
        for _ in range(orphans):
            tally.sent += 1
            try:
                answer = exchange(port, b"orphan")
                ok = answer.endswith(b" orphaned")
            except (OSError, ValueError) as exc:
                tally.failed[classify(exc)] += 1
                continue
            if ok:
                tally.ok += 1
            else:
                tally.failed["bad"] += 1
        time.sleep(0.5)  # every grandchild lives 0.2 s

        def zombies() -> list[int]:
            return [
                c.pid
                for c in ns_init.children(recursive=True)
                if c.status() == psutil.STATUS_ZOMBIE
            ]

        with contextlib.suppress(AssertionError):
            wait_until(lambda: not zombies(), 3.0, "no zombie")
        left = zombies()
        outcome.figures.update(
            arbiter_pid_in_namespace=1,
            zombies_left=len(left),
            processes_in_namespace=len(init.children(recursive=True)) + 1,
        )
        outcome.check("no zombie left in the namespace", not left, f"{len(left)} zombies")
        init.send_signal(signal.SIGTERM)
        try:  # unshare exits with the status of its child, the arbiter
            code: int | None = proc.wait(10.0)
        except subprocess.TimeoutExpired:
            code = None
        outcome.check("the arbiter (PID 1) exits 0 on TERM", code == 0, code)
    finally:
        if init is not None and _alive(init):
            with contextlib.suppress(psutil.Error):
                init.kill()  # PID 1 of the namespace: the kernel kills all of it
        if proc is not None:
            try:
                proc.wait(10.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5.0)
        outcome.log = arbiter.log()
        reap_orphans()
    outcome.tally.merge(tally)
    outcome.zero_failed()


@scenario("double-ctrl-c", "a double Ctrl-C: no traceback, exits")
def double_ctrl_c(outcome: Outcome, home: Path, long: bool) -> None:
    """SIGINT twice to the arbiter's process group, as a terminal does, a few ms apart."""
    # The second INT lands at a different stage of the stop each time: while the workers
    # stop, while the loop closes, during the interpreter's exit.
    short = (0.002, 0.005, 0.008, 0.011, 0.015, 0.02, 0.03)
    gaps = tuple(i / 1000 for i in range(0, 61, 3)) if long else short
    outcome.setup = (
        f"testapps.whoami:WhoAmI, 2 workers; killpg INT, then INT again "
        f"{gaps[0] * 1000:g}-{gaps[-1] * 1000:g} ms later ({len(gaps)} trials)"
    )
    results = []
    for number, gap in enumerate(gaps):
        with _arbiter(home / f"trial{number}", "testapps.whoami:WhoAmI") as arbiter:
            arbiter.wait_serving()
            workers = arbiter.worker_pids()
            os.killpg(arbiter.pid, signal.SIGINT)
            time.sleep(gap)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(arbiter.pid, signal.SIGINT)
            try:
                code: int | None = arbiter.wait_exit(10.0)
            except AssertionError:
                code = None
            with contextlib.suppress(AssertionError):
                wait_until(partial(_none_running, arbiter, workers), 5.0, "no worker left")
            left = [p for p in workers if arbiter.running(p)]
            log = arbiter.log()
        noisy = "Traceback" in log or "KeyboardInterrupt" in log
        results.append((gap, code, noisy, len(left)))
        if noisy:
            outcome.log = log
    outcome.figures["trials (gap s, exit status, traceback, workers left)"] = results
    codes = [code for _, code, _, _ in results]
    outcome.check("exits every time", all(code is not None for code in codes), codes)
    outcome.check("exit status 0 every time (a clean fast stop)", set(codes) == {0}, codes)
    outcome.check("no Traceback / KeyboardInterrupt", not any(n for _, _, n, _ in results))
    outcome.check("no worker left", not any(left for *_, left in results))


# -- the report ------------------------------------------------------------------------------


def write_reliability(outcomes: list[Outcome], when: str) -> None:
    lines = [
        "# Reliability: what a client sees through reloads, recycles and faults",
        "",
        "Every number below comes from the latest long run of the chaos suite on this",
        "repository's 2-core machine:",
        "",
        "```",
        "python scripts/chaos.py all --long",
        "```",
        "",
        "`scripts/chaos.py` is a load driver of its own (raw sockets, no HTTP library, no",
        "retries): every request it sends is counted ok (a complete, valid answer) or failed,",
        "by kind: refused, reset, eof (closed before the answer was complete), timeout, bad",
        "(a malformed answer or a status other than 200). A keep-alive client that gets",
        "`Connection: close` reconnects for its next request; that is not a failure.",
        "The short versions of the same scenarios run as `tests/test_chaos.py` in `.ci/run`.",
        "",
        "The promise: every row reads **0 failed**, except `kill-worker` (only the requests",
        "the killed worker held may fail) and `kill-arbiter` (the clients lose their server;",
        "what is promised is that nothing lingers and the port is free at once).",
        "",
        f"Run: {when}, on {revision()}.",
        "",
        "| scenario | setup | sent | ok | failed | failed by kind | checks |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for outcome in outcomes:
        scenario_row = SCENARIOS[outcome.name].row if outcome.name in SCENARIOS else ""
        checks = (
            "all pass"
            if outcome.passed
            else "FAIL: "
            + "; ".join(
                f"{what} ({detail})" if detail else what
                for what, ok, detail in outcome.checks
                if not ok
            )
        )
        lines.append(
            f"| `{outcome.name}`: {scenario_row} | {outcome.setup} | {outcome.tally.sent:,} | "
            f"{outcome.tally.ok:,} | {outcome.tally.failures:,} | {outcome.tally.kinds()} | "
            f"{checks.replace('|', '/')} |"
        )
    lines += ["", "## Figures", ""]
    for outcome in outcomes:
        lines.append(
            f"- `{outcome.name}`: " + ", ".join(f"{k} {v}" for k, v in outcome.figures.items())
        )
    RELIABILITY_DOC.parent.mkdir(parents=True, exist_ok=True)
    RELIABILITY_DOC.write_text("\n".join(lines) + "\n")


def revision() -> str:
    """The commit the run was made on, and whether the runtime had uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "pulsar_arbiter"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "an unknown revision"
    return f"commit {commit}" + (" with uncommitted changes to pulsar_arbiter/" if dirty else "")


def run_scenarios(names: list[str], long: bool, tmp: Path) -> list[Outcome]:
    outcomes = []
    for name in names:
        try:
            outcome = SCENARIOS[name].run(tmp, long)
        except AssertionError as exc:  # a harness wait failed: report it as a failed check
            outcome = Outcome(name)
            outcome.check("the scenario ran to its end", False, str(exc).splitlines()[0][:300])
        outcomes.append(outcome)
        print("\n".join(outcome.lines()), flush=True)
        if not outcome.passed and outcome.log:
            print("  --- arbiter log (tail) ---\n" + outcome.log_tail(25), flush=True)
    return outcomes


def drive_main(args: argparse.Namespace) -> int:
    driver = Driver(args.port, host=args.host, udp_port=args.udp_port, max_requests=args.requests)
    clients = Clients(
        http_fresh=args.http_fresh,
        http_keepalive=args.http_keepalive,
        tcp_persistent=args.tcp_persistent,
        tcp_fresh=args.tcp_fresh,
        udp=args.udp,
        method=args.method,
        body=b"x" * args.body,
        expect=args.expect.encode() if args.expect else None,
    )
    run_async(driver.drive(clients, duration=args.duration, tail=0.0))
    for kind, tally in driver.tallies.items():
        if tally.sent:
            print(f"{kind}: {tally.line()}")
    print(driver.tally.line())
    return 0 if driver.tally.failures == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scenario", nargs="?", help="a scenario name, 'all', or 'drive'")
    parser.add_argument("--long", action="store_true", help="the long variant")
    parser.add_argument("--list", action="store_true", help="list the scenarios")
    parser.add_argument("--json", action="store_true", help="also print one JSON line each")
    parser.add_argument("--tmp", type=Path, help="working directory (default: a new temp dir)")
    drive = parser.add_argument_group("drive: load against a running server, no scenario")
    drive.add_argument("--host", default=HOST)
    drive.add_argument("--port", type=int, default=8060)
    drive.add_argument("--udp-port", type=int)
    drive.add_argument("--duration", type=float, default=5.0)
    drive.add_argument("--requests", type=int, help="stop after this many requests")
    drive.add_argument("--http-fresh", type=int, default=0, metavar="N")
    drive.add_argument("--http-keepalive", type=int, default=0, metavar="N")
    drive.add_argument("--tcp-persistent", type=int, default=0, metavar="N")
    drive.add_argument("--tcp-fresh", type=int, default=0, metavar="N")
    drive.add_argument("--udp", type=int, default=0, metavar="N")
    drive.add_argument("--method", choices=("GET", "POST"), default="GET")
    drive.add_argument("--body", type=int, default=512, help="POST body bytes")
    drive.add_argument("--expect", default="", help="the HTTP body every answer must have")
    args = parser.parse_args(argv)
    if args.list or not args.scenario:
        for scenario_ in SCENARIOS.values():
            print(f"{scenario_.name:30} {scenario_.row}")
        return 0
    if args.scenario == "drive":
        if args.host not in ("127.0.0.1", "::1", "localhost"):
            parser.error("only loopback addresses may be targeted")
        return drive_main(args)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; --list lists them")
    become_subreaper()
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp_name:
        tmp = args.tmp or Path(tmp_name)
        outcomes = run_scenarios(names, args.long, tmp)
    if args.json:
        for outcome in outcomes:
            print(
                json.dumps(
                    {
                        "scenario": outcome.name,
                        "sent": outcome.tally.sent,
                        "ok": outcome.tally.ok,
                        "failed": dict(outcome.tally.failed),
                        "passed": outcome.passed,
                        "figures": outcome.figures,
                    },
                    default=str,
                )
            )
    if len(outcomes) > 1:
        total = Tally()
        for outcome in outcomes:
            total.merge(outcome.tally)
        failing = [o.name for o in outcomes if not o.passed]
        print(f"== all: {len(outcomes) - len(failing)}/{len(outcomes)} passed; failing: {failing}")
        print(total.line())
    if args.scenario == "all" and args.long:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        write_reliability(outcomes, when)
        print(f"wrote {RELIABILITY_DOC.relative_to(REPO_ROOT)}")
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
