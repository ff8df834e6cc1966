"""The raw-handler API: the parsed :class:`HttpRequest` and the :class:`Response`.

A raw handler is ``handler(request: HttpRequest) -> Response`` (or an ``async def``
returning one), called once the whole request has arrived. A Response encodes its status
line and headers on first use and caches them, so one built at import time and returned
for every request costs no encoding at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote_to_bytes

from httptools import parse_url
from mypy_extensions import mypyc_attr

from .wire import ResponseHead

if TYPE_CHECKING:
    from .connection import HttpConnection

__all__ = ["INTERNAL_ERROR", "BodyStream", "HttpRequest", "Response"]


class BodyStream(Protocol):
    """Where a request's body goes as it arrives, instead of :attr:`HttpRequest.body`.

    A consumer that streams the body (a threaded WSGI app's ``wsgi.input``) sets
    ``request.body_stream`` in ``on_head``; the connection then calls ``feed`` with each
    chunk, ``feed_eof`` at the end, and ``fail`` if the peer breaks the request.
    """

    def feed(self, data: bytes) -> None: ...

    def feed_eof(self) -> None: ...

    def fail(self, exc: BaseException) -> None: ...


@mypyc_attr(allow_interpreted_subclasses=True)
class HttpRequest:
    """One parsed request: request line, headers and (once complete) body.

    ``headers`` is the list of ``(name, value)`` byte pairs as received (names keep their
    case, values lose their surrounding whitespace); :meth:`header` looks one up
    case-insensitively. ``trailers`` are the fields of a chunked body's trailer section,
    kept apart (never merged into ``headers``; fields not allowed in a trailer are
    dropped), complete once the request is. ``host`` is the Host field's value (None
    for an HTTP/1.0 request without one). ``path`` is percent-decoded, ``query`` is the
    raw query string, ``target`` the raw request-target (already checked to be in one
    of RFC 9112's four forms).
    """

    __slots__ = (
        "_body",
        "_body_size",
        "_codings",
        "body_stream",
        "chunked",
        "client",
        "complete",
        "connection",
        "content_length",
        "expect_continue",
        "headers",
        "host",
        "keep_alive",
        "method",
        "scheme",
        "simple",
        "target",
        "trailers",
        "upgrade",
        "version",
    )

    def __init__(self, connection: HttpConnection) -> None:
        self.connection = connection
        # The client and scheme a trusted proxy named (--proxy-headers), else None.
        self.client: Any = None
        self.scheme: str | None = None
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.host: bytes | None = None
        # A chunked request gets a list of its own when its head is complete.
        self.trailers: Sequence[tuple[bytes, bytes]] = ()
        self._codings: list[bytes] | None = None
        self.method = "GET"
        self.version = "1.1"
        self.keep_alive = True
        self.simple = True
        self.upgrade = False
        self.content_length: int | None = None
        self.chunked = False
        self.expect_continue = False
        self.complete = False
        self._body: bytes | bytearray = b""
        self._body_size = 0
        self.body_stream: BodyStream | None = None

    def __repr__(self) -> str:
        return f"<HttpRequest {self.method} {self.target.decode('latin-1')!r}>"

    @property
    def body(self) -> bytes:
        """The body received so far: all of it once ``complete``."""
        body = self._body
        if type(body) is not bytes:
            body = self._body = bytes(body)
        return body

    def _add_body(self, chunk: bytes) -> None:
        body = self._body
        if not body:
            self._body = chunk
        elif type(body) is bytes:
            self._body = bytearray(body) + chunk
        else:
            body += chunk

    @property
    def address(self) -> Any:
        """The peer's address: the client's, when a trusted proxy named it."""
        client = self.client
        return client if client is not None else self.connection.address

    @property
    def has_body(self) -> bool:
        """True when the head announced a body (a non-zero length, or chunked)."""
        return bool(self.content_length) or self.chunked

    @property
    def authority(self) -> bytes | None:
        """Where the request is for: the target's authority for an absolute-form target
        (RFC 9112, 3.2.2: the Host field is then ignored), the Host field's value else."""
        target = self.target
        if target[:1] != b"/" and target != b"*" and self.method != "CONNECT":
            authority = target.partition(b"://")[2]
            for stop in (b"/", b"?"):
                authority = authority.partition(stop)[0]
            return authority
        if self.method == "CONNECT":
            return target
        return self.host

    def split_target(self) -> tuple[bytes, bytes]:
        """``(path, query)`` of the target, both still percent-encoded.

        An absolute-form target (``http://host/path?q``, proxies send them) is parsed;
        a CONNECT target (``host:port``) is all path.
        """
        target = self.target
        if target[:1] != b"/" and target != b"*":
            if self.method == "CONNECT":
                return target, b""
            url = parse_url(target)
            return url.path or b"/", url.query or b""
        path, _, query = target.partition(b"?")
        return path, query

    @property
    def raw_path(self) -> bytes:
        """The path of the target, still percent-encoded."""
        return self.split_target()[0]

    @property
    def path(self) -> str:
        """The path, percent-decoded, as a latin-1 string (WSGI's PATH_INFO rule)."""
        path = self.split_target()[0]
        if 37 in path:  # "%", as an int: see _as_bytes in wire.py
            path = unquote_to_bytes(path)
        return path.decode("latin-1")

    @property
    def query(self) -> str:
        """The raw query string, without the ``?``."""
        return self.split_target()[1].decode("latin-1")

    def header(self, name: str, default: str | None = None) -> str | None:
        """The value of header ``name`` (case-insensitive); repeats are joined by commas."""
        key = name.lower().encode("latin-1")
        values = [v for n, v in self.headers if n.lower() == key]
        if not values:
            return default
        return b", ".join(values).decode("latin-1")


@mypyc_attr(allow_interpreted_subclasses=True)
class Response:
    """What a raw handler answers: ``body``, ``status`` and ``headers``.

    ``body`` is bytes, an iterable of bytes or an async iterable of bytes. ``headers`` are
    ``(name, value)`` pairs of str or bytes; ``content_type`` is a shortcut for one.
    Headers are encoded on first use and cached: treat a Response as immutable once it
    has been returned, and reuse static ones freely.
    """

    __slots__ = ("_encoded", "body", "headers", "status")

    def __init__(
        self,
        body: bytes | Iterable[bytes] | AsyncIterable[bytes] = b"",
        status: int = 200,
        headers: Iterable[tuple[str | bytes, str | bytes]] | None = None,
        content_type: str | bytes | None = None,
    ) -> None:
        self.body = body
        self.status = status
        self.headers: list[tuple[str | bytes, str | bytes]] = list(headers) if headers else []
        if content_type is not None:
            self.headers.append(("content-type", content_type))
        self._encoded: ResponseHead | None = None

    def __repr__(self) -> str:
        return f"<Response {self.status}>"

    def _encode(self) -> ResponseHead:
        encoded = self._encoded
        if encoded is None:
            encoded = self._encoded = ResponseHead(self.status, self.headers, self.body)
        return encoded


INTERNAL_ERROR = Response(
    b"500 Internal Server Error\n",
    status=500,
    content_type="text/plain; charset=utf-8",
)
