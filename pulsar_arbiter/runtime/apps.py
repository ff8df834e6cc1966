"""Turn the APP argument into the protocol factories a worker serves.

APP is ``module:attr`` importable from the current directory. It may be a
ProtocolConsumer subclass (served through Connection on stream binds, one consumer per
datagram on UDP binds), a callable returning a protocol factory (full control), or, with
``--wsgi`` / ``--http`` / ``--asgi``, a WSGI application, a raw HTTP handler or an ASGI
application.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..echo import Echo
from ..ops.config import Config
from ..protocols import Connection, ProtocolConsumer, ProtocolFactory
from ..servers import datagram_protocol_factory

if TYPE_CHECKING:
    from ..http import Limits
    from ..http.websocket import WebSocketSettings

__all__ = ["AppError", "Factories", "build_factories", "http_limits", "import_app"]

DEFAULT_APP = "pulsar_arbiter.echo:Echo"


class AppError(Exception):
    """The APP cannot be imported or served; the message says why, in one line."""


@dataclass(frozen=True)
class Factories:
    """The protocol factories for stream (TCP, Unix) binds and for datagram binds."""

    stream: ProtocolFactory
    datagram: ProtocolFactory | None
    description: str


def import_app(reference: str) -> Any:
    """Import ``module:attr`` (attr may be dotted) from the current directory."""
    module_name, sep, attr = reference.partition(":")
    if not sep or not module_name or not attr:
        raise AppError(f"APP must be 'module:attribute', got {reference!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise AppError(
            f"cannot import {module_name!r} for APP {reference!r}: {type(exc).__name__}: {exc}"
        ) from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AppError(f"module {module_name!r} has no attribute {attr!r}") from None
    return target


def http_limits(cfg: Config) -> Limits:
    """The HTTP limits of the --limit-request-* settings. The whole head stays bounded by
    the HTTP layer's own figure, raised only so that one longest request line and one
    longest field (plus the usual few headers) fit in it."""
    from ..http import Limits

    head = Limits().max_head_size
    return Limits(
        max_request_line=cfg.limit_request_line,
        max_headers=cfg.limit_request_fields,
        max_header_size=cfg.limit_request_field_size,
        max_head_size=max(head, cfg.limit_request_line + cfg.limit_request_field_size + 4096),
        max_body=cfg.limit_request_body,
    )


def websocket_settings(cfg: Config) -> WebSocketSettings:
    """The WebSocket behaviour of the --ws-* settings (raw handlers and ASGI apps)."""
    from ..http.websocket import WebSocketSettings

    return WebSocketSettings(
        ping_interval=cfg.ws_ping_interval,
        ping_timeout=cfg.ws_ping_timeout,
        max_size=cfg.ws_max_size,
        per_message_deflate=cfg.ws_per_message_deflate,
    )


def build_factories(cfg: Config, app: Any = None) -> Factories:
    """The protocol factories serving ``app`` (imported from ``cfg.app`` when not given)."""
    reference = cfg.app or DEFAULT_APP
    if app is None:
        app = Echo if cfg.app is None else import_app(reference)
    if cfg.asgi:
        from ..http.asgi import asgi_protocol_factory

        if cfg.proxy_headers:
            from .access import proxy_headers_asgi

            app = proxy_headers_asgi(app, cfg.forwarded_allow_ips)
        asgi = asgi_protocol_factory(
            app,
            limits=http_limits(cfg),
            root_path=cfg.root_path or "",
            lifespan=cfg.lifespan,  # type: ignore[arg-type]  # checked by the registry
            timeout=cfg.asgi_timeout,
        )
        asgi.websocket = websocket_settings(cfg)
        if cfg.access_log:  # records each answer's status and length for the log
            from .access import recording_consumer

            asgi.consumer_factory = recording_consumer(asgi.consumer_factory)
        return Factories(asgi, None, f"ASGI app {reference}")
    if cfg.wsgi or cfg.http:
        from ..http import HttpProtocolFactory
        from ..http.wsgi import wsgi_protocol_factory

        kind: Literal["raw", "wsgi"] = "wsgi" if cfg.wsgi else "raw"
        limits = http_limits(cfg)
        if cfg.proxy_headers:
            from .access import proxy_headers_handler, proxy_headers_wsgi

            wrap = proxy_headers_wsgi if cfg.wsgi else proxy_headers_handler
            app = wrap(app, cfg.forwarded_allow_ips)
        if cfg.wsgi:
            factory = wsgi_protocol_factory(app, threads=cfg.threads, limits=limits)
        else:
            factory = HttpProtocolFactory(app, kind="raw", threads=cfg.threads, limits=limits)
            factory.websocket = websocket_settings(cfg)
        if cfg.access_log:  # records each answer's status and length for the log
            from .access import recording_consumer

            factory.consumer_factory = recording_consumer(factory.consumer_factory)
        return Factories(factory, None, f"{kind} HTTP app {reference}")
    if isinstance(app, type) and issubclass(app, ProtocolConsumer):
        return Factories(
            functools.partial(Connection, app),
            datagram_protocol_factory(app),
            f"consumer {reference}",
        )
    if callable(app):
        try:
            factory = app()
        except Exception as exc:
            raise AppError(
                f"APP {reference!r} failed building its protocol factory: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not callable(factory):
            raise AppError(f"APP {reference!r} returned {factory!r}, not a protocol factory")
        return Factories(factory, factory, f"protocol factory from {reference}")
    raise AppError(
        f"APP {reference!r} is {type(app).__name__}: expected a ProtocolConsumer subclass or "
        "a callable returning a protocol factory (use --wsgi or --http for HTTP apps)"
    )
