"""WebSocket (RFC 6455) through ``Connection.upgrade()``: the raw consumer and ASGI apps
over loopback on both loops (with the ``websockets`` client and hand-written bytes), drains
that close with 1012, and ``--asgi`` in real processes through recycles and HUPs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import signal
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket as StarletteWebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pulsar_arbiter.http import HttpProtocolFactory, HttpRequest, Response
from pulsar_arbiter.http.asgi import asgi_protocol_factory
from pulsar_arbiter.http.websocket import (
    WebSocketConsumer,
    WebSocketSettings,
    handshake_error,
    websocket_upgrade,
)
from pulsar_arbiter.http.wsframes import (
    FrameReader,
    ProtocolError,
    close_payload,
    encode_frame,
    parse_close,
    unmask,
)
from pulsar_arbiter.runtime.access import proxy_headers_asgi
from pulsar_arbiter.servers import TcpServer
from tests.conftest import Runner
from tests.consumers import wait_for
from tests.runtime import REPO_ROOT, Arbiter
from tests.test_http import serving
from tests.test_http_state import checked_states  # noqa: F401 - a fixture
from tests.test_runtime import no_leaks  # noqa: F401 - autouse: no leaked process or fd

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import chaos

pytestmark = pytest.mark.usefixtures("checked_states")


@pytest.fixture(scope="module", autouse=True)
def libuv_signal_pipe() -> None:
    """libuv opens one signal pipe per process, the first time a uvloop loop is made, and
    keeps it: made here, before the per-test fd snapshot, it is not taken for a leak."""
    uvloop.new_event_loop().close()


Scope = dict[str, Any]
KEY = base64.b64encode(b"0123456789abcdef").decode()


# ------------------------------------------------------------------------ servers and apps
class Echo(WebSocketConsumer):
    """Echoes; records how it closed (class-level list: the tests read it)."""

    closes: list[tuple[int, str]] = []

    def on_text(self, text: str) -> None:
        self.send(text)

    def on_bytes(self, data: bytes) -> None:
        self.send(data)

    def on_close(self, code: int, reason: str) -> None:
        Echo.closes.append((code, reason))


class SlowEcho(WebSocketConsumer):
    """Echoes from a coroutine: the next message waits until it is done."""

    async def on_text(self, text: str) -> None:
        await asyncio.sleep(0.001)
        waiter = self.send(text)
        if waiter:
            await waiter


async def async_upgrade(request: HttpRequest) -> Response:
    await asyncio.sleep(0.01)
    return websocket_upgrade(request, Echo)


def raw_app(request: HttpRequest) -> Any:
    if request.path == "/ws":
        return websocket_upgrade(request, Echo)
    if request.path == "/slow":
        return websocket_upgrade(request, SlowEcho)
    if request.path == "/async":  # an async handler: switches when it has answered
        return async_upgrade(request)
    return Response(b"plain", content_type="text/plain")


class AsgiEcho:
    """A hand-written ASGI WebSocket app: what it does is chosen by the path."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        self.scopes.append(scope)
        assert (await receive())["type"] == "websocket.connect"
        path = scope["path"]
        if path == "/deny":
            await send({"type": "websocket.close"})
            return
        if path == "/teapot":
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": 418,
                    "headers": [(b"x-a", b"1")],
                }
            )
            await send({"type": "websocket.http.response.body", "body": b"no tea"})
            return
        if path == "/raise":
            raise RuntimeError("boom before accept")
        protocols = scope["subprotocols"]
        await send(
            {
                "type": "websocket.accept",
                "subprotocol": protocols[-1] if protocols else None,
                "headers": [(b"x-accepted", b"yes")],
            }
        )
        if path == "/close-4001":
            await send({"type": "websocket.close", "code": 4001, "reason": "bye"})
        if path == "/slow":  # does not receive for a while: back-pressure
            await asyncio.sleep(0.3)
        while True:
            message = await receive()
            self.events.append(message)
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})


@contextlib.asynccontextmanager
async def raw_server(settings: WebSocketSettings | None = None) -> AsyncIterator[TcpServer]:
    factory = HttpProtocolFactory(raw_app)
    factory.websocket = settings
    async with serving(raw_app, factory=factory) as server:
        yield server


@contextlib.asynccontextmanager
async def asgi_server(
    app: Any, settings: WebSocketSettings | None = None
) -> AsyncIterator[TcpServer]:
    factory = asgi_protocol_factory(app, lifespan="off")
    factory.websocket = settings
    async with serving(app, factory=factory) as server:
        yield server


def url(server: TcpServer, path: str = "/ws") -> str:
    return f"ws://127.0.0.1:{server.address[1]}{path}"


def handshake(path: str = "/ws", **headers: str) -> bytes:
    fields = {
        "Host": "localhost",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13",
    }
    for name, value in headers.items():
        name = name.replace("_", "-")
        if value:
            fields[name] = value
        else:
            fields.pop(name, None)
    head = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return (head + "\r\n").encode()


def client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame (mask of zeros: the payload goes as it is)."""
    first = (0x80 if fin else 0) | opcode
    if len(payload) < 126:
        header = bytes([first, 0x80 | len(payload)])
    elif len(payload) < 65536:
        header = bytes([first, 0x80 | 126]) + struct.pack("!H", len(payload))
    else:
        header = bytes([first, 0x80 | 127]) + struct.pack("!Q", len(payload))
    return header + b"\0\0\0\0" + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(opcode, payload) of the next (unmasked) server frame."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(length)


async def open_raw(
    server: TcpServer, request: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.address[1])
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return reader, writer, head


def headers(ws: ClientConnection) -> Any:
    """The handshake response's headers."""
    assert ws.response is not None
    return ws.response.headers


def close_code(error: ConnectionClosed) -> int | None:
    return error.rcvd.code if error.rcvd is not None else None


# ------------------------------------------------------------------------------ handshake
@pytest.mark.parametrize(
    ("headers", "status", "reason"),
    [
        ({"Sec-WebSocket-Key": ""}, 400, "missing Sec-WebSocket-Key"),
        ({"Sec-WebSocket-Key": "c2hvcnQ="}, 400, "invalid Sec-WebSocket-Key"),
        ({"Sec-WebSocket-Version": "8"}, 426, "unsupported Sec-WebSocket-Version"),
        ({"Connection": "keep-alive"}, 400, "missing Connection: upgrade"),
    ],
)
def test_bad_handshakes_get_one_clear_reason(
    run: Runner, headers: dict[str, str], status: int, reason: str
) -> None:
    async def main() -> None:
        for serve in (raw_server(), asgi_server(AsgiEcho())):
            async with serve as server:
                reader, writer, head = await open_raw(server, handshake(**headers))
                body = await asyncio.wait_for(reader.read(), 5)  # then the connection closes
                writer.close()
                assert head.startswith(f"HTTP/1.1 {status} ".encode()), head
                assert reason.encode() in body
                if status == 426:
                    assert b"sec-websocket-version: 13" in head.lower()

    run(main())


def test_handshake_checks_are_pure() -> None:
    class Request:
        method, version, simple, has_body = "POST", "1.1", False, False

        def header(self, name: str) -> str | None:
            return None

    assert handshake_error(Request()) == (400, "a WebSocket handshake is a GET, not POST")


# ---------------------------------------------------------------------------- frames
def test_frame_reader_takes_bytes_in_any_slices() -> None:
    frames = (
        client_frame(0x1, b"short")
        + client_frame(0x2, b"m" * 300)
        + client_frame(0x2, b"L" * 70000)
        + client_frame(0x9, b"")
    )
    for step in (1, 7, 4096, len(frames)):
        reader = FrameReader(1 << 20)
        got = [f for i in range(0, len(frames), step) for f in reader.feed(frames[i : i + step])]
        assert [(f.opcode, f.fin, f.payload) for f in got] == [
            (0x1, True, b"short"),
            (0x2, True, b"m" * 300),
            (0x2, True, b"L" * 70000),
            (0x9, True, b""),
        ]
        assert reader.buffered == 0


def test_unmask_is_the_xor_of_the_repeated_key() -> None:
    mask = b"\x01\x02\x03\x04"
    data = bytes(range(11))
    assert unmask(data, mask) == bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert unmask(unmask(data, mask), mask) == data


@pytest.mark.parametrize(
    ("frame", "code", "reason"),
    [
        (bytes([0x81, 0x02]) + b"hi", 1002, "not masked"),
        (bytes([0x81, 0xFE, 0x00, 0x05]) + b"\0" * 9, 1002, "shortest form"),
        (bytes([0x09, 0x80]) + b"\0" * 4, 1002, "fragmented control"),
        (bytes([0x89, 0xFE, 0x00, 0x7E]) + b"\0" * 130, 1002, "longer than 125"),
        (bytes([0x83, 0x80]) + b"\0" * 4, 1002, "unknown opcode"),
        (bytes([0xC1, 0x80]) + b"\0" * 4, 1002, "reserved bits"),
        (bytes([0x82, 0xFE, 0x01, 0x00]), 1009, "larger than 200"),
    ],
)
def test_frame_reader_rejects_what_a_frame_may_not_be(frame: bytes, code: int, reason: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        FrameReader(200).feed(frame)
    assert caught.value.code == code and reason in caught.value.reason


def test_close_payloads() -> None:
    assert parse_close(b"") == (1005, "")
    assert parse_close(close_payload(4000, "fine")) == (4000, "fine")
    for bad, code in ((b"\x03", 1002), (b"\x03\xed", 1002), (b"\x03\xe8\xff", 1007)):
        with pytest.raises(ProtocolError) as caught:
            parse_close(bad)
        assert caught.value.code == code
    long = close_payload(1000, "é" * 100)  # cut to 125 bytes, on a character boundary
    assert len(long) <= 125 and parse_close(long)[1] == "é" * 61
    assert encode_frame(0x2, b"x" * 125)[:2] == b"\x82\x7d"
    assert encode_frame(0x2, b"x" * 126)[:4] == b"\x82\x7e\x00\x7e"
    assert encode_frame(0x2, b"x" * 65536)[:10] == b"\x82\x7f" + (65536).to_bytes(8, "big")


# ------------------------------------------------------------------------- raw consumer
def test_raw_echo_text_bytes_and_fragments(run: Runner) -> None:
    async def main() -> None:
        Echo.closes.clear()
        async with raw_server() as server:
            async with connect(url(server)) as ws:
                await ws.send("hello")
                assert await ws.recv() == "hello"
                await ws.send(b"\x00\xffbin")
                assert await ws.recv() == b"\x00\xffbin"
                await ws.send(["frag", "men", "ted"])  # one message in three frames
                assert await ws.recv() == "fragmented"
                await ws.send([b"a" * 70000, b"b"])
                assert await ws.recv() == b"a" * 70000 + b"b"
                assert headers(ws)["sec-websocket-extensions"].startswith("permessage-deflate")
            assert ws.close_code == 1000
            await wait_for(lambda: Echo.closes == [(1000, "")])
            await wait_for(lambda: not server.connections)

    run(main())


def test_per_message_deflate_can_be_turned_off(run: Runner) -> None:
    async def main() -> None:
        settings = WebSocketSettings(per_message_deflate=False)
        async with raw_server(settings) as server, connect(url(server)) as ws:
            assert "sec-websocket-extensions" not in headers(ws)
            await ws.send("x" * 1000)
            assert await ws.recv() == "x" * 1000

    run(main())


def test_server_answers_pings(run: Runner) -> None:
    async def main() -> None:
        async with raw_server() as server, connect(url(server)) as ws:
            latency = await asyncio.wait_for(await ws.ping(b"abc"), 5)
            assert latency >= 0

    run(main())


@pytest.mark.parametrize("path", ["/ws", "/async"])
def test_server_pings_and_closes_a_peer_that_never_pongs(run: Runner, path: str) -> None:
    async def main() -> None:
        Echo.closes.clear()
        settings = WebSocketSettings(ping_interval=0.1, ping_timeout=0.2)
        async with raw_server(settings) as server:
            reader, writer, head = await open_raw(server, handshake(path))
            assert head.startswith(b"HTTP/1.1 101 ")
            opcode, payload = await asyncio.wait_for(read_frame(reader), 5)
            assert opcode == 0x9 and len(payload) == 4  # a ping, never answered
            while opcode != 0x8:
                opcode, payload = await asyncio.wait_for(read_frame(reader), 5)
            assert struct.unpack("!H", payload[:2])[0] == 1011
            assert await asyncio.wait_for(reader.read(), 5) == b""  # then it closes
            writer.close()
            await wait_for(lambda: not server.connections)

    run(main())


def test_a_peer_that_pongs_stays_open(run: Runner) -> None:
    async def main() -> None:
        settings = WebSocketSettings(ping_interval=0.05, ping_timeout=0.1)
        async with raw_server(settings) as server, connect(url(server)) as ws:
            await asyncio.sleep(0.4)  # the client answers each ping on its own
            await ws.send("still here")
            assert await ws.recv() == "still here"

    run(main())


@pytest.mark.parametrize("fragments", [1, 3])
def test_oversized_message_closes_with_1009(run: Runner, fragments: int) -> None:
    async def main() -> None:
        settings = WebSocketSettings(max_size=1000)
        async with raw_server(settings) as server:
            async with connect(url(server), compression=None) as ws:
                await ws.send(b"y" * 1000)  # at the bound: fine
                assert await ws.recv() == b"y" * 1000
                with pytest.raises(ConnectionClosed) as caught:
                    await ws.send([b"z" * 400] * fragments if fragments > 1 else b"z" * 1001)
                    await ws.recv()
            assert close_code(caught.value) == 1009
            await wait_for(lambda: not server.connections)

    run(main())


def test_compressed_bomb_closes_with_1009(run: Runner) -> None:
    async def main() -> None:
        settings = WebSocketSettings(max_size=64 * 1024)
        async with raw_server(settings) as server, connect(url(server)) as ws:
            assert "permessage-deflate" in headers(ws)["sec-websocket-extensions"]
            with pytest.raises(ConnectionClosed) as caught:
                await ws.send(b"\0" * (4 * 1024 * 1024))  # ~4 KiB on the wire
                await ws.recv()
            assert close_code(caught.value) == 1009

    run(main())


def test_async_handlers_keep_messages_in_order(run: Runner) -> None:
    async def main() -> None:
        async with raw_server() as server:
            reader, writer, _ = await open_raw(server, handshake("/slow"))
            for n in range(60):  # more than the consumer holds before it stops reading
                writer.write(client_frame(0x1, b"n%d" % n))
            for n in range(60):
                assert await asyncio.wait_for(read_frame(reader), 5) == (0x1, b"n%d" % n)
            writer.close()

    run(main())


def test_peer_close_is_echoed_with_its_code(run: Runner) -> None:
    async def main() -> None:
        Echo.closes.clear()
        async with raw_server() as server:
            ws = await connect(url(server))
            await ws.close(4321, "done here")
            assert ws.close_code == 4321  # the server echoed it
            await wait_for(lambda: Echo.closes == [(4321, "done here")])
            await wait_for(lambda: not server.connections)

    run(main())


def test_abrupt_disconnect_leaks_nothing(run: Runner) -> None:
    async def main() -> None:
        Echo.closes.clear()
        async with raw_server() as server:
            reader, writer, _ = await open_raw(server, handshake())
            writer.write(client_frame(0x1, b"hi"))
            assert await asyncio.wait_for(read_frame(reader), 5) == (0x1, b"hi")
            writer.transport.abort()  # no close frame
            await wait_for(lambda: Echo.closes == [(1006, "")])
            await wait_for(lambda: not server.connections)

    run(main())


def test_protocol_error_closes_with_1002(run: Runner) -> None:
    async def main() -> None:
        async with raw_server() as server:
            reader, writer, _ = await open_raw(server, handshake())
            writer.write(bytes([0x81, 0x02]) + b"hi")  # an unmasked client frame
            opcode, payload = await asyncio.wait_for(read_frame(reader), 5)
            assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == 1002
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()

    run(main())


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([client_frame(0x1, b"\xff\xfe")], 1007),  # text that is not UTF-8
        ([client_frame(0x0, b"orphan")], 1002),  # a continuation outside a message
        ([client_frame(0x1, b"a", fin=False), client_frame(0x1, b"b")], 1002),
        ([client_frame(0x8, b"\x03\xed")], 1002),  # close code 1005 on the wire
    ],
)
def test_peer_protocol_errors_close_with_their_code(
    run: Runner, frames: list[bytes], code: int
) -> None:
    async def main() -> None:
        async with raw_server() as server:
            reader, writer, _ = await open_raw(server, handshake())
            writer.write(b"".join(frames))
            opcode, payload = await asyncio.wait_for(read_frame(reader), 5)
            assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == code
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()

    run(main())


def test_control_frames_between_fragments_and_split_characters(run: Runner) -> None:
    async def main() -> None:
        text = "héllo wörld €".encode()
        async with raw_server() as server:
            reader, writer, _ = await open_raw(server, handshake())
            writer.write(
                client_frame(0x1, text[:2], fin=False)  # "é" cut in two
                + client_frame(0x9, b"ping!")
                + client_frame(0x0, text[2:-1], fin=False)
                + client_frame(0x0, text[-1:])
            )
            assert await asyncio.wait_for(read_frame(reader), 5) == (0xA, b"ping!")
            assert await asyncio.wait_for(read_frame(reader), 5) == (0x1, text)
            writer.close()

    run(main())


def test_compressed_fragments_round_trip(run: Runner) -> None:
    async def main() -> None:
        async with raw_server() as server, connect(url(server)) as ws:
            parts = ["compress me " * 500, "and me " * 300]
            await ws.send(parts)  # one message, compressed, in two frames
            assert await ws.recv() == "".join(parts)
            await ws.send(b"\x00" * 100000)
            assert await ws.recv() == b"\x00" * 100000

    run(main())


def test_frames_sent_with_the_handshake_are_kept_for_the_websocket(run: Runner) -> None:
    async def main() -> None:
        for serve in (raw_server(), asgi_server(AsgiEcho())):
            async with serve as server:
                first = client_frame(0x1, b"eager") + client_frame(0x2, b"client")
                reader, writer, head = await open_raw(server, handshake() + first)
                assert head.startswith(b"HTTP/1.1 101 ")
                assert await asyncio.wait_for(read_frame(reader), 5) == (0x1, b"eager")
                assert await asyncio.wait_for(read_frame(reader), 5) == (0x2, b"client")
                writer.close()

    run(main())


def test_plain_http_still_served_beside_websocket(run: Runner) -> None:
    async def main() -> None:
        async with raw_server() as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.address[1])
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.readuntil(b"plain")).startswith(b"HTTP/1.1 200")
            writer.close()

    run(main())


# ------------------------------------------------------------------------------- ASGI
def test_asgi_echo_subprotocol_headers_and_scope(run: Runner) -> None:
    async def main() -> None:
        app = AsgiEcho()
        async with asgi_server(app) as server:
            async with connect(url(server, "/ws?q=1"), subprotocols=["one", "two"]) as ws:  # type: ignore[list-item]
                assert ws.subprotocol == "two"
                assert headers(ws)["x-accepted"] == "yes"
                await ws.send("hello")
                assert await ws.recv() == "hello"
                await ws.send([b"par", b"ts"])
                assert await ws.recv() == b"parts"
            await wait_for(
                lambda: (
                    app.events[-1:]
                    == [{"type": "websocket.disconnect", "code": 1000, "reason": ""}]
                )
            )
        scope = app.scopes[0]
        assert scope["scheme"] == "ws" and scope["path"] == "/ws"
        assert scope["query_string"] == b"q=1" and scope["subprotocols"] == ["one", "two"]
        assert "websocket.http.response" in scope["extensions"] and "method" not in scope

    run(main())


def test_proxy_headers_name_the_client_and_wss(run: Runner) -> None:
    async def main() -> None:
        app = AsgiEcho()
        forwarded = {"X-Forwarded-For": "10.1.2.3", "X-Forwarded-Proto": "https"}
        proxied = proxy_headers_asgi(app, "127.0.0.1")
        async with (
            asgi_server(proxied) as server,
            connect(url(server), additional_headers=forwarded) as ws,
        ):
            await ws.send("via proxy")
            assert await ws.recv() == "via proxy"
        assert app.scopes[0]["scheme"] == "wss" and app.scopes[0]["client"][0] == "10.1.2.3"

    run(main())


def test_asgi_close_before_accept_is_403_and_denial_response(run: Runner) -> None:
    async def main() -> None:
        async with asgi_server(AsgiEcho()) as server:
            with pytest.raises(InvalidStatus) as denied:
                await connect(url(server, "/deny"))
            assert denied.value.response.status_code == 403
            with pytest.raises(InvalidStatus) as teapot:
                await connect(url(server, "/teapot"))
            assert teapot.value.response.status_code == 418
            assert teapot.value.response.body == b"no tea"
            assert teapot.value.response.headers["x-a"] == "1"
            with pytest.raises(InvalidStatus) as failed:
                await connect(url(server, "/raise"))
            assert failed.value.response.status_code == 500

    run(main())


def test_asgi_app_that_never_accepts_is_answered_500(run: Runner) -> None:
    async def silent(scope: Scope, receive: Any, send: Any) -> None:
        await asyncio.Event().wait()

    async def main() -> None:
        factory = asgi_protocol_factory(silent, lifespan="off", timeout=0.2)
        async with serving(silent, factory=factory) as server:
            with pytest.raises(InvalidStatus) as failed:
                await connect(url(server))
            assert failed.value.response.status_code == 500

    run(main())


def test_asgi_app_close_with_code(run: Runner) -> None:
    async def main() -> None:
        async with asgi_server(AsgiEcho()) as server, connect(url(server, "/close-4001")) as ws:
            with pytest.raises(ConnectionClosed) as caught:
                await ws.recv()
            assert close_code(caught.value) == 4001 and caught.value.rcvd.reason == "bye"  # type: ignore[union-attr]

    run(main())


def test_asgi_abrupt_disconnect_reaches_the_app(run: Runner) -> None:
    async def main() -> None:
        app = AsgiEcho()
        async with asgi_server(app) as server:
            _, writer, head = await open_raw(server, handshake())
            assert head.startswith(b"HTTP/1.1 101 ")
            writer.transport.abort()
            await wait_for(
                lambda: (
                    app.events[-1:]
                    == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]
                )
            )
            await wait_for(lambda: not server.connections)

    run(main())


def test_asgi_reading_stops_while_the_app_does_not_receive(run: Runner) -> None:
    async def main() -> None:
        app = AsgiEcho()
        async with asgi_server(app) as server:
            reader, writer, _ = await open_raw(server, handshake("/slow"))
            for n in range(40):
                writer.write(client_frame(0x1, b"m%d" % n))
            (connection,) = server.connections
            await wait_for(lambda: not connection.transport.is_reading())  # type: ignore[union-attr]
            for n in range(40):  # all of them, in order, once the app receives
                assert await asyncio.wait_for(read_frame(reader), 5) == (0x1, b"m%d" % n)
            assert connection.transport.is_reading()  # type: ignore[union-attr]
            writer.close()

    run(main())


def starlette_app() -> Starlette:
    async def echo(websocket: StarletteWebSocket) -> None:
        await websocket.accept()
        async for text in websocket.iter_text():
            await websocket.send_text(f"starlette: {text}")

    return Starlette(routes=[WebSocketRoute("/ws", echo)])


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.websocket("/ws")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                data = await websocket.receive_json()
                await websocket.send_json({"echo": data})
        except WebSocketDisconnect:
            pass

    return app


def test_lifespan_state_reaches_websocket_scopes(run: Runner) -> None:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, str]]:
        yield {"greeting": "hello from lifespan"}

    async def greet(websocket: StarletteWebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(websocket.state.greeting)
        await websocket.close()

    async def main() -> None:
        app = Starlette(routes=[WebSocketRoute("/ws", greet)], lifespan=lifespan)
        factory = asgi_protocol_factory(app, lifespan="on")
        await factory.startup()
        try:
            async with serving(app, factory=factory) as server, connect(url(server)) as ws:
                assert await ws.recv() == "hello from lifespan"
        finally:
            await factory.shutdown()

    run(main())


def test_starlette_and_fastapi_websocket_echo(run: Runner) -> None:
    async def main() -> None:
        async with asgi_server(starlette_app()) as server, connect(url(server)) as ws:
            await ws.send("hi")
            assert await ws.recv() == "starlette: hi"
        async with asgi_server(fastapi_app()) as server, connect(url(server)) as ws:
            await ws.send('{"a": 1}')
            assert await ws.recv() == '{"echo":{"a":1}}'

    run(main())


# ------------------------------------------------------------------------------ drains
def test_drain_closes_websockets_with_1012_and_waits_for_them(run: Runner) -> None:
    async def main() -> None:
        app = AsgiEcho()
        Echo.closes.clear()
        clean = 0
        async with asgi_server(app) as asgi, raw_server() as raw:
            clients: list[ClientConnection] = []
            for server in (asgi, raw):
                clients += [await connect(url(server)) for _ in range(5)]
            for ws in clients:
                await ws.send("before")
                assert await ws.recv() == "before"
            loop = asyncio.get_running_loop()
            started = loop.time()
            await asyncio.gather(asgi.close(10.0), raw.close(10.0))
            assert loop.time() - started < 3.0  # the close handshakes, not the grace
            for ws in clients:
                with pytest.raises(ConnectionClosed) as caught:
                    await ws.recv()
                error = caught.value
                if error.rcvd is not None and error.sent is not None:
                    clean += error.rcvd.code == 1012 and error.sent.code == 1012
        assert clean == 10
        assert Echo.closes == [(1012, "server restarting")] * 5
        disconnects = [e for e in app.events if e["type"] == "websocket.disconnect"]
        assert [e["code"] for e in disconnects] == [1012] * 5

    run(main())


def test_drain_aborts_a_peer_that_never_answers_the_close(run: Runner) -> None:
    async def main() -> None:
        async with raw_server() as server:
            reader, writer, _ = await open_raw(server, handshake())
            loop = asyncio.get_running_loop()
            started = loop.time()
            await server.close(0.5)  # the grace bounds it
            assert loop.time() - started < 2.0
            opcode, payload = await asyncio.wait_for(read_frame(reader), 5)
            assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == 1012
            writer.close()

    run(main())


# ---------------------------------------------------------------------- real processes
def test_bad_ws_settings_exit_2_with_one_line() -> None:
    for args, text in (
        (["--http", "a:b", "--ws-max-size", "0"], "--ws-max-size: expected an integer >= 1"),
        (["--wsgi", "a:b", "--ws-ping-interval", "5"], "--ws-ping-interval: only with --http"),
        (["--asgi", "a:b", "--ws-per-message-deflate", "perhaps"], "expected true or false"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "pulsar_arbiter", *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and text in done.stderr


def test_raw_example_serves_and_term_closes_with_1012(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    arbiter = Arbiter(
        home, "examples.websocket_echo:app", "--http", "--ws-ping-interval", "1", workers=1
    ).start()
    try:
        arbiter.wait_serving()

        async def main() -> tuple[int | None, int | None]:
            async with connect(f"ws://127.0.0.1:{arbiter.port}/ws") as ws:
                await ws.send("echo me")
                assert await ws.recv() == "echo me"
                arbiter.send(signal.SIGTERM)
                with pytest.raises(ConnectionClosed) as caught:
                    await asyncio.wait_for(ws.recv(), 10)
                rcvd, sent = caught.value.rcvd, caught.value.sent
                return (rcvd.code if rcvd else None), (sent.code if sent else None)

        assert chaos.run_async(main()) == (1012, 1012)
        assert arbiter.wait_exit(15.0) == 0
    finally:
        arbiter.close()


FASTAPI_MODULE = """
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse

app = FastAPI()


@app.get("/{path:path}")
def hello():
    return PlainTextResponse("Hello, World!")


@app.websocket("/ws")
async def echo(websocket: WebSocket):
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass
"""


HUPS = 3


class WsTally:
    """What the WebSocket clients saw: echoes, and every close by its codes."""

    def __init__(self) -> None:
        self.echoes = 0
        self.clean_1012 = 0
        self.unclean: list[str] = []


async def ws_client(port: int, tally: WsTally, stop: asyncio.Event) -> None:
    """Echo messages until ``stop``; reconnect after each close, which must be a clean 1012."""
    while not stop.is_set():
        try:
            ws = await asyncio.wait_for(connect(f"ws://127.0.0.1:{port}/ws"), 5)
        except (OSError, InvalidStatus, asyncio.TimeoutError) as exc:
            tally.unclean.append(f"connect: {exc!r}")
            await asyncio.sleep(0.05)
            continue
        try:
            while not stop.is_set():
                text = f"m{tally.echoes}"
                await ws.send(text)
                assert await asyncio.wait_for(ws.recv(), 5) == text
                tally.echoes += 1
                await asyncio.sleep(0.01)
            await ws.close()
        except ConnectionClosed as exc:
            rcvd, sent = exc.rcvd, exc.sent
            if rcvd is not None and sent is not None and rcvd.code == sent.code == 1012:
                tally.clean_1012 += 1
            else:
                tally.unclean.append(f"closed: {exc!r}")
        except asyncio.TimeoutError:
            tally.unclean.append("echo timed out")
            await ws.close()


def test_fastapi_websocket_and_http_through_recycles_and_hups(tmp_path: Path) -> None:
    (tmp_path / "fastws.py").write_text(FASTAPI_MODULE)
    home = tmp_path / "home"
    home.mkdir()
    args = ("--asgi", "--max-requests", "1500", "--max-requests-jitter", "300")
    arbiter = Arbiter(home, "fastws:app", *args, workers=2, cwd=tmp_path).start()
    tally = WsTally()
    try:
        arbiter.wait_serving()
        driver = chaos.Driver(arbiter.port)
        clients = chaos.Clients(http_keepalive=4)

        async def actions(driver: chaos.Driver) -> None:
            stop = asyncio.Event()
            sockets = [
                asyncio.ensure_future(ws_client(arbiter.port, tally, stop)) for _ in range(4)
            ]
            for _ in range(HUPS):  # recycles go on meanwhile (--max-requests)
                await asyncio.sleep(0.8)
                arbiter.send(signal.SIGHUP)
            await asyncio.sleep(1.5)
            stop.set()
            await asyncio.gather(*sockets)

        chaos.run_async(driver.drive(clients, actions, limit=40))
        outcome = chaos.Outcome("asgi-websocket-hup-recycle", "")
        outcome.absorb(driver)
        print("\n".join(outcome.lines()))
        print(f"websocket: {tally.echoes} echoes, {tally.clean_1012} clean 1012 closes")
        assert outcome.tally.ok > 100
        assert outcome.tally.failures == 0, outcome.tally.line()
        assert tally.unclean == []
        assert tally.echoes > 100
        assert tally.clean_1012 >= 4  # every client was moved at least once
        arbiter.send(signal.SIGTERM)
        assert arbiter.wait_exit(15.0) == 0
    finally:
        arbiter.close()
