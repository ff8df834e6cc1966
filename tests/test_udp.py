"""DatagramServer and DatagramProtocol over real loopback sockets, on both loops."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from pulsar_arbiter import DatagramServer, ProtocolConsumer
from pulsar_arbiter.echo import Echo
from pulsar_arbiter.servers import datagram_protocol_factory
from tests.conftest import Runner


class Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait((data, addr))


async def udp_server(consumer: type[ProtocolConsumer] = Echo, **kw: Any) -> DatagramServer:
    server = DatagramServer(datagram_protocol_factory(consumer), address=("127.0.0.1", 0), **kw)
    await server.create_endpoint()
    return server


def test_udp_echo_answers_each_sender(run: Runner) -> None:
    async def main() -> None:
        server = await udp_server()
        posts: list[Any] = []
        server.bind_event("post_request", lambda c, exc=None: posts.append(c.address))
        loop = asyncio.get_running_loop()
        clients = []
        for _ in range(3):
            transport, protocol = await loop.create_datagram_endpoint(
                Collector, remote_addr=server.address
            )
            clients.append((transport, protocol))
        for index, (transport, _) in enumerate(clients):
            for n in range(5):
                transport.sendto(f"{index}:{n}".encode())
        for index, (_, protocol) in enumerate(clients):
            got = sorted([(await asyncio.wait_for(protocol.queue.get(), 2))[0] for _ in range(5)])
            assert got == sorted(f"{index}:{n}".encode() for n in range(5))
        assert server.requests_processed == 15
        assert len(posts) == 15
        assert len(server.endpoints) == 1
        for transport, _ in clients:
            transport.close()
        await server.close()
        assert server.has_fired("stop")

    run(main())


def test_udp_over_given_socket(run: Runner) -> None:
    async def main() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        server = DatagramServer(datagram_protocol_factory(Echo), sockets=[sock])
        await server.create_endpoint()
        assert server.address == sock.getsockname()
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            Collector, remote_addr=server.address
        )
        transport.sendto(b"ping")
        assert (await asyncio.wait_for(protocol.queue.get(), 2))[0] == b"ping"
        transport.close()
        await server.close()

    run(main())


class Faulty(ProtocolConsumer):
    def data_received(self, data: bytes) -> None:
        if data == b"boom":
            raise RuntimeError("bad datagram")
        self.write(data)
        self.finished()


def test_udp_consumer_error_does_not_stop_the_endpoint(run: Runner) -> None:
    async def main() -> None:
        server = await udp_server(Faulty)
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            Collector, remote_addr=server.address
        )
        transport.sendto(b"boom")
        transport.sendto(b"fine")
        assert (await asyncio.wait_for(protocol.queue.get(), 2))[0] == b"fine"
        transport.close()
        await server.close()

    run(main())
