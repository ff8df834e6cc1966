"""Server CPU per message over real sockets: compiled core, pure core, bare reference.

    python scripts/core_pinned.py tcp    # pulsar_echo.py against bare_uvloop_echo.py
    python scripts/core_pinned.py udp    # the datagram servers
    python scripts/core_pinned.py http   # --http testapps.hello:raw (1 worker) against
                                         # bare_httptools.py, load from wrk
    ROUNDS=5 DUR=3 python scripts/core_pinned.py tcp

Each round starts every server fresh, pinned to core 0 with taskset, and puts the load on
core 1 (scripts/bench/c/bin/echo_client, 64 connections, 100 B; wrk -c64 for HTTP). The
server's CPU time (its whole process tree, psutil) over the run is divided by the messages
the load counted. Rows are interleaved round by round; the table gives min/median/max and
the ratio of medians to the bare row. The compiled and the pure rows are the same checkout
(``PULSAR_ARBITER_PURE=1`` for the pure one). Run scripts/bench/cbuild.py first if the C
client is not built. docs/design/compiled-core.md.
"""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
SERVERS = REPO / "scripts" / "bench" / "servers"
CLIENT = REPO / "scripts" / "bench" / "c" / "bin" / "echo_client"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def tree_cpu(proc: psutil.Process) -> float:
    total = 0.0
    for each in [proc, *proc.children(recursive=True)]:
        try:
            times = each.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def argv_of(kind: str, row: str, port: int, tmp: str) -> list[str]:
    if kind == "http":
        if row == "bare":
            return [sys.executable, str(SERVERS / "bare_httptools.py"), "--port", str(port)]
        return [
            sys.executable, "-m", "pulsar_arbiter", "--http", "testapps.hello:raw",
            "--workers", "1", "--bind", f"{HOST}:{port}", "--log-level", "warning",
            "--control-socket", f"{tmp}/ctl.sock",
        ]  # fmt: skip
    if row == "bare":
        script = "bare_uvloop_udp.py" if kind == "udp" else "bare_uvloop_echo.py"
        return [sys.executable, str(SERVERS / script), "--host", HOST, "--port", str(port)]
    extra = ["--udp"] if kind == "udp" else []
    echo = str(SERVERS / "pulsar_echo.py")
    return [sys.executable, echo, "--host", HOST, "--port", str(port), *extra]


def wait_accepting(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), 0.1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing accepts on port {port}")


def load(kind: str, port: int, duration: int) -> int:
    """Run the load pinned to core 1; the number of requests it counted."""
    if kind == "http":
        out = subprocess.run(
            ["taskset", "-c", "1", "wrk", "-t1", "-c64", f"-d{duration}s", f"http://{HOST}:{port}/"],
            capture_output=True, text=True, check=True, timeout=duration + 30,
        ).stdout  # fmt: skip
        if "Non-2xx" in out or "Socket errors" in out:
            raise RuntimeError(out)
        match = re.search(r"(\d+) requests in", out)
        assert match is not None, out
        return int(match.group(1))
    argv = ["taskset", "-c", "1", str(CLIENT), "--host", HOST, "--port", str(port),
            "--connections", "64", "--size", "100", "--duration", str(duration),
            "--warmup", "0", *(["--udp"] if kind == "udp" else [])]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    return int(json.loads(done.stdout.strip().splitlines()[-1])["requests"])


def run(kind: str, row: str, duration: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env["PULSAR_ARBITER_PURE"] = "1" if row == "pure" else ""
    tmp = tempfile.mkdtemp()
    port = 0 if kind == "udp" else free_port()
    server = subprocess.Popen(
        ["taskset", "-c", "0", *argv_of(kind, row, port, tmp)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        if kind == "udp":
            assert server.stdout is not None
            port = int(server.stdout.readline().split()[1])  # "READY <port>"
        else:
            wait_accepting(port)
        time.sleep(0.5)
        proc = psutil.Process(server.pid)
        before = tree_cpu(proc)
        requests = load(kind, port, duration)
        return (tree_cpu(proc) - before) * 1e6 / max(requests, 1)
    finally:
        os.killpg(server.pid, 15)
        server.wait(10)


def main() -> int:
    kind = sys.argv[1] if len(sys.argv) > 1 else "tcp"
    if kind not in ("tcp", "udp", "http"):
        print("usage: core_pinned.py [tcp|udp|http]", file=sys.stderr)
        return 2
    rounds = int(os.environ.get("ROUNDS", "5"))
    duration = int(os.environ.get("DUR", "3"))
    rows = ("bare", "compiled", "pure")
    results: dict[str, list[float]] = {row: [] for row in rows}
    for index in range(rounds):
        for row in rows:
            us = run(kind, row, duration)
            results[row].append(us)
            print(f"round {index} {row:9s} {us:6.2f} us/msg  load {os.getloadavg()[0]:.2f}")
    base = statistics.median(results["bare"])
    for row, values in results.items():
        median = statistics.median(values)
        print(
            f"{kind} {row:9s} min {min(values):6.2f} median {median:6.2f} "
            f"max {max(values):6.2f} us/msg  ratio {median / base:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
