"""The write path of :class:`~gearstash_sql.store.SqlStore` (:class:`WritePath`, a mixin).

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
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from gearstash.errors import StoreError, StoreRejected
from gearstash.model.records import Event, EventKind, JobKey

from .compiled import Compiled, CompiledCache
from .direct import Statements, pg_chunk_arrays
from .failures import is_retryable
from .notify import note
from .rows import CHUNK_COLUMNS, JOB_COLUMNS, RowChange, Scan, group_by_key
from .schema import MAX_KEY_BYTES, chunks, jobs

if TYPE_CHECKING:
    from .writers import Writer

_STARTED = EventKind.STARTED
# how write() takes a job's batch (see the module docstring)
_GENERAL, _NEW, _BUMP = 0, 1, 2
_ESCAPED_BYTES = (b"\0", b"\\", b"\n", b"\r", b"\x1a", b'"', b"'")  # PyMySQL's escapes

_KEY_WHERE = sa.and_(
    jobs.c.server == sa.bindparam("k_server"),
    jobs.c.handle == sa.bindparam("k_handle"),
    jobs.c.unique_key == sa.bindparam("k_unique"),
)


class WritePath:
    """``write()`` and what it runs; :class:`~gearstash_sql.store.SqlStore` provides the rest."""

    # set by SqlStore.__init__
    url: str
    family: str
    ttl: float
    _notify: bool
    _closed: bool
    _engine: sa.Engine
    _write_guard: contextlib.AbstractContextManager[Any]
    _direct: Statements
    _chunks_inline: bool
    _multi: bool
    _one_trip: bool
    _max_packet: int | None
    _purge_countdown: int
    # set by _build_statements
    _insert_job: Compiled
    _lock_job: Compiled
    _update_job: CompiledCache
    _delete_chunks: Compiled
    _insert_chunks: Compiled

    if TYPE_CHECKING:  # SqlStore's and Removal's methods

        def _writer(self) -> Writer: ...
        def _failed(self, writer: Writer, exc: BaseException, *, in_transaction: bool) -> bool: ...
        def _transaction(self, body: Callable[[Any, bool], None], doing: str = "write") -> None: ...
        def _error(self, exc: BaseException, doing: str) -> Exception: ...
        def _closed_error(self) -> StoreError: ...
        def _purge_due(self) -> None: ...

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

    def _check_key(self, key: JobKey) -> None:
        if len(key.handle) > MAX_KEY_BYTES or len(key.unique) > MAX_KEY_BYTES:
            raise StoreRejected(
                f"{self.url}: job handle or unique longer than {MAX_KEY_BYTES} bytes "
                f"(handle {len(key.handle)}, unique {len(key.unique)}): not stored"
            )
        if len(key.server) > 255:
            raise StoreRejected(
                f"{self.url}: job-server name longer than 255 characters: not stored"
            )
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
        size = sum(
            len(e.payload) + len(e.function) + len(e.traceback) + len(e.workload or b"")
            for e in events
        )
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
            sent += sum(
                e.payload.count(c) + (e.workload or b"").count(c)
                for e in events
                for c in _ESCAPED_BYTES
            )
        if sent > limit:
            raise StoreRejected(
                f"{self.url}: a write of {size} bytes of payload does not fit the server's "
                f"max_allowed_packet limit of {self._max_packet} bytes (raise it on the server): "
                f"not stored"
            )


def _mode(first: Event, scan: Scan) -> int:
    """How write() takes one job's batch: ``new`` when it starts with ``started``, ``bump`` when
    it has none; anything else (a later ``started``, a ``submitted``) the general path."""
    if scan.submitted:
        return _GENERAL
    if first.kind is _STARTED:
        return _NEW
    return _GENERAL if scan.starts else _BUMP


def _duplicate(exc: BaseException) -> bool:
    """A MySQL/MariaDB duplicate-key error (1062)."""
    args: tuple[Any, ...] = getattr(exc, "args", ())
    return bool(args) and args[0] == 1062
