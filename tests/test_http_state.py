"""The HTTP connection's state machine, byte by byte: no sockets, no running loop.

Two tiers, in h11's manner. The table (``pulsar_arbiter.http.state``) is checked as data.
Then an ``HttpConnection`` is fed bytes through a fake transport and what it writes back,
and the states it takes, are checked; :func:`checked_states` (also used by the loopback
tests in test_http.py and test_wsgi.py) fails a test in which a connection takes a state
change the table does not list, including the hot ones written directly.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import sys
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest

from pulsar_arbiter import ProtocolConsumer, _core
from pulsar_arbiter.http import (
    HttpConnection,
    HttpConsumer,
    HttpRequest,
    Limits,
    PeerError,
    Response,
    State,
    http_protocol_factory,
)
from pulsar_arbiter.http.errors import StateError
from pulsar_arbiter.http.state import TRANSITIONS, Input, next_state

OK = Response(b"ok", content_type="text/plain")
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


# ------------------------------------------------------------------------------ checking
ALLOWED_CHANGES = {(before, after) for (before, _), after in TRANSITIONS.items()}


@pytest.fixture
def checked_states(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[list[tuple[State, State]]]:
    """Every state change of every HttpConnection in the test, checked against the table.

    The connection writes its hot changes directly (no lookup on the per-request path);
    here ``state`` becomes a property that records each change, so a direct write the
    table does not allow fails the test even when it happens inside a parser callback.
    """
    changes: list[tuple[State, State]] = []
    if _core.is_compiled(sys.modules[HttpConnection.__module__]):
        # The compiled core writes ``state`` to its native slot, past any property set on
        # the class, so changes cannot be recorded: a test that reads the recorded list
        # runs in the pure pass of the suite (PULSAR_ARBITER_PURE=1) only; the others
        # (HTTP, WSGI, ASGI, conformance) run on, checked against the table in that pass.
        if inspect.getsource(request.function).count("checked_states") > 1:  # reads it
            pytest.skip("state changes are recorded on the pure path only")
        yield changes
        return

    def get(self: HttpConnection) -> State:
        return self.__dict__["_checked_state"]  # type: ignore[no-any-return]

    def set_(self: HttpConnection, new: State) -> None:
        old = self.__dict__.get("_checked_state")
        if old is not None:
            changes.append((old, new))
        self.__dict__["_checked_state"] = new

    monkeypatch.setattr(HttpConnection, "state", property(get, set_), raising=False)
    yield changes
    illegal = [change for change in changes if change not in ALLOWED_CHANGES]
    assert not illegal, f"state changes missing from TRANSITIONS: {illegal}"


# ------------------------------------------------------------------------------- the table
def test_every_state_is_reachable_from_idle() -> None:
    reached = {State.IDLE}
    frontier = deque([State.IDLE])
    while frontier:
        state = frontier.popleft()
        for (before, _), after in TRANSITIONS.items():
            if before is state and after not in reached:
                reached.add(after)
                frontier.append(after)
    assert reached == set(State)


def test_the_parser_is_fed_in_idle_head_and_body_only() -> None:
    # The connection tests ``state > BODY`` on every read: the order is part of the design.
    assert [s for s in State if s <= State.BODY] == [State.IDLE, State.HEAD, State.BODY]


def test_the_request_cycle() -> None:
    state = State.IDLE
    for event, expected in (
        (Input.REQUEST, State.HEAD),
        (Input.HEAD_END, State.BODY),
        (Input.MESSAGE_END, State.IDLE),
        (Input.REQUEST, State.HEAD),
        (Input.HEAD_END, State.BODY),
        (Input.MESSAGE_END_CLOSE, State.CLOSING),
        (Input.LINGER, State.LINGERING),
        (Input.LOST, State.CLOSED),
    ):
        state = next_state(state, event)
        assert state is expected


def test_illegal_inputs_fail_loudly() -> None:
    for state, event in (
        (State.IDLE, Input.HEAD_END),
        (State.HEAD, Input.MESSAGE_END),
        (State.CLOSING, Input.REQUEST),
        (State.UPGRADED, Input.REQUEST),
        (State.CLOSED, Input.LOST),
        (State.CLOSED, Input.REQUEST),
    ):
        with pytest.raises(StateError, match=event.name):
            next_state(state, event)


def test_nothing_leaves_closed_and_only_upgrades_enter_upgraded() -> None:
    for (before, event), after in TRANSITIONS.items():
        if before is State.CLOSED:
            assert after is State.CLOSED
        if after is State.UPGRADED and before is not State.UPGRADED:
            assert event is Input.UPGRADE_ACCEPT
        if after is State.LINGERING and before is not State.LINGERING:
            assert event is Input.LINGER
        if event is Input.LOST:
            assert after is State.CLOSED


def test_a_parser_event_never_reopens_a_closing_connection() -> None:
    # Only an upgrade answer (declined: the bytes after it are HTTP again) goes back.
    for (before, event), after in TRANSITIONS.items():
        if before in (State.CLOSING, State.LINGERING) and after <= State.BODY:
            assert event is Input.UPGRADE_DECLINE


# ---------------------------------------------------------------------- the byte-level tier
class FakeTransport(asyncio.Transport):
    """A transport that keeps what is written and records pauses, EOF and closes."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False
        self.reading = True
        self.eof_written = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.eof_written, "write after write_eof"
        self.written += data

    def take(self) -> bytes:
        data = bytes(self.written)
        self.written.clear()
        return data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A loop that never runs: timers may be scheduled, nothing waits on them."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def state_of(connection: HttpConnection) -> State:
    """The state now: a call, so the type checker does not keep what an earlier
    assert narrowed it to."""
    return connection.state


def connect(
    loop: asyncio.AbstractEventLoop, handler: Any = None, limits: Limits | None = None
) -> tuple[HttpConnection, FakeTransport]:
    factory = http_protocol_factory(handler or (lambda request: OK), limits=limits)
    connection = factory(loop=loop)
    transport = FakeTransport()
    connection.connection_made(transport)
    return connection, transport


def statuses(data: bytes) -> list[int]:
    """The status codes of the answers in ``data`` (bodies here never look like one)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


def test_a_request_goes_idle_head_body_idle(
    loop: asyncio.AbstractEventLoop, checked_states: list[tuple[State, State]]
) -> None:
    connection, transport = connect(loop)
    assert state_of(connection) is State.IDLE
    connection.data_received(GET)
    assert statuses(transport.take()) == [200]
    assert state_of(connection) is State.IDLE
    assert checked_states == [
        (State.IDLE, State.HEAD),
        (State.HEAD, State.BODY),
        (State.BODY, State.IDLE),
    ]


def test_a_head_fed_one_byte_at_a_time(
    loop: asyncio.AbstractEventLoop, checked_states: list[tuple[State, State]]
) -> None:
    connection, transport = connect(loop)
    seen = []
    for i in range(len(GET) - 1):
        connection.data_received(GET[i : i + 1])
        seen.append(connection.state)
    # IDLE until the target is complete, then HEAD until the blank line.
    head_from = seen.index(State.HEAD)
    assert set(seen[:head_from]) == {State.IDLE} and set(seen[head_from:]) == {State.HEAD}
    assert transport.take() == b""
    connection.data_received(GET[-1:])
    assert statuses(transport.take()) == [200]
    assert state_of(connection) is State.IDLE


def test_a_body_arrives_in_body(
    loop: asyncio.AbstractEventLoop, checked_states: list[tuple[State, State]]
) -> None:
    bodies: list[bytes] = []

    def handler(request: HttpRequest) -> Response:
        bodies.append(request.body)
        return OK

    connection, transport = connect(loop, handler)
    connection.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhe")
    assert state_of(connection) is State.BODY
    connection.data_received(b"llo")
    assert bodies == [b"hello"]
    assert statuses(transport.take()) == [200]
    assert state_of(connection) is State.IDLE


def test_pipelined_requests_are_answered_in_order(
    loop: asyncio.AbstractEventLoop, checked_states: list[tuple[State, State]]
) -> None:
    def handler(request: HttpRequest) -> Response:
        return Response(request.path.encode())

    connection, transport = connect(loop, handler)
    connection.data_received(
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HT"
    )
    data = transport.take()
    assert statuses(data) == [200, 200]
    assert data.index(b"\r\n\r\n/a") < data.index(b"\r\n\r\n/b")
    assert state_of(connection) is State.HEAD
    connection.data_received(b"TP/1.1\r\nHost: x\r\n\r\n")
    assert transport.take().endswith(b"\r\n\r\n/c")


def test_connection_close_stops_reading(
    loop: asyncio.AbstractEventLoop, checked_states: list[tuple[State, State]]
) -> None:
    connection, transport = connect(loop)
    connection.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" + GET)
    data = transport.take()
    assert statuses(data) == [200]  # the request after it is not read
    assert b"connection: close\r\n" in data
    assert state_of(connection) is State.CLOSING
    assert transport.closing
    connection.data_received(GET)
    assert transport.take() == b""


def test_http_1_0_without_keep_alive_closes(
    loop: asyncio.AbstractEventLoop, checked_states: list[tuple[State, State]]
) -> None:
    connection, transport = connect(loop)
    connection.data_received(b"GET / HTTP/1.0\r\n\r\n")
    assert statuses(transport.take()) == [200]
    assert state_of(connection) is State.CLOSING
    assert (State.BODY, State.CLOSING) in checked_states


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
        (b"\x00\x01 nonsense\r\n\r\n", 400),
        (b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"v" * 100 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n", 413),
        (b"GET / HTTP/2.0\r\nConnection: keep-alive\r\n\r\n", 505),
    ],
)
def test_a_peer_error_is_answered_then_lingers(
    loop: asyncio.AbstractEventLoop,
    checked_states: list[tuple[State, State]],
    request_bytes: bytes,
    status: int,
) -> None:
    limits = Limits(max_request_line=64, max_header_size=64, max_body=100)
    connection, transport = connect(loop, limits=limits)
    connection.data_received(request_bytes)
    data = transport.take()
    assert statuses(data) == [status]
    assert b"connection: close\r\n" in data
    # Our side is shut (write EOF) and what follows is read and dropped, not parsed.
    assert state_of(connection) is State.LINGERING
    assert transport.eof_written and not transport.closing
    connection.data_received(GET)
    assert transport.take() == b""
    connection.connection_lost(None)
    assert state_of(connection) is State.CLOSED


def test_a_peer_error_waits_behind_the_answers_due(
    loop: asyncio.AbstractEventLoop, checked_states: list[tuple[State, State]]
) -> None:
    connection, transport = connect(loop)
    connection.data_received(GET + b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    assert statuses(transport.take()) == [200, 400]
    assert state_of(connection) is State.LINGERING


class BodyConsumer(HttpConsumer):
    """Dispatched with its head; records how its request ended."""

    ended: list[BaseException | None] = []

    def on_message(self) -> None:
        self.send(OK)

    def finished(self, exc: BaseException | None = None) -> bool:
        BodyConsumer.ended.append(exc)
        return super().finished(exc)


def test_a_broken_body_ends_its_request_with_a_typed_peer_error(
    loop: asyncio.AbstractEventLoop, checked_states: list[tuple[State, State]]
) -> None:
    BodyConsumer.ended = []
    connection, transport = connect(loop)
    connection._consumer_factory = connection._http_factory = BodyConsumer
    connection.data_received(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"
    )
    assert state_of(connection) is State.BODY
    connection.data_received(b"lo\r\nnot-a-size\r\n")
    assert statuses(transport.take()) == [400]
    (error,) = BodyConsumer.ended
    assert isinstance(error, PeerError) and isinstance(error, ConnectionError)
    assert error.status == 400
    assert str(error).startswith("400: ")
    assert state_of(connection) is State.LINGERING


def test_an_eof_in_a_head_abandons_it(
    loop: asyncio.AbstractEventLoop, checked_states: list[tuple[State, State]]
) -> None:
    connection, transport = connect(loop)
    connection.data_received(b"GET / HT")
    assert connection.eof_received() is None
    assert state_of(connection) is State.CLOSING
    assert transport.take() == b""


class Echo(ProtocolConsumer):
    """The protocol an upgrade switches to: echoes what it gets."""

    def data_received(self, data: bytes) -> bytes | None:
        self.write(data)
        return None


UPGRADE = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"


def test_an_accepted_upgrade_gives_the_bytes_to_the_new_protocol(
    loop: asyncio.AbstractEventLoop, checked_states: list[tuple[State, State]]
) -> None:
    def handler(request: HttpRequest) -> Response:
        request.connection.upgrade(Echo)
        return Response(status=101, headers=[("upgrade", "echo"), ("connection", "Upgrade")])

    connection, transport = connect(loop, handler)
    connection.data_received(UPGRADE + b"ping")
    data = transport.take()
    assert statuses(data) == [101]
    assert data.endswith(b"\r\n\r\nping")
    assert state_of(connection) is State.UPGRADED
    connection.data_received(GET)
    assert transport.take() == GET  # echoed, not parsed
    connection.connection_lost(None)
    assert state_of(connection) is State.CLOSED


def test_a_declined_upgrade_goes_on_with_http(
    loop: asyncio.AbstractEventLoop, checked_states: list[tuple[State, State]]
) -> None:
    connection, transport = connect(loop)
    connection.data_received(UPGRADE + GET)
    assert statuses(transport.take()) == [200, 200]
    assert state_of(connection) is State.IDLE
    assert (State.IDLE, State.IDLE) in checked_states  # UPGRADE_DECLINE


def test_an_upgrade_answered_later_holds_what_follows(
    loop: asyncio.AbstractEventLoop, checked_states: list[tuple[State, State]]
) -> None:
    consumers: list[HttpConsumer] = []

    class Later(HttpConsumer):
        def on_message(self) -> None:
            consumers.append(self)

    connection, transport = connect(loop)
    connection._consumer_factory = connection._http_factory = Later
    connection.data_received(UPGRADE + b"ping")
    assert state_of(connection) is State.UPGRADING
    connection.data_received(b"pong")  # held, not parsed
    assert transport.take() == b""
    (consumer,) = consumers
    connection.upgrade(Echo)
    consumer.send(Response(status=101, headers=[("upgrade", "echo")]))
    assert state_of(connection) is State.UPGRADED
    assert transport.take().endswith(b"\r\n\r\npingpong")


def test_a_drain_without_handoff_answers_with_close(
    loop: asyncio.AbstractEventLoop, checked_states: list[tuple[State, State]]
) -> None:
    connection, transport = connect(loop)
    connection.data_received(GET)
    assert b"connection: close" not in transport.take()
    connection.begin_drain()
    assert state_of(connection) is State.IDLE
    assert not transport.is_closing()  # kept for one answer
    connection.data_received(GET)
    data = transport.take()
    assert statuses(data) == [200]
    assert b"connection: close\r\n" in data
    assert transport.is_closing()
    assert state_of(connection) is State.CLOSING


def test_a_slow_head_gets_a_408_at_the_idle_timeout(
    loop: asyncio.AbstractEventLoop, checked_states: list[tuple[State, State]]
) -> None:
    connection, transport = connect(loop)
    connection._timeout = 5.0
    connection.data_received(b"GET / HTTP/1.1\r\nHo")
    connection._idle_timeout()
    assert statuses(transport.take()) == [408]
    assert state_of(connection) is State.LINGERING


@pytest.mark.parametrize(
    "raw",
    [
        b"HEAD / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  # two Hosts: 400 after the head
        b"HEAD / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",  # a broken field: mid-head
        b"HEAD /" + b"x" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",  # 414 in the line
    ],
    ids=["after-head", "mid-head", "request-line"],
)
def test_a_rejected_head_request_gets_no_content(
    loop: asyncio.AbstractEventLoop, checked_states: list[tuple[State, State]], raw: bytes
) -> None:
    """RFC 9110 §9.3.2: an answer to HEAD carries no content, a refusal included."""
    connection, transport = connect(loop)
    connection.data_received(raw)
    data = transport.take()
    (status,) = statuses(data)
    assert status >= 400
    head, _, rest = data.partition(b"\r\n\r\n")
    assert rest == b"", "no content after the head"
    assert b"content-length: " in head and b"connection: close" in head


def test_a_rejected_get_keeps_its_one_line_reason(
    loop: asyncio.AbstractEventLoop, checked_states: list[tuple[State, State]]
) -> None:
    connection, transport = connect(loop)
    connection.data_received(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    _, _, body = transport.take().partition(b"\r\n\r\n")
    assert body.startswith(b"400 Bad Request: ") and body.count(b"\n") == 1
