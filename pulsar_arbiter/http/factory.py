"""The protocol factory of an HTTP server, and the thread pool some apps run in.

``TcpServer(http_protocol_factory(handler), loop, address=...)`` serves a raw handler.
Other kinds of app bring their own consumer class:
:func:`pulsar_arbiter.http.wsgi.wsgi_protocol_factory` builds an
:class:`HttpProtocolFactory` whose consumers run a WSGI app. HTTP knows nothing of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from .connection import HttpConnection
from .consumer import HttpConsumer, RawHttpConsumer
from .limits import DEFAULT_LIMITS, Limits

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from .websocket import WebSocketSettings

__all__ = ["HttpProtocolFactory", "http_protocol_factory"]


class HttpProtocolFactory:
    """The protocol factory of an HTTP server: ``TcpServer(HttpProtocolFactory(app), ...)``.

    Every connection it makes serves ``app`` with ``consumer_factory`` (one consumer per
    request; :class:`RawHttpConsumer`, a raw handler, by default) within ``limits``.
    ``kind`` names the kind of app, for logs and ``repr``. ``threads`` > 0 is the size of
    the pool of threads (:attr:`executor`) the consumers may run the app in, so a
    blocking app does not block the loop; the pool is created on first use (after a
    fork) and shut down by :meth:`close`.
    """

    def __init__(
        self,
        app: Any,
        kind: str = "raw",
        threads: int = 0,
        limits: Limits | None = None,
        consumer_factory: Callable[..., HttpConsumer] | None = None,
    ) -> None:
        if not callable(app):
            raise TypeError(f"the HTTP app must be callable, got {app!r}")
        if not isinstance(threads, int) or threads < 0:
            raise ValueError(f"threads must be a non-negative integer, got {threads!r}")
        if consumer_factory is None:
            if kind != "raw":
                raise ValueError(
                    f"a {kind!r} HTTP app needs its consumer_factory "
                    "(WSGI apps: pulsar_arbiter.http.wsgi.wsgi_protocol_factory)"
                )
            consumer_factory = RawHttpConsumer
        if threads and kind == "raw":
            raise ValueError("threads only apply to WSGI apps")
        self.app = app
        self.kind = kind
        self.threads = threads
        self.limits = limits or DEFAULT_LIMITS
        self._executor: ThreadPoolExecutor | None = None
        self.consumer_factory = consumer_factory
        #: How its WebSocket connections behave (the ``--ws-*`` flags); None: defaults.
        self.websocket: WebSocketSettings | None = None

    def __repr__(self) -> str:
        return f"<HttpProtocolFactory {self.kind} {self.app!r} threads={self.threads}>"

    def __call__(self, **kw: Any) -> HttpConnection:
        return HttpConnection(self.consumer_factory, http=self, **kw)

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The thread pool of threaded apps, created on first use."""
        executor = self._executor
        if executor is None:
            from concurrent.futures import ThreadPoolExecutor

            executor = self._executor = ThreadPoolExecutor(
                max_workers=self.threads or 1, thread_name_prefix="pulsar-wsgi"
            )
        return executor

    def close(self, wait: bool = True) -> None:
        """Shut the thread pool down (if one was started): a server that stops its
        threads before its process exits (the tests do) calls it."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=wait)


def http_protocol_factory(
    app: Any,
    kind: Literal["raw"] = "raw",
    limits: Limits | None = None,
) -> HttpProtocolFactory:
    """The protocol factory serving raw handler ``app`` over HTTP/1.1.

    ``app`` is ``handler(request) -> Response`` (or an ``async def`` returning one);
    ``limits`` bounds what a peer may send (:class:`Limits`). Serve it with
    ``TcpServer(http_protocol_factory(app), loop, address=...)``. WSGI apps are served by
    :func:`pulsar_arbiter.http.wsgi.wsgi_protocol_factory`.
    """
    if kind != "raw":
        raise ValueError(
            f"http_protocol_factory serves raw handlers, not {kind!r} apps "
            "(WSGI apps: pulsar_arbiter.http.wsgi.wsgi_protocol_factory)"
        )
    return HttpProtocolFactory(app, kind=kind, limits=limits)
