"""What RFC 9110/9112 require of a request that llhttp does not check; pure functions.

llhttp (through httptools) checks the syntax of the request line, of field lines and of
the framing headers. What it leaves to us, each answered 400 unless said otherwise:

* the request-target's form (RFC 9112, 3.2): origin-form, absolute-form, authority-form
  for CONNECT only, asterisk-form for OPTIONS only, and no ``#fragment``;
* Host (3.2): exactly one in HTTP/1.1, with a valid ``uri-host [":" port]`` value;
* the transfer codings (6.1): chunked must be the final one (400); any other coding is
  one we do not implement (501);
* which fields may be trailers (RFC 9110, 6.5.1): :data:`FORBIDDEN_TRAILERS` are dropped.

Used by :class:`~pulsar_arbiter.http.connection.HttpConnection` when a head is complete;
the common request (``GET /path`` with one plain Host) costs two lookups.
"""

from __future__ import annotations

import re

from httptools import HttpParserInvalidURLError, parse_url

__all__ = [
    "FORBIDDEN_TRAILERS",
    "KNOWN_HOSTS",
    "target_error",
    "transfer_coding_error",
    "valid_host",
]

# RFC 3986, 3.2.2 and 3.2.3: uri-host [ ":" port ].
_REG_NAME = rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*"
_IP_LITERAL = rb"\[(?:[0-9A-Fa-f:.]+|v[0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+)\]"
_HOST = re.compile(rb"(?:" + _IP_LITERAL + rb"|" + _REG_NAME + rb")(?::[0-9]*)?")
# CONNECT's authority-form: uri-host ":" port, the port required (RFC 9110, 9.3.6).
_AUTHORITY = re.compile(rb"(?:" + _IP_LITERAL + rb"|" + _REG_NAME + rb"):[0-9]+")
# absolute-form: scheme ":" hier-part; we serve hierarchical URIs with an authority.
_ABSOLUTE = re.compile(rb"[A-Za-z][A-Za-z0-9+\-.]*://([^/?]*)(.*)", re.DOTALL)

# Host values already checked: a server sees a handful. Cleared when full, so a peer
# sending a new value per request cannot grow it.
HOST_CACHE_SIZE = 256
#: Host values already found valid (the connection looks a Host up here first).
KNOWN_HOSTS: set[bytes] = set()
_valid_hosts = KNOWN_HOSTS

# RFC 9110, 6.5.1: a sender MUST NOT generate a trailer field unless it is allowed, and
# fields that frame, route, modify, authenticate or control a request are not: dropped
# (never merged into the headers, which is what made Host rewritable by a trailer).
FORBIDDEN_TRAILERS = frozenset(
    (
        # framing (RFC 9112, 6)
        b"content-length",
        b"transfer-encoding",
        b"trailer",
        b"te",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"upgrade",
        # routing (RFC 9110, 7.2)
        b"host",
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        # request modifiers: controls (RFC 9110, 7.6.2, 10.1) and conditionals (13.1)
        b"expect",
        b"max-forwards",
        b"cache-control",
        b"pragma",
        b"range",
        b"if-match",
        b"if-none-match",
        b"if-modified-since",
        b"if-unmodified-since",
        b"if-range",
        # authentication (RFC 9110, 11) and state
        b"authorization",
        b"proxy-authorization",
        b"www-authenticate",
        b"proxy-authenticate",
        b"cookie",
        b"set-cookie",
        # how the content is processed (RFC 9110, 8)
        b"content-type",
        b"content-encoding",
        b"content-range",
        b"content-location",
        # response control data (RFC 9110, 15 and 10.2)
        b"age",
        b"date",
        b"expires",
        b"location",
        b"retry-after",
        b"vary",
    )
)


def valid_host(value: bytes) -> bool:
    """``value`` is a valid Host field value (it may be empty: RFC 9112, 3.2)."""
    if value in _valid_hosts:
        return True
    if _HOST.fullmatch(value) is None:
        return False
    if len(_valid_hosts) >= HOST_CACHE_SIZE:
        _valid_hosts.clear()
    _valid_hosts.add(value)
    return True


def target_error(method: bytes, target: bytes) -> str | None:
    """Why ``target`` is not a valid request-target for ``method`` (None: it is).

    llhttp has already refused spaces, control characters and bytes above 0x7e.
    """
    if b"#" in target:
        return "fragment in request-target"
    if method == b"CONNECT":
        if _AUTHORITY.fullmatch(target) is None:
            return "CONNECT needs an authority-form target (host:port)"
        return None
    if target[:1] == b"/":
        return None
    if target == b"*":
        return None if method == b"OPTIONS" else "asterisk-form is for OPTIONS only"
    match = _ABSOLUTE.fullmatch(target)
    if match is None:
        return "invalid request-target"
    authority, rest = match.groups()
    if _HOST.fullmatch(authority) is None:
        return "invalid authority in absolute-form target"
    if rest and rest[:1] not in (b"/", b"?"):
        return "invalid absolute-form target"
    try:
        parse_url(target)
    except HttpParserInvalidURLError:
        return "invalid absolute-form target"
    return None


def transfer_coding_error(codings: list[bytes]) -> tuple[int, str] | None:
    """The answer to a request whose Transfer-Encoding lists ``codings`` (None: chunked).

    ``codings`` are the field's values, one per field line, as received.
    """
    names = [
        coding.split(b";", 1)[0].strip().lower()
        for value in codings
        for coding in value.split(b",")
    ]
    names = [name for name in names if name]
    if not names or names[-1] != b"chunked":
        return 400, "chunked is not the final transfer coding"
    if names.count(b"chunked") > 1:
        return 400, "chunked applied more than once"
    if len(names) > 1:
        other = next(name for name in names if name != b"chunked")
        return 501, f"transfer coding {other.decode('latin-1')!r} not implemented"
    return None
