"""``--metrics-bind``: ``GET /health`` and ``GET /metrics``, answered by the arbiter's loop.

The arbiter answers from what it already knows: the workers' last heartbeats (their
counters, histogram and CPU), its own records (phases, exits by reason) and psutil for
memory. A scrape never asks a worker anything, so it costs the workers nothing.

Counters never go backwards: the arbiter folds a dead worker's last counts into the
totals (:class:`Folded`), so ``pulsar_arbiter_requests_total`` and the others only grow
across recycles, reloads and crashes. Per-worker series (label ``worker``, the worker's
id) end with their worker, as a Prometheus series of a gone process does. A re-executed
arbiter (USR2) starts from zero, which Prometheus reads as a counter reset
(``process_start_time_seconds`` changes with it).

The endpoint speaks just enough HTTP/1.1: one request per connection, a bounded head,
``Connection: close``. Metric names follow Prometheus conventions: the
``pulsar_arbiter_`` prefix, base units in names (``_seconds``, ``_bytes``), ``_total``
on counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector

__all__ = [
    "COUNTERS",
    "DURATION_BUCKETS",
    "Folded",
    "MetricsServer",
    "Snapshot",
    "WorkerSample",
    "observe_duration",
    "render",
]

LOGGER = logging.getLogger("pulsar_arbiter.metrics")

#: Upper bounds (seconds) of the request duration histogram: Prometheus's defaults,
#: from a millisecond (a raw handler) to ten seconds (a slow WSGI view).
DURATION_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

#: Heartbeat counters, by stats key: (metric base name, help). Each only grows in a
#: worker's life; the arbiter folds a dead worker's last value into the totals.
COUNTERS: Mapping[str, tuple[str, str]] = {
    "requests": ("requests", "Requests served"),
    "bytes_in": ("received_bytes", "Bytes received from clients (TCP, kernel counts)"),
    "bytes_out": ("sent_bytes", "Bytes sent to clients and acknowledged (TCP, kernel counts)"),
    "commands": ("commands", "Commands the workers handled"),
    "cpu": ("cpu_seconds", "CPU time of the workers, user and system"),
}
#: The histogram's keys in a heartbeat: bucket counts (one per bound, not cumulative,
#: then the overflow), sum of the durations.
DURATION_COUNTS, DURATION_SUM = "duration_counts", "duration_sum"

# A request head of the endpoint may be this long: "GET /metrics" and a few headers.
MAX_HEAD = 8192
# Seconds a client has to send its request head.
READ_TIMEOUT = 5.0


def observe_duration(counts: list[int], seconds: float) -> None:
    """Count one duration into ``counts`` (len(DURATION_BUCKETS) + 1, not cumulative)."""
    for index, bound in enumerate(DURATION_BUCKETS):
        if seconds <= bound:
            counts[index] += 1
            return
    counts[-1] += 1


def _number(stats: Mapping[str, Any], key: str) -> float:
    """A counter of a heartbeat; what is not a non-negative number is 0."""
    value = stats.get(key, 0)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return 0.0


def _counts(stats: Mapping[str, Any]) -> list[int]:
    value = stats.get(DURATION_COUNTS)
    size = len(DURATION_BUCKETS) + 1
    if (
        isinstance(value, list)
        and len(value) == size
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    ):
        return list(value)
    return [0] * size


@dataclass
class Folded:
    """What dead workers counted, kept so that totals never go backwards."""

    counters: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0.0))
    duration_counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    duration_sum: float = 0.0

    def fold(self, stats: Mapping[str, Any]) -> None:
        for key in COUNTERS:
            self.counters[key] += _number(stats, key)
        for index, count in enumerate(_counts(stats)):
            self.duration_counts[index] += count
        self.duration_sum += _number(stats, DURATION_SUM)


@dataclass(frozen=True)
class WorkerSample:
    """One live worker as the arbiter knows it: ids, its last heartbeat, its memory."""

    id: int
    pid: int | None
    phase: str
    generation: int
    stats: Mapping[str, Any]
    heartbeat_age: float
    rss: int


@dataclass(frozen=True)
class Snapshot:
    """Everything a scrape shows, taken in one go by the arbiter."""

    workers: Sequence[WorkerSample]
    folded: Folded
    exits_by_reason: Mapping[str, int]
    spawned: int
    desired: int
    generation: int
    healthy: bool
    phases: Mapping[str, int]


def _cumulative(counts: Sequence[int], total_sum: float) -> tuple[list[tuple[str, float]], float]:
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(DURATION_BUCKETS, counts[:-1], strict=True):
        running += count
        buckets.append((repr(float(bound)), float(running)))
    running += counts[-1]
    buckets.append(("+Inf", float(running)))
    return buckets, total_sum


class _Collector:
    """The prometheus_client collector of one snapshot source."""

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        snap = self.source()
        yield from _counters(snap)
        yield from _histograms(snap)
        yield from _gauges(snap)


def _counters(snap: Snapshot) -> Iterable[Metric]:
    for key, (name, doc) in COUNTERS.items():
        total = CounterMetricFamily(f"pulsar_arbiter_{name}", f"{doc}, every worker ever")
        live = sum(_number(w.stats, key) for w in snap.workers)
        total.add_metric([], snap.folded.counters[key] + live)
        yield total
        per = CounterMetricFamily(
            f"pulsar_arbiter_worker_{name}", f"{doc}, by live worker", labels=["worker"]
        )
        for worker in snap.workers:
            per.add_metric([str(worker.id)], _number(worker.stats, key))
        yield per
    exits = CounterMetricFamily(
        "pulsar_arbiter_worker_exits",
        "Workers gone, by reason (max_requests is a recycle; crashed, timeouts are restarts)",
        labels=["reason"],
    )
    for reason, count in sorted(snap.exits_by_reason.items()):
        exits.add_metric([reason], float(count))
    yield exits
    yield CounterMetricFamily(
        "pulsar_arbiter_recycles",
        "Workers replaced after their --max-requests",
        value=float(snap.exits_by_reason.get("max_requests", 0)),
    )
    yield CounterMetricFamily(
        "pulsar_arbiter_worker_spawns", "Workers forked", value=float(snap.spawned)
    )


def _histograms(snap: Snapshot) -> Iterable[Metric]:
    name = "pulsar_arbiter_request_duration_seconds"
    counts = list(snap.folded.duration_counts)
    total_sum = snap.folded.duration_sum
    per = HistogramMetricFamily(
        name.replace("arbiter_", "arbiter_worker_"),
        "HTTP request duration, by live worker",
        labels=["worker"],
    )
    for worker in snap.workers:
        mine = _counts(worker.stats)
        mine_sum = _number(worker.stats, DURATION_SUM)
        counts = [a + b for a, b in zip(counts, mine, strict=True)]
        total_sum += mine_sum
        buckets, value = _cumulative(mine, mine_sum)
        per.add_metric([str(worker.id)], buckets, value)
    total = HistogramMetricFamily(name, "HTTP request duration, every worker ever")
    buckets, value = _cumulative(counts, total_sum)
    total.add_metric([], buckets, value)
    yield total
    yield per


def _gauges(snap: Snapshot) -> Iterable[Metric]:
    connections = GaugeMetricFamily(
        "pulsar_arbiter_worker_connections", "Open client connections", labels=["worker"]
    )
    rss = GaugeMetricFamily(
        "pulsar_arbiter_worker_resident_memory_bytes", "Resident memory", labels=["worker"]
    )
    age = GaugeMetricFamily(
        "pulsar_arbiter_worker_heartbeat_age_seconds",
        "Seconds since the worker's last heartbeat",
        labels=["worker"],
    )
    for worker in snap.workers:
        label = [str(worker.id)]
        connections.add_metric(label, _number(worker.stats, "connections"))
        rss.add_metric(label, float(worker.rss))
        age.add_metric(label, worker.heartbeat_age)
    yield connections
    yield GaugeMetricFamily(
        "pulsar_arbiter_connections",
        "Open client connections, every worker",
        value=sum(_number(w.stats, "connections") for w in snap.workers),
    )
    yield rss
    yield GaugeMetricFamily(
        "pulsar_arbiter_workers_resident_memory_bytes",
        "Resident memory of every worker",
        value=float(sum(w.rss for w in snap.workers)),
    )
    yield age
    phases = GaugeMetricFamily("pulsar_arbiter_workers", "Workers by phase", labels=["phase"])
    for phase, count in sorted(snap.phases.items()):
        phases.add_metric([phase], float(count))
    yield phases
    yield GaugeMetricFamily(
        "pulsar_arbiter_workers_desired", "Workers asked for", value=float(snap.desired)
    )
    yield GaugeMetricFamily(
        "pulsar_arbiter_generation", "Generation (one more per reload)", value=snap.generation
    )
    yield GaugeMetricFamily(
        "pulsar_arbiter_healthy", "1 when /health answers 200", value=float(snap.healthy)
    )


def registry(source: Callable[[], Snapshot]) -> CollectorRegistry:
    """A registry of the arbiter's metrics (from ``source``) and its ``process_*``."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(source))
    ProcessCollector(registry=reg)
    return reg


def render(reg: CollectorRegistry) -> bytes:
    """The text exposition format of ``reg``."""
    return generate_latest(reg)


# -- the endpoint ---------------------------------------------------------------------------


def _response(status: str, body: bytes, content_type: str, head_only: bool = False) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    return head if head_only else head + body


TEXT = "text/plain; charset=utf-8"


class MetricsServer:
    """``GET /health`` and ``GET /metrics`` on ``sock``, in the running loop (the
    arbiter's). ``health()`` answers (ok, one-line reason)."""

    def __init__(
        self,
        sock: socket.socket,
        snapshot: Callable[[], Snapshot],
        health: Callable[[], tuple[bool, str]],
    ) -> None:
        self.sock = sock
        self.health = health
        self.registry = registry(snapshot)
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, sock=self.sock, limit=MAX_HEAD)

    def filenos(self) -> list[int]:
        """The listening socket and the clients being answered: a forked worker closes them."""
        socks = [self.sock, *(w.get_extra_info("socket") for w in self._clients)]
        return [s.fileno() for s in socks if s is not None and s.fileno() >= 0]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._clients):
            writer.close()

    def answer(self, method: str, target: str) -> bytes:
        """The whole response to ``method target``."""
        path = target.split("?", 1)[0]
        head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            return _response("405 Method Not Allowed", b"only GET and HEAD\n", TEXT)
        if path == "/health":
            ok, why = self.health()
            status = "200 OK" if ok else "503 Service Unavailable"
            return _response(status, why.encode() + b"\n", TEXT, head_only)
        if path == "/metrics":
            return _response("200 OK", render(self.registry), CONTENT_TYPE_LATEST, head_only)
        return _response("404 Not Found", b"try /health or /metrics\n", TEXT, head_only)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                writer.write(_response("400 Bad Request", b"bad request\n", TEXT))
                return
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                writer.write(_response("400 Bad Request", b"bad request line\n", TEXT))
                return
            try:
                writer.write(self.answer(parts[0], parts[1]))
            except Exception:  # our bug: answer 500, keep the arbiter serving
                LOGGER.exception("metrics endpoint failed")
                writer.write(_response("500 Internal Server Error", b"error\n", TEXT))
            await writer.drain()
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            self._clients.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()
