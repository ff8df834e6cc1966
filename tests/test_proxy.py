"""The PROXY protocol parser (pure, fed byte by byte), the gate over real loopback sockets
on both loops, and the forwarded-header resolver with its allow-list."""

from __future__ import annotations

import asyncio
import functools
import socket
import struct

import pytest
import uvloop

from pulsar_arbiter import Connection, ProtocolConsumer, TcpServer
from pulsar_arbiter.forwarded import AllowList, ForwardedResolver, parse_forwarded
from pulsar_arbiter.proxyproto import (
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderParser,
    ProxyProtocolError,
)


def v2(
    source: tuple[str, int],
    destination: tuple[str, int],
    command: int = 1,
    tlvs: bytes = b"",
) -> bytes:
    ipv6 = ":" in source[0]
    family = 0x21 if ipv6 else 0x11
    pack = socket.inet_pton(socket.AF_INET6 if ipv6 else socket.AF_INET, source[0])
    pack += socket.inet_pton(socket.AF_INET6 if ipv6 else socket.AF_INET, destination[0])
    body = pack + struct.pack("!HH", source[1], destination[1]) + tlvs
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def feed_all(data: bytes, step: int) -> tuple[ProxyHeader, bytes]:
    parser = ProxyHeaderParser()
    for start in range(0, len(data), step):
        result = parser.feed(data[start : start + step])
        if result is not None:
            header, rest = result
            return header, rest + data[start + step :]
    raise AssertionError("no header parsed")


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_v1_tcp4_fed_in_pieces(step: int) -> None:
    data = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n"
    header, rest = feed_all(data, step)
    assert header == ProxyHeader(1, ("192.0.2.7", 56324), ("10.0.0.1", 443))
    assert rest == b"GET / HTTP/1.1\r\n"


def test_v1_tcp6_and_unknown() -> None:
    header, _ = feed_all(b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n", 1000)
    assert header.source == ("2001:db8::1", 1)
    header, rest = feed_all(b"PROXY UNKNOWN\r\nx", 1000)
    assert header.source is None and rest == b"x"


@pytest.mark.parametrize("step", [1, 5, 13, 16, 17, 1000])
@pytest.mark.parametrize(
    ("source", "destination"),
    [(("198.51.100.9", 40000), ("127.0.0.1", 80)), (("2001:db8::5", 1234), ("::1", 8080))],
)
def test_v2_split_across_packets(
    step: int, source: tuple[str, int], destination: tuple[str, int]
) -> None:
    tlv = b"\x04\x00\x03abc"  # a NOOP TLV, skipped
    header, rest = feed_all(v2(source, destination, tlvs=tlv) + b"hello", step)
    assert header == ProxyHeader(2, source, destination)
    assert rest == b"hello"


def test_v2_local_keeps_the_peer() -> None:
    header, _ = feed_all(v2(("1.2.3.4", 1), ("5.6.7.8", 2), command=0), 1000)
    assert header.source is None


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
        b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY " + b"1" * 200,
        b"\r\n\r\n\x00\r\nQUIX\n",
        V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\x00" * 12,  # version 3
        V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\x00" * 4,  # address block too short
        V2_SIGNATURE + b"\x21\x99\x00\x00",  # unknown family
    ],
)
def test_invalid_headers_raise(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        feed_all(data, 1)


# -- the gate on real sockets ---------------------------------------------------------------


class Whoami(ProtocolConsumer):
    """Answers each line with the connection's peer address."""

    def data_received(self, data: bytes) -> bytes | None:
        _, sep, rest = data.partition(b"\n")
        if not sep:
            return None
        connection = self.connection
        assert connection is not None
        self.write(f"{connection.address}\n".encode())
        self.finished()
        return rest


async def _serve_and_ask(payload: list[bytes]) -> bytes:
    loop = asyncio.get_running_loop()
    server = TcpServer(functools.partial(Connection, Whoami), loop, address=("127.0.0.1", 0))
    server.proxy_protocol = True
    await server.start_serving()
    port = server.address[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for piece in payload:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)
        answer = await asyncio.wait_for(reader.read(1000), 5)
        writer.close()
        await writer.wait_closed()
        return answer
    finally:
        await server.close(1.0)


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_gate_gives_the_client_address(loop_name: str) -> None:
    header = v2(("203.0.113.5", 5555), ("127.0.0.1", 80))
    # The header split in three packets, the first line in the last one.
    payload = [header[:5], header[5:20], header[20:] + b"hi\n"]
    loop = uvloop.new_event_loop() if loop_name == "uvloop" else asyncio.new_event_loop()
    try:
        answer = loop.run_until_complete(_serve_and_ask(payload))
    finally:
        loop.close()
    assert answer == b"('203.0.113.5', 5555)\n"


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_gate_closes_without_a_header(loop_name: str) -> None:
    loop = uvloop.new_event_loop() if loop_name == "uvloop" else asyncio.new_event_loop()
    try:
        answer = loop.run_until_complete(_serve_and_ask([b"hi\n"]))
    finally:
        loop.close()
    assert answer == b""


# -- forwarded headers ----------------------------------------------------------------------


def test_allow_list() -> None:
    allow = AllowList("127.0.0.1, 10.0.0.0/8,::1")
    assert allow.allows("127.0.0.1") and allow.allows("10.2.3.4") and allow.allows("::1")
    assert not allow.allows("127.0.0.2") and not allow.allows("/tmp/unix.sock")
    assert AllowList("*").allows("/tmp/unix.sock")
    with pytest.raises(ValueError, match="nonsense"):
        AllowList("nonsense")


def _headers(**values: str) -> list[tuple[bytes, bytes]]:
    return [(k.replace("_", "-").encode(), v.encode()) for k, v in values.items()]


def test_x_forwarded_from_a_trusted_peer() -> None:
    resolver = ForwardedResolver("127.0.0.1")
    headers = _headers(X_Forwarded_For="203.0.113.1, 198.51.100.2", X_Forwarded_Proto="https")
    found = resolver.resolve(("127.0.0.1", 5000), headers)
    assert found is not None
    assert found.client == ("198.51.100.2", 0)  # the rightmost untrusted hop
    assert found.scheme == "https"


def test_untrusted_peer_is_ignored() -> None:
    resolver = ForwardedResolver("127.0.0.1")
    headers = _headers(X_Forwarded_For="203.0.113.1", X_Forwarded_Proto="https")
    assert resolver.resolve(("192.0.2.9", 5000), headers) is None


def test_trusted_chain_is_skipped() -> None:
    resolver = ForwardedResolver("127.0.0.1,10.0.0.0/8")
    found = resolver.resolve(("127.0.0.1", 1), _headers(X_Forwarded_For="203.0.113.1, 10.1.1.1"))
    assert found is not None and found.client == ("203.0.113.1", 0)
    everything = ForwardedResolver("*")
    found = everything.resolve(("127.0.0.1", 1), _headers(X_Forwarded_For="1.1.1.1, 2.2.2.2"))
    assert found is not None and found.client == ("1.1.1.1", 0)


def test_rfc7239_forwarded() -> None:
    assert parse_forwarded('for="[2001:db8::1]:4711";proto=https, for=10.0.0.1') == [
        {"for": "[2001:db8::1]:4711", "proto": "https"},
        {"for": "10.0.0.1"},
    ]
    resolver = ForwardedResolver("127.0.0.1")
    headers = _headers(Forwarded='for="[2001:db8::1]:4711";proto=https')
    found = resolver.resolve(("127.0.0.1", 1), headers)
    assert found is not None
    assert found.client == ("2001:db8::1", 4711) and found.scheme == "https"
    found = resolver.resolve(("127.0.0.1", 1), _headers(Forwarded="for=unknown;proto=http"))
    assert found is not None and found.client is None and found.scheme == "http"


def test_nothing_forwarded() -> None:
    resolver = ForwardedResolver("*")
    assert resolver.resolve(("127.0.0.1", 1), _headers(Host="x")) is None
