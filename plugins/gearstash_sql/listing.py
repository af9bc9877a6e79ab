"""Listing and counting jobs in :class:`~gearstash_sql.store.SqlStore` (:class:`Listing`, a mixin).

``list_jobs()``: one ``SELECT … ORDER BY id DESC LIMIT n`` on the job rows (newest first by the
primary key; ``state = ?`` on ``ix_gearstash_jobs_state``; a handle or unique prefix as a range on
the key and unique indexes), with the last status point of each listed job from two correlated
sub-selects on the chunk primary key. The cursor is the id of the last job listed, so a job made
after the first page never shows up on a later one. ``count_by_state()``: a ``GROUP BY state``
(an index-only scan of ``ix_gearstash_jobs_state`` without other filters) less the expired rows
(a range of the expires_at index). Both read through the store's pooled engine (its read
replica's with ``?read_url=``) in autocommit; a row past ``expires_at`` reads as ``expired``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from gearstash.model.records import JobKey, State
from gearstash.store.contract import JobFilter, JobPage, JobSummary, make_cursor, read_cursor

from .schema import chunks, jobs

if TYPE_CHECKING:
    from gearstash.errors import StoreError

CURSOR_KIND = "s"
_EXPIRED = State.EXPIRED


def next_prefix(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with ``prefix`` (None when
    there is none: ``prefix`` is all ``0xff``)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _expired(now: float) -> sa.ColumnElement[bool]:
    return sa.and_(jobs.c.expires_at.is_not(None), jobs.c.expires_at <= now)


def _alive(now: float) -> sa.ColumnElement[bool]:
    return sa.or_(jobs.c.expires_at.is_(None), jobs.c.expires_at > now)


def _starts_with(column: sa.Column[Any], prefix: bytes) -> sa.ColumnElement[bool]:
    after = next_prefix(prefix)
    if after is None:
        return column >= prefix
    return sa.and_(column >= prefix, column < after)


def conditions(filter: JobFilter, now: float) -> list[sa.ColumnElement[bool]]:
    """The WHERE terms of ``filter`` at time ``now``."""
    where: list[sa.ColumnElement[bool]] = []
    if filter.states:
        alive = [s.value for s in filter.states if s is not _EXPIRED]
        terms: list[sa.ColumnElement[bool]] = []
        if alive:
            terms.append(sa.and_(jobs.c.state.in_(sorted(alive)), _alive(now)))
        if _EXPIRED in filter.states:
            terms.append(_expired(now))
        where.append(sa.or_(*terms))
    if filter.function is not None:
        where.append(jobs.c.function == filter.function)
    if filter.server is not None:
        where.append(jobs.c.server == filter.server)
    if filter.since is not None:
        where.append(jobs.c.updated_at >= filter.since)
    if filter.until is not None:
        where.append(jobs.c.updated_at < filter.until)
    if filter.prefix:
        where.append(
            sa.or_(
                _starts_with(jobs.c.handle, filter.prefix),
                _starts_with(jobs.c.unique_key, filter.prefix),
            )
        )
    return where


def _last_status(column: sa.Column[Any]) -> sa.ScalarSelect[Any]:
    return (
        sa.select(column)
        .where(chunks.c.job_id == jobs.c.id, chunks.c.kind == "status")
        .order_by(chunks.c.seq.desc())
        .limit(1)
        .scalar_subquery()
    )


_COLUMNS = (
    jobs.c.id,
    jobs.c.server,
    jobs.c.handle,
    jobs.c.unique_key,
    jobs.c.function,
    jobs.c.state,
    jobs.c.attempt,
    jobs.c.worker,
    jobs.c.started_at,
    jobs.c.finished_at,
    jobs.c.updated_at,
    jobs.c.expires_at,
    jobs.c.lease_until,
    jobs.c.error_kind,
    _last_status(chunks.c.numerator).label("numerator"),
    _last_status(chunks.c.denominator).label("denominator"),
)


def _summary(row: Any, now: float) -> JobSummary:
    expired = row.expires_at is not None and row.expires_at <= now
    return JobSummary(
        JobKey(row.server, bytes(row.handle), bytes(row.unique_key)),
        bytes(row.function),
        _EXPIRED if expired else State(row.state),
        int(row.attempt),
        row.worker,
        row.started_at,
        row.finished_at,
        row.updated_at,
        row.expires_at,
        row.lease_until,
        0 if expired or row.numerator is None else int(row.numerator),
        0 if expired or row.denominator is None else int(row.denominator),
        None if expired else row.error_kind,
    )


class Listing:
    """``list_jobs()`` and ``count_by_state()``; :class:`~gearstash_sql.store.SqlStore` provides
    the engine and the error mapping."""

    _read_engine: sa.Engine  # the replica's (?read_url=), else the store's
    _closed: bool

    if TYPE_CHECKING:  # SqlStore's methods

        def _error(self, exc: BaseException, doing: str) -> Exception: ...
        def _closed_error(self) -> StoreError: ...

    def list_jobs(self, filter: JobFilter, limit: int, cursor: str | None) -> JobPage:
        """Jobs matching ``filter``, newest first, at most ``limit`` (see
        :func:`gearstash.store.contract.list_jobs`). One statement. Raises StoreError, BadCursor."""
        before = read_cursor(CURSOR_KIND, cursor)
        now = time.time()
        where = conditions(filter, now)
        if before is not None:
            where.append(jobs.c.id < before)
        query = sa.select(*_COLUMNS).where(*where).order_by(jobs.c.id.desc()).limit(limit + 1)
        rows = self._select(query, "list jobs")
        more = len(rows) > limit
        rows = rows[:limit]
        page = [_summary(row, now) for row in rows]
        return JobPage(page, make_cursor(CURSOR_KIND, rows[-1].id) if more else None)

    def count_by_state(self, filter: JobFilter) -> dict[State, int]:
        """How many jobs match ``filter``, by state as read now.

        Without a state filter: two statements, all rows by stored state (index-only on
        ``ix_gearstash_jobs_state`` when there is no other filter) and the expired ones by
        stored state (a range of the expires_at index); the difference is the live count.
        With one: one ``GROUP BY`` over the matching rows.
        """
        now = time.time()
        where = conditions(filter, now)
        counts: dict[State, int] = {}
        if filter.states:
            gone = sa.case((_expired(now), 1), else_=0).label("gone")
            query = (
                sa.select(jobs.c.state, gone, sa.func.count().label("n"))
                .where(*where)
                .group_by(jobs.c.state, gone)
            )
            for row in self._select(query, "count jobs"):
                state = _EXPIRED if row.gone else State(row.state)
                counts[state] = counts.get(state, 0) + int(row.n)
            return counts
        by_state = sa.select(jobs.c.state, sa.func.count().label("n")).group_by(jobs.c.state)
        for row in self._select(by_state.where(*where), "count jobs"):
            counts[State(row.state)] = int(row.n)
        for row in self._select(by_state.where(*where, _expired(now)), "count jobs"):
            state = State(row.state)  # (two statements: a row made in between is not here)
            counts[state] = max(0, counts.get(state, 0) - int(row.n))
            counts[_EXPIRED] = counts.get(_EXPIRED, 0) + int(row.n)
        return counts

    def _select(self, query: sa.Select[Any], doing: str) -> list[Any]:
        if self._closed:
            raise self._closed_error()
        try:
            with self._read_engine.connect() as conn:
                return list(conn.execute(query).all())
        except Exception as exc:
            raise self._error(exc, doing) from exc
