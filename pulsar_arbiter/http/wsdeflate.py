"""Per-message deflate (RFC 7692) with a bound on what one read inflates: wsproto's codec.

A module of its own, never compiled (it is not in setup.py's ``COMPILED``): its class
subclasses wsproto's ``PerMessageDeflate`` (an ABC), and a compiled subclass of a class
the build cannot see (pip's isolated build environment has no wsproto) is built without
that base. :mod:`.websocket` (compiled) only makes and calls it.
"""

from __future__ import annotations

import zlib

from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol

__all__ = ["BoundedDeflate"]


class BoundedDeflate(PerMessageDeflate):
    """Per-message deflate that inflates at most ``limit`` bytes from each read.

    A few kilobytes of compressed zeros inflate to gigabytes (a deflate bomb): bounded
    here, a message past the limit fails with 1009 before it is in memory, as an
    uncompressed one does.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        decompressor = self._decompressor
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        assert decompressor is not None
        try:
            inflated = decompressor.decompress(bytes(data), self.limit + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        if decompressor.unconsumed_tail or len(inflated) > self.limit:
            return CloseReason.MESSAGE_TOO_BIG
        return inflated
