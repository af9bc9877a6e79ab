"""What one ``write()`` sends: the write script's KEYS and ARGV for a batch of events. No I/O.

The events are grouped by job (order kept within each job); each job adds its seven keys and its
arguments, with its events as the script's ops (runs of chunks of one kind become one RPUSH). The
layout of KEYS and ARGV is described next to the script, in :mod:`gearstash_redis.scripts`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from hashlib import sha1
from typing import Any

from gearstash.model.records import Event, EventKind, JobKey

from .layout import DIGEST_HEX, JobKeys, Layout
from .scripts import (
    MAX_RUN,
    OP_COMPLETED,
    OP_DATA,
    OP_FAILED,
    OP_HEARTBEAT,
    OP_LEASE,
    OP_STARTED,
    OP_STATUS,
    OP_SUBMITTED,
    OP_WARNING,
    OP_WORKLOAD,
)

_DATA = EventKind.DATA
_WARNING = EventKind.WARNING
_STATUS = EventKind.STATUS
_STARTED = EventKind.STARTED
_COMPLETED = EventKind.COMPLETED
_EXCEPTION = EventKind.EXCEPTION
_SUBMITTED = EventKind.SUBMITTED
_HEARTBEAT = EventKind.HEARTBEAT


def script_args(
    events: Sequence[Event],
    keys_of: Callable[[JobKey], JobKeys],
    default_ttl: float,
    grace: float,
    *,
    now: float | None = None,
) -> tuple[list[bytes], list[Any]]:
    """KEYS and ARGV of the write script for ``events`` (grouped by job, order kept).

    ``keys_of`` names a job's keys (``Layout.keys``); ``default_ttl`` applies when the last
    event of a job has no ``ttl`` of its own; ``grace`` is the store's ``?grace=``; ``now``
    (default: the clock) is when the write happens (a job expires ``ttl`` after it).
    """
    groups = by_job(events)
    keys: list[bytes] = []
    args: list[Any] = []
    if now is None:
        now = time.time()
    for key, group in groups:
        names: JobKeys = keys_of(key)
        keys += names[2:9]  # job, data, warnings, status, gone, handle index, unique index
        ops = _ops(group)
        last = group[-1]
        updated = last
        if updated.kind is _SUBMITTED:  # it changes nothing in a record (it only makes one)
            updated = next((e for e in reversed(group) if e.kind is not _SUBMITTED), updated)
        ttl = default_ttl if last.ttl is None else last.ttl
        ttl_ms = _ms(ttl)
        life_ms = ttl_ms + _ms(min(ttl, grace)) if ttl_ms else 0
        args += (
            names.member,
            key.server,
            key.handle,
            key.unique,
            ttl_ms,
            life_ms,
            b"" if updated.kind is _SUBMITTED else repr(updated.at),
            f"{now + ttl:.3f}",
            len(ops),
        )
        args += ops
    return keys, args


def by_job(events: Sequence[Event]) -> Iterable[tuple[JobKey, Sequence[Event]]]:
    """``events`` (not empty) grouped by job, in the order each job first appears; each
    job's events in their order."""
    first = events[0].key
    if all(event.key == first for event in events):
        return ((first, events),)
    by_key: dict[JobKey, list[Event]] = {}
    for event in events:
        by_key.setdefault(event.key, []).append(event)
    return by_key.items()


def _ms(seconds: float) -> int:
    """Whole milliseconds for PEXPIRE; 0 only for 0 (keep for ever)."""
    return max(1, round(seconds * 1000)) if seconds > 0 else 0


def _ops(events: Sequence[Event]) -> list[Any]:
    """The write script's ops for one job's events (runs of chunks become one RPUSH)."""
    ops: list[Any] = []
    run: list[Any] = []
    run_code = b""
    item: bytes | str
    for event in events:
        kind = event.kind
        if kind is _DATA:
            code, item = OP_DATA, event.payload
        elif kind is _STATUS:
            code, item = OP_STATUS, f"{event.numerator} {event.denominator} {event.at!r}"
        elif kind is _WARNING:
            code, item = OP_WARNING, event.payload
        else:
            if run:
                ops += (run_code, len(run), *run)
                run = []
            if kind is _STARTED:
                ops += (OP_STARTED, repr(event.at), event.function, _text(event.worker))
                if event.workload is not None:
                    ops += (OP_WORKLOAD, event.workload)
            elif kind is _COMPLETED:
                ops += (OP_COMPLETED, repr(event.at), event.payload)
            elif kind is _HEARTBEAT:
                lease = event.lease
                ops += (OP_HEARTBEAT, b"" if lease is None else repr(event.at + lease))
                continue
            elif kind is _SUBMITTED:
                ops += (OP_SUBMITTED, repr(event.at), event.function)  # no lease: a no-op
                continue
            else:
                ops += (
                    OP_FAILED,
                    repr(event.at),
                    b"exception" if kind is _EXCEPTION else b"fail",
                    _text(event.payload.decode("utf-8", "replace")),
                    _text(event.traceback),
                )
            if event.lease is not None:
                ops += (OP_LEASE, repr(event.at + event.lease))
            continue
        if code is not run_code or len(run) >= MAX_RUN:
            if run:
                ops += (run_code, len(run), *run)
            run = []
            run_code = code
        run.append(item)
        if event.lease is not None:  # rare: a chunk with a lease ends its run
            ops += (run_code, len(run), *run, OP_LEASE, repr(event.at + event.lease))
            run = []
    if run:
        ops += (run_code, len(run), *run)
    return ops


def _text(value: str) -> bytes:
    return value.encode("utf-8", "replace")


# ------------------------------------------------------------------ the packed command
#
# What RedisStore.write sends: the EVALSHA command above as RESP bytes, built here instead of
# by a generic packer (hiredis's formats every argument's length with sprintf). A job's seven
# key names and its first four arguments are the same for every write of the job, so their RESP
# bytes are made once per job (cached). Everything else is gathered as parts (length header,
# value, CRLF; headers of short values come from a table) and joined once, so a chunk is copied
# only by that join. The bytes are exactly those of hiredis's ``pack_command`` for
# ``(b"EVALSHA", sha, len(keys), *keys, *args)`` of :func:`script_args` (tests check that).

_CRLF = b"\r\n"
_HEADS = [b"$%d\r\n" % n for n in range(1024)]  # RESP bulk-string headers of short values


def _bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


_NUMBERS = [_bulk(b"%d" % n) for n in range(64)]
_R_STARTED = _bulk(OP_STARTED)
_R_DATA = _bulk(OP_DATA)
_R_WARNING = _bulk(OP_WARNING)
_R_STATUS = _bulk(OP_STATUS)
_R_COMPLETED = _bulk(OP_COMPLETED)
_R_FAILED = _bulk(OP_FAILED)
_R_SUBMITTED = _bulk(OP_SUBMITTED)
_R_HEARTBEAT = _bulk(OP_HEARTBEAT)
_R_LEASE = _bulk(OP_LEASE)
_R_WORKLOAD = _bulk(OP_WORKLOAD)
_R_EMPTY = _bulk(b"")
_R_EXCEPTION = _bulk(b"exception")
_R_FAIL = _bulk(b"fail")


def _number(n: int) -> bytes:
    """RESP of a count (a bulk string of its digits, as hiredis sends an int)."""
    return _NUMBERS[n] if 0 <= n < 64 else _bulk(b"%d" % n)


def _head(size: int) -> bytes:
    """RESP bulk-string header of a value of ``size`` bytes."""
    return _HEADS[size] if size < 1024 else b"$%d\r\n" % size


class WritePacker:
    """The write script's EVALSHA for a batch of events, as the RESP bytes to send.

    ``layout`` names the keys; ``default_ttl`` and ``grace`` as for :func:`script_args`, whose
    KEYS and ARGV (with ``Layout.keys``) the packed command carries, byte for byte.
    Thread-safe (the caches are filled idempotently).
    """

    def __init__(self, layout: Layout, default_ttl: float, grace: float) -> None:
        self._ttl = default_ttl
        self._grace = grace
        # per job: (RESP of its 7 keys, RESP of member, server, handle, unique)
        self._job = lru_cache(maxsize=1024)(self._make_job)
        self._lives: dict[float, bytes] = {}  # ttl -> RESP of ttl_ms, life_ms
        # The RESP of a job's keys in one formatting: every name is the prefix and a 24-digit
        # digest (J five times, then H and U), so their lengths are known now.
        prefix = layout.prefix.replace("%", "%%")
        size = len(layout.prefix.encode())
        names = [f"{prefix}:{{%s}}:{suffix}" for suffix in ("job", "data", "warnings", "status")]
        names += [f"{prefix}:{{%s}}:gone", f"{prefix}:h:{{%s}}", f"{prefix}:u:{{%s}}"]
        sizes = [size + 2 + DIGEST_HEX + len(n) - n.rindex("}") for n in names[:5]]
        sizes += [size + 5 + DIGEST_HEX] * 2
        self._keys = "".join(f"${n}\r\n{name}\r\n" for n, name in zip(sizes, names, strict=True))

    def _make_job(self, key: JobKey) -> tuple[bytes, bytes]:
        server = key.server.encode()
        handle = key.handle
        unique = key.unique
        member = b"%d:%b,%d:%b,%d:%b," % (len(server), server, len(handle), handle, len(unique), unique)
        j = sha1(member).hexdigest()[:DIGEST_HEX]
        h = sha1(handle).hexdigest()[:DIGEST_HEX]
        u = sha1(unique).hexdigest()[:DIGEST_HEX]
        keys = (self._keys % (j, j, j, j, j, h, u)).encode()
        head = b"$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
            len(member),
            member,
            len(server),
            server,
            len(handle),
            handle,
            len(unique),
            unique,
        )
        return keys, head

    def _life(self, ttl: float) -> bytes:
        packed = self._lives.get(ttl)
        if packed is None:
            ttl_ms = _ms(ttl)
            life_ms = ttl_ms + _ms(min(ttl, self._grace)) if ttl_ms else 0
            packed = _number(ttl_ms) + _number(life_ms)
            if len(self._lives) < 64:
                self._lives[ttl] = packed
        return packed

    def pack(self, events: Sequence[Event], sha: bytes, *, now: float | None = None) -> bytes:
        """``EVALSHA sha`` of the write script for ``events`` (not empty), as RESP bytes;
        ``now`` as for :func:`script_args`."""
        groups = by_job(events)
        keys: list[bytes] = []
        args: list[bytes] = []
        count = 0
        if now is None:
            now = time.time()
        job_of = self._job
        for key, group in groups:
            job_keys, head = job_of(key)
            keys.append(job_keys)
            ops: list[bytes] = []
            n, last_at = _packed_ops(group, ops)
            last = group[-1]
            updated = last
            if updated.kind is _SUBMITTED:  # it changes nothing in a record (it only makes one)
                updated = next((e for e in reversed(group) if e.kind is not _SUBMITTED), updated)
            if updated.kind is _SUBMITTED:
                updated_at = b""
            elif updated is last and last_at:
                updated_at = last_at
            else:
                updated_at = repr(updated.at).encode()
            ttl = self._ttl if last.ttl is None else last.ttl
            expires = b"%.3f" % (now + ttl)
            args += (
                head,
                self._life(ttl),
                _HEADS[len(updated_at)],
                updated_at,
                _CRLF,
                _HEADS[len(expires)],
                expires,
                _CRLF,
                _number(n),
            )
            args += ops
            count += 9 + n
        nkeys = 7 * len(keys)
        return b"".join(
            [
                b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%b\r\n" % (3 + nkeys + count, len(sha), sha),
                _number(nkeys),
                *keys,
                *args,
            ]
        )


def _packed_ops(events: Sequence[Event], out: list[bytes]) -> tuple[int, bytes]:
    """Append the RESP of :func:`_ops` for one job's ``events`` to ``out``; returns how many
    arguments that is, and the last event's time as stored when it was among them (else b"")."""
    n = 0
    run: list[bytes] = []  # RESP parts of the chunks of the run being gathered
    size = 0  # chunks in the run
    run_code = b""
    at = b""
    heads = _HEADS
    crlf = _CRLF
    for event in events:
        kind = event.kind
        if kind is _DATA or kind is _WARNING or kind is _STATUS:
            if kind is _STATUS:
                code = _R_STATUS
                value = b"%d %d %r" % (event.numerator, event.denominator, event.at)
            else:
                code = _R_DATA if kind is _DATA else _R_WARNING
                value = event.payload
            at = b""
            if code is not run_code or size >= MAX_RUN:
                if size:
                    out += (run_code, _number(size), *run)
                    n += 2 + size
                run = []
                size = 0
                run_code = code
            run += (_head(len(value)), value, crlf)
            size += 1
            if event.lease is not None:  # rare: a chunk with a lease ends its run
                lease_until = repr(event.at + event.lease).encode()
                out += (run_code, _number(size), *run, _R_LEASE, heads[len(lease_until)])
                out += (lease_until, crlf)
                n += 4 + size
                run = []
                size = 0
            continue
        if size:
            out += (run_code, _number(size), *run)
            n += 2 + size
            run = []
            size = 0
        if kind is _HEARTBEAT:
            at = b""
            lease = event.lease
            if lease is None:
                out += (_R_HEARTBEAT, _R_EMPTY)
            else:
                lease_until = repr(event.at + lease).encode()
                out += (_R_HEARTBEAT, heads[len(lease_until)], lease_until, crlf)
            n += 2
            continue
        at = repr(event.at).encode()
        if kind is _STARTED:
            worker = _text(event.worker)
            function = event.function
            out += (_R_STARTED, heads[len(at)], at, crlf, _head(len(function)), function, crlf)
            out += (_head(len(worker)), worker, crlf)
            n += 4
            workload = event.workload
            if workload is not None:
                out += (_R_WORKLOAD, _head(len(workload)), workload, crlf)
                n += 2
        elif kind is _COMPLETED:
            result = event.payload
            out += (_R_COMPLETED, heads[len(at)], at, crlf, _head(len(result)), result, crlf)
            n += 3
        elif kind is _SUBMITTED:
            function = event.function  # no lease: a no-op
            out += (_R_SUBMITTED, heads[len(at)], at, crlf, _head(len(function)), function, crlf)
            n += 3
            continue
        else:
            message = _text(event.payload.decode("utf-8", "replace"))
            trace = _text(event.traceback)
            out += (
                _R_FAILED,
                heads[len(at)],
                at,
                crlf,
                _R_EXCEPTION if kind is _EXCEPTION else _R_FAIL,
                _head(len(message)),
                message,
                crlf,
                _head(len(trace)),
                trace,
                crlf,
            )
            n += 5
        if event.lease is not None:
            lease_until = repr(event.at + event.lease).encode()
            out += (_R_LEASE, heads[len(lease_until)], lease_until, crlf)
            n += 2
    if size:
        out += (run_code, _number(size), *run)
        n += 2 + size
    return n, at
