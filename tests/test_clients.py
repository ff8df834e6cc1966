"""AbstractClient, AbstractUdpClient, Pool and PoolConnection over real loopback sockets.

Every protocol test runs on asyncio and on uvloop (the ``run`` fixture). The example and
the load script are run as subprocesses, exactly as their docstrings say, with deadlines.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pulsar_arbiter import (
    AbstractClient,
    AbstractUdpClient,
    Connection,
    DatagramProtocol,
    DatagramServer,
    Pool,
    PoolConnection,
    ProtocolConsumer,
    TcpServer,
)
from pulsar_arbiter.clients import PoolClosedError
from pulsar_arbiter.echo import Echo
from pulsar_arbiter.servers import datagram_protocol_factory
from tests.conftest import Runner
from tests.consumers import Line, SlowLine, line_server, port_of, wait_for

ROOT = Path(__file__).resolve().parent.parent


class LineRequest(ProtocolConsumer):
    """Client side of the Line protocol: writes one line, reads the one-line answer."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.buffer = b""
        self.response: bytes | None = None

    def start_request(self) -> None:
        self.write(self.request)

    def data_received(self, data: bytes) -> bytes | None:
        data = self.buffer + data
        end = data.find(b"\n")
        if end < 0:
            self.buffer = data
            return None
        self.response = data[: end + 1]
        self.finished()
        return data[end + 1 :]


class LineClient(AbstractClient):
    def __init__(self, address: Any, **kw: Any) -> None:
        super().__init__(protocol_factory=functools.partial(Connection, LineRequest), **kw)
        self.address = address

    async def connect(self) -> Connection:
        connection = await self.create_connection(self.address)
        assert isinstance(connection, Connection)
        return connection


async def ask(connection: Any, line: bytes) -> bytes:
    """One request/response on ``connection`` (a Connection or a PoolConnection)."""
    consumer = connection.current_consumer()
    consumer.start(line)
    done = await consumer.on_finished
    assert done is consumer
    return done.response  # type: ignore[no-any-return]


def refusing_port() -> socket.socket:
    """A bound TCP socket that does not listen: connecting to it is refused at once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


# --------------------------------------------------------------------- AbstractClient
def test_abstract_classes_need_their_methods() -> None:
    with pytest.raises(TypeError, match="connect"):
        AbstractClient()  # type: ignore[abstract]
    with pytest.raises(TypeError, match="create_endpoint"):
        AbstractUdpClient()  # type: ignore[abstract]


def test_request_and_response_with_a_client_consumer(run: Runner) -> None:
    async def main() -> None:
        server = await line_server()
        client = LineClient(("127.0.0.1", port_of(server)))
        posts: list[Any] = []
        client.bind_event("post_request", lambda c, exc=None: posts.append(c))
        connection = await client.connect()
        assert connection.has_fired("connection_made")
        assert connection.producer is client
        assert client.connections == {connection}

        consumer = connection.current_consumer()
        pre: list[Any] = []
        consumer.bind_event("pre_request", lambda c, **kw: pre.append(c.request))
        consumer.start(b"hello\n")
        assert consumer.request == b"hello\n"
        assert pre == [b"hello\n"]
        assert await consumer.on_finished is consumer
        assert consumer.response == b"HELLO\n"
        # The finished consumer is detached: the next request gets a fresh one.
        assert await ask(connection, b"again\n") == b"AGAIN\n"
        assert connection.current_consumer() is not consumer
        assert client.sessions == 1
        assert client.requests_processed == 2
        assert len(posts) == 2
        await client.close()
        await server.close(1)

    run(main())


def test_unix_socket_connection(run: Runner, tmp_path: Path) -> None:
    async def main() -> None:
        path = str(tmp_path / "line.sock")
        server = TcpServer(functools.partial(Connection, Line), address=path)
        await server.start_serving()
        async with LineClient(path) as client:
            connection = await client.connect()
            assert await ask(connection, b"unix\n") == b"UNIX\n"
        assert connection.closed
        await server.close(1)

    run(main())


def test_connection_errors_keep_their_type_and_name_the_address(
    run: Runner, tmp_path: Path
) -> None:
    async def main() -> None:
        sock = refusing_port()
        port = sock.getsockname()[1]
        try:
            client = LineClient(("127.0.0.1", port))
            with pytest.raises(ConnectionRefusedError, match=f"127.0.0.1:{port}") as info:
                await client.connect()
            assert isinstance(info.value.__cause__, ConnectionRefusedError)
            assert info.value.errno == info.value.__cause__.errno
        finally:
            sock.close()
        missing = str(tmp_path / "missing.sock")
        with pytest.raises(FileNotFoundError, match=r"missing\.sock"):
            await LineClient(missing).connect()
        assert not client.connections

    run(main())


def test_start_without_connection_or_transport_raises(run: Runner) -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError, match="no connection"):
            LineRequest().start(b"x\n")
        client = LineClient(("127.0.0.1", 1))
        protocol = client.create_protocol()  # never connected: no transport
        assert isinstance(protocol, Connection)
        with pytest.raises(RuntimeError, match="no connection"):
            protocol.current_consumer().start(b"x\n")

    run(main())


def test_connection_lost_mid_response_fails_the_request(run: Runner) -> None:
    async def main() -> None:
        server = await line_server(SlowLine)
        client = LineClient(("127.0.0.1", port_of(server)))
        connection = await client.connect()
        consumer = connection.current_consumer()
        consumer.start(b"never\n")  # SlowLine never answers this one
        await wait_for(lambda: server.connections)
        next(iter(server.connections)).abort()
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(consumer.on_finished, 2)
        await wait_for(lambda: not client.connections)
        assert connection.closed
        assert client.requests_processed == 0
        await client.close()
        await server.close(1)

    run(main())


def test_close_and_abort_close_every_connection(run: Runner) -> None:
    async def main() -> None:
        server = await line_server()
        address = ("127.0.0.1", port_of(server))
        async with LineClient(address) as client:
            connections = [await client.connect() for _ in range(3)]
            await wait_for(lambda: len(server.connections) == 3)
        assert client.closed
        assert all(c.closed for c in connections)
        assert not client.connections
        await wait_for(lambda: not server.connections)
        with pytest.raises(RuntimeError, match="closed"):
            await client.connect()
        await client.close()  # idempotent

        other = LineClient(address)
        connections = [await other.connect() for _ in range(2)]
        await other.abort()
        assert all(c.closed for c in connections)
        assert not other.connections
        await server.close(1)

    run(main())


def test_close_aborts_what_cannot_flush_in_time(run: Runner) -> None:
    async def main() -> None:
        # A peer that never reads: the kernel accepts the connection, nobody reads it.
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        try:
            client = LineClient(listener.getsockname())
            connection = await client.connect()
            connection.write(b"x" * (16 << 20))  # far more than the socket buffers hold
            assert connection.transport.get_write_buffer_size() > 0  # type: ignore[union-attr]
            loop = asyncio.get_running_loop()
            start = loop.time()
            await client.close(timeout=0.1)
            assert loop.time() - start < 1.5
            assert connection.closed and not client.connections
        finally:
            listener.close()

    run(main())


# ------------------------------------------------------------------ AbstractUdpClient
class Pinger(DatagramProtocol):
    """A client endpoint: replies go to a queue instead of a consumer."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.replies: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.replies.put_nowait((data, addr))


class UdpClient(AbstractUdpClient):
    def __init__(self, address: Any) -> None:
        super().__init__(protocol_factory=Pinger)
        self.address = address

    async def create_endpoint(self) -> Pinger:
        endpoint = await self.create_datagram_endpoint(remote_addr=self.address)
        assert isinstance(endpoint, Pinger)
        return endpoint


def test_udp_client_round_trip(run: Runner) -> None:
    async def main() -> None:
        server = DatagramServer(datagram_protocol_factory(Echo), address=("127.0.0.1", 0))
        await server.create_endpoint()
        async with UdpClient(server.address) as client:
            endpoint = await client.create_endpoint()
            assert endpoint.has_fired("connection_made")
            assert client.connections == {endpoint}
            for payload in (b"ping", b"pong"):
                endpoint.write(payload)
                data, addr = await asyncio.wait_for(endpoint.replies.get(), 2)
                assert (data, addr) == (payload, server.address)
        assert endpoint.closed
        assert not client.connections
        assert server.requests_processed == 2
        await server.close()

    run(main())


def test_udp_endpoint_error_names_the_address(run: Runner) -> None:
    async def main() -> None:
        # An IPv6 peer for an IPv4 endpoint: fails in address resolution, with no DNS
        # query and nothing bound (uvloop leaks the transport when bind() fails).
        client = UdpClient(("::1", 9))
        with pytest.raises(socket.gaierror, match=r"\[::1\]:9") as info:
            await client.create_datagram_endpoint(remote_addr=client.address, family=socket.AF_INET)
        assert isinstance(info.value.__cause__, socket.gaierror)
        assert not client.connections

    run(main())


# ------------------------------------------------------------------------------ Pool
async def line_pool(server: TcpServer, **kw: Any) -> tuple[LineClient, Pool[Connection]]:
    client = LineClient(("127.0.0.1", port_of(server)))
    return client, Pool(client.connect, **kw)


def test_pool_reuses_connections_up_to_its_size(run: Runner) -> None:
    async def main() -> None:
        server = await line_server()
        client, pool = await line_pool(server, pool_size=2)
        assert (pool.pool_size, pool.available, pool.in_use) == (2, 0, 0)
        for n in range(3):  # one user at a time: one connection, reused
            async with await pool.connect() as conn:
                assert isinstance(conn, PoolConnection)
                assert pool.in_use == 1
                assert await ask(conn, b"x%d\n" % n) == b"X%d\n" % n
        assert (client.sessions, pool.available, pool.in_use) == (1, 1, 0)

        first, second = await pool.connect(), await pool.connect()
        assert first.connection is not second.connection
        assert (client.sessions, pool.available, pool.in_use) == (2, 0, 2)
        third = asyncio.ensure_future(pool.connect())
        await wait_for(lambda: pool.waiting == 1)
        assert client.sessions == 2  # the third user waits: no connection beyond pool_size
        second_connection = second.connection
        second.close()
        assert (await third).connection is second_connection
        first.close()
        (await third).close()
        assert (pool.available, pool.in_use, pool.waiting) == (2, 0, 0)
        await pool.close()
        await server.close(1)

    run(main())


def test_waiters_are_served_in_fifo_order(run: Runner) -> None:
    async def main() -> None:
        server = await line_server()
        _, pool = await line_pool(server, pool_size=1)
        held = await pool.connect()
        order: list[int] = []

        async def user(n: int) -> None:
            async with await pool.connect() as conn:
                order.append(n)
                assert await ask(conn, b"u%d\n" % n) == b"U%d\n" % n

        users = []
        for n in range(5):
            users.append(asyncio.ensure_future(user(n)))
            await wait_for(lambda n=n: pool.waiting == n + 1)
        held.close()
        # A newcomer after the release queues behind the waiters; it never jumps ahead.
        users.append(asyncio.ensure_future(user(5)))
        await asyncio.wait_for(asyncio.gather(*users), 5)
        assert order == [0, 1, 2, 3, 4, 5]
        assert server.sessions == 1
        await pool.close()
        await server.close(1)

    run(main())


def test_waiting_is_bounded_by_the_timeout(run: Runner) -> None:
    async def main() -> None:
        server = await line_server()
        _, pool = await line_pool(server, pool_size=1, timeout=0.1)
        held = await pool.connect()
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(asyncio.TimeoutError) as info:
            await pool.connect()
        assert loop.time() - start >= 0.09
        assert "pool_size=1" in str(info.value) and "timeout=0.1" in str(info.value)
        assert (pool.waiting, pool.in_use) == (0, 1)
        connection = held.connection
        held.close()
        again = await pool.connect()
        assert again.connection is connection
        again.close()
        await pool.close()
        await server.close(1)

    run(main())


def test_connection_closed_while_idle_is_never_handed_out(run: Runner) -> None:
    async def main() -> None:
        server = await line_server()
        client, pool = await line_pool(server, pool_size=2)
        first, second = await pool.connect(), await pool.connect()
        dead, alive = first.connection, second.connection
        first.close()
        second.close()
        assert pool.available == 2
        # The server closes one of them (its keep-alive, a restart...).
        sockname = dead.transport.get_extra_info("sockname")  # type: ignore[union-attr]
        peer = next(c for c in server.connections if c.address == sockname)
        peer.close()
        await wait_for(lambda: dead.closed)
        assert pool.available == 1
        for _ in range(2):  # the dead one is skipped every time, the live one reused
            async with await pool.connect() as conn:
                assert conn.connection is alive
        # Every idle connection dead: a new one is created in their place.
        for c in list(server.connections):
            c.close()
        await wait_for(lambda: alive.closed)
        async with await pool.connect() as conn:
            assert conn.connection not in (dead, alive)
            assert await ask(conn, b"new\n") == b"NEW\n"
        assert client.sessions == 3
        await pool.close()
        await server.close(1)

    run(main())


def test_a_failing_creator_frees_its_slot(run: Runner) -> None:
    async def main() -> None:
        server = await line_server()
        client = LineClient(("127.0.0.1", port_of(server)))
        gate: asyncio.Future[None] | None = None
        failures = [ConnectionRefusedError("refused (test)")]

        async def creator() -> Connection:
            if gate is not None:
                await gate
            if failures:
                raise failures.pop()
            return await client.connect()

        pool = Pool(creator, pool_size=1)
        with pytest.raises(ConnectionRefusedError):
            await pool.connect()
        assert (pool.in_use, pool.available) == (0, 0)
        async with await pool.connect() as conn:
            assert await ask(conn, b"ok\n") == b"OK\n"

        # A creation failing while another user waits: the waiter gets the slot.
        await pool.close()
        pool = Pool(creator, pool_size=1)
        gate = asyncio.get_running_loop().create_future()
        failures.append(ConnectionRefusedError("refused (test)"))
        creating = asyncio.ensure_future(pool.connect())
        waiting = asyncio.ensure_future(pool.connect())
        await wait_for(lambda: pool.waiting == 1)
        gate.set_result(None)
        with pytest.raises(ConnectionRefusedError):
            await creating
        async with await asyncio.wait_for(waiting, 2) as conn:
            assert await ask(conn, b"waited\n") == b"WAITED\n"
        assert (pool.in_use, pool.available) == (0, 1)
        await pool.close()
        await server.close(1)

    run(main())


def test_close_wakes_waiters_and_closes_every_connection(run: Runner) -> None:
    async def main() -> None:
        server = await line_server()
        _, pool = await line_pool(server, pool_size=2)
        busy = await pool.connect()
        idle = await pool.connect()
        idle_connection = idle.connection
        idle.close()
        extra = await pool.connect()  # takes the idle one back: the pool is full
        assert extra.connection is idle_connection
        extra.close()
        busy_two = await pool.connect()
        waiters = [asyncio.ensure_future(pool.connect()) for _ in range(3)]
        await wait_for(lambda: pool.waiting == 3)
        await pool.close()
        for waiter in waiters:
            with pytest.raises(PoolClosedError, match="closed"):
                await waiter
        assert pool.closed
        assert busy.connection.closed and busy_two.connection.closed
        await wait_for(lambda: not server.connections)
        busy.close()  # releasing after close is a no-op
        busy_two.close()
        assert (pool.available, pool.in_use, pool.waiting) == (0, 0, 0)
        with pytest.raises(PoolClosedError):
            await pool.connect()
        await pool.close()  # idempotent
        await server.close(1)

    run(main())


def test_thousand_concurrent_users_over_ten_connections(run: Runner) -> None:
    async def main() -> None:
        server = await line_server()
        client, pool = await line_pool(server, pool_size=10)
        peak = 0

        async def user(n: int) -> bytes:
            nonlocal peak
            async with await pool.connect() as conn:
                peak = max(peak, pool.in_use)
                return await ask(conn, b"request %d\n" % n)

        answers = await asyncio.gather(*(user(n) for n in range(1000)))
        assert answers == [b"REQUEST %d\n" % n for n in range(1000)]
        assert peak == 10
        assert client.sessions == 10
        assert server.requests_processed == 1000
        assert (pool.available, pool.in_use, pool.waiting) == (10, 0, 0)
        await pool.close()
        await server.close(1)

    run(main())


def test_pool_connection_proxies_releases_and_detaches(run: Runner) -> None:
    async def main() -> None:
        server = await line_server()
        _, pool = await line_pool(server, pool_size=1)
        conn = await pool.connect()
        raw = conn.connection
        assert conn.pool is pool
        assert conn.transport is raw.transport  # proxied
        assert await ask(conn, b"proxy\n") == b"PROXY\n"
        conn.close()
        conn.close()  # idempotent
        assert conn.released and (pool.available, pool.in_use) == (1, 0)
        with pytest.raises(RuntimeError, match="given back"):
            conn.current_consumer()
        with pytest.raises(RuntimeError, match="given back"):
            conn.detach()

        conn = await pool.connect()
        assert conn.connection is raw
        assert conn.detach() is raw
        assert conn.detached and (pool.available, pool.in_use) == (0, 0)
        conn.close()  # no-op: the connection is the caller's now
        assert not raw.closed
        assert await ask(conn, b"mine\n") == b"MINE\n"
        other = await pool.connect()  # the detached one's slot was freed
        assert other.connection is not raw
        other.close()
        raw.close()
        await pool.close()
        await server.close(1)

    run(main())


def test_pool_connection_current_consumer_is_the_connections_own(run: Runner) -> None:
    """current_consumer is found on PoolConnection itself (the per-request hot path) and
    behaves as the proxied attribute: absent for a connection without one."""

    class Plain:
        closed = False

    async def plain() -> Plain:
        return Plain()

    async def main() -> None:
        server = await line_server()
        _, pool = await line_pool(server, pool_size=1)
        async with await pool.connect() as conn:
            consumer = conn.current_consumer()
            assert consumer is conn.connection.current_consumer()
        other: Pool[Plain] = Pool(plain, pool_size=1)
        async with await other.connect() as held:
            assert not hasattr(held, "current_consumer")
            with pytest.raises(AttributeError):
                held.current_consumer  # noqa: B018
        await other.close()
        await pool.close()
        await server.close(1)

    run(main())


def test_async_with_discards_a_connection_after_a_connection_error(run: Runner) -> None:
    async def main() -> None:
        server = await line_server()
        _, pool = await line_pool(server, pool_size=1)
        with pytest.raises(ValueError):
            async with await pool.connect() as conn:
                raw = conn.connection
                raise ValueError("the user's own error: the connection is fine")
        assert (pool.available, pool.in_use) == (1, 0)

        with pytest.raises(ConnectionResetError):
            async with await pool.connect() as conn:
                assert conn.connection is raw
                raise ConnectionResetError("peer went away")
        assert conn.detached
        await wait_for(lambda: raw.closed)
        assert (pool.available, pool.in_use) == (0, 0)
        async with await pool.connect() as conn:
            assert conn.connection is not raw
        await pool.close()
        await server.close(1)

    run(main())


def test_connection_given_back_mid_request_is_not_reused(run: Runner) -> None:
    async def main() -> None:
        SlowLine.delay = 0.05
        server = await line_server(SlowLine)
        _, pool = await line_pool(server, pool_size=1)
        # A request abandoned on a deadline: its answer must not reach the next user.
        with pytest.raises(asyncio.TimeoutError):
            async with await pool.connect() as conn:
                first = conn.connection
                await asyncio.wait_for(ask(conn, b"never\n"), 0.05)
        await wait_for(lambda: first.closed)
        # Given back by hand while waiting for an answer: aborted, not reused.
        conn = await pool.connect()
        second = conn.connection
        assert second is not first
        conn.current_consumer().start(b"late\n")
        conn.close()
        await wait_for(lambda: second.closed)
        assert (pool.available, pool.in_use) == (0, 0)
        async with await pool.connect() as conn:
            assert conn.connection not in (first, second)
            assert await ask(conn, b"fresh\n") == b"FRESH\n"
        await pool.close()
        # The server keeps the half-closed "never" connection until its grace ends.
        await server.close(0.1)

    run(main())


def test_cancelled_waiter_gives_back_what_it_was_handed(run: Runner) -> None:
    async def main() -> None:
        server = await line_server()
        _, pool = await line_pool(server, pool_size=1)
        held = await pool.connect()
        waiter = asyncio.ensure_future(pool.connect())
        await wait_for(lambda: pool.waiting == 1)
        held.close()  # handed to the waiter...
        waiter.cancel()  # ...which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert (pool.available, pool.in_use, pool.waiting) == (1, 0, 0)
        await pool.close()
        await server.close(1)

    run(main())


def test_pool_connection_lost_by_the_user_is_given_back(run: Runner) -> None:
    async def main() -> None:
        server = await line_server()
        _, pool = await line_pool(server, pool_size=1)
        conn = await pool.connect()
        with pytest.warns(ResourceWarning, match="without being released"):
            del conn
            gc.collect()
        await wait_for(lambda: pool.available == 1)
        async with await pool.connect() as again:
            assert await ask(again, b"back\n") == b"BACK\n"
        await pool.close()
        await server.close(1)

    run(main())


def test_pool_arguments_are_validated() -> None:
    async def creator() -> None:
        return None

    with pytest.raises(ValueError, match="pool_size"):
        Pool(creator, pool_size=0)
    with pytest.raises(ValueError, match="timeout"):
        Pool(creator, timeout=-1)


# --------------------------------------------------------------- example and load tool
def docstring_command(path: Path, marker: str) -> list[str]:
    """The command line that follows ``marker`` in a script's docstring."""
    text = path.read_text()
    line = next(line for line in text.splitlines() if line.strip().startswith(marker))
    argv = line.strip()[len(marker) :].split()
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


def test_line_client_example_runs_as_documented() -> None:
    argv = docstring_command(ROOT / "examples" / "line_client.py", "$ ")
    proc = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "HELLO 0" in proc.stdout or "hello 0" in proc.stdout
    assert lines[-1].startswith("20 requests answered over"), proc.stdout


def test_load_script_compares_pool_and_bare_clients() -> None:
    argv = [
        sys.executable,
        "scripts/load.py",
        "--compare",
        "--runs",
        "1",
        "--connections",
        "4",
        "--duration",
        "0.3",
        "--warmup",
        "0.1",
        "--json",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        argv,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["bare"]["median_rps"] > 0
    assert report["pool"]["median_rps"] > 0
    assert report["ratio"] == pytest.approx(
        report["pool"]["median_rps"] / report["bare"]["median_rps"]
    )
    assert report["bare"]["errors"] == report["pool"]["errors"] == 0
