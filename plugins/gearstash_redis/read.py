"""What a read sends and what it makes of the answers: references in, job records out. No I/O.

A read is one READ_MANY script per slice of up to :data:`SLICE` distinct references, all in one
pipeline (one round trip; a single reference is one EVALSHA). A complete reference names its job's
hash; one without server or unique names the handle index, and one by unique (empty handle) the
unique index, which the script follows to the newest matching job that has not vanished. A job
asked for twice yields a record each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from gearstash.errors import StoreError
from gearstash.model.records import JobError, JobKey, JobRecord, JobRef, State, StatusPoint

from .connection import Command
from .layout import Layout, decode_key
from .scripts import READ_MANY_SHA

SLICE = 250
"""References per script call: bounds the time one call blocks Redis, and lets Redis run the
next slice while the client reads the answer of the previous one."""

_STATES = {state.value.encode(): state for state in State}
_COMPLETE = b"f"
_BY_HANDLE = b"h"
_BY_SERVER = b"s"
_BY_UNIQUE = b"u"
_BY_ALL = b"a"
_ANY_HANDLE = b"q"
_ANY_HANDLE_ON_SERVER = b"r"


class ReadBatch:
    """The read scripts for some references (:attr:`commands`), and how to answer each one.

    ``name`` (the store's URL) is for error messages.
    """

    __slots__ = ("after", "commands", "name", "order", "refs")

    def __init__(
        self, layout: Layout, prefix: bytes, refs: Sequence[JobRef], after: int, name: str
    ) -> None:
        self.after = after
        self.name = name
        slots: dict[JobRef, int] = {}
        order: list[int] = []
        for ref in refs:
            slot = slots.get(ref)
            if slot is None:
                slot = slots[ref] = len(slots)
            order.append(slot)
        distinct = list(slots)
        job_of, index = layout.job, layout.index
        commands: list[Command] = []
        for start in range(0, len(distinct), SLICE):
            keys: list[bytes] = []
            args: list[Any] = [prefix, after]
            for ref in distinct[start : start + SLICE]:
                server, unique = ref.server, ref.unique
                if not ref.handle and unique:  # by unique
                    keys.append(layout.unique_index(unique))
                    if server is not None:
                        args += (_ANY_HANDLE_ON_SERVER, unique, server)
                    else:
                        args += (_ANY_HANDLE, unique)
                elif ref.handle and server is not None and unique is not None:
                    keys.append(job_of(JobKey(server, ref.handle, unique)))
                    args.append(_COMPLETE)
                else:  # an empty unique is never listed: an empty handle looks among empty handles
                    keys.append(index(ref.handle))
                    if server is not None and unique is not None:  # with an empty handle
                        args += (_BY_ALL, ref.handle, server, unique)
                    elif server is not None:
                        args += (_BY_SERVER, ref.handle, server)
                    elif unique is not None:
                        args += (_BY_UNIQUE, ref.handle, unique)
                    else:
                        args += (_BY_HANDLE, ref.handle)
            commands.append((b"EVALSHA", READ_MANY_SHA, len(keys), *keys, *args))
        self.commands = commands
        self.refs = distinct  # each distinct reference, in the order of the scripts' answers
        self.order = order  # each reference asked for -> its distinct reference

    def convert(self, i: int, reply: Any) -> list[JobRecord | None]:
        """The records of the distinct references of script ``i``, from its answer."""
        after = self.after
        refs = self.refs[i * SLICE : (i + 1) * SLICE]
        records: list[JobRecord | None] = []
        append = records.append
        servers: dict[bytes, str] = {}
        try:
            for ref, answer in zip(refs, reply, strict=True):
                if answer is None:
                    append(None)
                elif len(answer) > 2:
                    append(_record(ref, answer, after, servers))
                else:
                    append(_expired(ref, answer, after))
        except (KeyError, ValueError, IndexError, TypeError, AttributeError) as exc:
            bad = refs[len(records)] if len(records) < len(refs) else None
            raise StoreError(
                f"{self.name}: read failed: a malformed job record for {bad} "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        return records

    def records(self, converted: list[list[JobRecord | None]]) -> list[JobRecord | None]:
        """The record of each reference asked for, from the scripts' :meth:`convert`-ed answers."""
        records = converted[0] if len(converted) == 1 else [r for part in converted for r in part]
        if len(records) == len(self.order):
            return records  # no reference asked for twice
        out: list[JobRecord | None] = []
        used: set[int] = set()
        for slot in self.order:
            record = records[slot]
            if record is not None and slot in used:  # a job asked for twice: a record each
                record = record.copy()
            used.add(slot)
            out.append(record)
        return out


def _expired(ref: JobRef, reply: list[Any], after: int) -> JobRecord | None:
    """The record of a job that expired: ``{tombstone}`` (complete ref) or ``{tombstone, K}``."""
    server, unique = ref.server, ref.unique
    if len(reply) == 1 and server is not None and unique is not None:
        key: JobKey | None = JobKey(server, ref.handle, unique)
    else:
        key = decode_key(reply[1])
    if key is None:
        return None
    return JobRecord(key, state=State.EXPIRED, expires_at=float(reply[0]), data_offset=after)


def _record(
    ref: JobRef, reply: list[Any], after: int, servers: dict[bytes, str]
) -> JobRecord | None:
    """A live job's record from its READ_MANY answer (the order of ``READ_FIELDS``)."""
    (
        raw_server,
        handle,
        unique,
        function,
        state,
        attempt,
        worker,
        started_at,
        finished_at,
        updated_at,
        expires_at,
        result,
        error_kind,
        error_message,
        traceback,
        lease_until,
        workload,
        data,
        warnings,
        status,
    ) = reply
    server = servers.get(raw_server)
    if server is None:
        server = servers[raw_server] = raw_server.decode("utf-8", "replace")
    if (
        (handle != ref.handle and ref.handle)
        or (ref.server is not None and ref.server != server)
        or (ref.unique is not None and ref.unique != unique)
    ):
        return None  # another job under the same digest (never seen; 96 bits)
    if status:
        points = []
        for item in status:
            numerator, denominator, at = item.split(b" ")
            points.append(StatusPoint(int(numerator), int(denominator), float(at)))
        status = points
    return _new_record(
        JobKey(server, handle, unique),
        function or b"",
        _STATES[state or b"running"],
        int(attempt or 1),
        data,
        warnings,
        status,
        result,
        None
        if error_kind is None
        else JobError(
            error_kind.decode(),
            (error_message or b"").decode("utf-8", "replace"),
            (traceback or b"").decode("utf-8", "replace"),
        ),
        _worker(worker),
        None if started_at is None else float(started_at),
        None if finished_at is None else float(finished_at),
        None if updated_at is None else float(updated_at),
        None if expires_at is None else float(expires_at),
        after,
        None if lease_until is None else float(lease_until),
        workload,
    )


_WORKERS: dict[bytes | None, str] = {None: ""}


def _worker(raw: bytes | None) -> str:
    """The worker's name (a few workers write many jobs: their names are kept, up to 1,000)."""
    name = _WORKERS.get(raw)
    if name is None:
        assert raw is not None
        name = raw.decode("utf-8", "replace")
        if len(_WORKERS) < 1000:
            _WORKERS[raw] = name
    return name


_FIELDS = [
    "key",
    "function",
    "state",
    "attempt",
    "data",
    "warnings",
    "status",
    "result",
    "error",
    "worker",
    "started_at",
    "finished_at",
    "updated_at",
    "expires_at",
    "data_offset",
    "lease_until",
    "workload",
]


def _by_name(*values: Any) -> JobRecord:
    return JobRecord(**dict(zip(_FIELDS, values, strict=True)))


# JobRecord's fields by position (half the cost of keywords) while they are in this order; by
# name, should they ever change.
_new_record = JobRecord if [f.name for f in dataclasses.fields(JobRecord)] == _FIELDS else _by_name
