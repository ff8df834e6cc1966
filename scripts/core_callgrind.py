r"""Instructions per request under callgrind: deterministic, unmoved by a busy machine.

    python scripts/core_callgrind.py pool        # scripts/load.py's Pool client
    python scripts/core_callgrind.py bare        # ... its bare protocol client
    python scripts/core_callgrind.py task        # a bare protocol + one Task and one Future
                                                 # per request: the floor of any client
                                                 # that awaits its answers
    python scripts/core_callgrind.py http        # --http testapps.hello:raw, 1 worker
    python scripts/core_callgrind.py http-bare   # scripts/bench/servers/bare_httptools.py
    python scripts/core_callgrind.py echo        # scripts/bench/servers/pulsar_echo.py (TCP)
    python scripts/core_callgrind.py echo-bare   # scripts/bench/servers/bare_uvloop_echo.py

Each workload runs twice under ``valgrind --tool=callgrind``, for N1 and N2 requests
(``N1=2000 N2=6000`` by default); (instructions(N2) - instructions(N1)) / (N2 - N1) is the
user-space cost of one request, start-up and import cancelled out. The clients load the
C echo server (scripts/bench/c/bin/echo_server, built on demand); the HTTP servers are
loaded by an in-process uvloop client outside valgrind (64 connections, one request in
flight each). Kernel time is not counted: callgrind sees user space only, which is where
our code and the bare references differ. The callgrind files stay in ``--keep DIR`` for
``callgrind_annotate --tree=calling --inclusive=yes``. docs/design/compiled-core.md,
"Profiles of the targets not met".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CONNECTIONS = 64
PAYLOAD = b"x" * 100
GET = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
HELLO = b"Hello, World!"
# Seconds a server under valgrind gets to accept connections (it runs ~50x slower).
START_TIMEOUT = 120.0
RUN_TIMEOUT = 900.0


# ------------------------------------------------------------------ the clients (child)
async def run_client(kind: str, port: int, count: int) -> None:
    """``count`` echo requests by the ``kind`` client of scripts/load.py (or the floor)."""
    sys.path.insert(0, str(REPO / "scripts"))
    import load  # scripts/ is not a package

    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    class Counted(load.Stats):
        """load.Stats that stops the run at ``count`` requests."""

        @property
        def done(self) -> int:  # type: ignore[override]
            return self._done

        @done.setter
        def done(self, value: int) -> None:
            self._done = value
            if value >= count and self.running:
                self.running = False
                if not done_future.done():
                    done_future.set_result(None)

    done_future = done
    stats = Counted()
    stats._done = 0
    if kind == "task":
        stop = await task_floor(port, stats)
    else:
        start = load.bare_load if kind == "bare" else load.pool_load
        stop = await start("127.0.0.1", port, CONNECTIONS, PAYLOAD, stats)
    await asyncio.wait_for(done, RUN_TIMEOUT)
    await stop()
    if stats.errors:
        raise SystemExit(f"{stats.errors} errors")


class _FloorProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.pending = 0
        self.answered: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.pending -= len(data)
        if self.pending <= 0 and self.answered is not None:
            self.answered.set_result(None)


async def task_floor(port: int, stats: Any) -> Any:
    """One Task per connection awaiting a fresh Future per request: no Pool, no consumer."""
    loop = asyncio.get_running_loop()
    protocols = []
    for _ in range(CONNECTIONS):
        _, protocol = await loop.create_connection(_FloorProtocol, "127.0.0.1", port)
        protocols.append(protocol)

    async def user(protocol: _FloorProtocol) -> None:
        while stats.running:
            protocol.answered = loop.create_future()
            protocol.pending = len(PAYLOAD)
            protocol.transport.write(PAYLOAD)
            await protocol.answered
            stats.done += 1

    users = [asyncio.ensure_future(user(p)) for p in protocols]

    async def stop() -> None:
        await asyncio.gather(*users)
        for protocol in protocols:
            protocol.transport.close()

    return stop


async def http_load(port: int, count: int) -> None:
    """``count`` keep-alive GETs over CONNECTIONS connections, one in flight each."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()
    answered = [0]

    class Get(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport
            self.buffer = b""
            self.transport.write(GET)

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while HELLO in self.buffer:
                self.buffer = self.buffer[self.buffer.index(HELLO) + len(HELLO) :]
                answered[0] += 1
                if answered[0] + CONNECTIONS <= count:
                    self.transport.write(GET)
                elif answered[0] >= count and not finished.done():
                    finished.set_result(None)

    transports = []
    for _ in range(CONNECTIONS):
        transport, _ = await loop.create_connection(Get, "127.0.0.1", port)
        transports.append(transport)
    await asyncio.wait_for(finished, RUN_TIMEOUT)
    for transport in transports:
        transport.close()


async def echo_load(port: int, count: int) -> None:
    """``count`` 100-byte echoes over CONNECTIONS connections, one in flight each."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()
    answered = [0]

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport
            self.pending = len(PAYLOAD)
            self.transport.write(PAYLOAD)

        def data_received(self, data: bytes) -> None:
            self.pending -= len(data)
            if self.pending > 0:
                return
            answered[0] += 1
            if answered[0] + CONNECTIONS <= count:
                self.pending = len(PAYLOAD)
                self.transport.write(PAYLOAD)
            elif answered[0] >= count and not finished.done():
                finished.set_result(None)

    transports = []
    for _ in range(CONNECTIONS):
        transport, _ = await loop.create_connection(Echo, "127.0.0.1", port)
        transports.append(transport)
    await asyncio.wait_for(finished, RUN_TIMEOUT)
    for transport in transports:
        transport.close()


# ------------------------------------------------------------------ the runs (parent)
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


def totals(out: Path, stem: str) -> int:
    """The largest ``summary:`` of the callgrind files of one run (the busiest process:
    the worker, for a server that forks one)."""
    best = 0
    for path in out.glob(f"{stem}.*"):
        match = re.search(rb"^(?:summary|totals): (\d+)", path.read_bytes(), re.M)
        if match:
            best = max(best, int(match.group(1)))
    return best


def callgrind(out: Path, stem: str, argv: list[str]) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        "--trace-children=yes",
        f"--callgrind-out-file={out / stem}.%p",
        *argv,
    ]


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


def client_run(kind: str, count: int, out: Path) -> int:
    sys.path.insert(0, str(REPO / "scripts" / "bench"))
    import cbuild

    port = free_port()
    server = subprocess.Popen(
        [str(cbuild.build("echo_server")), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not accepts(port):
            if time.monotonic() > deadline:
                raise SystemExit("the C echo server did not start")
            time.sleep(0.05)
        stem = f"{kind}.{count}"
        argv = [sys.executable, __file__, "--child", kind, str(port), str(count)]
        subprocess.run(
            callgrind(out, stem, argv),
            check=True,
            timeout=RUN_TIMEOUT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return totals(out, stem)
    finally:
        stop(server)


def server_run(kind: str, count: int, out: Path) -> int:
    port = free_port()
    if kind == "http":
        argv = [
            sys.executable,
            "-m",
            "pulsar_arbiter",
            "--http",
            "testapps.hello:raw",
            "--workers",
            "1",
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
        ]
    else:
        script = {
            "http-bare": "bare_httptools.py",
            "echo": "pulsar_echo.py",
            "echo-bare": "bare_uvloop_echo.py",
        }[kind]
        argv = [
            sys.executable,
            str(REPO / "scripts/bench/servers" / script),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
    stem = f"{kind}.{count}"
    server = subprocess.Popen(
        callgrind(out, stem, argv), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not accepts(port):
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{kind}: the server did not start under valgrind")
            time.sleep(0.2)
        time.sleep(3.0)  # the worker's start-up done before the counted requests
        import uvloop

        uvloop.run((echo_load if kind.startswith("echo") else http_load)(port, count))
    finally:
        stop(server)
    return totals(out, stem)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "workload", choices=("pool", "bare", "task", "http", "http-bare", "echo", "echo-bare")
    )
    parser.add_argument("--keep", type=Path, help="keep the callgrind files in this directory")
    args = parser.parse_args()
    n1, n2 = int(os.environ.get("N1", "2000")), int(os.environ.get("N2", "6000"))
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        run = server_run if args.workload.startswith(("http", "echo")) else client_run
        first, second = run(args.workload, n1, out), run(args.workload, n2, out)
    per_request = (second - first) / (n2 - n1)
    print(f"{args.workload}: {per_request:,.0f} instructions/request (N={n1}, {n2})")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        import uvloop

        uvloop.run(run_client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    else:
        raise SystemExit(main())
