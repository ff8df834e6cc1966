"""TCP echo: pulsar_arbiter's TcpServer + Connection + ProtocolConsumer vs a bare uvloop
asyncio.Protocol, under the same load, in one run.

    python scripts/bench_echo.py [--connections 64] [--size 100] [--duration 5] [--runs 3]

Each server runs in its own process pinned to core 0; the C epoll load generator
(scripts/bench/c/echo_client.c, built with gcc on first use) runs pinned to core 1. The
runs alternate between the two servers so drift on a shared machine hits both alike.
Reported per server: the median over the runs of requests/s, p50/p99 latency and server
CPU microseconds per request, then the ratios ours/bare (target: rps >= 0.85).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "bench"))

import harness  # noqa: E402

SERVERS = {
    "pulsar_arbiter": [sys.executable, str(HERE / "bench/servers/pulsar_echo.py")],
    "bare uvloop": [sys.executable, str(HERE / "bench/servers/bare_uvloop_echo.py")],
}
KEYS = ("rps", "p50_us", "p99_us", "cpu_us_per_request")


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    runs: dict[str, list[Any]] = {name: [] for name in SERVERS}
    for index in range(args.runs):
        for name, argv in SERVERS.items():
            port = harness.free_port()
            result = harness.measure(
                [*argv, "--host", "127.0.0.1", "--port", str(port)],
                port=port,
                connections=args.connections,
                size=args.size,
                duration=args.duration,
                warmup=args.warmup,
            )
            runs[name].append(result)
            print(
                f"run {index + 1} {name:>15}: {result['rps']:>10.0f} req/s  "
                f"{result['cpu_us_per_request']:6.2f} us/req  errors={result['errors']}",
                flush=True,
            )
    return {name: {k: harness.median_of(rs, k) for k in KEYS} for name, rs in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    medians = run(args)
    print(f"\nmedians of {args.runs} runs ({args.connections} connections, {args.size} B):")
    print(f"{'server':>15} {'req/s':>10} {'p50 us':>8} {'p99 us':>8} {'cpu us/req':>10}")
    for name, m in medians.items():
        print(
            f"{name:>15} {m['rps']:>10.0f} {m['p50_us']:>8.0f} {m['p99_us']:>8.0f} "
            f"{m['cpu_us_per_request']:>10.2f}"
        )
    ours, bare = medians["pulsar_arbiter"], medians["bare uvloop"]
    print(
        f"\nrps ratio pulsar_arbiter/bare uvloop: {ours['rps'] / bare['rps']:.3f} (target >= 0.85)"
    )
    print(
        "cpu per request ratio pulsar_arbiter/bare uvloop: "
        f"{ours['cpu_us_per_request'] / bare['cpu_us_per_request']:.3f}"
    )


if __name__ == "__main__":
    main()
