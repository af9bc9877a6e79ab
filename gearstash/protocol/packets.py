"""Sans-IO codec for the Gearman job-server protocol.

Contract (in the style of h11): bytes in, values out. Nothing here touches a socket, a clock or
a thread; the caller moves bytes and decides what to do with the results.

* :func:`encode` (and :func:`encode_request` / :func:`encode_response`) turn a packet type and its
  arguments into wire bytes. Asking for something the protocol cannot express (wrong number of
  arguments, a NUL inside a non-final argument, an over-long unique) raises
  :class:`~gearstash.errors.ProtocolError` with ``side="local"``.
* :class:`Decoder` is fed bytes as they arrive, in chunks of any size, and hands back complete
  :class:`Packet` objects. Anything wrong in the received bytes raises
  :class:`~gearstash.errors.ProtocolError` with ``side="server"`` -- never ``IndexError``,
  ``struct.error`` or friends -- and the decoder then stays broken: every later call raises the
  same error, because the connection must be dropped.
* :func:`parse_int` and the reply dataclasses (:class:`StatusReply`, :class:`UniqueStatusReply`,
  :class:`JobAssignment`, :class:`ErrorReply`) give typed views of the packets that carry them.
* The text admin protocol served on the same port lives in :mod:`gearstash.protocol.admin`.

Framing: a 12-byte header (magic ``\\0REQ`` to the server or ``\\0RES`` from it, big-endian u32
type, big-endian u32 body length) followed by NUL-separated arguments; the last argument runs to
the end of the body and may itself contain NULs or be empty.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final, NoReturn, TypeAlias

from gearstash.errors import ProtocolError

__all__ = [
    "ARG_COUNTS",
    "DEFAULT_MAX_PACKET",
    "HEADER_SIZE",
    "MAX_HANDLE",
    "MAX_UNIQUE",
    "REQ",
    "RES",
    "BytesLike",
    "Decoder",
    "ErrorReply",
    "JobAssignment",
    "Packet",
    "PacketType",
    "StatusReply",
    "UniqueStatusReply",
    "check_unique",
    "encode",
    "encode_request",
    "encode_response",
    "encode_status",
    "encode_work",
    "handle_problem",
    "parse_int",
]

BytesLike: TypeAlias = bytes | bytearray | memoryview
"""Anything :func:`encode` and :meth:`Decoder.feed` accept as binary data."""

REQ: Final = b"\0REQ"
"""Magic of packets sent to the job server."""
RES: Final = b"\0RES"
"""Magic of packets sent by the job server."""
HEADER_SIZE: Final = 12
"""Size of the binary packet header: magic, type, body length."""
DEFAULT_MAX_PACKET: Final = 128 * 1024 * 1024
"""Largest body a :class:`Decoder` accepts unless told otherwise (128 MiB)."""
MAX_UNIQUE: Final = 63
"""Longest unique gearmand keeps intact (64 bytes are silently truncated, 65+ rejected)."""

_U32_MAX: Final = 0xFFFFFFFF
_HEADER = struct.Struct(">4sII")
_LENGTH = struct.Struct(">I")


class PacketType(enum.IntEnum):
    """Binary packet type numbers (5 is unused by the protocol)."""

    CAN_DO = 1
    CANT_DO = 2
    RESET_ABILITIES = 3
    PRE_SLEEP = 4
    NOOP = 6
    SUBMIT_JOB = 7
    JOB_CREATED = 8
    GRAB_JOB = 9
    NO_JOB = 10
    JOB_ASSIGN = 11
    WORK_STATUS = 12
    WORK_COMPLETE = 13
    WORK_FAIL = 14
    GET_STATUS = 15
    ECHO_REQ = 16
    ECHO_RES = 17
    SUBMIT_JOB_BG = 18
    ERROR = 19
    STATUS_RES = 20
    SUBMIT_JOB_HIGH = 21
    SET_CLIENT_ID = 22
    CAN_DO_TIMEOUT = 23
    ALL_YOURS = 24
    WORK_EXCEPTION = 25
    OPTION_REQ = 26
    OPTION_RES = 27
    WORK_DATA = 28
    WORK_WARNING = 29
    GRAB_JOB_UNIQ = 30
    JOB_ASSIGN_UNIQ = 31
    SUBMIT_JOB_HIGH_BG = 32
    SUBMIT_JOB_LOW = 33
    SUBMIT_JOB_LOW_BG = 34
    SUBMIT_JOB_SCHED = 35
    SUBMIT_JOB_EPOCH = 36
    SUBMIT_REDUCE_JOB = 37
    SUBMIT_REDUCE_JOB_BACKGROUND = 38
    GRAB_JOB_ALL = 39
    JOB_ASSIGN_ALL = 40
    GET_STATUS_UNIQUE = 41
    STATUS_RES_UNIQUE = 42


_T = PacketType
ARG_COUNTS: Final[dict[PacketType, int]] = {
    _T.CAN_DO: 1,  # function
    _T.CANT_DO: 1,  # function
    _T.RESET_ABILITIES: 0,
    _T.PRE_SLEEP: 0,
    _T.NOOP: 0,
    _T.SUBMIT_JOB: 3,  # function, unique, data
    _T.JOB_CREATED: 1,  # handle
    _T.GRAB_JOB: 0,
    _T.NO_JOB: 0,
    _T.JOB_ASSIGN: 3,  # handle, function, data
    _T.WORK_STATUS: 3,  # handle, numerator, denominator
    _T.WORK_COMPLETE: 2,  # handle, data
    _T.WORK_FAIL: 1,  # handle (server->client may add a trailing NUL: stripped on decode)
    _T.GET_STATUS: 1,  # handle
    _T.ECHO_REQ: 1,  # data
    _T.ECHO_RES: 1,  # data
    _T.SUBMIT_JOB_BG: 3,
    _T.ERROR: 2,  # code, text
    _T.STATUS_RES: 5,  # handle, known, running, numerator, denominator
    _T.SUBMIT_JOB_HIGH: 3,
    _T.SET_CLIENT_ID: 1,  # client id
    _T.CAN_DO_TIMEOUT: 2,  # function, timeout
    _T.ALL_YOURS: 0,
    _T.WORK_EXCEPTION: 2,  # handle, data
    _T.OPTION_REQ: 1,  # option name
    _T.OPTION_RES: 1,  # option name
    _T.WORK_DATA: 2,  # handle, data
    _T.WORK_WARNING: 2,  # handle, data
    _T.GRAB_JOB_UNIQ: 0,
    _T.JOB_ASSIGN_UNIQ: 4,  # handle, function, unique, data
    _T.SUBMIT_JOB_HIGH_BG: 3,
    _T.SUBMIT_JOB_LOW: 3,
    _T.SUBMIT_JOB_LOW_BG: 3,
    _T.SUBMIT_JOB_SCHED: 8,  # function, unique, minute, hour, mday, month, wday, data
    _T.SUBMIT_JOB_EPOCH: 4,  # function, unique, epoch, data
    _T.SUBMIT_REDUCE_JOB: 4,  # function, unique, reducer, data
    _T.SUBMIT_REDUCE_JOB_BACKGROUND: 4,
    _T.GRAB_JOB_ALL: 0,
    _T.JOB_ASSIGN_ALL: 5,  # handle, function, unique, reducer, data
    _T.GET_STATUS_UNIQUE: 1,  # unique
    _T.STATUS_RES_UNIQUE: 6,  # unique, known, running, numerator, denominator, waiting clients
}
"""Number of NUL-separated arguments of each packet type (the last one runs to the end)."""

# Hot-path tables indexed by the raw type number (0 and 5 are holes).
_MAX_TYPE: Final = max(PacketType)
_TYPE_BY_NUM: list[PacketType | None] = [None] * (_MAX_TYPE + 1)
_ARGC_BY_NUM: list[int] = [0] * (_MAX_TYPE + 1)
for _kind, _argc in ARG_COUNTS.items():
    _TYPE_BY_NUM[_kind] = _kind
    _ARGC_BY_NUM[_kind] = _argc
_REQ_PREFIX: dict[int, bytes] = {k: REQ + _LENGTH.pack(k) for k in ARG_COUNTS}
_RES_PREFIX: dict[int, bytes] = {k: RES + _LENGTH.pack(k) for k in ARG_COUNTS}
_WORK_FAIL: Final = int(PacketType.WORK_FAIL)
del _T, _kind, _argc


@dataclass(frozen=True, slots=True)
class Packet:
    """One binary packet: its type, its arguments, and whether it carried the ``\\0REQ`` magic."""

    kind: PacketType
    args: tuple[bytes, ...]
    request: bool


# Building a frozen dataclass through __init__ costs three object.__setattr__ calls; the slot
# descriptors set the fields directly, which the decoder's hot path can afford to do.
_new_object = object.__new__
_packet_slots = vars(Packet)
_set_kind = _packet_slots["kind"].__set__
_set_args = _packet_slots["args"].__set__
_set_request = _packet_slots["request"].__set__
del _packet_slots


def _make_packet(kind: PacketType, args: tuple[bytes, ...], request: bool) -> Packet:
    packet: Packet = _new_object(Packet)
    _set_kind(packet, kind)
    _set_args(packet, args)
    _set_request(packet, request)
    return packet


# --------------------------------------------------------------------------------------- encode


def _bad_arg_type(kind: PacketType, index: int, arg: object) -> ProtocolError:
    return ProtocolError(
        f"{kind.name} argument {index} must be bytes-like, not {type(arg).__name__}",
        side="local",
    )


def encode(kind: PacketType, *args: BytesLike, request: bool = True) -> bytes:
    """Return the wire bytes of one packet.

    ``args`` must number exactly ``ARG_COUNTS[kind]``; every argument but the last must be free of
    NUL bytes (the last may hold anything). ``request`` picks the magic: ``\\0REQ`` (to the
    server, the default) or ``\\0RES`` (from a server, for fakes in tests). Violations raise
    :class:`ProtocolError` with ``side="local"``.
    """
    try:
        count = ARG_COUNTS[kind]
    except (KeyError, TypeError):
        raise ProtocolError(f"cannot encode unknown packet type {kind!r}", side="local") from None
    if len(args) != count:
        raise ProtocolError(
            f"{PacketType(kind).name} takes {count} argument(s), got {len(args)}", side="local"
        )
    if count > 1:
        for index in range(count - 1):
            arg = args[index]
            if not isinstance(arg, bytes | bytearray):
                if not isinstance(arg, memoryview):
                    raise _bad_arg_type(PacketType(kind), index, arg)
                arg = arg.tobytes()
            if 0 in arg:
                raise ProtocolError(
                    f"{PacketType(kind).name} argument {index} contains a NUL byte: {bytes(arg)!r}",
                    side="local",
                )
    try:
        body = b"\0".join(args)
    except TypeError:
        raise _bad_arg_type(PacketType(kind), count - 1, args[-1]) from None
    size = len(body)
    if size > _U32_MAX:
        raise ProtocolError(
            f"{PacketType(kind).name} body of {size} bytes exceeds the 4 GiB frame limit",
            side="local",
        )
    prefix = _REQ_PREFIX[kind] if request else _RES_PREFIX[kind]
    return prefix + _LENGTH.pack(size) + body


def encode_request(kind: PacketType, *args: BytesLike) -> bytes:
    """Return the wire bytes of a packet sent to the server (``\\0REQ`` magic)."""
    return encode(kind, *args, request=True)


def encode_requests(kind: PacketType, args: Iterable[BytesLike]) -> bytes:
    """The wire bytes of one ``kind`` request per item of ``args``, back to back (a pipelined
    batch), for the kinds of one argument (``GET_STATUS``, ``GET_STATUS_UNIQUE``): the same
    bytes as joining :func:`encode_request` of each, at a fraction of the cost. Raises
    :class:`ProtocolError` (``side="local"``) like :func:`encode`."""
    if ARG_COUNTS[kind] != 1:
        raise ProtocolError(f"{kind.name} takes {ARG_COUNTS[kind]} arguments, not 1", side="local")
    prefix, pack = _REQ_PREFIX[kind], _LENGTH.pack
    return b"".join(
        prefix + pack(len(arg)) + arg
        if type(arg) is bytes and len(arg) <= _U32_MAX
        else encode(kind, arg, request=True)
        for arg in args
    )


def encode_response(kind: PacketType, *args: BytesLike) -> bytes:
    """Return the wire bytes of a packet sent by a server (``\\0RES`` magic)."""
    return encode(kind, *args, request=False)


_WORK_KINDS: Final = frozenset(
    {
        PacketType.WORK_DATA,
        PacketType.WORK_WARNING,
        PacketType.WORK_COMPLETE,
        PacketType.WORK_EXCEPTION,
    }
)


def encode_work(kind: PacketType, handle: bytes, data: bytes) -> bytes:
    """Fast path of :func:`encode_request` for WORK_DATA, WORK_WARNING, WORK_COMPLETE and
    WORK_EXCEPTION (handle + payload), the packets a worker sends per job.

    Same result and same ``ProtocolError("local")`` checks as ``encode_request(kind, handle, data)``
    for ``bytes`` arguments.
    """
    if kind not in _WORK_KINDS:
        raise ProtocolError(f"encode_work cannot encode {PacketType(kind).name}", side="local")
    if 0 in handle:
        raise ProtocolError(f"{kind.name} handle contains a NUL byte: {handle!r}", side="local")
    size = len(handle) + 1 + len(data)
    if size > _U32_MAX:
        raise ProtocolError(
            f"{kind.name} body of {size} bytes exceeds the 4 GiB frame limit", side="local"
        )
    return b"".join((_REQ_PREFIX[kind], _LENGTH.pack(size), handle, b"\0", data))


_WORK_STATUS_PREFIX: Final = _REQ_PREFIX[PacketType.WORK_STATUS]


def encode_status(handle: bytes, numerator: int, denominator: int) -> bytes:
    """Fast path of :func:`encode_request` for WORK_STATUS (the status point a worker sends).

    Same bytes as ``encode_request(PacketType.WORK_STATUS, handle, b"%d" % numerator,
    b"%d" % denominator)``, and the same ``ProtocolError("local")`` for a handle with a NUL byte.
    """
    if 0 in handle:
        raise ProtocolError(f"WORK_STATUS handle contains a NUL byte: {handle!r}", side="local")
    body = b"%b\0%d\0%d" % (handle, numerator, denominator)
    return _WORK_STATUS_PREFIX + _LENGTH.pack(len(body)) + body


def check_unique(unique: bytes) -> bytes:
    """Return ``unique`` if gearmand will keep it intact, else raise ``ProtocolError("local")``.

    gearmand stores at most 63 bytes: a 64-byte unique is accepted but silently truncated (so a
    later GET_STATUS_UNIQUE with the full value never matches), and 65 bytes or more are rejected
    with ``ERROR ARGUMENT_TOO_LARGE``. A NUL byte would end the argument early and is refused too.
    """
    if len(unique) > MAX_UNIQUE:
        raise ProtocolError(
            f"unique of {len(unique)} bytes is longer than {MAX_UNIQUE}: gearmand truncates a "
            f"64-byte unique (status by unique then never matches) and rejects 65+ bytes with "
            f"ARGUMENT_TOO_LARGE",
            side="local",
        )
    if 0 in unique:
        raise ProtocolError(f"unique contains a NUL byte: {bytes(unique)!r}", side="local")
    return unique


MAX_HANDLE: Final = 63
"""Longest job handle gearmand takes (its buffer holds 64 bytes with the NUL): a GET_STATUS for a
longer one makes gearmand drop or stall the connection, costing every request pipelined with it."""


def handle_problem(handle: bytes) -> str | None:
    """Why gearmand cannot be asked about ``handle`` (too long, empty, a NUL byte), else None."""
    if not handle:
        return "job handle is empty"
    if len(handle) > MAX_HANDLE:
        return (
            f"job handle of {len(handle)} bytes is longer than {MAX_HANDLE}: "
            "no job server issues it, and gearmand stalls on it"
        )
    if 0 in handle:
        return "job handle contains a NUL byte"
    return None


# --------------------------------------------------------------------------------------- decode


class Decoder:
    """Incremental decoder of binary packets.

    ``Decoder()`` expects ``\\0RES`` packets (what a client or worker receives from a server);
    ``Decoder(request=True)`` expects ``\\0REQ`` packets (what a server receives). Feed it bytes
    with :meth:`feed` and take packets with :meth:`next_packet` or by iterating. A declared body
    longer than ``max_packet`` is refused as soon as its header arrives.
    """

    __slots__ = ("_buf", "_error", "_magic", "_max", "_pos", "_request")

    def __init__(self, *, request: bool = False, max_packet: int = DEFAULT_MAX_PACKET) -> None:
        if max_packet < 0:
            raise ValueError("max_packet must not be negative")
        self._request = request
        self._magic = REQ if request else RES
        self._max = max_packet
        self._buf = bytearray()
        self._pos = 0
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Number of received bytes not yet returned as packets."""
        return len(self._buf) - self._pos

    def feed(self, data: BytesLike) -> None:
        """Append received bytes. Raises the stored error if the decoder already failed."""
        if self._error is not None:
            raise self._error.with_traceback(None)
        pos = self._pos
        if pos:
            # Compact: what lies before pos was already returned. Only a partial packet remains
            # after it, so this moves at most one packet's bytes (CPython even does it in O(1)).
            del self._buf[:pos]
            self._pos = 0
        self._buf += data

    def next_packet(self) -> Packet | None:
        """Return the next complete packet, or ``None`` if more bytes are needed."""
        if self._error is not None:
            raise self._error.with_traceback(None)
        buf = self._buf
        pos = self._pos
        start = pos + HEADER_SIZE
        have = len(buf)
        if have < start:
            if have > pos:
                self._check_partial_magic()
            return None
        magic, num, size = _HEADER.unpack_from(buf, pos)
        if magic != self._magic or num > _MAX_TYPE or size > self._max:
            self._header_error(magic, num, size)
        kind = _TYPE_BY_NUM[num]
        if kind is None:
            return self._header_error(magic, num, size)
        end = start + size
        if have < end:
            return None
        count = _ARGC_BY_NUM[num]
        if count == 1:
            args: tuple[bytes, ...] = (bytes(buf[start:end]),)
            if num == _WORK_FAIL and 0 in args[0]:
                # gearmand forwards a failed job to a client without the "exceptions" option
                # as WORK_FAIL whose handle has a trailing NUL: the handle is what precedes it.
                args = (args[0].partition(b"\0")[0],)
        elif count == 0:
            if size:
                self._fail(f"{kind.name} must have an empty body, got {size} bytes")
            args = ()
        else:
            args = tuple(bytes(buf[start:end]).split(b"\0", count - 1))
            if len(args) != count:
                self._too_few(kind, count, len(args), start, end)
        if end == have:
            # Everything consumed: reset in place (cheap, keeps the allocation).
            buf.clear()
            self._pos = 0
        else:
            self._pos = end
        return _make_packet(kind, args, self._request)

    def __iter__(self) -> Iterator[Packet]:
        """Yield every complete packet currently buffered."""
        next_packet = self.next_packet
        while (packet := next_packet()) is not None:
            yield packet

    # -- error paths (kept out of the hot path) --------------------------------------------

    def _fail(self, message: str) -> NoReturn:
        self._error = ProtocolError(message, side="server")
        raise self._error

    def _describe_magic(self, seen: bytes) -> str:
        want = "\\0REQ (request)" if self._request else "\\0RES (response)"
        if seen == (RES if self._request else REQ):
            other = "response" if self._request else "request"
            return f"got a {other} packet ({seen!r}) where {want} was expected"
        if seen[:1] != b"\0":
            return (
                f"bad magic {seen!r}: expected {want}; a first byte other than NUL means "
                f"text (admin protocol or garbage), not a binary packet"
            )
        return f"bad magic {seen!r}: expected {want}"

    def _check_partial_magic(self) -> None:
        seen = bytes(self._buf[self._pos : self._pos + 4])
        if not self._magic.startswith(seen):
            self._fail(self._describe_magic(seen))

    def _too_few(self, kind: PacketType, count: int, got: int, start: int, end: int) -> None:
        body = bytes(self._buf[start : min(end, start + 200)])
        self._fail(f"{kind.name} needs {count} NUL-separated arguments, got {got} in body {body!r}")

    def _header_error(self, magic: bytes, num: int, size: int) -> NoReturn:
        if magic != self._magic:
            self._fail(self._describe_magic(magic))
        if num > _MAX_TYPE or _TYPE_BY_NUM[num] is None:
            self._fail(f"unknown packet type number {num} (declared body {size} bytes)")
        name = PacketType(num).name
        self._fail(f"{name} declares a body of {size} bytes, over the limit of {self._max}")


# ----------------------------------------------------------------------------- typed replies


def parse_int(b: bytes) -> int:
    """Parse an unsigned ASCII decimal number as gearmand writes it; junk raises ProtocolError.

    Stricter than :func:`int`: no sign, no spaces, no underscores, no non-ASCII digits, at most
    20 digits. The error has ``side="server"`` since numbers come from received packets.
    """
    if not (0 < len(b) <= 20 and b.isdigit()):
        raise ProtocolError(f"expected an unsigned decimal number, got {bytes(b[:40])!r}")
    return int(b)


def _parse_flag(b: bytes, what: str) -> bool:
    if b == b"1":
        return True
    if b == b"0":
        return False
    raise ProtocolError(f"expected 0 or 1 for {what}, got {bytes(b[:40])!r}")


def _expect(packet: Packet, *kinds: PacketType) -> None:
    if packet.kind not in kinds:
        names = " or ".join(k.name for k in kinds)
        raise ProtocolError(f"expected {names}, got {packet.kind.name}")


@dataclass(frozen=True, slots=True)
class StatusReply:
    """STATUS_RES: what the server knows of a job handle.

    gearmand answers ``known=False, running=False, 0, 0`` both for a handle that never existed
    and for a job that already finished: the status vanishes at the end.
    """

    handle: bytes
    known: bool
    running: bool
    numerator: int
    denominator: int

    @classmethod
    def from_packet(cls, p: Packet) -> StatusReply:
        """Build from a STATUS_RES packet; ProtocolError on another type or bad numbers. Empty
        numerator and denominator (older servers, Perl's Gearman::Server, for a job that never
        sent WORK_STATUS) read as 0."""
        _expect(p, PacketType.STATUS_RES)
        handle, known, running, numerator, denominator = p.args
        return cls(
            handle,
            _parse_flag(known, "known"),
            _parse_flag(running, "running"),
            parse_int(numerator) if numerator else 0,
            parse_int(denominator) if denominator else 0,
        )


@dataclass(frozen=True, slots=True)
class UniqueStatusReply:
    """STATUS_RES_UNIQUE: status by unique, with the number of clients waiting on the job."""

    unique: bytes
    known: bool
    running: bool
    numerator: int
    denominator: int
    waiting_clients: int

    @classmethod
    def from_packet(cls, p: Packet) -> UniqueStatusReply:
        """Build from a STATUS_RES_UNIQUE packet; ProtocolError on another type or bad numbers."""
        _expect(p, PacketType.STATUS_RES_UNIQUE)
        unique, known, running, numerator, denominator, waiting = p.args
        return cls(
            unique,
            _parse_flag(known, "known"),
            _parse_flag(running, "running"),
            parse_int(numerator),
            parse_int(denominator),
            parse_int(waiting),
        )


@dataclass(frozen=True, slots=True)
class JobAssignment:
    """A job handed to a worker by JOB_ASSIGN, JOB_ASSIGN_UNIQ or JOB_ASSIGN_ALL.

    Fields the packet does not carry are ``b""`` (unique for JOB_ASSIGN, reducer unless ALL).
    Nothing in it tells a background job from a foreground one.
    """

    handle: bytes
    function: bytes
    unique: bytes
    reducer: bytes
    workload: bytes

    @classmethod
    def from_packet(cls, p: Packet) -> JobAssignment:
        """Build from any JOB_ASSIGN* packet; ProtocolError on another type."""
        kind = p.kind
        args = p.args
        if kind is PacketType.JOB_ASSIGN_UNIQ:
            return cls(args[0], args[1], args[2], b"", args[3])
        if kind is PacketType.JOB_ASSIGN:
            return cls(args[0], args[1], b"", b"", args[2])
        if kind is PacketType.JOB_ASSIGN_ALL:
            return cls(args[0], args[1], args[2], args[3], args[4])
        _expect(p, PacketType.JOB_ASSIGN, PacketType.JOB_ASSIGN_UNIQ, PacketType.JOB_ASSIGN_ALL)
        raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """ERROR packet: a string code (``JOB_NOT_FOUND``, ``INVALID_COMMAND``...) and a text."""

    code: str
    text: str

    @classmethod
    def from_packet(cls, p: Packet) -> ErrorReply:
        """Build from an ERROR packet (bytes decoded as UTF-8, undecodable bytes replaced)."""
        _expect(p, PacketType.ERROR)
        code, text = p.args
        return cls(code.decode("utf-8", "replace"), text.decode("utf-8", "replace"))

    def __str__(self) -> str:
        return f"{self.code}: {self.text}"

    @property
    def unknown_command(self) -> bool:
        """True when the error says the server does not know the request: gearmand 0.x and
        others say "unknown" in the code or text; Perl's Gearman::Server answers ``server_error``
        with ``Can't locate object method "CMD_…"`` (``CMD_`` alone for a packet type it has no
        name for)."""
        text = f"{self.code} {self.text}".lower()
        return "unknown" in text or "can't locate object method \"cmd_" in text

    @property
    def refused_command(self) -> str | None:
        """The name of the request the server said it cannot do, when its text names it (Perl:
        ``work_data``; ``""`` for a packet type it has no name for); else None."""
        found = _PERL_COMMAND.search(self.text)
        return found[1] if found is not None else None


_PERL_COMMAND = re.compile(r"object method \"CMD_(\w*)\"")
