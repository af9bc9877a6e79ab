"""The on-disk spool format: event batches appended to a file, replayed in order.

A spool file is a header and then frames, one per batch the store could not take::

    header  b"GSSPOOL1" | replay offset (u64, big-endian)        16 bytes
    frame   payload length (u32) | crc32 of the payload (u32) | payload

The replay offset is the position of the first frame not yet written to the store; it is
rewritten (and fsynced) after each replay write, so a restarted worker does not replay what
already landed. The payload is the batch as JSON (:func:`encode_events`): every field of
:class:`~gearstash.model.records.Event` by name, bytes in the codec of
:mod:`gearstash.model.codec`, enums by value, the :class:`~gearstash.model.records.JobKey` as a
list of its parts. Nothing is pickled.

A frame cut short by a crash during an append (a *torn tail*) or whose crc does not match is
reported with a warning; it and everything after it in that file are ignored.

A file belongs to the process holding its ``flock``; a file nobody holds was left by a worker
that stopped or died, and may be adopted (:meth:`SpoolFile.adopt`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import fcntl
import json
import logging
import os
import socket
import struct
import time
import types
import typing
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gearstash.model.codec import bytes_to_json, json_to_bytes
from gearstash.model.records import Event

log = logging.getLogger("gearstash.spool")

MAGIC = b"GSSPOOL1"
HEADER = struct.Struct(">8sQ")
FRAME = struct.Struct(">II")
SUFFIX = ".spool"
MAX_FRAME = 1 << 31  # a length above this is corruption, not a batch


# ------------------------------------------------------------------ batches <-> bytes


def _encode(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes_to_json(bytes(value))
    if isinstance(value, enum.Enum):
        return _encode(value.value)
    if isinstance(value, tuple):  # JobKey and any other NamedTuple: its parts in order
        return [_encode(part) for part in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"cannot spool a {type(value).__name__} value")


def _decode(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) == 1:
            return _decode(options[0], value)
        if bytes in options and (isinstance(value, dict) or str not in options):
            return _decode(bytes, value)
        return value
    if hint is bytes:
        return json_to_bytes(value)
    if isinstance(hint, type):
        if issubclass(hint, enum.Enum):
            return hint(value)
        if issubclass(hint, tuple) and hasattr(hint, "_fields"):
            hints = typing.get_type_hints(hint)
            return hint(
                *(_decode(hints[name], v) for name, v in zip(hint._fields, value, strict=True))
            )
        if hint is float:
            return float(value)
        if hint is int:
            return int(value)
    return value


_hints: dict[str, Any] | None = None


def _event_hints() -> dict[str, Any]:
    global _hints
    if _hints is None:
        _hints = typing.get_type_hints(Event)
    return _hints


def encode_events(events: Sequence[Event]) -> bytes:
    """A batch as the JSON payload of a frame (every dataclass field of each event, by name)."""
    names = [f.name for f in dataclasses.fields(Event)]
    batch = [{name: _encode(getattr(event, name)) for name in names} for event in events]
    return json.dumps(batch, separators=(",", ":"), allow_nan=False).encode("utf-8")


def decode_events(payload: bytes) -> list[Event]:
    """The inverse of :func:`encode_events`. Fields the payload lacks take their defaults;
    fields this version does not know are ignored. Raises ValueError for a payload it cannot read."""
    hints = _event_hints()
    known = {f.name for f in dataclasses.fields(Event)}
    try:
        batch = json.loads(payload)
        return [
            Event(**{k: _decode(hints[k], v) for k, v in item.items() if k in known})
            for item in batch
        ]
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc


# ------------------------------------------------------------------ files


def frame(payload: bytes) -> bytes:
    """One frame: length, crc32, payload."""
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


class SpoolFile:
    """One spool file, opened and ``flock``-ed by this process.

    ``offset`` is the first frame not yet replayed, ``end`` the end of the last good frame
    (appends go there), ``pending`` the number of frames between them. Not thread-safe: the
    :class:`~gearstash.store.spool.SpoolingStore` serializes calls.
    """

    def __init__(self, path: Path, fd: int, offset: int, end: int, pending: int) -> None:
        self.path = path
        self.fd = fd
        self.offset = offset
        self.end = end
        self.pending = pending

    def __repr__(self) -> str:
        return f"<SpoolFile {self.path} {self.pending} pending>"

    @property
    def size(self) -> int:
        return self.end

    @classmethod
    def create(cls, folder: Path) -> SpoolFile:
        """A new, empty, locked spool file of this process in ``folder`` (made if missing).

        Names start with the creation time, so sorting names sorts files oldest first.
        """
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{socket.gethostname()}-{os.getpid()}{SUFFIX}"
        path = folder / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, HEADER.pack(MAGIC, HEADER.size))
            os.fsync(fd)
            _fsync_dir(folder)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        return cls(path, fd, HEADER.size, HEADER.size, 0)

    @classmethod
    def adopt(cls, path: Path) -> SpoolFile | None:
        """Take over ``path`` if no live process holds it; None when held, gone or not a spool.

        Scans the frames after the replay offset; a torn or corrupt frame is logged and it and
        everything after it are left out (``end`` stops before it).
        """
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None  # a live worker's
        try:
            size = os.fstat(fd).st_size
            head = os.pread(fd, HEADER.size, 0)
            if len(head) < HEADER.size or HEADER.unpack(head)[0] != MAGIC:
                log.warning("spool: %s is not a gearstash spool file; left alone", path)
                os.close(fd)
                return None
            offset = HEADER.unpack(head)[1]
            if offset < HEADER.size or offset > size:  # cut back after a full replay
                offset = size
            end, pending = _scan(fd, path, offset, size)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, offset, end, pending)

    def append(self, payload: bytes) -> None:
        """Append one frame and fsync it. On failure the file is cut back; raises OSError."""
        data = frame(payload)
        try:
            written = os.pwrite(self.fd, data, self.end)
            if written != len(data):
                raise OSError(f"short write to {self.path} ({written} of {len(data)} bytes)")
            os.fsync(self.fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.end)
            raise
        self.end += len(data)
        self.pending += 1

    def read(self, max_frames: int, max_bytes: int) -> list[tuple[int, bytes]]:
        """Up to ``max_frames`` frames (at least one, at most ~``max_bytes`` of payload) from the
        replay offset on, as (end offset, payload). A frame that reads back corrupt (the disk
        changed under us) ends the file here, with a warning."""
        out: list[tuple[int, bytes]] = []
        pos, total = self.offset, 0
        while pos < self.end and len(out) < max_frames and (not out or total < max_bytes):
            head = os.pread(self.fd, FRAME.size, pos)
            length, crc = FRAME.unpack(head) if len(head) == FRAME.size else (-1, 0)
            payload = os.pread(self.fd, length, pos + FRAME.size) if length >= 0 else b""
            if length < 0 or len(payload) != length or zlib.crc32(payload) != crc:
                log.warning(
                    "spool: %s: corrupt frame at offset %d; ignoring the last %d bytes",
                    self.path,
                    pos,
                    self.end - pos,
                )
                self.end = pos
                self.pending = len(out)
                break
            pos += FRAME.size + length
            total += length
            out.append((pos, payload))
        return out

    def advance(self, offset: int, frames: int) -> None:
        """Record durably that the frames before ``offset`` are in the store."""
        os.pwrite(self.fd, HEADER.pack(MAGIC, offset), 0)
        os.fdatasync(self.fd)
        self.offset = offset
        self.pending = max(self.pending - frames, 0)

    def reset(self) -> None:
        """Empty the file (everything was replayed): cut it back to its header."""
        os.ftruncate(self.fd, HEADER.size)
        os.fsync(self.fd)  # cut first: a crash in between leaves offset > size, read as empty
        os.pwrite(self.fd, HEADER.pack(MAGIC, HEADER.size), 0)
        os.fsync(self.fd)
        self.offset = self.end = HEADER.size
        self.pending = 0

    def remove(self) -> None:
        """Delete the file (it holds nothing more to replay) and let go of it."""
        with contextlib.suppress(OSError):
            self.path.unlink()
        self.close()

    def close(self) -> None:
        """Let go of the file (and its lock); idempotent."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def _scan(fd: int, path: Path, start: int, size: int) -> tuple[int, int]:
    """(end of the last good frame, frames) from ``start``; logs a torn or corrupt frame."""
    pos, count = start, 0
    while pos < size:
        head = os.pread(fd, FRAME.size, pos)
        problem = ""
        if len(head) < FRAME.size:
            problem = "torn frame header (a crash during a write?)"
        else:
            length, crc = FRAME.unpack(head)
            if length > MAX_FRAME or pos + FRAME.size + length > size:
                problem = "torn frame (a crash during a write?)"
            elif zlib.crc32(os.pread(fd, length, pos + FRAME.size)) != crc:
                problem = "crc mismatch (corrupt frame)"
        if problem:
            log.warning(
                "spool: %s: %s at offset %d; ignoring the last %d bytes",
                path,
                problem,
                pos,
                size - pos,
            )
            break
        pos += FRAME.size + length
        count += 1
    return pos, count


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def spool_files(folder: Path) -> list[Path]:
    """The spool files in ``folder``, oldest first (empty when it does not exist)."""
    try:
        return sorted(p for p in folder.iterdir() if p.name.endswith(SUFFIX) and p.is_file())
    except FileNotFoundError:
        return []
