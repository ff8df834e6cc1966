"""What a peer may make one HTTP connection hold: every bound named, with why that number.

The bounds a peer can break are grouped in :class:`Limits` (one per server); breaking one
is the peer's fault and is answered (400, 413, 414, 431) before the connection closes.
The others bound what the server itself queues or copies.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_LIMITS",
    "JOIN_BODY_LIMIT",
    "LINGER_SECONDS",
    "MAX_BODY",
    "MAX_HEADERS",
    "MAX_HEADER_SIZE",
    "MAX_HEAD_SIZE",
    "MAX_PIPELINE",
    "MAX_REQUEST_LINE",
    "Limits",
]

# The request-target of one request line. 8190 is Apache's LimitRequestLine and
# gunicorn's ceiling: longer URLs are almost always attacks or bugs, and browsers, proxies
# and CDNs cap URLs near 8 KiB anyway. Broken: 414.
MAX_REQUEST_LINE = 8190
# Header fields per request. 100 is Apache's LimitRequestFields and gunicorn's default;
# real clients send 5 to 30. Broken: 431.
MAX_HEADERS = 100
# One header field, name plus value. 8190 is Apache's LimitRequestFieldSize and gunicorn's
# limit_request_field_size: large cookies and bearer tokens fit. Broken: 431.
MAX_HEADER_SIZE = 8190
# The whole head (request line and headers): what one request may make us hold before
# anything is dispatched. 64 KiB lets a few large cookies through and bounds the memory a
# slow sender of headers ties up. Broken: 431.
MAX_HEAD_SIZE = 64 * 1024
# A request body. 1 MiB is nginx's client_max_body_size default: enough for forms and
# JSON APIs, and since inline apps get the body buffered, it bounds what one connection
# holds. Uploads need it raised, per server. Broken: 413, announced (Content-Length) or not
# (chunked).
MAX_BODY = 1024 * 1024
# Parsed requests waiting behind the one being answered (pipelining) before reading
# pauses. Browsers do not pipeline; benchmark tools pipeline 16 or so. 64 keeps a fast
# pipelining client busy while bounding what a client that never reads can queue.
MAX_PIPELINE = 64
# Seconds a connection closed for a peer error keeps reading (and discarding) before it
# closes: closing with unread bytes makes the kernel send a reset, which can destroy the
# error answer before the client reads it. Bounded, so a client that keeps sending
# cannot keep the socket.
LINGER_SECONDS = 2.0
# Bodies at least this long are written apart from their head instead of joined to it:
# copying a large body to prepend 100 bytes costs more than a second write call.
JOIN_BODY_LIMIT = 16 * 1024


@dataclass(frozen=True)
class Limits:
    """Bounds on what a peer may send; each broken bound is answered and closes.

    ``max_request_line`` (414) bounds the request-target; ``max_headers`` and
    ``max_header_size`` (one field) and ``max_head_size`` (all of them, 431) bound the
    head; ``max_body`` (413) bounds a body, announced or chunked; ``max_pipeline`` is how
    many parsed requests may wait behind the one being answered before reading pauses;
    ``body_timeout`` is how long a threaded WSGI app waits for more body bytes.
    """

    max_request_line: int = MAX_REQUEST_LINE
    max_headers: int = MAX_HEADERS
    max_header_size: int = MAX_HEADER_SIZE
    max_head_size: int = MAX_HEAD_SIZE
    max_body: int = MAX_BODY
    max_pipeline: int = MAX_PIPELINE
    body_timeout: float = 60.0

    def __post_init__(self) -> None:
        for name in (
            "max_request_line",
            "max_headers",
            "max_header_size",
            "max_head_size",
            "max_body",
            "max_pipeline",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer, got {value!r}")
        if not self.body_timeout > 0:
            raise ValueError(f"Limits.body_timeout must be positive, got {self.body_timeout!r}")


DEFAULT_LIMITS = Limits()
