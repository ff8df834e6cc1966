"""Hello, World for the peer servers: one ASGI, one RSGI and one WSGI callable.

    uvicorn peer_hello:asgi            granian --interface asgi peer_hello:asgi
    gunicorn peer_hello:wsgi           granian --interface wsgi peer_hello:wsgi
                                       granian --interface rsgi peer_hello:rsgi

Why written like this: the benchmark compares servers, not apps, so every app
here is as cheap as its interface allows - a constant body and prebuilt
headers, with ``Content-Length`` and ``text/plain`` as testapps/hello.py sends -
and the difference between rows is what each server charges per request.
The ASGI app also answers the lifespan protocol, so neither uvicorn nor
granian has to fall back (and log) when it is not supported.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

BODY = b"Hello, World!"
LENGTH = str(len(BODY))

ASGI_START: dict[str, Any] = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", LENGTH.encode())],
}
ASGI_BODY: dict[str, Any] = {"type": "http.response.body", "body": BODY}
RSGI_HEADERS = [("content-type", "text/plain"), ("content-length", LENGTH)]
WSGI_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", LENGTH)]

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def asgi(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """ASGI 3 app: the hello response for HTTP, acknowledgements for lifespan."""
    if scope["type"] == "http":
        await send(ASGI_START)
        await send(ASGI_BODY)
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


async def rsgi(scope: Any, protocol: Any) -> None:
    """Granian's RSGI app: one bytes response, no awaits needed."""
    protocol.response_bytes(200, RSGI_HEADERS, BODY)


def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """WSGI app, the same shape as testapps.hello:wsgi."""
    start_response("200 OK", WSGI_HEADERS)
    return [BODY]
