"""Self-check of the benchmark tooling: measure the reference rows.

Runs the C echo server (the physical limit), bare uvloop and bare asyncio
TCP echo, then C and bare-uvloop UDP echo, each pinned to core 0 with the C
client on core 1.  If these numbers look wrong (C not fastest, errors, lost
datagrams at low load) the tooling is broken and no later benchmark built on
it can be trusted.

Usage: python scripts/bench/selfcheck.py [--duration 3] [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cbuild
import harness

HERE = Path(__file__).resolve().parent
SERVERS = HERE / "servers"
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Case:
    """One benchmark row: how to start the server and how to load it."""

    name: str
    make_argv: Callable[[], list[str]]  # called right before start: fresh port
    udp: bool = False
    ready: str | None = None


def cases() -> list[Case]:
    """The reference rows.  C servers bind port 0 and report it; the Python
    TCP servers get a free port picked just before they start, because they
    print nothing (readiness is a successful connect, as for a real server)."""
    c_server = str(cbuild.build("echo_server"))

    def c_argv(*extra: str) -> Callable[[], list[str]]:
        return lambda: [c_server, "--host", HOST, "--port", "0", *extra]

    def py_argv(script: str, udp: bool = False) -> Callable[[], list[str]]:
        def make() -> list[str]:
            port = harness.free_port(HOST, udp=udp)
            return [sys.executable, str(SERVERS / script), "--host", HOST, "--port", str(port)]

        return make

    return [
        Case("c-epoll tcp", c_argv(), ready="READY"),
        Case("bare uvloop tcp", py_argv("bare_uvloop_echo.py")),
        Case("bare asyncio tcp", py_argv("bare_asyncio_echo.py")),
        Case("c-epoll udp", c_argv("--udp"), udp=True),
        Case("bare uvloop udp", py_argv("bare_uvloop_udp.py", udp=True), udp=True),
    ]


# (Measurement key, column title, width, format): medians over the runs.
COLUMNS: list[tuple[str, str, int, str]] = [
    ("rps", "rps", 9, ".0f"),
    ("p50_us", "p50_us", 9, ".1f"),
    ("p99_us", "p99_us", 9, ".1f"),
    ("cpu_us_per_request", "cpu_us/req", 11, ".2f"),
    ("server_cpu_util", "srv_cpu", 8, ".0%"),
    ("client_cpu_util", "cli_cpu", 8, ".0%"),
    ("foreign_cpu_s", "foreign_s", 10, ".2f"),
    ("errors", "errors", 7, ".0f"),
    ("lost", "lost", 7, ".0f"),
]


def measure_case(case: Case, args: argparse.Namespace) -> harness.Measurement:
    """One measurement of ``case``, with a fresh server (and port) each time."""
    return harness.measure(
        case.make_argv(),
        connections=args.connections,
        size=args.size,
        duration=args.duration,
        warmup=args.warmup,
        udp=case.udp,
        ready=case.ready,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every case ``--runs`` times and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3, help="quiet runs per row (median)")
    parser.add_argument(
        "--max-foreign",
        type=float,
        default=0.1,
        help="re-run when others used more CPU seconds than this on our cores",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per row")
    args = parser.parse_args(argv)

    if not args.json:
        print(f"{args.connections} conns, {args.size} B, {args.duration} s x {args.runs} run(s)")
        print(f"{'server':<18}" + "".join(f"{title:>{width}}" for _, title, width, _ in COLUMNS))
    for case in cases():
        runs = harness.quiet_runs(
            functools.partial(measure_case, case, args),
            runs=args.runs,
            max_foreign_s=args.max_foreign,
        )
        row = {key: harness.median_of(runs, key) for key, _, _, _ in COLUMNS}
        if args.json:
            print(json.dumps({"server": case.name, **row}), flush=True)
        else:
            cells = "".join(f"{row[key]:>{width}{fmt}}" for key, _, width, fmt in COLUMNS)
            print(f"{case.name:<18}{cells}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
