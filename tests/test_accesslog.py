"""The access log formatter: gunicorn's atoms and default, JSON lines (pure)."""

from __future__ import annotations

import base64
import json

import pytest

from pulsar_arbiter.ops.accesslog import (
    DEFAULT_ACCESS_FORMAT,
    AccessFormatter,
    AccessRecord,
    check_format,
)


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
