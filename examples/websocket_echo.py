"""A WebSocket echo server on the raw HTTP API: a :class:`WebSocketConsumer` subclass.

Serve it (``--ws-*`` flags tune keep-alive pings, message size and compression)::

    python -m pulsar_arbiter --http examples.websocket_echo:app --bind 127.0.0.1:8060

then talk to ``ws://127.0.0.1:8060/ws`` (any WebSocket client); every other path answers
plain HTTP. Each message comes back as it was sent, text as text, bytes as bytes.
"""

from __future__ import annotations

from pulsar_arbiter.http import HttpRequest, Response
from pulsar_arbiter.http.websocket import WebSocketConsumer, websocket_upgrade

HELLO = Response(b"WebSocket echo: connect to /ws\n", content_type="text/plain")


class EchoWebSocket(WebSocketConsumer):
    """Sends every message back; a send the client is slow to read waits for it."""

    def on_text(self, text: str) -> None:
        self.send(text)

    def on_bytes(self, data: bytes) -> None:
        self.send(data)


def app(request: HttpRequest) -> Response:
    """The raw handler: ``/ws`` switches to :class:`EchoWebSocket`, the rest is HTTP."""
    if request.path == "/ws":
        return websocket_upgrade(request, EchoWebSocket)
    return HELLO
