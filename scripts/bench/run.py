"""The whole comparison in one command: TCP echo, UDP echo, HTTP plaintext.

    python scripts/bench/run.py            # full: 3 quiet runs per row, ~15 min
    python scripts/bench/run.py --quick    # smoke test: 1 run of 2 s per row

Run it with the project's interpreter (the one with pulsar_arbiter and
psutil installed).  It builds the C echo server/client, installs wrk and
nginx-light with apt-get when they are missing, creates the peers' venv in
scripts/bench/.peers/ (uvicorn, gunicorn, granian, uvicorn-worker,
matplotlib - never the project's dependencies), measures every row, and
writes docs/benchmarks/README.md (tables, targets, machine facts, exact
commands), results.json (every run) and echo.png / http.png.

How a row is measured, and why:

* Each server runs in its own process(es), started fresh for every run.
  One-worker rows: the server is pinned to core 0 and the load to core 1, so
  "what one core of server does" is comparable across servers and runs.
  Two-worker rows: two cores cannot hold two pinned workers *and* a pinned
  load, so the server may use both cores and the load is unpinned; the
  load then competes with the server, rps says little, and server CPU
  microseconds per request is the figure to compare.
* Server CPU is the whole process tree's (arbiter/master + workers), charged
  to the requests the load generator counted: throughput alone hides what a
  server burns to reach it.
* Every figure is the median of ``--runs`` runs.  A run during which other
  processes used noticeable CPU on our cores is redone (harness.quiet_runs)
  while the time budget allows; the foreign CPU is shown either way.
* A run with socket errors, non-2xx answers, timeouts or lost datagrams is
  kept but flagged in the table, never silently averaged in.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
DEFAULT_OUT = REPO / "docs" / "benchmarks"
QUICK_OUT = Path(tempfile.gettempdir()) / "pulsar_arbiter-bench-quick"
CONNECTIONS = 64
ECHO_SIZE = 100
CHART_TIMEOUT = 120.0
FIRST_RUN_GUESS_S = 9.0  # seconds per run before any was timed (start, warm-up, load, stop)


# ---------------------------------------------------------------------- model
@dataclass(frozen=True)
class Case:
    """One row: a server command, with ``{PORT}`` and ``{TMP}`` filled per run.

    ``ready`` set: the server binds port 0 itself and prints ``READY <port>``
    (the C server, the UDP servers).  Otherwise a free port is picked right
    before the start.  ``prepare`` writes per-run files (nginx's config) and
    may return a replacement argv.
    """

    name: str
    role: str  # ours | peer | bare | limit
    argv: tuple[str, ...]
    ready: str | None = None
    settle: float = 0.0
    prepare: Callable[[Path, int], list[str]] | None = None
    display: str | None = None  # command shown in the report, if argv is not it


@dataclass(frozen=True)
class Suite:
    """A table: rows measured under the same load, compared with each other."""

    key: str
    title: str
    short: str  # the set-up, as the charts' legend says it
    group_title: str  # chart title when several suites share a chart
    kind: str  # echo | http
    udp: bool
    server_cpu: harness.CpuSpec
    client_cpu: harness.CpuSpec
    bare: str  # row name the "x bare" ratios divide by
    limit: str  # row name the "x limit" ratios divide by
    cases: list[Case]
    note: str = ""


@dataclass
class Settings:
    """How long and how often to measure; derived from the command line."""

    runs: int
    duration: int
    warmup: int
    max_foreign_s: float
    budget_s: float
    max_extra: int
    quiet_wait_s: float = 5.0  # longest wait for a lull before one run
    quiet_wait_total_s: float = 120.0  # and over the whole run
    started: float = field(default_factory=time.monotonic)
    run_seconds: list[float] = field(default_factory=list)
    waited_s: float = 0.0

    def seconds_per_run(self) -> float:
        """Observed wall time of one run so far (start to stop), or a guess."""
        if not self.run_seconds:
            return FIRST_RUN_GUESS_S * (self.duration + self.warmup) / 6
        return sum(self.run_seconds) / len(self.run_seconds)

    def attempts(self, rows_left: int) -> int:
        """Attempts allowed for the next row: ``runs`` plus redos the budget affords.

        The rows still to come are reserved their plain runs first; what is
        left of the budget pays for redoing noisy runs, at most
        ``max_extra`` per row, so one unlucky row cannot eat it all.
        """
        left = self.budget_s - (time.monotonic() - self.started)
        spare = left - rows_left * self.runs * self.seconds_per_run()
        extra = math.floor(spare / self.seconds_per_run()) if spare > 0 else 0
        return self.runs + max(0, min(self.max_extra, extra))


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
            Case("pulsar_arbiter echo", "ours", py("pulsar_echo.py")),
            Case("bare uvloop", "bare", py("bare_uvloop_echo.py")),
            Case("bare asyncio", "peer", py("bare_asyncio_echo.py")),
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
            Case("pulsar_arbiter DatagramServer", "ours", py("pulsar_echo.py", "--udp"), "READY"),
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


def http_cases(workers: int, tools: dict[str, str], env: peers.Peers) -> list[Case]:
    """The HTTP rows, with ``workers`` processes for the process-level servers.

    Every server logs warnings only and no access log; each keeps its own
    defaults otherwise (keep-alive on everywhere, as wrk needs).
    """
    w = str(workers)
    ours = (sys.executable, "-m", "pulsar_arbiter")
    ours_tail = (
        "--workers",
        w,
        "--bind",
        f"{HOST}:{{PORT}}",
        "--log-level",
        "warning",
        "--control-socket",
        "{TMP}/ctl.sock",
    )
    apps = str(APPS.relative_to(REPO))
    uvicorn = (
        env.bin("uvicorn"),
        "peer_hello:asgi",
        "--app-dir",
        apps,
        "--host",
        HOST,
        "--port",
        "{PORT}",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
        *(("--workers", w) if workers > 1 else ()),
    )
    gunicorn = (
        env.bin("gunicorn"),
        "--workers",
        w,
        "--bind",
        f"{HOST}:{{PORT}}",
        "--chdir",
        apps,
        "--log-level",
        "warning",
        "--control-socket",
        "{TMP}/gunicorn.ctl",
    )

    def granian(interface: str, *loop: str) -> tuple[str, ...]:
        return (
            env.bin("granian"),
            "--interface",
            interface,
            "--host",
            HOST,
            "--port",
            "{PORT}",
            "--workers",
            w,
            *loop,
            "--working-dir",
            apps,
            "--log-level",
            "warning",
            f"peer_hello:{interface}",
        )

    def nginx_prepare(tmp: Path, port: int) -> list[str]:
        return peers.nginx_argv(tools["nginx"], tmp, port, workers)

    # After the first answer, let the other workers finish booting (uvicorn and
    # granian spawn theirs, which re-imports everything); the warm-up follows.
    settle = 1.0 if workers > 1 else 0.0
    uvloop_flag = ("--loop", "uvloop")
    return [
        Case(
            "pulsar_arbiter raw",
            "ours",
            (*ours, "--http", "testapps.hello:raw", *ours_tail),
            settle=settle,
        ),
        Case(
            "pulsar_arbiter WSGI",
            "ours",
            (*ours, "--wsgi", "testapps.hello:wsgi", *ours_tail),
            settle=settle,
        ),
        Case("uvicorn", "peer", uvicorn, settle=settle),
        Case(
            "gunicorn + uvicorn worker",
            "peer",
            (*gunicorn, "--worker-class", env.uvicorn_worker_class, "peer_hello:asgi"),
            settle=settle,
        ),
        Case("gunicorn sync", "peer", (*gunicorn, "peer_hello:wsgi"), settle=settle),
        Case("granian ASGI", "peer", granian("asgi", *uvloop_flag), settle=settle),
        Case("granian RSGI", "peer", granian("rsgi", *uvloop_flag), settle=settle),
        Case("granian WSGI", "peer", granian("wsgi"), settle=settle),
        Case(
            "bare uvloop+httptools",
            "bare",
            py("bare_httptools.py", "--workers", w),
            settle=settle,
        ),
        Case(
            "nginx",
            "limit",
            (),
            settle=settle,
            prepare=nginx_prepare,
            display=(
                f"nginx -p $TMP -c $TMP/nginx.conf -e $TMP/error.log -g 'daemon off;'  "
                f"# conf: scripts/bench/nginx.conf.template, worker_processes {workers}"
            ),
        ),
    ]


def http_suites(tools: dict[str, str], env: peers.Peers) -> list[Suite]:
    """HTTP plaintext with 1 worker (pinned) and with 2 workers (unpinned)."""
    common: dict[str, Any] = dict(
        kind="http", udp=False, bare="bare uvloop+httptools", limit="nginx", group_title="HTTP"
    )
    return [
        Suite(
            key="http1",
            title="HTTP plaintext, 1 worker pinned to core 0, wrk on core 1",
            short="1 worker pinned to core 0, wrk on core 1",
            server_cpu=0,
            client_cpu=1,
            cases=http_cases(1, tools, env),
            note="wrk -t1 -c64, keep-alive, GET / answered with 13 bytes of text/plain.",
            **common,
        ),
        Suite(
            key="http2",
            title="HTTP plaintext, 2 workers on both cores, wrk unpinned",
            short="2 workers on both cores, wrk unpinned",
            server_cpu=None,
            client_cpu=None,
            cases=http_cases(2, tools, env),
            note="Servers and wrk share both cores: wrk competes with the workers, so "
            "requests/s mostly shows who leaves wrk the most CPU; compare server CPU "
            "microseconds per request.  The bare row pre-forks 2 processes on one socket.",
            **common,
        ),
    ]


# -------------------------------------------------------------------- measure
def fill(argv: Sequence[str], port: int, tmp: Path) -> list[str]:
    return [a.replace("{PORT}", str(port)).replace("{TMP}", str(tmp)) for a in argv]


QUIET_WINDOW_S = 0.5
QUIET_BUSY = 0.15  # fraction of each benchmark core others may use in a "quiet" window


def wait_for_quiet(suite: Suite, settings: Settings) -> None:
    """Start a run in a lull: wait until the benchmark's cores were idle for a moment.

    On a shared machine neighbours come in bursts (a test suite, a build);
    a run started in the middle of one is disturbed and redone, which costs
    more than waiting a few seconds for it to pass.  Nothing of ours runs
    now, so any busy time in the window is someone else's.  Bounded per run
    and in total, so a machine that is never quiet still gets measured (and
    its foreign CPU reported).
    """
    cores = harness._bench_cores(suite.server_cpu, suite.client_cpu)
    count = len(cores) if cores is not None else (os.cpu_count() or 1)
    deadline = time.monotonic() + min(
        settings.quiet_wait_s, max(0.0, settings.quiet_wait_total_s - settings.waited_s)
    )
    started = time.monotonic()
    while True:
        before = harness.cores_busy_seconds(cores)
        time.sleep(QUIET_WINDOW_S)
        busy = (harness.cores_busy_seconds(cores) - before) / (QUIET_WINDOW_S * count)
        if busy <= QUIET_BUSY or time.monotonic() >= deadline:
            break
    settings.waited_s += max(0.0, time.monotonic() - started - QUIET_WINDOW_S)


def measure_once(
    suite: Suite, case: Case, settings: Settings, extras: dict[str, Any]
) -> harness.Measurement:
    """One run of one row: fresh port, fresh temp dir, fresh server, started in a lull."""
    started = time.monotonic()
    wait_for_quiet(suite, settings)
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmpdir:
        tmp = Path(tmpdir)
        port = 0 if case.ready else harness.free_port(HOST, udp=suite.udp)
        argv = case.prepare(tmp, port) if case.prepare else fill(case.argv, port, tmp)
        try:
            if suite.kind == "echo":
                return harness.measure(
                    argv,
                    server_cpu=suite.server_cpu,
                    client_cpu=suite.client_cpu,
                    connections=CONNECTIONS,
                    size=ECHO_SIZE,
                    duration=settings.duration,
                    warmup=settings.warmup,
                    udp=suite.udp,
                    port=port or None,
                    ready=case.ready,
                    host=HOST,
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
                port=port,
                host=HOST,
            )
            extras["headers"] = headers
            return result
        finally:
            settings.run_seconds.append(time.monotonic() - started)


MEDIAN_KEYS = (
    "rps",
    "p50_us",
    "p99_us",
    "cpu_us_per_request",
    "server_cpu_util",
    "client_cpu_util",
    "foreign_cpu_s",
    "requests",
    "bytes_per_response",
)


def measure_case(
    suite: Suite, case: Case, settings: Settings, rows_left: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """All runs of one row, summarised; a failure becomes a row with ``error``."""
    row: dict[str, Any] = {
        "name": case.name,
        "role": case.role,
        "command": command_line(suite, case),
        "runs": [],
        "attempts": 0,
        "median": None,
        "error": None,
    }
    extras: dict[str, Any] = {}
    attempts = settings.attempts(rows_left)
    all_runs: list[harness.Measurement] = []

    def once() -> harness.Measurement:
        result = measure_once(suite, case, settings, extras)
        all_runs.append(result)
        return result

    try:
        runs = harness.quiet_runs(
            once,
            runs=settings.runs,
            max_foreign_s=settings.max_foreign_s,
            max_attempts=attempts,
        )
    except (harness.BenchError, cbuild.BuildError, OSError, ValueError) as exc:
        row["error"] = str(exc).strip()
        row["attempts"] = len(all_runs) + 1
        log(f"  {case.name}: FAILED: {row['error'].splitlines()[0] if row['error'] else exc}")
        return row
    row["runs"] = [dict(r) for r in runs]
    row["attempts"] = len(all_runs)
    row["discarded_noisy"] = len(all_runs) - len(runs)
    row["headers"] = extras.get("headers")
    row["median"] = {
        key: harness.median_of(runs, key) for key in MEDIAN_KEYS if all(key in r for r in runs)
    }
    row["errors_in_runs"] = sum(1 for r in runs if r["errors"] or r["lost"])
    row["errors_total"] = sum(int(r["errors"]) for r in runs)
    row["lost_total"] = sum(int(r["lost"]) for r in runs)
    m = row["median"]
    log(
        f"  {case.name:<30} {m['rps']:>9.0f} req/s  p50 {m['p50_us']:>7.0f} us  "
        f"p99 {m['p99_us']:>7.0f} us  {m['cpu_us_per_request']:>6.2f} cpu-us/req  "
        f"foreign {m['foreign_cpu_s']:.2f} s  errors {row['errors_total']} lost "
        f"{row['lost_total']}  ({row['attempts']} attempt(s))"
    )
    return row


def command_line(suite: Suite, case: Case) -> str:
    """The command as a reader would type it from the repo root."""
    if case.display:
        text = case.display
    else:  # placeholders swapped for shell-safe tokens first, so they come out unquoted
        argv = [a.replace("{PORT}", "__PORT__").replace("{TMP}", "__TMP__") for a in case.argv]
        text = shlex.join(argv).replace("__PORT__", "$PORT").replace("__TMP__", "$TMP")
    text = text.replace(sys.executable, "python").replace(str(REPO) + "/", "")
    cpus = harness._cpu_set(suite.server_cpu)
    if cpus is not None:
        text = f"taskset -c {','.join(map(str, sorted(cpus)))} {text}"
    return text


def load_command(suite: Suite, settings: Settings) -> str:
    """The load generator's command line for the report."""
    if suite.kind == "http":
        argv = wrkload.wrk_argv(
            0, connections=CONNECTIONS, threads=1, duration=settings.duration, host=HOST
        )
        text = shlex.join(argv).replace(f"{HOST}:0", f"{HOST}:$PORT")
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
    parser.add_argument("--runs", type=int, help="runs per row (default 3, --quick 1)")
    parser.add_argument("--duration", type=int, help="seconds per run (default 5, --quick 2)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up seconds before each run")
    parser.add_argument(
        "--budget",
        type=float,
        help="seconds of measuring after which noisy runs are no longer redone "
        "(default 780, --quick 0)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help=f"output folder (default {DEFAULT_OUT.relative_to(REPO)}; "
        f"with --quick or --only: {QUICK_OUT})",
    )
    parser.add_argument(
        "--only", help="regex on 'suite:row' to measure a subset (e.g. 'http1:' or 'nginx')"
    )
    args = parser.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.duration = args.duration or (2 if args.quick else 5)
    args.budget = args.budget if args.budget is not None else (0.0 if args.quick else 780.0)
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_machine()
    os.chdir(REPO)  # testapps.hello and scripts/bench/apps resolve from the repo root
    started = time.monotonic()
    log("setup: C helpers, wrk + nginx, the peers' venv")
    for name in ("echo_server", "echo_client"):
        cbuild.build(name)
    tools = peers.ensure_system_tools(log)
    env = peers.ensure_peers(log)
    settings = Settings(
        runs=args.runs,
        duration=args.duration,
        warmup=args.warmup,
        max_foreign_s=0.05 * args.duration,
        budget_s=args.budget,
        max_extra=3,
    )
    suites = echo_suites() + http_suites(tools, env)
    only = re.compile(args.only) if args.only else None
    selected = [
        (suite, case)
        for suite in suites
        for case in suite.cases
        if only is None or only.search(f"{suite.key}:{case.name}")
    ]
    log(
        f"{len(selected)} rows x {args.runs} run(s) x ({args.warmup}+{args.duration}) s; "
        f"noisy runs (> {settings.max_foreign_s:.2f} s foreign CPU) redone within "
        f"{args.budget:.0f} s"
    )
    results: dict[str, Any] = {"meta": {}, "suites": [], "targets": []}
    done = 0
    for suite in suites:
        cases = [case for s, case in selected if s is suite]
        if not cases:
            continue
        log(f"\n{suite.title}")
        rows = []
        for case in cases:
            rows.append(measure_case(suite, case, settings, len(selected) - done, log))
            done += 1
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
                "note": suite.note,
                "load_command": load_command(suite, settings),
                "rows": rows,
            }
        )
    results["meta"] = {
        **peers.machine_facts(tools, env),
        "mode": "quick" if args.quick else "full",
        "command": "python scripts/bench/run.py" + (" --quick" if args.quick else ""),
        "argv": list(sys.argv[1:] if argv is None else argv),
        "runs": args.runs,
        "duration": args.duration,
        "warmup": args.warmup,
        "connections": CONNECTIONS,
        "max_foreign_s": settings.max_foreign_s,
        "elapsed_s": round(time.monotonic() - started, 1),
        "quiet_waited_s": round(settings.waited_s, 1),
        "uvicorn_worker_class": env.uvicorn_worker_class,
    }
    results["targets"] = report.evaluate_targets(results)
    write_outputs(results, args.out, env)
    log("\n" + report.targets_markdown(results))
    log(
        f"\nwrote {args.out}/README.md, results.json, echo.png, http.png "
        f"in {results['meta']['elapsed_s']:.0f} s"
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
