"""Requests an HTTP/1.1 server must refuse, and the status each one gets.

Each entry is ``(name, raw bytes, status)``: the server answers ``status`` with
``Connection: close`` and closes that connection, and keeps serving the others. The
limits cases assume :data:`LIMITS`, small so that the tests stay fast.
"""

from __future__ import annotations

from pulsar_arbiter.http import Limits

LIMITS = Limits(
    max_request_line=256,
    max_headers=10,
    max_header_size=200,
    max_head_size=1000,
    max_body=1000,
)

GOOD = b"GET /ok HTTP/1.1\r\nHost: example.com\r\n\r\n"

BAD_REQUESTS: list[tuple[str, bytes, int]] = [
    # The request line.
    ("garbage", b"\x00\x01\x02\x03 hello\r\n\r\n", 400),
    ("lowercase method", b"get / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("unknown method", b"FROB / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("no version (HTTP/0.9)", b"GET /\r\nHost: a\r\n\r\n", 505),
    ("bad version", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 400),
    ("not http", b"GET / FTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("HTTP/0.9", b"GET / HTTP/0.9\r\n\r\n", 505),
    ("HTTP/2.0 as text", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    ("space in target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("control char in target", b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("bare LF line ends", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("long target", b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    # Headers.
    ("header without colon", b"GET / HTTP/1.1\r\nHost a\r\n\r\n", 400),
    ("space before colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    ("obsolete line folding", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),
    ("control char in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
    ("non-token header name", b"GET / HTTP/1.1\r\nHost: a\r\nX(Y): a\r\n\r\n", 400),
    (
        "too many headers",
        b"GET / HTTP/1.1\r\nHost: a\r\n"
        + b"".join(b"X-%d: v\r\n" % i for i in range(11))
        + b"\r\n",
        431,
    ),
    ("header field too large", b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 250 + b"\r\n\r\n", 431),
    (
        "head too large",
        b"GET / HTTP/1.1\r\nHost: a\r\n"
        + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 150) for i in range(8))
        + b"\r\n",
        431,
    ),
    # Framing.
    (
        "content-length and chunked",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    (
        "two content-lengths",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    ),
    ("negative content-length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
    (
        "content-length not a number",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n",
        400,
    ),
    (
        "chunked not last",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    (
        "bad chunk size",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk without CRLF",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX0\r\n\r\n",
        400,
    ),
    (
        "body over the limit",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n" + b"x" * 1001,
        413,
    ),
    (
        "chunked body over the limit",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"c8\r\n" + b"x" * 200 + b"\r\n" for _ in range(6))
        + b"0\r\n\r\n",
        413,
    ),
]
