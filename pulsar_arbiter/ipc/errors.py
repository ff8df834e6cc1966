"""The IPC errors, by fault: the peer's bytes, a closed channel, a command that failed."""

from __future__ import annotations

__all__ = ["ChannelClosed", "CommandError", "ProtocolError"]


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid frame or message; close the channel."""


class ChannelClosed(ConnectionError):
    """The channel closed before a request got its reply (or was closed when sending)."""


class CommandError(Exception):
    """A command failed: unknown, refused, bad arguments, or it raised; ``str(exc)`` is
    the one-line reason (the peer's, when it came in a reply)."""
