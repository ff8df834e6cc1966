"""IPC: the message table and framing (pure, with property tests), the command registry,
and the Channel over real socketpairs, on both asyncio and uvloop."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st

from pulsar_arbiter import ipc
from pulsar_arbiter.ipc import (
    COMMANDS,
    MAX_FRAME,
    MAX_RUNNING_COMMANDS,
    Channel,
    ChannelClosed,
    CommandError,
    Direction,
    FrameDecoder,
    Kind,
    Message,
    OnCommand,
    ProtocolError,
    Registry,
    encode,
)

T = TypeVar("T")


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


# -- encode ----------------------------------------------------------------------------


def test_encode_is_length_prefixed_compact_json() -> None:
    data = encode(ipc.heartbeat({"requests": 3, "name": "é"}))
    payload = '{"type":"heartbeat","stats":{"requests":3,"name":"é"}}'.encode()
    assert data == struct.pack(">I", len(payload)) + payload


@pytest.mark.parametrize(
    "msg",
    [
        ipc.ready(123),
        ipc.heartbeat({"requests": 1, "rss": 1.5, "nested": {"a": [1, None]}}),
        ipc.retiring("max_requests"),
        ipc.stop(),
        ipc.stop(graceful=False, timeout=2.5),
        ipc.stop(handoff=True),
        ipc.draining(),
        ipc.boot_error("ImportError: no module named 'x'"),
        ipc.command(1, "stats"),
        ipc.command(7, "scale", {"n": 3}),
        ipc.notify("reopen_logs"),
        ipc.reply(7, {"ok": True}),
        ipc.reply(8, None, error="unknown command 'x'"),
        {"type": "ready", "pid": 1, "extra": "fields are allowed"},
    ],
)
def test_constructors_round_trip(msg: Message) -> None:
    assert FrameDecoder().feed(encode(msg)) == [msg]


@pytest.mark.parametrize(
    ("msg", "fragment"),
    [
        ({"type": "hello"}, "unknown message type 'hello'"),
        ({"pid": 1}, "unknown message type None"),
        ({"type": "ready"}, "ready: missing field 'pid'"),
        (ipc.command(True, "x"), "'id' must be an integer >= 1"),
        (ipc.command(-1, "x"), "'id' must be an integer >= 1"),
        (ipc.command(0, "x"), "'id' must be an integer >= 1"),
        (ipc.command(1, ""), "'name' must be a non-empty string"),
        (ipc.notify("x" * 101), "'name' must be a non-empty string of at most 100"),
        (ipc.stop(timeout=float("inf")), "'timeout' must be a number >= 0 or null"),
        (ipc.heartbeat({"load": float("nan")}), "not JSON compliant"),
        (ipc.heartbeat({"when": object()}), "not JSON serializable"),
        (ipc.retiring("\ud800"), "surrogates not allowed"),
        (ipc.heartbeat({"blob": "x" * MAX_FRAME}), "IPC message too large"),
    ],
)
def test_encode_rejects_our_own_bad_messages(msg: Message, fragment: str) -> None:
    with pytest.raises(ValueError, match="IPC message") as info:
        encode(msg)
    assert fragment in str(info.value)


# -- FrameDecoder ----------------------------------------------------------------------


def test_decoder_several_frames_in_one_chunk() -> None:
    msgs = [ipc.ready(1), ipc.heartbeat({}), ipc.retiring("max_requests")]
    assert FrameDecoder().feed(b"".join(map(encode, msgs))) == msgs


def test_decoder_byte_by_byte() -> None:
    data = encode(ipc.command(1, "stats")) + encode(ipc.reply(1, [1, 2]))
    decoder = FrameDecoder()
    out: list[Message] = []
    for i in range(len(data)):
        out += decoder.feed(data[i : i + 1])
        if i < len(data) - 1:
            assert decoder.buffered > 0 or out
    assert out == [ipc.command(1, "stats"), ipc.reply(1, [1, 2])]
    assert decoder.buffered == 0


def test_decoder_rejects_oversize_frame_from_its_header() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match=f"frame of {MAX_FRAME + 1} bytes exceeds"):
        decoder.feed(struct.pack(">I", MAX_FRAME + 1))
    with pytest.raises(ProtocolError, match="stream already broken"):
        decoder.feed(encode(ipc.ready(1)))


def test_decoder_accepts_frame_of_exactly_max_size() -> None:
    base = len(json.dumps(ipc.retiring(""), separators=(",", ":")))
    msg = ipc.retiring("x" * (MAX_FRAME - base))
    assert FrameDecoder().feed(encode(msg)) == [msg]


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"", "invalid JSON"),
        (b"{", "invalid JSON"),
        (b"\xff\xfe{}", "invalid JSON"),
        ('{"type":"ready","pid":1}'.encode("utf-16"), "invalid JSON"),
        (b'{"type":"heartbeat","stats":{"x":NaN}}', "NaN is not valid JSON"),
        (b'{"type":"stop","graceful":true,"timeout":Infinity}', "Infinity is not valid JSON"),
        (b"[" * 100_000, "frame of"),
        (b"[" * 60_000, "invalid JSON"),
        (b"[]", "expected a JSON object, got list"),
        (b'"ready"', "expected a JSON object, got str"),
        (b'{"type":1}', "unknown message type 1"),
        (b'{"type":"command","id":1,"name":"x"}', "command: missing field 'args'"),
        (b'{"type":"command","id":1.0,"name":"x","args":{}}', "'id' must be an integer"),
        (b'{"type":"reply","id":1,"result":null,"error":5}', "'error' must be a string or null"),
        (b'{"type":"heartbeat","stats":[]}', "'stats' must be an object"),
        (b'{"type":"stop","graceful":1,"timeout":null}', "'graceful' must be a boolean"),
        (
            b'{"type":"stop","graceful":true,"timeout":-1,"handoff":false}',
            "'timeout' must be a number >= 0",
        ),
        (b'{"type":"stop","graceful":true,"timeout":null}', "stop: missing field 'handoff'"),
        (b'{"type":"boot_error"}', "boot_error: missing field 'error'"),
        (b'{"type":"notify","name":"x"}', "notify: missing field 'args'"),
    ],
)
def test_decoder_rejects_bad_payloads(payload: bytes, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        FrameDecoder().feed(frame(payload))
    assert fragment in str(info.value)


# -- the message table ------------------------------------------------------------------

CONSTRUCTED = {
    "ready": ipc.ready(1),
    "heartbeat": ipc.heartbeat({}),
    "retiring": ipc.retiring("max_requests"),
    "draining": ipc.draining(),
    "boot_error": ipc.boot_error("boom"),
    "stop": ipc.stop(),
    "command": ipc.command(1, "ping"),
    "route": ipc.route(1, "workers", "ping", {}, 5.0),
    "notify": ipc.notify("reopen_logs"),
    "reply": ipc.reply(1, "pong"),
}


def test_every_message_type_has_a_constructor_that_the_table_accepts() -> None:
    assert set(CONSTRUCTED) == set(ipc.MESSAGES) == ipc.MESSAGE_TYPES
    for kind, msg in CONSTRUCTED.items():
        assert msg["type"] == kind
        assert ipc.validate(msg, ipc.MESSAGES[kind].direction) is msg


def test_only_command_and_route_expect_a_reply() -> None:
    """Notifications (reopen_logs, boot_error among them) are never answered."""
    kinds = {name: spec.kind for name, spec in ipc.MESSAGES.items()}
    requests = [name for name, kind in kinds.items() if kind is Kind.REQUEST]
    assert requests == ["command", "route"]
    assert [name for name, kind in kinds.items() if kind is Kind.REPLY] == ["reply"]
    assert kinds["notify"] is kinds["boot_error"] is kinds["stop"] is Kind.NOTIFICATION


@pytest.mark.parametrize(
    ("msg", "receiving", "accepted"),
    [
        (ipc.stop(), Direction.TO_WORKER, True),
        (ipc.stop(), Direction.TO_ARBITER, False),
        (ipc.heartbeat({}), Direction.TO_ARBITER, True),
        (ipc.heartbeat({}), Direction.TO_WORKER, False),
        (ipc.boot_error("x"), Direction.TO_WORKER, False),
        (ipc.command(1, "ping"), Direction.TO_WORKER, True),
        (ipc.command(1, "ping"), Direction.TO_ARBITER, True),
        (ipc.notify("ping"), Direction.TO_ARBITER, True),
        (ipc.reply(1), Direction.TO_WORKER, True),
        (ipc.route(1, "arbiter", "ping", {}, 1.0), Direction.TO_ARBITER, True),
        (ipc.route(1, "arbiter", "ping", {}, 1.0), Direction.TO_WORKER, False),
    ],
)
def test_the_decoder_holds_the_direction(
    msg: Message, receiving: Direction, accepted: bool
) -> None:
    decoder = FrameDecoder(receiving=receiving)
    if accepted:
        assert decoder.feed(encode(msg)) == [msg]
    else:
        with pytest.raises(ProtocolError, match="not a message this side receives"):
            decoder.feed(encode(msg))


# -- the command registry (pure) ---------------------------------------------------------


class Actor:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []


def registry() -> Registry:
    commands = Registry()

    @commands.command
    def ping(actor: Actor) -> str:
        return "pong"

    @commands.command(name="add", runs_in=("worker", "arbiter"), workers=True)
    def add_numbers(actor: Actor, *, a: int, b: int = 0) -> int:
        return a + b

    @commands.command(runs_in=("arbiter",), checks={"n": positive})
    def scale(actor: Actor, n: int) -> int:
        actor.calls.append(("scale", n))
        return n

    @commands.command
    async def slow(actor: Actor, *, delay: float) -> float:
        await asyncio.sleep(delay)
        return delay

    @commands.command(timeout=0.05)
    async def hang(actor: Actor) -> None:
        await asyncio.Event().wait()

    @commands.command
    def broken(actor: Actor) -> None:
        raise RuntimeError("a bug")

    @commands.command
    def anything(actor: Actor, **kwargs: Any) -> dict[str, Any]:
        return kwargs

    return commands


def positive(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ValueError(f"expected an integer > 0, got {value!r}")


def call(commands: Registry, kind: ipc.ActorKind, name: object, **args: Any) -> Any:
    return asyncio.run(commands.call(Actor(), kind, name, args))


def test_registry_dispatches_by_name_and_kind() -> None:
    commands = registry()
    assert call(commands, "worker", "ping") == "pong"
    assert call(commands, "worker", "add", a=1, b=2) == 3
    assert call(commands, "arbiter", "add", a=1) == 1
    assert call(commands, "arbiter", "scale", n=3) == 3
    assert call(commands, "worker", "slow", delay=0) == 0
    assert call(commands, "worker", "anything", x=[1]) == {"x": [1]}
    assert [c.name for c in commands.commands("arbiter")] == ["add", "scale"]
    assert commands.get("worker", "scale") is None


@pytest.mark.parametrize(
    ("kind", "name", "args", "error"),
    [
        ("worker", "nope", {}, "unknown command 'nope'"),
        ("worker", ["ping"], {}, "unknown command ['ping']"),
        ("arbiter", "ping", {}, "unknown command 'ping'"),
        ("worker", "ping", {"x": 1}, "ping: unknown argument 'x'"),
        ("worker", "add", {}, "add: missing argument 'a'"),
        ("arbiter", "scale", {"n": 0}, "scale: n: expected an integer > 0, got 0"),
        ("arbiter", "scale", {"n": True}, "scale: n: expected an integer > 0"),
        ("worker", "hang", {}, "hang: no answer within 0.05s"),
        ("worker", "broken", {}, "broken: RuntimeError: a bug"),
    ],
)
def test_registry_errors_are_command_errors(
    kind: ipc.ActorKind, name: object, args: dict[str, Any], error: str
) -> None:
    with pytest.raises(CommandError) as info:
        call(registry(), kind, name, **args)
    assert str(info.value) == error or str(info.value).startswith(error)


def test_workers_call_only_what_is_marked_for_them() -> None:
    commands, actor = registry(), Actor()
    assert asyncio.run(commands.call(actor, "arbiter", "add", {"a": 2}, from_worker=True)) == 2
    with pytest.raises(CommandError, match="'scale' cannot be called by a worker"):
        asyncio.run(commands.call(actor, "arbiter", "scale", {"n": 2}, from_worker=True))
    assert actor.calls == []


def test_registry_refuses_bad_declarations() -> None:
    commands = registry()
    with pytest.raises(ValueError, match="already declared for worker"):
        commands.command(name="ping")(lambda actor: None)
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        commands.command(name="t", timeout=0)(lambda actor: None)
    with pytest.raises(ValueError, match="runs_in"):
        commands.command(name="r", runs_in=())(lambda actor: None)
    with pytest.raises(TypeError, match="checks for unknown arguments"):
        commands.command(name="c", checks={"x": positive})(lambda actor: None)
    with pytest.raises(TypeError, match="the actor as its first argument"):
        commands.command(name="a")(lambda: None)
    with pytest.raises(TypeError, match="must be a keyword"):
        commands.command(name="v")(lambda actor, *rest: None)


def test_the_builtin_commands() -> None:
    """One registry: the arbiter's commands are what ctl offers; the worker's include
    reopen_logs, sent on USR1 as a notification; ping, echo and info run everywhere."""
    arbiter = {c.name: c for c in COMMANDS.commands("arbiter")}
    assert list(arbiter) == ["echo", "info", "ping", "reload", "scale", "stats", "stop", "workers"]
    assert [p.name for p in arbiter["scale"].params] == ["workers"]
    refused = {name for name, c in arbiter.items() if not c.workers}
    assert refused == {"reload", "scale", "stop"}, "workers may not stop, reload or scale"
    assert arbiter["stats"].bare_answer
    worker = [c.name for c in COMMANDS.commands("worker")]
    assert worker == ["echo", "info", "ping", "reopen_logs", "stats"]
    actor = [c.name for c in COMMANDS.commands("actor")]
    assert actor == ["echo", "info", "ping", "reopen_logs", "stats"]
    with pytest.raises(CommandError, match=r"1\.\.4096"):
        arbiter["scale"].bind({"workers": 4097})


# -- property tests ----------------------------------------------------------------------

json_text = st.text(st.characters(codec="utf-8"), max_size=20)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_text,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(json_text, children, max_size=3)
    ),
    max_leaves=8,
)
json_objects = st.dictionaries(json_text, json_values, max_size=3)
ids = st.integers(min_value=1, max_value=2**63)
messages = st.one_of(
    st.builds(ipc.ready, st.integers()),
    st.builds(ipc.heartbeat, json_objects),
    st.builds(ipc.retiring, json_text),
    st.builds(ipc.stop, st.booleans(), st.none() | st.floats(0, 1e9) | st.integers(0, 10**6)),
    st.builds(ipc.boot_error, json_text),
    st.builds(ipc.command, ids, json_text.filter(bool), json_objects),
    st.builds(ipc.notify, json_text.filter(bool), json_objects),
    st.builds(ipc.reply, ids, json_values, st.none() | json_text),
)


@given(st.lists(messages, max_size=5), st.data())
def test_any_chunking_decodes_the_same_messages(msgs: list[Message], data: st.DataObject) -> None:
    stream = b"".join(map(encode, msgs))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder()
    out: list[Message] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        out += decoder.feed(stream[start:cut])
        start = cut
    assert out == msgs
    assert decoder.buffered == 0


def _decode_or_protocol_error(chunks: list[bytes]) -> None:
    decoder = FrameDecoder()
    try:
        for chunk in chunks:
            for msg in decoder.feed(chunk):
                assert msg["type"] in ipc.MESSAGE_TYPES
    except ProtocolError:
        pass


@given(st.lists(st.binary(max_size=64), max_size=6))
def test_random_bytes_decode_or_raise_protocol_error(chunks: list[bytes]) -> None:
    _decode_or_protocol_error(chunks)


@given(st.lists(st.binary(max_size=64) | st.text(max_size=64).map(str.encode), max_size=4))
def test_random_payloads_in_valid_frames(payloads: list[bytes]) -> None:
    _decode_or_protocol_error([frame(payload) for payload in payloads])


@given(st.lists(json_values.map(lambda v: json.dumps(v).encode()), max_size=4))
def test_random_json_in_valid_frames(payloads: list[bytes]) -> None:
    _decode_or_protocol_error([frame(payload) for payload in payloads])


# -- Channel over a real socketpair, on both loops --------------------------------------------


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    new_loop = uvloop.new_event_loop() if request.param == "uvloop" else asyncio.new_event_loop()
    try:
        yield new_loop
    finally:
        new_loop.run_until_complete(new_loop.shutdown_asyncgens())
        new_loop.close()


def run(loop: asyncio.AbstractEventLoop, coro: Awaitable[T]) -> T:
    return loop.run_until_complete(asyncio.wait_for(coro, 5))


class Inbox:
    """An on_message callback that queues what it gets."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Message] = asyncio.Queue()

    def __call__(self, channel: Channel, msg: Message) -> None:
        self.queue.put_nowait(msg)

    async def get(self) -> Message:
        return await asyncio.wait_for(self.queue.get(), 2)


class Served:
    """A worker side's commands: echo, fail, sleep, hang (until released), and a log of
    what ran (notifications included)."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, dict[str, Any]]] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, name: str, args: dict[str, Any]) -> Any:
        self.ran.append((name, args))
        if name == "echo":
            return args
        if name == "fail":
            raise CommandError("it failed")
        if name == "sleep":
            await asyncio.sleep(0.01 * args["delay"])
            return args["delay"]
        if name == "hang":
            self.started.set()
            await self.release.wait()
            return "late"
        if name == "unsendable":
            return {"when": object()}
        raise CommandError(f"unknown command {name!r}")


OnMessage = Callable[[Channel, Message], Any]


async def pair(
    left: OnMessage, right: OnMessage, *, on_command: OnCommand | None = None, **kwargs: Any
) -> tuple[Channel, Channel]:
    """(arbiter, worker): ``on_command`` serves the worker side's commands."""
    a, b = socket.socketpair()
    return (
        await Channel.connect(a, left, **kwargs),
        await Channel.connect(b, right, on_command=on_command),
    )


def read_frames(sock: socket.socket, count: int) -> list[Message]:
    """Read ``count`` messages from a raw (blocking, with a timeout) socket."""
    decoder, got = FrameDecoder(), list[Message]()
    sock.settimeout(2.0)
    while len(got) < count:
        data = sock.recv(65536)
        assert data, f"closed after {got}"
        got += decoder.feed(data)
    return got


async def close_all(*channels: Channel) -> None:
    for channel in channels:
        channel.close()
    for channel in channels:
        await channel.closed


def test_messages_both_ways(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        inbox_a, inbox_b = Inbox(), Inbox()
        a, b = await pair(inbox_a, inbox_b)
        assert a.send(ipc.ready(42))
        assert b.send(ipc.stop(graceful=True, timeout=3))
        assert await inbox_b.get() == ipc.ready(42)
        assert await inbox_a.get() == ipc.stop(graceful=True, timeout=3)
        for n in range(100):
            a.send(ipc.heartbeat({"n": n}))
        assert [(await inbox_b.get())["stats"]["n"] for _ in range(100)] == list(range(100))
        await close_all(a, b)

    run(loop, main())


def test_request_reply_and_gather(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        arbiter, worker = await pair(Inbox(), Inbox(), on_command=Served())
        assert await arbiter.request("echo", {"x": 1}, timeout=2) == {"x": 1}
        results = await asyncio.gather(
            *(arbiter.request("echo", {"n": n}, timeout=2) for n in range(20))
        )
        assert results == [{"n": n} for n in range(20)]
        assert arbiter._pending == {}
        await close_all(arbiter, worker)

    run(loop, main())


def test_replies_out_of_order_are_correlated(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        arbiter, worker = await pair(Inbox(), Inbox(), on_command=Served())
        delays = [5, 1, 3, 0, 2]
        results = await asyncio.gather(
            *(arbiter.request("sleep", {"delay": d}, timeout=2) for d in delays)
        )
        assert results == delays
        await close_all(arbiter, worker)

    run(loop, main())


def test_error_reply_raises_command_error(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        arbiter, worker = await pair(Inbox(), Inbox(), on_command=Served())
        with pytest.raises(CommandError, match="it failed"):
            await arbiter.request("fail", timeout=2)
        with pytest.raises(CommandError, match="unknown command 'nope'"):
            await arbiter.request("nope", timeout=2)
        with pytest.raises(CommandError, match="unsendable: the result cannot be sent"):
            await arbiter.request("unsendable", timeout=2)
        assert await arbiter.request("echo", {"still": "serving"}, timeout=2) == {
            "still": "serving"
        }
        await close_all(arbiter, worker)

    run(loop, main())


def test_late_reply_is_ignored(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        served = Served()
        arbiter, worker = await pair(Inbox(), Inbox(), on_command=served)
        with pytest.raises(asyncio.TimeoutError):
            await arbiter.request("hang", timeout=0.01)
        assert arbiter._pending == {}
        await served.started.wait()
        served.release.set()  # the reply to request 1 comes after its timeout
        worker.send(ipc.reply(10**6, "unknown"))
        worker.send(ipc.stop())
        while not any("unknown or expired request 1000000" in r.message for r in caplog.records):
            await asyncio.sleep(0.001)
        assert not arbiter.is_closing
        await close_all(arbiter, worker)

    with caplog.at_level(logging.DEBUG, logger="pulsar_arbiter.ipc"):
        run(loop, main())
    assert any("expired request 1" in r.message for r in caplog.records)


def test_peer_close_resolves_closed_and_fails_pending(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        served = Served()
        arbiter, worker = await pair(Inbox(), Inbox(), on_command=served)
        pending = asyncio.ensure_future(arbiter.request("hang", timeout=5))
        await served.started.wait()  # nothing unread: a close with unread data is a reset
        worker.close()
        assert await arbiter.closed is None
        assert await worker.closed is None
        with pytest.raises(ChannelClosed):
            await pending
        assert arbiter.is_closing
        assert not arbiter.send(ipc.heartbeat({}))
        with pytest.raises(ChannelClosed):
            await arbiter.request("after-close", timeout=1)

    run(loop, main())


def test_raw_peer_eof_and_death(loop: asyncio.AbstractEventLoop) -> None:
    """A worker notices that the arbiter died: its end of the socketpair reads EOF."""

    async def main() -> None:
        mine, theirs = socket.socketpair()
        channel = await Channel.connect(mine, Inbox())
        theirs.sendall(encode(ipc.stop()))
        theirs.shutdown(socket.SHUT_WR)
        assert await channel.closed is None
        theirs.close()

    run(loop, main())


def test_garbage_from_peer_closes_channel(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        inbox = Inbox()
        mine, theirs = socket.socketpair()
        channel = await Channel.connect(mine, inbox)
        theirs.sendall(encode(ipc.ready(1)) + frame(b'{"type":"bogus"}') + encode(ipc.ready(2)))
        await channel.closed
        theirs.close()
        while not inbox.queue.empty():  # nothing after the bad frame is dispatched
            assert inbox.queue.get_nowait() == ipc.ready(1)

    run(loop, main())
    assert "unknown message type 'bogus'" in caplog.text


def test_handler_errors_are_logged_and_channel_keeps_going(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Message] = []

    def flaky(channel: Channel, msg: Message) -> None:
        seen.append(msg)
        if msg["type"] == "ready":
            raise RuntimeError("handler bug")

    async def failing_task(channel: Channel, msg: Message) -> None:
        if msg["type"] == "retiring":
            raise RuntimeError("async handler bug")

    async def main() -> None:
        a, b = await pair(Inbox(), flaky)
        a.send(ipc.ready(1))
        a.send(ipc.heartbeat({}))
        while len(seen) < 2:
            await asyncio.sleep(0.001)
        assert [m["type"] for m in seen] == ["ready", "heartbeat"]
        c, d = await pair(Inbox(), failing_task, on_command=Served())
        c.send(ipc.retiring("x"))
        assert await c.request("echo", {"after": 1}, timeout=2) == {"after": 1}
        await close_all(a, b, c, d)

    run(loop, main())
    assert "IPC ready handler failed" in caplog.text
    assert "handler bug" in caplog.text
    assert "async handler bug" in caplog.text


def test_unread_peer_is_declared_dead(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        mine, theirs = socket.socketpair()
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        channel = await Channel.connect(mine, Inbox(), max_write_buffer=64 * 1024)
        blob = ipc.heartbeat({"blob": "x" * 8192})
        for _ in range(1000):
            if not channel.send(blob):
                break
        assert channel.is_closing
        assert await channel.closed is None
        theirs.close()

    run(loop, main())
    assert "considering it dead" in caplog.text


def test_send_rejects_bad_message_without_closing(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        a, b = await pair(Inbox(), Inbox())
        with pytest.raises(ValueError, match="unknown message type"):
            a.send({"type": "nope"})
        assert not a.is_closing
        await close_all(a, b)

    run(loop, main())


def test_close_is_idempotent(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        a, b = await pair(Inbox(), Inbox())
        a.close()
        a.close()
        a.abort()
        await a.closed
        await b.closed
        b.close()

    run(loop, main())


# -- requests get one reply, notifications none ---------------------------------------------


def test_a_notification_is_never_answered(loop: asyncio.AbstractEventLoop) -> None:
    """Found in the field: the worker answered every command, so every USR1 (reopen_logs)
    left the arbiter an orphan reply. A notify runs the command and answers nothing; a
    failing one is logged, not answered either."""

    async def main() -> None:
        served = Served()
        mine, theirs = socket.socketpair()
        worker = await Channel.connect(mine, Inbox(), on_command=served)
        theirs.sendall(
            encode(ipc.notify("echo", {"n": 1}))
            + encode(ipc.notify("fail"))
            + encode(ipc.notify("nope"))
            + encode(ipc.command(5, "echo", {"n": 2}))
        )
        # Commands run in order, so a reply to a notify would come before this one.
        replies = await loop.run_in_executor(None, read_frames, theirs, 1)
        assert replies == [ipc.reply(5, {"n": 2})]
        assert [name for name, _ in served.ran] == ["echo", "fail", "nope", "echo"]
        theirs.close()
        await worker.closed

    run(loop, main())


def test_requests_without_a_registry_get_an_error_reply(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        arbiter, worker = await pair(Inbox(), Inbox())
        with pytest.raises(CommandError, match="runs no commands"):
            await worker.request("ping", timeout=2)
        await close_all(arbiter, worker)

    run(loop, main())


def test_a_flood_of_commands_is_bounded(loop: asyncio.AbstractEventLoop) -> None:
    """At most MAX_RUNNING_COMMANDS run at once per channel; the rest are refused at once."""

    async def main() -> None:
        served = Served()
        arbiter, worker = await pair(Inbox(), Inbox(), on_command=served)
        calls = [
            asyncio.ensure_future(arbiter.request("hang", timeout=5))
            for _ in range(MAX_RUNNING_COMMANDS + 10)
        ]
        while sum(c.done() for c in calls) < 10:
            await asyncio.sleep(0.001)
        refused = [c for c in calls if c.done()]
        assert len(refused) == 10
        for call in refused:
            with pytest.raises(CommandError, match="busy"):
                call.result()
        served.release.set()
        assert await asyncio.gather(*(c for c in calls if c not in refused)) == ["late"] * (
            MAX_RUNNING_COMMANDS
        )
        await close_all(arbiter, worker)

    run(loop, main())


def test_a_message_from_the_wrong_side_closes_the_channel(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """The arbiter's channel receives only what workers send: a ``stop`` from a worker is a
    protocol error."""

    async def main() -> None:
        inbox = Inbox()
        mine, theirs = socket.socketpair()
        channel = await Channel.connect(mine, inbox, receiving=Direction.TO_ARBITER)
        theirs.sendall(encode(ipc.ready(1)) + encode(ipc.stop()))
        await channel.closed
        theirs.close()
        while not inbox.queue.empty():  # nothing from the bad frame on is dispatched
            assert inbox.queue.get_nowait() == ipc.ready(1)

    run(loop, main())
    assert "stop: not a message this side receives" in caplog.text


# -- the fast paths: the nesting pre-check, plain commands, one timer per request --------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}ab"\\'),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=60,
)


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@given(JSON_VALUES, st.integers(min_value=0, max_value=8))
def test_the_bracket_count_never_misses_deep_nesting(value: Any, limit: int) -> None:
    payload = json.dumps(value, ensure_ascii=False).encode("utf-8")
    if not ipc.frames.may_nest_deeper(payload, limit):
        assert not ipc.nesting_exceeds(value, limit)


def test_over_deep_frames_are_still_refused_both_ways() -> None:
    deep = {"type": "heartbeat", "stats": {"x": nested(ipc.MAX_DEPTH - 1)}}  # 33 levels
    with pytest.raises(ProtocolError, match="nested deeper"):
        FrameDecoder().feed(frame(json.dumps(deep).encode()))
    with pytest.raises(ValueError, match="nested deeper"):
        encode(deep)
    fits = {"type": "heartbeat", "stats": {"x": nested(ipc.MAX_DEPTH - 2)}}
    assert FrameDecoder().feed(encode(fits)) == [fits]
    # Brackets inside strings make the pre-check walk the value, which is shallow.
    brackets = {"type": "heartbeat", "stats": {"s": "[{" * 100}}
    assert FrameDecoder().feed(encode(brackets)) == [brackets]


def test_plain_commands_are_answered_without_a_task(loop: asyncio.AbstractEventLoop) -> None:
    def plain(name: str, args: dict[str, Any]) -> Any:
        if name == "fail":
            raise CommandError("it failed", type="ValueError")
        if name == "bug":
            raise KeyError(name)
        return {"name": name, **args}

    async def main() -> None:
        arbiter, worker = await pair(Inbox(), Inbox(), on_command=plain)
        results = await asyncio.gather(
            *(arbiter.request("echo", {"n": n}, timeout=2) for n in range(50))
        )
        assert results == [{"name": "echo", "n": n} for n in range(50)]
        assert worker.running == 0 and arbiter.pending == 0
        with pytest.raises(CommandError, match="it failed") as info:
            await arbiter.request("fail", timeout=2)
        assert info.value.type == "ValueError"
        with pytest.raises(CommandError, match="internal error: KeyError"):
            await arbiter.request("bug", timeout=2)
        await close_all(arbiter, worker)

    run(loop, main())


def test_a_timed_out_request_leaves_nothing_behind(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        served = Served()
        arbiter, worker = await pair(Inbox(), Inbox(), on_command=served)
        for _ in range(3):
            with pytest.raises(asyncio.TimeoutError):
                await arbiter.request("hang", timeout=0.02)
        assert arbiter.pending == 0
        # The worker gave each up at the caller's timeout too (its reply came too late).
        await asyncio.sleep(0.05)
        assert worker.running == 0
        assert await arbiter.request("echo", {"ok": 1}, timeout=2) == {"ok": 1}
        await close_all(arbiter, worker)

    run(loop, main())


def test_frames_queued_in_one_turn_go_out_together_and_close_flushes_them(
    loop: asyncio.AbstractEventLoop,
) -> None:
    async def main() -> None:
        mine, theirs = socket.socketpair()
        channel = await Channel.connect(mine, Inbox())
        for n in range(50):
            assert channel.send(ipc.heartbeat({"n": n}))
        channel.close()  # before the loop turns: what is queued still goes out
        await channel.closed
        got = await asyncio.get_running_loop().run_in_executor(None, read_frames, theirs, 50)
        assert [m["stats"]["n"] for m in got] == list(range(50))
        theirs.close()

    run(loop, main())
