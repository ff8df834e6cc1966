"""HTTP load with ``wrk``: the HTTP counterpart of harness.run_echo_load/measure.

Why a separate module: the echo harness drives its own C client, which speaks
only echo.  HTTP servers are loaded with wrk, a widely used C load generator,
so the figures compare with numbers people publish.  Everything else is the
harness's: the same pinned start-up (harness.start_server), the same CPU
accounting (harness.cpu_seconds over the server's process tree, charged to
the requests wrk counted) and the same foreign-CPU check, so an HTTP row and
an echo row mean the same thing.

(Named wrkload, not http: the scripts run with this folder first on
sys.path, and a module called ``http`` would shadow the standard library's.)

What a run must prove before its number is used:

* the server answers ``GET /`` with 200, ``text/plain``, ``Content-Length: 13``
  and ``Hello, World!`` - checked with one raw request before any load, so a
  server answering 404s fast is never ranked first;
* wrk reported no socket errors and no non-2xx/3xx answers - if it did, the
  run is kept but carries the counts, and the report flags the row.
"""

from __future__ import annotations

import contextlib
import re
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import TypedDict

import harness

WRK = "wrk"
WRK_TIMEOUT_S = 2  # wrk's per-request timeout: slower answers count as timeouts
WRK_GRACE = 10.0  # on top of -d before we kill wrk ourselves
PROBE_TIMEOUT = 15.0  # first answer: covers workers still importing the app
EXPECTED_BODY = b"Hello, World!"


class WrkResult(TypedDict):
    """What one wrk run reported (latencies converted to microseconds)."""

    requests: int
    duration: float
    rps: float
    bytes_read: float
    p50_us: float
    p75_us: float
    p90_us: float
    p99_us: float
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    non_2xx: int
    client_cpu_s: float


class HttpMeasurement(harness.Measurement):
    """harness.Measurement plus what only wrk knows.

    The base keys keep their meaning, so harness.quiet_runs and
    harness.median_of work unchanged: ``errors`` is socket errors (connect,
    read, write) plus non-2xx/3xx answers, ``lost`` is wrk's timeouts.
    """

    p75_us: float
    p90_us: float
    non_2xx: int
    socket_errors: int
    bytes_per_response: float


# ---------------------------------------------------------------------- parse
_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
_SIZE = {"B": 1.0, "KB": 1024.0, "MB": 1024.0**2, "GB": 1024.0**3, "TB": 1024.0**4}
_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h), ([\d.]+)([KMGT]?B) read")
_PERCENTILE = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)


def parse_wrk(text: str, client_cpu_s: float = 0.0) -> WrkResult:
    """Parse ``wrk --latency`` output; BenchError if a needed line is missing.

    Missing error lines mean zero (wrk prints them only when non-zero); a
    missing request count, rate or latency line means the run is unusable.
    """
    requests = duration = bytes_read = rps = None
    percentiles: dict[str, float] = {}
    for line in text.splitlines():
        if (m := _REQUESTS.match(line)) is not None:
            requests = int(m[1])
            duration = float(m[2]) * _UNITS_US[m[3]] / 1e6
            bytes_read = float(m[4]) * _SIZE[m[5]]
        elif (m := _PERCENTILE.match(line)) is not None:
            percentiles[m[1]] = float(m[2]) * _UNITS_US[m[3]]
    if (m := _RPS.search(text)) is not None:
        rps = float(m[1])
    if requests is None or duration is None or bytes_read is None or rps is None:
        raise harness.BenchError(f"unparsable wrk output:\n{text}")
    if requests and set(percentiles) != {"50", "75", "90", "99"}:
        raise harness.BenchError(f"wrk output lacks the latency distribution:\n{text}")
    socket_errors = [0, 0, 0, 0]
    if (m := _SOCKET.search(text)) is not None:
        socket_errors = [int(g) for g in m.groups()]
    non_2xx = int(m[1]) if (m := _NON_2XX.search(text)) is not None else 0
    return WrkResult(
        requests=requests,
        duration=duration,
        rps=rps,
        bytes_read=bytes_read,
        p50_us=percentiles.get("50", 0.0),
        p75_us=percentiles.get("75", 0.0),
        p90_us=percentiles.get("90", 0.0),
        p99_us=percentiles.get("99", 0.0),
        connect_errors=socket_errors[0],
        read_errors=socket_errors[1],
        write_errors=socket_errors[2],
        timeouts=socket_errors[3],
        non_2xx=non_2xx,
        client_cpu_s=client_cpu_s,
    )


# ----------------------------------------------------------------------- run
def wrk_argv(port: int, *, connections: int, threads: int, duration: int, host: str) -> list[str]:
    """The wrk command line; the report prints it, so it is built in one place."""
    return [
        WRK,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        f"--timeout={WRK_TIMEOUT_S}s",
        "--latency",
        f"http://{host}:{port}/",
    ]


def run_wrk(
    port: int,
    cpu: harness.CpuSpec,
    *,
    connections: int = 64,
    threads: int = 1,
    duration: int = 5,
    host: str = harness.DEFAULT_HOST,
) -> WrkResult:
    """Run wrk pinned to ``cpu`` and parse its report.

    wrk only takes whole seconds.  It is started with Popen and, whatever
    happens, killed by pid and reaped in the ``finally`` (the deadline is
    ``duration + WRK_GRACE``).  Its CPU time is read from RUSAGE_CHILDREN
    around the run, as harness.run_echo_load does: only wrk is reaped
    meanwhile, so the delta is wrk's own CPU.
    """
    argv = wrk_argv(port, connections=connections, threads=threads, duration=duration, host=host)
    cpus = harness._cpu_set(cpu)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=harness._pinner(cpus),
    )
    try:
        out, err = proc.communicate(timeout=duration + WRK_GRACE)
    except subprocess.TimeoutExpired as exc:
        raise harness.BenchError(f"wrk exceeded its deadline: {argv}") from exc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(harness.STOP_TIMEOUT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.returncode != 0:
        raise harness.BenchError(f"wrk exited {proc.returncode} ({argv}):\n{out}\n{err}")
    return parse_wrk(out, client_cpu)


# --------------------------------------------------------------------- probe
def _read_response(sock: socket.socket, deadline: float) -> tuple[str, dict[str, str], bytes]:
    """Read one HTTP/1.1 response with a Content-Length body (or fail)."""
    data = b""
    while b"\r\n\r\n" not in data:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            raise harness.BenchError(f"connection closed mid-response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "-1"))
    if length < 0:
        raise harness.BenchError(f"response without Content-Length: {head!r}")
    while len(body) < length:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status_line, headers, body


def probe(
    port: int, host: str = harness.DEFAULT_HOST, timeout: float = PROBE_TIMEOUT
) -> dict[str, str]:
    """GET / until it answers, then check the answer is the hello response.

    Doubles as readiness: an accepting socket only proves the listener is
    bound (a pre-fork arbiter binds before its workers import the app); an
    answer proves a worker serves.  Returns the response headers, which the
    report shows (servers differ in what they send, e.g. ``server``).
    """
    deadline = time.monotonic() + timeout
    request = f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1.0) as sock:
                sock.sendall(request)
                status, headers, body = _read_response(sock, min(deadline, time.monotonic() + 5))
        except (OSError, harness.BenchError) as exc:
            last = exc
            time.sleep(0.05)
            continue
        problems = []
        if status.split()[1:2] != ["200"]:
            problems.append(f"status {status!r}")
        if not headers.get("content-type", "").startswith("text/plain"):
            problems.append(f"content-type {headers.get('content-type')!r}")
        if headers.get("content-length") != str(len(EXPECTED_BODY)):
            problems.append(f"content-length {headers.get('content-length')!r}")
        if body != EXPECTED_BODY:
            problems.append(f"body {body[:80]!r}")
        if problems:
            raise harness.BenchError("wrong hello response: " + ", ".join(problems))
        return headers
    raise harness.BenchError(f"no HTTP answer on {host}:{port} within {timeout} s: {last}")


# ------------------------------------------------------------------- measure
def measure_http(
    server_argv: Sequence[str],
    *,
    server_cpu: harness.CpuSpec = 0,
    client_cpu: harness.CpuSpec = 1,
    connections: int = 64,
    threads: int = 1,
    duration: int = 5,
    warmup: int = 1,
    settle: float = 0.0,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    ready: str | None = None,
    host: str = harness.DEFAULT_HOST,
) -> tuple[HttpMeasurement, dict[str, str]]:
    """Start a server, prove it answers, warm it up, load it, charge its CPU.

    Mirrors harness.measure: CPU of the server's whole process tree (arbiter,
    workers, nginx master and workers...) is sampled right before and after
    the measured wrk run, so start-up and warm-up never count.  ``settle``
    waits after the first answer, for multi-worker servers whose other
    workers may still be booting.  Returns the measurement and the headers
    of the probe response.  The server is stopped in a ``finally``.
    """
    server = harness.start_server(server_argv, server_cpu, env, port=port, ready=ready, host=host)
    try:
        headers = probe(server.port, host)
        if settle > 0:
            time.sleep(settle)
        if warmup > 0:
            run_wrk(
                server.port,
                client_cpu,
                duration=warmup,
                connections=connections,
                threads=threads,
                host=host,
            )
        window = harness.BusyWindow(harness._bench_cores(server_cpu, client_cpu))
        window.start()
        before = harness.cpu_seconds(server.pid)
        result = run_wrk(
            server.port,
            client_cpu,
            duration=duration,
            connections=connections,
            threads=threads,
            host=host,
        )
        after = harness.cpu_seconds(server.pid)
        window.stop()
        if not server.alive():
            raise harness.BenchError(f"server died during the load:\n{server.stderr()}")
    finally:
        server.stop()
    cpu = after - before
    requests = result["requests"]
    wall = result["duration"]
    if requests == 0:
        raise harness.BenchError(f"no request completed against {list(server_argv)}: {result}")
    socket_errors = result["connect_errors"] + result["read_errors"] + result["write_errors"]
    foreign, share = window.outside(cpu + result["client_cpu_s"])
    return (
        HttpMeasurement(
            requests=requests,
            errors=socket_errors + result["non_2xx"],
            lost=result["timeouts"],
            duration=wall,
            rps=result["rps"],
            p50_us=result["p50_us"],
            p99_us=result["p99_us"],
            client_cpu_s=result["client_cpu_s"],
            server_cpu_s=cpu,
            server_cpu_util=cpu / wall if wall > 0 else 0.0,
            client_cpu_util=result["client_cpu_s"] / wall if wall > 0 else 0.0,
            foreign_cpu_s=foreign,
            outside_share=share,
            core_busy=window.core_shares(),
            window_s=window.window_s,
            cpu_us_per_request=cpu * 1e6 / requests,
            client_cpu_us_per_request=result["client_cpu_s"] * 1e6 / requests,
            p75_us=result["p75_us"],
            p90_us=result["p90_us"],
            non_2xx=result["non_2xx"],
            socket_errors=socket_errors,
            bytes_per_response=result["bytes_read"] / requests,
        ),
        headers,
    )
