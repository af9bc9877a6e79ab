"""The job server's admin text protocol, sans-IO: encode a command, read its reply incrementally,
parse the ``status``, ``workers``, ``show jobs`` and ``show unique jobs`` tables.

Bytes in, values out; the one admin reply reader of gearstash (:class:`AdminReader`). Sockets are
:mod:`gearstash.transport.connection`'s business.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from gearstash.errors import ProtocolError
from gearstash.protocol.packets import BytesLike

__all__ = [
    "AdminReader",
    "FunctionStatus",
    "QueuedJob",
    "UniqueJob",
    "WorkerInfo",
    "encode_admin",
    "parse_show_jobs",
    "parse_show_unique_jobs",
    "parse_status",
    "parse_workers",
]


_ADMIN_ENCODING: Final = "utf-8"
_ADMIN_ERRORS: Final = "surrogateescape"  # function names are bytes: keep them round-trippable


def encode_admin(command: str) -> bytes:
    """Return an admin text command (``status``, ``show jobs``...) as bytes ending in ``\\n``.

    Newlines, carriage returns and NUL bytes are refused (``ProtocolError``, ``side="local"``):
    they would smuggle a second command in, and a leading NUL would mean binary protocol.
    """
    if not command or any(c in command for c in "\n\r\0"):
        raise ProtocolError(
            f"admin command must be one non-empty line without NUL: {command!r}", side="local"
        )
    return command.encode(_ADMIN_ENCODING, _ADMIN_ERRORS) + b"\n"


class AdminReader:
    """Incremental reader of one admin text reply.

    ``multiline=True`` for ``status``, ``workers``, ``show jobs``, ``show unique jobs`` and
    ``prioritystatus`` (the reply ends with a line holding just ``.``, not included in the
    result); ``False`` for ``version``, ``getpid``, ``maxqueue``, ``cancel job``... (the reply is
    the first line). Lines are returned without their ``\\n`` / ``\\r\\n`` ending, decoded as
    UTF-8 with surrogate escapes. A first line ``ERR ...`` (with no tab in it, so a ``status``
    row cannot be mistaken for one) ends the reply: :meth:`result` then raises
    :class:`ProtocolError` (``side="server"``) carrying the server's text. (A ``show unique jobs``
    reply whose first unique starts with ``"ERR "`` is indistinguishable from an error.)
    """

    __slots__ = ("_buf", "_done", "_error", "_lines", "_multiline", "_scan", "error_line")

    def __init__(self, multiline: bool) -> None:
        self._multiline = multiline
        self._buf = bytearray()
        self._scan = 0
        self._lines: list[str] = []
        self._done = False
        self._error: ProtocolError | None = None
        self.error_line: str | None = None
        """The server's ``ERR …`` line when the reply was an error, else None."""

    @property
    def done(self) -> bool:
        """True once the whole reply (or an ERR line) was read."""
        return self._done

    def feed(self, data: BytesLike) -> None:
        """Append received bytes. Never raises: an ERR reply is raised by :meth:`result`.

        Bytes after the end of the reply are ignored.
        """
        if self._done:
            return
        self._buf += data
        buf = self._buf
        while (nl := buf.find(b"\n", self._scan)) >= 0:
            raw = bytes(buf[self._scan : nl])
            self._scan = nl + 1
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            line = raw.decode(_ADMIN_ENCODING, _ADMIN_ERRORS)
            if not self._lines and (line == "ERR" or line.startswith("ERR ")) and "\t" not in line:
                self._error = ProtocolError(f"job server admin command failed: {line}")
                self.error_line = line
                self._finish()
                return
            if not self._multiline:
                self._lines.append(line)
                self._finish()
                return
            if line == ".":
                self._finish()
                return
            self._lines.append(line)

    def _finish(self) -> None:
        self._done = True
        self._buf = bytearray()

    def result(self) -> list[str] | None:
        """The reply's lines once complete, else ``None``; raises the ERR reply if there was one."""
        if self._error is not None:
            raise self._error.with_traceback(None)
        return list(self._lines) if self._done else None


def _admin_error(what: str, line: str) -> ProtocolError:
    return ProtocolError(f"malformed {what} line: {line[:200]!r}")


@dataclass(frozen=True, slots=True)
class FunctionStatus:
    """One row of ``status``.

    ``queued`` is gearmand's TOTAL column: every job of the function it holds, *including* the
    ``running`` ones. ``workers`` counts connections that registered the function.
    """

    function: str
    queued: int
    running: int
    workers: int


def _count(field: str, what: str, line: str) -> int:
    if not (field.isascii() and field.isdigit()):
        raise _admin_error(what, line)
    return int(field)


def parse_status(lines: Iterable[str]) -> list[FunctionStatus]:
    """Parse ``status`` lines: ``FUNCTION\\tTOTAL\\tRUNNING\\tAVAILABLE_WORKERS``."""
    result = []
    for line in lines:
        parts = line.rsplit("\t", 3)  # a function name may itself hold a tab
        if len(parts) != 4:
            raise _admin_error("status", line)
        function, total, running, workers = parts
        result.append(
            FunctionStatus(
                function,
                _count(total, "status", line),
                _count(running, "status", line),
                _count(workers, "status", line),
            )
        )
    return result


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One row of ``workers``: a connection, its client id (``"-"`` if unset) and functions.

    Every connection appears, clients too (with no functions). Function names are split on
    spaces, so a name containing a space comes back as several names (gearmand's format is
    ambiguous there).
    """

    fd: int
    ip: str
    client_id: str
    functions: tuple[str, ...]


# "FD IP CLIENT-ID :" then " FUNCTION" per function; the client id ends at the first " :" that
# is followed by a space or the end of the line.
_WORKER_LINE = re.compile(r"(\d+) (\S+) (.*?) :(?: (.*))?")


def parse_workers(lines: Iterable[str]) -> list[WorkerInfo]:
    """Parse ``workers`` lines: ``FD IP-ADDRESS CLIENT-ID : FUNCTION ...``."""
    result = []
    for line in lines:
        m = _WORKER_LINE.fullmatch(line)
        if m is None:
            raise _admin_error("workers", line)
        fd, ip, client_id, functions = m.groups()
        names = tuple(f for f in functions.split(" ") if f) if functions else ()
        result.append(WorkerInfo(int(fd), ip, client_id, names))
    return result


@dataclass(frozen=True, slots=True)
class QueuedJob:
    """One row of ``show jobs``: ``HANDLE\\tRETRIES\\tIGNORE_JOB\\tJOB_QUEUED``.

    ``ignore_job`` is set once nobody wants the result any more (the foreground client left);
    ``job_queued`` is set for jobs handed to the persistent queue (background jobs; even with the
    builtin in-memory queue). ``fields`` keeps every column after the handle as text, for
    servers that print more or fewer.
    """

    handle: str
    retries: int
    ignore_job: bool
    job_queued: bool
    fields: tuple[str, ...]


def parse_show_jobs(lines: Iterable[str]) -> list[QueuedJob]:
    """Parse ``show jobs`` lines (every job gearmand holds, queued or running)."""
    result = []
    for line in lines:
        handle, *fields = line.split("\t")
        if not handle or len(fields) < 3:
            raise _admin_error("show jobs", line)
        retries = _count(fields[0], "show jobs", line)
        ignore = _count(fields[1], "show jobs", line)
        queued = _count(fields[2], "show jobs", line)
        result.append(QueuedJob(handle, retries, ignore != 0, queued != 0, tuple(fields)))
    return result


@dataclass(frozen=True, slots=True)
class UniqueJob:
    """One row of ``show unique jobs``: gearmand 1.1.20 prints only the unique; later versions
    add ``\\tHANDLE`` (``handle`` is ``None`` when absent)."""

    unique: str
    handle: str | None


def parse_show_unique_jobs(lines: Iterable[str]) -> list[UniqueJob]:
    """Parse ``show unique jobs`` lines (``UNIQUE`` or ``UNIQUE\\tHANDLE``)."""
    result = []
    for line in lines:
        unique, tab, handle = line.partition("\t")
        result.append(UniqueJob(unique, handle if tab else None))
    return result
