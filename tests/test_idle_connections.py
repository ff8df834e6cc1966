"""5,000 idle connections and a few slowloris clients hold sockets open on an HTTP server
while normal clients are served: every normal request must be answered.

The arbiter starts with the usual soft limit on open files (1024), far below the 2,500
connections each of its two workers holds here: it raises its soft limit to the hard one
at start, and its workers inherit that.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.runtime import HOST, Arbiter, wait_until

IDLE = 5000
SLOWLORIS = 5
CLIENTS = 4
SERVE_FOR = 4.0  # seconds of normal traffic while everything is held open
DEFAULT_SOFT = 1024
# The test process holds the idle connections, the slowloris and the normal clients.
NEEDED = IDLE + 1000

REQUEST = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"


def get(sock: socket.socket) -> bytes:
    """One request on ``sock``; the body of the answer (Content-Length framed)."""
    sock.sendall(REQUEST)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} bytes of head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed in the body")
        body += chunk
    return body


@pytest.fixture
def nofile() -> Iterator[tuple[int, int]]:
    """Enough open files for the test process; the limits are restored afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < NEEDED:
        pytest.skip(f"hard RLIMIT_NOFILE {hard} < {NEEDED}")
    if hard == resource.RLIM_INFINITY or hard <= DEFAULT_SOFT:
        pytest.skip("needs a finite hard limit above 1024 to see the arbiter raise its own")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, NEEDED), hard))
    try:
        yield soft, hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class Slowloris(threading.Thread):
    """Sends a request head one byte every half second, never finishing it."""

    def __init__(self, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = stop
        self.sent = 0
        self.closed_by_server = False

    def run(self) -> None:
        head = b"GET / HTTP/1.1\r\nHost: test\r\n" + b"X-Slow: " + b"a" * 10_000
        with socket.create_connection((HOST, self.port), timeout=5) as sock:
            for byte in head:
                if self.stop.wait(0.5):
                    return
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    self.closed_by_server = True
                    return
                self.sent += 1


def normal_client(
    port: int, stop: threading.Event, counts: Counter[str], lock: threading.Lock
) -> None:
    """Alternates keep-alive requests (10 per connection) and fresh connections."""
    while not stop.is_set():
        try:
            with socket.create_connection((HOST, port), timeout=5) as sock:
                for _ in range(10):
                    body = get(sock)
                    with lock:
                        counts["sent"] += 1
                        counts["ok" if body == b"Hello, World!" else "bad body"] += 1
        except (OSError, AssertionError, StopIteration) as exc:
            with lock:
                counts["sent"] += 1
                counts[f"failed: {type(exc).__name__}: {exc}"] += 1


def held_connections(pids: set[int], port: int) -> int:
    count = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            count += sum(
                1
                for c in psutil.Process(pid).net_connections(kind="tcp")
                if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
            )
    return count


def test_idle_and_slowloris_while_serving(tmp_path: Path, nofile: tuple[int, int]) -> None:
    _, hard = nofile
    arbiter = Arbiter(tmp_path, "testapps.hello:raw", "--http", "--keep-alive", "60", workers=2)
    # The arbiter starts with the common default soft limit: it must raise its own.
    resource.setrlimit(resource.RLIMIT_NOFILE, (DEFAULT_SOFT, hard))
    try:
        arbiter.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NEEDED, hard))
    idle: list[socket.socket] = []
    stop = threading.Event()
    slow = []
    try:
        arbiter.wait_serving()
        workers = arbiter.worker_pids()
        port = arbiter.port
        assert f"raised the open files limit (RLIMIT_NOFILE) from {DEFAULT_SOFT} to {hard}" in (
            arbiter.log()
        )
        for pid in {arbiter.pid, *workers}:
            assert psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE) == (hard, hard), pid

        started = time.monotonic()
        for _ in range(IDLE):
            idle.append(socket.create_connection((HOST, port), timeout=5))
        slow = [Slowloris(port, stop) for _ in range(SLOWLORIS)]
        for slowloris in slow:
            slowloris.start()
        # Every idle connection is accepted and held by a worker, not left in the backlog.
        wait_until(
            lambda: held_connections(workers, port) >= IDLE + SLOWLORIS,
            15,
            f"the workers to hold {IDLE + SLOWLORIS} connections",
            poll=0.2,
        )
        opened = time.monotonic() - started

        counts: Counter[str] = Counter()
        lock = threading.Lock()
        clients = [
            threading.Thread(target=normal_client, args=(port, stop, counts, lock), daemon=True)
            for _ in range(CLIENTS)
        ]
        for client in clients:
            client.start()
        time.sleep(SERVE_FOR)
        stop.set()
        for client in clients:
            client.join(10)
        assert not any(client.is_alive() for client in clients)

        print(
            f"idle={IDLE} opened in {opened:.1f}s, slowloris bytes="
            f"{[c.sent for c in slow]} closed_by_server={[c.closed_by_server for c in slow]}, "
            f"normal: {dict(counts)}"
        )
        assert counts["sent"] >= 100, counts
        assert counts["ok"] == counts["sent"], counts
        # The held connections are all still there, and the arbiter answers ctl.
        assert held_connections(workers, port) >= IDLE
        assert arbiter.worker_pids() == workers
        assert "Traceback" not in arbiter.log()
    finally:
        stop.set()
        for sock in idle:
            sock.close()
        for client in slow:
            client.join(2)
        arbiter.close()
