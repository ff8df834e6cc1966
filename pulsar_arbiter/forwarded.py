"""The client behind a proxy: ``X-Forwarded-For``, ``X-Forwarded-Proto`` and RFC 7239
``Forwarded``, read only from trusted peers (``--forwarded-allow-ips``).

Pure functions over header lists: the HTTP layers call :meth:`ForwardedResolver.resolve`
with the connection's peer and the request's headers and get the client's address and
the scheme, or None when the peer is not trusted or sent nothing.

Which hop is the client: proxies append, so the list is read from the right, skipping
the trusted proxies; the first untrusted address is the client (a client can put any
address it likes at the left). When every hop is trusted (``*``), the leftmost is.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["AllowList", "ForwardedResolver", "parse_forwarded"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AllowList:
    """Comma-separated IPs and CIDRs, or ``*`` for every peer (and unix sockets)."""

    def __init__(self, spec: str | Sequence[str]) -> None:
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        self.any = False
        self.networks: list[Network] = []
        for raw in items:
            item = raw.strip()
            if not item:
                continue
            if item == "*":
                self.any = True
                continue
            try:
                self.networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(
                    f"expected IP addresses or CIDRs separated by commas, or '*', got {item!r}"
                ) from None
        self.text = ",".join(i.strip() for i in items if i.strip())

    def __repr__(self) -> str:
        return f"AllowList({self.text!r})"

    def allows(self, host: object) -> bool:
        """Whether ``host`` (an address string; anything else is a unix peer) is trusted."""
        if self.any:
            return True
        if not isinstance(host, str):
            return False
        try:
            address = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False
        return any(address in network for network in self.networks)


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = value[1:-1].replace('\\"', '"')
    return value


def parse_forwarded(value: str) -> list[dict[str, str]]:
    """The elements of an RFC 7239 ``Forwarded`` value: ``for=a;proto=https, for=b``.
    Parameter names are lower-cased; quoted values unquoted. Malformed pairs are skipped."""
    elements: list[dict[str, str]] = []
    for element in value.split(","):
        pairs: dict[str, str] = {}
        for pair in element.split(";"):
            name, sep, raw = pair.partition("=")
            if sep and name.strip():
                pairs[name.strip().lower()] = _unquote(raw)
        if pairs:
            elements.append(pairs)
    return elements


def _node(value: str) -> tuple[str, int | None]:
    """A ``Forwarded`` node (``192.0.2.1:4711``, ``[2001:db8::1]:80``, ``unknown``) or an
    ``X-Forwarded-For`` item as ``(host, port)``."""
    value = value.strip()
    if value.startswith("["):
        host, _, tail = value[1:].partition("]")
        port = tail[1:] if tail.startswith(":") else ""
        return host, int(port) if port.isdigit() else None
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        return host, int(port) if port.isdigit() else None
    return value, None


_SCHEMES = {"http": "http", "https": "https", "ws": "ws", "wss": "wss"}


@dataclass(frozen=True)
class Forwarded:
    """What a trusted proxy said: the client's ``(host, port)`` and the scheme."""

    client: tuple[str, int] | None
    scheme: str | None


class ForwardedResolver:
    """Resolves the client of requests coming through the proxies of ``allow``."""

    def __init__(self, allow: AllowList | str) -> None:
        self.allow = allow if isinstance(allow, AllowList) else AllowList(allow)

    def resolve(self, peer: object, headers: Iterable[tuple[bytes, bytes]]) -> Forwarded | None:
        """The client and scheme of a request from ``peer`` (a ``(host, port)`` or a unix
        path) with ``headers`` (raw name/value pairs); None if nothing applies."""
        host = peer[0] if isinstance(peer, tuple) else peer
        if not self.allow.allows(host):
            return None
        forwarded: list[str] = []
        xff: list[str] = []
        proto: list[str] = []
        for name, value in headers:
            if len(name) not in (9, 15, 17):  # cheap pre-check of the three names
                continue
            lower = name.lower()
            if lower == b"forwarded":
                forwarded.append(value.decode("latin-1"))
            elif lower == b"x-forwarded-for":
                xff.append(value.decode("latin-1"))
            elif lower == b"x-forwarded-proto":
                proto.append(value.decode("latin-1"))
        if forwarded:
            return self._from_forwarded(parse_forwarded(",".join(forwarded)))
        if not xff and not proto:
            return None
        client = None
        if xff:
            hops = [item.strip() for item in ",".join(xff).split(",") if item.strip()]
            chosen = self._client_hop(hops)
            if chosen is not None:
                client = (chosen, 0)
        scheme = None
        if proto:
            scheme = _SCHEMES.get(",".join(proto).split(",")[-1].strip().lower())
        return Forwarded(client, scheme)

    def _client_hop(self, hops: Sequence[str]) -> str | None:
        for hop in reversed(hops):
            if not self.allow.allows(_node(hop)[0]):
                return _node(hop)[0]
        return _node(hops[0])[0] if hops else None

    def _from_forwarded(self, elements: Sequence[dict[str, str]]) -> Forwarded | None:
        if not elements:
            return None
        chosen = elements[0]
        for element in reversed(elements):
            node = element.get("for")
            if node is not None and not self.allow.allows(_node(node)[0]):
                chosen = element
                break
        client = None
        node = chosen.get("for")
        if node is not None and not node.lower().startswith(("unknown", "_")):
            host, port = _node(node)
            client = (host, port or 0)
        scheme = _SCHEMES.get(chosen.get("proto", "").lower())
        if scheme is None:  # the scheme the last proxy saw
            scheme = next(
                (
                    _SCHEMES[e["proto"].lower()]
                    for e in elements
                    if e.get("proto", "").lower() in _SCHEMES
                ),
                None,
            )
        return Forwarded(client, scheme)
