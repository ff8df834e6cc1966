"""Actor messaging: round trips and throughput of send(), measured inside a worker.

    python scripts/bench_messaging.py [--calls 5000] [--runs 3] [--json FILE]

Starts ``python -m pulsar_arbiter testapps.commands:WhoAmI`` (2, then 8 workers) and has
worker 1 time its own ``send()`` calls (the ``relay`` command of testapps/commands.py), so
the figures are what app code sees, not the control socket's:

* ``send("arbiter", "ping")``: one round trip worker -> arbiter -> worker, one at a time;
* ``send("workers", "ping")``: a broadcast to every worker, gathered, one at a time;
* calls/s: ``send("worker:2", "ping")`` with 16 in flight (worker -> arbiter -> worker
  and back: two hops each way; 16 is --max-commands), and ``send("arbiter", "ping")``
  with 64 in flight.

Targets (issue 11, on the repository's 2-core machine): p50 under 200 us for one round
trip, under 2 ms for a broadcast to 8 workers, at least 20,000 calls/s. Reported: the
median over the runs of p50/p99 (us) and calls/s.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pulsar_arbiter.ops.control import request  # noqa: E402

TARGETS = {"round_trip_p50_us": 200.0, "broadcast_8_p50_us": 2000.0, "calls_per_s": 20000.0}


class Server:
    """One arbiter with ``workers`` workers, stopped (TERM, then KILL) on exit."""

    def __init__(self, workers: int, directory: str) -> None:
        self.ctl = os.path.join(directory, f"ctl-{workers}.sock")
        self.log = open(os.path.join(directory, f"arbiter-{workers}.log"), "wb")  # noqa: SIM115
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pulsar_arbiter",
                "testapps.commands:WhoAmI",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(workers),
                "--control-socket",
                self.ctl,
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                live = self.call("workers", "arbiter")
                if len(live) == workers and all(w["phase"] == "ready" for w in live):
                    break
            except (OSError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"the arbiter did not start: see {self.log.name}")
            time.sleep(0.1)

    def call(self, command: str, to: str, args: dict[str, Any] | None = None) -> Any:
        name, timeout = command, 120.0
        payload = {"call": name, "to": to, "args": args or {}, "timeout": timeout}
        answer = request(self.ctl, payload, timeout + 10)
        entry = answer["answers"][to]
        if "error" in entry:
            raise RuntimeError(f"{name} in {to}: {entry['error']}")
        return entry["result"]

    def relay(self, target: str, calls: int, concurrency: int = 1) -> dict[str, Any]:
        """Worker 1 sends ``ping`` to ``target`` ``calls`` times; its own timings."""
        args = {"target": target, "name": "ping", "times": calls, "concurrency": concurrency}
        out: dict[str, Any] = self.call("relay", "worker:1", {**args, "timeout": 10.0})
        last = out["last"]
        bad = [v for v in last.values()] if isinstance(last, dict) else [last]
        if any(isinstance(v, dict) and "error" in v for v in bad) or (
            not isinstance(last, dict) and last != "pong"
        ):
            raise RuntimeError(f"ping to {target} failed: {last}")
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


def percentile(sample: list[float], q: float) -> float:
    ordered = sorted(sample)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(out: dict[str, Any]) -> tuple[float, float]:
    durations = out["durations"]
    return percentile(durations, 0.5) * 1e6, percentile(durations, 0.99) * 1e6


def measure(calls: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as directory:
        for workers in (2, 8):
            server = Server(workers, directory)
            try:
                server.relay("arbiter", 500)  # warm up
                if workers == 2:
                    p50, p99 = latency(server.relay("arbiter", calls))
                    figures.update(round_trip_p50_us=p50, round_trip_p99_us=p99)
                    # 16 in flight: worker 2 runs at most --max-commands (16) at once.
                    routed = server.relay("worker:2", calls * 4, concurrency=16)
                    figures["calls_per_s"] = routed["calls"] / routed["elapsed"]
                    local = server.relay("arbiter", calls * 4, concurrency=64)
                    figures["arbiter_calls_per_s"] = local["calls"] / local["elapsed"]
                p50, p99 = latency(server.relay("workers", calls // 2))
                figures[f"broadcast_{workers}_p50_us"] = p50
                figures[f"broadcast_{workers}_p99_us"] = p99
            finally:
                server.close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=5000, help="calls per latency run")
    parser.add_argument("--runs", type=int, default=3, help="runs; the median is reported")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    runs = [measure(args.calls) for _ in range(args.runs)]
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    print(f"{'figure':<24} {'median':>10} {'target':>10}  runs")
    for key, value in median.items():
        target = TARGETS.get(key)
        ok = (
            ""
            if target is None
            else (
                " ok"
                if (value >= target if key.endswith("per_s") else value <= target)
                else " MISSED"
            )
        )
        shown = "" if target is None else f"{target:,.0f}"
        each = ", ".join(f"{run[key]:,.0f}" for run in runs)
        print(f"{key:<24} {value:>10,.0f} {shown:>10}{ok}  [{each}]")
    if args.json:
        Path(args.json).write_text(json.dumps({"median": median, "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
