""":class:`SqlStore`: the Store contract on SQLAlchemy Core (SQLite, PostgreSQL, MariaDB/MySQL).

Writes: one transaction per ``write()`` call, on a connection the thread keeps
(:mod:`gearstash_sql.writers`). The common batches of one job are one statement (two to four with
chunks outside PostgreSQL), run straight on the DBAPI cursor (:mod:`gearstash_sql.direct`):

* the batch starts with ``started`` (a new job): ``INSERT ... ON CONFLICT DO NOTHING`` (a plain
  ``INSERT`` on MariaDB), then the chunks;
* no ``started`` in the batch (data, status, the final event of a running job): ``UPDATE ... SET
  next_seq = next_seq + n`` (``RETURNING id, next_seq``), then the chunks.

A single statement runs in autocommit; several run between ``BEGIN`` (SQLite: ``BEGIN
IMMEDIATE``) and ``COMMIT``. Anything else (a job run again, so its row exists; events of a job with
no row yet; one call with several jobs' events) takes the general path in a transaction: lock the
job row (``SELECT ... FOR UPDATE`` on PostgreSQL and MariaDB; SQLite's ``BEGIN IMMEDIATE`` already
holds the database), apply the events in Python (:class:`~gearstash_sql.rows.RowChange`), update
it. Jobs of one call are locked in a fixed order, and a transaction that loses a race or a deadlock
to another writer is run again, so concurrent writers never lose an update.

Reads: :meth:`SqlStore.get_many` runs three queries per 500 handles (candidate keys by handle, the
chosen job rows, their chunks) in one read snapshot, on the engine's pooled connections.
"""

from __future__ import annotations

import contextlib
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
from .direct import Statements, pg_chunk_arrays
from .engine import begin_sqlite, make_engine, multi_statements, parse_url, read_engine
from .failures import is_disconnect, is_retryable, to_store_error
from .rows import (
    CHUNK_COLUMNS,
    CHUNK_READ_COLUMNS,
    JOB_COLUMNS,
    RECORD_COLUMNS,
    RowChange,
    Scan,
    build_record,
    group_by_key,
)
from .schema import MAX_KEY_BYTES, chunks, ensure_schema, jobs
from .writers import Writer, Writers, WritersClosed, forks, on_fork, orphan

IN_CHUNK = 500  # parameters per IN list
MAX_TRIES = 8  # runs of one transaction that lost races or deadlocks
_T = TypeVar("_T")
_STARTED = EventKind.STARTED
# how write() takes a job's batch (see the module docstring)
_GENERAL, _NEW, _BUMP = 0, 1, 2

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

    Each thread that writes keeps a connection of its own (SQLite: the store keeps one, which its
    threads take in turn); :meth:`close` closes them all, and a thread's closes when the thread
    ends. After :meth:`close`, ``write`` and ``get_many`` raise StoreError.
    """

    capabilities = frozenset({"shared", "persistent"})

    def __init__(self, url: str) -> None:
        self.url = redact_url(url)
        target = parse_url(url)
        self.family = target.family
        self._password = target.password
        self._closed = False
        self._memory = target.memory
        self._make_locks()
        on_fork(self)
        self._write_engine: sa.Engine | None = None
        try:
            self._engine = make_engine(target)
            if not target.memory:
                self._write_engine = make_engine(target, pooled=False)
        except Exception as exc:
            raise self._error(exc, "opening the store") from exc
        self._forks = forks()
        dialect = self._engine.dialect
        self._dbapi_error: type[Exception] = dialect.loaded_dbapi.Error
        self._reader = read_engine(self._engine, self.family)
        sqlite_begin = self.family == "sqlite"
        self._begin_write = "BEGIN IMMEDIATE" if sqlite_begin else "BEGIN"
        self._begin_read = "BEGIN" if sqlite_begin else None
        try:
            ensure_schema(self._engine, self.url)
        except Exception as exc:
            self._engine.dispose()
            raise self._error(exc, "opening the store") from exc
        self._build_statements()  # after the first connection: the dialect knows the server now
        self._direct = Statements(dialect, self.family)
        # PostgreSQL puts a job's chunks in the same statement as its row; MySQL over PyMySQL
        # sends the row, the chunks and BEGIN/COMMIT in one query (see direct.py)
        self._chunks_inline = self.family == "postgresql"
        self._multi = multi_statements(target)
        self._one_trip = self._chunks_inline or self._multi
        self._writers = Writers(self._connect_writer, shared=self.family == "sqlite")

    def __repr__(self) -> str:
        return f"SqlStore({self.url!r})"

    def _make_locks(self) -> None:
        # A private in-memory SQLite database lives on one shared connection: one user at a time.
        self._guard: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if self._memory else contextlib.nullcontext()
        )
        # SQLite runs one writer at a time: this process's threads queue here rather than in
        # SQLite's busy handler, which sleeps a millisecond or more between tries (measured with
        # 4-8 threads that also wait on the network, as worker threads do: 1.5x the writes/s
        # and a tenth of the tail latency of a connection per thread without the lock).
        self._write_guard: contextlib.AbstractContextManager[Any] = (
            self._guard
            if self._memory
            else threading.Lock()
            if self.family == "sqlite"
            else contextlib.nullcontext()
        )

    def _after_fork_in_child(self) -> None:
        self._make_locks()  # a parent's thread may have held them at the fork

    # ------------------------------------------------------------------ statements (built once)

    def _build_statements(self) -> None:
        """The general path's statements (Core, compiled once) and the reads'."""
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
        else:  # MariaDB: the row is locked first, so it cannot exist (unless created since: 1062)
            insert_job = jobs.insert()
        self._insert_job = Compiled(insert_job, dialect, JOB_COLUMNS)
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
        key = events[0].key
        for event in events:
            if event.key is not key and event.key != key:
                self._write_jobs(group_by_key(events))
                return
        self._check_key(key)
        if self._closed:
            raise self._closed_error()
        scan = Scan(key, events)
        mode = _NEW if events[0].kind is _STARTED else _GENERAL if scan.starts else _BUMP
        with self._write_guard:
            if mode != _GENERAL and (self._one_trip or not scan.chunks):
                # one statement (or one MySQL query): it runs alone, in autocommit
                if self._autocommit(mode, scan):
                    return
                mode = _GENERAL  # the row was not as expected (a retried job, no row yet)
            self._transaction(
                lambda cursor, first: self._apply(
                    cursor, key, events, scan, mode if first or self.family != "mysql" else _GENERAL
                )
            )

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
        """Close every thread's write connection and the pooled read connections. Idempotent."""
        if not self._closed:
            self._closed = True
            self._after_fork()
            self._writers.close()
            self._engine.dispose()
            if self._write_engine is not None:
                self._write_engine.dispose()

    # ------------------------------------------------------------------ connections

    def _connect_writer(self) -> Writer:
        conn: Any
        if self._write_engine is None:  # in-memory SQLite: the engine's one connection
            fairy = self._engine.raw_connection()
            conn = fairy.dbapi_connection
            fairy.close()  # back to the StaticPool, which keeps it open
            return Writer(conn, owned=False, socket=None)
        fairy = self._write_engine.raw_connection()
        fairy.detach()  # ours now: SQLAlchemy neither pools nor resets it
        conn = fairy.dbapi_connection
        try:
            if self.family == "postgresql":
                conn.autocommit = True
            elif self.family == "mysql":
                conn.autocommit(True)
            return Writer(conn, owned=True, socket=None if self.family == "sqlite" else _fd(conn))
        except BaseException:
            conn.close()
            raise

    def _writer(self) -> Writer:
        """This thread's write connection. Raises StoreError (closed store, cannot connect)."""
        try:
            return self._writers.get()
        except WritersClosed:
            raise self._closed_error() from None
        except Exception as exc:
            raise self._error(exc, "write") from exc

    def _failed(self, writer: Writer, exc: BaseException, *, in_transaction: bool) -> bool:
        """Clean up ``writer`` after ``exc``: roll back, or drop it if it died. True if it died."""
        dead = isinstance(exc, self._dbapi_error) and self._engine.dialect.is_disconnect(
            exc,  # type: ignore[arg-type]  # a DBAPI Error (PEP 249 has no common base type)
            writer.conn,
            None,
        )
        if not dead and in_transaction:
            try:
                writer.conn.rollback()
            except Exception:
                dead = True
        if dead or (not isinstance(exc, Exception) and self.family != "sqlite"):
            # a network connection interrupted mid-protocol is not trusted again
            self._writers.drop(writer)
        return dead

    # ------------------------------------------------------------------ transactions

    def _autocommit(self, mode: int, scan: Scan) -> bool:
        """Run the one statement of ``scan`` on its own; False if the row was not as expected."""
        writer = self._writer()
        cursor = writer.cursor
        try:
            if self._multi and scan.chunks:
                return self._mysql_query(cursor, mode, scan)
            if mode == _NEW:
                return self._new(cursor, scan)
            return self._bump(cursor, scan)
        except BaseException as exc:
            if self._closed:
                raise self._closed_error() from exc
            if mode == _NEW and self.family == "mysql" and _duplicate(exc):
                return False  # the job has a row: nothing was written
            self._failed(writer, exc, in_transaction=False)
            if isinstance(exc, Exception) and is_retryable(exc, self.family):
                return False  # lost to another writer, nothing written: the general path
            if not isinstance(exc, Exception):
                raise
            # A dropped connection: the statement may or may not have been applied (a connection
            # the server hung up on while idle is replaced before use: see Writer.idle_ok).
            raise self._error(exc, "write") from exc

    def _transaction(self, body: Callable[[Any, bool], None]) -> None:
        """Run ``body(cursor, first_try)`` between BEGIN and COMMIT on this thread's connection.

        The transaction runs again after a lost race or deadlock, and once after a dropped
        connection unless the drop happened during the commit (the outcome is then unknown).
        """
        for attempt in range(1, MAX_TRIES + 1):
            writer = self._writer()
            cursor = writer.cursor
            committing = False
            try:
                cursor.execute(self._begin_write)
                body(cursor, attempt == 1)
                committing = True
                cursor.execute("COMMIT")
                return
            except BaseException as exc:
                # Never leave a transaction open (KeyboardInterrupt too).
                dead = self._failed(writer, exc, in_transaction=True)
                if not isinstance(exc, Exception):
                    raise
                if self._closed:
                    raise self._closed_error() from exc
                if attempt < MAX_TRIES and is_retryable(exc, self.family):
                    time.sleep(random.uniform(0, 0.002 * attempt))
                    continue
                if attempt == 1 and dead and not committing:
                    continue  # on a new connection
                raise self._error(exc, "write") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _after_fork(self) -> None:
        if self._forks != forks():
            # Forked since the last use: the pooled connections belong to the parent. Keep them
            # alive and unused (closing would end the parent's sessions, or SQLite's locks).
            if not self._memory:
                orphan(self._engine.pool)
                self._engine.dispose(close=False)
            self._forks = forks()

    def _read_transaction(self, body: Callable[[sa.Connection], _T]) -> _T:
        """Run ``body(conn)`` in one read snapshot, once more after a dropped connection."""
        if self._closed:
            raise self._closed_error()
        self._after_fork()
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

    def _closed_error(self) -> StoreError:
        return StoreError(f"{self.url}: the store is closed")

    def _check_key(self, key: JobKey) -> None:
        if len(key.handle) > MAX_KEY_BYTES or len(key.unique) > MAX_KEY_BYTES:
            raise StoreError(
                f"{self.url}: job handle or unique longer than {MAX_KEY_BYTES} bytes "
                f"(handle {len(key.handle)}, unique {len(key.unique)}): not stored"
            )
        if len(key.server) > 255:
            raise StoreError(f"{self.url}: job-server name longer than 255 characters: not stored")

    # ------------------------------------------------------------------ writing

    def _write_jobs(self, groups: list[tuple[JobKey, list[Event]]]) -> None:
        """Several jobs' events: one transaction, the jobs in lock order."""
        for key, _ in groups:
            self._check_key(key)
        if self._closed:
            raise self._closed_error()
        plans = []
        for key, events in groups:
            scan = Scan(key, events)
            mode = _NEW if events[0].kind is _STARTED else _GENERAL if scan.starts else _BUMP
            plans.append((key, events, scan, mode))
        mysql = self.family == "mysql"

        def body(cursor: Any, first: bool) -> None:
            for key, events, scan, mode in plans:
                self._apply(cursor, key, events, scan, mode if first or not mysql else _GENERAL)

        with self._write_guard:
            self._transaction(body)

    def _apply(
        self, cursor: Any, key: JobKey, events: Sequence[Event], scan: Scan, mode: int
    ) -> None:
        """Write one job's events inside a transaction."""
        if mode == _NEW:
            if self._new(cursor, scan):
                return
        elif mode == _BUMP and self._bump(cursor, scan):
            return
        self._write_locked(cursor, key, events)

    def _new(self, cursor: Any, scan: Scan) -> bool:
        """Create the job row (and chunks) of a batch that starts with ``started``.

        False if the job has a row (MariaDB: raises 1062 instead).
        """
        direct = self._direct
        chunk_rows = scan.chunks
        if self._chunks_inline and chunk_rows:
            cursor.execute(direct.new_with_chunks, (*scan.row, *pg_chunk_arrays(chunk_rows)))
            return bool(cursor.rowcount > 0)
        cursor.execute(direct.new, scan.row)
        if cursor.rowcount != 1:
            return False
        if chunk_rows:
            job_id = cursor.lastrowid
            cursor.executemany(direct.insert_chunks, [(job_id, *chunk) for chunk in chunk_rows])
        return True

    def _bump(self, cursor: Any, scan: Scan) -> bool:
        """Apply a batch without ``started`` to the job's row; False if there is none."""
        direct = self._direct
        bump = direct.bumps[scan.finals]
        row = scan.row
        chunk_rows = scan.chunks
        count = len(chunk_rows)
        if not count:
            cursor.execute(bump.plain, (*bump.values(row), 0, *direct.key_order(row)))
            return bool(cursor.rowcount == 1)
        if bump.returning is None:  # MySQL (no RETURNING) inside a transaction
            return False
        if self._chunks_inline:
            cursor.execute(
                bump.returning,
                (
                    *bump.values(row),
                    count,
                    *direct.key_order(row),
                    count,
                    *pg_chunk_arrays(chunk_rows),
                ),
            )
            return bool(cursor.rowcount > 0)
        cursor.execute(bump.returning, (*bump.values(row), count, *direct.key_order(row)))
        found = cursor.fetchall()
        if not found:
            return False
        job_id, next_seq = found[0]
        base = next_seq - count
        cursor.executemany(
            direct.insert_chunks,
            [(job_id, base + seq, *rest) for seq, *rest in chunk_rows],
        )
        return True

    def _mysql_query(self, cursor: Any, mode: int, scan: Scan) -> bool:
        """MySQL/MariaDB: a batch with chunks as one multi-statement query, in its own transaction.

        False if the row was not as expected (nothing was written); raises 1062 for a ``new``
        batch of a job that has a row (rolled back).
        """
        direct = self._direct
        mogrify = cursor.mogrify
        row = scan.row
        chunk_rows = scan.chunks
        parts = ["BEGIN"]
        if mode == _NEW:
            parts.append(mogrify(direct.new, row))
            parts.append(
                direct.mysql_chunks
                + ", ".join(mogrify(direct.mysql_chunk_row, chunk) for chunk in chunk_rows)
            )
        else:
            bump = direct.bumps[scan.finals]
            key = direct.key_order(row)
            count = len(chunk_rows)
            parts.append(mogrify(bump.plain, (*bump.values(row), count, *key)))
            # (a job without a row: the UPDATE matches nothing and so do these)
            parts.extend(
                mogrify(direct.mysql_chunk_of_bump, (count, *chunk, *key)) for chunk in chunk_rows
            )
        parts.append("COMMIT")
        try:
            cursor.execute(";".join(parts))  # BEGIN's result
            cursor.nextset()  # the job row's
            applied = bool(cursor.rowcount == 1)  # an UPDATE: rows matched (FOUND_ROWS)
            while cursor.nextset():
                pass
        except BaseException:
            # the statements after a failed one never ran; end the transaction BEGIN opened
            with contextlib.suppress(Exception):
                cursor.connection.rollback()
            raise
        return applied

    def _write_locked(self, cursor: Any, key: JobKey, events: Sequence[Event]) -> None:
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


def _fd(conn: Any) -> int | None:
    """The socket of a DBAPI connection (psycopg, PyMySQL), or None if it does not say."""
    try:
        if hasattr(conn, "fileno"):  # psycopg, psycopg2
            return int(conn.fileno())
        sock = getattr(conn, "_sock", None)  # PyMySQL
        return None if sock is None else int(sock.fileno())
    except Exception:
        return None


def _duplicate(exc: BaseException) -> bool:
    """A MySQL/MariaDB duplicate-key error (1062)."""
    args: tuple[Any, ...] = getattr(exc, "args", ())
    return bool(args) and args[0] == 1062


def _slices(items: list[_T]) -> Iterator[list[_T]]:
    for start in range(0, len(items), IN_CHUNK):
        yield items[start : start + IN_CHUNK]
