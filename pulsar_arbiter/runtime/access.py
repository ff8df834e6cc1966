"""The worker's side of the access log and of ``--proxy-headers``.

Both are bound only when their setting is on, so a server without an access log or proxy
headers runs none of this code: :func:`recording_consumer` subclasses the HTTP consumer
to remember each answer's status and length (two attribute writes per response), and
:class:`AccessLog` listens to the server's ``pre_request``/``post_request``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any, cast

from ..forwarded import ForwardedResolver
from ..http.websocket import WebSocketConsumer
from ..ops.accesslog import AccessFormatter, AccessRecord

__all__ = ["AccessLog", "proxy_headers_handler", "proxy_headers_wsgi", "recording_consumer"]

ACCESS_LOGGER = logging.getLogger("pulsar_arbiter.access")


def recording_consumer(factory: Callable[..., Any]) -> type[Any]:
    """A subclass of HTTP consumer class ``factory`` that records the status, length and
    headers of its answer for the access log."""
    base: type[Any] = cast(type, factory)

    class Recording(base):  # type: ignore[misc]
        answer_status = 0
        answer_length: int | None = None
        answer_headers: Any = ()

        def send(self, response: Any) -> None:
            self.answer_status = response.status
            self.answer_headers = response.headers
            body = response.body
            if isinstance(body, (bytes, bytearray, memoryview)):
                self.answer_length = len(body)
            super().send(response)

        def frame(self, status: int, line: bytes, block: bytes, length: Any, *a: Any) -> Any:
            self.answer_status = status
            self.answer_length = length
            return super().frame(status, line, block, length, *a)

    Recording.__name__ = Recording.__qualname__ = base.__name__
    return Recording


class AccessLog:
    """Writes one line per answered request to the ``pulsar_arbiter.access`` logger."""

    def __init__(
        self, formatter: AccessFormatter, resolver: ForwardedResolver | None = None
    ) -> None:
        self.formatter = formatter
        self.resolver = resolver  # --proxy-headers: WSGI requests keep only the peer
        self._started: dict[Any, float] = {}

    def watch(self, server: Any) -> None:
        server.bind_event("pre_request", self._pre_request)
        server.bind_event("post_request", self._post_request)

    def _pre_request(self, consumer: Any, **kw: Any) -> None:
        self._started[consumer] = time.perf_counter()

    def _post_request(self, consumer: Any, exc: BaseException | None = None, **kw: Any) -> None:
        started = self._started.pop(consumer, None)
        if isinstance(consumer, WebSocketConsumer):
            return  # the session's line is its handshake's, "GET /ws ..." 101, already written
        duration = time.perf_counter() - started if started is not None else 0.0
        request = getattr(consumer, "_request", None)
        if request is None or not hasattr(request, "method"):
            # A raw consumer: no request line, the peer and the consumer's name.
            error = f" error={exc!r}" if exc else ""
            ACCESS_LOGGER.info(
                "[%d] %s %s%s", os.getpid(), consumer.address, type(consumer).__name__, error
            )
            return
        address = request.address
        if self.resolver is not None and request.client is None:
            found = self.resolver.resolve(address, request.headers)
            if found is not None and found.client is not None:
                address = found.client
        status = getattr(consumer, "answer_status", 0) or (500 if exc is not None else 0)
        record = AccessRecord(
            remote=str(address[0]) if isinstance(address, tuple) else str(address or "-"),
            method=request.method,
            target=request.target.decode("latin-1"),
            version=f"HTTP/{request.version}",
            status=status,
            length=getattr(consumer, "answer_length", None),
            duration=duration,
            request_headers=request.headers,
            response_headers=getattr(consumer, "answer_headers", ()),
        )
        ACCESS_LOGGER.info("%s", self.formatter.format(record))


def _peer(environ: dict[str, Any]) -> Any:
    return (environ.get("REMOTE_ADDR", ""), 0)


def proxy_headers_wsgi(app: Callable[..., Any], allow: str) -> Callable[..., Any]:
    """WSGI middleware: REMOTE_ADDR, REMOTE_PORT and wsgi.url_scheme from the forwarded
    headers of trusted peers (the connection's peer is REMOTE_ADDR)."""
    resolver = ForwardedResolver(allow)

    def proxied(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        headers: list[tuple[bytes, bytes]] = []
        for key, name in (
            ("HTTP_FORWARDED", b"forwarded"),
            ("HTTP_X_FORWARDED_FOR", b"x-forwarded-for"),
            ("HTTP_X_FORWARDED_PROTO", b"x-forwarded-proto"),
        ):
            if key in environ:
                headers.append((name, environ[key].encode("latin-1")))
        if headers:
            found = resolver.resolve(_peer(environ), headers)
            if found is not None:
                if found.client is not None:
                    environ["REMOTE_ADDR"] = found.client[0]
                    environ["REMOTE_PORT"] = str(found.client[1]) if found.client[1] else ""
                if found.scheme is not None:
                    environ["wsgi.url_scheme"] = found.scheme
        return app(environ, start_response)

    return proxied


def proxy_headers_asgi(app: Callable[..., Any], allow: str) -> Callable[..., Any]:
    """ASGI middleware: the scope's ``client`` and ``scheme`` from the forwarded headers of
    trusted peers (the connection's peer is the scope's ``client``)."""
    resolver = ForwardedResolver(allow)

    async def proxied(scope: Any, receive: Any, send: Any) -> Any:
        kind = scope["type"]
        if kind == "http" or kind == "websocket":
            found = resolver.resolve(scope.get("client") or ("", 0), scope["headers"])
            if found is not None:
                if found.client is not None:
                    scope["client"] = (found.client[0], found.client[1] or 0)
                if found.scheme is not None:
                    scheme = found.scheme
                    if kind == "websocket":  # ws over http, wss over https
                        scheme = {"https": "wss", "http": "ws"}.get(scheme, scheme)
                    scope["scheme"] = scheme
        return await app(scope, receive, send)

    return proxied


def proxy_headers_handler(handler: Callable[..., Any], allow: str) -> Callable[..., Any]:
    """Raw-handler wrapper: the request's ``client`` and ``scheme`` from the forwarded
    headers of trusted peers."""
    resolver = ForwardedResolver(allow)

    def proxied(request: Any) -> Any:
        found = resolver.resolve(request.connection.address, request.headers)
        if found is not None:
            if found.client is not None:
                request.client = found.client
            if found.scheme is not None:
                request.scheme = found.scheme
        return handler(request)

    return proxied
