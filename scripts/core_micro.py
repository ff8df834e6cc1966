"""Our own per-message cost, in process: the compiled core against the pure modules.

    python scripts/core_micro.py echo          # Connection + the built-in Echo consumer
    python scripts/core_micro.py plain-echo    # ... with an Echo written in plain Python
    python scripts/core_micro.py http          # HttpConnection + raw handler + Response
    PULSAR_ARBITER_PURE=1 python scripts/core_micro.py echo   # the same on the pure path

64 protocols on a fake transport, N calls of ``data_received``, best of 5 repetitions of
process CPU time: no kernel, no event loop I/O, so the figure is the work of our code alone
and moves little with the machine's load (socket benchmarks include uvloop's and the
kernel's share, which is the same for every server). docs/design/compiled-core.md.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import time
from typing import Any

import pulsar_arbiter.protocols
from pulsar_arbiter import Connection, ProtocolConsumer, TcpServer, _core
from pulsar_arbiter.echo import Echo
from pulsar_arbiter.http.factory import HttpProtocolFactory
from pulsar_arbiter.http.request import HttpRequest, Response

HELLO = Response(b"Hello, World!", content_type="text/plain")
GET = b"GET /plaintext HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"


class PlainEcho(ProtocolConsumer):
    def data_received(self, data: bytes) -> None:
        self.write(data)
        self.finished()


def hello(request: HttpRequest) -> Response:
    return HELLO


class FakeTransport:
    writes = 0

    def write(self, data: bytes) -> None:
        FakeTransport.writes += 1

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name in ("peername", "sockname") else default

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def is_reading(self) -> bool:
        return True

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


async def measure(path: str) -> float:
    loop = asyncio.get_running_loop()
    if path == "http":
        factory: Any = HttpProtocolFactory(hello, kind="raw")
        data, n = GET, 100_000
    else:
        factory = functools.partial(Connection, Echo if path == "echo" else PlainEcho)
        data, n = b"x" * 100, 300_000
    server = TcpServer(factory, loop, address=("127.0.0.1", 0), keep_alive=15)
    protocols: list[Any] = []
    for _ in range(64):
        protocol = server.create_protocol()
        protocol.connection_made(FakeTransport())
        protocols.append(protocol)
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for i in range(n):
            protocols[i & 63].data_received(data)
        best = min(best, time.process_time() - start)
    assert FakeTransport.writes >= 5 * n, FakeTransport.writes
    for protocol in protocols:
        protocol.connection_lost(None)
    return best * 1e6 / n


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else "echo"
    if path not in ("echo", "plain-echo", "http"):
        print("usage: core_micro.py [echo|plain-echo|http]", file=sys.stderr)
        return 2
    us = asyncio.run(measure(path))
    core = "compiled" if _core.is_compiled(pulsar_arbiter.protocols) else "pure"
    print(f"{path} {core}: {us:.3f} us per message (best of 5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
