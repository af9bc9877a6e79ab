"""The read statements, as SQL text with positional parameters, per database.

Reads run straight on the DBAPI cursor of the thread's read connection (see
:mod:`gearstash_sql.writers`; autocommit, no BEGIN/COMMIT), like the writes: SQLAlchemy's
``Connection`` (pool checkout, a transaction, result processing) cost more than the queries.

* One reference (``fetch``, a cursor read): ONE statement, so one round trip and one consistent
  snapshot without a transaction. A CTE picks the newest matching job row (``ORDER BY id DESC
  LIMIT 1`` on the key index); the result is that row followed by its chunks (``UNION ALL``) when
  it has not expired at ``now``. A cursor read (``after > 0``) has a second CTE that finds the
  ``seq`` of the ``after``-th data chunk (once) and keeps data chunks from there on, every warning
  and status point, and no data when there is no such chunk.
* Several references: per 500 handles a query for the candidate keys (the newest matching one is
  chosen in Python, as a reference may leave out the server or the unique), and per 500 uniques
  one for the references by unique alone (an empty handle, see :class:`~gearstash.model.records.JobRef`;
  on the ``(unique_key, server)`` index), then per 500 chosen ids
  one statement of the same shape as above. Each job's row and chunks come from one statement, so
  each record is consistent; the batch is a bounded number of statements. References that name
  a whole key (handle, server and unique: what ``submit_background`` returns) skip the candidate
  query: the key is unique, so per 300 of them ONE statement of that shape finds their rows by
  a join of ``VALUES (handle, server, unique), ...`` with the key index (:meth:`Reads.exact`;
  not on MySQL, whose reads keep the two steps; SQLite scans the table for a row-value ``IN``).

MySQL/MariaDB over PyMySQL (whose connections take several statements per query, see
:mod:`gearstash_sql.direct`): MariaDB runs every ``UNION`` through a temporary table, on disk when
it has BLOB columns (~0.6 ms per read). There the job rows and the chunk rows are two SELECTs sent
as ONE query, ``START TRANSACTION READ ONLY; SELECT jobs; SELECT chunks; COMMIT`` (one round trip,
one snapshot: the read connections run REPEATABLE READ), built by :meth:`Reads.mysql_one` and
:meth:`Reads.mysql_load`.

Every row of the union has :data:`ROW_WIDTH` columns: the job columns
(:data:`~gearstash_sql.rows.RECORD_COLUMNS`) then ``seq, kind, payload, numerator, denominator,
at``. A job row has ``seq = -1`` and NULL chunk columns; a chunk row has its job's id first, NULL
job columns and ``row[JOB_WIDTH:]`` in the shape :func:`~gearstash_sql.rows.build_record` takes.
Rows come in no particular order (no ORDER BY: a sort of rows carrying payloads is left to Python,
which sorts each job's chunks by ``seq``).
"""

from __future__ import annotations

import sqlalchemy as sa

from .rows import RECORD_COLUMNS
from .schema import chunks, jobs

JOB_WIDTH = len(RECORD_COLUMNS)
STAMP_COLUMNS = ("state", "attempt", "next_seq", "updated_at", "lease_until", "expires_at")
"""The job-row columns that together change on every write that changes a record (a chunk moves
``next_seq``, a heartbeat ``lease_until``, an end ``state``, a restart ``attempt``...)."""
_CHUNK_TAIL = ("seq", "kind", "payload", "numerator", "denominator", "at")
ROW_WIDTH = JOB_WIDTH + len(_CHUNK_TAIL)


class Reads:
    """The read statements for one database family (``sqlite``, ``postgresql``, ``mysql``)."""

    def __init__(self, dialect: sa.Dialect, family: str, *, multi: bool = False) -> None:
        self.family = family
        #: MySQL over PyMySQL: two SELECTs in one query instead of a UNION
        self.multi = multi
        self.mark = mark = "?" if family == "sqlite" else "%s"
        prepare = dialect.identifier_preparer
        quote = prepare.quote
        self._jobs = job_table = prepare.format_table(jobs)
        chunk_table = prepare.format_table(chunks)
        job_columns = ", ".join(quote(name) for name in RECORD_COLUMNS)
        tail = [quote(name) for name in _CHUNK_TAIL]
        # the job row: its columns, seq = -1, NULL chunk columns
        job_part = (
            f"SELECT {', '.join(f'j.{quote(name)}' for name in RECORD_COLUMNS)}, -1 AS {tail[0]}, "
            + ", ".join(f"NULL AS {name}" for name in tail[1:])
            + " FROM j"
        )
        # its chunks while it lives (params: now)
        chunk_part = (
            "SELECT c.job_id, "
            + ", ".join("NULL" for _ in RECORD_COLUMNS[1:])
            + ", "
            + ", ".join(f"c.{name}" for name in tail)
            + f" FROM j JOIN {chunk_table} c ON c.job_id = j.id "
            f"WHERE (j.expires_at IS NULL OR j.expires_at > {mark})"
        )
        self._union = f"{job_part} UNION ALL {chunk_part}"
        self._select_jobs = f"SELECT {job_columns} FROM {job_table}"
        self._join_keys = (
            f"SELECT {', '.join(f't.{quote(name)}' for name in RECORD_COLUMNS)} FROM (VALUES "
            "{}) k JOIN "
            f"{job_table} t ON t.handle = k.column1 AND t.server = k.column2 "
            "AND t.unique_key = k.column3"
        )
        # a cursor read: the seq of the after-th data chunk (params: after); chunks kept from it
        self._cut = (
            f", k AS (SELECT c.seq FROM {chunk_table} c JOIN j ON c.job_id = j.id "
            f"WHERE c.kind = 'data' ORDER BY c.seq LIMIT 1 OFFSET {mark})"
        )
        self._after = " AND (c.kind <> 'data' OR c.seq >= (SELECT seq FROM k))"
        # the split form (multi): job rows, and chunk rows (job_id, seq, kind, ...)
        self._chunk_select = (
            f"SELECT c.job_id, {', '.join(f'c.{name}' for name in tail)} FROM j "
            f"JOIN {chunk_table} c ON c.job_id = j.id "
            f"WHERE (j.expires_at IS NULL OR j.expires_at > {mark})"
        )
        self._chunk_table = chunk_table
        self._one: dict[tuple[bool, bool, bool, bool], str] = {}
        self._mysql_one: dict[tuple[bool, bool, bool, bool], tuple[str, str]] = {}
        self._find: dict[tuple[str, int, tuple[str, ...]], str] = {}
        self._load: dict[int, str] = {}
        self._exact: dict[int, str] = {}

    def marks(self, count: int) -> str:
        return ", ".join([self.mark] * count)

    def _where(self, server: bool, unique: bool, by_unique: bool) -> str:
        mark = self.mark
        if by_unique:
            return f"unique_key = {mark}" + (f" AND server = {mark}" if server else "")
        where = f"handle = {mark}"
        if server:
            where += f" AND server = {mark}"
        if unique:
            where += f" AND unique_key = {mark}"
        return where

    def one(self, server: bool, unique: bool, after: bool, by_unique: bool = False) -> str:
        """The newest job with a handle (and ``server``, ``unique`` when given) with its chunks.

        Params: handle, [server], [unique], [after], now. ``after``: only the data chunks from
        the ``after``-th on (and every other chunk). ``by_unique``: the newest job with a unique
        under any handle instead (params: unique, [server], [after], now).
        """
        variant = (server, unique, after, by_unique)
        sql = self._one.get(variant)
        if sql is None:
            where = self._where(server, unique, by_unique)
            sql = (
                f"WITH j AS ({self._select_jobs} WHERE {where} ORDER BY id DESC LIMIT 1)"
                + (self._cut if after else "")
                + " "
                + self._union
                + (self._after if after else "")
            )
            self._one[variant] = sql
        return sql

    def mysql_one(
        self, server: bool, unique: bool, after: bool, by_unique: bool = False
    ) -> tuple[str, str]:
        """:meth:`one` as two statements: the job row (params: handle, [server], [unique]) and its
        chunks (params: [after], handle, [server], [unique], now; rows (job_id, seq, kind,
        payload, numerator, denominator, at)). ``by_unique``: as for :meth:`one`."""
        variant = (server, unique, after, by_unique)
        sql = self._mysql_one.get(variant)
        if sql is None:
            mark = self.mark
            where = self._where(server, unique, by_unique)
            cut = (
                f", (SELECT seq FROM {self._chunk_table} WHERE job_id = {self._jobs}.id "
                f"AND kind = 'data' ORDER BY seq LIMIT 1 OFFSET {mark}) AS cut"
                if after
                else ""
            )
            chunk_sql = self._chunk_select.replace(
                " FROM j ",
                f" FROM (SELECT id, expires_at{cut} FROM {self._jobs} WHERE {where} "
                "ORDER BY id DESC LIMIT 1) j ",
            )
            if after:
                chunk_sql += " AND (c.kind <> 'data' OR c.seq >= j.cut)"
            sql = self._mysql_one[variant] = (
                f"{self._select_jobs} WHERE {where} ORDER BY id DESC LIMIT 1",
                chunk_sql,
            )
        return sql

    def mysql_load(self, count: int) -> tuple[str, str]:
        """:meth:`load` as two statements: the job rows (params: the ids), their chunks (params:
        the ids, now; rows as in :meth:`mysql_one`)."""
        where = f"WHERE id IN ({self.marks(count)})"
        return (
            f"{self._select_jobs} {where}",
            self._chunk_select.replace(
                " FROM j ", f" FROM (SELECT id, expires_at FROM {self._jobs} {where}) j "
            ),
        )

    def find(self, count: int) -> str:
        """The keys of the jobs with any of ``count`` handles: rows (id, server, handle, unique)."""
        return self._find_by("handle", count)

    def find_unique(self, count: int) -> str:
        """The keys of the jobs with any of ``count`` uniques: rows (id, server, handle, unique)."""
        return self._find_by("unique_key", count)

    def stamp_find(self, column: str, count: int) -> str:
        """Like :meth:`find` (``column`` ``handle``) or :meth:`find_unique` (``unique_key``),
        with :data:`STAMP_COLUMNS` after the key: rows (id, server, handle, unique, *stamp)."""
        return self._find_by(column, count, STAMP_COLUMNS)

    def _find_by(self, column: str, count: int, extra: tuple[str, ...] = ()) -> str:
        sql = self._find.get((column, count, extra))
        if sql is None:
            sql = self._find[(column, count, extra)] = (
                f"SELECT {', '.join(('id', 'server', 'handle', 'unique_key', *extra))} "
                f"FROM {self._jobs} WHERE {column} IN ({self.marks(count)})"
            )
        return sql

    def exact(self, count: int) -> str:
        """The job rows of ``count`` whole keys with their chunks, as :meth:`load` (params: each
        key's handle, server and unique, then now)."""
        sql = self._exact.get(count)
        if sql is None:
            keys = self._join_keys.format(", ".join([f"({self.marks(3)})"] * count))
            sql = self._exact[count] = f"WITH j AS ({keys}) {self._union}"
        return sql

    def load(self, count: int) -> str:
        """The job rows of ``count`` ids with their chunks (params: the ids, then now)."""
        sql = self._load.get(count)
        if sql is None:
            sql = self._load[count] = (
                f"WITH j AS ({self._select_jobs} WHERE id IN ({self.marks(count)})) {self._union}"
            )
        return sql
