"""systemd's side doors: inherited listening sockets and ``sd_notify``, no dependency.

* Socket activation (``sd_listen_fds(3)``): ``LISTEN_PID``/``LISTEN_FDS``/``LISTEN_FDNAMES``
  hand the arbiter its listening sockets; each becomes a bind, except one named
  ``metrics``, which serves ``--metrics-bind``. The variables are cleared so that workers
  and children never adopt them again.
* A USR2 re-exec hands the same sockets to the new arbiter with ``PULSAR_ARBITER_FDS``
  (``FD=NAME,...``: the descriptors keep their numbers across the exec).
* ``sd_notify(3)``: a few ``KEY=VALUE`` lines in one datagram to ``$NOTIFY_SOCKET``
  (``READY=1``, ``RELOADING=1`` with ``MONOTONIC_USEC``, ``STOPPING=1``, ``STATUS=``,
  ``MAINPID=``, ``WATCHDOG=1``). Without ``NOTIFY_SOCKET`` every call is a no-op.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass

from .binds import BindSpec, listen_fds_from_env

__all__ = [
    "INHERITED_FDS",
    "METRICS_FD_NAME",
    "Inherited",
    "Notifier",
    "inherited_env",
    "inherited_sockets",
    "monotonic_usec",
    "spec_of",
    "watchdog_interval",
]

LOGGER = logging.getLogger("pulsar_arbiter.systemd")

#: The variable a re-executed arbiter finds its sockets in: ``FD=NAME,FD=NAME``.
INHERITED_FDS = "PULSAR_ARBITER_FDS"
#: The name of the descriptor that serves /health and /metrics (FileDescriptorName=).
METRICS_FD_NAME = "metrics"
#: Longest notification we send: a datagram, far under any socket buffer.
MAX_NOTIFY = 4096


@dataclass(frozen=True)
class Inherited:
    """One listening socket passed to us, with its name ("" when unnamed)."""

    name: str
    sock: socket.socket
    source: str  # "systemd" or "re-exec"


def spec_of(sock: socket.socket) -> BindSpec:
    """The bind a listening socket serves, read from the socket itself."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        path = os.fsdecode(name) if isinstance(name, bytes) else str(name)
        return BindSpec("unix", path=path or None)
    host, port = str(name[0]), int(name[1])
    if sock.type == socket.SOCK_DGRAM:
        return BindSpec("udp", host=host, port=port)
    return BindSpec("tcp", host=host, port=port)


def inherited_sockets(environ: MutableMapping[str, str] | None = None) -> list[Inherited]:
    """The sockets systemd (``LISTEN_FDS``) or an old arbiter (``PULSAR_ARBITER_FDS``)
    passed us, named; the variables are removed. ValueError for malformed ones."""
    env = os.environ if environ is None else environ
    own = env.pop(INHERITED_FDS, None)
    if own is not None:
        return _from_reexec(own)
    names = env.get("LISTEN_FDNAMES", "")
    socks = listen_fds_from_env(env)
    labels = names.split(":") if names else []
    return [
        Inherited(labels[i] if i < len(labels) else "", sock, "systemd")
        for i, sock in enumerate(socks)
    ]


def _from_reexec(text: str) -> list[Inherited]:
    result: list[Inherited] = []
    for item in filter(None, text.split(",")):
        fd_text, _, name = item.partition("=")
        if not fd_text.isdigit():
            raise ValueError(f"{INHERITED_FDS}: expected FD=NAME, got {item!r}")
        try:
            sock = socket.socket(fileno=int(fd_text))
        except OSError as exc:
            raise ValueError(f"{INHERITED_FDS}: fd {fd_text} is not a socket ({exc})") from None
        sock.setblocking(False)
        sock.set_inheritable(True)
        result.append(Inherited(name, sock, "re-exec"))
    return result


def inherited_env(named: Sequence[tuple[str, socket.socket]]) -> dict[str, str]:
    """The variable that hands ``named`` sockets to a re-executed arbiter."""
    return {INHERITED_FDS: ",".join(f"{sock.fileno()}={name}" for name, sock in named)}


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as ``RELOADING=1`` wants it (MONOTONIC_USEC=)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between two ``WATCHDOG=1``: half of ``WATCHDOG_USEC``, when it is meant
    for us (``WATCHDOG_PID`` absent or ours); None when there is no watchdog."""
    env = os.environ if environ is None else environ
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid is not None and pid != str(os.getpid()):
        return None
    return int(usec) / 2e6


class Notifier:
    """``sd_notify`` to ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract
    namespace). Best effort: a send that fails is logged once, never raised."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if address.startswith("@"):
            self.address = "\0" + address[1:]
        elif address.startswith("/"):
            self.address = address
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` (``KEY=VALUE``) in one datagram; True if it was sent."""
        if self.address is None or not lines:
            return False
        data = "\n".join(line.replace("\n", " ") for line in lines).encode()[:MAX_NOTIFY]
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(data, self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                LOGGER.warning("sd_notify to %r failed: %s", self.address.lstrip("\0"), exc)
            return False
        return True

    def fileno(self) -> int:
        """The notification socket's fd (a forked worker closes it), or -1."""
        return self._sock.fileno() if self._sock is not None else -1

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
