"""The pure parts of issue 12's operator modules, without a process: sd_notify datagrams,
the watchdog interval, inherited sockets from a re-exec, and /metrics rendering with the
counters of dead workers folded in (parsed back with Prometheus's own parser)."""

from __future__ import annotations

import os
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pulsar_arbiter.ops.binds import BindSpec
from pulsar_arbiter.ops.metrics import (
    DURATION_BUCKETS,
    Folded,
    Snapshot,
    WorkerSample,
    observe_duration,
    registry,
    render,
)
from pulsar_arbiter.ops.systemd import (
    INHERITED_FDS,
    Notifier,
    inherited_env,
    inherited_sockets,
    spec_of,
    watchdog_interval,
)

pytestmark = pytest.mark.timeout(10)


def test_notify_sends_one_datagram_to_an_abstract_socket() -> None:
    name = f"pulsar-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.enabled and notifier.notify("READY=1", "STATUS=2/2\nworkers")
        assert server.recv(100) == b"READY=1\nSTATUS=2/2 workers"
        notifier.close()
    assert not Notifier({}).notify("READY=1"), "no NOTIFY_SOCKET: a no-op"


def test_watchdog_interval_is_half_of_watchdog_usec_when_meant_for_us() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "1000000"}) == 0.5
    mine = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(mine) == 0.5
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({}) is None


def test_sockets_pass_to_a_reexec_by_fd_and_name() -> None:
    listening = socket.create_server(("127.0.0.1", 0))
    env = inherited_env([("metrics", listening)])
    assert env == {INHERITED_FDS: f"{listening.fileno()}=metrics"}
    (got,) = inherited_sockets(dict(env))
    try:
        assert got.name == "metrics" and got.source == "re-exec"
        assert spec_of(got.sock) == BindSpec("tcp", "127.0.0.1", listening.getsockname()[1])
    finally:
        got.sock.detach()  # the same descriptor as ``listening``
        listening.close()
    environ = {INHERITED_FDS: "x=metrics"}
    with pytest.raises(ValueError, match="FD=NAME"):
        inherited_sockets(environ)
    assert INHERITED_FDS not in environ, "the variable is consumed"


def sample(worker: int, requests: int, seconds: list[float]) -> WorkerSample:
    counts = [0] * (len(DURATION_BUCKETS) + 1)
    for value in seconds:
        observe_duration(counts, value)
    stats = {
        "requests": requests,
        "bytes_in": requests * 10,
        "duration_counts": counts,
        "duration_sum": sum(seconds),
        "connections": 1,
    }
    return WorkerSample(worker, 100 + worker, "ready", 1, stats, 0.5, 1 << 20)


def scrape(snapshot: Snapshot) -> dict[str, float]:
    text = render(registry(lambda: snapshot)).decode()
    return {
        s.name + str(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_dead_workers_counts_stay_in_the_totals() -> None:
    folded = Folded()
    live = [sample(1, 5, [0.002, 20.0]), sample(2, 3, [0.0005])]

    def snapshot(workers: list[WorkerSample]) -> Snapshot:
        return Snapshot(workers, folded, {"max_requests": 1}, 3, 2, 1, True, {"ready": 2})

    before = scrape(snapshot(live))
    assert before["pulsar_arbiter_requests_total[]"] == 8
    assert before["pulsar_arbiter_worker_requests_total[('worker', '1')]"] == 5
    assert before["pulsar_arbiter_request_duration_seconds_bucket[('le', '0.001')]"] == 1
    assert before["pulsar_arbiter_request_duration_seconds_bucket[('le', '10.0')]"] == 2
    assert before["pulsar_arbiter_request_duration_seconds_bucket[('le', '+Inf')]"] == 3
    assert before["pulsar_arbiter_recycles_total[]"] == 1
    folded.fold(live[0].stats)  # worker 1 recycled
    after = scrape(snapshot(live[1:]))
    for name, value in before.items():
        if name.endswith("_total[]") or ("_bucket[" in name and "worker" not in name):
            assert after[name] >= value, name
    assert "pulsar_arbiter_worker_requests_total[('worker', '1')]" not in after
    assert after["pulsar_arbiter_received_bytes_total[]"] == 80
    assert after["process_resident_memory_bytes[]"] > 0


def test_a_bad_heartbeat_counts_nothing() -> None:
    folded = Folded()
    folded.fold({"requests": -3, "bytes_in": "x", "duration_counts": [1, 2], "cpu": True})
    assert all(value == 0 for value in folded.counters.values())
    assert sum(folded.duration_counts) == 0
