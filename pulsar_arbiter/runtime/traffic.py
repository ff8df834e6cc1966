"""A worker's traffic counters for its heartbeat: bytes in and out, request durations.

Bytes are the kernel's own counts of each TCP connection (``TCP_INFO``:
``tcpi_bytes_received``, ``tcpi_bytes_acked``), read when a connection closes and, for
the live ones, when a heartbeat is built: nothing is counted on the per-request path.
A connection handed over by another worker counts from the hand-over on (its earlier
bytes were counted by the worker that held them). Unix sockets have no such counts.

Request durations (HTTP only) are counted into the fixed buckets of
:data:`pulsar_arbiter.ops.metrics.DURATION_BUCKETS`, from the HTTP consumer's
``started_at`` to the server's ``post_request``: one callback per request, bound only for
HTTP. A WebSocket session (after its 101 answer, which is counted) is not a request.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from ..http.consumer import HttpConsumer
from ..ops.metrics import DURATION_BUCKETS, DURATION_COUNTS, DURATION_SUM
from ..protocols import PulsarProtocol
from ..servers import DatagramServer, TcpServer

__all__ = ["Traffic", "tcp_bytes"]

_clock = time.perf_counter

# struct tcp_info (linux/tcp.h): tcpi_bytes_acked and tcpi_bytes_received, two u64 at
# offset 120, present since Linux 4.2; a shorter answer means an older kernel.
TCP_INFO_SIZE = 232
_BYTES_AT = 120
_BYTES = struct.Struct("QQ")


def tcp_bytes(sock: Any) -> tuple[int, int]:
    """(received, sent and acknowledged) of a TCP socket; (0, 0) when unknown."""
    if sock is None:
        return 0, 0
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
    except (OSError, AttributeError, ValueError):
        return 0, 0
    if len(raw) < _BYTES_AT + _BYTES.size:
        return 0, 0
    acked, received = _BYTES.unpack_from(raw, _BYTES_AT)
    return int(received), int(acked)


class Traffic:
    """The counters of one worker."""

    def __init__(self) -> None:
        self.bytes_in = 0  # of closed connections
        self.bytes_out = 0
        # Kernel counts a handed-over connection had when we adopted it.
        self._baseline: dict[PulsarProtocol, tuple[int, int]] = {}
        self.durations = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0

    def watch(self, server: TcpServer | DatagramServer, http: bool) -> None:
        if isinstance(server, TcpServer):
            server.bind_event("connection_lost", self._lost)
        if http:
            server.bind_event("post_request", self._post_request)

    def adopted(self, protocol: PulsarProtocol, baseline: tuple[int, int]) -> None:
        """A handed-over connection: count only what it moves from now on."""
        self._baseline[protocol] = baseline

    def _lost(self, protocol: PulsarProtocol, **kw: Any) -> None:
        received, sent = self._counts(protocol)
        self._baseline.pop(protocol, None)
        self.bytes_in += received
        self.bytes_out += sent

    def _counts(self, protocol: PulsarProtocol) -> tuple[int, int]:
        received, sent = tcp_bytes(protocol.sock)
        base_in, base_out = self._baseline.get(protocol, (0, 0))
        return max(0, received - base_in), max(0, sent - base_out)

    def _post_request(self, consumer: Any, **kw: Any) -> None:
        # On every HTTP request: a type check, a clock read and a C bisect (the bucket
        # observe_duration() finds, without its Python loop).
        if isinstance(consumer, HttpConsumer):
            seconds = _clock() - consumer.started_at
            self.durations[bisect_left(DURATION_BUCKETS, seconds)] += 1
            self.duration_sum += seconds

    def stats(self, servers: Iterable[TcpServer]) -> dict[str, Any]:
        """The heartbeat's traffic fields: closed connections plus the live ones now."""
        bytes_in, bytes_out = self.bytes_in, self.bytes_out
        for server in servers:
            for protocol in server.connections:
                received, sent = self._counts(protocol)
                bytes_in += received
                bytes_out += sent
        times = os.times()
        return {
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "cpu": times.user + times.system,
            DURATION_COUNTS: list(self.durations),
            DURATION_SUM: self.duration_sum,
        }
