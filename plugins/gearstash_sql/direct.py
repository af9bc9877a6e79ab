"""The write statements of the common cases, as SQL text with positional parameters, per database.

These run straight on the DBAPI cursor of a write connection (see :mod:`gearstash_sql.writers`)
with a tuple of parameters: SQLAlchemy's per-statement machinery costs about as much as SQLite
itself. The less common writes (a job retried, a batch of several jobs' events) take the general
path in :mod:`gearstash_sql.store`, which compiles Core constructs (:mod:`gearstash_sql.compiled`).

Two kinds of batch have statements here (:class:`~gearstash_sql.rows.Scan` says which):

* ``new``: the batch starts with ``started``, so the job row it leaves is known whatever was there.
  ``INSERT ... ON CONFLICT DO NOTHING`` (PostgreSQL, SQLite) or a plain ``INSERT`` (MySQL/MariaDB:
  a duplicate key raises) creates it; a job that already has a row (a retried job) takes the
  general path, which also deletes the previous attempt's chunks.
* ``bump``: no ``started`` in the batch (data, status, heartbeats, the final event of a running
  job): one ``UPDATE ... SET next_seq = next_seq + n`` on the existing row (``RETURNING id,
  next_seq`` when there are chunks to number); one variant per set of columns the batch changes
  (:data:`~gearstash_sql.rows.BUMP_COLUMNS`). No row → the general path (which inserts one, unless
  the batch holds nothing but heartbeats). A batch with ``submitted`` always takes the general
  path.

A batch without chunks is one statement, run in autocommit. With chunks:

* PostgreSQL: still one statement (``WITH j AS (INSERT/UPDATE ... RETURNING id ...) INSERT INTO
  gearstash_chunks SELECT ... FROM j, unnest(...)``), in autocommit: one round trip.
* MySQL/MariaDB over PyMySQL: one multi-statement query (the write connections have
  ``CLIENT.MULTI_STATEMENTS``): ``BEGIN; INSERT job; INSERT chunks VALUES (LAST_INSERT_ID(), ...);
  COMMIT`` or ``BEGIN; UPDATE job; INSERT INTO gearstash_chunks SELECT id, next_seq - n + seq, ...
  FROM gearstash_jobs WHERE <key> (per chunk); COMMIT``: one round trip. The parameters are
  escaped by PyMySQL as for any of its queries (it always interpolates on the client).
* SQLite (and MySQL through another driver): ``BEGIN IMMEDIATE``/``BEGIN``, the job row, the
  chunks with ``executemany``, ``COMMIT``.

PostgreSQL with notifications on (the default; see :mod:`gearstash_sql.notify`): each statement
also ends in ``SELECT pg_notify(channel, payload) FROM j``, so the write wakes the job's watchers in
the same round trip (its last two parameters are the channel and payload of the job's handle). The
row count is then the number of job rows written (1 or 0).
"""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import Any

import sqlalchemy as sa

from .rows import BUMP_COLUMNS, CHUNK_COLUMNS, JOB_COLUMNS
from .schema import chunks, jobs

_PG_ARRAYS = ("integer[]", "varchar[]", "bytea[]", "bigint[]", "bigint[]", "float8[]")


class Bump:
    """The statements of one ``bump`` variant (which final events the batch holds)."""

    __slots__ = ("plain", "returning", "values")

    def __init__(self, plain: str, returning: str | None, values: Callable[[Any], Any]) -> None:
        #: the UPDATE; params: values(row) + (n, handle, server, unique) (+ channel, payload
        #: when PostgreSQL notifies)
        self.plain = plain
        #: with chunks: PostgreSQL, the whole statement (params: values(row), n, key, n, the six
        #: chunk lists (+ channel, payload)); SQLite, the UPDATE + ``RETURNING id, next_seq``;
        #: MySQL: None
        self.returning = returning
        #: row tuple → the SET values, in order
        self.values = values


class Statements:
    """The direct write statements for one database family (``sqlite``, ``postgresql``, ``mysql``)."""

    def __init__(self, dialect: sa.Dialect, family: str, *, notify: bool = False) -> None:
        self.family = family
        notify = notify and family == "postgresql"
        mark = "?" if family == "sqlite" else "%s"
        quote = dialect.identifier_preparer.quote
        table = dialect.identifier_preparer.format_table(jobs)
        chunk_table = dialect.identifier_preparer.format_table(chunks)
        columns = ", ".join(quote(name) for name in JOB_COLUMNS)
        values = ", ".join(mark for _ in JOB_COLUMNS)
        insert = f"INSERT INTO {table} ({columns}) VALUES ({values})"
        chunk_columns = ", ".join(quote(name) for name in CHUNK_COLUMNS)
        key_where = " AND ".join(f"{quote(name)} = {mark}" for name in ("handle", "server"))
        key_where += f" AND {quote('unique_key')} = {mark}"
        self.key_order = itemgetter(1, 0, 2)  # row[:3] is (server, handle, unique): WHERE order
        seq = quote("next_seq")

        if family == "postgresql":
            new = f"{insert} ON CONFLICT ON CONSTRAINT uq_gearstash_jobs_key DO NOTHING"
        elif family == "sqlite":
            new = f"{insert} ON CONFLICT (handle, server, unique_key) DO NOTHING"
        else:
            new = insert
        #: ``new`` without chunks (params: the row); rowcount 1 when the row was created
        self.new = f"WITH j AS ({new} RETURNING id) {_NOTIFY}" if notify else new
        #: the chunk rows (params: job_id, seq, kind, payload, numerator, denominator, at)
        self.insert_chunks = (
            f"INSERT INTO {chunk_table} ({chunk_columns}) VALUES "
            f"({', '.join(mark for _ in CHUNK_COLUMNS)})"
        )
        #: PostgreSQL: ``new`` with its chunks in one statement (params: the row, then the six
        #: chunk columns as lists); rowcount = the number of chunks when the row was created
        self.new_with_chunks = ""
        if family == "postgresql":
            insert_chunks = (
                f"INSERT INTO {chunk_table} ({chunk_columns}) "
                f"SELECT j.id, c.seq, c.kind, c.payload, c.numerator, c.denominator, c.at "
                f"FROM j, {_pg_unnest()}"
            )
            self.new_with_chunks = (
                f"WITH j AS ({new} RETURNING id), n AS ({insert_chunks}) {_NOTIFY}"
                if notify
                else f"WITH j AS ({new} RETURNING id) {insert_chunks}"
            )

        self.bumps: dict[int, Bump] = {}
        for finals, names in BUMP_COLUMNS.items():
            sets = ", ".join(f"{quote(name)} = {mark}" for name in names)
            update = f"UPDATE {table} SET {sets}, {seq} = {seq} + {mark} WHERE {key_where}"
            returning: str | None = None
            plain = update
            if family == "postgresql":
                bump_chunks = (
                    f"INSERT INTO {chunk_table} ({chunk_columns}) "
                    f"SELECT j.id, j.next_seq - {mark} + c.seq, c.kind, c.payload, c.numerator, "
                    f"c.denominator, c.at FROM j, {_pg_unnest()}"
                )
                if notify:
                    plain = f"WITH j AS ({update} RETURNING id) {_NOTIFY}"
                    returning = (
                        f"WITH j AS ({update} RETURNING id, next_seq), n AS ({bump_chunks}) "
                        f"{_NOTIFY}"
                    )
                else:
                    returning = f"WITH j AS ({update} RETURNING id, next_seq) {bump_chunks}"
            elif family == "sqlite":
                returning = f"{update} RETURNING id, next_seq"
            self.bumps[finals] = Bump(plain, returning, _getter(names))

        #: MySQL multi-statement parts. The chunks of the job just inserted: ``mysql_chunks``
        #: then one ``mysql_chunk_row`` per chunk (params: the chunk's values after job_id),
        #: joined by commas. A chunk of a bumped job: ``mysql_chunk_of_bump`` (params: n, the
        #: chunk's values after job_id, then handle, server, unique), one statement per chunk
        #: (not one INSERT ... SELECT of a UNION ALL: MariaDB types a UNION's columns from its
        #: literals, and silently cut a 5 MiB payload that followed an empty one).
        self.mysql_chunks = f"INSERT INTO {chunk_table} ({chunk_columns}) VALUES "
        self.mysql_chunk_row = f"(LAST_INSERT_ID(), {', '.join(mark for _ in CHUNK_COLUMNS[1:])})"
        self.mysql_chunk_of_bump = (
            f"INSERT INTO {chunk_table} ({chunk_columns}) SELECT id, {seq} - {mark} + {mark}, "
            f"{', '.join(mark for _ in CHUNK_COLUMNS[2:])} FROM {table} WHERE {key_where}"
        )


# the end of a notifying PostgreSQL statement: one notification per job row written
_NOTIFY = "SELECT pg_notify(%s, %s) FROM j"


def _getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """row → the values of ``names`` (a tuple even for one name)."""
    indexes = [JOB_COLUMNS.index(name) for name in names]
    if len(indexes) == 1:
        index = indexes[0]
        return lambda row: (row[index],)
    return itemgetter(*indexes)


def _pg_unnest() -> str:
    arrays = ", ".join(f"%s::{kind}" for kind in _PG_ARRAYS)
    return f"unnest({arrays}) AS c(seq, kind, payload, numerator, denominator, at)"


def pg_chunk_arrays(rows: list[Any]) -> list[list[Any]]:
    """The chunk tuples (seq, kind, payload, numerator, denominator, at) as six column lists."""
    return [list(column) for column in zip(*rows, strict=True)]
