"""Idle connections handed from a draining worker to a serving one, over SCM_RIGHTS.

Closing an idle keep-alive connection races its client: the next request may already be
on the wire. Handing the socket to another worker instead means the client never sees a
close, and whatever it sent meanwhile waits in the socket for its new owner.

The arbiter makes one Unix datagram socketpair before the first fork and every worker
inherits both ends: a draining worker sends on the *outbox* end, every serving worker
reads the *inbox* end, and the kernel gives each datagram to exactly one reader (the
shared listening socket's model). A datagram carries up to ``MAX_FDS`` sockets and, as
its bytes, the JSON list of their bind indexes, so the receiver knows which server
serves each one. Datagrams from a worker that died before a reader took them stay
queued for the next reader; the sockets they carry stay open meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Callable
from typing import Any

from ..protocols import Connection

__all__ = ["MAX_FDS", "HandoffReceiver", "HandoffSender", "handoff_socketpair"]

LOGGER = logging.getLogger("pulsar_arbiter.handoff")

# Sockets per datagram: the kernel takes at most SCM_MAX_FD (253) descriptors in one
# message. Batching matters for a worker holding thousands of idle connections.
MAX_FDS = 200
# Bytes of a datagram's header: a JSON list of MAX_FDS small integers fits many times.
MAX_HEADER = 16 * 1024
# Datagrams read per wake-up of a receiver, so a burst of handoffs cannot starve the
# requests of the connections this worker already serves.
READS_PER_WAKEUP = 16

Adopt = Callable[[int, socket.socket], None]


def handoff_socketpair() -> tuple[socket.socket, socket.socket]:
    """(outbox, inbox): what one end sends, the other receives; both non-blocking.

    A connected socketpair is bounded by its send buffer, not by the datagram queue
    length (net.unix.max_dgram_qlen, 10 on many machines), and a full buffer answers
    EAGAIN, which the sender waits out.
    """
    outbox, inbox = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    outbox.setblocking(False)
    inbox.setblocking(False)
    return outbox, inbox


class HandoffSender:
    """Sends the sockets of idle connections, batched, waiting while the outbox is full.

    ``offer(bind, connection)`` takes the connection (True) and sends it within this
    loop iteration, then tells the connection it is gone (``_handed_off``), or, if the
    outbox fails, that it must be served here after all (``_handoff_failed``).
    """

    def __init__(self, outbox: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self._outbox = outbox
        self._loop = loop
        self._queue: list[tuple[int, Connection]] = []
        self._scheduled = False
        self._waiting_writable = False
        self._broken = False
        self.sent = 0

    def offer(self, bind: int, connection: Connection) -> bool:
        if self._broken:
            return False
        self._queue.append((bind, connection))
        if not self._scheduled and not self._waiting_writable:
            self._scheduled = True
            self._loop.call_soon(self._flush)
        return True

    def _flush(self) -> None:
        self._scheduled = False
        queue = self._queue
        while queue:
            batch = [(b, c) for b, c in queue[:MAX_FDS] if _fileno(c) is not None]
            taken = min(len(queue), MAX_FDS)
            if batch:
                header = json.dumps([b for b, _ in batch]).encode()
                fds = [_fileno(c) for _, c in batch]
                try:
                    socket.send_fds(self._outbox, [header], fds)  # type: ignore[arg-type]
                except BlockingIOError:
                    self._wait_writable()
                    return
                except OSError as exc:
                    LOGGER.warning("cannot hand connections over (%s): serving them here", exc)
                    self._broken = True
                    self._stop_waiting()
                    failed, self._queue = self._queue, []
                    for _, connection in failed:
                        connection._handoff_failed()
                    return
                for _, connection in batch:
                    connection._handed_off()
                self.sent += len(batch)
            del queue[:taken]
        self._stop_waiting()

    def _wait_writable(self) -> None:
        if not self._waiting_writable:
            self._waiting_writable = True
            self._loop.add_writer(self._outbox.fileno(), self._flush)

    def _stop_waiting(self) -> None:
        if self._waiting_writable:
            self._waiting_writable = False
            self._loop.remove_writer(self._outbox.fileno())

    def close(self) -> None:
        """Serve here whatever is still queued (the worker is about to exit)."""
        self._stop_waiting()
        self._broken = True
        failed, self._queue = self._queue, []
        for _, connection in failed:
            connection._handoff_failed()


def _fileno(connection: Connection) -> int | None:
    transport = connection.transport
    sock = connection.sock
    if transport is None or transport.is_closing() or sock is None:
        return None
    fd: int = sock.fileno()
    return fd if fd >= 0 else None


class HandoffReceiver:
    """Reads handed-over sockets from the inbox and gives each to ``adopt(bind, sock)``."""

    def __init__(self, inbox: socket.socket, loop: asyncio.AbstractEventLoop, adopt: Adopt):
        self._inbox = inbox
        self._loop = loop
        self._adopt = adopt
        self._reading = False
        self.received = 0

    def start(self) -> None:
        if not self._reading:
            self._reading = True
            self._loop.add_reader(self._inbox.fileno(), self._receive)

    def stop(self) -> None:
        """Stop taking connections (this worker drains): the others take them."""
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._inbox.fileno())

    def _receive(self) -> None:
        for _ in range(READS_PER_WAKEUP):
            try:
                data, fds, flags, _ = socket.recv_fds(self._inbox, MAX_HEADER, MAX_FDS)
            except (BlockingIOError, InterruptedError):
                return  # another worker took it
            except OSError as exc:
                LOGGER.error("handoff inbox failed (%s): no longer taking connections", exc)
                self.stop()
                return
            socks = [socket.socket(fileno=fd) for fd in fds]
            binds = _parse_header(data)
            if flags & socket.MSG_CTRUNC or binds is None or len(binds) != len(socks):
                LOGGER.error(
                    "dropping a malformed handoff of %d connection(s) (%d bytes)",
                    len(socks),
                    len(data),
                )
                for sock in socks:
                    sock.close()
                continue
            self.received += len(socks)
            for bind, sock in zip(binds, socks, strict=True):
                sock.setblocking(False)
                self._adopt(bind, sock)


def _parse_header(data: bytes) -> list[int] | None:
    try:
        value: Any = json.loads(data)
    except ValueError:
        return None
    if isinstance(value, list) and all(type(b) is int and b >= 0 for b in value):
        return value
    return None
