"""Expiry housekeeping and deletion: the SQL of ``purge`` and ``delete``, per database.

These run on the thread's write connection (:mod:`gearstash_sql.writers`), as SQL text with the
driver's own parameter marks, like the write path. A purge step first finds its work with three
reads outside any transaction (:meth:`Maintenance.plan`), then, only if there is some, does it in
one transaction (:meth:`Maintenance.apply`). It is bounded by ``limit`` rows per statement:

1. **Tombstones past their time.** ``SELECT id FROM gearstash_jobs WHERE expires_at < now -
   tombstone ORDER BY expires_at LIMIT n``, then the chunks and rows of those ids (the condition is
   checked again in the DELETEs: a job run again meanwhile has a new expiry and is left alone).
2. **Newly expired jobs.** The rows with ``purged_until < expires_at <= now`` (``ORDER BY
   expires_at LIMIT n``): their chunks are deleted and ``result``, ``error_message``,
   ``traceback`` and ``workload`` set to NULL (the bulk of the space); the row stays as a
   tombstone so that the job reads as ``expired``. ``purged_until`` (a row of
   ``gearstash_meta``, shared by every process using the tables) then moves to the last expiry
   cleaned, so a step never walks the tombstones again. Both queries are range scans of the
   ``expires_at`` index; a step with nothing to do only reads.

A row written with an expiry already older than ``purged_until`` (a TTL shorter than the delay
between the event and its write, or a host whose clock is far behind) is not cleaned early; it
still reads as ``expired`` and goes in step 1.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from .schema import chunks, jobs, meta

HORIZON_KEY = "purged_until"


class Maintenance:
    """The statements of ``purge`` and ``delete`` for one database family."""

    def __init__(self, dialect: sa.Dialect, family: str) -> None:
        self.family = family
        self.mark = mark = "?" if family == "sqlite" else "%s"
        prepare = dialect.identifier_preparer
        job_table = prepare.format_table(jobs)
        chunk_table = prepare.format_table(chunks)
        meta_table = prepare.format_table(meta)
        key = prepare.quote("key")
        self._job_table = job_table
        self._chunk_table = chunk_table
        lock = "" if family == "sqlite" else " FOR UPDATE"
        #: {marks}: the handles; rows (id, server, handle, unique_key)
        self._find = (
            f"SELECT id, server, handle, unique_key FROM {job_table} WHERE handle IN ({{marks}})"
            + lock
        )
        #: {marks}: the uniques; rows (id, server, handle, unique_key)
        self._find_unique = (
            f"SELECT id, server, handle, unique_key FROM {job_table} "
            f"WHERE unique_key IN ({{marks}})" + lock
        )
        self.read_horizon = f"SELECT value FROM {meta_table} WHERE {key} = {mark}"
        if family == "mysql":
            self.write_horizon = (
                f"INSERT INTO {meta_table} ({key}, value) VALUES ({mark}, {mark}) "
                "ON DUPLICATE KEY UPDATE value = VALUES(value)"
            )
        else:
            self.write_horizon = (
                f"INSERT INTO {meta_table} ({key}, value) VALUES ({mark}, {mark}) "
                f"ON CONFLICT ({key}) DO UPDATE SET value = excluded.value"
            )

    def marks(self, count: int) -> str:
        """``count`` parameter marks, comma-separated."""
        return ", ".join([self.mark] * count)

    # ------------------------------------------------------------------ delete

    def find(self, count: int) -> str:
        """The jobs with any of ``count`` handles (locked on PostgreSQL and MariaDB)."""
        return self._find.format(marks=self.marks(count))

    def find_unique(self, count: int) -> str:
        """The jobs with any of ``count`` uniques (locked on PostgreSQL and MariaDB)."""
        return self._find_unique.format(marks=self.marks(count))

    def delete_ids(self, cursor: Any, ids: Sequence[int]) -> int:
        """Delete the jobs ``ids`` and their chunks; returns how many job rows went."""
        marks = self.marks(len(ids))
        cursor.execute(f"DELETE FROM {self._chunk_table} WHERE job_id IN ({marks})", ids)
        cursor.execute(f"DELETE FROM {self._job_table} WHERE id IN ({marks})", ids)
        return int(cursor.rowcount)

    # ------------------------------------------------------------------ purge

    def plan(self, cursor: Any, now: float, tombstone: float, limit: int) -> Plan:
        """Find the work of one bounded purge step (see the module doc): reads only, run outside
        a transaction, so that a step with nothing to do costs three index lookups."""
        mark = self.mark
        job_table = self._job_table
        cut = now - tombstone
        cursor.execute(
            f"SELECT id FROM {job_table} WHERE expires_at < {mark} "
            f"ORDER BY expires_at LIMIT {int(limit)}",
            (cut,),
        )
        old = [row[0] for row in cursor.fetchall()]
        cursor.execute(self.read_horizon, (HORIZON_KEY,))
        found = cursor.fetchall()
        horizon: float | None = None
        if found:
            try:
                horizon = float(found[0][0])
            except ValueError:
                horizon = None
        since = "" if horizon is None else f"expires_at > {mark} AND "
        cursor.execute(
            f"SELECT id, expires_at FROM {job_table} WHERE {since}expires_at <= {mark} "
            f"ORDER BY expires_at LIMIT {int(limit)}",
            (now,) if horizon is None else (horizon, now),
        )
        rows = cursor.fetchall()
        full = len(rows) >= limit
        if full and rows[0][1] != rows[-1][1]:
            # the last expiry may have more rows than fit: leave them all for the next step
            last = rows[-1][1]
            rows = [row for row in rows if row[1] != last]
        return Plan(
            now=now,
            cut=cut,
            old=old,
            expired=[row[0] for row in rows],
            # Every expiry up to the last one cleaned will have been cleaned. (Not ``now``: a row
            # written a little late with an expiry just past is still found next time.)
            horizon=rows[-1][1] if rows and rows[-1][1] != horizon else None,
            more=full or len(old) >= limit,
        )

    def apply(self, cursor: Any, plan: Plan) -> tuple[int, int]:
        """Do the work of ``plan`` inside the caller's transaction: (rows deleted, rows cleaned).

        Every statement checks the expiry again: a job run again since has a new one.
        """
        mark = self.mark
        job_table = self._job_table
        chunk_table = self._chunk_table
        deleted = cleaned = 0
        if plan.old:
            marks = self.marks(len(plan.old))
            cursor.execute(
                f"DELETE FROM {chunk_table} WHERE job_id IN (SELECT id FROM {job_table} "
                f"WHERE id IN ({marks}) AND expires_at < {mark})",
                (*plan.old, plan.cut),
            )
            cursor.execute(
                f"DELETE FROM {job_table} WHERE id IN ({marks}) AND expires_at < {mark}",
                (*plan.old, plan.cut),
            )
            deleted = max(int(cursor.rowcount), 0)
        if plan.expired:
            marks = self.marks(len(plan.expired))
            cursor.execute(
                f"DELETE FROM {chunk_table} WHERE job_id IN (SELECT id FROM {job_table} "
                f"WHERE id IN ({marks}) AND expires_at <= {mark})",
                (*plan.expired, plan.now),
            )
            cursor.execute(
                f"UPDATE {job_table} SET result = NULL, error_message = NULL, traceback = NULL, "
                f"workload = NULL "
                f"WHERE id IN ({marks}) AND expires_at <= {mark}",
                (*plan.expired, plan.now),
            )
            cleaned = max(int(cursor.rowcount), 0)
        if plan.horizon is not None:
            cursor.execute(self.write_horizon, (HORIZON_KEY, repr(float(plan.horizon))))
        return deleted, cleaned


@dataclass(frozen=True, slots=True)
class Plan:
    """The work one purge step found (see :meth:`Maintenance.plan`)."""

    now: float
    cut: float  # rows that expired before this go
    old: list[int]  # their ids
    expired: list[int]  # ids of rows to clean
    horizon: float | None  # the new purged_until, if it moves
    more: bool  # a query hit its limit: another step has work

    @property
    def work(self) -> bool:
        """True when there is something to delete or clean."""
        return bool(self.old or self.expired)


def slices(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """``items`` in runs of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
