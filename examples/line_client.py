"""A line-protocol client: many concurrent requests through a Pool of connections.

Run it from the repository root:

    $ python examples/line_client.py --requests 20 --pool-size 4

It serves pulsar_arbiter's built-in Echo consumer in this process, on 127.0.0.1 at an
ephemeral port, unless ``--address HOST:PORT`` names an echo server already running (such
as ``python -m pulsar_arbiter``). Then it sends ``--requests`` lines at once through a
Pool of ``--pool-size`` connections: users beyond the pool size wait for a connection to
be given back, in the order they asked. Each answer is printed, then a summary line.

What it shows:

* a client consumer: ``start_request()`` writes the request, ``data_received()`` reads
  the answer and calls ``finished()``; ``await consumer.on_finished`` waits for it;
* an ``AbstractClient`` whose ``connect()`` is the Pool's creator;
* ``async with await pool.connect() as conn:`` gives the connection back on exit, and
  throws it away instead if the request failed or ran out of time.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time
from typing import Any

from pulsar_arbiter import (
    AbstractClient,
    Connection,
    Pool,
    ProtocolConsumer,
    TcpServer,
)
from pulsar_arbiter.echo import Echo

# Seconds one request may take, waiting for a connection included: a dead server makes
# the example fail quickly instead of hanging.
REQUEST_TIMEOUT = 10.0


class LineRequest(ProtocolConsumer):
    """One request: write a line, read the answer up to and including its newline."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.received = bytearray()
        self.response = b""

    def start_request(self) -> None:
        self.write(self.request)

    def data_received(self, data: bytes) -> bytes | None:
        self.received += data
        end = self.received.find(b"\n")
        if end < 0:
            return None  # the answer is split across packets: wait for the rest
        self.response = bytes(self.received[: end + 1])
        self.finished()
        return bytes(self.received[end + 1 :]) or None


class LineClient(AbstractClient):
    """Opens connections to one server, each serving LineRequest consumers."""

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(protocol_factory=functools.partial(Connection, LineRequest))
        self.address = address

    async def connect(self) -> Connection:
        connection = await self.create_connection(self.address)
        assert isinstance(connection, Connection)
        return connection


async def request(pool: Pool[Connection], line: bytes) -> bytes:
    """Send one line on a pooled connection and return the answer."""
    async with await pool.connect() as conn:
        consumer = conn.current_consumer()
        consumer.start(line)
        done = await consumer.on_finished
        response: bytes = done.response
        return response


async def main(args: argparse.Namespace) -> int:
    server = None
    address = args.address
    if address is None:
        server = TcpServer(functools.partial(Connection, Echo), address=("127.0.0.1", 0))
        await server.start_serving()
        address = server.address
    lines = [f"hello {n}\n".encode() for n in range(args.requests)]
    start = time.perf_counter()
    try:
        async with LineClient(address) as client, Pool(client.connect, args.pool_size) as pool:
            # return_exceptions: every request is accounted for, even when some fail.
            answers = await asyncio.gather(
                *(asyncio.wait_for(request(pool, line), REQUEST_TIMEOUT) for line in lines),
                return_exceptions=True,
            )
    finally:
        if server is not None:
            await server.close(1)
    elapsed = time.perf_counter() - start
    failed = 0
    for line, answer in zip(lines, answers, strict=True):
        if isinstance(answer, BaseException):
            failed += 1
            print(f"{line.decode().strip()!r} failed: {type(answer).__name__}: {answer}")
        elif answer != line:
            failed += 1
            print(f"{line.decode().strip()!r} got a wrong answer: {answer!r}")
        else:
            print(f"{line.decode().strip()!r} -> {answer.decode().strip()!r}")
    if failed:
        print(f"{failed} of {len(lines)} requests failed")
        return 1
    print(
        f"{len(lines)} requests answered over {client.sessions} connections "
        f"(pool_size={args.pool_size}) in {elapsed:.3f}s"
    )
    return 0


def host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument(
        "--address", type=host_port, help="a running echo server (default: serve one here)"
    )
    parser.add_argument("--requests", type=int, default=20, help="lines to send (default 20)")
    parser.add_argument("--pool-size", type=int, default=4, help="connections (default 4)")
    args = parser.parse_args()
    if args.requests < 1 or args.pool_size < 1:
        parser.error("--requests and --pool-size must be at least 1")
    return args


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parse_args())))
