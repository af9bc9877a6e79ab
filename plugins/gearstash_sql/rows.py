"""Events → column changes, and table rows → :class:`~gearstash.model.records.JobRecord`. No I/O.

:class:`RowChange` reproduces :meth:`JobRecord.apply <gearstash.model.records.JobRecord.apply>` on what a
job row needs to know (``attempt``, ``started_at``, ``function``, ``next_seq``) and collects the
columns to write and the chunks to append; :class:`Scan` does the same in one pass for the batches
of the direct statements. Both exist for speed (RowChange never reads the job's chunks; Scan
builds the parameters of one statement); tests/test_apply_equivalence.py property-tests both
against ``JobRecord.apply`` on every SQL database.

Beyond ``apply``: the SQL store also sets ``expires_at`` (see :func:`expiry`), from ``started``,
the final events and ``heartbeat`` (a running job's heartbeats keep it from expiring), and from
whatever write creates a job's row; data, warning and status leave it alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from gearstash.model.records import (
    Event,
    EventKind,
    JobError,
    JobKey,
    JobRecord,
    State,
    StatusPoint,
)

_DATA = EventKind.DATA
_WARNING = EventKind.WARNING
_STATUS = EventKind.STATUS
_STARTED = EventKind.STARTED
_HEARTBEAT = EventKind.HEARTBEAT
_SUBMITTED = EventKind.SUBMITTED
_COMPLETED = EventKind.COMPLETED
_EXCEPTION = EventKind.EXCEPTION
_RUNNING = State.RUNNING.value
_COMPLETE = State.COMPLETE.value
_FAILED = State.FAILED.value

# (seq, kind, payload, numerator, denominator, at)
Chunk = tuple[int, str, bytes | None, int | None, int | None, float]

# the columns of a job row a store writes, with their values in a row no event has touched
FRESH_COLUMNS: dict[str, Any] = {
    "function": b"",
    "state": State.RUNNING.value,
    "attempt": 1,
    "result": None,
    "error_kind": None,
    "error_message": None,
    "traceback": None,
    "worker": "",
    "started_at": None,
    "finished_at": None,
    "updated_at": None,
    "expires_at": None,
    "next_seq": 0,
    "lease_until": None,
    "workload": None,
}

# every column a new job row is inserted with, and every column of a chunk row
JOB_COLUMNS = ("server", "handle", "unique_key", *FRESH_COLUMNS)
CHUNK_COLUMNS = ("job_id", "seq", "kind", "payload", "numerator", "denominator", "at")


class RowChange:
    """The effect of a run of events on one job row.

    ``changes`` maps column → new value (only columns the events set). ``chunks`` are the rows to
    append to ``gearstash_chunks``. ``cleared`` is True when a ``started`` event means the job's
    existing chunks must be deleted first. ``expires_at`` is set by ``started``, ``heartbeat``
    and the final events (their ``ttl``, else the store's ``ttl``; see :func:`expiry`), not by
    data or status; :meth:`fresh_row` gives a new row the expiry of the run's last event when
    none of those set it.

    ``exists=False`` (no row yet): events before the first one that creates a record
    (:meth:`JobRecord.create <gearstash.model.records.JobRecord.create>`; ``heartbeat`` creates none)
    are skipped, and ``created`` tells whether there is a row to insert at all. A ``submitted``
    event creates a ``queued`` row and otherwise changes nothing.
    """

    __slots__ = (
        "attempt",
        "changes",
        "chunks",
        "cleared",
        "created",
        "exists",
        "function",
        "last_expiry",
        "next_seq",
        "started_at",
    )

    def __init__(
        self,
        *,
        attempt: int = 1,
        started_at: float | None = None,
        function: bytes = b"",
        next_seq: int = 0,
        exists: bool = False,
    ) -> None:
        self.attempt = attempt
        self.started_at = started_at
        self.function = function
        self.next_seq = next_seq
        self.exists = exists
        self.created = False
        self.changes: dict[str, Any] = {}
        self.chunks: list[Chunk] = []
        self.cleared = False
        self.last_expiry: float | None = None

    def apply_all(self, events: Iterable[Event], ttl: float = 0.0) -> RowChange:
        """Apply ``events`` in order (``ttl``: the store's default TTL); returns self."""
        changes = self.changes
        chunks = self.chunks
        last: Event | None = None
        for event in events:
            kind = event.kind
            if not self.exists:
                record = JobRecord.create(event)
                if record is None:
                    continue  # a heartbeat of a job with no row
                self.exists = self.created = True
                if kind is _SUBMITTED:
                    self.attempt = record.attempt
                    self.function = record.function
                    changes.update(
                        function=record.function,
                        state=record.state.value,
                        attempt=record.attempt,
                        updated_at=record.updated_at,
                        lease_until=record.lease_until,
                    )
                    last = event
                    continue
            elif kind is _SUBMITTED:
                continue  # changes nothing in an existing row
            last = event
            at = event.at
            changes["updated_at"] = at
            if event.lease is not None:
                changes["lease_until"] = at + event.lease
            if kind is _DATA or kind is _WARNING:
                chunks.append((self.next_seq, kind.value, event.payload, None, None, at))
                self.next_seq += 1
            elif kind is _STATUS:
                chunks.append(
                    (self.next_seq, "status", None, event.numerator, event.denominator, at)
                )
                self.next_seq += 1
            elif kind is _HEARTBEAT:
                changes["expires_at"] = expiry(event, ttl)
            elif kind is _STARTED:
                self.attempt = self.attempt + 1 if self.started_at is not None else 1
                self.function = event.function or self.function
                self.started_at = at
                self.cleared = True
                chunks.clear()
                self.next_seq = 0
                changes.update(
                    expires_at=expiry(event, ttl),
                    function=self.function,
                    worker=event.worker,
                    state=State.RUNNING.value,
                    attempt=self.attempt,
                    started_at=at,
                    finished_at=None,
                    result=None,
                    error_kind=None,
                    error_message=None,
                    traceback=None,
                )
                if event.workload is not None:
                    changes["workload"] = event.workload
            elif kind is _COMPLETED:
                changes.update(
                    state=State.COMPLETE.value,
                    result=event.payload,
                    finished_at=at,
                    expires_at=expiry(event, ttl),
                )
            else:
                changes.update(
                    expires_at=expiry(event, ttl),
                    state=State.FAILED.value,
                    error_kind="exception" if kind is _EXCEPTION else "fail",
                    error_message=event.payload.decode("utf-8", "replace"),
                    traceback=event.traceback,
                    finished_at=at,
                )
        if changes:
            changes["next_seq"] = self.next_seq
        if last is not None:
            self.last_expiry = expiry(last, ttl)
        return self

    def fresh_row(self, key: JobKey) -> dict[str, Any]:
        """All columns of a new job row for ``key`` (after :meth:`apply_all` on a fresh change)."""
        row: dict[str, Any] = {"server": key.server, "handle": key.handle, "unique_key": key.unique}
        row.update(FRESH_COLUMNS)
        row["expires_at"] = self.last_expiry
        row.update(self.changes)
        return row

    def chunk_rows(self, job_id: int, base: int = 0) -> list[dict[str, Any]]:
        """Parameters for inserting :attr:`chunks` of job ``job_id`` (``base`` is added to seq)."""
        return [
            {
                "job_id": job_id,
                "seq": base + seq,
                "kind": kind,
                "payload": payload,
                "numerator": num,
                "denominator": den,
                "at": at,
            }
            for seq, kind, payload, num, den, at in self.chunks
        ]


class Scan:
    """What a run of events does to a job row that does not exist yet (one pass, no dicts).

    ``row`` is the new row in :data:`JOB_COLUMNS` order, ``chunks`` its chunks (seq from 0).
    ``starts`` counts the ``started`` events and ``finals`` has bit 1 set when a ``completed``
    event occurred, bit 2 when a ``failed``/``exception`` one did, bit 4 when an event set a
    lease and bit 8 when a ``heartbeat`` renewed the expiry. For a run without ``started``
    the same values are what the run changes on an *existing* row too (plus ``next_seq`` grows by
    ``len(chunks)``): see :data:`BUMP_COLUMNS`. ``expires_at`` comes from the last ``started``,
    ``heartbeat`` or final event (``ttl`` is the store's default), else, for a row the run
    creates, from its last event: a run of data and status alone leaves an existing row's expiry
    as it was. ``submitted`` is True when the run holds a ``submitted`` event, which only the
    general path (:class:`RowChange`) handles: the values here ignore it.
    """

    __slots__ = ("chunks", "finals", "row", "starts", "submitted")

    def __init__(self, key: JobKey, events: Iterable[Event], ttl: float = 0.0) -> None:
        function = b""
        state = _RUNNING
        attempt = 1
        result: bytes | None = None
        error_kind: str | None = None
        error_message: str | None = None
        traceback: str | None = None
        worker = ""
        started_at: float | None = None
        finished_at: float | None = None
        updated_at: float | None = None
        expires_at: float | None = None
        lease_until: float | None = None
        workload: bytes | None = None
        seq = 0
        starts = 0
        finals = 0
        submitted = False
        chunks: list[Chunk] = []
        event: Event | None = None
        marked = False  # a started, heartbeat or final event set expires_at
        for event in events:
            kind = event.kind
            if kind is _SUBMITTED:
                submitted = True
                continue
            at = updated_at = event.at
            if event.lease is not None:
                lease_until = at + event.lease
                finals |= 4
            if kind is _DATA:
                chunks.append((seq, "data", event.payload, None, None, at))
                seq += 1
            elif kind is _STATUS:
                chunks.append((seq, "status", None, event.numerator, event.denominator, at))
                seq += 1
            elif kind is _WARNING:
                chunks.append((seq, "warning", event.payload, None, None, at))
                seq += 1
            elif kind is _HEARTBEAT:
                finals |= 8
                event_ttl = ttl if event.ttl is None else event.ttl
                expires_at = at + event_ttl if event_ttl > 0 else None
                marked = True
            elif kind is _STARTED:
                attempt = attempt + 1 if started_at is not None else 1
                starts += 1
                function = event.function or function
                worker = event.worker
                if event.workload is not None:
                    workload = event.workload
                state = _RUNNING
                started_at = at
                finished_at = result = error_kind = error_message = traceback = None
                chunks = []
                seq = 0
                event_ttl = ttl if event.ttl is None else event.ttl
                expires_at = at + event_ttl if event_ttl > 0 else None
                marked = True
            elif kind is _COMPLETED:
                state = _COMPLETE
                result = event.payload
                finished_at = at
                finals |= 1
                event_ttl = ttl if event.ttl is None else event.ttl
                expires_at = at + event_ttl if event_ttl > 0 else None
                marked = True
            else:
                state = _FAILED
                error_kind = "exception" if kind is _EXCEPTION else "fail"
                error_message = event.payload.decode("utf-8", "replace")
                traceback = event.traceback
                finished_at = at
                finals |= 2
                event_ttl = ttl if event.ttl is None else event.ttl
                expires_at = at + event_ttl if event_ttl > 0 else None
                marked = True
        if not marked and event is not None:
            expires_at = expiry(event, ttl)
        self.row: tuple[Any, ...] = (
            key.server,
            key.handle,
            key.unique,
            function,
            state,
            attempt,
            result,
            error_kind,
            error_message,
            traceback,
            worker,
            started_at,
            finished_at,
            updated_at,
            expires_at,
            seq,
            lease_until,
            workload,
        )
        self.chunks = chunks
        self.starts = starts
        self.finals = finals
        self.submitted = submitted


def expiry(event: Event, ttl: float) -> float | None:
    """When a job whose last word was ``event`` expires (``ttl``: the store's default TTL)."""
    event_ttl = ttl if event.ttl is None else event.ttl
    return event.at + event_ttl if event_ttl > 0 else None


def _bump_columns(finals: int) -> tuple[str, ...]:
    names = ["updated_at"]
    if finals & 3:
        names.append("state")
    if finals & 1:
        names.append("result")
    if finals & 2:
        names += ["error_kind", "error_message", "traceback"]
    if finals & 3:
        names.append("finished_at")
    if finals & 11:
        names.append("expires_at")
    if finals & 4:
        names.append("lease_until")
    return tuple(names)


# finals bits (see Scan) → the columns a run without ``started`` sets on an existing row (besides
# next_seq). Data and status leave expires_at alone: the column is indexed, and rewriting it on
# every chunk would cost an index update per write; a final event or a heartbeat sets it.
BUMP_COLUMNS: dict[int, tuple[str, ...]] = {finals: _bump_columns(finals) for finals in range(16)}


def group_by_key(events: Sequence[Event]) -> list[tuple[JobKey, list[Event]]]:
    """Events grouped by job, in a fixed lock order (so two writers never deadlock on each other)."""
    if not events:
        return []
    first = events[0].key
    if all(event.key == first for event in events):
        return [(first, list(events))]
    groups: dict[JobKey, list[Event]] = {}
    for event in events:
        groups.setdefault(event.key, []).append(event)
    return sorted(groups.items(), key=lambda item: (item[0].server, item[0].handle, item[0].unique))


# the columns get_many reads, in the order build_record unpacks them
RECORD_COLUMNS = (
    "id",
    "server",
    "handle",
    "unique_key",
    "function",
    "state",
    "attempt",
    "result",
    "error_kind",
    "error_message",
    "traceback",
    "worker",
    "started_at",
    "finished_at",
    "updated_at",
    "expires_at",
    "next_seq",
    "lease_until",
    "workload",
)
EXPIRES_AT = RECORD_COLUMNS.index("expires_at")
NEXT_SEQ = RECORD_COLUMNS.index("next_seq")
CHUNK_READ_COLUMNS = ("job_id", "kind", "payload", "numerator", "denominator", "at")
_STATES = {state.value: state for state in State}


def expired(row: Sequence[Any], now: float) -> bool:
    """True when the job row (:data:`RECORD_COLUMNS`) has expired at ``now``."""
    expires_at = row[EXPIRES_AT]
    return expires_at is not None and expires_at <= now


def expired_record(row: Sequence[Any]) -> JobRecord:
    """What an expired job row reads as: its key, function, attempt and expiry, state expired."""
    return JobRecord(
        key=JobKey(row[1], bytes(row[2]), bytes(row[3])),
        function=bytes(row[4]),
        state=State.EXPIRED,
        attempt=row[6],
        expires_at=row[EXPIRES_AT],
    )


def build_record(row: Sequence[Any], chunk_rows: Iterable[Sequence[Any]]) -> JobRecord:
    """A :class:`JobRecord` from a job row (:data:`RECORD_COLUMNS`) and its chunk rows
    (:data:`CHUNK_READ_COLUMNS`) in ``seq`` order. (An expired row: :func:`expired_record`.)"""
    data: list[bytes] = []
    warnings: list[bytes] = []
    status: list[StatusPoint] = []
    for _job_id, kind, payload, numerator, denominator, at in chunk_rows:
        if kind == "data":
            data.append(bytes(payload))
        elif kind == "warning":
            warnings.append(bytes(payload))
        else:
            status.append(StatusPoint(int(numerator), int(denominator), at))
    (
        _id,
        server,
        handle,
        unique_key,
        function,
        state,
        attempt,
        result,
        error_kind,
        error_message,
        traceback,
        worker,
        started_at,
        finished_at,
        updated_at,
        expires_at,
        _next_seq,
        lease_until,
        workload,
    ) = row
    # by position: half the cost of keywords (mypy checks each against JobRecord's fields)
    return JobRecord(
        JobKey(server, bytes(handle), bytes(unique_key)),
        bytes(function),
        _STATES[state],
        attempt,
        data,
        warnings,
        status,
        None if result is None else bytes(result),
        None if error_kind is None else JobError(error_kind, error_message or "", traceback or ""),
        worker,
        started_at,
        finished_at,
        updated_at,
        expires_at,
        0,
        lease_until,
        None if workload is None else bytes(workload),
    )
