"""HTTP errors by fault: the peer's bytes, or our own bug.

A :class:`PeerError` is what a consumer's request ends with when the peer broke the
protocol or a limit (h11's ``RemoteProtocolError``): ``status`` is the answer it got.
A :class:`StateError` is a transition the connection's state table does not allow: a bug
in this package, never the peer's doing (h11's ``LocalProtocolError``).
"""

from __future__ import annotations

__all__ = ["PeerError", "StateError"]


class PeerError(ConnectionError):
    """The peer broke HTTP or a limit; ``status`` (400, 408, 413, ...) says which way.

    A ConnectionError, because the connection closes after it: code that handles a lost
    peer handles this one too.
    """

    def __init__(
        self, status: int, reason: str, message: str | None = None, head: bool = False
    ) -> None:
        super().__init__(message or f"{status}: {reason}")
        self.status = status
        self.reason = reason
        self.head = head  # the faulty request was a HEAD: its answer carries no content


class StateError(RuntimeError):
    """An input the HTTP connection's state table has no transition for (our bug)."""
