"""WebSocket echo as an ASGI 3 app: the one app every WebSocket row serves.

    uvicorn ws_echo:app --ws websockets     uvicorn ws_echo:app --ws wsproto
    python -m pulsar_arbiter --asgi ws_echo:app

Accept every WebSocket, then send each message back as it came (text as
text, bytes as bytes) until the client disconnects: the servers differ only
in what they charge per message.  HTTP requests get a 404 (the benchmark's
handshake probe tells "no WebSocket here" from "not listening"), and the
lifespan protocol is answered so no server falls back to logging about it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

ACCEPT: dict[str, Any] = {"type": "websocket.accept"}
NOT_FOUND_START: dict[str, Any] = {
    "type": "http.response.start",
    "status": 404,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"9")],
}
NOT_FOUND_BODY: dict[str, Any] = {"type": "http.response.body", "body": b"not found"}


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Echo every WebSocket message; 404 for HTTP; acknowledge lifespan."""
    kind = scope["type"]
    if kind == "websocket":
        await echo(receive, send)
    elif kind == "http":
        await send(NOT_FOUND_START)
        await send(NOT_FOUND_BODY)
    elif kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


async def echo(receive: Receive, send: Send) -> None:
    """Accept on connect, then one send per received message, until disconnect."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send(ACCEPT)
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return  # websocket.disconnect
        text = message.get("text")
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
