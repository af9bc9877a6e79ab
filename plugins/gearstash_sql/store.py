""":class:`SqlStore`: the Store contract on SQLAlchemy Core (SQLite, PostgreSQL, MariaDB/MySQL).

Writes: one transaction per ``write()`` call, on a connection the thread keeps; the common batches
of one job are one statement (:mod:`gearstash_sql.writing`, :class:`~.writing.WritePath`). Reads: a
connection per thread, in autocommit; one reference is one statement, more are a bounded number
(:mod:`gearstash_sql.reading`, :class:`~.reading.ReadPath`). ``delete()`` and ``purge()``:
:mod:`gearstash_sql.removal`. ``list_jobs()`` and ``count_by_state()``:
:mod:`gearstash_sql.listing`. This module holds the class, its connections and transactions.

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

Read replica (PostgreSQL, MariaDB/MySQL): ``?read_url=URL`` (percent-encoded, same database and
driver) sends the reads — ``get_many``, ``get_after``, ``list_jobs``, ``count_by_state`` — to a
replica; writes, deletes, purges, the schema check and watches (LISTEN runs on the primary: a hot
standby refuses it) stay on the primary. Read-your-writes: a reference the replica answers with no
record, or with a record that is not final (queued, running), is read again from the primary, so
a lagging replica never makes a job look unknown, lost or older than it is; a final record
(complete, failed, expired) is answered by the replica alone, as are listings and counts, which
may lag. The replica's password is kept out of messages like the store's.

Push (PostgreSQL over psycopg 3): writes notify the job's channel in the same statement
(:mod:`gearstash_sql.notify`), and :meth:`SqlStore.watch` listens on a connection of its own;
``?notify=0`` turns it off. SQLite has no push across hosts, but its watches see commits from
any process on the host through ``PRAGMA data_version`` (:mod:`gearstash_sql.sqlite_watch`);
MariaDB has neither: waiters poll.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import sqlalchemy as sa

from gearstash.errors import ConfigError, StoreError
from gearstash.model.records import JobRef
from gearstash.store.contract import PollWatch, Watch
from gearstash.store.urls import redact_url, ttl_from_query

from . import driver
from .direct import Statements
from .engine import make_engine, multi_statements, parse_url, read_target
from .failures import is_retryable, to_store_error
from .listing import Listing
from .maintenance import Maintenance
from .notify import Listeners, PgWatch
from .reading import ReadPath
from .reads import Reads
from .removal import Removal
from .schema import ensure_schema
from .sqlite_watch import DataVersionWatch
from .writers import Writer, Writers, WritersClosed, forks, on_fork, orphan
from .writing import WritePath

MAX_TRIES = 8  # runs of one transaction that lost races or deadlocks
DEFAULT_TOMBSTONE = 7 * 86400.0  # seconds an expired job's row stays (reads as expired)
PURGE_EVERY = 1000  # writes per store object between two opportunistic purge steps
_T = TypeVar("_T")


class SqlStore(WritePath, ReadPath, Removal, Listing):
    """A store in SQL tables (see :mod:`gearstash_sql.schema`). Thread-safe; shared by processes.

    Opening connects, creates the tables if missing and checks their schema version; it raises
    :class:`~gearstash.errors.StoreError` when the database cannot be reached or the tables are newer
    than this release, :class:`~gearstash.errors.ConfigError` for a URL that is not a SQL URL.

    Each thread that writes keeps a connection of its own (SQLite: the store keeps one, which its
    threads take in turn); :meth:`close` closes them all, and a thread's closes when the thread
    ends. After :meth:`close`, ``write`` and ``get_many`` raise StoreError.
    """

    capabilities = frozenset({"shared", "persistent", "expires", "delete", "list"})

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
        read_url = (query.get("read_url") or [""])[-1]
        replica = read_target(target, read_url) if read_url else None
        #: the read replica's redacted URL (``?read_url=``), else None
        self.read_url = redact_url(read_url) if replica is not None else None
        self._passwords = (target.password, *(() if replica is None else (replica.password,)))
        self._closed = False
        self._memory = target.memory
        self._sqlite_file = (
            str(target.url.database) if self.family == "sqlite" and not target.memory else None
        )
        self._make_locks()
        on_fork(self)
        self._write_engine: sa.Engine | None = None
        self._replica_engine: sa.Engine | None = None  # pool-less, for the replica's readers
        try:
            self._engine = make_engine(target)
            if not target.memory:
                self._write_engine = make_engine(target, pooled=False)
            # list_jobs() and count_by_state() read through this pooled engine
            self._read_engine = self._engine if replica is None else make_engine(replica)
            if replica is not None:
                self._replica_engine = make_engine(replica, pooled=False)
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
        # with a replica, _readers read there and these read the primary (read-your-writes)
        self._replica = replica is not None
        self._primary_readers = (
            Writers(self._connect_primary_reader, shared=False) if replica else self._readers
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

    def after_fork_in_child(self) -> None:
        self._make_locks()  # a parent's thread may have held them at the fork

    # ------------------------------------------------------------------ Store protocol

    # write(): gearstash_sql.writing; get_many(), get_after(): gearstash_sql.reading;
    # delete(), purge(): gearstash_sql.removal

    def watch(self, refs: Sequence[JobRef]) -> Watch:
        """A subscription to writes of the jobs with ``refs``' handles.

        PostgreSQL (``push``): a :class:`~gearstash_sql.notify.PgWatch`, listening on a
        connection of its own before this returns. A SQLite file: a
        :class:`~gearstash_sql.sqlite_watch.DataVersionWatch` (woken within ~10 ms by any commit
        to the file, from any process on the host). Elsewhere a
        :class:`~gearstash.store.contract.PollWatch` (waits time out; callers poll). Raises StoreError.
        """
        if self._closed:
            raise self._closed_error()
        if self._listeners is None:
            if self._sqlite_file is None:
                return PollWatch()
            try:
                return DataVersionWatch(self._sqlite_file)
            except Exception as exc:
                raise self._error(exc, "watch") from exc
        try:
            # a reference by unique alone has no handle to listen for: its waiter polls
            return PgWatch(self._listeners, refs=refs)
        except Exception as exc:
            raise self._error(exc, "watch") from exc

    def close(self) -> None:
        """Close every thread's write connection and the pooled read connections. Idempotent."""
        if not self._closed:
            self._closed = True
            self._after_fork()
            self._writers.close()
            self._readers.close()
            self._primary_readers.close()
            if self._listeners is not None:
                self._listeners.close()
            self._engine.dispose()
            if self._write_engine is not None:
                self._write_engine.dispose()
            if self._replica_engine is not None:
                self._read_engine.dispose()
                self._replica_engine.dispose()

    # ------------------------------------------------------------------ connections

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

    def _connect_writer(self) -> Writer:
        return self._connect(self._write_engine)

    def _connect(self, engine: sa.Engine | None) -> Writer:
        """A connection of the store's own from the pool-less ``engine`` (autocommit)."""
        conn: Any
        if engine is None:  # in-memory SQLite: the engine's one connection
            fairy = self._engine.raw_connection()
            conn = fairy.dbapi_connection
            fairy.close()  # back to the StaticPool, which keeps it open
            return Writer(conn, owned=False, socket=None)
        fairy = engine.raw_connection()
        fairy.detach()  # ours now: SQLAlchemy neither pools nor resets it
        conn = fairy.dbapi_connection
        try:
            if self.family == "postgresql":
                conn.autocommit = True
            elif self.family == "mysql":
                conn.autocommit(True)
            fd = None if self.family == "sqlite" else driver.socket_fd(conn)
            return Writer(conn, owned=True, socket=fd)
        except BaseException:
            conn.close()
            raise

    def _connect_reader(self) -> Writer:
        """A read connection (to the replica if there is one)."""
        return self._connect_read(self._replica_engine or self._write_engine)

    def _connect_primary_reader(self) -> Writer:
        """A read connection to the primary (a store with a replica: read-your-writes)."""
        return self._connect_read(self._write_engine)

    def _connect_read(self, engine: sa.Engine | None) -> Writer:
        """A read connection: as a write connection (autocommit); MySQL: REPEATABLE READ, so the
        two SELECTs of a read (see gearstash_sql.reads) see one snapshot."""
        reader = self._connect(engine)
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
                for engine in {self._engine, self._read_engine}:  # the replica's pool too
                    orphan(engine.pool)
                    engine.dispose(close=False)
            self._forks = forks()

    def _reading(self, body: Callable[[Any], _T], primary: bool = False) -> _T:
        """Run ``body(cursor)`` on this thread's read connection (autocommit) — the replica's
        if there is one, unless ``primary`` — once more on a new connection if it was found dead
        (a read may be sent twice)."""
        if self._closed:
            raise self._closed_error()
        readers = self._primary_readers if primary else self._readers
        doing = "read" if primary or not self._replica else "read from the replica"
        for attempt in (1, 2):
            try:
                reader = readers.get()
            except WritersClosed:
                raise self._closed_error() from None
            except Exception as exc:
                raise self._error(exc, doing) from exc
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
                raise self._error(exc, doing) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _error(self, exc: BaseException, doing: str) -> Exception:
        return to_store_error(exc, self.url, doing, self._passwords)

    def _closed_error(self) -> StoreError:
        return StoreError(f"{self.url}: the store is closed")


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
