r"""Echo load generator: pulsar_arbiter's Pool-based client, or a bare asyncio-protocol client.

Each of ``--connections`` connections sends a ``--size``-byte message and waits for all of
it to come back before sending the next (one request in flight per connection), for
``--warmup`` seconds not counted, then ``--duration`` seconds counted:

    python scripts/load.py --address 127.0.0.1:8060 --connections 64 --size 100 \
        --duration 5 --client pool

* ``--client bare``: one ``asyncio.Protocol`` per connection writing straight to its
  transport, counting echoed bytes: the floor, what the event loop alone costs.
* ``--client pool``: what an application written with this package does. A ``Pool`` of
  ``--connections`` connections opened by an ``AbstractClient``, as many user tasks each
  looping over ``async with await pool.connect() as conn:``, one client consumer per
  request (``consumer.start(payload)``, ``await consumer.on_finished``).

Both check only that as many bytes came back as were sent (the same check, so the same
cost). Compare them in one run:

    python scripts/load.py --compare --connections 64 --size 100 --duration 5

``--compare`` starts a bare uvloop echo server (scripts/bench/servers/bare_uvloop_echo.py)
unless ``--address`` names one, pins it to CPU 0 and every load run to CPU 1 (a process of
its own per run), runs each client ``--runs`` times (3) alternating which goes first, and
prints requests/s per run, the medians and the ratio pool/bare. CPU use is printed too
(medians): the load process's over the measured window, the server's over the whole run;
the load near 100% means the client set the pace, which is what this comparison
measures. On a shared machine other processes take CPU time too, and req/s drops with
it: the load's CPU microseconds per request (and their ratio) still compare the clients.
Every process it starts is stopped by pid, every wait has a deadline. ``--json`` prints
one JSON line instead of the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import psutil

from pulsar_arbiter import AbstractClient, Connection, Pool, ProtocolConsumer

sys.path.insert(0, str(Path(__file__).resolve().parent / "bench"))
import harness  # scripts/bench is not a package: on sys.path above

HERE = Path(__file__).resolve().parent
BARE_ECHO = HERE / "bench" / "servers" / "bare_uvloop_echo.py"
CLIENTS = ("bare", "pool")

# Seconds a load run may outlive warmup + duration (interpreter start, connecting,
# stopping) before it is killed and the comparison fails.
RUN_GRACE = 15.0
# Seconds the started server gets to accept connections, and to exit on SIGTERM.
SERVER_START_TIMEOUT = 10.0
SERVER_STOP_TIMEOUT = 5.0
# Seconds the load gives its connections to finish the request in flight when it stops.
STOP_TIMEOUT = 3.0


@dataclass
class Stats:
    """What one load run counts; only the measured window goes into ``requests``."""

    done: int = 0
    errors: int = 0
    running: bool = True


@dataclass
class Result:
    client: str
    connections: int
    size: int
    duration: float
    requests: int
    rps: float
    errors: int
    client_cpu_util: float  # CPU time of the load process / wall time of the window
    # CPU microseconds the load process spent per request: unlike req/s, it holds up
    # when other processes share the CPU, so it is the fairer cost comparison.
    client_cpu_us_per_request: float


# ------------------------------------------------------------------- bare client
class BareEcho(asyncio.Protocol):
    """Send the payload, count echoed bytes, send again once all of it is back."""

    transport: asyncio.Transport

    def __init__(self, payload: bytes, stats: Stats, lost: asyncio.Future[None]) -> None:
        self.payload = payload
        self.stats = stats
        self.lost = lost
        self.pending = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.send()

    def send(self) -> None:
        self.pending = len(self.payload)
        self.transport.write(self.payload)

    def data_received(self, data: bytes) -> None:
        self.pending -= len(data)
        if self.pending <= 0:
            stats = self.stats
            if self.pending < 0:
                stats.errors += 1  # more bytes than were sent: not an echo
            stats.done += 1
            if stats.running:
                self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stats.running:
            self.stats.errors += 1
        if not self.lost.done():
            self.lost.set_result(None)


async def bare_load(
    host: str, port: int, connections: int, payload: bytes, stats: Stats
) -> Callable[[], Any]:
    """Open the connections (they start sending at once); return the coroutine that stops."""
    loop = asyncio.get_running_loop()
    opened: list[tuple[asyncio.BaseTransport, asyncio.Future[None]]] = []
    for _ in range(connections):
        lost: asyncio.Future[None] = loop.create_future()
        transport, _ = await loop.create_connection(
            functools.partial(BareEcho, payload, stats, lost), host, port
        )
        opened.append((transport, lost))

    async def stop() -> None:
        stats.running = False
        for transport, _ in opened:
            transport.close()
        await asyncio.wait([lost for _, lost in opened], timeout=STOP_TIMEOUT)

    return stop


# ------------------------------------------------------------------- pool client
class EchoRequest(ProtocolConsumer):
    """One request: the payload out, as many bytes back."""

    pending = 0

    def start_request(self) -> None:
        self.pending = len(self.request)
        self.write(self.request)

    def data_received(self, data: bytes) -> bytes | None:
        self.pending -= len(data)
        if self.pending <= 0:
            self.finished()
        return None


class EchoClient(AbstractClient):
    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(protocol_factory=functools.partial(Connection, EchoRequest))
        self.address = address

    async def connect(self) -> Connection:
        return cast(Connection, await self.create_connection(self.address))


async def pool_load(
    host: str, port: int, connections: int, payload: bytes, stats: Stats
) -> Callable[[], Any]:
    """Start one user task per connection over a Pool; return the coroutine that stops."""
    client = EchoClient((host, port))
    pool: Pool[Connection] = Pool(client.connect, pool_size=connections)

    async def user() -> None:
        while stats.running:
            try:
                async with await pool.connect() as conn:
                    consumer = conn.current_consumer()
                    consumer.start(payload)
                    await consumer.on_finished
            except Exception:
                if stats.running:
                    stats.errors += 1
                return  # a failed user stops: errors make the run invalid anyway
            stats.done += 1

    users = [asyncio.ensure_future(user()) for _ in range(connections)]

    async def stop() -> None:
        stats.running = False
        _, pending = await asyncio.wait(users, timeout=STOP_TIMEOUT)
        for task in pending:
            task.cancel()
        await asyncio.gather(*users, return_exceptions=True)
        await pool.close(timeout=STOP_TIMEOUT)
        await client.close(timeout=STOP_TIMEOUT)

    return stop


# ------------------------------------------------------------------- one run
async def measure(args: argparse.Namespace) -> Result:
    host, port = args.address
    stats = Stats()
    payload = b"x" * args.size
    start = bare_load if args.client == "bare" else pool_load
    stop = await start(host, port, args.connections, payload, stats)
    try:
        # The window is measured by time, not by an event: these sleeps are the point.
        await asyncio.sleep(args.warmup)
        done0, cpu0, t0 = stats.done, time.process_time(), time.monotonic()
        await asyncio.sleep(args.duration)
        done1, cpu1, t1 = stats.done, time.process_time(), time.monotonic()
    finally:
        await stop()
    wall, requests = t1 - t0, done1 - done0
    return Result(
        client=args.client,
        connections=args.connections,
        size=args.size,
        duration=round(wall, 3),
        requests=done1 - done0,
        rps=round((done1 - done0) / wall, 1),
        errors=stats.errors,  # warm-up included: any error makes the run suspect
        client_cpu_util=round((cpu1 - cpu0) / wall, 3),
        client_cpu_us_per_request=round((cpu1 - cpu0) * 1e6 / requests, 2) if requests else 0.0,
    )


def run_one(args: argparse.Namespace) -> int:
    try:
        if args.loop == "uvloop":
            import uvloop

            result = uvloop.run(measure(args))
        else:
            result = asyncio.run(measure(args))
    except OSError as exc:
        raise SystemExit(f"load: {exc}") from None
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(
            f"client={result.client} connections={result.connections} size={result.size} "
            f"duration={result.duration:.2f}s requests={result.requests} "
            f"rps={result.rps:,.0f} errors={result.errors} "
            f"client_cpu={result.client_cpu_util:.0%} "
            f"({result.client_cpu_us_per_request:.1f} us/request)"
        )
    return 1 if result.errors else 0


# ------------------------------------------------------------------- comparison
def _pin(cpu: int | None) -> Callable[[], None] | None:
    """A preexec_fn pinning the child to ``cpu`` before exec (None: not pinned)."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def start_server(host: str, port: int, cpu: int | None, log: Any) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, str(BARE_ECHO), "--host", host, "--port", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        preexec_fn=_pin(cpu),
    )
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    # Another process's readiness has no event to await here: probe it, with a deadline.
    while not harness._tcp_accepts(host, port):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(proc)
            raise SystemExit(f"load: the echo server did not start on {host}:{port}")
        time.sleep(0.02)
    return proc


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM by pid, SIGKILL after SERVER_STOP_TIMEOUT, and reap."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(SERVER_STOP_TIMEOUT)


def _cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def load_run(
    args: argparse.Namespace,
    client: str,
    host: str,
    port: int,
    cpu: int | None,
    server_pid: int | None,
) -> dict[str, Any]:
    """One measured run in a fresh process pinned to ``cpu``; its JSON result.

    With ``server_pid``, ``server_cpu_util`` is the server's CPU time over the whole run
    (start-up and warm-up included, so a little low): near 100% means the server, not
    the client, was the limit.
    """
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        f"--address={host}:{port}",
        f"--client={client}",
        f"--connections={args.connections}",
        f"--size={args.size}",
        f"--duration={args.duration}",
        f"--warmup={args.warmup}",
        f"--loop={args.loop}",
        "--json",
    ]
    server_cpu, started = _cpu_seconds(server_pid), time.monotonic()
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=args.warmup + args.duration + RUN_GRACE,
            preexec_fn=_pin(cpu),
        )
    except subprocess.TimeoutExpired as exc:  # run() killed it by pid already
        raise SystemExit(f"load: the {client} run exceeded its deadline") from exc
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise SystemExit(f"load: the {client} run printed nothing:\n{proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    if server_pid is not None:
        wall = time.monotonic() - started
        result["server_cpu_util"] = round((_cpu_seconds(server_pid) - server_cpu) / wall, 3)
    return result


def compare(args: argparse.Namespace) -> int:
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, load_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    runs: dict[str, list[dict[str, Any]]] = {client: [] for client in CLIENTS}
    server = server_pid = None
    with tempfile.TemporaryFile() as log:
        if args.address is None:
            host, port = "127.0.0.1", harness.free_port("127.0.0.1")
            server = start_server(host, port, server_cpu, log)
            server_pid = server.pid
            where = f"bare uvloop echo ({BARE_ECHO.relative_to(HERE.parent)}) on {host}:{port}"
        else:
            (host, port), server_cpu = args.address, None
            where = f"the echo server at {host}:{port} (not started here, not pinned)"
        try:
            for n in range(args.runs):
                # Alternate who goes first, so drift over the run favours neither.
                for client in CLIENTS if n % 2 == 0 else CLIENTS[::-1]:
                    runs[client].append(load_run(args, client, host, port, load_cpu, server_pid))
        finally:
            if server is not None:
                stop_server(server)
    report: dict[str, Any] = {}
    for client in CLIENTS:
        report[client] = {
            "rps": [r["rps"] for r in runs[client]],
            "median_rps": statistics.median(r["rps"] for r in runs[client]),
            "client_cpu_util": statistics.median(r["client_cpu_util"] for r in runs[client]),
            "client_cpu_us_per_request": statistics.median(
                r["client_cpu_us_per_request"] for r in runs[client]
            ),
            "errors": sum(r["errors"] for r in runs[client]),
        }
        if server is not None:
            report[client]["server_cpu_util"] = statistics.median(
                r["server_cpu_util"] for r in runs[client]
            )
    report["ratio"] = report["pool"]["median_rps"] / report["bare"]["median_rps"]
    bare_cost = report["bare"]["client_cpu_us_per_request"]
    report["cpu_cost_ratio"] = (
        report["pool"]["client_cpu_us_per_request"] / bare_cost if bare_cost else None
    )
    if args.json:
        print(json.dumps(report))
    else:
        print_report(args, report, where, server_cpu, load_cpu)
    return 1 if any(report[client]["errors"] for client in CLIENTS) else 0


def print_report(
    args: argparse.Namespace,
    report: dict[str, Any],
    where: str,
    server_cpu: int | None,
    load_cpu: int | None,
) -> None:
    pinned = (
        f"server on CPU {server_cpu}, load on CPU {load_cpu}"
        if load_cpu is not None
        else "not pinned (fewer than 2 CPUs)"
    )
    print(f"server: {where}; {pinned}")
    print(
        f"load: {args.connections} connections, {args.size}-byte messages, one in flight "
        f"per connection, {args.duration:g}s measured after {args.warmup:g}s warm-up, "
        f"{args.loop} loop, {args.runs} runs per client, one process per run"
    )
    header = "  ".join(f"run {n + 1:<8}" for n in range(args.runs))
    print(
        f"{'client':<7}{header}  {'median req/s':>12}  {'client CPU':>10}  "
        f"{'us CPU/req':>10}  {'server CPU':>10}  errors"
    )
    for client in CLIENTS:
        row = report[client]
        cells = "  ".join(f"{rps:<12,.0f}" for rps in row["rps"])
        server_cpu = row.get("server_cpu_util")
        server_cell = f"{server_cpu:.0%}" if server_cpu is not None else "-"
        print(
            f"{client:<7}{cells}  {row['median_rps']:>12,.0f}  "
            f"{row['client_cpu_util']:>10.0%}  {row['client_cpu_us_per_request']:>10.1f}  "
            f"{server_cell:>10}  {row['errors']}"
        )
    print(f"pool/bare throughput = {report['ratio']:.2f}")
    if report["cpu_cost_ratio"] is not None:
        print(f"pool/bare client CPU per request = {report['cpu_cost_ratio']:.2f}")


# ------------------------------------------------------------------- command line
def host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--address", type=host_port, help="the echo server, HOST:PORT")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--size", type=int, default=100, help="bytes per message")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds not measured")
    parser.add_argument("--client", choices=CLIENTS, default="pool")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--compare", action="store_true", help="run both clients, report pool/bare")
    parser.add_argument("--runs", type=int, default=3, help="runs per client with --compare")
    parser.add_argument("--json", action="store_true", help="one JSON line of results")
    args = parser.parse_args(argv)
    if args.connections < 1 or args.size < 1 or args.runs < 1:
        parser.error("--connections, --size and --runs must be at least 1")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be > 0 and --warmup >= 0")
    if not args.compare and args.address is None:
        parser.error("--address is required (or --compare, which starts its own server)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return compare(args) if args.compare else run_one(args)


if __name__ == "__main__":
    raise SystemExit(main())
