"""HTTP/1.1 as bytes, with no connection and no I/O: status lines, the date, framing.

Everything here is computed once and reused where it can be: status lines are a table,
the ``Date`` header is formatted at most once a second, and a :class:`ResponseHead`
encodes a Response's headers once for every request it answers.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

from mypy_extensions import mypyc_attr

from .limits import JOIN_BODY_LIMIT

__all__ = [
    "CHUNKED_END",
    "CONNECTION_CLOSE",
    "CONNECTION_KEEP_ALIVE",
    "CONTINUE",
    "CRLF",
    "FRAMING_HEADERS",
    "HOST",
    "METHODS",
    "SPECIAL_BY_LENGTH",
    "STATUS_LINES",
    "TRANSFER_CHUNKED",
    "ResponseHead",
    "body_bytes",
    "date_header",
    "date_header_expires",
    "error_response",
    "no_body_status",
    "status_line",
]

CRLF = b"\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CHUNKED_END = b"0\r\n\r\n"
CONNECTION_CLOSE = b"connection: close\r\n"
CONNECTION_KEEP_ALIVE = b"connection: keep-alive\r\n"
TRANSFER_CHUNKED = b"transfer-encoding: chunked\r\n"

STATUS_LINES: dict[int, bytes] = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode("latin-1"))
    for status in HTTPStatus
}

# The usual methods as interned str: no decoding per request.
METHODS: dict[bytes, str] = {
    m.encode(): m
    for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE")
}

# Request headers the connection itself looks at, by length: one dict lookup per header.
HOST = b"host"
SPECIAL_BY_LENGTH = {
    len(name): name
    for name in (b"content-length", b"connection", b"expect", HOST, b"transfer-encoding")
}
# Headers whose value the server computes: given by a raw handler they are replaced.
FRAMING_HEADERS = frozenset((b"content-length", b"transfer-encoding", b"connection", b"date"))


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n`` for any status from 100 to 999."""
    line = STATUS_LINES.get(status)
    if line is None:
        if not isinstance(status, int) or not 100 <= status <= 999:
            raise ValueError(f"invalid HTTP status {status!r}")
        line = b"HTTP/1.1 %d \r\n" % status
    return line


def no_body_status(status: int) -> bool:
    """1xx, 204 and 304 answers never carry a body (RFC 9110, 6.4.1)."""
    return status < 200 or status == 204 or status == 304


# The Date header, formatted at most once a second (it has a one-second resolution).
_date_expires = 0.0
_date_line = b""
_time = time.time


def date_header() -> bytes:
    """``date: <IMF-fixdate>\\r\\n`` for the current second, cached."""
    global _date_expires, _date_line
    now = _time()
    if now >= _date_expires:
        second = int(now)
        _date_line = b"date: " + formatdate(second, usegmt=True).encode("ascii") + CRLF
        _date_expires = second + 1.0
    return _date_line


def date_header_expires() -> float:
    """When the last :func:`date_header` stops being current (a ``time.time()`` value)."""
    return _date_expires


def error_response(status: int, reason: str, head: bool = False) -> bytes:
    """A complete ``text/plain`` answer for a peer error, with ``Connection: close``.

    ``head``: the answer to a HEAD request, which carries no content (RFC 9110 §9.3.2);
    its length is still announced, as it would be for GET.
    """
    body = f"{status} {_phrase(status)}: {reason}\n".encode("utf-8", "replace")
    return b"".join(
        (
            status_line(status),
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            date_header(),
            CONNECTION_CLOSE,
            CRLF,
            b"" if head else body,
        )
    )


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def body_bytes(chunk: object) -> bytes:
    """A response body chunk as bytes; anything but a bytes-like object is the app's bug."""
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        return bytes(chunk)
    raise TypeError(f"response body chunks must be bytes, not {type(chunk).__name__}")


def _as_bytes(value: str | bytes, what: str) -> bytes:
    data = value.encode("latin-1") if isinstance(value, str) else bytes(value)
    # Ints (13: CR, 10: LF), not b"\r": ``bytes in bytes`` first tries the needle as an int
    # and raises (then clears) a TypeError.
    if 13 in data or 10 in data:
        raise ValueError(f"response {what} contains a line break: {value!r}")
    return data


@mypyc_attr(allow_interpreted_subclasses=True)
class ResponseHead:
    """A Response's status line and headers as bytes, with what framing needs to know.

    ``block`` holds the headers the server does not compute; ``length`` and
    ``connection`` are the framing headers the handler gave (the server writes its own).
    For a small bytes body that may be sent joined to its head, ``prefix`` is the head
    but the date and ``tail`` the blank line plus the body; ``whole`` is the answer with
    the date of the current second, valid until ``whole_until``.
    """

    __slots__ = (
        "block",
        "connection",
        "length",
        "prefix",
        "status",
        "status_line",
        "tail",
        "whole",
        "whole_until",
    )

    def __init__(
        self, status: int, headers: list[tuple[str | bytes, str | bytes]], body: object
    ) -> None:
        self.status = status
        self.status_line = status_line(status)
        self.length: int | None = None
        self.connection: bytes | None = None
        parts: list[bytes] = []
        for name, value in headers:
            bname = _as_bytes(name, "header name")
            bvalue = _as_bytes(value, "header value")
            lname = bname.lower()
            if lname in FRAMING_HEADERS:
                if lname == b"content-length":
                    self.length = int(bvalue)
                elif lname == b"connection":
                    self.connection = bvalue
                continue
            parts.append(bname + b": " + bvalue + CRLF)
        self.block = b"".join(parts)
        self.prefix: bytes | None = None
        self.tail = b""
        self.whole = b""
        self.whole_until = 0.0
        if (
            isinstance(body, bytes)
            and self.connection is None
            and not no_body_status(status)
            and len(body) < JOIN_BODY_LIMIT
        ):
            self.prefix = self.status_line + self.block + b"content-length: %d\r\n" % len(body)
            self.tail = CRLF + body
