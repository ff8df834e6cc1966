"""The built-in echo consumer: the app served when none is given.

Each chunk of bytes received is one request, written back as it came; on a datagram
endpoint each datagram is answered to its sender.
"""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from .protocols import ProtocolConsumer

__all__ = ["Echo"]


@mypyc_attr(allow_interpreted_subclasses=True)
class Echo(ProtocolConsumer):
    """Answer every chunk of bytes with the same bytes."""

    def data_received(self, data: bytes) -> None:
        self.write(data)
        self.finished()
