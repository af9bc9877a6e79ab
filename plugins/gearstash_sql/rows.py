"""Events → column changes, and table rows → :class:`~gearstash.records.JobRecord`. No I/O.

:class:`RowChange` reproduces :meth:`JobRecord.apply <gearstash.records.JobRecord.apply>` on what a
job row needs to know (``attempt``, ``started_at``, ``function``, ``next_seq``) and collects the
columns to write and the chunks to append. Keep the two in step: the contract tests compare them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from gearstash.records import (
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
}

# every column a new job row is inserted with, and every column of a chunk row
JOB_COLUMNS = ("server", "handle", "unique_key", *FRESH_COLUMNS)
CHUNK_COLUMNS = ("job_id", "seq", "kind", "payload", "numerator", "denominator", "at")


class RowChange:
    """The effect of a run of events on one job row.

    ``changes`` maps column → new value (only columns the events set). ``chunks`` are the rows to
    append to ``gearstash_chunks``. ``cleared`` is True when a ``started`` event means the job's
    existing chunks must be deleted first. ``expires_at`` is set by ``started`` and the final
    events (their ``ttl``, else the store's ``ttl``; see :func:`expiry`), not by data or status;
    :meth:`fresh_row` gives a new row the expiry of the run's last event when none of those set it.
    """

    __slots__ = (
        "attempt",
        "changes",
        "chunks",
        "cleared",
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
    ) -> None:
        self.attempt = attempt
        self.started_at = started_at
        self.function = function
        self.next_seq = next_seq
        self.changes: dict[str, Any] = {}
        self.chunks: list[Chunk] = []
        self.cleared = False
        self.last_expiry: float | None = None

    def apply_all(self, events: Iterable[Event], ttl: float = 0.0) -> RowChange:
        """Apply ``events`` in order (``ttl``: the store's default TTL); returns self."""
        changes = self.changes
        chunks = self.chunks
        event: Event | None = None
        for event in events:
            kind = event.kind
            at = event.at
            changes["updated_at"] = at
            if kind is _DATA or kind is _WARNING:
                chunks.append((self.next_seq, kind.value, event.payload, None, None, at))
                self.next_seq += 1
            elif kind is _STATUS:
                chunks.append(
                    (self.next_seq, "status", None, event.numerator, event.denominator, at)
                )
                self.next_seq += 1
            elif kind is _STARTED:
                if self.started_at is not None:
                    self.attempt += 1
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
        changes["next_seq"] = self.next_seq
        if event is not None:
            self.last_expiry = expiry(event, ttl)
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
    event occurred and bit 2 when a ``failed``/``exception`` one did. For a run without ``started``
    the same values are what the run changes on an *existing* row too (plus ``next_seq`` grows by
    ``len(chunks)``): see :data:`BUMP_COLUMNS`. ``expires_at`` comes from the last ``started`` or
    final event (``ttl`` is the store's default), else, for a row the run creates, from its last
    event: a run of data and status alone leaves an existing row's expiry as it was.
    """

    __slots__ = ("chunks", "finals", "row", "starts")

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
        seq = 0
        starts = 0
        finals = 0
        chunks: list[Chunk] = []
        event: Event | None = None
        marked = False  # a started or final event set expires_at
        for event in events:
            kind = event.kind
            at = updated_at = event.at
            if kind is _DATA:
                chunks.append((seq, "data", event.payload, None, None, at))
                seq += 1
            elif kind is _STATUS:
                chunks.append((seq, "status", None, event.numerator, event.denominator, at))
                seq += 1
            elif kind is _WARNING:
                chunks.append((seq, "warning", event.payload, None, None, at))
                seq += 1
            elif kind is _STARTED:
                if started_at is not None:
                    attempt += 1
                starts += 1
                function = event.function or function
                worker = event.worker
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
        )
        self.chunks = chunks
        self.starts = starts
        self.finals = finals


def expiry(event: Event, ttl: float) -> float | None:
    """When a job whose last word was ``event`` expires (``ttl``: the store's default TTL)."""
    event_ttl = ttl if event.ttl is None else event.ttl
    return event.at + event_ttl if event_ttl > 0 else None


# finals bits → the columns a run without ``started`` sets on an existing row (besides next_seq).
# Data and status leave expires_at alone: the column is indexed, and rewriting it on every chunk
# would cost an index update per write; a final event sets it.
BUMP_COLUMNS: dict[int, tuple[str, ...]] = {
    0: ("updated_at",),
    1: ("updated_at", "state", "result", "finished_at", "expires_at"),
    2: (
        "updated_at",
        "state",
        "error_kind",
        "error_message",
        "traceback",
        "finished_at",
        "expires_at",
    ),
    3: (
        "updated_at",
        "state",
        "result",
        "error_kind",
        "error_message",
        "traceback",
        "finished_at",
        "expires_at",
    ),
}


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
    ) = row
    return JobRecord(
        key=JobKey(server, bytes(handle), bytes(unique_key)),
        function=bytes(function),
        state=_STATES[state],
        attempt=attempt,
        data=data,
        warnings=warnings,
        status=status,
        result=None if result is None else bytes(result),
        error=None
        if error_kind is None
        else JobError(error_kind, error_message or "", traceback or ""),
        worker=worker,
        started_at=started_at,
        finished_at=finished_at,
        updated_at=updated_at,
        expires_at=expires_at,
    )
