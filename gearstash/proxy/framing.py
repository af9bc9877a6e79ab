"""Sans-IO splitting of a Gearman byte stream into whole frames, for relaying.

Unlike :class:`gearstash.protocol.Decoder`, a :class:`Splitter` keeps every frame's bytes as they
came (so they can be passed on unchanged), accepts packet types it does not know (they are relayed,
not dropped) and text admin lines (a frame that does not start with NUL runs to the next ``\\n``).
What it cannot frame raises :class:`~gearstash.errors.ProtocolError`, and the splitter stays
broken: the connection must be dropped.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple, NoReturn

from gearstash.errors import ProtocolError
from gearstash.protocol.packets import ARG_COUNTS, HEADER_SIZE, BytesLike

__all__ = ["TEXT", "Frame", "Splitter", "split_args"]

TEXT: Final = -1
"""The ``num`` of a text (admin protocol) line."""
MAX_LINE: Final = 64 * 1024
"""Longest admin text line accepted (gearmand's own limit is far lower)."""

_HEADER = struct.Struct(">4sII")
_ARGC: Final = {int(k): v for k, v in ARG_COUNTS.items()}


class Frame(NamedTuple):
    """One frame: ``num`` is the packet type number (:data:`TEXT` for an admin line) and ``raw``
    the frame's bytes as received (a binary frame's body starts at ``HEADER_SIZE``)."""

    num: int
    raw: bytes


def split_args(frame: Frame) -> tuple[bytes, ...]:
    """The NUL-separated arguments of a binary frame of a known type.

    Raises ProtocolError when the body has fewer arguments than the type needs.
    """
    count = _ARGC.get(frame.num, 1)
    body = frame.raw[HEADER_SIZE:]
    if count == 0:
        return ()
    args = tuple(body.split(b"\0", count - 1))
    if len(args) != count:
        raise ProtocolError(
            f"packet type {frame.num} needs {count} NUL-separated arguments, got {len(args)}",
            side="server",
        )
    return args


class Splitter:
    """Incremental framer of one direction of a connection.

    ``magic`` is the magic every binary frame must carry (``\\0REQ`` from a worker or client,
    ``\\0RES`` from a server). A declared body over ``max_packet`` bytes, a wrong magic or an admin
    line over :data:`MAX_LINE` bytes raise ProtocolError.
    """

    __slots__ = ("_buf", "_error", "_magic", "_max")

    def __init__(self, magic: bytes, max_packet: int) -> None:
        self._magic = magic
        self._max = max_packet
        self._buf = bytearray()
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned in a frame."""
        return len(self._buf)

    def feed(self, data: BytesLike) -> list[Frame]:
        """Add received bytes; return every frame now complete, in order."""
        if self._error is not None:
            raise self._error.with_traceback(None)
        rest = self._buf
        if rest:
            rest += data
            buf = bytes(rest)
            rest.clear()
        else:  # the usual case: nothing left over, frame straight from the bytes received
            buf = bytes(data)
        frames: list[Frame] = []
        pos = 0
        have = len(buf)
        magic = self._magic
        try:
            while pos < have:
                if buf[pos] != 0:
                    end = buf.find(b"\n", pos, pos + MAX_LINE + 1)
                    if end < 0:
                        if have - pos > MAX_LINE:
                            self._fail(f"text line longer than {MAX_LINE} bytes")
                        break
                    frames.append(Frame(TEXT, buf[pos : end + 1]))
                    pos = end + 1
                    continue
                if have - pos < HEADER_SIZE:
                    if not magic.startswith(buf[pos : pos + 4]):
                        self._fail(f"bad magic {buf[pos : pos + 4]!r}, expected {magic!r}")
                    break
                seen, num, size = _HEADER.unpack_from(buf, pos)
                if seen != magic:
                    self._fail(f"bad magic {seen!r}, expected {magic!r}")
                if size > self._max:
                    self._fail(
                        f"packet type {num} declares a body of {size} bytes, over the limit of "
                        f"{self._max}"
                    )
                end = pos + HEADER_SIZE + size
                if end > have:
                    break
                frames.append(Frame(num, buf if (pos == 0 and end == have) else buf[pos:end]))
                pos = end
        finally:
            if pos < have and self._error is None:
                rest += memoryview(buf)[pos:]
        return frames

    def _fail(self, message: str) -> NoReturn:
        self._error = ProtocolError(message, side="server")
        raise self._error
