""":class:`SqlStore`: the Store contract on SQLAlchemy Core (SQLite, PostgreSQL, MariaDB/MySQL).

Writes: one transaction per ``write()`` call. Each job row is locked before it changes (``SELECT ...
FOR UPDATE`` on PostgreSQL and MariaDB; SQLite writes begin with ``BEGIN IMMEDIATE``), jobs of one
call are locked in a fixed order, and a transaction that loses a race or a deadlock to another writer
is run again, so concurrent writers never lose an update. The common cases cost one statement per
job plus the chunk inserts:

* a batch that starts with ``started`` (a new job): ``INSERT ... ON CONFLICT DO NOTHING RETURNING id``
  (PostgreSQL, SQLite) or a plain ``INSERT`` (MariaDB; a duplicate key re-runs the transaction on the
  general path);
* a batch without ``started`` (data, status, the final event): ``UPDATE ... SET next_seq = next_seq +
  n ... RETURNING id, next_seq`` (PostgreSQL, SQLite);
* otherwise (a retry of a job, MariaDB): lock the row, apply the events in Python
  (:class:`~gearstash_sql.rows.RowChange`), update it.

Reads: :meth:`SqlStore.get_many` runs three queries per 500 handles (candidate keys by handle, the
chosen job rows, their chunks) in one read snapshot.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from gearstash.errors import StoreError
from gearstash.records import Event, EventKind, JobKey, JobRecord, JobRef
from gearstash.store import redact_url

from .compiled import Compiled, CompiledCache
from .engine import begin_sqlite, make_engine, parse_url, read_engine
from .failures import is_disconnect, is_retryable, to_store_error
from .rows import (
    CHUNK_COLUMNS,
    CHUNK_READ_COLUMNS,
    JOB_COLUMNS,
    RECORD_COLUMNS,
    RowChange,
    build_record,
    group_by_key,
)
from .schema import MAX_KEY_BYTES, chunks, ensure_schema, jobs

IN_CHUNK = 500  # parameters per IN list
MAX_TRIES = 8  # runs of one transaction that lost races or deadlocks
_T = TypeVar("_T")
_STARTED = EventKind.STARTED

_KEY_WHERE = sa.and_(
    jobs.c.server == sa.bindparam("k_server"),
    jobs.c.handle == sa.bindparam("k_handle"),
    jobs.c.unique_key == sa.bindparam("k_unique"),
)


class SqlStore:
    """A store in SQL tables (see :mod:`gearstash_sql.schema`). Thread-safe; shared by processes.

    Opening connects, creates the tables if missing and checks their schema version; it raises
    :class:`~gearstash.errors.StoreError` when the database cannot be reached or the tables are newer
    than this release, :class:`~gearstash.errors.ConfigError` for a URL that is not a SQL URL.
    """

    capabilities = frozenset({"shared", "persistent"})

    def __init__(self, url: str) -> None:
        self.url = redact_url(url)
        target = parse_url(url)
        self.family = target.family
        self._password = target.password
        self._closed = False
        # A private in-memory SQLite database lives on one shared connection: one user at a time.
        self._guard: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if target.memory else contextlib.nullcontext()
        )
        try:
            self._engine = make_engine(target)
        except Exception as exc:
            raise self._error(exc, "opening the store") from exc
        self._memory = target.memory
        self._pid = os.getpid()
        self._dbapi_error: type[Exception] = self._engine.dialect.loaded_dbapi.Error
        self._reader = read_engine(self._engine, self.family)
        sqlite_begin = self.family == "sqlite"
        self._begin_write = "BEGIN IMMEDIATE" if sqlite_begin else None
        self._begin_read = "BEGIN" if sqlite_begin else None
        try:
            ensure_schema(self._engine, self.url)
        except Exception as exc:
            self._engine.dispose()
            raise self._error(exc, "opening the store") from exc
        self._build_statements()  # after the first connection: the dialect knows the server now

    def __repr__(self) -> str:
        return f"SqlStore({self.url!r})"

    # ------------------------------------------------------------------ statements (built once)

    def _build_statements(self) -> None:
        family = self.family
        dialect = self._engine.dialect
        insert_job: Any
        if family == "postgresql":
            insert_job = (
                postgresql.insert(jobs)
                .on_conflict_do_nothing(constraint="uq_gearstash_jobs_key")
                .returning(jobs.c.id)
            )
        elif family == "sqlite":
            insert_job = (
                sqlite.insert(jobs)
                .on_conflict_do_nothing(index_elements=["handle", "server", "unique_key"])
                .returning(jobs.c.id)
            )
        else:  # MariaDB: a duplicate raises 1062 and the transaction runs again on the locking path
            insert_job = jobs.insert()
        self._insert_job = Compiled(insert_job, dialect, JOB_COLUMNS)
        # UPDATE ... RETURNING where the database has it (not MariaDB); SET list varies by batch
        self._bump_job = (
            None
            if family == "mysql"
            else CompiledCache(
                lambda: (
                    jobs.update()
                    .where(_KEY_WHERE)
                    .values(next_seq=jobs.c.next_seq + sa.bindparam("b_n", type_=sa.Integer()))
                    .returning(jobs.c.id, jobs.c.next_seq)
                ),
                dialect,
            )
        )
        self._lock_job = Compiled(
            sa.select(
                jobs.c.id, jobs.c.attempt, jobs.c.started_at, jobs.c.function, jobs.c.next_seq
            )
            .where(_KEY_WHERE)
            .with_for_update(),
            dialect,
        )
        self._update_job = CompiledCache(
            lambda: jobs.update().where(jobs.c.id == sa.bindparam("b_id")), dialect
        )
        self._delete_chunks = Compiled(
            chunks.delete().where(chunks.c.job_id == sa.bindparam("b_id")), dialect
        )
        self._insert_chunks = Compiled(chunks.insert(), dialect, CHUNK_COLUMNS)
        # reads run through SQLAlchemy (expanding IN lists, result rows by name)
        self._find_jobs = sa.select(
            jobs.c.id, jobs.c.server, jobs.c.handle, jobs.c.unique_key
        ).where(jobs.c.handle.in_(sa.bindparam("handles", expanding=True)))
        self._load_jobs = sa.select(*(jobs.c[name] for name in RECORD_COLUMNS)).where(
            jobs.c.id.in_(sa.bindparam("ids", expanding=True))
        )
        self._load_chunks = (
            sa.select(*(chunks.c[name] for name in CHUNK_READ_COLUMNS))
            .where(chunks.c.job_id.in_(sa.bindparam("ids", expanding=True)))
            .order_by(chunks.c.job_id, chunks.c.seq)
        )

    # ------------------------------------------------------------------ Store protocol

    def write(self, events: Sequence[Event]) -> None:
        """Apply ``events`` in order in one transaction (JobRecord.apply semantics). Raises StoreError.

        A handle or unique longer than 255 bytes, or a server name longer than 255 characters, is
        refused with StoreError before anything is written.
        """
        if not events:
            return
        groups = group_by_key(events)
        for key, _ in groups:
            self._check_key(key)
        with self._guard:
            self._write_transaction(lambda cursor, first: self._write_groups(cursor, groups, first))

    def get_many(self, refs: Sequence[JobRef]) -> list[JobRecord | None]:
        """The newest record matching each reference, in order (None if none). Raises StoreError."""
        if not refs:
            return []
        handles = list({ref.handle for ref in refs if len(ref.handle) <= MAX_KEY_BYTES})
        with self._guard:
            candidates, rows, chunk_rows = self._read_transaction(
                lambda conn: self._read(conn, refs, handles)
            )
        records: dict[int, JobRecord] = {}
        out: list[JobRecord | None] = []
        for job_id in candidates:
            row = None if job_id is None else rows.get(job_id)
            if job_id is None or row is None:
                out.append(None)
            elif job_id in records:
                out.append(records[job_id].copy())
            else:
                record = records[job_id] = build_record(row, chunk_rows.get(job_id, ()))
                out.append(record)
        return out

    def close(self) -> None:
        """Dispose of the engine's connections. Idempotent."""
        if not self._closed:
            self._closed = True
            self._engine.dispose()

    # ------------------------------------------------------------------ transactions

    def _write_transaction(self, body: Callable[[Any, bool], None]) -> None:
        """Run ``body(cursor, first_try)`` in one write transaction on a pooled DBAPI connection.

        The transaction runs again after a lost race or deadlock, and once after a dropped
        connection unless the drop happened during the commit (the outcome is then unknown).
        """
        self._check_open()
        for attempt in range(1, MAX_TRIES + 1):
            committing = False
            try:
                raw = self._engine.raw_connection()
            except Exception as exc:
                raise self._error(exc, "write") from exc
            try:
                cursor = raw.cursor()
                try:
                    if self._begin_write is not None:
                        cursor.execute(self._begin_write)
                    body(cursor, attempt == 1)
                    committing = True
                    raw.commit()
                finally:
                    cursor.close()
                return
            except BaseException as exc:
                # Never hand a connection back with the transaction open (KeyboardInterrupt too).
                disconnect = self._abandon(raw, exc)
                if not isinstance(exc, Exception):
                    raise
                if attempt < MAX_TRIES and is_retryable(exc, self.family):
                    time.sleep(random.uniform(0, 0.002 * attempt))
                    continue
                if attempt == 1 and disconnect and not committing:
                    continue  # a fresh connection from the refreshed pool
                raise self._error(exc, "write") from exc
            finally:
                raw.close()
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.url}: the store is closed")
        if self._pid != os.getpid() and not self._memory:
            # Forked since the last use: the pooled connections belong to the parent. Forget them
            # (without closing: that would close the parent's sockets) and connect afresh.
            self._engine.dispose(close=False)
            self._pid = os.getpid()

    def _abandon(self, raw: Any, exc: BaseException) -> bool:
        """Roll back after ``exc``; drop the connection (and the pool) if it died. True if it did."""
        disconnect = isinstance(exc, self._dbapi_error) and self._engine.dialect.is_disconnect(
            exc,  # type: ignore[arg-type]  # a DBAPI Error (PEP 249 has no common base type)
            raw.dbapi_connection,
            None,
        )
        if not disconnect:
            try:
                raw.rollback()
                return False
            except Exception:
                pass
        raw.invalidate(exc)
        if not self._memory:
            self._engine.dispose(close=False)  # its other connections are dead too
        return True

    def _read_transaction(self, body: Callable[[sa.Connection], _T]) -> _T:
        """Run ``body(conn)`` in one read snapshot, once more after a dropped connection."""
        self._check_open()
        for attempt in (1, 2):
            try:
                with self._reader.connect() as conn, conn.begin():
                    if self._begin_read is not None:
                        begin_sqlite(conn, self._begin_read)
                    return body(conn)
            except Exception as exc:
                if attempt == 1 and is_disconnect(exc):
                    continue
                raise self._error(exc, "read") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _error(self, exc: BaseException, doing: str) -> Exception:
        return to_store_error(exc, self.url, doing, self._password)

    def _check_key(self, key: JobKey) -> None:
        if len(key.handle) > MAX_KEY_BYTES or len(key.unique) > MAX_KEY_BYTES:
            raise StoreError(
                f"{self.url}: job handle or unique longer than {MAX_KEY_BYTES} bytes "
                f"(handle {len(key.handle)}, unique {len(key.unique)}): not stored"
            )
        if len(key.server) > 255:
            raise StoreError(f"{self.url}: job-server name longer than 255 characters: not stored")

    # ------------------------------------------------------------------ writing

    def _write_groups(
        self, cursor: Any, groups: list[tuple[JobKey, list[Event]]], first_try: bool
    ) -> None:
        for key, events in groups:
            if events[0].kind is _STARTED:
                # Usually a new job: insert it whole. (MariaDB: only on the first try, since a
                # duplicate there aborts the transaction; later tries take the locking path.)
                if first_try or self.family != "mysql":
                    change = RowChange().apply_all(events)
                    if self._insert(cursor, change, key):
                        continue
            elif self._bump_job is not None and not any(e.kind is _STARTED for e in events):
                change = RowChange().apply_all(events)
                if self._bump(cursor, change, key):
                    continue
            self._write_locked(cursor, key, events)

    def _insert(self, cursor: Any, change: RowChange, key: JobKey) -> bool:
        """Insert a new job row with its chunks; False if the row exists (PostgreSQL, SQLite)."""
        statement = self._insert_job
        cursor.execute(statement.sql, statement.params(change.fresh_row(key)))
        if self.family == "mysql":
            job_id = cursor.lastrowid
        else:
            rows = cursor.fetchall()
            if not rows:
                return False
            job_id = rows[0][0]
        self._append(cursor, change, job_id, 0)
        return True

    def _bump(self, cursor: Any, change: RowChange, key: JobKey) -> bool:
        """Apply a batch without ``started`` to an existing row in one UPDATE; False if no row."""
        assert self._bump_job is not None
        values = change.changes
        count = values.pop("next_seq")
        statement = self._bump_job.get(list(values))
        values.update(k_server=key.server, k_handle=key.handle, k_unique=key.unique, b_n=count)
        cursor.execute(statement.sql, statement.params(values))
        rows = cursor.fetchall()
        if not rows:
            return False
        job_id, next_seq = rows[0]
        self._append(cursor, change, job_id, next_seq - count)
        return True

    def _write_locked(self, cursor: Any, key: JobKey, events: list[Event]) -> None:
        """The general path: lock the row (or create it), apply the events in Python, update."""
        lock = self._lock_job
        params = lock.params(
            {"k_server": key.server, "k_handle": key.handle, "k_unique": key.unique}
        )
        cursor.execute(lock.sql, params)
        row = cursor.fetchone()
        if row is None:
            if self._insert(cursor, RowChange().apply_all(events), key):
                return
            cursor.execute(lock.sql, params)  # the row a concurrent writer has just created
            row = cursor.fetchone()
            if row is None:  # pragma: no cover - the conflicting row must exist
                raise StoreError(f"{self.url}: job row vanished while writing")
        job_id, attempt, started_at, function, next_seq = row
        change = RowChange(
            attempt=attempt, started_at=started_at, function=bytes(function), next_seq=next_seq
        ).apply_all(events)
        update = self._update_job.get(list(change.changes))
        cursor.execute(update.sql, update.params({**change.changes, "b_id": job_id}))
        if change.cleared:
            cursor.execute(self._delete_chunks.sql, self._delete_chunks.params({"b_id": job_id}))
        self._append(cursor, change, job_id, 0)

    def _append(self, cursor: Any, change: RowChange, job_id: int, base: int) -> None:
        if change.chunks:
            statement = self._insert_chunks
            cursor.executemany(
                statement.sql, [statement.params(r) for r in change.chunk_rows(job_id, base)]
            )

    # ------------------------------------------------------------------ reading

    def _read(
        self, conn: sa.Connection, refs: Sequence[JobRef], handles: list[bytes]
    ) -> tuple[list[int | None], dict[int, Any], dict[int, list[Any]]]:
        """Chosen job id per ref, the chosen job rows by id, their chunk rows by job id."""
        found: dict[bytes, list[tuple[int, JobKey]]] = {}
        for part in _slices(handles):
            for job_id, server, handle, unique in conn.execute(self._find_jobs, {"handles": part}):
                handle = bytes(handle)
                found.setdefault(handle, []).append((job_id, JobKey(server, handle, bytes(unique))))
        chosen: list[int | None] = []
        for ref in refs:
            best: int | None = None
            for job_id, key in found.get(ref.handle, ()):
                if (best is None or job_id > best) and ref.matches(key):
                    best = job_id
            chosen.append(best)
        ids = sorted({job_id for job_id in chosen if job_id is not None})
        rows: dict[int, Any] = {}
        chunk_rows: dict[int, list[Any]] = {}
        for id_part in _slices(ids):
            for row in conn.execute(self._load_jobs, {"ids": id_part}):
                rows[row[0]] = row
            for chunk in conn.execute(self._load_chunks, {"ids": id_part}):
                chunk_rows.setdefault(chunk[0], []).append(chunk)
        return chosen, rows, chunk_rows


def _slices(items: list[_T]) -> Iterator[list[_T]]:
    for start in range(0, len(items), IN_CHUNK):
        yield items[start : start + IN_CHUNK]
