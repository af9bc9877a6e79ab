"""What a client shows for a job: the live :class:`Status`, the :class:`JobView`, and the rules that
merge a server's live answer with a stored record into one definite state (:func:`merge_state`).

Plain data and pure functions, no I/O; :class:`gearstash.client.client.Client` does the asking.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from gearstash.model.codec import bytes_to_json
from gearstash.model.records import JobKey, JobRecord, JobRef, State


@dataclass(frozen=True, slots=True)
class Status:
    """A job server's live answer for one job (gearmand forgets it when the job ends)."""

    known: bool
    running: bool
    numerator: int
    denominator: int
    server: str | None = None
    waiting_clients: int | None = None

    @property
    def percent(self) -> float | None:
        """``numerator/denominator`` as a percentage, or None when the denominator is 0."""
        if self.denominator <= 0:
            return None
        return 100.0 * self.numerator / self.denominator


@dataclass(slots=True)
class JobView:
    """One job as the client sees it: the merged ``state``, the live ``status`` (None when no
    server could be asked) and the stored ``record`` (None when the store has none)."""

    ref: JobRef
    state: State
    status: Status | None
    record: JobRecord | None

    @property
    def data(self) -> list[bytes]:
        """The WORK_DATA chunks in order (empty without a record)."""
        return self.record.data if self.record else []

    @property
    def result(self) -> bytes | None:
        """The WORK_COMPLETE payload, when the job completed."""
        return self.record.result if self.record else None

    @property
    def numerator(self) -> int:
        """Live numerator, else the last stored one, else 0."""
        if self.status is not None and self.status.known:
            return self.status.numerator
        if self.record and self.record.status:
            return self.record.status[-1].numerator
        return 0

    @property
    def denominator(self) -> int:
        """Live denominator, else the last stored one, else 0."""
        if self.status is not None and self.status.known:
            return self.status.denominator
        if self.record and self.record.status:
            return self.record.status[-1].denominator
        return 0

    def to_json(self) -> dict[str, Any]:
        """The stored record's JSON form (README, "Record format") plus the live status.

        Always has every key of the record format (for a job the store does not know, with empty
        values) plus ``ref``, ``state``, ``known``, ``running``, ``numerator``, ``denominator``
        and ``server_reachable``.
        """
        record = self.record
        if record is not None:
            out: dict[str, Any] = record.to_json()
        else:  # every key a record has, empty: the same shape for a job the store does not know
            key = JobKey(self.ref.server or "", self.ref.handle, self.ref.unique or b"")
            out = JobRecord(key, attempt=0).to_json()
            out.update(
                server=self.ref.server,
                unique=None if self.ref.unique is None else bytes_to_json(self.ref.unique),
                function=None,
                worker=None,
            )
        if out.get("server") is None and self.status is not None:
            out["server"] = self.status.server
        out["ref"] = str(self.ref)
        out["state"] = self.state.value
        out["known"] = bool(self.status and self.status.known)
        out["running"] = bool(self.status and self.status.running)
        out["numerator"] = self.numerator
        out["denominator"] = self.denominator
        out["server_reachable"] = self.status is not None
        return out


def merge_state(
    ref: JobRef, status: Status | None, record: JobRecord | None, now: float | None = None
) -> JobView:
    """Merge a live status and a stored record into one definite state.

    * a final record (complete/failed/expired) wins — unless the reference has no unique and the
      server says the handle is alive: then the handle was reused by a newer job and the record is
      not this job's;
    * else the server's word: running, or queued;
    * else ``lost`` when the record says running but its lease ran out (``now``, default the
      current time, is past ``lease_until``): the worker died and no worker has the job;
    * else ``lost`` when the record says queued (a client submitted it) but the server, asked,
      does not know the job (it was restarted without a persistent queue, or dropped the job);
    * else the record's stored state;
    * else ``unknown``.

    :meth:`gearstash.client.client.Client.fetch` also looks for the job under a new handle (see
    :func:`successor`) before it settles on ``lost``.
    """
    live = status is not None and status.known
    if record is not None and record.state.final:
        if live and ref.unique is None:
            record = None
        else:
            return JobView(ref, record.state, status, record)
    if live:
        assert status is not None
        return JobView(ref, State.RUNNING if status.running else State.QUEUED, status, record)
    if record is not None:
        if record.lost(time.time() if now is None else now):
            return JobView(ref, State.LOST, status, record)
        if record.state is State.QUEUED and status is not None:
            return JobView(ref, State.LOST, status, record)
        return JobView(ref, record.state, status, record)
    return JobView(ref, State.UNKNOWN, status, None)


def successor(record: JobRecord, candidate: JobRecord | None) -> bool:
    """True when ``candidate`` (the newest record with ``record``'s unique) is the same job
    replayed under a new handle: same server and unique, another handle, and begun after
    ``record`` was (its start, or for a queued record its submission).

    A persistent-queue job server replays queued jobs under new handles after a restart; this is
    how a reference taken before the restart finds its job again. Worker and client clocks are
    assumed to agree (NTP).
    """
    if candidate is None:
        return False
    old, new = record.key, candidate.key
    if new.handle == old.handle or new.server != old.server or new.unique != old.unique:
        return False
    since = record.started_at if record.started_at is not None else record.updated_at
    began = candidate.started_at if candidate.started_at is not None else candidate.updated_at
    return since is not None and began is not None and began > since


def uniqueless_twin(record: JobRecord, candidate: JobRecord | None) -> bool:
    """True when ``candidate`` is the job a submission marker ``record`` announced, as stored by
    a worker that never learnt its unique: a job server without ``GRAB_JOB_UNIQ`` (Perl's
    Gearman::Server, gearmand 0.x) assigns jobs without it. Same server and handle, an empty
    unique, begun after the marker was written."""
    if candidate is None or record.attempt != 0 or not record.key.unique:
        return False
    old, new = record.key, candidate.key
    if new.unique or new.handle != old.handle or new.server != old.server:
        return False
    since = record.updated_at if record.updated_at is not None else record.started_at
    began = candidate.started_at if candidate.started_at is not None else candidate.updated_at
    return since is not None and began is not None and began >= since
