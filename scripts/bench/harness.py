"""Reusable pieces for the echo benchmarks: start a pinned server, drive it
with the C load generator pinned to another core, and charge the server's
CPU time to the requests it served.

Why this shape:

* Server and client are pinned to different cores so they do not steal
  cycles from each other; on a 2-core box the result is "what one core of
  server does", which is comparable between runs and between servers.
* Throughput alone hides cost: a server can reach the same rps as another
  while burning more CPU.  ``cpu_us_per_request`` (server CPU over the
  measured window / requests) is the number that compares implementations.
* Everything is bounded: each wait has a deadline, the client has a hard
  stop of its own, and every process started here is stopped by pid in a
  ``finally`` - a hung benchmark is worse than a failed one.

The module is imported by sibling scripts (``import harness``); it is not a
package on purpose, the benchmarks run as plain scripts.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import cbuild
import psutil

CpuSpec = int | Collection[int] | None
"""One core, a set of cores, or None for "do not pin"."""

DEFAULT_HOST = "127.0.0.1"
STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
CLIENT_GRACE = 5.0  # on top of warmup+duration; the client stops itself at +1 s


class BenchError(RuntimeError):
    """A benchmark could not produce a trustworthy number."""


class NotServed(BenchError):
    """The server answered, but does not serve what the row measures (e.g. no
    WebSocket yet): the row is skipped with this message, not failed."""


class LoadResult(TypedDict):
    """The C client's JSON line (see c/echo_client.c)."""

    requests: int
    errors: int
    lost: int
    duration: float
    rps: float
    p50_us: float
    p99_us: float
    client_cpu_s: float  # added by run_echo_load: near duration = client-bound


class Measurement(LoadResult):
    """A load result plus what the server spent serving it."""

    server_cpu_s: float
    server_cpu_util: float  # server CPU / wall time; well below 1.0 = not saturated
    client_cpu_util: float  # near 1.0 = the client, not the server, was the limit
    foreign_cpu_s: float  # CPU others used on our cores meanwhile; > ~0.1 s = noisy run
    outside_share: float  # foreign_cpu_s / (window x cores): the machine's busy share not ours
    core_busy: dict[str, float]  # busy share of each benchmark core over the window, ours included
    window_s: float  # wall time over which the CPU samples were taken
    cpu_us_per_request: float
    client_cpu_us_per_request: float  # the load generator's CPU per request


# --------------------------------------------------------------------- pinning
def _cpu_set(cpu: CpuSpec) -> set[int] | None:
    """Normalise and validate a CpuSpec against the cores we may run on.

    Fails early with a clear message instead of letting sched_setaffinity
    raise EINVAL inside a forked child, where the error is hard to see.
    """
    if cpu is None:
        return None
    cpus = {cpu} if isinstance(cpu, int) else set(cpu)
    allowed = os.sched_getaffinity(0)
    if not cpus or not cpus <= allowed:
        raise ValueError(f"cpu {sorted(cpus)} not within allowed cores {sorted(allowed)}")
    return cpus


def _pinner(cpus: set[int] | None) -> Callable[[], None] | None:
    """A preexec_fn pinning the child before exec, so even its first
    instructions (and any processes it forks) stay on the chosen cores."""
    if cpus is None:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, cpus)

    return pin


# ---------------------------------------------------------------------- server
@dataclass
class Server:
    """A running server process started by :func:`start_server`."""

    argv: list[str]
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    _stopped: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        """The pid of the process we started (the root of its tree)."""
        return self.proc.pid

    def alive(self) -> bool:
        """True while the started process has not exited."""
        return self.proc.poll() is None

    def stdout(self) -> str:
        """Everything the server wrote to stdout so far."""
        return _read_text(self.workdir / "stdout")

    def stderr(self, limit: int = 4000) -> str:
        """The tail of the server's stderr, for error messages."""
        return _read_text(self.workdir / "stderr")[-limit:]

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM the server, SIGKILL it after ``timeout``, and reap it.

        Descendants are snapshotted first and any still running after the
        root is gone are killed by pid too, so a forking server that dies
        badly does not leave workers holding the port for the next run.
        Idempotent; returns the exit status (None if it could not be reaped).
        """
        if self._stopped:
            return self.proc.returncode
        self._stopped = True
        try:
            descendants = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        if self.proc.poll() is None:
            _signal_pid(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_pid(self.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout)
        leftovers = [p for p in descendants if _running(p)]
        for p in leftovers:
            with contextlib.suppress(psutil.Error):
                p.kill()  # psutil checks create-time, so a reused pid is safe
        psutil.wait_procs(leftovers, timeout=timeout)
        shutil.rmtree(self.workdir, ignore_errors=True)
        return self.proc.returncode

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _signal_pid(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _argv_option(argv: Sequence[str], name: str) -> str | None:
    """Value of ``--name V`` or ``--name=V`` in argv, if present."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def free_port(host: str = DEFAULT_HOST, udp: bool = False) -> int:
    """An ephemeral port that was free a moment ago.

    Racy by nature (someone may take it before the server binds); good
    enough on a benchmark box, and servers that can report their own port
    (``READY <port>`` with ``--port 0``) should be preferred.
    """
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _tcp_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _ready_line(text: str, prefix: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(prefix):
            return line
    return None


def start_server(
    argv: Sequence[str],
    cpu: CpuSpec,
    env: Mapping[str, str] | None = None,
    *,
    port: int | None = None,
    ready: str | None = None,
    host: str | None = None,
    timeout: float = STARTUP_TIMEOUT,
) -> Server:
    """Start ``argv`` pinned to ``cpu`` and return once it is serving.

    Readiness: if ``ready`` is given (e.g. ``"READY"``), wait for a stdout
    line starting with it; an integer right after the prefix is taken as
    the port, which lets a server bind port 0.  Otherwise wait until
    ``host:port`` accepts a TCP connection; ``port``/``host`` default to the
    ``--port``/``--host`` values in argv.  UDP servers need ``ready``, as a
    datagram socket cannot be probed without the server's cooperation.

    ``env`` is overlaid on the current environment (not a replacement), so
    PATH and the venv keep working.  stdout/stderr go to files, not pipes:
    a chatty server can never block on a full pipe nobody reads.
    Raises BenchError (after stopping the process) if the server exits or
    is not ready within ``timeout`` seconds.
    """
    argv = [str(a) for a in argv]
    host = host or _argv_option(argv, "--host") or DEFAULT_HOST
    if port is None:
        value = _argv_option(argv, "--port")
        port = int(value) if value is not None else None
    if ready is None and not port:
        raise ValueError("need a fixed port (argument or --port in argv) or a ready line")
    cpus = _cpu_set(cpu)
    workdir = Path(tempfile.mkdtemp(prefix="bench-server-"))
    child_env = {**os.environ, **(env or {})}
    with open(workdir / "stdout", "wb") as out, open(workdir / "stderr", "wb") as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=child_env,
            preexec_fn=_pinner(cpus),
            close_fds=True,
        )
    server = Server(argv=argv, proc=proc, port=port or 0, workdir=workdir)
    try:
        _wait_ready(server, host, ready, time.monotonic() + timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: Server, host: str, ready: str | None, deadline: float) -> None:
    """Poll until the server is ready; bounded by ``deadline``."""
    while time.monotonic() < deadline:
        if not server.alive():
            raise BenchError(
                f"server {server.argv} exited with {server.proc.returncode} "
                f"before it was ready:\n{server.stderr()}"
            )
        if ready is not None:
            line = _ready_line(server.stdout(), ready)
            if line is not None:
                rest = line[len(ready) :].split()
                if rest and rest[0].isdigit():
                    server.port = int(rest[0])
                if not server.port:
                    raise BenchError(f"ready line {line!r} has no port and none was given")
                return
        elif _tcp_accepts(host, server.port):
            return
        time.sleep(0.02)
    raise BenchError(f"server {server.argv} not ready in time:\n{server.stderr()}")


# ------------------------------------------------------------------------- cpu
def cpu_seconds(pid: int, include_children: bool = True) -> float:
    """User+system CPU seconds consumed so far by ``pid`` (and its tree).

    With ``include_children`` it also sums every live descendant plus the
    ``children_*`` times of each process - the CPU of children that already
    exited and were reaped - so workers forked, or replaced, during a run
    are still charged to the server.  Take the difference of two samples.
    Resolution is the kernel's clock tick (usually 10 ms): measure for
    seconds, not milliseconds.
    """
    root = psutil.Process(pid)
    procs = [root]
    if include_children:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs += root.children(recursive=True)
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            if proc is root:
                raise
            continue  # exited between listing and sampling
        total += t.user + t.system
        if include_children:
            total += t.children_user + t.children_system
    return total


def busy_by_core(cpus: Collection[int] | None = None) -> dict[int, float]:
    """Busy (non-idle, non-iowait) CPU seconds so far on each of ``cpus`` (all if None).

    Read from /proc/stat.  Steal time counts as busy: the hypervisor took it
    from us just the same.
    """
    busy: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as stat:
        for line in stat:
            name, *fields = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            core = int(name[3:])
            if cpus is not None and core not in cpus:
                continue
            # user nice system idle iowait irq softirq steal
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
            busy[core] = (user + nice + system + irq + softirq + steal) / tick
    return busy


def cores_busy_seconds(cpus: Collection[int] | None = None) -> float:
    """Busy CPU seconds so far on ``cpus`` (all if None), summed over the cores.

    Subtracting what the server and the client used from the delta over a
    run gives the CPU that *other* processes took on the benchmark's cores -
    a shared machine's noise, which otherwise shows up only as an
    unexplained drop in rps.
    """
    return sum(busy_by_core(cpus).values())


class BusyWindow:
    """The machine's busy time on the benchmark cores over one measured window.

    ``start()`` right before the load, ``stop()`` right after; then
    :meth:`outside` charges the window's busy seconds to our server and load
    processes (their CPU, given by the caller) and returns what is left:
    other processes' CPU, in seconds and as a share of the cores' capacity.
    """

    def __init__(self, cores: set[int] | None) -> None:
        self.cores = cores
        self.count = len(cores) if cores is not None else (os.cpu_count() or 1)
        self.before: dict[int, float] = {}
        self.after: dict[int, float] = {}
        self.started = self.stopped = 0.0

    def start(self) -> None:
        self.before = busy_by_core(self.cores)
        self.started = time.monotonic()

    def stop(self) -> None:
        self.stopped = time.monotonic()
        self.after = busy_by_core(self.cores)

    @property
    def window_s(self) -> float:
        return max(1e-6, self.stopped - self.started)

    def core_shares(self) -> dict[str, float]:
        """Busy share of each core over the window (ours and others together)."""
        return {
            str(core): round((self.after[core] - self.before.get(core, 0.0)) / self.window_s, 3)
            for core in sorted(self.after)
        }

    def outside(self, ours_cpu_s: float) -> tuple[float, float]:
        """(foreign CPU seconds, foreign share of the cores) given our processes' CPU."""
        busy = sum(self.after.values()) - sum(self.before.values())
        foreign = max(0.0, busy - ours_cpu_s)
        return foreign, foreign / (self.window_s * self.count)


# ------------------------------------------------------------------------ load
def run_echo_load(
    port: int,
    cpu: CpuSpec,
    connections: int = 64,
    size: int = 100,
    duration: float = 3.0,
    udp: bool = False,
    pipeline: int = 1,
    *,
    warmup: float = 0.0,
    host: str = DEFAULT_HOST,
    udp_timeout_ms: int = 200,
) -> LoadResult:
    """Run the C echo client pinned to ``cpu`` and return its JSON result.

    Raises BenchError if the client fails, every connection was lost, or
    its output is not the expected JSON line - a number produced by a
    broken run must not reach a report.
    """
    argv = [
        str(cbuild.build("echo_client")),
        "--host",
        host,
        "--port",
        str(port),
        "--connections",
        str(connections),
        "--size",
        str(size),
        "--duration",
        str(duration),
        "--warmup",
        str(warmup),
        "--pipeline",
        str(pipeline),
        "--udp-timeout-ms",
        str(udp_timeout_ms),
    ]
    if udp:
        argv.append("--udp")
    return run_c_client(argv, cpu, warmup + duration)


def run_ws_load(
    port: int,
    cpu: CpuSpec,
    connections: int = 64,
    size: int = 100,
    duration: float = 3.0,
    *,
    warmup: float = 0.0,
    host: str = DEFAULT_HOST,
    path: str = "/ws",
    binary: bool = False,
) -> LoadResult:
    """Run the C WebSocket echo client (c/ws_echo_client.c) pinned to ``cpu``.

    One message of ``size`` bytes in flight per connection; ``requests`` in
    the result are round trips (message out, the same message back).
    """
    argv = [
        str(cbuild.build("ws_echo_client")),
        "--host",
        host,
        "--port",
        str(port),
        "--path",
        path,
        "--connections",
        str(connections),
        "--size",
        str(size),
        "--duration",
        str(duration),
        "--warmup",
        str(warmup),
    ]
    if binary:
        argv.append("--binary")
    return run_c_client(argv, cpu, warmup + duration)


def run_c_client(argv: list[str], cpu: CpuSpec, seconds: float) -> LoadResult:
    """Run one of the C load generators to completion; parse its JSON line.

    Its CPU time is read from RUSAGE_CHILDREN around the run: that only
    grows when a child is reaped, and the server is not reaped while it
    runs, so the delta is exactly the client's CPU (as long as no other
    thread of this process reaps children meanwhile).
    """
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=seconds + CLIENT_GRACE,
            preexec_fn=_pinner(_cpu_set(cpu)),
        )
    except subprocess.TimeoutExpired as exc:  # run() has already killed it
        raise BenchError(f"load client exceeded its deadline: {argv}") from exc
    usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (usage_after.ru_utime + usage_after.ru_stime) - (
        usage_before.ru_utime + usage_before.ru_stime
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise BenchError(
            f"load client exited {proc.returncode} ({argv}):\n"
            f"stdout: {proc.stdout.strip()}\nstderr: {proc.stderr.strip()}"
        )
    try:
        raw = json.loads(lines[-1])
        return LoadResult(
            requests=int(raw["requests"]),
            errors=int(raw["errors"]),
            lost=int(raw["lost"]),
            duration=float(raw["duration"]),
            rps=float(raw["rps"]),
            p50_us=float(raw["p50_us"]),
            p99_us=float(raw["p99_us"]),
            client_cpu_s=client_cpu,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"unparsable load client output: {proc.stdout!r}") from exc


def measure(
    server_argv: Sequence[str],
    *,
    server_cpu: CpuSpec = 0,
    client_cpu: CpuSpec = 1,
    connections: int = 64,
    size: int = 100,
    duration: float = 3.0,
    warmup: float = 1.0,
    udp: bool = False,
    pipeline: int = 1,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    ready: str | None = None,
    host: str = DEFAULT_HOST,
    websocket: bool = False,
) -> Measurement:
    """Start a server, load it, and charge its CPU time to the requests.

    A separate ``warmup``-second load runs first (it fills caches, allocator
    arenas and any state a server creates lazily), then CPU is sampled
    immediately before and after the measured load, so start-up and warmup
    never count.  ``foreign_cpu_s`` / ``outside_share`` are the CPU other
    processes took on the server's and client's cores during the measured
    load; a run with much of it measured the neighbours as well.  UDP
    servers default to ``ready="READY"``.  ``websocket`` loads the server
    with the WebSocket echo client instead (requests = round trips).  The
    server is stopped in a ``finally`` whatever happens.
    """
    if udp and ready is None:
        ready = "READY"
    server = start_server(server_argv, server_cpu, env, port=port, ready=ready, host=host)

    def load(seconds: float) -> LoadResult:
        if websocket:
            return run_ws_load(server.port, client_cpu, connections, size, seconds, host=host)
        return run_echo_load(
            server.port, client_cpu, connections, size, seconds, udp, pipeline, host=host
        )

    try:
        if websocket:
            ws_handshake(host, server.port)
        if warmup > 0:
            load(warmup)
        window = BusyWindow(_bench_cores(server_cpu, client_cpu))
        window.start()
        before = cpu_seconds(server.pid)
        result = load(duration)
        after = cpu_seconds(server.pid)
        window.stop()
        if not server.alive():
            raise BenchError(f"server died during the load:\n{server.stderr()}")
    finally:
        server.stop()
    cpu = after - before
    return measurement(result, cpu, window, server_argv)


WS_PROBE_TIMEOUT = 15.0
WS_PROBE_REQUEST = (
    "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)


def ws_handshake(host: str, port: int, path: str = "/ws", timeout: float = WS_PROBE_TIMEOUT) -> str:
    """Try a WebSocket opening handshake until the server answers; return its status line.

    Doubles as readiness (a pre-fork arbiter accepts before its worker has
    imported the app).  An answer other than ``101`` raises NotServed with
    the status line: the server is up but serves no WebSocket there.
    """
    deadline = time.monotonic() + timeout
    request = WS_PROBE_REQUEST.format(path=path, host=host, port=port).encode()
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1.0) as sock:
                sock.sendall(request)
                data = b""
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    sock.settimeout(max(0.01, deadline - time.monotonic()))
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except OSError as exc:
            last = exc
            time.sleep(0.05)
            continue
        if not data:
            last = ConnectionError("closed without an answer")
            time.sleep(0.05)
            continue
        status = data.split(b"\r\n", 1)[0].decode("latin-1")
        if status.split()[1:2] != ["101"]:
            raise NotServed(f"the WebSocket handshake on {path} was answered {status!r}")
        return status
    raise BenchError(f"no answer to a WebSocket handshake on {host}:{port} in {timeout} s: {last}")


def measurement(
    load: LoadResult, server_cpu_s: float, window: BusyWindow, argv: Sequence[str]
) -> Measurement:
    """One run's figures from the load's result, the server's CPU and the busy window."""
    requests = load["requests"]
    wall = load["duration"]
    if requests == 0:
        raise BenchError(f"no request completed against {list(argv)}: {load}")
    foreign, share = window.outside(server_cpu_s + load["client_cpu_s"])
    return Measurement(
        **load,
        server_cpu_s=server_cpu_s,
        server_cpu_util=server_cpu_s / wall if wall > 0 else 0.0,
        client_cpu_util=load["client_cpu_s"] / wall if wall > 0 else 0.0,
        foreign_cpu_s=foreign,
        outside_share=share,
        core_busy=window.core_shares(),
        window_s=window.window_s,
        cpu_us_per_request=server_cpu_s * 1e6 / requests,
        client_cpu_us_per_request=load["client_cpu_s"] * 1e6 / requests,
    )


def measure_load_process(
    server_argv: Sequence[str],
    load_argv: Callable[[int], list[str]],
    *,
    server_cpu: CpuSpec = 0,
    client_cpu: CpuSpec = 1,
    load_env: Mapping[str, str] | None = None,
    ready: str | None = "READY",
    port: int | None = None,
    host: str = DEFAULT_HOST,
    seconds: float = 10.0,
) -> Measurement:
    """Measure a load generator, not a server: scripts/load.py against a fixed server.

    ``load_argv(port)`` is the load process's command; it runs pinned to
    ``client_cpu`` with ``load_env`` overlaid, does its own warm-up and
    prints one JSON line (requests, rps, errors, duration and
    ``client_cpu_us_per_request``, its own CPU over the measured window
    only).  That last figure is what the row compares.  The server's CPU
    and the machine's busy time are sampled around the whole load process
    (interpreter start and warm-up included), so ``outside_share`` uses the
    same window for everyone; ``cpu_us_per_request`` (the server's) is its
    CPU share over that window times the measured window, per request.
    """
    server = start_server(server_argv, server_cpu, port=port, ready=ready, host=host)
    argv = load_argv(server.port)
    try:
        window = BusyWindow(_bench_cores(server_cpu, client_cpu))
        usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        window.start()
        before = cpu_seconds(server.pid)
        try:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=seconds + CLIENT_GRACE + 10.0,
                preexec_fn=_pinner(_cpu_set(client_cpu)),
                env={**os.environ, **(load_env or {})},
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"load process exceeded its deadline: {argv}") from exc
        after = cpu_seconds(server.pid)
        window.stop()
        usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if not server.alive():
            raise BenchError(f"server died during the load:\n{server.stderr()}")
    finally:
        server.stop()
    client_cpu_s = (usage_after.ru_utime + usage_after.ru_stime) - (
        usage_before.ru_utime + usage_before.ru_stime
    )
    lines = proc.stdout.strip().splitlines()
    try:
        raw: dict[str, Any] = json.loads(lines[-1])
        requests, wall = int(raw["requests"]), float(raw["duration"])
        figure = float(raw["client_cpu_us_per_request"])
        rps, errors = float(raw["rps"]), int(raw["errors"])
        util = float(raw["client_cpu_util"])
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise BenchError(
            f"load process exited {proc.returncode} without its JSON line ({argv}):\n"
            f"{proc.stdout[-1000:]}\n{proc.stderr[-2000:]}"
        ) from exc
    if requests == 0:
        raise BenchError(f"no request completed by {argv}: {raw}")
    server_cpu_s = after - before
    foreign, share = window.outside(server_cpu_s + client_cpu_s)
    server_util = server_cpu_s / window.window_s
    return Measurement(
        requests=requests,
        errors=errors,
        lost=0,
        duration=wall,
        rps=rps,
        p50_us=0.0,
        p99_us=0.0,
        client_cpu_s=client_cpu_s,
        server_cpu_s=server_cpu_s,
        server_cpu_util=server_util,
        client_cpu_util=util,
        foreign_cpu_s=foreign,
        outside_share=share,
        core_busy=window.core_shares(),
        window_s=window.window_s,
        cpu_us_per_request=server_util * wall * 1e6 / requests,
        client_cpu_us_per_request=figure,
    )


def _bench_cores(*specs: CpuSpec) -> set[int] | None:
    """Union of the cores the benchmark runs on; None if any side is unpinned."""
    cores: set[int] = set()
    for spec in specs:
        cpus = _cpu_set(spec)
        if cpus is None:
            return None
        cores |= cpus
    return cores


def quiet_runs(
    measure_once: Callable[[], Measurement],
    runs: int = 3,
    max_foreign_s: float = 0.1,
    max_attempts: int | None = None,
) -> list[Measurement]:
    """Call ``measure_once`` until ``runs`` results had at most
    ``max_foreign_s`` of other processes' CPU on the benchmark cores.

    On a shared box a neighbour's burst halves rps for one run; re-running
    beats averaging the disturbance in.  Bounded by ``max_attempts``
    (default 3 * runs); if too few runs were quiet, the least disturbed
    ones are returned, and their ``foreign_cpu_s`` tells the reader so.
    """
    attempts = max_attempts if max_attempts is not None else 3 * runs
    done: list[Measurement] = []
    for _ in range(max(attempts, runs)):
        done.append(measure_once())
        quiet = [m for m in done if m["foreign_cpu_s"] <= max_foreign_s]
        if len(quiet) >= runs:
            return quiet[:runs]
    return sorted(done, key=lambda m: m["foreign_cpu_s"])[:runs]


def median_of(runs: Sequence[Mapping[str, Any]], key: str) -> float:
    """Median of ``key`` over repeated runs: robust to one noisy run, which
    on a shared 2-core box is the common failure, unlike the mean."""
    if not runs:
        raise ValueError("median_of needs at least one run")
    return float(statistics.median(float(r[key]) for r in runs))
