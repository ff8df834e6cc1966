"""The whole comparison in one command: echo, UDP, HTTP, ASGI, WebSocket, the client Pool.

    python scripts/bench/run.py            # full: 5 interleaved runs per row, ~20-25 min
    python scripts/bench/run.py --quick    # smoke test: 1 run of 2 s per row, ~3 min

Run it with the project's interpreter (the one with pulsar_arbiter and
psutil installed).  It builds the C load generators, installs wrk and
nginx-light with apt-get when they are missing, creates the peers' venv in
scripts/bench/.peers/ (uvicorn with websockets and wsproto, granian,
matplotlib - never the project's dependencies), measures every row, and
writes docs/benchmarks/README.md (tables, targets, machine facts, exact
commands), results.json (every run) and echo.png, http.png, client.png, ws.png.

How a table is measured, and why:

* Round-robin: run 1 of every row of the table, then run 2 of every row,
  and so on for ``--runs`` rounds (5 by default; the starting row rotates
  each round).  A neighbour's burst or a slow drift of the machine then
  hits every row alike instead of one row's whole series, and each ratio
  (ours / reference) is taken within one round - the two figures were
  measured a few seconds apart - and summarised as the median of the
  rounds' ratios, with its min and max.
* Each run starts its server afresh.  One-worker rows pin the server to
  core 0 and the load to core 1, so "what one core of server does" is
  comparable across servers and runs; the two-worker table leaves both
  unpinned.
* The figure is CPU per request: the server's whole process tree (arbiter
  + workers) for servers, the load process's own CPU for the client table;
  throughput alone hides what a server burns to reach it.
* The machine's busy share from outside our processes is measured over
  every run (/proc/stat busy time on the benchmark's cores minus the
  server's and the load's CPU).  A run above ``--max-outside`` is measured
  again, at most ``--max-redo`` times and only while the time budget
  allows; the rejected runs stay in results.json.
* Every row also runs twice for ours: with the default environment (the
  compiled core when it is built) and with PULSAR_ARBITER_PURE=1 (the
  pure-Python path), side by side.
* A run with socket errors, non-2xx answers, timeouts or lost datagrams is
  kept but flagged in the table, never silently averaged in.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import cbuild  # noqa: E402
import harness  # noqa: E402
import peers  # noqa: E402
import report  # noqa: E402
import wrkload  # noqa: E402

HOST = "127.0.0.1"
SERVERS = HERE / "servers"
APPS = HERE / "apps"
APPS_REL = str(APPS.relative_to(REPO))
LOAD_PY = REPO / "scripts" / "load.py"
DEFAULT_OUT = REPO / "docs" / "benchmarks"
QUICK_OUT = Path(tempfile.gettempdir()) / "pulsar_arbiter-bench-quick"
CONNECTIONS = 64
ECHO_SIZE = 100
CHART_TIMEOUT = 120.0
FIRST_RUN_GUESS_S = 7.0  # seconds per run before any was timed (start, warm-up, load, stop)
MAX_FAILURES = 2  # a row whose runs failed this many times is not tried again
PURE_ENV = (("PULSAR_ARBITER_PURE", "1"),)
C_HELPERS = ("echo_server", "echo_client", "ws_echo_client")


# ---------------------------------------------------------------------- model
@dataclass(frozen=True)
class Case:
    """One row: a server command (or, in the client table, a load command),
    with ``{PORT}`` and ``{TMP}`` filled per run.

    ``ready`` set: the server binds port 0 itself and prints ``READY <port>``
    (the C server, the UDP servers).  Otherwise a free port is picked right
    before the start.  ``prepare`` writes per-run files (nginx's config) and
    may return a replacement argv.  ``env`` is overlaid on the environment
    of the measured process; ``variant`` is "compiled" or "pure" for our
    rows (the same command, the pure one with PULSAR_ARBITER_PURE=1).
    """

    name: str
    role: str  # ours | peer | bare | limit
    argv: tuple[str, ...]
    ready: str | None = None
    settle: float = 0.0
    prepare: Callable[[Path, int], list[str]] | None = None
    display: str | None = None  # command shown in the report, if argv is not it
    env: tuple[tuple[str, str], ...] = ()
    variant: str = ""


@dataclass(frozen=True)
class Suite:
    """A table: rows measured under the same load, interleaved, compared per round."""

    key: str
    title: str
    short: str  # the set-up, as the charts' legend says it
    group_title: str  # chart title when several suites share a chart
    kind: str  # echo | http | ws | client
    udp: bool
    server_cpu: harness.CpuSpec
    client_cpu: harness.CpuSpec
    bare: str  # row name the "x bare" ratios divide by
    limit: str | None  # row name the "x limit" ratios divide by
    cases: list[Case]
    note: str = ""
    metric: str = "cpu_us_per_request"  # the figure compared (client table: the load's)
    unit: str = "request"
    fixed_server: tuple[str, ...] = ()  # client table: the server every row loads


def ours(name: str, argv: tuple[str, ...], **kwargs: Any) -> list[Case]:
    """Our row twice: default environment (compiled core if built) and pure Python."""
    env = tuple(kwargs.pop("env", ()))
    compiled = Case(name, "ours", argv, env=env, variant="compiled", **kwargs)
    pure = replace(compiled, name=f"{name} (pure)", env=env + PURE_ENV, variant="pure")
    return [compiled, pure]


@dataclass
class Settings:
    """How long and how often to measure; derived from the command line."""

    runs: int
    duration: int
    warmup: int
    max_outside: float
    max_redo: int
    budget_s: float
    planned: int = 0  # runs still to do (one per row per round), for the redo budget
    quiet_wait_s: float = 3.0  # longest wait for a lull before one run
    quiet_wait_total_s: float = 90.0  # and over the whole run
    started: float = field(default_factory=time.monotonic)
    run_seconds: list[float] = field(default_factory=list)
    waited_s: float = 0.0
    redone: int = 0

    def seconds_per_run(self) -> float:
        """Observed wall time of one run so far (start to stop), or a guess."""
        if not self.run_seconds:
            return FIRST_RUN_GUESS_S * (self.duration + self.warmup) / 5
        return sum(self.run_seconds) / len(self.run_seconds)

    def may_redo(self) -> bool:
        """A noisy run may be redone if the runs still planned fit in the budget after it."""
        elapsed = time.monotonic() - self.started
        return elapsed + (self.planned + 1) * self.seconds_per_run() <= self.budget_s


# ---------------------------------------------------------------------- cases
def py(script: str, *args: str) -> tuple[str, ...]:
    """A server script of ours run with this interpreter."""
    return (sys.executable, str(SERVERS / script), "--host", HOST, "--port", "{PORT}", *args)


def echo_suites() -> list[Suite]:
    """TCP and UDP echo: our consumer stack vs bare protocols vs C epoll."""
    c_server = str(cbuild.build("echo_server"))
    common: dict[str, Any] = dict(
        kind="echo", server_cpu=0, client_cpu=1, bare="bare uvloop", limit="C epoll"
    )
    tcp = Suite(
        key="tcp",
        title="TCP echo, 1 process pinned to core 0, load on core 1",
        short="server pinned to core 0, load on core 1",
        group_title="TCP echo",
        udp=False,
        cases=[
            *ours("pulsar_arbiter echo", py("pulsar_echo.py")),
            Case("bare uvloop", "bare", py("bare_uvloop_echo.py")),
            Case("C epoll", "limit", (c_server, "--host", HOST, "--port", "0"), ready="READY"),
        ],
        note="64 connections, 100-byte messages, one in flight per connection "
        "(scripts/bench/c/echo_client.c).",
        **common,
    )
    udp = Suite(
        key="udp",
        title="UDP echo, 1 process pinned to core 0, load on core 1",
        short="server pinned to core 0, load on core 1",
        group_title="UDP echo",
        udp=True,
        cases=[
            *ours("pulsar_arbiter DatagramServer", py("pulsar_echo.py", "--udp"), ready="READY"),
            Case("bare uvloop", "bare", py("bare_uvloop_udp.py"), "READY"),
            Case(
                "C epoll",
                "limit",
                (c_server, "--host", HOST, "--port", "0", "--udp"),
                ready="READY",
            ),
        ],
        note="64 UDP sockets, 100-byte datagrams, one in flight per socket; a datagram "
        "unanswered after 200 ms counts as lost.",
        **common,
    )
    return [tcp, udp]


def ours_http(flag: str, app: str, workers: int) -> tuple[str, ...]:
    """``python -m pulsar_arbiter --http|--wsgi|--asgi APP`` with ``workers`` workers."""
    return (
        sys.executable,
        "-m",
        "pulsar_arbiter",
        flag,
        app,
        "--workers",
        str(workers),
        "--bind",
        f"{HOST}:{{PORT}}",
        "--log-level",
        "warning",
        "--control-socket",
        "{TMP}/ctl.sock",
    )


APPS_ENV = (("PYTHONPATH", APPS_REL),)  # peer_hello / ws_echo for our --asgi rows


def uvicorn_argv(env: peers.Peers, app: str, *extra: str) -> tuple[str, ...]:
    """uvicorn on uvloop + httptools, one process, no access log."""
    return (
        env.bin("uvicorn"),
        app,
        "--app-dir",
        APPS_REL,
        "--host",
        HOST,
        "--port",
        "{PORT}",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        *extra,
        "--no-access-log",
        "--log-level",
        "warning",
    )


def granian_argv(env: peers.Peers, interface: str, *loop: str) -> tuple[str, ...]:
    return (
        env.bin("granian"),
        "--interface",
        interface,
        "--host",
        HOST,
        "--port",
        "{PORT}",
        "--workers",
        "1",
        *loop,
        "--working-dir",
        APPS_REL,
        "--log-level",
        "warning",
        f"peer_hello:{interface}",
    )


def http_suites(tools: dict[str, str], env: peers.Peers) -> list[Suite]:
    """HTTP hello: raw handler, WSGI and ASGI, 1 worker pinned; then 1 vs 2 workers.

    Every server logs warnings only and no access log; each keeps its own
    defaults otherwise (keep-alive on everywhere, as wrk needs).
    """

    def nginx_prepare(tmp: Path, port: int) -> list[str]:
        return peers.nginx_argv(tools["nginx"], tmp, port, 1)

    common: dict[str, Any] = dict(kind="http", udp=False)
    one = Suite(
        group_title="HTTP, 1 worker",
        key="http1",
        title="HTTP GET keep-alive, 1 worker pinned to core 0, wrk on core 1",
        short="1 worker pinned to core 0, wrk on core 1",
        server_cpu=0,
        client_cpu=1,
        bare="bare uvloop+httptools",
        limit="nginx",
        cases=[
            *ours("pulsar_arbiter raw", ours_http("--http", "testapps.hello:raw", 1)),
            *ours("pulsar_arbiter WSGI", ours_http("--wsgi", "testapps.hello:wsgi", 1)),
            *ours(
                "pulsar_arbiter ASGI",
                ours_http("--asgi", "peer_hello:asgi", 1),
                env=APPS_ENV,
            ),
            Case("bare uvloop+httptools", "bare", py("bare_httptools.py", "--workers", "1")),
            Case("granian WSGI", "peer", granian_argv(env, "wsgi")),
            Case("granian ASGI", "peer", granian_argv(env, "asgi", "--loop", "uvloop")),
            Case("uvicorn", "peer", uvicorn_argv(env, "peer_hello:asgi")),
            Case(
                "nginx",
                "limit",
                (),
                prepare=nginx_prepare,
                display="nginx -p $TMP -c $TMP/nginx.conf -e $TMP/error.log -g 'daemon off;'  "
                "# conf: scripts/bench/nginx.conf.template, worker_processes 1",
            ),
        ],
        note="wrk -t1 -c64, keep-alive, GET / answered with 13 bytes of text/plain. "
        "The raw and WSGI rows serve testapps/hello.py; every ASGI row (ours, uvicorn, "
        "granian) serves the same app, scripts/bench/apps/peer_hello.py.",
        **common,
    )
    settle = 1.0  # after the first answer, let the second worker finish booting
    two = Suite(
        group_title="HTTP raw, 1 vs 2 workers",
        key="http2",
        title="HTTP GET keep-alive, raw handler, 1 and 2 workers on both cores, wrk unpinned",
        short="both cores, wrk unpinned",
        server_cpu=None,
        client_cpu=None,
        bare="bare uvloop+httptools, 2 processes",
        limit=None,
        cases=[
            *ours(
                "pulsar_arbiter raw, 1 worker",
                ours_http("--http", "testapps.hello:raw", 1),
                settle=settle,
            ),
            *ours(
                "pulsar_arbiter raw, 2 workers",
                ours_http("--http", "testapps.hello:raw", 2),
                settle=settle,
            ),
            Case(
                "bare uvloop+httptools, 2 processes",
                "bare",
                py("bare_httptools.py", "--workers", "2"),
                settle=settle,
            ),
        ],
        note="Servers and wrk (-t1 -c64) share both cores: wrk needs about one core for "
        "itself, so two workers cannot double requests/s here; the server CPU "
        "microseconds per request say what a second worker costs.  The bare row "
        "pre-forks 2 processes on one socket.",
        **common,
    )
    return [one, two]


def pool_suite() -> Suite:
    """The client side: pulsar_arbiter's Pool vs a bare protocol, loading one C server."""

    def load(client: str) -> tuple[str, ...]:
        return (
            sys.executable,
            str(LOAD_PY),
            f"--address={HOST}:{{PORT}}",
            f"--client={client}",
            f"--connections={CONNECTIONS}",
            f"--size={ECHO_SIZE}",
            "--duration={DURATION}",
            "--warmup={WARMUP}",
            "--json",
        )

    return Suite(
        key="pool",
        title="Client Pool as load generator, load pinned to core 1, C echo server on core 0",
        short="load pinned to core 1, C server on core 0",
        group_title="Client",
        kind="client",
        udp=False,
        server_cpu=0,
        client_cpu=1,
        bare="bare protocol client",
        limit=None,
        metric="client_cpu_us_per_request",
        fixed_server=(str(cbuild.build("echo_server")), "--host", HOST, "--port", "0"),
        cases=[
            *ours("pulsar_arbiter Pool", load("pool")),
            Case("bare protocol client", "bare", load("bare")),
        ],
        note="scripts/load.py: 64 connections, 100-byte messages, one in flight per "
        "connection, against the C epoll echo server (which has CPU to spare, so the "
        "client sets the pace).  `bare`: one asyncio.Protocol per connection on uvloop; "
        "`pool`: a Pool of 64 connections, one user task each, one client consumer per "
        "request.  The figure is the load process's own CPU per request over the "
        "measured window.",
    )


def ws_suite(env: peers.Peers) -> Suite:
    """WebSocket echo round trips: ours vs uvicorn's two WebSocket implementations."""
    app = "ws_echo:app"
    return Suite(
        key="ws",
        title="WebSocket echo, 1 worker pinned to core 0, load on core 1",
        short="server pinned to core 0, load on core 1",
        group_title="WebSocket echo",
        kind="ws",
        udp=False,
        server_cpu=0,
        client_cpu=1,
        bare="uvicorn (websockets)",
        limit=None,
        unit="message",
        cases=[
            *ours("pulsar_arbiter ASGI WebSocket", ours_http("--asgi", app, 1), env=APPS_ENV),
            Case("uvicorn (websockets)", "peer", uvicorn_argv(env, app, "--ws", "websockets")),
            Case("uvicorn (wsproto)", "peer", uvicorn_argv(env, app, "--ws", "wsproto")),
        ],
        note="64 WebSocket connections, one 100-byte text message in flight per connection "
        "(masked client frames), every message echoed by the same ASGI app "
        "(scripts/bench/apps/ws_echo.py); load: scripts/bench/c/ws_echo_client.c.  The "
        "figure is the server's CPU per echoed message.",
    )


# -------------------------------------------------------------------- measure
def fill(argv: Sequence[str], port: int, tmp: Path, settings: Settings | None = None) -> list[str]:
    out = [a.replace("{PORT}", str(port)).replace("{TMP}", str(tmp)) for a in argv]
    if settings is not None:
        out = [
            a.replace("{DURATION}", str(settings.duration)).replace(
                "{WARMUP}", str(settings.warmup)
            )
            for a in out
        ]
    return out


QUIET_WINDOW_S = 0.3
QUIET_BUSY = 0.15  # fraction of each benchmark core others may use in a "quiet" window


def wait_for_quiet(suite: Suite, settings: Settings) -> None:
    """Start a run in a lull: wait until the benchmark's cores were idle for a moment.

    On a shared machine neighbours come in bursts (a test suite, a build);
    a run started in the middle of one is disturbed and redone, which costs
    more than waiting a few seconds for it to pass.  Nothing of ours runs
    now, so any busy time in the window is someone else's.  Bounded per run
    and in total, so a machine that is never quiet still gets measured (and
    its outside load reported).
    """
    window = harness.BusyWindow(harness._bench_cores(suite.server_cpu, suite.client_cpu))
    deadline = time.monotonic() + min(
        settings.quiet_wait_s, max(0.0, settings.quiet_wait_total_s - settings.waited_s)
    )
    started = time.monotonic()
    while True:
        window.start()
        time.sleep(QUIET_WINDOW_S)
        window.stop()
        if window.outside(0.0)[1] <= QUIET_BUSY or time.monotonic() >= deadline:
            break
    settings.waited_s += max(0.0, time.monotonic() - started - QUIET_WINDOW_S)


def measure_once(
    suite: Suite, case: Case, settings: Settings, extras: dict[str, Any]
) -> harness.Measurement:
    """One run of one row: fresh port, fresh temp dir, fresh server, started in a lull."""
    started = time.monotonic()
    wait_for_quiet(suite, settings)
    env = dict(case.env)
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            if suite.kind == "client":
                return harness.measure_load_process(
                    suite.fixed_server,
                    lambda port: fill(case.argv, port, tmp, settings),
                    server_cpu=suite.server_cpu,
                    client_cpu=suite.client_cpu,
                    load_env=env,
                    host=HOST,
                    seconds=settings.duration + settings.warmup,
                )
            port = 0 if case.ready else harness.free_port(HOST, udp=suite.udp)
            argv = case.prepare(tmp, port) if case.prepare else fill(case.argv, port, tmp)
            if suite.kind in ("echo", "ws"):
                return harness.measure(
                    argv,
                    server_cpu=suite.server_cpu,
                    client_cpu=suite.client_cpu,
                    connections=CONNECTIONS,
                    size=ECHO_SIZE,
                    duration=settings.duration,
                    warmup=settings.warmup,
                    udp=suite.udp,
                    env=env,
                    port=port or None,
                    ready=case.ready,
                    host=HOST,
                    websocket=suite.kind == "ws",
                )
            result, headers = wrkload.measure_http(
                argv,
                server_cpu=suite.server_cpu,
                client_cpu=suite.client_cpu,
                connections=CONNECTIONS,
                threads=1,
                duration=settings.duration,
                warmup=settings.warmup,
                settle=case.settle,
                env=env,
                port=port,
                host=HOST,
            )
            extras["headers"] = headers
            return result
        finally:
            settings.run_seconds.append(time.monotonic() - started)


SUMMARY_KEYS = (
    "rps",
    "p50_us",
    "p99_us",
    "cpu_us_per_request",
    "client_cpu_us_per_request",
    "server_cpu_util",
    "client_cpu_util",
    "foreign_cpu_s",
    "outside_share",
    "requests",
    "bytes_per_response",
)


@dataclass
class RowState:
    """One row while its table is being measured."""

    suite: Suite
    case: Case
    runs: list[dict[str, Any]] = field(default_factory=list)  # accepted, one per round
    rejected: list[dict[str, Any]] = field(default_factory=list)  # noisy runs redone
    failures: list[str] = field(default_factory=list)
    skipped: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.skipped is None and len(self.failures) < MAX_FAILURES


def measure_slot(
    row: RowState, round_no: int, settings: Settings, log: Callable[[str], None]
) -> None:
    """Run ``round_no`` of one row: measured again while outside load is too high (bounded).

    When the redos run out (``--max-redo``, or the time budget) and every
    attempt was noisy, the least disturbed attempt is the one kept; the
    others go to the rejected list.
    """
    suite, case = row.suite, row.case
    attempts: list[dict[str, Any]] = []
    while True:
        try:
            result: dict[str, Any] = dict(measure_once(suite, case, settings, row.extras))
        except harness.NotServed as exc:
            row.skipped = str(exc)
            log(f"  {case.name}: skipped: {exc}")
            return
        except (harness.BenchError, cbuild.BuildError, OSError, ValueError) as exc:
            text = str(exc).strip() or repr(exc)
            row.failures.append(text)
            log(f"  {case.name}: run {round_no} FAILED: {text.splitlines()[0][:200]}")
            break
        result["round"] = round_no
        result["attempt"] = len(attempts) + 1
        noisy = float(result["outside_share"]) > settings.max_outside
        result["noisy"] = noisy
        attempts.append(result)
        log(
            f"  r{round_no} {case.name:<36} {result[suite.metric]:7.2f} us/{suite.unit}  "
            f"{result['rps']:>9,.0f}/s  outside {result['outside_share']:5.1%}"
            f"{'  errors ' + str(result['errors']) if result['errors'] else ''}"
            f"{'  lost ' + str(result['lost']) if result['lost'] else ''}"
            f"{'  noisy' if noisy else ''}"
        )
        if not (noisy and len(attempts) <= settings.max_redo and settings.may_redo()):
            break
        settings.redone += 1
    if not attempts:
        return
    kept = min(attempts, key=lambda r: float(r["outside_share"]))
    row.runs.append(kept)
    row.rejected.extend(r for r in attempts if r is not kept)


def summarise(row: RowState, command: str) -> dict[str, Any]:
    """A row of results.json: every run, and min / median / max of each figure."""
    runs = row.runs
    out: dict[str, Any] = {
        "name": row.case.name,
        "role": row.case.role,
        "variant": row.case.variant,
        "command": command,
        "runs": runs,
        "rejected_noisy": row.rejected,
        "attempts": len(runs) + len(row.rejected) + len(row.failures),
        "failures": row.failures,
        "skipped": row.skipped,
        "headers": row.extras.get("headers"),
        "median": None,
        "min": None,
        "max": None,
        "error": None,
    }
    if row.skipped:
        return out
    if not runs:
        out["error"] = row.failures[-1] if row.failures else "no run completed"
        return out
    keys = [key for key in SUMMARY_KEYS if all(key in r for r in runs)]
    out["median"] = {key: harness.median_of(runs, key) for key in keys}
    out["min"] = {key: min(float(r[key]) for r in runs) for key in keys}
    out["max"] = {key: max(float(r[key]) for r in runs) for key in keys}
    out["errors_in_runs"] = sum(1 for r in runs if r["errors"] or r["lost"])
    out["errors_total"] = sum(int(r["errors"]) for r in runs)
    out["lost_total"] = sum(int(r["lost"]) for r in runs)
    out["noisy_kept"] = sum(1 for r in runs if r["noisy"])
    return out


def run_suite(
    suite: Suite, cases: list[Case], settings: Settings, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Every row of one table, round-robin: run 1 of each row, then run 2 of each, ...

    The first row of a round rotates, so no row is always measured right
    after the same neighbour (or always first, on a machine still settling).
    """
    rows = [RowState(suite, case) for case in cases]
    for round_no in range(1, settings.runs + 1):
        shift = (round_no - 1) % len(rows)
        for row in rows[shift:] + rows[:shift]:
            settings.planned -= 1
            if row.active:
                measure_slot(row, round_no, settings, log)
    return [summarise(row, command_line(suite, row.case, settings)) for row in rows]


def command_line(suite: Suite, case: Case, settings: Settings) -> str:
    """The command as a reader would type it from the repo root."""
    if case.display:
        text = case.display
    else:  # placeholders swapped for shell-safe tokens first, so they come out unquoted
        argv = [a.replace("{PORT}", "__PORT__").replace("{TMP}", "__TMP__") for a in case.argv]
        argv = fill(argv, 0, Path("."), settings)
        text = shlex.join(argv).replace("__PORT__", "$PORT").replace("__TMP__", "$TMP")
    text = text.replace(sys.executable, "python").replace(str(REPO) + "/", "")
    cpus = harness._cpu_set(suite.client_cpu if suite.kind == "client" else suite.server_cpu)
    if cpus is not None:
        text = f"taskset -c {','.join(map(str, sorted(cpus)))} {text}"
    if case.env:
        text = " ".join(f"{k}={shlex.quote(v)}" for k, v in case.env) + " " + text
    return text


def load_command(suite: Suite, settings: Settings) -> str:
    """The load generator's command line (the client table: its server's) for the report."""
    if suite.kind == "client":
        text = shlex.join(suite.fixed_server).replace(str(REPO) + "/", "")
        return f"taskset -c {suite.server_cpu} {text}   (the server every row loads)"
    if suite.kind == "http":
        argv = wrkload.wrk_argv(
            0, connections=CONNECTIONS, threads=1, duration=settings.duration, host=HOST
        )
        text = shlex.join(argv).replace(f"{HOST}:0", f"{HOST}:$PORT")
    elif suite.kind == "ws":
        text = (
            f"scripts/bench/c/bin/ws_echo_client --host {HOST} --port $PORT --path /ws "
            f"--connections {CONNECTIONS} --size {ECHO_SIZE} --duration {settings.duration}"
        )
    else:
        text = (
            f"scripts/bench/c/bin/echo_client --host {HOST} --port $PORT "
            f"--connections {CONNECTIONS} --size {ECHO_SIZE} --duration {settings.duration} "
            f"--pipeline 1{' --udp' if suite.udp else ''}"
        )
    cpus = harness._cpu_set(suite.client_cpu)
    if cpus is not None:
        text = f"taskset -c {','.join(map(str, sorted(cpus)))} {text}"
    return f"{text}   (after a {settings.warmup} s warm-up run of the same)"


# ----------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 run of 2 s per row (smoke test)")
    parser.add_argument(
        "--runs", type=int, help="interleaved rounds, one run of every row each (default 5)"
    )
    parser.add_argument("--duration", type=int, help="seconds per run (default 5, --quick 2)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up seconds before each run")
    parser.add_argument(
        "--max-outside",
        type=float,
        default=0.05,
        help="busy share of the benchmark's cores taken by other processes above which "
        "a run is measured again (default 0.05)",
    )
    parser.add_argument(
        "--max-redo", type=int, default=2, help="times one noisy run may be redone (default 2)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        help="seconds of the whole run after which noisy runs are no longer redone "
        "(default 1440, --quick 0)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help=f"output folder (default {DEFAULT_OUT.relative_to(REPO)}; "
        f"with --quick or --only: {QUICK_OUT})",
    )
    parser.add_argument(
        "--only", help="regex on 'table:row' to measure a subset (e.g. 'http1:' or 'nginx')"
    )
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = 1 if args.quick else 5
    if args.duration is None:
        args.duration = 2 if args.quick else 5
    args.budget = args.budget if args.budget is not None else (0.0 if args.quick else 1440.0)
    if args.runs < 1 or args.duration < 1 or args.warmup < 0 or args.max_redo < 0:
        parser.error("--runs and --duration must be at least 1, --warmup and --max-redo >= 0")
    if not 0.0 < args.max_outside <= 1.0:
        parser.error("--max-outside is a share of the cores, in (0, 1]")
    if args.only:
        try:
            re.compile(args.only)
        except re.error as exc:
            parser.error(f"--only: not a regular expression: {exc}")
    # Only a full run of every row may replace the committed report.
    args.out = args.out or (QUICK_OUT if args.quick or args.only else DEFAULT_OUT)
    return args


def check_machine() -> None:
    """The pinned suites need cores 0 and 1; say so instead of failing in a child."""
    if not sys.platform.startswith("linux"):
        raise SystemExit("run.py needs Linux (epoll, /proc, sched_setaffinity)")
    cores = os.sched_getaffinity(0)
    if not {0, 1} <= cores:
        raise SystemExit(f"run.py needs cores 0 and 1; this process may use {sorted(cores)}")


def log(message: str) -> None:
    print(message, flush=True)


def core_versions() -> dict[str, str]:
    """What ``python -m pulsar_arbiter --version`` says, by default and with PURE=1."""
    found = {}
    for variant, env in (("compiled", {}), ("pure", dict(PURE_ENV))):
        found[variant] = peers.output_of(
            [sys.executable, "-m", "pulsar_arbiter", "--version"], env=env
        )
    return found


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_machine()
    os.chdir(REPO)  # testapps.hello and scripts/bench/apps resolve from the repo root
    started = time.monotonic()
    log("setup: C helpers, wrk + nginx, the peers' venv")
    for name in C_HELPERS:
        cbuild.build(name)
    tools = peers.ensure_system_tools(log)
    env = peers.ensure_peers(log)
    core = core_versions()
    log(f"default environment: {core['compiled']}\nPULSAR_ARBITER_PURE=1: {core['pure']}")
    settings = Settings(
        runs=args.runs,
        duration=args.duration,
        warmup=args.warmup,
        max_outside=args.max_outside,
        max_redo=args.max_redo,
        budget_s=args.budget,
    )
    suites = [*echo_suites(), *http_suites(tools, env), pool_suite(), ws_suite(env)]
    only = re.compile(args.only) if args.only else None
    selected = {
        suite.key: [
            case for case in suite.cases if only is None or only.search(f"{suite.key}:{case.name}")
        ]
        for suite in suites
    }
    rows = sum(len(cases) for cases in selected.values())
    settings.planned = rows * args.runs
    log(
        f"{rows} rows x {args.runs} interleaved run(s) x ({args.warmup}+{args.duration}) s; "
        f"runs with more than {args.max_outside:.0%} outside load redone (at most "
        f"{args.max_redo} times each) while the whole run stays within {args.budget:.0f} s"
    )
    results: dict[str, Any] = {"meta": {}, "suites": [], "targets": []}
    for suite in suites:
        cases = selected[suite.key]
        if not cases:
            continue
        log(f"\n{suite.title}")
        results["suites"].append(
            {
                "key": suite.key,
                "title": suite.title,
                "short": suite.short,
                "group_title": suite.group_title,
                "kind": suite.kind,
                "pinned": suite.server_cpu is not None,
                "bare": suite.bare,
                "limit": suite.limit,
                "metric": suite.metric,
                "unit": suite.unit,
                "note": suite.note,
                "load_command": load_command(suite, settings),
                "rows": run_suite(suite, cases, settings, log),
            }
        )
    results["meta"] = {
        **peers.machine_facts(tools, env),
        "core": core,
        "mode": "quick" if args.quick else "full",
        "command": "python scripts/bench/run.py" + (" --quick" if args.quick else ""),
        "argv": list(sys.argv[1:] if argv is None else argv),
        "runs": args.runs,
        "duration": args.duration,
        "warmup": args.warmup,
        "connections": CONNECTIONS,
        "max_outside": args.max_outside,
        "max_redo": args.max_redo,
        "budget_s": args.budget,
        "redone": settings.redone,
        "elapsed_s": round(time.monotonic() - started, 1),
        "quiet_waited_s": round(settings.waited_s, 1),
    }
    results["targets"] = report.evaluate_targets(results)
    write_outputs(results, args.out, env)
    log("\n" + report.targets_markdown(results))
    log(
        f"\nwrote {args.out}/README.md, results.json and the charts in "
        f"{results['meta']['elapsed_s']:.0f} s"
    )
    return 0


def write_outputs(results: dict[str, Any], out: Path, env: peers.Peers) -> None:
    """results.json and README.md here; the PNGs by chart.py in the peers' venv."""
    out.mkdir(parents=True, exist_ok=True)
    data = out / "results.json"
    data.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    (out / "README.md").write_text(report.render(results))
    try:
        peers.run_checked(
            [str(env.python), str(HERE / "chart.py"), str(data), str(out)], CHART_TIMEOUT
        )
    except peers.SetupError as exc:  # the tables are still worth having
        log(f"chart failed: {exc}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (peers.SetupError, cbuild.BuildError) as exc:
        traceback.print_exc()
        sys.exit(f"setup failed: {exc}")
    except subprocess.SubprocessError as exc:
        sys.exit(f"failed: {exc}")
