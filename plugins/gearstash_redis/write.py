"""What one ``write()`` sends: the write script's KEYS and ARGV for a batch of events. No I/O.

The events are grouped by job (order kept within each job); each job adds its seven keys and its
arguments, with its events as the script's ops (runs of chunks of one kind become one RPUSH). The
layout of KEYS and ARGV is described next to the script, in :mod:`gearstash_redis.scripts`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from gearstash.model.records import Event, EventKind, JobKey

from .layout import JobKeys
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
) -> tuple[list[bytes], list[Any]]:
    """KEYS and ARGV of the write script for ``events`` (grouped by job, order kept).

    ``keys_of`` names a job's keys (``Layout.keys``); ``default_ttl`` applies when the last
    event of a job has no ``ttl`` of its own; ``grace`` is the store's ``?grace=``.
    """
    first = events[0].key
    groups: Iterable[tuple[JobKey, Sequence[Event]]]
    if all(event.key == first for event in events):
        groups = ((first, events),)
    else:
        by_key: dict[JobKey, list[Event]] = {}
        for event in events:
            by_key.setdefault(event.key, []).append(event)
        groups = by_key.items()
    keys: list[bytes] = []
    args: list[Any] = []
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
