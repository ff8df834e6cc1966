"""Code written for pulsar 1.x runs here by changing its imports.

Ports of the two examples a pulsar user starts from, the TCP echo and the UDP echo
client/server pairs (quantmind/pulsar ``examples/echo`` and ``examples/echoudp``), written
for this test in their style: a class-level ``protocol_factory`` on the client, a
``Pool(creator, pool_size, loop)``, ``with connection:`` on what the pool hands out, a
``__call__`` that returns a coroutine when the loop runs. What pulsar took from
``pulsar.apps.socket`` (its server application) is a ``TcpServer`` or ``DatagramServer``
here; ``pulsar.ProtocolError`` is a ``ValueError``.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from pulsar_arbiter import (  # was: from pulsar import ...
    AbstractClient,
    AbstractUdpClient,
    Connection,
    DatagramProtocol,
    DatagramServer,
    Pool,
    ProtocolConsumer,
    TcpServer,
)
from tests.conftest import Runner

# -- the TCP echo ------------------------------------------------------------------------


class EchoProtocol(ProtocolConsumer):
    """A consumer for both sides: a message ends with the separator."""

    separator = b"\r\n\r\n"
    buffer = b""

    def data_received(self, data: bytes) -> bytes | None:
        if self.buffer:
            data = self.buffer + data
        idx = data.find(self.separator)
        if idx >= 0:
            idx += len(self.separator)
            data, rest = data[:idx], data[idx:]
            self.buffer = self.response(data, rest)
            self.finished()
            return rest
        self.buffer = data
        return None

    def start_request(self) -> None:
        self.transport.write(self._request + self.separator)  # type: ignore[union-attr]

    def response(self, data: bytes, rest: bytes) -> bytes:
        if rest:
            raise ValueError("more than one message")
        return data[: -len(self.separator)]


class EchoServerProtocol(EchoProtocol):
    def response(self, data: bytes, rest: bytes) -> bytes:
        self.transport.write(data)  # type: ignore[union-attr]
        data = data[: -len(self.separator)]
        if data == b"QUIT":
            self.transport.close()  # type: ignore[union-attr]
        return data


class Echo(AbstractClient):
    protocol_factory = partial(Connection, EchoProtocol)

    def __init__(
        self,
        address: Any,
        full_response: bool = False,
        pool_size: int = 10,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(loop)
        self.address = address
        self.full_response = full_response
        self.pool = Pool(self.connect, pool_size, self._loop)

    def connect(self) -> Any:
        return self.create_connection(self.address)

    def __call__(self, message: bytes) -> Any:
        result = self._call(message)
        assert self._loop is not None
        if not self._loop.is_running():
            return self._loop.run_until_complete(result)
        return result

    async def _call(self, message: bytes) -> Any:
        connection = await self.pool.connect()
        with connection:
            consumer = connection.current_consumer()
            consumer.start(message)
            await consumer.on_finished
            return consumer if self.full_response else consumer.buffer


def test_pulsar_echo_example(run: Runner) -> None:
    async def main() -> None:
        server = TcpServer(partial(Connection, EchoServerProtocol), address=("127.0.0.1", 0))
        await server.start_serving()
        echo = Echo(server.address)
        try:
            assert await echo(b"Hello!") == b"Hello!"
            answers = await asyncio.gather(*(echo(b"msg %d" % i) for i in range(30)))
            assert answers == [b"msg %d" % i for i in range(30)]
            assert echo.pool.in_use == 0, "with connection: gave each one back"
            full = await Echo(server.address, full_response=True)(b"whole")
            assert isinstance(full, EchoProtocol) and full.buffer == b"whole"
        finally:
            await echo.pool.close()
            await echo.close()
            await server.close(1)

    run(main())


# -- the UDP echo ------------------------------------------------------------------------


class EchoUdpProtocol(DatagramProtocol):
    separator = b"\r\n\r\n"
    buffer: dict[Any, bytes] | None = None

    def popbuffer(self, addr: Any) -> bytes | None:
        if self.buffer:
            return self.buffer.pop(addr, None)
        return None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        while data:
            idx = data.find(self.separator)
            if idx >= 0:
                idx += len(self.separator)
                chunk, data = data[:idx], data[idx:]
                buffer = self.popbuffer(addr)
                self.response(buffer + chunk if buffer else chunk, addr)
            else:
                if self.buffer is None:
                    self.buffer = {}
                self.buffer[addr] = self.buffer.get(addr, b"") + data
                data = b""

    def response(self, data: bytes, addr: Any) -> None:
        raise NotImplementedError


class EchoUdpClientProtocol(EchoUdpProtocol):
    _waiting: asyncio.Future[bytes] | None = None

    def send(self, message: bytes) -> asyncio.Future[bytes]:
        assert self._waiting is None
        d: asyncio.Future[bytes] = asyncio.Future(loop=self._loop)
        self._waiting = d
        self._transport.sendto(message + self.separator)
        return d

    def response(self, data: bytes, addr: Any) -> None:
        d, self._waiting = self._waiting, None
        if d:
            d.set_result(data[: -len(self.separator)])


class EchoUdpServerProtocol(EchoUdpProtocol):
    def response(self, data: bytes, addr: Any) -> None:
        self._transport.sendto(data, addr)


class EchoUdp(AbstractUdpClient):
    protocol_factory = EchoUdpClientProtocol

    def __init__(
        self, address: Any, pool_size: int = 5, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        super().__init__(loop)
        self.address = address
        self.pool = Pool(self.create_endpoint, pool_size, self._loop)

    def create_endpoint(self) -> Any:
        return self.create_datagram_endpoint(remote_addr=self.address)

    def __call__(self, message: bytes) -> Any:
        result = self._call(message)
        assert self._loop is not None
        if not self._loop.is_running():
            return self._loop.run_until_complete(result)
        return result

    async def _call(self, message: bytes) -> bytes:
        protocol = await self.pool.connect()
        with protocol:
            result: bytes = await protocol.send(message)
            return result


def test_pulsar_udp_echo_example(run: Runner) -> None:
    async def main() -> None:
        server = DatagramServer(EchoUdpServerProtocol, address=("127.0.0.1", 0))
        await server.create_endpoint()
        echo = EchoUdp(server.address)
        try:
            assert await asyncio.wait_for(echo(b"Hello!"), 5) == b"Hello!"
            answers = await asyncio.wait_for(
                asyncio.gather(*(echo(b"datagram %d" % i) for i in range(20))), 5
            )
            assert answers == [b"datagram %d" % i for i in range(20)]
            assert echo.pool.in_use == 0
        finally:
            await echo.pool.close()
            await echo.close()
            await server.close()

    run(main())


def test_a_class_level_factory_is_not_hidden_by_the_constructor(run: Runner) -> None:
    async def main() -> None:
        assert Echo(("127.0.0.1", 1)).protocol_factory is Echo.__dict__["protocol_factory"]
        assert EchoUdp(("127.0.0.1", 1)).protocol_factory is EchoUdpClientProtocol

        def made_here(**kw: Any) -> DatagramProtocol:
            return EchoUdpServerProtocol(**kw)

        class WithFunction(AbstractUdpClient):
            # A plain function, as pulsar code has it: not bound to the instance.
            protocol_factory = made_here

            async def create_endpoint(self) -> Any:
                raise NotImplementedError

        assert WithFunction().protocol_factory is made_here  # type: ignore[misc]
        given = partial(Connection, EchoProtocol)
        assert AbstractClientWith(given).protocol_factory is given, "the argument wins"

    run(main())


class AbstractClientWith(AbstractClient):
    def __init__(self, factory: Any) -> None:
        super().__init__(protocol_factory=factory)

    async def connect(self) -> Any:
        raise NotImplementedError
