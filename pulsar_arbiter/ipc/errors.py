"""The IPC errors, by fault: the peer's bytes, a closed channel, a command that failed."""

from __future__ import annotations

__all__ = ["ChannelClosed", "CommandError", "ProtocolError"]


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid frame or message; close the channel."""


class ChannelClosed(ConnectionError):
    """The channel closed before a request got its reply (or was closed when sending)."""


class CommandError(Exception):
    """A command failed: unknown, refused, bad arguments, timed out, or it raised;
    ``str(exc)`` is the one-line reason (the peer's, when it came in a reply).

    ``type`` names the exception the command raised (``"ValueError"``), when it raised one;
    ``target`` names who answered (``"worker:2"``), when it came through a routed call.
    """

    def __init__(self, message: str, *, type: str | None = None, target: str | None = None):
        super().__init__(message)
        self.type = type
        self.target = target
