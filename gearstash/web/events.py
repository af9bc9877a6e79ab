"""A job's Server-Sent Events: the stream of ``GET /api/jobs/{ref}/events`` and ``/t/{token}/events``.

Events, in the order the job said things (each ``data:`` is one line of JSON):

=========== =========================================================================================
``state``   ``{"state", "attempt", "worker", "function", "started_at", "finished_at", "updated_at",
            "lease_until"}`` — first, and whenever the state, attempt or worker change (``lost``
            when a running job's lease ran out; ``unknown`` while the store has no record)
``restart`` ``{"attempt"}`` — a new attempt began: chunks, warnings and status start again from 0
``status``  ``{"index", "numerator", "denominator", "at"}`` — a WORK_STATUS
``chunk``   ``{"index", "data"}`` — a WORK_DATA chunk; ``data`` is a string (UTF-8) or
            ``{"base64": …}``
``warning`` ``{"index", "data"}`` — a WORK_WARNING
``final``   the whole record as ``GET /api/jobs/{ref}`` shows it, without ``data`` (already sent)
            and ``workload``; the stream ends after it
=========== =========================================================================================

Every event's ``id`` is the cursor after it: ``ATTEMPT.CHUNKS.WARNINGS.STATUS`` (how many of each
were sent for that attempt). A browser reconnecting sends it back as ``Last-Event-ID`` (or
``?last_event_id=``) and gets only what came after — or, when a new attempt started meanwhile, a
``restart`` and the new attempt from its first chunk. Nothing is sent twice, nothing is missed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gearstash.errors import ConfigError
from gearstash.model.codec import bytes_to_json
from gearstash.model.records import JobRecord, State
from gearstash.web.codec import json_text

KEEPALIVE = 15.0  # seconds between comment lines on an idle stream


@dataclass(slots=True)
class Cursor:
    """Where a follower is: the attempt and how many chunks, warnings and status points it has."""

    attempt: int | None = None
    chunks: int = 0
    warnings: int = 0
    status: int = 0

    def __str__(self) -> str:
        attempt = self.attempt if self.attempt is not None else 0
        return f"{attempt}.{self.chunks}.{self.warnings}.{self.status}"

    @classmethod
    def parse(cls, text: str | None) -> Cursor:
        """A cursor from a ``Last-Event-ID``; a fresh one for None/empty. ConfigError if malformed."""
        if not text:
            return cls()
        parts = text.split(".")
        if len(parts) != 4 or not all(p.isdigit() and len(p) <= 12 for p in parts):
            raise ConfigError("Last-Event-ID is not an event id of this stream")
        attempt, chunks, warnings, status = (int(p) for p in parts)
        return cls(attempt, chunks, warnings, status)


def frame(event: str, data: Any, cursor: Cursor | None) -> str:
    """One SSE message (``id`` when ``cursor`` is given)."""
    head = f"id: {cursor}\n" if cursor is not None else ""
    return f"{head}event: {event}\ndata: {json_text(data)}\n\n"


def read_state(record: JobRecord | None, now: float) -> State:
    """The state a follower shows: the stored one, ``expired`` past the expiry, ``lost`` for a
    running job whose lease ran out, ``unknown`` without a record."""
    if record is None:
        return State.UNKNOWN
    if record.expires_at is not None and record.expires_at <= now:
        return State.EXPIRED
    if record.lost(now):
        return State.LOST
    return record.state


PRIVATE_FIELDS = ("ref", "handle", "server", "unique", "worker", "workload")
"""What a token view (``/t/…``: JSON, events, page) never shows: which job server and handle the
job has, its unique, the worker's host and pid, and the workload it was given. A token link is
for someone outside; it shows what the job said, not where it ran."""


def public(out: dict[str, Any]) -> dict[str, Any]:
    """``out`` without :data:`PRIVATE_FIELDS` (changed in place and returned)."""
    for name in PRIVATE_FIELDS:
        out.pop(name, None)
    return out


def final_json(record: JobRecord, state: State) -> dict[str, Any]:
    """The ``final`` event's data: the record without its chunks (and without its workload,
    which the page already has from the job's view)."""
    out = record.to_json()
    out.pop("data", None)
    out.pop("workload", None)
    out["chunks"] = len(record.data)
    out["state"] = state.value
    return out


class Follower:
    """Turns successive records of one job into SSE messages (pure: no I/O, no clock of its own).

    ``cursor`` is where the browser is (from ``Last-Event-ID``). ``private=False`` (token
    streams): the ``state`` and ``final`` messages leave out :data:`PRIVATE_FIELDS`.
    """

    def __init__(self, cursor: Cursor, *, private: bool = True) -> None:
        self.cursor = cursor
        self._clean = (lambda out: out) if private else public
        self._shown: tuple[object, ...] | None = None
        self.done = False

    def step(self, record: JobRecord | None, now: float) -> Iterator[str]:
        """The messages for this version of the record; sets :attr:`done` after ``final``."""
        cursor = self.cursor
        state = read_state(record, now)
        if record is not None and state is not State.EXPIRED:
            if cursor.attempt is not None and record.attempt != cursor.attempt:
                cursor.chunks = cursor.warnings = cursor.status = 0
                if cursor.attempt != 0:  # attempt 0 is the submission marker: no restart
                    cursor.attempt = record.attempt
                    yield frame("restart", {"attempt": record.attempt}, cursor)
            cursor.attempt = record.attempt
        shown = (state, cursor.attempt, record.worker if record else None)
        if shown != self._shown:
            self._shown = shown
            yield frame("state", self._clean(_state_json(record, state)), cursor)
        if record is None:
            return
        if state is State.EXPIRED:
            self.done = True
            yield frame("final", self._clean(final_json(record, state)), cursor)
            return
        for index in range(cursor.status, len(record.status)):
            point = record.status[index]
            cursor.status = index + 1
            data: dict[str, Any] = {
                "index": index,
                "numerator": point.numerator,
                "denominator": point.denominator,
                "at": point.at,
            }
            yield frame("status", data, cursor)
        for index in range(cursor.chunks, len(record.data)):
            cursor.chunks = index + 1
            yield frame(
                "chunk", {"index": index, "data": bytes_to_json(record.data[index])}, cursor
            )
        for index in range(cursor.warnings, len(record.warnings)):
            cursor.warnings = index + 1
            yield frame(
                "warning", {"index": index, "data": bytes_to_json(record.warnings[index])}, cursor
            )
        if state.final:
            self.done = True
            yield frame("final", self._clean(final_json(record, state)), cursor)


def _state_json(record: JobRecord | None, state: State) -> dict[str, Any]:
    if record is None:
        return {"state": state.value, "attempt": 0}
    return {
        "state": state.value,
        "attempt": record.attempt,
        "worker": record.worker,
        "function": bytes_to_json(record.function),
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "updated_at": record.updated_at,
        "lease_until": record.lease_until,
        "now": time.time(),
    }
