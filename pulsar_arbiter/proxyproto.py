"""The PROXY protocol, v1 (text) and v2 (binary), as HAProxy and cloud load balancers send it.

A balancer that speaks it writes one header before the client's bytes, naming the client's
address. :class:`ProxyHeaderParser` reads that header incrementally (a v2 header split
across packets is fed piece by piece); :func:`proxy_protocol_gate` wraps a protocol
factory so that each connection reads the header first, then hands the connection, with
the client's address as its ``peername``, to the protocol the factory makes. A connection
whose first bytes are not a valid header is closed: when the protocol is required, a
client that can reach the port directly must not be able to claim any address.

Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

__all__ = [
    "HEADER_TIMEOUT",
    "ProxyHeader",
    "ProxyHeaderParser",
    "ProxyProtocolError",
    "proxy_protocol_gate",
]

LOGGER = logging.getLogger("pulsar_arbiter.proxy")

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
#: The longest v1 header, CRLF included (spec, 2.1: 107 bytes).
V1_MAX = 107
#: The fixed part of a v2 header: signature, version/command, family, length.
V2_FIXED = 16
_V2_HEAD = struct.Struct("!BBH")
#: Seconds a connection has to send its header: a peer that connects and stays silent
#: must not hold a connection slot for ever.
HEADER_TIMEOUT = 5.0

# v2 families (high nibble: address family, low: transport) and their address blocks.
_V2_ADDRESSES: dict[int, tuple[str, int]] = {
    0x11: ("inet", 12),  # TCP over IPv4: 4 + 4 + 2 + 2
    0x12: ("inet", 12),  # UDP over IPv4
    0x21: ("inet6", 36),  # TCP over IPv6: 16 + 16 + 2 + 2
    0x22: ("inet6", 36),  # UDP over IPv6
    0x31: ("unix", 216),  # stream over AF_UNIX: 108 + 108
    0x32: ("unix", 216),
}


class ProxyProtocolError(ValueError):
    """The peer's first bytes are not a valid PROXY header: close the connection."""


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed header. ``source`` is the client's ``(host, port)``, None when the header
    says nothing about it (v1 ``UNKNOWN``, v2 ``LOCAL`` such as a balancer's health check,
    or an unspecified family): the connection's own peer stands."""

    version: int
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None


class ProxyHeaderParser:
    """Feed bytes with :meth:`feed` until it returns ``(header, rest)``; ``rest`` is what
    followed the header (the client's first bytes). Raises ProxyProtocolError."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> tuple[ProxyHeader, bytes] | None:
        buffer = self._buffer + data
        self._buffer = buffer
        if buffer[:1] == V2_SIGNATURE[:1]:
            return self._v2(buffer)
        if buffer[:1] == V1_PREFIX[:1]:
            return self._v1(buffer)
        if buffer:
            raise ProxyProtocolError("no PROXY protocol header")
        return None

    def _v1(self, buffer: bytes) -> tuple[ProxyHeader, bytes] | None:
        if not V1_PREFIX.startswith(buffer[: len(V1_PREFIX)]):
            raise ProxyProtocolError("no PROXY protocol header")
        end = buffer.find(b"\r\n", 0, V1_MAX)
        if end < 0:
            if len(buffer) >= V1_MAX:
                raise ProxyProtocolError(f"PROXY v1 header longer than {V1_MAX} bytes")
            return None
        return parse_v1(buffer[:end]), buffer[end + 2 :]

    def _v2(self, buffer: bytes) -> tuple[ProxyHeader, bytes] | None:
        if not V2_SIGNATURE.startswith(buffer[: len(V2_SIGNATURE)]):
            raise ProxyProtocolError("no PROXY protocol header")
        if len(buffer) < V2_FIXED:
            return None
        _, _, length = _V2_HEAD.unpack_from(buffer, len(V2_SIGNATURE))
        if len(buffer) < V2_FIXED + length:
            return None
        return parse_v2(buffer[: V2_FIXED + length]), buffer[V2_FIXED + length :]


def parse_v1(line: bytes) -> ProxyHeader:
    """``PROXY TCP4 SRC DST SPORT DPORT`` (without its CRLF), or ``PROXY UNKNOWN ...``."""
    parts = line.split(b" ")
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        return ProxyHeader(1)
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError(f"malformed PROXY v1 header {line[:V1_MAX]!r}")
    try:
        text = [part.decode("ascii") for part in parts[2:]]
        version = 4 if parts[1] == b"TCP4" else 6
        source, destination = ipaddress.ip_address(text[0]), ipaddress.ip_address(text[1])
        ports = [_port(item) for item in text[2:]]
    except (UnicodeDecodeError, ValueError):
        raise ProxyProtocolError(f"malformed PROXY v1 header {line!r}") from None
    if source.version != version or destination.version != version:
        raise ProxyProtocolError(f"PROXY v1 header with mixed address families {line!r}")
    return ProxyHeader(1, (str(source), ports[0]), (str(destination), ports[1]))


def _port(text: str) -> int:
    if not text.isdigit() or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise ValueError(text)
    return int(text)


def parse_v2(header: bytes) -> ProxyHeader:
    """A whole v2 header (signature included); TLVs after the addresses are skipped."""
    version_command, family, _ = _V2_HEAD.unpack_from(header, len(V2_SIGNATURE))
    if version_command >> 4 != 2:
        raise ProxyProtocolError(f"PROXY v2 header of version {version_command >> 4}")
    command = version_command & 0x0F
    if command == 0x0:  # LOCAL: the balancer's own connection (a health check)
        return ProxyHeader(2)
    if command != 0x1:
        raise ProxyProtocolError(f"PROXY v2 header with unknown command {command}")
    body = header[V2_FIXED:]
    kind = _V2_ADDRESSES.get(family)
    if kind is None:
        if family == 0x00:  # AF_UNSPEC: nothing to say about the client
            return ProxyHeader(2)
        raise ProxyProtocolError(f"PROXY v2 header with unknown family 0x{family:02x}")
    name, size = kind
    if len(body) < size:
        raise ProxyProtocolError(f"PROXY v2 address block of {len(body)} bytes, not {size}")
    if name == "unix":
        return ProxyHeader(2)  # a unix peer has no (host, port) to report
    width = 4 if name == "inet" else 16
    source = ipaddress.ip_address(body[:width])
    destination = ipaddress.ip_address(body[width : 2 * width])
    sport, dport = struct.unpack_from("!HH", body, 2 * width)
    return ProxyHeader(2, (str(source), sport), (str(destination), dport))


# -- serving ------------------------------------------------------------------------------


class ProxiedTransport(asyncio.Transport):
    """A connection's transport with the client's address (from the PROXY header) as its
    ``peername``; everything else is the real transport's."""

    def __init__(self, transport: asyncio.Transport, header: ProxyHeader) -> None:
        super().__init__()
        self._real = transport
        self._header = header

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        header = self._header
        if name == "peername" and header.source is not None:
            return header.source
        if name == "proxy_header":
            return header
        return self._real.get_extra_info(name, default)

    def write(self, data: Any) -> None:
        self._real.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._real.writelines(list_of_data)

    def write_eof(self) -> None:
        self._real.write_eof()

    def can_write_eof(self) -> bool:
        return self._real.can_write_eof()

    def is_closing(self) -> bool:
        return self._real.is_closing()

    def close(self) -> None:
        self._real.close()

    def abort(self) -> None:
        self._real.abort()

    def pause_reading(self) -> None:
        self._real.pause_reading()

    def resume_reading(self) -> None:
        self._real.resume_reading()

    def is_reading(self) -> bool:
        return self._real.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._real.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._real.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._real.get_write_buffer_limits()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._real.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._real.get_protocol()


class ProxyProtocolGate(asyncio.Protocol):
    """Reads a connection's PROXY header, then gives the connection to ``factory()``'s
    protocol: the real transport calls that protocol from then on."""

    def __init__(
        self, factory: Callable[[], asyncio.BaseProtocol], timeout: float = HEADER_TIMEOUT
    ) -> None:
        self._factory = factory
        self._timeout = timeout
        self._parser: ProxyHeaderParser | None = ProxyHeaderParser()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but quack alike.
        self._transport = cast(asyncio.Transport, transport)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._timeout, self._expired)

    def _expired(self) -> None:
        if self._parser is not None and self._transport is not None:
            LOGGER.info("closing a connection that sent no PROXY header in %gs", self._timeout)
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        parser, transport = self._parser, self._transport
        if parser is None or transport is None:
            return
        try:
            parsed = parser.feed(data)
        except ProxyProtocolError as exc:
            LOGGER.info("closing %s: %s", transport.get_extra_info("peername"), exc)
            self._parser = None
            transport.abort()
            return
        if parsed is None:
            return
        header, rest = parsed
        self._parser = None
        if self._timer is not None:
            self._timer.cancel()
        protocol = self._factory()
        transport.set_protocol(protocol)
        protocol.connection_made(ProxiedTransport(transport, header))
        if rest and not transport.is_closing():
            cast(asyncio.Protocol, protocol).data_received(rest)

    def eof_received(self) -> bool | None:
        return None  # before the header: close

    def connection_lost(self, exc: BaseException | None) -> None:
        self._parser = None
        if self._timer is not None:
            self._timer.cancel()


def proxy_protocol_gate(
    factory: Callable[[], asyncio.BaseProtocol], timeout: float = HEADER_TIMEOUT
) -> Callable[[], asyncio.Protocol]:
    """A protocol factory that reads each connection's PROXY header before ``factory``'s
    protocol sees the connection."""

    def gate() -> asyncio.Protocol:
        return ProxyProtocolGate(factory, timeout)

    return gate
