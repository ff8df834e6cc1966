"""What the line-based test apps share: one request per newline-terminated line."""

from __future__ import annotations

from pulsar_arbiter import ProtocolConsumer


class LineConsumer(ProtocolConsumer):
    """Buffers bytes until a newline, hands the line to ``on_line`` and returns the rest."""

    buffer = b""

    def data_received(self, data: bytes) -> bytes | None:
        data = self.buffer + data
        line, sep, rest = data.partition(b"\n")
        if not sep:
            self.buffer = data
            return None
        self.on_line(line)
        return rest

    def on_line(self, line: bytes) -> None:
        raise NotImplementedError
