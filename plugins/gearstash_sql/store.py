""":class:`SqlStore`: the Store contract on SQLAlchemy Core (SQLite, PostgreSQL, MariaDB/MySQL).

Writes: one transaction per ``write()`` call, on a connection the thread keeps
(:mod:`gearstash_sql.writers`). The common batches of one job are one statement (two to four with
chunks outside PostgreSQL), run straight on the DBAPI cursor (:mod:`gearstash_sql.direct`):

* the batch starts with ``started`` (a new job): ``INSERT ... ON CONFLICT DO NOTHING`` (a plain
  ``INSERT`` on MariaDB), then the chunks;
* no ``started`` in the batch (data, status, the final event of a running job): ``UPDATE ... SET
  next_seq = next_seq + n`` (``RETURNING id, next_seq``), then the chunks.

A ``heartbeat`` (``lease_until``, ``updated_at`` and the expiry) is such an ``UPDATE`` too; for a
job with no row it writes nothing. A single statement runs in autocommit; several run between
``BEGIN`` (SQLite: ``BEGIN IMMEDIATE``) and ``COMMIT``. Anything else (a job run again, so its row
exists; events of a job with no row yet; a ``submitted`` marker, which creates a ``queued`` row
only when there is none; one call with several jobs' events) takes the general path in a
transaction: lock the job row (``SELECT ... FOR UPDATE`` on PostgreSQL and MariaDB; SQLite's
``BEGIN IMMEDIATE`` already holds the database), apply the events in Python
(:class:`~gearstash_sql.rows.RowChange`), update it. Jobs of one call are locked in a fixed
order, and a transaction that loses a race or a deadlock to another writer is run again, so
concurrent writers never lose an update.

Reads run on a connection per thread (SQLite too: WAL readers take no lock and never wait for the
writer), in autocommit, straight on the DBAPI cursor (:mod:`gearstash_sql.reads`). One reference
(``get_many([ref])``, :meth:`SqlStore.get_after`) is one statement: the newest matching job row and
its chunks (a cursor read: only the data chunks from the ``after``-th on), so one round trip and
one snapshot. More references: per 500 handles a query for the candidate keys (and per 500
uniques one for the references by unique alone, whose handle is empty: the newest job with that
unique under any handle, on the ``(unique_key, server)`` index), then per 500 chosen jobs one
statement for their rows and chunks. MySQL over PyMySQL sends the job and chunk
SELECTs as one ``START TRANSACTION READ ONLY; ...; COMMIT`` query (MariaDB's UNION is slow).
A read that finds its connection dead runs once more on a new one.

Expiry. ``?ttl=SECONDS`` in the URL sets the store's default TTL (one day; ``0`` keeps jobs for
ever), ``Event.ttl`` overrides it per event. ``expires_at`` (= the event's time + TTL) is set by
``started``, ``heartbeat`` and by the final events (completed, failed, exception), and by whatever
write creates a job's row; data, warning and status writes leave it alone (it is indexed:
rewriting it on every chunk would add an index update to each). So a running job keeps the expiry
its ``started`` (or its last heartbeat) gave it and its final event sets the one it ends with; a
job without heartbeats that runs longer than its TTL reads as expired until it ends. A row whose
``expires_at`` has passed reads as state ``expired`` (key, function, attempt, expiry; no data,
result or error).

Purge, without a scheduler: every ``?purge_every=N`` writes (default 1,000; the first after a
random number up to N, so short-lived processes take their share) a store object runs one purge
step after its write (see :mod:`gearstash_sql.maintenance`): at most 1,000 expired jobs lose their
chunks and their result, error message and traceback (the row stays as a tombstone, so the job
reads as ``expired``), and at most 1,000 rows that expired more than ``?tombstone=SECONDS`` ago
(default 7 days) are deleted. A step is a few range scans of the ``expires_at`` index and one
short transaction; a failure is logged and never fails the write. :meth:`SqlStore.purge` runs
steps until nothing is left and returns how many jobs it cleaned or deleted. Expiry is decided by
the clocks of the writing and purging hosts: keep them in sync.

Push (PostgreSQL over psycopg 3): writes notify the job's channel in the same statement
(:mod:`gearstash_sql.notify`), and :meth:`SqlStore.watch` listens on a connection of its own;
``?notify=0`` turns it off. SQLite and MariaDB have no push: waiters poll.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from gearstash.errors import ConfigError, StoreError, StoreRejected
from gearstash.records import Event, EventKind, JobKey, JobRecord, JobRef
from gearstash.store import PollWatch, Watch, redact_url, ttl_from_query

from .compiled import Compiled, CompiledCache
from .direct import Statements, pg_chunk_arrays
from .engine import make_engine, multi_statements, parse_url
from .failures import is_retryable, to_store_error
from .maintenance import Maintenance, slices
from .notify import Listeners, PgWatch, note
from .reads import JOB_WIDTH, Reads
from .rows import (
    CHUNK_COLUMNS,
    JOB_COLUMNS,
    RowChange,
    Scan,
    build_record,
    expired,
    expired_record,
    group_by_key,
)
from .schema import MAX_KEY_BYTES, chunks, ensure_schema, jobs
from .writers import Writer, Writers, WritersClosed, forks, on_fork, orphan

log = logging.getLogger(__name__)

IN_CHUNK = 500  # parameters per IN list
MAX_TRIES = 8  # runs of one transaction that lost races or deadlocks
DEFAULT_TOMBSTONE = 7 * 86400.0  # seconds an expired job's row stays (reads as expired)
PURGE_EVERY = 1000  # writes per store object between two opportunistic purge steps
PURGE_LIMIT = 1000  # rows per purge statement
_T = TypeVar("_T")
_STARTED = EventKind.STARTED
_SEQ = itemgetter(0)  # a chunk row's seq (see gearstash_sql.reads)
# how write() takes a job's batch (see the module docstring)
_GENERAL, _NEW, _BUMP = 0, 1, 2
_ESCAPED_BYTES = (b"\0", b"\\", b"\n", b"\r", b"\x1a", b'"', b"'")  # PyMySQL's escapes

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

    capabilities = frozenset({"shared", "persistent", "expires", "delete"})

    def __init__(self, url: str) -> None:
        self.url = redact_url(url)
        target = parse_url(url)
        self.family = target.family
        query = parse_qs(urlsplit(url).query, keep_blank_values=True)
        #: the default TTL in seconds (``?ttl=``; 0: keep for ever)
        self.ttl = ttl_from_query(url)
        #: seconds an expired job's row stays as a tombstone (``?tombstone=``)
        self.tombstone = _number(query, "tombstone", DEFAULT_TOMBSTONE, self.url)
        #: writes between two opportunistic purge steps (``?purge_every=``; 0: never)
        self.purge_every = int(_number(query, "purge_every", PURGE_EVERY, self.url))
        self._purge_countdown = random.randint(1, self.purge_every) if self.purge_every else -1
        notify = _number(query, "notify", 1, self.url) != 0
        self._notify = (
            notify and self.family == "postgresql" and target.url.get_driver_name() in ("psycopg",)
        )
        if self._notify:
            self.capabilities = self.capabilities | {"push"}
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
        self._begin_write = "BEGIN IMMEDIATE" if self.family == "sqlite" else "BEGIN"
        try:
            ensure_schema(self._engine, self.url)
        except Exception as exc:
            self._engine.dispose()
            raise self._error(exc, "opening the store") from exc
        self._build_statements()  # after the first connection: the dialect knows the server now
        self._direct = Statements(dialect, self.family, notify=self._notify)
        self._maintenance = Maintenance(dialect, self.family)
        self._reads = Reads(dialect, self.family, multi=multi_statements(target))
        self._listeners = Listeners(self._connect_listener) if self._notify else None
        # PostgreSQL puts a job's chunks in the same statement as its row; MySQL over PyMySQL
        # sends the row, the chunks and BEGIN/COMMIT in one query (see direct.py)
        self._chunks_inline = self.family == "postgresql"
        self._max_packet: int | None = None  # MySQL/MariaDB @@max_allowed_packet, read when needed
        self._multi = multi_statements(target)
        self._one_trip = self._chunks_inline or self._multi
        self._writers = Writers(self._connect_writer, shared=self.family == "sqlite")
        # reads: a connection per thread (SQLite too: in WAL mode readers never wait for the
        # writer, nor take its lock); an in-memory database reads on its one connection
        self._readers = (
            self._writers if self._memory else Writers(self._connect_reader, shared=False)
        )

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
        """The general path's statements (Core, compiled once)."""
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
        self._check_size(events)
        if self._closed:
            raise self._closed_error()
        scan = Scan(key, events, self.ttl)
        mode = _mode(events[0], scan)
        sign = note(key.handle) if self._notify else ()
        with self._write_guard:
            # one statement (or one MySQL query) runs alone, in autocommit; False: the row was not
            # as expected (a retried job, no row yet), so the general path
            if (
                mode == _GENERAL
                or not (self._one_trip or not scan.chunks)
                or not self._autocommit(mode, scan, sign)
            ):
                if self._one_trip or not scan.chunks:
                    mode = _GENERAL
                self._transaction(
                    lambda cursor, first: self._apply(
                        cursor,
                        key,
                        events,
                        scan,
                        mode if first or self.family != "mysql" else _GENERAL,
                        sign,
                    )
                )
        self._purge_countdown -= 1
        if not self._purge_countdown:
            self._purge_due()

    def get_many(self, refs: Sequence[JobRef]) -> list[JobRecord | None]:
        """The newest record matching each reference, in order (None if none). Raises StoreError.

        One reference: one statement. More: two statements per 500 (see :mod:`gearstash_sql.reads`).
        """
        if not refs:
            return []
        now = time.time()
        if len(refs) == 1:
            return [self._get_one(refs[0], 0, now)]
        handles = list(
            {ref.handle for ref in refs if len(ref.handle) <= MAX_KEY_BYTES and not ref.by_unique}
        )
        uniques = list(
            {
                _unique_of(ref)
                for ref in refs
                if ref.by_unique and len(_unique_of(ref)) <= MAX_KEY_BYTES
            }
        )
        with self._guard:
            candidates, rows, chunk_rows = self._reading(
                lambda cursor: self._read_many(cursor, refs, handles, uniques, now)
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
                record = records[job_id] = _record(row, chunk_rows, now)
                out.append(record)
        return out

    def get_after(self, ref: JobRef, after: int) -> JobRecord | None:
        """The newest record matching ``ref`` with only its data chunks from index ``after`` on.

        ``data_offset`` is ``after``; warnings and status points come whole. Only the chunks
        returned are read from the database (one statement). Raises StoreError.
        """
        return self._get_one(ref, max(int(after), 0), time.time())

    def _get_one(self, ref: JobRef, after: int, now: float) -> JobRecord | None:
        """One reference's record in one statement (``after``: a cursor read)."""
        if self._closed:
            raise self._closed_error()
        by_unique = ref.by_unique
        server, unique = ref.server, ref.unique
        params: list[Any]
        if by_unique:
            unique = _unique_of(ref)
            params = [unique]
            if server is not None:
                params.append(server)
        else:
            params = [ref.handle]
            if server is not None:
                params.append(server)
            if unique is not None:
                params.append(unique)
        if len(params[0]) > MAX_KEY_BYTES:
            return None
        if after:
            params.append(after)
        params.append(now)
        reads = self._reads
        row: Any = None
        chunk_rows: list[Any] = []
        if reads.multi:
            job_sql, chunk_sql = reads.mysql_one(
                server is not None, unique is not None, bool(after), by_unique
            )
            key = params[: len(params) - 1 - bool(after)]
            found_jobs, found_chunks = self._reading(
                lambda cursor: _mysql_read(
                    cursor, job_sql, key, chunk_sql, [*params[len(key) : -1], *key, now]
                )
            )
            row = found_jobs[0] if found_jobs else None
            chunk_rows = [item[1:] for item in found_chunks]
        else:
            sql = reads.one(server is not None, unique is not None, bool(after), by_unique)
            with self._guard:
                found = self._reading(lambda cursor: _fetch(cursor, sql, params))
            for item in found:
                if item[JOB_WIDTH] < 0:
                    row = item[:JOB_WIDTH]
                else:
                    chunk_rows.append(item[JOB_WIDTH:])
        if row is None:
            return None
        if expired(row, now):
            return expired_record(row)
        chunk_rows.sort(key=_SEQ)
        record = _record(row, {row[0]: chunk_rows}, now)
        if after:
            record.data_offset = after
        return record

    def watch(self, refs: Sequence[JobRef]) -> Watch:
        """A subscription to writes of the jobs with ``refs``' handles.

        PostgreSQL (``push``): a :class:`~gearstash_sql.notify.PgWatch`, listening on a
        connection of its own before this returns. Elsewhere a
        :class:`~gearstash.store.PollWatch` (waits time out; callers poll). Raises StoreError.
        """
        if self._closed:
            raise self._closed_error()
        if self._listeners is None:
            return PollWatch()
        try:
            # a reference by unique alone has no handle to listen for: its waiter polls
            return PgWatch(self._listeners, {ref.handle for ref in refs if not ref.by_unique})
        except Exception as exc:
            raise self._error(exc, "watch") from exc

    def delete(self, refs: Sequence[JobRef]) -> int:
        """Delete every job each reference matches (rows and chunks); returns how many.

        One transaction. Raises StoreError.
        """
        if self._closed:
            raise self._closed_error()
        wanted: dict[bytes, list[JobRef]] = {}
        wanted_unique: dict[bytes, list[JobRef]] = {}  # references by unique alone
        for ref in refs:
            if ref.by_unique:
                if len(_unique_of(ref)) <= MAX_KEY_BYTES:
                    wanted_unique.setdefault(_unique_of(ref), []).append(ref)
            elif len(ref.handle) <= MAX_KEY_BYTES:
                wanted.setdefault(ref.handle, []).append(ref)
        if not wanted and not wanted_unique:
            return 0
        handles = sorted(wanted)
        uniques = sorted(wanted_unique)
        maintenance = self._maintenance
        removed = [0]

        def body(cursor: Any, _first: bool) -> None:
            ids: set[int] = set()
            gone: set[bytes] = set()
            for part in slices(handles, IN_CHUNK):
                cursor.execute(maintenance.find(len(part)), list(part))
                for job_id, server, handle, unique in cursor.fetchall():
                    key = JobKey(server, bytes(handle), bytes(unique))
                    if any(ref.matches(key) for ref in wanted[key.handle]):
                        ids.add(job_id)
                        gone.add(key.handle)
            for part in slices(uniques, IN_CHUNK):
                cursor.execute(maintenance.find_unique(len(part)), list(part))
                for job_id, server, handle, unique in cursor.fetchall():
                    key = JobKey(server, bytes(handle), bytes(unique))
                    if any(ref.matches(key) for ref in wanted_unique[key.unique]):
                        ids.add(job_id)
                        gone.add(key.handle)
            count = 0
            for part in slices(sorted(ids), IN_CHUNK):
                count += maintenance.delete_ids(cursor, list(part))
            if self._notify:
                for handle in sorted(gone):
                    cursor.execute("SELECT pg_notify(%s, %s)", note(handle))
            removed[0] = count

        with self._write_guard:
            self._transaction(body)
        return removed[0]

    def purge(self) -> int:
        """Purge expired jobs now (see the module doc); returns how many were cleaned or deleted.

        Runs bounded steps, each its own short transaction, until nothing is left. Raises
        StoreError.
        """
        if self._closed:
            raise self._closed_error()
        total = 0
        while True:
            deleted, cleaned, more = self._purge_step(time.time())
            total += deleted + cleaned
            if not more:
                return total

    def _purge_step(self, now: float) -> tuple[int, int, bool]:
        """One bounded purge step: (rows deleted, rows cleaned, more to do)."""
        maintenance = self._maintenance
        done = [(0, 0)]

        def body(cursor: Any, _first: bool) -> None:
            done[0] = maintenance.apply(cursor, plan)

        with self._write_guard:
            plan = self._reading_writer(
                lambda cursor: maintenance.plan(cursor, now, self.tombstone, PURGE_LIMIT), "purge"
            )
            if plan.work:
                self._transaction(body, doing="purge")
        return (*done[0], plan.more)

    def _reading_writer(self, body: Callable[[Any], _T], doing: str) -> _T:
        """Run ``body(cursor)`` (reads) on this thread's write connection, in autocommit; once
        more on a new connection if the first one was found dead."""
        for attempt in (1, 2):
            writer = self._writer()
            try:
                return body(writer.cursor)
            except Exception as exc:
                if self._closed:
                    raise self._closed_error() from exc
                dead = self._failed(writer, exc, in_transaction=False)
                if attempt == 1 and dead:
                    continue
                raise self._error(exc, doing) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _purge_due(self) -> None:
        """The opportunistic purge step of every ``purge_every``-th write; never raises."""
        self._purge_countdown = self.purge_every
        try:
            self._purge_step(time.time())
        except Exception as exc:
            log.warning("%s: purging expired jobs failed (the write was stored): %s", self, exc)

    def close(self) -> None:
        """Close every thread's write connection and the pooled read connections. Idempotent."""
        if not self._closed:
            self._closed = True
            self._after_fork()
            self._writers.close()
            self._readers.close()
            if self._listeners is not None:
                self._listeners.close()
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

    def _connect_reader(self) -> Writer:
        """A read connection: as a write connection (autocommit); MySQL: REPEATABLE READ, so the
        two SELECTs of a read (see gearstash_sql.reads) see one snapshot."""
        reader = self._connect_writer()
        if self.family == "mysql":
            try:
                reader.cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            except BaseException:
                reader.close()
                raise
        return reader

    def _connect_listener(self) -> Any:
        """A new psycopg connection of the store's own for a watch (see gearstash_sql.notify)."""
        assert self._write_engine is not None
        fairy = self._write_engine.raw_connection()
        fairy.detach()
        return fairy.dbapi_connection

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

    def _autocommit(self, mode: int, scan: Scan, sign: tuple[str, ...]) -> bool:
        """Run the one statement of ``scan`` on its own; False if the row was not as expected."""
        writer = self._writer()
        cursor = writer.cursor
        try:
            if self._multi and scan.chunks:
                return self._mysql_query(cursor, mode, scan)
            if mode == _NEW:
                return self._new(cursor, scan, sign)
            return self._bump(cursor, scan, sign)
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

    def _transaction(self, body: Callable[[Any, bool], None], doing: str = "write") -> None:
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
                raise self._error(exc, doing) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _after_fork(self) -> None:
        if self._forks != forks():
            # Forked since the last use: the pooled connections belong to the parent. Keep them
            # alive and unused (closing would end the parent's sessions, or SQLite's locks).
            if not self._memory:
                orphan(self._engine.pool)
                self._engine.dispose(close=False)
            self._forks = forks()

    def _reading(self, body: Callable[[Any], _T]) -> _T:
        """Run ``body(cursor)`` on this thread's read connection (autocommit); once more on a new
        connection if it was found dead (a read may be sent twice)."""
        if self._closed:
            raise self._closed_error()
        readers = self._readers
        for attempt in (1, 2):
            try:
                reader = readers.get()
            except WritersClosed:
                raise self._closed_error() from None
            except Exception as exc:
                raise self._error(exc, "read") from exc
            try:
                return body(reader.cursor)
            except BaseException as exc:
                if self._closed:
                    raise self._closed_error() from exc
                dead = isinstance(exc, self._dbapi_error) and self._engine.dialect.is_disconnect(
                    exc,  # type: ignore[arg-type]  # a DBAPI Error
                    reader.conn,
                    None,
                )
                if dead or (not isinstance(exc, Exception) and self.family != "sqlite"):
                    # a network connection interrupted mid-protocol is not trusted again
                    readers.drop(reader)
                if not isinstance(exc, Exception):
                    raise
                if attempt == 1 and dead:
                    continue
                raise self._error(exc, "read") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _error(self, exc: BaseException, doing: str) -> Exception:
        return to_store_error(exc, self.url, doing, self._password)

    def _closed_error(self) -> StoreError:
        return StoreError(f"{self.url}: the store is closed")

    def _check_key(self, key: JobKey) -> None:
        if len(key.handle) > MAX_KEY_BYTES or len(key.unique) > MAX_KEY_BYTES:
            raise StoreRejected(
                f"{self.url}: job handle or unique longer than {MAX_KEY_BYTES} bytes "
                f"(handle {len(key.handle)}, unique {len(key.unique)}): not stored"
            )
        if len(key.server) > 255:
            raise StoreRejected(f"{self.url}: job-server name longer than 255 characters: not stored")
        if self.family == "mysql" and key.server.endswith(" "):
            # utf8mb4_bin is a PAD SPACE collation: 's ' would land in the row of 's'
            raise StoreRejected(
                f"{self.url}: MariaDB/MySQL cannot keep a job-server name ending in a space "
                f"apart from the same name without it: not stored"
            )

    def _check_size(self, events: Sequence[Event]) -> None:
        """MySQL/MariaDB: refuse a batch that cannot fit the server's ``max_allowed_packet`` before
        sending anything (the server would drop the connection mid-write: "server has gone away").

        The bytes travel escaped in the query text (the 7 bytes PyMySQL escapes take two), so a
        batch is measured as its payloads, their escapes and 64 KiB for the rest of the query.
        """
        if self.family != "mysql":
            return
        size = sum(len(e.payload) + len(e.function) + len(e.traceback) for e in events)
        if size < 256 * 1024:
            return
        if self._max_packet is None:
            try:
                with self._engine.connect() as conn:
                    value = conn.execute(sa.text("SELECT @@max_allowed_packet")).scalar()
            except Exception as exc:
                raise self._error(exc, "write") from exc
            self._max_packet = int(value or 0)
        limit = self._max_packet - 64 * 1024
        sent = size
        if size <= limit < 2 * size:  # only then do the escapes decide
            sent += sum(e.payload.count(c) for e in events for c in _ESCAPED_BYTES)
        if sent > limit:
            raise StoreRejected(
                f"{self.url}: a write of {size} bytes of payload does not fit the server's "
                f"max_allowed_packet limit of {self._max_packet} bytes (raise it on the server): "
                f"not stored"
            )

    # ------------------------------------------------------------------ writing

    def _write_jobs(self, groups: list[tuple[JobKey, list[Event]]]) -> None:
        """Several jobs' events: one transaction, the jobs in lock order."""
        for key, _ in groups:
            self._check_key(key)
        self._check_size([e for _, events in groups for e in events])
        if self._closed:
            raise self._closed_error()
        plans = []
        for key, events in groups:
            scan = Scan(key, events, self.ttl)
            mode = _mode(events[0], scan)
            plans.append((key, events, scan, mode, note(key.handle) if self._notify else ()))
        mysql = self.family == "mysql"

        def body(cursor: Any, first: bool) -> None:
            for key, events, scan, mode, sign in plans:
                self._apply(
                    cursor, key, events, scan, mode if first or not mysql else _GENERAL, sign
                )

        with self._write_guard:
            self._transaction(body)
        self._purge_countdown -= 1
        if not self._purge_countdown:
            self._purge_due()

    def _apply(
        self,
        cursor: Any,
        key: JobKey,
        events: Sequence[Event],
        scan: Scan,
        mode: int,
        sign: tuple[str, ...],
    ) -> None:
        """Write one job's events inside a transaction (``sign``: the pg_notify parameters)."""
        if mode == _NEW:
            if self._new(cursor, scan, sign):
                return
        elif mode == _BUMP and self._bump(cursor, scan, sign):
            return
        self._write_locked(cursor, key, events)
        if sign:
            cursor.execute("SELECT pg_notify(%s, %s)", sign)

    def _new(self, cursor: Any, scan: Scan, sign: tuple[str, ...]) -> bool:
        """Create the job row (and chunks) of a batch that starts with ``started``.

        False if the job has a row (MariaDB: raises 1062 instead).
        """
        direct = self._direct
        chunk_rows = scan.chunks
        if self._chunks_inline and chunk_rows:
            cursor.execute(direct.new_with_chunks, (*scan.row, *pg_chunk_arrays(chunk_rows), *sign))
            return bool(cursor.rowcount > 0)
        cursor.execute(direct.new, scan.row + sign)
        if cursor.rowcount != 1:
            return False
        if chunk_rows:
            job_id = cursor.lastrowid
            cursor.executemany(direct.insert_chunks, [(job_id, *chunk) for chunk in chunk_rows])
        return True

    def _bump(self, cursor: Any, scan: Scan, sign: tuple[str, ...]) -> bool:
        """Apply a batch without ``started`` to the job's row; False if there is none."""
        direct = self._direct
        bump = direct.bumps[scan.finals]
        row = scan.row
        chunk_rows = scan.chunks
        count = len(chunk_rows)
        if not count:
            cursor.execute(bump.plain, (*bump.values(row), 0, *direct.key_order(row), *sign))
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
                    *sign,
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
            fresh = RowChange().apply_all(events, self.ttl)
            if not fresh.created:  # heartbeats alone never create a record
                return
            if self._insert(cursor, fresh, key):
                return
            cursor.execute(lock.sql, params)  # the row a concurrent writer has just created
            row = cursor.fetchone()
            if row is None:  # pragma: no cover - the conflicting row must exist
                raise StoreError(f"{self.url}: job row vanished while writing")
        job_id, attempt, started_at, function, next_seq = row
        change = RowChange(
            attempt=attempt,
            started_at=started_at,
            function=bytes(function),
            next_seq=next_seq,
            exists=True,
        ).apply_all(events, self.ttl)
        if not change.changes:  # submitted events of a job that has a row: nothing to do
            return
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

    def _read_many(
        self,
        cursor: Any,
        refs: Sequence[JobRef],
        handles: list[bytes],
        uniques: list[bytes],
        now: float,
    ) -> tuple[list[int | None], dict[int, Any], dict[int, list[Any]]]:
        """Chosen job id per ref, the chosen job rows by id, their chunk rows by job id (in seq
        order). Expired jobs' chunks are not read. ``uniques``: those of the references by unique
        alone."""
        reads = self._reads
        found: dict[bytes, list[tuple[int, JobKey]]] = {}
        for part in _slices(handles):
            cursor.execute(reads.find(len(part)), part)
            for job_id, server, handle, unique in cursor.fetchall():
                handle = bytes(handle)
                found.setdefault(handle, []).append((job_id, JobKey(server, handle, bytes(unique))))
        by_unique: dict[bytes, list[tuple[int, JobKey]]] = {}
        for part in _slices(uniques):
            cursor.execute(reads.find_unique(len(part)), part)
            for job_id, server, handle, unique in cursor.fetchall():
                unique = bytes(unique)
                by_unique.setdefault(unique, []).append(
                    (job_id, JobKey(server, bytes(handle), unique))
                )
        chosen: list[int | None] = []
        for ref in refs:
            best: int | None = None
            candidates = (
                by_unique.get(_unique_of(ref), ()) if ref.by_unique else found.get(ref.handle, ())
            )
            for job_id, key in candidates:
                if (best is None or job_id > best) and ref.matches(key):
                    best = job_id
            chosen.append(best)
        ids = sorted({job_id for job_id in chosen if job_id is not None})
        rows: dict[int, Any] = {}
        chunk_rows: dict[int, list[Any]] = {}
        for id_part in _slices(ids):
            if reads.multi:
                job_sql, chunk_sql = reads.mysql_load(len(id_part))
                found_jobs, found_chunks = _mysql_read(
                    cursor, job_sql, id_part, chunk_sql, [*id_part, now]
                )
                for row in found_jobs:
                    rows[row[0]] = row
                for item in found_chunks:
                    chunk_rows.setdefault(item[0], []).append(item[1:])
                continue
            cursor.execute(reads.load(len(id_part)), [*id_part, now])
            for item in cursor.fetchall():
                if item[JOB_WIDTH] < 0:
                    rows[item[0]] = item[:JOB_WIDTH]
                else:
                    chunk_rows.setdefault(item[0], []).append(item[JOB_WIDTH:])
        for job_chunks in chunk_rows.values():
            job_chunks.sort(key=_SEQ)
        return chosen, rows, chunk_rows


def _unique_of(ref: JobRef) -> bytes:
    """The unique a reference by unique alone names (as ``JobRef.matches`` reads one without)."""
    return ref.unique or b""


def _mode(first: Event, scan: Scan) -> int:
    """How write() takes one job's batch: ``new`` when it starts with ``started``, ``bump`` when
    it has none; anything else (a later ``started``, a ``submitted``) the general path."""
    if scan.submitted:
        return _GENERAL
    if first.kind is _STARTED:
        return _NEW
    return _GENERAL if scan.starts else _BUMP


def _fetch(cursor: Any, sql: str, params: Sequence[Any]) -> list[Any]:
    cursor.execute(sql, params)
    return list(cursor.fetchall())


def _mysql_read(
    cursor: Any, jobs_sql: str, jobs_params: Sequence[Any], chunks_sql: str, chunks_params: Any
) -> tuple[Sequence[Any], Sequence[Any]]:
    """MySQL over PyMySQL: two SELECTs in one read-only transaction, sent as one query."""
    mogrify = cursor.mogrify
    query = (
        f"START TRANSACTION READ ONLY;{mogrify(jobs_sql, jobs_params)};"
        f"{mogrify(chunks_sql, chunks_params)};COMMIT"
    )
    try:
        cursor.execute(query)  # START TRANSACTION's result
        cursor.nextset()
        found_jobs = cursor.fetchall()
        cursor.nextset()
        found_chunks = cursor.fetchall()
        while cursor.nextset():
            pass
    except BaseException:
        # the statements after a failed one never ran; end the transaction
        with contextlib.suppress(Exception):
            cursor.connection.rollback()
        raise
    return found_jobs, found_chunks


def _record(row: Any, chunk_rows: dict[int, list[Any]], now: float) -> JobRecord:
    if expired(row, now):
        return expired_record(row)
    return build_record(row, chunk_rows.get(row[0], ()))


def _number(query: dict[str, list[str]], name: str, default: float, url: str) -> float:
    """The non-negative number ``name`` of a store URL's query, else ``default``."""
    values = query.get(name)
    if not values:
        return default
    try:
        value = float(values[-1])
    except ValueError:
        raise ConfigError(f"{name} must be a number in {url!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"{name} must be a non-negative number in {url!r}")
    return value


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
