"""Hello, World over HTTP: a raw handler and a WSGI app, for the README and the benchmarks.

    python -m pulsar_arbiter --http testapps.hello:raw
    python -m pulsar_arbiter --wsgi testapps.hello:wsgi

Both answer every request with ``Hello, World!`` as ``text/plain``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pulsar_arbiter.http import HttpRequest, Response

BODY = b"Hello, World!"

# Built once: its status line and headers are encoded on first use, then reused.
HELLO = Response(BODY, content_type="text/plain")

WSGI_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def raw(request: HttpRequest) -> Response:
    """The raw handler: the same prebuilt Response for every request."""
    return HELLO


def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The WSGI app."""
    start_response("200 OK", WSGI_HEADERS)
    return [BODY]
