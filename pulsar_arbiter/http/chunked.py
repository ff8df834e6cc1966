"""The chunked transfer coding's framing, read exactly once, in canonical form for llhttp.

llhttp parses chunked bodies, but refuses what RFC 9112 section 7.1.1 allows around chunk
extensions: bad whitespace (BWS) before and after ``;`` and ``=`` (``5 ;a=b``,
``5; a = b``), which a recipient MUST parse and remove, and whose extensions it MUST
ignore. A :class:`ChunkedDecoder` sits between the socket and the parser for the body of a
chunked request: it finds each chunk line itself (size, BWS, extensions, CRLF), checks it
against the RFC's grammar, and hands the parser the line rewritten as ``<hex size>CRLF``,
then the chunk data as received. The trailer section goes through as received (the
parser checks its field syntax), bounded; the decoder says where the body ends, so the
bytes after it are the next request's.

The framing is decided here and only here: the parser sees canonical sizes, so the two
cannot disagree on where a chunk (or the body) ends. Pure: bytes in, bytes out, no I/O.
"""

from __future__ import annotations

import enum
import re

from mypy_extensions import mypyc_attr

from .errors import PeerError

__all__ = ["MAX_CHUNK_LINE", "ChunkedDecoder"]

# A chunk line: the hex size plus its extensions. Real clients send 1 to 8 hex digits and
# no extensions; 4 KiB leaves room for extensions nobody uses and bounds what a peer can
# make us buffer before a chunk's data. Broken: 400.
MAX_CHUNK_LINE = 4096
# Hex digits of a chunk size: 16 fill 64 bits; more is an overflow (RFC 9112, 7.1: a
# recipient MUST guard against integer overflow). Broken: 400.
MAX_SIZE_DIGITS = 16

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_BWS = rb"[ \t]*"
# chunk = chunk-size [ chunk-ext ] CRLF, chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS val ] )
# (RFC 9112, 7.1 and 7.1.1). Trailing BWS before the CRLF is accepted too (what h11 and
# most servers do): it cannot change the size.
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,%d})" % MAX_SIZE_DIGITS
    + rb"((?:"
    + _BWS
    + rb";"
    + _BWS
    + _TOKEN
    + rb"(?:"
    + _BWS
    + rb"="
    + _BWS
    + rb"(?:"
    + _TOKEN
    + rb"|"
    + _QUOTED
    + rb"))?)*)"
    + _BWS
    + rb"\r\n"
)


class _Step(enum.Enum):
    SIZE = "chunk line"
    DATA = "chunk data"
    DATA_END = "CRLF after chunk data"
    TRAILERS = "trailer section"
    DONE = "done"


@mypyc_attr(allow_interpreted_subclasses=True)
class ChunkedDecoder:
    """Reads one chunked body; :meth:`feed` returns what the parser should be given.

    ``max_trailers`` bounds the trailer section (its field lines and the blank line),
    answered 431 when broken, like a head.
    """

    __slots__ = ("_left", "_line", "_max_trailers", "_step", "_trailer_bytes")

    def __init__(self, max_trailers: int) -> None:
        self._step = _Step.SIZE
        self._left = 0
        self._line = b""
        self._trailer_bytes = 0
        self._max_trailers = max_trailers

    @property
    def done(self) -> bool:
        """The body ended (last chunk and trailer section read)."""
        return self._step is _Step.DONE

    def feed(self, data: bytes, pos: int = 0) -> tuple[bytes, int]:
        """Read ``data[pos:]``; return (bytes for the parser, index where reading stopped).

        Reading stops at the end of ``data`` or of the body (then :attr:`done` is true and
        what follows belongs to the next request). A framing error is a PeerError.
        """
        out: list[bytes] = []
        end = len(data)
        while pos < end:
            step = self._step
            if step is _Step.DATA:
                take = min(self._left, end - pos)
                out.append(data[pos : pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    self._step = _Step.DATA_END
                continue
            if step is _Step.DONE:
                break
            line, pos = self._read_line(data, pos, end)
            if line is None:
                break
            if step is _Step.SIZE:
                out.append(self._size_line(line))
            elif step is _Step.DATA_END:
                if line != b"\r\n":
                    raise PeerError(400, "chunk data not followed by CRLF")
                out.append(line)
                self._step = _Step.SIZE
            else:  # the trailer section, line by line, up to the blank line
                self._trailer_bytes += len(line)
                if self._trailer_bytes > self._max_trailers:
                    raise PeerError(431, f"trailer section longer than {self._max_trailers} bytes")
                out.append(line)
                if line == b"\r\n":
                    self._step = _Step.DONE
        return b"".join(out), pos

    def _read_line(self, data: bytes, pos: int, end: int) -> tuple[bytes | None, int]:
        """The next whole line (with its CRLF), or None and the end when it is incomplete."""
        newline = data.find(b"\n", pos)
        bound = MAX_CHUNK_LINE if self._step is not _Step.TRAILERS else self._max_trailers
        if newline == -1:
            self._line += data[pos:end]
            if len(self._line) > bound:
                raise self._too_long()
            return None, end
        line = self._line + data[pos : newline + 1] if self._line else data[pos : newline + 1]
        self._line = b""
        if len(line) > bound + 2:
            raise self._too_long()
        if line[-2:-1] != b"\r":
            raise PeerError(400, f"bare LF in the {self._step.value}")
        return line, newline + 1

    def _too_long(self) -> PeerError:
        if self._step is _Step.TRAILERS:
            return PeerError(431, f"trailer section longer than {self._max_trailers} bytes")
        return PeerError(400, f"{self._step.value} longer than {MAX_CHUNK_LINE} bytes")

    def _size_line(self, line: bytes) -> bytes:
        match = _CHUNK_LINE.fullmatch(line)
        if match is None:
            digits = re.match(rb"[0-9A-Fa-f]*", line)
            if digits is not None and len(digits.group()) > MAX_SIZE_DIGITS:
                raise PeerError(400, "chunk size too large")
            raise PeerError(400, "invalid chunk line")
        size = int(match.group(1), 16)
        if size:
            self._left = size
            self._step = _Step.DATA
        else:
            self._step = _Step.TRAILERS
        return b"%x\r\n" % size
