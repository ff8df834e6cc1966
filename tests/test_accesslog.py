"""The access log formatter: gunicorn's atoms and default, JSON lines (pure); the lines
of --asgi requests in a real process."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import signal
from pathlib import Path

import pytest
import websockets

from pulsar_arbiter.ops.accesslog import (
    DEFAULT_ACCESS_FORMAT,
    AccessFormatter,
    AccessRecord,
    check_format,
)
from tests.runtime import HOST, Arbiter, wait_until


def record(**changes: object) -> AccessRecord:
    values: dict[str, object] = {
        "remote": "203.0.113.9",
        "method": "GET",
        "target": "/a/b?x=1",
        "version": "HTTP/1.1",
        "status": 200,
        "length": 13,
        "duration": 0.0015,
        "request_headers": [
            (b"User-Agent", b"curl/8"),
            (b"Referer", b"http://r/"),
            (b"X-Id", b"42"),
            (b"Authorization", b"Basic " + base64.b64encode(b"ann:secret")),
        ],
        "response_headers": [("Content-Type", "text/plain")],
        "pid": 77,
        "when": 0.0,
    }
    values.update(changes)
    return AccessRecord(**values)  # type: ignore[arg-type]


def test_gunicorn_default() -> None:
    line = AccessFormatter().format(record())
    assert DEFAULT_ACCESS_FORMAT.startswith('%(h)s %(l)s %(u)s %(t)s "%(r)s"')
    head, _, tail = line.partition(" [")
    assert head == "203.0.113.9 - ann"
    assert tail.split("] ", 1)[1] == '"GET /a/b?x=1 HTTP/1.1" 200 13 "http://r/" "curl/8"'


def test_every_atom() -> None:
    fmt = "%(m)s|%(U)s|%(q)s|%(H)s|%(s)s|%(B)s|%(b)s|%(T)s|%(D)s|%(M)s|%(L)s|%(p)s"
    fmt += "|%({x-id}i)s|%({content-type}o)s|%({missing}i)s|%({HOME}e)s"
    line = AccessFormatter(fmt).format(record(length=None))
    parts = line.split("|")
    assert parts[:12] == [
        "GET",
        "/a/b",
        "x=1",
        "HTTP/1.1",
        "200",
        "0",
        "-",
        "0",
        "1500",
        "1",
        "0.001500",
        "<77>",
    ]
    assert parts[12:15] == ["42", "text/plain", "-"]


@pytest.mark.parametrize("fmt", ["%(zz)s", "%(h)s %(", "%({x}z)s"])
def test_bad_formats(fmt: str) -> None:
    with pytest.raises(ValueError):
        check_format(fmt)


def test_json_lines() -> None:
    data = json.loads(AccessFormatter(json=True).format(record()))
    assert data["remote_addr"] == "203.0.113.9"
    assert data["status"] == 200 and data["bytes"] == 13 and data["duration_us"] == 1500
    assert data["user"] == "ann" and data["user_agent"] == "curl/8" and data["pid"] == 77


# ---------------------------------------------------------------- --asgi, a real process
ASGI_MODULE = """
async def app(scope, receive, send):
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    if path == "/boom":
        raise RuntimeError("boom")
    if path == "/stream":
        await send({"type": "http.response.start", "status": 201, "headers": []})
        for part in (b"abc", b"de"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body"})
        return
    answer = body or b"hello"
    headers = [(b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})
"""


def test_asgi_requests_are_logged_with_status_bytes_and_duration(tmp_path: Path) -> None:
    """--access-log lines for --asgi requests: status, bytes (counted for a streamed body)
    and duration, as for the raw and WSGI paths; a 500 for an app that raised."""
    (tmp_path / "asgiapp.py").write_text(ASGI_MODULE)
    home = tmp_path / "home"
    home.mkdir()
    access = tmp_path / "access.log"
    args = ("--asgi", "--lifespan", "off", "--log-format", "json", "--access-log", str(access))
    server = Arbiter(home, "asgiapp:app", *args, workers=1, cwd=tmp_path).start()
    try:
        server.wait_serving()
        conn = http.client.HTTPConnection(HOST, server.port, timeout=5)
        try:
            for method, path, body in (
                ("GET", "/hello?x=1", None),
                ("POST", "/echo", b"abc"),
                ("GET", "/stream", None),
                ("GET", "/boom", None),
            ):
                conn.request(method, path, body=body)
                conn.getresponse().read()
        finally:
            conn.close()
        wait_until(
            lambda: access.exists() and len(access.read_text().splitlines()) == 4,
            5.0,
            "four access lines",
        )
        server.send(signal.SIGTERM)
        assert server.wait_exit(15.0) == 0
    finally:
        server.close()
    lines = [json.loads(line) for line in access.read_text().splitlines()]
    seen = [(r["method"], r["path"], r["query"], r["status"], r["bytes"]) for r in lines]
    assert seen[:3] == [
        ("GET", "/hello", "x=1", 200, 5),
        ("POST", "/echo", "", 200, 3),
        ("GET", "/stream", "", 201, 5),
    ]
    assert seen[3][:4] == ("GET", "/boom", "", 500) and seen[3][4] > 0
    assert all(r["duration_us"] > 0 and r["remote_addr"] == "127.0.0.1" for r in lines)


def test_a_websocket_session_is_one_line_its_101_handshake(tmp_path: Path) -> None:
    """The upgrade's request line with status 101, and no second line when the session
    ends (the WebSocket consumer is not a raw connection to log by its peer)."""
    access = tmp_path / "access.log"
    args = ("--http", "--access-log", str(access))
    server = Arbiter(tmp_path, "examples.websocket_echo:app", *args, workers=1).start()
    try:
        server.wait_serving()

        async def echo() -> object:
            async with websockets.connect(f"ws://{HOST}:{server.port}/ws") as ws:
                await ws.send("hi")
                return await asyncio.wait_for(ws.recv(), 5.0)

        assert asyncio.run(asyncio.wait_for(echo(), 10.0)) == "hi"
        conn = http.client.HTTPConnection(HOST, server.port, timeout=5)
        try:
            conn.request("GET", "/")
            assert conn.getresponse().read()
        finally:
            conn.close()
        wait_until(
            lambda: access.exists() and '"GET / HTTP/1.1" 200' in access.read_text(),
            5.0,
            "the request after the session logged",
        )
        server.send(signal.SIGTERM)
        assert server.wait_exit(15.0) == 0
    finally:
        server.close()
    lines = access.read_text().splitlines()
    assert len(lines) == 2, lines
    assert '"GET /ws HTTP/1.1" 101' in lines[0] and '"GET / HTTP/1.1" 200' in lines[1], lines
