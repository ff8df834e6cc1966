"""The state of an HTTP connection's request stream: one enum, one transition table.

What an :class:`~pulsar_arbiter.http.connection.HttpConnection` does with the next bytes
it receives depends on one value, its :class:`State`: parse them (``IDLE``, ``HEAD``,
``BODY``), hold them for the protocol an upgrade may switch to (``UPGRADING``), give them
to that protocol (``UPGRADED``), or drop them (``CLOSING``, ``LINGERING``, ``CLOSED``).
The state changes on an :class:`Input`: a parser event (a request begins, its head ends,
it ends, the peer broke a rule or half-closed) or an answering action (an answer says the
connection closes, an upgrade is held, accepted or declined, the close lingers, the
connection is lost). :data:`TRANSITIONS` lists every change; an input it has no entry for
is a :class:`~pulsar_arbiter.http.errors.StateError`.

What is not here, on purpose: which requests wait for an answer (a queue, not a state),
why reading is paused (independent flags), whether answers say ``Connection: close``
because the server drains (a flag read when each answer is framed), and whether the close
lingers (how to close, decided with the reason). They combine with any state.

The table is pure data, tested without sockets (``tests/test_http_state.py``). On the
per-request path the connection writes the four hot changes (``IDLE -> HEAD -> BODY ->
IDLE`` or ``CLOSING``) directly, one attribute store each; the tests check that every
state a connection takes is a change this table allows.
"""

from __future__ import annotations

import enum

from .errors import StateError

__all__ = ["TRANSITIONS", "Input", "State", "next_state"]


class State(enum.IntEnum):
    """Where the request stream is; the parser is fed in the states up to ``BODY``."""

    #: Between requests: the next byte begins one.
    IDLE = 0
    #: A request line and headers are arriving.
    HEAD = 1
    #: The head is parsed; the body (possibly empty) is arriving.
    BODY = 2
    #: Nothing more is read: the last request or an answer said the connection closes, or
    #: the peer broke a rule. The answers already due still go out.
    CLOSING = 3
    #: A request asked to switch protocols and is being answered: what follows it is held.
    UPGRADING = 4
    #: Our side is shut (after a peer error); what arrives is dropped until the peer closes
    #: or ``LINGER_SECONDS`` pass, so the answer is not destroyed by a reset.
    LINGERING = 5
    #: The transport is gone.
    CLOSED = 6
    #: The switch happened: the bytes go to the new protocol's consumers.
    UPGRADED = 7


class Input(enum.Enum):
    """What changes the state: parser events, then answering actions."""

    #: The parser saw the start of a request (its target).
    REQUEST = "request"
    #: The request's headers are complete.
    HEAD_END = "head end"
    #: The request is complete and keeps the connection alive.
    MESSAGE_END = "message end"
    #: The request is complete and said it closes the connection (or is HTTP/1.0).
    MESSAGE_END_CLOSE = "message end, close"
    #: Malformed bytes, a broken limit, a head not received in time: answer, then close.
    PEER_ERROR = "peer error"
    #: The peer half-closed in the middle of a request: that request can never complete.
    PEER_EOF = "peer eof mid-request"
    #: An answer said the connection closes (or went out before its request's body).
    ANSWER_CLOSES = "answer closes"
    #: An upgrade request is still being answered: hold the bytes after it.
    UPGRADE_HOLD = "upgrade hold"
    #: The upgrade request was answered with a new consumer factory: switch.
    UPGRADE_ACCEPT = "upgrade accept"
    #: The upgrade request was answered without one: the bytes that follow are HTTP.
    UPGRADE_DECLINE = "upgrade decline"
    #: Closing with a lingering shutdown (write EOF, read and drop, then close).
    LINGER = "linger"
    #: ``connection_lost``.
    LOST = "lost"


IDLE, HEAD, BODY = State.IDLE, State.HEAD, State.BODY
CLOSING, UPGRADING, LINGERING = State.CLOSING, State.UPGRADING, State.LINGERING
CLOSED, UPGRADED = State.CLOSED, State.UPGRADED

# A request's head and body may still be parsed in the same read after an answer closed
# the connection (a consumer answering as soon as the head arrived): those parser events
# leave CLOSING as it is. After an upgrade the connection is the new protocol's; it may
# still linger (a drain's idle timeout) without taking the bytes from it.
TRANSITIONS: dict[tuple[State, Input], State] = {
    # parser events
    (IDLE, Input.REQUEST): HEAD,
    (HEAD, Input.HEAD_END): BODY,
    (BODY, Input.MESSAGE_END): IDLE,
    (BODY, Input.MESSAGE_END_CLOSE): CLOSING,
    (CLOSING, Input.MESSAGE_END_CLOSE): CLOSING,
    (IDLE, Input.PEER_ERROR): CLOSING,
    (HEAD, Input.PEER_ERROR): CLOSING,
    (BODY, Input.PEER_ERROR): CLOSING,
    (CLOSING, Input.PEER_ERROR): CLOSING,
    (LINGERING, Input.PEER_ERROR): LINGERING,
    (HEAD, Input.PEER_EOF): CLOSING,
    (BODY, Input.PEER_EOF): CLOSING,
    (CLOSING, Input.PEER_EOF): CLOSING,
    # answering actions
    (IDLE, Input.ANSWER_CLOSES): CLOSING,
    (HEAD, Input.ANSWER_CLOSES): CLOSING,
    (BODY, Input.ANSWER_CLOSES): CLOSING,
    (CLOSING, Input.ANSWER_CLOSES): CLOSING,
    (UPGRADING, Input.ANSWER_CLOSES): CLOSING,
    (LINGERING, Input.ANSWER_CLOSES): LINGERING,
    (CLOSED, Input.ANSWER_CLOSES): CLOSED,
    (IDLE, Input.UPGRADE_HOLD): UPGRADING,
    (CLOSING, Input.UPGRADE_HOLD): UPGRADING,
    (IDLE, Input.UPGRADE_ACCEPT): UPGRADED,
    (CLOSING, Input.UPGRADE_ACCEPT): UPGRADED,
    (UPGRADING, Input.UPGRADE_ACCEPT): UPGRADED,
    (LINGERING, Input.UPGRADE_ACCEPT): LINGERING,
    (IDLE, Input.UPGRADE_DECLINE): IDLE,
    (CLOSING, Input.UPGRADE_DECLINE): IDLE,
    (UPGRADING, Input.UPGRADE_DECLINE): IDLE,
    (LINGERING, Input.UPGRADE_DECLINE): LINGERING,
    (IDLE, Input.LINGER): LINGERING,
    (HEAD, Input.LINGER): LINGERING,
    (BODY, Input.LINGER): LINGERING,
    (CLOSING, Input.LINGER): LINGERING,
    (UPGRADING, Input.LINGER): LINGERING,
    (UPGRADED, Input.LINGER): UPGRADED,
    (IDLE, Input.LOST): CLOSED,
    (HEAD, Input.LOST): CLOSED,
    (BODY, Input.LOST): CLOSED,
    (CLOSING, Input.LOST): CLOSED,
    (UPGRADING, Input.LOST): CLOSED,
    (LINGERING, Input.LOST): CLOSED,
    (UPGRADED, Input.LOST): CLOSED,
}


def next_state(state: State, event: Input) -> State:
    """The state after ``event`` in ``state``; a StateError if the table has no entry."""
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise StateError(f"no HTTP state transition for {event.name} in {state.name}") from None
