"""RFC 9112 conformance, section by section: what a server MUST accept, answer and refuse.

Each :class:`Case` names the section it checks and the requirement in a line. Three tiers:

* byte level (a fake transport, no sockets): every case through a raw-handler connection
  and through an ASGI app's (the same state machine under another consumer, whose app
  runs in a task); every rejection is checked for its status, a one-line reason,
  ``Connection: close``, the close after the answer (a lingering one), that nothing after
  it reached the app, and that h11, as a strict client, reads the answer as valid HTTP/1.1;
* loopback, in the four modes (raw handler, WSGI inline, WSGI threaded, ASGI): the seven
  reproductions of issue 10, each followed by a pipelined request that must not reach
  the app, and a new connection that must be served;
* a differential check: every case (and the bad-request corpus) also goes to h11 as a
  server-side parser, through the raw and the ASGI paths; where h11 and we disagree,
  :data:`DISAGREEMENTS` says why, with the section that justifies our answer (the same
  list is in docs/http-conformance.md).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import pytest

from pulsar_arbiter.http import HttpRequest, Limits, Response, State, http_protocol_factory
from pulsar_arbiter.http.asgi import asgi_protocol_factory
from pulsar_arbiter.http.chunked import ChunkedDecoder
from pulsar_arbiter.http.errors import PeerError
from tests.conftest import Runner
from tests.http_corpus import BAD_REQUESTS
from tests.test_http import connect, read_eof, read_reply, serving
from tests.test_http_state import FakeTransport, checked_states  # noqa: F401 - a fixture

# Every state change a connection makes must be one the table lists (even the hot ones).
pytestmark = pytest.mark.usefixtures("checked_states")

LIMITS = Limits(
    max_request_line=256,
    max_headers=10,
    max_header_size=200,
    max_head_size=1000,
    max_body=1000,
)
NEXT = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
CHUNKED = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


@dataclass(frozen=True)
class Case:
    """One request (or a few, pipelined) and the status of the first answer."""

    section: str  # of RFC 9112 unless it says otherwise
    name: str
    raw: bytes
    status: int
    must: str  # the requirement, in a line
    # For accepted requests: what the app must have seen (method target body header).
    seen: str | None = None


def _r(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode("latin-1") + body


CASES: list[Case] = [
    # -- 2: message format, parsing, version
    Case(
        "2.2",
        "leading empty line",
        b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        200,
        "SHOULD ignore at least one empty line before the request-line",
        "GET / 0",
    ),
    Case(
        "2.2",
        "bare LF line ends",
        b"GET / HTTP/1.1\nHost: a\n\n",
        400,
        "MAY accept a bare LF; we refuse it (no two parsers may see different lines)",
    ),
    Case(
        "2.2",
        "bare CR in a field value",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
        400,
        "MUST reject a bare CR or replace it with SP",
    ),
    Case(
        "2.2",
        "whitespace before the first field",
        b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
        400,
        "MUST reject or ignore whitespace-preceded lines after the start-line",
    ),
    Case(
        "2.2", "garbage", b"\x00\x01\x02 hello\r\n\r\n", 400, "MUST parse as octets; not HTTP: 400"
    ),
    Case(
        "2.3",
        "HTTP/2.0 as text",
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        505,
        "a major version we do not implement: 505",
    ),
    Case("2.3", "HTTP/0.9 line", b"GET / HTTP/0.9\r\n\r\n", 505, "no HTTP/0.9: 505"),
    Case(
        "2.3",
        "lowercase version",
        b"GET / http/1.1\r\nHost: a\r\n\r\n",
        400,
        "HTTP-name is case-sensitive",
    ),
    Case(
        "2.3",
        "HTTP/1.0 without Host",
        b"GET / HTTP/1.0\r\n\r\n",
        200,
        "HTTP/1.0 needs no Host",
        "GET / 0",
    ),
    # -- 3: request line and target
    Case(
        "3",
        "lowercase method",
        b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
        400,
        "methods are case-sensitive: 'get' is unknown",
    ),
    Case(
        "3",
        "target longer than the limit",
        b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
        414,
        "MUST answer 414 to a target longer than it wishes to parse",
    ),
    Case(
        "3",
        "space in target",
        b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
        400,
        "the request-line is method SP target SP version",
    ),
    Case(
        "3",
        "control character in target",
        b"GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
        400,
        "a target has no control characters",
    ),
    Case(
        "3.2",
        "fragment in target",
        b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n",
        400,
        "no form of request-target has a fragment",
    ),
    Case(
        "3.2",
        "invalid absolute-form",
        b"GET s://]ufd/: HTTP/1.1\r\nHost: a\r\n\r\n",
        400,
        "a target that is none of the four forms: 400 before the app",
    ),
    Case(
        "3.2",
        "no form at all",
        b"GET a:b:c HTTP/1.1\r\nHost: a\r\n\r\n",
        400,
        "a target that is none of the four forms",
    ),
    Case(
        "3.2",
        "Host missing",
        b"GET / HTTP/1.1\r\n\r\n",
        400,
        "MUST answer 400 to an HTTP/1.1 request without Host",
    ),
    Case(
        "3.2",
        "two Host fields",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        400,
        "MUST answer 400 to more than one Host field line",
    ),
    Case(
        "3.2",
        "Host invalid",
        b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
        400,
        "MUST answer 400 to a Host with an invalid value",
    ),
    Case(
        "3.2",
        "Host with userinfo",
        b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
        400,
        "Host is uri-host [':' port], no userinfo",
    ),
    Case(
        "3.2",
        "Host empty",
        b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
        200,
        "an empty Host is valid (no authority)",
        "GET / 0",
    ),
    Case(
        "3.2",
        "Host IPv6 literal",
        b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
        200,
        "uri-host may be an IP-literal",
        "GET / 0",
    ),
    Case(
        "3.2.1",
        "origin-form with query",
        b"GET /p?a=/?b HTTP/1.1\r\nHost: a\r\n\r\n",
        200,
        "origin-form: absolute-path ['?' query]",
        "GET /p?a=/?b 0",
    ),
    Case(
        "3.2.2",
        "absolute-form",
        b"GET http://h.example/p?q HTTP/1.1\r\nHost: a\r\n\r\n",
        200,
        "MUST accept the absolute-form",
        "GET http://h.example/p?q 0",
    ),
    Case(
        "3.2.2",
        "absolute-form with userinfo",
        b"GET http://u@h/p HTTP/1.1\r\nHost: a\r\n\r\n",
        400,
        "userinfo in an http URI is an error (RFC 9110, 4.2.4)",
    ),
    Case(
        "3.2.3",
        "CONNECT origin-form",
        b"CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n",
        400,
        "CONNECT uses the authority-form only",
    ),
    Case(
        "3.2.3",
        "CONNECT without port",
        b"CONNECT h.example HTTP/1.1\r\nHost: a\r\n\r\n",
        400,
        "authority-form is uri-host ':' port",
    ),
    Case(
        "3.2.3",
        "authority-form without CONNECT",
        b"GET h.example:80 HTTP/1.1\r\nHost: a\r\n\r\n",
        400,
        "the authority-form is for CONNECT only",
    ),
    Case(
        "3.2.4",
        "OPTIONS *",
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        200,
        "asterisk-form for OPTIONS",
        "OPTIONS * 0",
    ),
    Case(
        "3.2.4",
        "GET *",
        b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
        400,
        "the asterisk-form is for OPTIONS only",
    ),
    # -- 5: field syntax
    Case(
        "5.1",
        "space before colon",
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        400,
        "MUST answer 400 to whitespace between field name and colon",
    ),
    Case(
        "5.1",
        "no colon",
        b"GET / HTTP/1.1\r\nHost: a\r\nX\r\n\r\n",
        400,
        "a field line is name ':' value",
    ),
    Case(
        "5.1",
        "non-token name",
        b"GET / HTTP/1.1\r\nHost: a\r\nX(Y): a\r\n\r\n",
        400,
        "a field name is a token",
    ),
    Case(
        "5.1",
        "OWS around the value",
        b"GET / HTTP/1.1\r\nHost: a \t\r\nX:\t v \t \r\n\r\n",
        200,
        "OWS before and after a value is not part of it",
        "GET / 0 host=a x=v",
    ),
    Case(
        "5.1",
        "empty value",
        b"GET / HTTP/1.1\r\nHost: a\r\nX:\r\n\r\n",
        200,
        "a field value may be empty",
        "GET / 0 host=a x=",
    ),
    Case(
        "5.2",
        "obs-fold",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
        400,
        "MUST reject obs-fold (400) or replace it with SP",
    ),
    Case(
        "5.5",
        "NUL in a value",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
        400,
        "field values have no NUL (RFC 9110, 5.5: MUST reject or replace)",
    ),
    Case(
        "5.5",
        "obs-text in a value",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: \xe9\r\n\r\n",
        200,
        "obs-text is allowed in a value",
        "GET / 0 host=a x=\xe9",
    ),
    Case(
        "5",
        "too many fields",
        _r("GET / HTTP/1.1\nHost: a\n" + "".join(f"X{i}: v\n" for i in range(11)) + "\n"),
        431,
        "a limit of ours (RFC 6585, 5): 431",
    ),
    Case(
        "5",
        "field longer than the limit",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 250 + b"\r\n\r\n",
        431,
        "a limit of ours: 431",
    ),
    # -- 6: message body and its framing
    Case(
        "6.1",
        "unknown transfer coding",
        CHUNKED.replace(b"chunked", b"gzip, chunked") + b"0\r\n\r\n",
        501,
        "SHOULD answer 501 to a transfer coding it does not understand",
    ),
    Case(
        "6.1",
        "chunked not final",
        CHUNKED.replace(b"chunked", b"chunked, gzip") + b"0\r\n\r\n",
        400,
        "chunked not final in a request: MUST answer 400 and close (6.3)",
    ),
    Case(
        "6.1",
        "only an unknown coding",
        CHUNKED.replace(b"chunked", b"gzip") + b"0\r\n\r\n",
        400,
        "chunked not final in a request: MUST answer 400 and close (6.3)",
    ),
    Case(
        "6.1",
        "chunked twice",
        CHUNKED.replace(b"chunked", b"chunked, chunked") + b"0\r\n\r\n",
        400,
        "chunked MUST NOT be applied more than once",
    ),
    Case(
        "6.1",
        "HTTP/1.0 with Transfer-Encoding",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + NEXT,
        400,
        "HTTP/1.0 with Transfer-Encoding: framing faulty, MUST close after answering",
    ),
    Case(
        "6.1",
        "Content-Length and Transfer-Encoding",
        CHUNKED.replace(b"\r\n\r\n", b"\r\nContent-Length: 3\r\n\r\n") + b"3\r\nabc\r\n0\r\n\r\n",
        400,
        "both: ought to be an error, MUST close after (we refuse)",
    ),
    Case(
        "6.2",
        "Content-Length body",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
        200,
        "Content-Length is the body's length",
        "POST / 3",
    ),
    Case(
        "6.3",
        "no length: no body",
        b"POST / HTTP/1.1\r\nHost: a\r\n\r\n" + NEXT,
        200,
        "a request without CL or TE has no body (6.3, item 6)",
        "POST / 0",
    ),
    Case(
        "6.3",
        "two different Content-Lengths",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
        "an invalid Content-Length: MUST answer 400 and close",
    ),
    Case(
        "6.3",
        "Content-Length list",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
        400,
        "MAY accept a list of one repeated value; we refuse it (RFC 9110, 8.6)",
    ),
    Case(
        "6.3",
        "negative Content-Length",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        400,
        "an invalid Content-Length: MUST answer 400 and close",
    ),
    Case(
        "6.3",
        "Content-Length with a sign",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
        400,
        "Content-Length is 1*DIGIT",
    ),
    Case(
        "6.3",
        "body over the limit",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n",
        413,
        "a limit of ours: 413 before the body",
    ),
    # -- 7: chunked
    Case(
        "7.1",
        "chunked body",
        CHUNKED + b"5\r\nhello\r\nA\r\n world!!!!\r\n0\r\n\r\n",
        200,
        "MUST be able to parse and decode chunked",
        "POST / 15",
    ),
    Case(
        "7.1",
        "chunk size overflow",
        CHUNKED + b"10000000000000000\r\nx\r\n0\r\n\r\n",
        400,
        "MUST anticipate large hex numerals and prevent overflow",
    ),
    Case(
        "7.1",
        "invalid chunk size",
        CHUNKED + b"zz\r\nabc\r\n0\r\n\r\n",
        400,
        "chunk-size is 1*HEXDIG",
    ),
    Case(
        "7.1",
        "chunk data without CRLF",
        CHUNKED + b"3\r\nabcX0\r\n\r\n",
        400,
        "chunk-data is followed by CRLF",
    ),
    Case(
        "7.1",
        "chunked over the limit",
        CHUNKED + b"3e9\r\n" + b"x" * 1001 + b"\r\n0\r\n\r\n",
        413,
        "a limit of ours: 413",
    ),
    Case(
        "7.1.1",
        "extension",
        CHUNKED + b"5;a=b\r\nhello\r\n0\r\n\r\n",
        200,
        "MUST ignore unrecognised chunk extensions",
        "POST / 5",
    ),
    Case(
        "7.1.1",
        "extensions with BWS",
        CHUNKED + b"5; some; parameters=stuff\r\nhello\r\n0\r\n\r\n",
        200,
        "BWS around ';' MUST be parsed and removed",
        "POST / 5",
    ),
    Case(
        "7.1.1",
        "BWS before ';'",
        CHUNKED + b"5 ;a=b\r\nhello\r\n0\r\n\r\n",
        200,
        "BWS before ';' MUST be parsed and removed",
        "POST / 5",
    ),
    Case(
        "7.1.1",
        "BWS around '=' and quoted value",
        CHUNKED + b'5 ; a = "x; y" ;b\r\nhello\r\n0;z\r\n\r\n',
        200,
        "chunk-ext-val is a token or a quoted-string, BWS around '='",
        "POST / 5",
    ),
    Case(
        "7.1.1",
        "invalid extension",
        CHUNKED + b"5;a b\r\nhello\r\n0\r\n\r\n",
        400,
        "a chunk-ext-name is a token",
    ),
    Case(
        "7.1.1",
        "extension without a name",
        CHUNKED + b"5;=b\r\nhello\r\n0\r\n\r\n",
        400,
        "a chunk-ext has a name",
    ),
    Case(
        "7.1.2",
        "trailers kept apart",
        CHUNKED + b"5\r\nhello\r\n0\r\nX-Sum: 1\r\nHost: evil\r\n\r\n",
        200,
        "trailers are not headers (RFC 9110, 6.5.1: MUST NOT merge)",
        "POST / 5 host=a trailers=x-sum",
    ),
    Case(
        "7.1.2",
        "trailer with obs-fold",
        CHUNKED + b"0\r\nX: a\r\n b\r\n\r\n",
        400,
        "trailer field lines have the syntax of 5",
    ),
    Case(
        "7.1.2",
        "too many trailers",
        CHUNKED + b"0\r\n" + b"".join(b"T%d: v\r\n" % i for i in range(11)) + b"\r\n",
        431,
        "a limit of ours: 431",
    ),
    # -- 9: connection management
    Case(
        "9.3",
        "keep-alive pipelined",
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n" + NEXT,
        200,
        "HTTP/1.1 persists: the next request is served",
        "GET /1 0",
    ),
    Case(
        "9.3",
        "HTTP/1.0 keep-alive",
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" + NEXT,
        200,
        "HTTP/1.0 with keep-alive persists",
        "GET / 0",
    ),
    Case(
        "9.6",
        "Connection: close",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" + NEXT,
        200,
        "MUST NOT process further requests after 'close'",
        "GET / 0",
    ),
]

#: The cases after which the connection stays open and serves NEXT.
PERSISTENT = {"keep-alive pipelined", "HTTP/1.0 keep-alive", "no length: no body"}


def test_every_section_from_2_to_9_has_cases() -> None:
    sections = {case.section.split(".")[0] for case in CASES}
    # 4 (status line) is checked on every answer by h11; 8 and the rest of 9 below.
    assert sections >= {"2", "3", "5", "6", "7", "9"}
    assert len({case.name for case in CASES}) == len(CASES)


# ------------------------------------------------------------------------------ tier 1
@dataclass
class Served:
    answers: bytes
    seen: list[str]
    connection: Any
    transport: FakeTransport


def describe(request: HttpRequest) -> str:
    """What the app saw: method, target, body length, then fields it should see."""
    parts = [request.method, request.target.decode("latin-1"), str(len(request.body))]
    plain = (b"host", b"transfer-encoding", b"content-length", b"connection", b"expect")
    extra = [(n, v) for n, v in request.headers if n.lower() not in plain]
    if extra or request.trailers:
        parts.append(f"host={(request.host or b'').decode('latin-1')}")
        parts += [f"{n.decode().lower()}={v.decode('latin-1')}" for n, v in extra]
    if request.trailers:
        parts.append("trailers=" + ",".join(n.decode().lower() for n, _ in request.trailers))
    return " ".join(parts)


def describe_scope(scope: dict[str, Any], body: bytes) -> str:
    """What an ASGI app saw, as :func:`describe` says it (ASGI has no request trailers)."""
    target = scope["raw_path"].decode("latin-1")
    if scope["query_string"]:
        target += "?" + scope["query_string"].decode("latin-1")
    parts = [scope["method"], target, str(len(body))]
    plain = (b"host", b"transfer-encoding", b"content-length", b"connection", b"expect")
    extra = [(n, v) for n, v in scope["headers"] if n not in plain]
    if extra:
        host = next((v for n, v in scope["headers"] if n == b"host"), b"")
        parts.append(f"host={host.decode('latin-1')}")
        parts += [f"{n.decode()}={v.decode('latin-1')}" for n, v in extra]
    return " ".join(parts)


def asgi_seen(seen: str) -> str:
    """What an ASGI app sees of a request the raw handler sees as ``seen``: the path of an
    absolute-form target, and no trailers (nor the host they made :func:`describe` add)."""
    parts = seen.split(" ")
    if parts[1].startswith("http://"):
        parts[1] = parts[1][parts[1].index("/", len("http://")) :]
    if any(part.startswith("trailers=") for part in parts):
        parts = [p for p in parts if not p.startswith("trailers=")]
        if len(parts) == 4 and parts[3].startswith("host="):
            parts.pop()
    return " ".join(parts)


async def receive_body(receive: Any) -> bytes | None:
    """The whole request body an ASGI app receives, or None if the client went first (the
    request never arrived whole: the server answered the peer itself)."""
    body: bytes = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def recording_asgi(seen: list[str], parts: tuple[bytes, ...] = ()) -> Any:
    """An ASGI app that records what it saw and answers ``ok`` (or ``parts``, streamed)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = await receive_body(receive)
        if body is None:
            return
        seen.append(describe_scope(scope, body))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in parts:
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"" if parts else b"ok"})

    return app


def settle(loop: asyncio.AbstractEventLoop) -> None:
    """Run the loop until the ASGI apps it started have nothing left to do for now."""
    for _ in range(5):
        loop.run_until_complete(asyncio.sleep(0))


def close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is still waiting (an app waiting for a body that never came), close."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.close()


def serve(raw: bytes, pieces: int = 0, mode: str = "raw") -> Served:
    """``raw`` through a raw-handler connection, or an ASGI app's (``mode`` "asgi"), in
    ``pieces``-byte reads if given."""
    seen: list[str] = []

    def handler(request: HttpRequest) -> Response:
        seen.append(describe(request))
        return Response(b"ok")

    loop = asyncio.new_event_loop()
    try:
        if mode == "asgi":
            factory = asgi_protocol_factory(recording_asgi(seen), limits=LIMITS, lifespan="off")
            connection = factory(loop=loop)
        else:
            connection = http_protocol_factory(handler, limits=LIMITS)(loop=loop)
        transport = FakeTransport()
        connection.connection_made(transport)
        step = pieces or len(raw)
        for i in range(0, len(raw), step):
            connection.data_received(raw[i : i + step])
            if mode == "asgi":
                settle(loop)
        return Served(transport.take(), seen, connection, transport)
    finally:
        close_loop(loop)


#: The byte-level paths: the raw handler's consumer and the ASGI one.
PATHS = pytest.mark.parametrize("mode", ["raw", "asgi"])


def h11_client_reads(answers: bytes, method: str = "GET") -> list[int]:
    """The statuses h11, as a strict client, reads in ``answers`` (it raises if invalid)."""
    client = h11.Connection(h11.CLIENT)
    statuses: list[int] = []
    client.receive_data(answers)
    while True:
        client.send(h11.Request(method=method, target="/", headers=[("Host", "a")]))
        client.send(h11.EndOfMessage())
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                return statuses
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                statuses.append(event.status_code)
            if isinstance(event, h11.EndOfMessage):
                break
        if client.our_state is h11.MUST_CLOSE or client.their_state is h11.MUST_CLOSE:
            return statuses
        client.start_next_cycle()


def check_rejection(served: Served, status: int) -> None:
    """One answer, the right status, a one-line reason, close, nothing more to the app."""
    answers = served.answers
    head, _, body = answers.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), answers
    assert b"\r\nconnection: close" in head
    assert body.count(b"\n") == 1 and body.endswith(b"\n"), body
    assert re.fullmatch(rb"%d [A-Za-z -]+: [^\r\n]+\n" % status, body), body
    assert h11_client_reads(answers) == [status]
    assert served.connection.state in (State.LINGERING, State.CLOSED)
    assert served.transport.eof_written  # closed after the answer (lingering)
    assert "GET /next 0" not in served.seen


@PATHS
@pytest.mark.parametrize("case", CASES, ids=lambda case: f"{case.section} {case.name}")
def test_case(case: Case, mode: str) -> None:
    served = serve(case.raw, mode=mode)
    first = re.match(rb"HTTP/1\.1 (\d{3}) ", served.answers)
    assert first is not None, served.answers
    assert int(first.group(1)) == case.status, served.answers
    if case.status >= 400:
        check_rejection(served, case.status)
        assert served.seen == []
        return
    assert case.seen is not None
    assert served.seen[0] == (asgi_seen(case.seen) if mode == "asgi" else case.seen)
    statuses = h11_client_reads(served.answers)
    if case.name in PERSISTENT:
        assert statuses == [200, 200] and served.seen[1] == "GET /next 0"
    else:
        assert "GET /next 0" not in served.seen


@PATHS
@pytest.mark.parametrize(
    "case", [c for c in CASES if b"Transfer-Encoding: chunked" in c.raw], ids=lambda c: c.name
)
def test_chunked_cases_read_in_pieces(case: Case, mode: str) -> None:
    # 7.1: the framing does not depend on how the bytes are split.
    expected = case.seen if case.seen is None or mode == "raw" else asgi_seen(case.seen)
    for pieces in (1, 2, 3, 7):
        served = serve(case.raw, pieces, mode)
        assert served.answers.startswith(b"HTTP/1.1 %d " % case.status), (pieces, served.answers)
        if expected is not None:
            assert served.seen[:1] == [expected]


@PATHS
def test_a_rejected_request_after_a_good_one(mode: str) -> None:
    # 9.3.2: answers in request order; the error answer is the last one.
    raw = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\n\r\n" + NEXT
    served = serve(raw, mode=mode)
    assert h11_client_reads(served.answers) == [200, 400]
    assert served.seen == ["GET /1 0"]


@PATHS
def test_head_answers_have_no_body(mode: str) -> None:
    # 6.3, item 1: a response to HEAD has no body, whatever its headers say.
    served = serve(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n" + NEXT, mode=mode)
    assert h11_client_reads(served.answers[: served.answers.index(b"HTTP/1.1", 10)], "HEAD") == [
        200
    ]
    assert served.answers.count(b"HTTP/1.1 200") == 2


@PATHS
def test_100_continue_then_the_answer(mode: str) -> None:
    # RFC 9110, 10.1.1: an interim 100, then the final answer; valid for a strict client.
    served = serve(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nab",
        mode=mode,
    )
    assert served.answers.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 ")
    assert h11_client_reads(served.answers) == [200]


@PATHS
def test_http_1_0_gets_no_transfer_encoding(mode: str) -> None:
    # 6.1: MUST NOT send Transfer-Encoding unless the request is HTTP/1.1.
    def streaming(request: HttpRequest) -> Response:
        return Response(iter([b"a", b"b"]))

    loop = asyncio.new_event_loop()
    try:
        if mode == "asgi":
            factory = asgi_protocol_factory(recording_asgi([], (b"a", b"b")), lifespan="off")
            connection = factory(loop=loop)
        else:
            connection = http_protocol_factory(streaming)(loop=loop)
        transport = FakeTransport()
        connection.connection_made(transport)
        connection.data_received(b"GET / HTTP/1.0\r\n\r\n")
        settle(loop)
        answer = transport.take()
    finally:
        close_loop(loop)
    assert b"transfer-encoding" not in answer.lower() and answer.endswith(b"ab")
    assert b"connection: close" in answer


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\n",  # head cut short
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nabc",  # body cut short
        CHUNKED + b"5\r\nhello\r\n",  # no last chunk
        CHUNKED + b"0\r\nX: 1\r\n",  # trailer section not ended
    ],
    ids=["head", "content-length body", "chunked body", "trailer section"],
)
@PATHS
def test_incomplete_messages_never_reach_the_app(raw: bytes, mode: str) -> None:
    # 8: a message whose framing is not complete is incomplete, and not served (an ASGI
    # app may have started, but it never gets a whole body, nor answers).
    served = serve(raw, mode=mode)
    served.connection.eof_received()
    assert served.seen == [] and served.answers == b""


# ------------------------------------------------------------------------ the decoder
def test_the_decoder_gives_the_parser_canonical_lines() -> None:
    decoder = ChunkedDecoder(100)
    data = b'5 ; a = "b" \r\nhello\r\n0\r\nT: 1\r\n\r\nGET'
    out, stop = decoder.feed(data, 0)
    assert out == b"5\r\nhello\r\n0\r\nT: 1\r\n\r\n"
    assert decoder.done and data[stop:] == b"GET"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"5\nhello", 400),
        (b"x" * 5000, 400),
        (b"0\r\n" + b"T: " + b"v" * 200 + b"\r\n\r\n", 431),
    ],
)
def test_the_decoder_refuses(data: bytes, status: int) -> None:
    with pytest.raises(PeerError) as error:
        ChunkedDecoder(100).feed(data, 0)
    assert error.value.status == status


# ------------------------------------------------------------------------------ tier 2
# The seven reproductions of issue 10, each followed (pipelined) by NEXT, which must never
# reach the app: (name, bytes, status, what the app must see of the request if served).
SEVEN: list[tuple[str, bytes, int, dict[str, str] | None]] = [
    (
        "1 trailers",
        CHUNKED + b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\nHost: evil\r\n\r\n",
        200,
        {"host": "a", "body": "hello", "trailers": "X-Trailer"},
    ),
    ("2 two Host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, None),
    ("3 no Host", b"GET / HTTP/1.1\r\n\r\n", 400, None),
    (
        "4 HTTP/1.0 and TE",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        None,
    ),
    ("5 OWS", b"GET / HTTP/1.1\r\nHost: a \t\r\nX: v \t \r\n\r\n", 200, {"host": "a", "x": "v"}),
    (
        "6 chunk extensions",
        CHUNKED + b"5; some; parameters=stuff\r\nhello\r\n6 ;a=b\r\n world\r\n0\r\n\r\n",
        200,
        {"host": "a", "body": "hello world"},
    ),
    ("7 invalid target", b"GET s://]ufd/: HTTP/1.1\r\nHost: a\r\n\r\n", 400, None),
    ("7 fragment", b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", 400, None),
]
MODES = pytest.mark.parametrize("mode", ["raw", "wsgi", "threaded", "asgi"])


def recording_app(mode: str, seen: list[dict[str, str]]) -> Any:
    if mode == "raw":

        def raw(request: HttpRequest) -> Response:
            record = {"target": request.target.decode("latin-1"), "body": request.body.decode()}
            for name, value in request.headers:
                record[name.decode().lower()] = value.decode("latin-1")
            record["trailers"] = ",".join(n.decode() for n, _ in request.trailers)
            seen.append(record)
            return Response(b"ok")

        return raw
    if mode == "asgi":

        async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
            body = await receive_body(receive)
            if body is None:
                return
            record = {"target": scope["path"], "body": body.decode()}
            for name, value in scope["headers"]:
                record[name.decode()] = value.decode("latin-1")
            seen.append(record)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        return asgi

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        record = {"target": environ["PATH_INFO"], "body": environ["wsgi.input"].read().decode()}
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                record[key[5:].lower()] = value
        seen.append(record)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    return wsgi


@MODES
def test_the_seven_over_loopback(run: Runner, mode: str) -> None:
    seen: list[dict[str, str]] = []
    app = recording_app(mode, seen)

    async def main() -> None:
        kind = "raw" if mode == "raw" else "wsgi"
        threads = 2 if mode == "threaded" else 0
        factory = asgi_protocol_factory(app, limits=LIMITS) if mode == "asgi" else None
        async with serving(
            app, kind=kind, threads=threads, limits=LIMITS, factory=factory
        ) as server:
            for name, raw, status, expected in SEVEN:
                seen.clear()
                reader, writer = await connect(server)
                writer.write(raw + NEXT)
                reply = await read_reply(reader)
                assert reply.status == status, (name, reply)
                if status >= 400:
                    assert reply.header("connection") == "close", name
                    assert reply.body.count(b"\n") == 1, name
                    assert await read_eof(reader) == b"", name
                    assert seen == [], name
                else:
                    assert expected is not None
                    record = seen[0]
                    for key, value in expected.items():
                        if key == "trailers" and mode != "raw":
                            continue  # WSGI and ASGI have no request trailers: never seen
                        assert record.get(key) == value, (name, key, record)
                    assert "x-trailer" not in record and "trailer" not in record, name
                    assert (await read_reply(reader)).status == 200, name  # NEXT, kept alive
                writer.close()
                # The worker keeps serving: a new connection is answered.
                reader, writer = await connect(server)
                writer.write(NEXT)
                assert (await read_reply(reader)).status == 200, name
                writer.close()

    run(main())


# ------------------------------------------------------------------------------ tier 3
def h11_verdict(raw: bytes) -> int:
    """What h11 as a server makes of ``raw``: 200 if it reads a whole request, its error
    status hint if it refuses it, 0 if it waits for more."""
    server = h11.Connection(h11.SERVER, max_incomplete_event_size=LIMITS.max_head_size)
    server.receive_data(raw)
    try:
        while True:
            event = server.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return 0
            if isinstance(event, h11.EndOfMessage):
                return 200
    except h11.RemoteProtocolError as error:
        return error.error_status_hint


def our_verdict(raw: bytes, mode: str = "raw") -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", serve(raw, mode=mode).answers)
    return int(match.group(1)) if match else 0


#: Where h11 and we answer differently, and the section that justifies our answer.
DISAGREEMENTS: dict[str, str] = {
    # 2: message format and version
    "leading empty line": "2.2: SHOULD ignore an empty line before the request-line; h11 refuses",
    "bare LF line ends": "2.2: accepting a bare LF is a MAY; we refuse (one line end, one parse)",
    "HTTP/2.0 as text": "2.3, RFC 9110 15.6.6: a major version we lack is 505; h11 serves it",
    "HTTP/0.9 line": "2.3: HTTP/0.9 is not supported: 505; h11 serves it",
    "HTTP/0.9": "2.3: HTTP/0.9 is not supported: 505; h11 serves it",
    "no version (HTTP/0.9)": "2.3: an HTTP/0.9 request-line: 505; h11 says 400",
    "bad version": "RFC 9110 2.5 SHOULD serve HTTP/1.2 as 1.1; llhttp refuses it (known deviation)",
    # 3: request line, target, Host
    "lowercase method": "3, RFC 9110 9.1: methods are case-sensitive, 'get' is unknown; h11 serves",
    "unknown method": "RFC 9110 9.1 SHOULD say 501; llhttp refuses unknown methods with 400",
    "target longer than the limit": "3: MUST answer 414 past our limit; h11 has none",
    "long target": "3: MUST answer 414 past our limit; h11 has none",
    "fragment in target": "3.2: no form of request-target has a fragment; h11 serves it",
    "invalid absolute-form": "3.2: none of the four forms: 400; h11 accepts any VCHAR",
    "no form at all": "3.2: none of the four forms: 400; h11 accepts any VCHAR",
    "Host invalid": "3.2: MUST answer 400 to an invalid Host value; h11 does not check it",
    "Host with userinfo": "3.2: Host is uri-host [':' port]; h11 does not check it",
    "absolute-form with userinfo": "3.2.2, RFC 9110 4.2.4: userinfo is an error; h11 serves it",
    "CONNECT origin-form": "3.2.3: CONNECT takes the authority-form only; h11 does not check",
    "CONNECT without port": "3.2.3: the authority-form needs a port; h11 does not check",
    "authority-form without CONNECT": "3.2.3: the authority-form is for CONNECT only",
    "GET *": "3.2.4: the asterisk-form is for OPTIONS only; h11 serves it",
    # 5: fields
    "obs-fold": "5.2: MUST reject (400) or replace with SP: we reject, h11 replaces; both conform",
    "obsolete line folding": "5.2: MUST reject (400) or replace with SP: we reject, h11 replaces",
    "too many fields": "a limit of ours (RFC 6585 5, 431); h11 has none",
    "too many headers": "a limit of ours (RFC 6585 5, 431); h11 has none",
    "field longer than the limit": "a limit of ours (431); h11 has none",
    "header field too large": "a limit of ours (431); h11 has none",
    "head too large": "a limit of ours (431); h11 bounds the head at a larger size",
    # 6: framing
    "chunked not final": "6.3: chunked not final in a request MUST be 400; h11 says 501",
    "chunked not last": "6.3: chunked not final in a request MUST be 400; h11 says 501",
    "only an unknown coding": "6.3: chunked not final in a request MUST be 400; h11 says 501",
    "chunked twice": "6.1: chunked MUST NOT be applied twice: 400; h11 says 501",
    "HTTP/1.0 with Transfer-Encoding": "6.1: MUST treat the framing as faulty; h11 reads chunked",
    "Content-Length and Transfer-Encoding": "6.3: ought to be an error: 400; h11 lets TE win",
    "content-length and chunked": "6.3: ought to be an error: 400; h11 lets TE win",
    "Content-Length list": "RFC 9110 8.6: accepting a list of one value is a MAY; we refuse",
    "body over the limit": "a limit of ours (413); h11 has none",
    "chunked over the limit": "a limit of ours (413); h11 has none",
    "chunked body over the limit": "a limit of ours (413); h11 has none",
    # 7: chunked
    "chunk size overflow": "7.1: MUST prevent overflow: we refuse at once, h11 waits for data",
    "BWS before ';'": "7.1.1: BWS before ';' MUST be parsed and removed; h11 refuses it",
    "BWS around '=' and quoted value": "7.1.1: BWS MUST be parsed and removed; h11 refuses it",
    "invalid extension": "7.1.1: a chunk-ext-name is a token; h11 ignores all after ';'",
    "extension without a name": "7.1.1: a chunk-ext has a name; h11 ignores all after ';'",
    "trailer with obs-fold": "5.2 applies to trailer lines: we reject, h11 replaces",
    "too many trailers": "a limit of ours (431); h11 has none",
}


def corpus() -> Iterator[tuple[str, bytes]]:
    for case in CASES:
        yield case.name, case.raw
    for name, raw, _ in BAD_REQUESTS:
        yield name, raw


def differences(mode: str = "raw") -> tuple[int, dict[str, tuple[int, int]]]:
    """(how many agree, {name: (our status, h11's)} where the statuses differ)."""
    found: dict[str, tuple[int, int]] = {}
    agreements = 0
    for name, raw in corpus():
        ours, theirs = our_verdict(raw, mode), h11_verdict(raw)
        if ours == theirs:
            agreements += 1
        else:
            found[name] = (ours, theirs)
    return agreements, found


@PATHS
def test_differential_against_h11(mode: str) -> None:
    agreements, found = differences(mode)
    unexplained = {name: v for name, v in found.items() if name not in DISAGREEMENTS}
    assert not unexplained, f"disagreements with h11 without a reason: {unexplained}"
    stale = set(DISAGREEMENTS) - set(found)
    assert not stale, f"listed as disagreements, but h11 agrees now: {stale}"
    assert agreements > 0


def test_the_note_lists_every_disagreement() -> None:
    note = (Path(__file__).parent.parent / "docs" / "http-conformance.md").read_text()
    for name in DISAGREEMENTS:
        assert f"| {name} |" in note, name
