"""Bad input, fuzzed: the IPC frame decoder and the control socket's protocol.

Every input is either a ProtocolError (IPC) or an error answer (control socket), never
another exception, a silent close or harm to the process that read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pulsar_arbiter import ipc
from pulsar_arbiter.ops.control import MAX_REQUEST, ControlServer
from tests.runtime import Arbiter, whoami

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HEADER = ipc.HEADER

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def nested(depth: int, kind: str = "[") -> bytes:
    if kind == "[":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def feed_all(chunks: list[bytes]) -> list[ipc.Message]:
    """Feed ``chunks`` to a fresh decoder: the messages, or ProtocolError; and after a
    ProtocolError every later feed raises ProtocolError too."""
    decoder = ipc.FrameDecoder()
    messages: list[ipc.Message] = []
    for chunk in chunks:
        try:
            messages += decoder.feed(chunk)
        except ipc.ProtocolError:
            with pytest.raises(ipc.ProtocolError):
                decoder.feed(b"\0\0\0\2{}")
            raise
    for msg in messages:
        assert ipc.validate(msg) is msg
        assert not ipc.nesting_exceeds(msg, ipc.MAX_DEPTH)
    return messages


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


# -- the IPC frame decoder --------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=5))
def test_ipc_garbage_bytes(data: bytes, cuts: list[int]) -> None:
    with contextlib.suppress(ipc.ProtocolError):
        feed_all(split(data, cuts))


@FUZZ
@given(json_values, st.lists(st.integers(0, 500), max_size=4))
def test_ipc_json_of_any_shape(value: Any, cuts: list[int]) -> None:
    """Valid JSON of wrong shapes: a ProtocolError or a valid message."""
    data = frame(json.dumps(value).encode())
    with contextlib.suppress(ipc.ProtocolError):
        feed_all(split(data, cuts))


messages = st.one_of(
    st.builds(ipc.ready, st.integers(0, 2**22)),
    st.builds(ipc.heartbeat, st.dictionaries(st.text(max_size=10), json_scalars, max_size=5)),
    st.builds(ipc.retiring, st.text(max_size=50)),
    st.builds(ipc.stop, st.booleans(), st.none() | st.floats(0, 1e6)),
    st.builds(ipc.command, st.integers(1, 2**40), st.text(min_size=1, max_size=10)),
    st.builds(ipc.notify, st.text(min_size=1, max_size=10)),
    st.builds(ipc.boot_error, st.text(max_size=50)),
    st.builds(ipc.reply, st.integers(1, 2**40), json_values, st.none() | st.text(max_size=20)),
)


@FUZZ
@given(st.lists(messages, min_size=1, max_size=5), st.lists(st.integers(0, 5000), max_size=6))
def test_ipc_valid_frames_in_any_chunks(msgs: list[ipc.Message], cuts: list[int]) -> None:
    data = b"".join(ipc.encode(m) for m in msgs)
    decoded = feed_all(split(data, cuts))
    assert json.dumps(decoded, sort_keys=True) == json.dumps(msgs, sort_keys=True)


@FUZZ
@given(st.lists(messages, min_size=1, max_size=3), st.data())
def test_ipc_truncated_frames_wait_for_more(msgs: list[ipc.Message], data: st.DataObject) -> None:
    whole = b"".join(ipc.encode(m) for m in msgs)
    cut = data.draw(st.integers(0, len(whole) - 1))
    decoder = ipc.FrameDecoder()
    got = decoder.feed(whole[:cut])
    assert len(got) < len(msgs)
    assert decoder.buffered == cut - sum(len(ipc.encode(m)) for m in msgs[: len(got)])
    assert got + decoder.feed(whole[cut:]) == msgs


@FUZZ
@given(st.integers(ipc.MAX_FRAME + 1, 2**32 - 1), st.binary(max_size=100))
def test_ipc_oversized_frame(size: int, tail: bytes) -> None:
    with pytest.raises(ipc.ProtocolError, match="exceeds"):
        feed_all([HEADER.pack(size) + tail])


@FUZZ
@given(st.integers(ipc.MAX_DEPTH + 1, 20_000), st.sampled_from(["[", "{"]))
def test_ipc_deeply_nested(depth: int, kind: str) -> None:
    payload = nested(depth, kind)
    if len(payload) > ipc.MAX_FRAME:
        payload = payload[: ipc.MAX_FRAME]
    with pytest.raises(ipc.ProtocolError):
        feed_all([frame(payload)])


@pytest.mark.parametrize("depth", [ipc.MAX_DEPTH + 1, 500, 900])
def test_ipc_nesting_below_the_recursion_limit_is_refused_too(depth: int) -> None:
    """A heartbeat whose stats nest a few hundred levels deep decodes without a
    RecursionError, but the arbiter passes worker stats on to ``ctl stats``, whose answer
    nests them deeper still: it must be refused at the frame, not break ctl later."""
    payload = b'{"type":"heartbeat","stats":' + nested(depth - 1, "{") + b"}"
    with pytest.raises(ipc.ProtocolError, match="nested deeper"):
        feed_all([frame(payload)])
    with pytest.raises(ValueError, match="nested deeper"):
        ipc.encode(json.loads(payload))


def test_ipc_nesting_at_the_limit_is_fine() -> None:
    payload = b'{"type":"heartbeat","stats":' + nested(ipc.MAX_DEPTH - 2, "{") + b"}"
    (msg,) = feed_all([frame(payload)])
    assert msg["type"] == "heartbeat"


# -- the control socket, in process -----------------------------------------------------


class StubArbiter:
    """What the control server drives, recording the calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    async def stats(self) -> dict[str, Any]:
        self.calls.append(("stats", None))
        return {"arbiter": {"pid": os.getpid()}, "workers": []}

    def reload(self) -> str:
        self.calls.append(("reload", None))
        return "reloading"

    def scale(self, workers: int) -> int:
        self.calls.append(("scale", workers))
        return workers

    def stop(self, graceful: bool = True) -> None:
        self.calls.append(("stop", graceful))

    def live_workers(self) -> list[dict[str, Any]]:
        return []

    async def route(
        self, target: str, name: str, args: dict[str, Any], timeout: float
    ) -> dict[str, dict[str, Any]]:
        """As the arbiter routes ``ctl call``: the arbiter's own commands only here."""
        self.calls.append(("route", (target, name)))
        if target != "arbiter":
            return {}
        return {"arbiter": {"result": await ipc.COMMANDS.call(self, "arbiter", name, args)}}


class ServerThread:
    """A ControlServer on its own event loop in a thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.stub = StubArbiter()
        self.loop = asyncio.new_event_loop()
        self.server = ControlServer(path, self.stub)
        self.loop.run_until_complete(self.server.start())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def control() -> Iterator[ServerThread]:
    with tempfile.TemporaryDirectory() as directory:
        server = ServerThread(os.path.join(directory, "ctl.sock"))
        try:
            yield server
        finally:
            server.close()


def send_raw(path: str, data: bytes, shut: bool = True, timeout: float = 5.0) -> bytes:
    """Send ``data`` (the server may stop reading: a broken pipe is fine), then read the
    answer until newline or EOF."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
            if shut:
                sock.shutdown(socket.SHUT_WR)
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def answer_of(path: str, data: bytes) -> dict[str, Any]:
    raw = send_raw(path, data)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1, f"no answer line: {raw!r}"
    answer = json.loads(raw)
    assert isinstance(answer, dict), answer
    return answer


def still_serves(path: str) -> None:
    assert answer_of(path, b'{"command": "stats"}\n')["workers"] == []


def is_real_command(data: bytes) -> bool:
    """Would ``data``'s first line be a valid request that acts (the stub records it)?"""
    line = data.split(b"\n", 1)[0]
    with contextlib.suppress(ValueError, RecursionError):
        value = json.loads(line)
        return isinstance(value, dict) and value.get("command") in (
            "stats",
            "reload",
            "stop",
            "scale",
        )
    return False


def check_error_answer(control: ServerThread, data: bytes) -> None:
    before = len(control.stub.calls)
    answer = answer_of(control.path, data)
    if not is_real_command(data):
        assert "error" in answer, answer
        assert isinstance(answer["error"], str) and "\n" not in answer["error"]
        assert len(control.stub.calls) == before


@FUZZ
@given(st.binary(max_size=3 * MAX_REQUEST))
def test_control_garbage(control: ServerThread, data: bytes) -> None:
    check_error_answer(control, data)


@FUZZ
@given(json_values, st.booleans())
def test_control_json_of_any_shape(control: ServerThread, value: Any, newline: bool) -> None:
    data = json.dumps(value).encode() + (b"\n" if newline else b"")
    check_error_answer(control, data)


@FUZZ
@given(
    st.sampled_from(["stats", "reload", "scale", "stop", "bogus"]),
    st.one_of(json_values, st.integers(-(2**80), 2**80)),
    st.booleans(),
)
def test_control_command_with_bad_arguments(
    control: ServerThread, name: str, workers: Any, valid_scale: bool
) -> None:
    """Any "workers": scale acts only on an integer in 1..MAX_WORKERS; the rest are errors,
    and so is any argument to a command that takes none."""
    before = len(control.stub.calls)
    answer = answer_of(
        control.path, json.dumps({"command": name, "workers": workers}).encode() + b"\n"
    )
    if name == "bogus":
        assert answer["error"].startswith("unknown command")
    elif name == "scale":
        good = isinstance(workers, int) and not isinstance(workers, bool) and 1 <= workers <= 4096
        assert ("error" not in answer) == good, answer
        if good:
            assert control.stub.calls[-1] == ("scale", workers)
        else:
            assert len(control.stub.calls) == before
    else:
        assert answer == {"error": f"{name}: unknown argument 'workers'"}
        assert len(control.stub.calls) == before


@pytest.mark.parametrize("name", ["stats", "reload", "stop"])
def test_control_commands_without_arguments_act(control: ServerThread, name: str) -> None:
    before = len(control.stub.calls)
    answer = answer_of(control.path, json.dumps({"command": name}).encode() + b"\n")
    assert "error" not in answer
    assert control.stub.calls[before:] == [(name, True if name == "stop" else None)]


@FUZZ
@given(st.integers(1, 30), st.data())
def test_control_truncated(control: ServerThread, size: int, data: st.DataObject) -> None:
    whole = json.dumps({"command": "scale", "workers": size}).encode()
    cut = data.draw(st.integers(0, len(whole) - 1))
    check_error_answer(control, whole[:cut])


@settings(max_examples=30, deadline=None)
@given(st.integers(MAX_REQUEST + 1, 300_000), st.sampled_from([b"a", b" ", b"[", b"\xff"]))
def test_control_oversized(control: ServerThread, size: int, filler: bytes) -> None:
    assert answer_of(control.path, filler * size + b"\n") == {"error": "request too long"}


@FUZZ
@given(st.integers(33, MAX_REQUEST // 2), st.sampled_from(["[", "{"]))
def test_control_deeply_nested(control: ServerThread, depth: int, kind: str) -> None:
    data = nested(depth, kind)[: MAX_REQUEST - 1] + b"\n"
    check_error_answer(control, data)


@pytest.mark.parametrize("depth", [100, 2000])
def test_control_nested_request_is_answered(control: ServerThread, depth: int) -> None:
    """Found in the field: 2,000 levels got no answer (a RecursionError closed the
    connection)."""
    answer = answer_of(control.path, nested(depth) + b"\n")
    assert "nested deeper" in answer["error"]
    still_serves(control.path)


def test_control_scale_is_bounded(control: ServerThread) -> None:
    """``scale`` with 10**20 workers must not reach the arbiter (it would fork forever)."""
    before = len(control.stub.calls)
    for workers in (10**20, 2**63, 4097, 0, -1):
        answer = answer_of(control.path, b'{"command":"scale","workers":%d}\n' % workers)
        assert "error" in answer
    assert len(control.stub.calls) == before


def test_control_target_failure_is_answered(control: ServerThread) -> None:
    """A bug of the arbiter's (an exception in stats) is an error answer, not a close."""

    async def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    original = control.stub.stats
    control.stub.stats = broken  # type: ignore[method-assign]
    try:
        answer = answer_of(control.path, b'{"command":"stats"}\n')
    finally:
        control.stub.stats = original  # type: ignore[method-assign]
    assert answer == {"error": "stats: RuntimeError: boom"}
    still_serves(control.path)


def test_control_many_clients_at_once(control: ServerThread) -> None:
    """Silent clients (they hold a connection until the server's timeout) do not keep
    the others from being answered."""
    silent = []
    try:
        for _ in range(50):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(control.path)
            silent.append(sock)
        still_serves(control.path)
    finally:
        for sock in silent:
            sock.close()


# -- a real arbiter under a barrage ---------------------------------------------------------


def barrage(seed: int = 8) -> list[bytes]:
    rng = random.Random(seed)
    requests = [
        nested(2000) + b"\n",
        nested(2000, "{") + b"\n",
        nested(40) + b"\n",
        b"a" * 100_000 + b"\n",
        b"\n",
        b"",
        b'{"command": "sta',
        b'{"command": "scale", "workers": 100000000000000000000}\n',
        b'{"command": "scale", "workers": -1}\n',
        b'{"command": ["stats"]}\n',
        b'{"command": {"a": {"b": null}}}\n',
        b'[{"command": "stop"}]\n',
        b'"stop"\n',
        b"NaN\n",
        b'{"command": NaN}\n',
        b"\xff\xfe\xfd\n",
        b"\0" * 5000,
    ]
    for _ in range(150):
        size = rng.choice([1, 10, 100, 1000, 4000, 5000, 20_000])
        data = rng.randbytes(size)
        if not is_real_command(data):
            requests.append(data)
    return requests


def test_real_arbiter_survives_a_barrage(tmp_path: Path) -> None:
    with Arbiter(tmp_path, workers=1) as arbiter:
        arbiter.wait_serving()
        pid = whoami(arbiter.port)
        for data in barrage():
            raw = send_raw(arbiter.control_socket, data)
            answer = json.loads(raw)
            assert isinstance(answer, dict) and "error" in answer, (data[:80], answer)
        stats = arbiter.stats()
        assert [w["pid"] for w in stats["workers"]] == [pid]
        assert whoami(arbiter.port) == pid
        result = arbiter.ctl_cli("stats")
        assert result.returncode == 0, result.stderr
        assert arbiter.exited() is None
        assert "Traceback" not in arbiter.log()
