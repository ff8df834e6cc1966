"""The asyncio shell of an HTTP/1.1 connection: bytes in, parser events, actions out.

One :class:`HttpConnection` per socket owns one ``httptools`` parser, so the byte stream
is parsed exactly once however it is chunked. Each request gets its own
:class:`~pulsar_arbiter.http.consumer.HttpConsumer` (the API's model: one consumer per
request), built when the request is *dispatched*: as soon as its head is complete if a
body follows (so the body can be streamed, or ``Expect: 100-continue`` answered), else
when the request is complete. Requests that arrive while another is being answered
(pipelining) wait, already parsed, in a bounded queue; the next is dispatched when the
current consumer calls ``finished()``, so answers always go out in request order, and
reading pauses while the queue is full.

What the connection does with the bytes it receives is decided by one value, ``state``
(:mod:`pulsar_arbiter.http.state`): the parser callbacks and the answering paths feed it
inputs, and every change is one the state table lists.

Errors go by fault:

* malformed bytes or a limit broken by the peer (see :class:`~pulsar_arbiter.http.Limits`)
  get a 400, 408, 413, 414, 431 or 505 answer with ``Connection: close`` and a one-line
  reason, in request order; that connection then closes (lingering, so the answer is not
  lost to a reset); a consumer whose request was cut short ends with a
  :class:`~pulsar_arbiter.http.errors.PeerError`;
* an application that raises gets a 500, logged once with its traceback (the consumer's
  job); the connection is kept when the response had not started and the request was
  read whole, else closed;
* a bug in a consumer closes that connection only and is logged (the Connection's
  firewall); the worker is never harmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpRequestParser,
)
from mypy_extensions import mypyc_attr

from ..events import AbstractEvent
from ..protocols import MAX_BUFFERED_PIPELINE, Connection, Handoff, ProtocolConsumer
from .chunked import ChunkedDecoder
from .errors import PeerError
from .limits import DEFAULT_LIMITS, LINGER_SECONDS, Limits
from .request import HttpRequest
from .rules import (
    FORBIDDEN_TRAILERS,
    KNOWN_HOSTS,
    target_error,
    transfer_coding_error,
    valid_host,
)
from .state import BODY, CLOSING, HEAD, IDLE, LINGERING, UPGRADED, Input, State, next_state
from .wire import CONTINUE, HOST, METHODS, SPECIAL_BY_LENGTH, error_response

if TYPE_CHECKING:
    from .consumer import HttpConsumer
    from .factory import HttpProtocolFactory

__all__ = ["HOLD_ALL", "HOLD_PIPELINE", "HOLD_STREAM", "HOLD_UPGRADE", "HttpConnection"]

_clock = time.perf_counter

# Why reading is paused, besides write back-pressure (flags of HttpConnection._holds).
HOLD_PIPELINE = 1  # too many requests, or too many body bytes, queued behind the current one
HOLD_STREAM = 2  # a threaded app has not read the body bytes it was given
HOLD_UPGRADE = 4  # bytes after an upgrade request wait for its answer
HOLD_ALL = HOLD_PIPELINE | HOLD_STREAM | HOLD_UPGRADE


@mypyc_attr(allow_interpreted_subclasses=True)
class _Reject(Exception):
    """Raised inside a parser callback to stop parsing: the peer broke a rule."""


@mypyc_attr(allow_interpreted_subclasses=True)
class HttpConnection(Connection):
    """An HTTP/1.1 connection: one parser, one :class:`HttpConsumer` per request.

    ``http`` is the :class:`HttpProtocolFactory` it serves (its ``app``, ``limits`` and
    thread pool). Keep-alive and pipelining follow the Connection's model: the next
    request is dispatched when the current consumer calls ``finished()``. The connection
    parses, so its consumers get parsed requests, never raw bytes: their
    ``data_received``/``data_processed`` events do not fire (the server's ``pre_request``
    and ``post_request`` do). After an upgrade (``upgrade()`` during a request that asked
    for one) the bytes go to the new consumers exactly as on a plain Connection.
    """

    #: HTTP/1.1 keeps no state between requests: a drain hands idle connections off.
    HANDOFF_SAFE: ClassVar[bool] = True

    def __init__(
        self,
        consumer_factory: Callable[..., HttpConsumer] | None = None,
        http: HttpProtocolFactory | None = None,
        limits: Limits | None = None,
        **kw: Any,
    ) -> None:
        # Not super(): mypyc (2.4) passes a super() call's **kw positionally.
        Connection.__init__(self, consumer_factory, **kw)
        self.http = http
        self.app: Any = http.app if http is not None else None
        self.limits = limits = limits or (http.limits if http is not None else DEFAULT_LIMITS)
        # The limits checked on every request, as plain attributes.
        self._max_target = limits.max_request_line
        self._max_field = limits.max_header_size
        self._max_headers = limits.max_headers
        self._max_head = limits.max_head_size
        self._max_body = limits.max_body
        # Up to this many fields, each within max_header_size, cannot exceed max_head_size:
        # the headers are only counted and summed past it.
        self._few_headers = min(limits.max_head_size // limits.max_header_size, limits.max_headers)
        self._http_factory = consumer_factory
        self._parser = HttpRequestParser(self)
        self._parsing: HttpRequest | None = None
        self._active: HttpRequest | None = None
        self._pending: deque[HttpRequest | PeerError] | None = None
        self._backlog = 0
        self._messages = 0
        #: What the next bytes are for (see :mod:`pulsar_arbiter.http.state`); read it,
        #: never write it from outside.
        self.state: State = IDLE
        self._head_bytes = 0
        self._head_size = 0
        self._rejection: tuple[int, str] | None = None
        # Answers framed from now on say ``Connection: close`` (a drain without handoff).
        self._drain_close = False
        # The next close shuts our side and lingers (see close()): after a peer error.
        self._linger_on_close = False
        self._upgrade_request: HttpRequest | None = None
        # The framing of the chunked body being read, if one is (see :mod:`.chunked`).
        self._chunks: ChunkedDecoder | None = None
        # Where in the bytes being fed the parser's current slice starts (an upgrade's
        # offset is relative to it), and the last bytes of the last read (a head's blank
        # line may straddle two reads).
        self._fed_from = 0
        self._head_tail = b""
        self._leftover: bytearray | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._running_pending = False
        self._last: HttpRequest | None = None
        self._holds = 0
        #: One slot for an adapter above HTTP to keep what it computes once per connection
        #: (the WSGI adapter keeps its base environ there); HTTP itself never reads it.
        self.adapter_state: Any = None

    def _to(self, event: Input) -> None:
        """Take the transition the state table gives for ``event``."""
        self.state = next_state(self.state, event)

    # -- parser callbacks (called by httptools inside feed_data): the hot path, kept flat.
    # ``self._parsing`` is set from on_message_begin to on_message_complete.
    # A request begins with its target (llhttp always reports one): no on_message_begin,
    # one callback less per request.
    def on_url(self, url: bytes) -> None:
        request = self._parsing
        if request is None:
            state = self.state
            if state is not IDLE or self._close_after_request:
                # The request in progress (or the last one) closes the connection: what
                # follows was sent before the client could know, and is not read.
                if state is IDLE:
                    self._to(Input.ANSWER_CLOSES)
                raise _Reject("closing")
            request = self._parsing = HttpRequest(self)
            self._messages += 1
            self.state = HEAD  # (IDLE, REQUEST), written directly: once per request
            self._head_bytes = 0
        elif request.target:
            url = request.target + url
        request.target = url
        if len(url) > self._max_target:
            raise self._reject(414, f"request-target longer than {self._max_target} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        request: HttpRequest = self._parsing  # type: ignore[assignment]
        # llhttp drops the whitespace before a value, not after: OWS is no part of it
        # (RFC 9112, 5.1). rstrip returns the same object when there is none.
        if value and value[-1] in (32, 9):  # SP, HTAB: the call only when there is some
            value = value.rstrip(b" \t")
        if self.state is not HEAD:
            # A field line after the head is a trailer field (of a chunked body).
            self._on_trailer(request, name, value)
            return
        headers = request.headers
        headers.append((name, value))
        if len(name) + len(value) > self._max_field or len(headers) > self._few_headers:
            self._check_headers(headers)
        special = SPECIAL_BY_LENGTH.get(len(name))
        if special is not None and name.lower() == special:
            if special is HOST and request.host is None and value in KNOWN_HOSTS:
                request.host = value  # the usual Host: the first, a value seen before
            else:
                self._special_header(request, special, value)

    def _check_headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Limits on a field, the count and the total; the total is only kept past the
        number of fields that cannot exceed it (``_few_headers``)."""
        limits = self.limits
        name, value = headers[-1]
        size = len(name) + len(value)
        if size > limits.max_header_size:
            raise self._reject(431, f"header field longer than {limits.max_header_size} bytes")
        count = len(headers)
        if count > limits.max_headers:
            raise self._reject(431, f"more than {limits.max_headers} header fields")
        if count == self._few_headers + 1:
            self._head_size = sum(len(n) + len(v) for n, v in headers)
        else:
            self._head_size += size
        if self._head_size > limits.max_head_size:
            raise self._reject(431, f"headers longer than {limits.max_head_size} bytes")

    def _on_trailer(self, request: HttpRequest, name: bytes, value: bytes) -> None:
        """Keep a trailer field apart from the headers; drop those a trailer may not be."""
        limits = self.limits
        if len(name) + len(value) > limits.max_header_size:
            raise self._reject(431, f"trailer field longer than {limits.max_header_size} bytes")
        trailers = request.trailers
        assert isinstance(trailers, list), "trailers arrive in a chunked body only"
        if len(trailers) >= limits.max_headers:
            raise self._reject(431, f"more than {limits.max_headers} trailer fields")
        if name.lower() not in FORBIDDEN_TRAILERS:
            trailers.append((name, value))

    def _special_header(self, request: HttpRequest, name: bytes, value: bytes) -> None:
        if name == b"host":
            if request.host is not None:
                raise self._reject(400, "more than one Host field")
            if not valid_host(value):
                raise self._reject(400, "invalid Host field")
            request.host = value
        elif name == b"content-length":
            try:
                request.content_length = int(value)
            except ValueError:
                raise self._reject(400, "invalid Content-Length") from None
        elif name == b"expect":
            request.expect_continue = value.lower() == b"100-continue"
        elif name == b"transfer-encoding":
            request.chunked = True
            codings = request._codings
            if codings is None:
                request._codings = [value]
            else:
                codings.append(value)
        elif name == b"connection":
            request.simple = False  # the version is not implied by keep-alive: ask for it

    def on_headers_complete(self) -> None:
        request: HttpRequest = self._parsing  # type: ignore[assignment]
        if self.state is HEAD:
            self.state = BODY  # (HEAD, HEAD_END), written directly: once per request
        parser = self._parser
        method = parser.get_method()
        request.method = METHODS.get(method) or method.decode("ascii")
        if parser.should_keep_alive() and request.simple:
            # llhttp keeps alive by default only HTTP/1.1 (it accepts 0.9, 1.0, 1.1 and
            # 2.0); the others need a Connection header, and then we ask for the version.
            if method == b"HEAD":
                request.simple = False
            if request.host is None:
                raise self._reject(400, "HTTP/1.1 request without a Host field")
        else:
            self._check_version(request)
        target = request.target
        # 47: "/", 35: "#". An int, not b"#": ``bytes in bytes`` first tries the needle
        # as an int and raises (then clears) a TypeError, thousands of instructions.
        if target[0] != 47 or 35 in target or method == b"CONNECT":
            reason = target_error(method, target)
            if reason is not None:
                raise self._reject(400, reason)
        if request.chunked:
            self._check_codings(request)
        length = request.content_length
        if length or request.chunked:
            # A body follows: dispatch now, so the consumer may stream it (or answer
            # ``Expect: 100-continue``). Requests without one go on message complete.
            if length is not None and length > self._max_body:
                raise self._reject(413, f"body longer than {self._max_body} bytes")
            if self._active is None and not self._pending:
                self._dispatch(request)
            else:
                self._queue(request)

    def _check_version(self, request: HttpRequest) -> None:
        request.simple = False
        parser = self._parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise self._reject(505, f"HTTP/{version} is not supported")
        request.version = version
        request.keep_alive = parser.should_keep_alive()
        if version == "1.1":
            if request.host is None:
                raise self._reject(400, "HTTP/1.1 request without a Host field")
        elif request.chunked:
            # RFC 9112, 6.1: HTTP/1.0 has no Transfer-Encoding; its framing is faulty.
            raise self._reject(400, "Transfer-Encoding in an HTTP/1.0 request")

    def _check_codings(self, request: HttpRequest) -> None:
        """A chunked body: check the codings, then read its framing ourselves."""
        error = transfer_coding_error(request._codings or [])
        if error is not None:
            raise self._reject(*error)
        request.trailers = []
        self._chunks = ChunkedDecoder(self.limits.max_head_size)

    def on_body(self, chunk: bytes) -> None:
        request: HttpRequest = self._parsing  # type: ignore[assignment]
        size = request._body_size + len(chunk)
        if size > self._max_body:
            raise self._reject(413, f"body longer than {self._max_body} bytes")
        request._body_size = size
        stream = request.body_stream
        if stream is not None:
            stream.feed(chunk)
        else:
            request._add_body(chunk)
            if request is not self._active:
                self._backlog += len(chunk)
                if self._backlog > MAX_BUFFERED_PIPELINE:
                    self.hold_reading(HOLD_PIPELINE)

    def on_message_complete(self) -> None:
        request: HttpRequest = self._parsing  # type: ignore[assignment]
        self._parsing = None
        self._last = request
        request.complete = True
        self._chunks = None
        # Written directly, once per request: (BODY, MESSAGE_END) and (BODY or CLOSING,
        # MESSAGE_END_CLOSE). CLOSING stays: an answer closed the connection meanwhile.
        if not request.keep_alive:
            # Nothing after a request that closes the connection is read.
            self.state = CLOSING
        elif self.state is BODY:
            self.state = IDLE
        if request is self._active:
            # Dispatched when its head arrived (it has a body).
            if request.body_stream is not None:
                request.body_stream.feed_eof()
            consumer: Any = self._current_consumer  # an HttpConsumer
            if consumer is not None and not consumer._finished:
                consumer.on_message()
        elif not request.content_length and not request.chunked:
            if self._active is None and not self._pending:
                self._dispatch(request)
            else:
                self._queue(request)

    def _reject(self, status: int, reason: str) -> _Reject:
        self._rejection = (status, reason)
        return _Reject(reason)

    # -- requests to consumers
    def _dispatch(self, request: HttpRequest) -> None:
        self._active = request
        # What current_consumer() does, inlined: this runs for every request.
        factory = self._consumer_factory
        producer = self._producer
        if self._default_build:
            consumer: HttpConsumer = factory(loop=self._loop)  # type: ignore[misc, assignment]
        else:
            consumer = producer.build_consumer(factory)  # type: ignore[union-attr, arg-type, assignment]
        self._current_consumer = consumer
        consumer.started_at = _clock()
        consumer.connection_made(self)
        events = producer._events if producer is not None else None
        if consumer._events or (events and "pre_request" in events):
            consumer.start(request)
        else:
            # What start() does when no event has a listener, without the call.
            consumer._started = True
            consumer._request = request
        if request.complete:
            consumer.on_message()
            return
        if request.expect_continue and consumer.continue_at_once:
            self._write_now(CONTINUE)
        consumer.on_head()

    def _queue(self, item: HttpRequest | PeerError) -> None:
        pending = self._pending
        if pending is None:
            pending = self._pending = deque()
        pending.append(item)
        if len(pending) >= self.limits.max_pipeline:
            self.hold_reading(HOLD_PIPELINE)

    def _run_pending(self) -> None:
        if self._running_pending:
            return
        pending = self._pending
        self._running_pending = True
        try:
            while pending and self._current_consumer is None and not self._close_after_request:
                item = pending.popleft()
                if type(item) is PeerError:
                    pending.clear()
                    self._send_error(item.status, item.reason, item.head)
                    break
                assert isinstance(item, HttpRequest)
                self._backlog -= item._body_size
                self._dispatch(item)
        except Exception as exc:
            self._consumer_failed(exc)
        finally:
            self._running_pending = False
        if not pending:
            self._backlog = 0
            if self._holds & HOLD_PIPELINE:
                self.release_reading(HOLD_PIPELINE)

    # -- bytes in
    def data_received(self, data: bytes) -> None:
        if self.state > BODY:  # not parsing: upgraded, or the bytes are held or dropped
            if self.state is UPGRADED:
                Connection.data_received(self, data)
                return
            leftover = self._leftover
            if leftover is not None:
                leftover += data
                if len(leftover) > MAX_BUFFERED_PIPELINE:
                    self.hold_reading(HOLD_UPGRADE)
            return
        messages = self._messages
        self._processing = True
        try:
            if self._parsing is None and data.find(b"\r\n\r\n") + 4 == len(data):
                # The usual read: one whole head and nothing after it, so no body starts
                # in it (a chunked one is read through its decoder, see _feed).
                self._parser.feed_data(data)
            else:
                self._feed(data)
        except HttpParserUpgrade as exc:
            self._upgrade_requested(data[exc.args[0] :])
        except HttpParserError as exc:
            self._parse_failed(exc)
        except PeerError as exc:  # the chunked framing
            self._rejection = (exc.status, exc.reason)
            self._parse_failed(HttpParserError(exc.reason))
        except Exception as exc:
            self._consumer_failed(exc)
        finally:
            self._processing = False
        if self.state is HEAD:
            if messages == self._messages:
                # The head began in an earlier read: all these bytes are head bytes.
                self._head_bytes += len(data)
            if self._head_bytes > self._max_head:
                self._peer_error(431, f"head longer than {self._max_head} bytes")
        if self._current_consumer is None:
            if (self._close_after_request or self._peer_eof) and self._should_close():
                self.close()
            elif self._draining and self._at_boundary():
                self._boundary_reached()

    def _feed(self, data: bytes) -> None:
        """Feed ``data`` to the parser, the body of a chunked request through its decoder.

        The parser is given one slice at a time, each ending where the framing may
        change: at the end of a head (found here: llhttp ends a head at the first blank
        line and accepts no other line end), of a Content-Length body, or of a chunked
        body (found by the decoder). The state after each slice says what the next
        bytes are.
        """
        parser = self._parser
        end = len(data)
        try:
            self._feed_slices(parser, data, end)
        except HttpParserUpgrade as exc:
            # The parser's offset is in the slice it was given: make it one in ``data``.
            raise HttpParserUpgrade(self._fed_from + exc.args[0]) from None
        finally:
            self._head_tail = data[-3:]

    def _feed_slices(self, parser: HttpRequestParser, data: bytes, end: int) -> None:
        pos = 0
        while pos < end:
            request = self._parsing
            if request is None and self.state > BODY:
                # Nothing more is read (closing, or after an upgrade): the parser
                # refuses the next request, as it would have in one slice.
                self._fed_from = pos
                parser.feed_data(data[pos:])
                return
            chunks = self._chunks
            if chunks is not None:
                out, stop = chunks.feed(data, pos)
                # The body ends at ``stop``: an upgrade's offset is all of ``out``.
                self._fed_from = stop - len(out)
                if out:
                    parser.feed_data(out)
                pos = stop
                continue
            if request is not None and self.state is not HEAD and request.content_length:
                stop = min(end, pos + request.content_length - request._body_size)
            else:
                stop = self._head_end(data, pos, request)
            self._fed_from = pos
            parser.feed_data(data[pos:stop] if pos or stop < end else data)
            pos = stop

    def _head_end(self, data: bytes, pos: int, request: HttpRequest | None) -> int:
        """Where the head read from ``pos`` ends: after its blank line, or at the end."""
        if pos == 0 and request is not None:
            # The head began in an earlier read: its blank line may straddle the two.
            tail = self._head_tail
            for k in (1, 2, 3):
                if data[:k] == b"\r\n\r\n"[4 - k :] and tail.endswith(b"\r\n\r\n"[: 4 - k]):
                    return k
        blank = data.find(b"\r\n\r\n", pos)
        return len(data) if blank == -1 else blank + 4

    def _parse_failed(self, exc: HttpParserError) -> None:
        rejection = self._rejection
        if rejection is not None:
            self._peer_error(*rejection)
        elif self.state > BODY:
            return
        elif isinstance(exc, HttpParserCallbackError) and exc.__context__ is not None:
            # Not the peer's fault: a consumer or this module raised inside a callback.
            self._consumer_failed(exc.__context__)
        else:
            self._peer_error(400, str(exc) or "malformed request")

    def _peer_error(self, status: int, reason: str) -> None:
        """The peer broke the protocol: answer in order, then close (lingering)."""
        self._to(Input.PEER_ERROR)
        active = self._active
        parsing, self._parsing = self._parsing, None
        head = self._is_head()
        if active is not None:
            consumer: Any = self._current_consumer  # an HttpConsumer
            if active is parsing and consumer is not None and not consumer._finished:
                self._linger_on_close = True
                self.close_after_request()
                stream = active.body_stream
                if stream is not None:
                    stream.fail(PeerError(status, reason, f"bad request body: {reason}"))
                consumer.on_peer_error(status, reason)
            else:
                pending = self._pending
                if parsing is not None and pending and pending[-1] is parsing:
                    pending.pop()
                self._queue(PeerError(status, reason, head=head))
            return
        if self._pending:
            self._queue(PeerError(status, reason, head=head))
            return
        self._send_error(status, reason, head)

    def _is_head(self) -> bool:
        """Is the request being parsed a HEAD? The parser knows its method from the
        request line on (the request object only once its head is complete)."""
        try:
            return bool(self._parser.get_method() == b"HEAD")
        except Exception:  # no request line parsed
            return False

    def _send_error(self, status: int, reason: str, head: bool = False) -> None:
        self._write_now(error_response(status, reason, head))
        self._linger_on_close = True
        self._close_after_request = True
        if not self._processing:
            self.close()

    def _write_now(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    # -- upgrades (Upgrade: and CONNECT)
    def _upgrade_requested(self, leftover: bytes) -> None:
        request = self._last
        self._parsing = None
        if request is None:  # pragma: no cover - httptools upgrades after a message only
            self._peer_error(400, "unexpected upgrade")
            return
        request.upgrade = True
        if request is self._active or (self._pending is not None and request in self._pending):
            # Its consumer is still answering: hold what follows until it finishes.
            self._to(Input.UPGRADE_HOLD)
            self._upgrade_request = request
            self._leftover = bytearray(leftover)
            return
        self._after_upgrade(request, leftover)

    def _after_upgrade(self, request: HttpRequest, leftover: bytes) -> None:
        """The upgrade request was answered: switch protocols, or go on with HTTP."""
        if self._consumer_factory is not self._http_factory:
            self._to(Input.UPGRADE_ACCEPT)
            self.release_reading(HOLD_ALL)
            if leftover:
                Connection.data_received(self, leftover)
        elif self._close_after_request:
            self._to(Input.ANSWER_CLOSES)
            return
        elif request.method == "CONNECT":
            # A tunnel that was not opened: what follows is not HTTP.
            self._to(Input.ANSWER_CLOSES)
            self._close_after_request = True
            if not self._processing:
                self.close()
        else:
            # The upgrade was declined: the bytes that follow are HTTP again.
            self._to(Input.UPGRADE_DECLINE)
            self.release_reading(HOLD_ALL)
            if leftover:
                self.data_received(leftover)

    # -- consumer lifecycle
    def _consumer_idle(self) -> bool:
        """No consumer in progress, read afresh: after ``self._current_consumer = None`` in a
        method, mypy (and so the compiled core, which checks it) takes the attribute for None
        even once a call in between has set a new consumer."""
        return self._current_consumer is None

    def _consumer_finished(self, consumer: ProtocolConsumer, exc: BaseException | None) -> None:
        if self.state is UPGRADED:
            Connection._consumer_finished(self, consumer, exc)
            return
        current: ProtocolConsumer | None = self._current_consumer
        if consumer is not current:
            return
        # What Connection._consumer_finished does, inlined: this runs for every request.
        self._current_consumer = None
        request, self._active = self._active, None
        if exc is None:
            self.processed += 1
            producer = self._producer
            if producer is not None:
                producer.requests_processed += 1
                if producer.max_requests:
                    producer._check_max_requests()
        if self._timeout is not None:
            self._last_activity = self._loop.time()  # type: ignore[union-attr]
        if self._close_after_request:
            self._to(Input.ANSWER_CLOSES)  # that answer said it closes: nothing more is read
        if request is not None and not request.complete:
            # Answered before its body arrived: what is left of it cannot be read
            # cheaply and safely, so the connection closes (it said so in the head).
            self._to(Input.ANSWER_CLOSES)
            self._linger_on_close = True
            self._close_after_request = True
        if self._upgrade_factory is not None or self._upgrade_request is not None:
            self._upgrade_finished(request)
            return
        if self._pending:
            self._run_pending()  # may start the next consumer
        if self._consumer_idle() and not self._processing:
            if (self._close_after_request or self._peer_eof) and self._should_close():
                self.close()
            elif self._draining and self._at_boundary():
                self._boundary_reached()

    def _upgrade_finished(self, request: HttpRequest | None) -> None:
        if self._upgrade_factory is not None:
            self._consumer_factory, self._upgrade_factory = self._upgrade_factory, None
        upgrade = self._upgrade_request
        if upgrade is not None and upgrade is request:
            self._upgrade_request = None
            leftover, self._leftover = self._leftover, None
            if not self.closed:
                self._after_upgrade(upgrade, bytes(leftover or b""))
            return
        if self._pending:
            self._run_pending()
        if self._current_consumer is None and not self._processing and self._should_close():
            self.close()

    def _should_close(self) -> bool:
        if self.state is UPGRADED:
            return Connection._should_close(self)
        return self._close_after_request or (
            self._peer_eof and not self._pending and self._active is None
        )

    # -- draining (see Connection.begin_drain)
    def _at_boundary(self) -> bool:
        # IDLE: no request being parsed, nothing held for an upgrade, not lingering.
        return (
            self.state is IDLE
            and self._current_consumer is None
            and not self._processing
            and self._active is None
            and not self._pending
            and not self._holds
        )

    def begin_drain(self, handoff: Handoff | None = None) -> None:
        if handoff is None:
            self._drain_close = True  # the answer in progress already says it closes
        super().begin_drain(handoff)

    def _let_go(self) -> None:
        """Answer the next request with ``Connection: close``, then close.

        Closing an idle keep-alive connection now would fail the request its client may
        be sending at this moment; answering it tells the client to reconnect (to a
        worker still accepting). A connection that stays silent is closed by the idle
        timeout (shortened to ``DRAIN_IDLE``), with a lingering close.
        """
        self._drain_close = True

    @property
    def closing_after_request(self) -> bool:
        return self._close_after_request or self._drain_close

    def _idle_timeout(self) -> None:
        if self._parsing is not None and self._current_consumer is None:
            # A head still arriving after the whole keep-alive timeout (a slowloris
            # client, a stalled one): it will not be served; say so, then close.
            self._peer_error(408, f"request head not received within {self._timeout:g}s")
            return
        if self._draining:
            # A request already on the wire gets our FIN, not a reset.
            self._linger_on_close = True
        self.close()

    def _busy(self) -> bool:
        return Connection._busy(self) or bool(self._pending)

    def eof_received(self) -> bool | None:
        if self.state is UPGRADED:
            return Connection.eof_received(self)
        if self.state is LINGERING:
            return None
        parsing, self._parsing = self._parsing, None
        if parsing is not None:
            # The peer stopped mid-request: that request can never complete.
            self._to(Input.PEER_EOF)
            pending = self._pending
            if parsing is self._active:
                self.abort()
                return None
            if pending and pending[-1] is parsing:
                pending.pop()
        transport = self._transport
        if (
            (self._current_consumer is not None or self._pending)
            and transport is not None
            and transport.get_extra_info("sslcontext") is None
        ):
            self._peer_eof = True
            consumer: Any = self._current_consumer  # an HttpConsumer
            if consumer is not None:
                consumer.on_peer_eof()
            return True
        return None

    # -- reading holds: a full pipeline queue, a full body stream, a held upgrade
    def hold_reading(self, reason: int) -> None:
        """Stop reading for ``reason`` (a ``HOLD_*`` flag) until it is released."""
        self._holds |= reason
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()

    def release_reading(self, reason: int) -> None:
        """Read again once no ``HOLD_*`` reason is left and writing is not paused."""
        self._holds &= ~reason
        transport = self._transport
        if (
            not self._holds
            and not self._writing_paused
            and transport is not None
            and not transport.is_closing()
        ):
            transport.resume_reading()

    def _may_resume_reading(self) -> bool:
        if self.state is UPGRADED:
            return not self._holds and Connection._may_resume_reading(self)
        return not self._holds

    # -- closing
    def close(self) -> AbstractEvent:
        """Close once written; after a peer error, shut writing and linger first.

        While lingering, the connection closes when the peer does, or after
        ``LINGER_SECONDS``; ``abort()`` still closes it at once.
        """
        if self._linger is not None:
            return self.event("connection_lost")
        transport = self._transport
        if (
            self._linger_on_close
            and transport is not None
            and not transport.is_closing()
            and transport.can_write_eof()
            and transport.get_extra_info("sslcontext") is None
        ):
            self._to(Input.LINGER)
            with contextlib.suppress(OSError, RuntimeError):
                if self._holds or self._writing_paused:
                    self._holds = 0
                    transport.resume_reading()
                transport.write_eof()
                self._linger = self._loop_or_running().call_later(
                    LINGER_SECONDS, Connection.close, self
                )
                return self.event("connection_lost")
        return super().close()

    def _on_connection_lost(self, exc: BaseException | None) -> None:
        linger, self._linger = self._linger, None
        if linger is not None:
            linger.cancel()
        upgraded = self.state is UPGRADED
        if not upgraded:
            self._to(Input.LOST)  # before the consumer is told: nothing more is read
        self._pending = None
        self._leftover = None
        self._parsing = None
        super()._on_connection_lost(exc)
        if upgraded:
            # Its consumer was told by Connection's rules (they serve it): now it is closed.
            self._to(Input.LOST)
