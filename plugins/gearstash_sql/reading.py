"""The read path of :class:`~gearstash_sql.store.SqlStore` (:class:`ReadPath`, a mixin).

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

With a read replica (``?read_url=``) these reads go to the replica, and the references it answers
with no record or a record that is not final are read once more from the primary (one more
statement or batch, for those only): read-your-writes, so replication lag never makes a job look
unknown, lost or older than the primary has it (see :mod:`gearstash_sql.store`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any, TypeVar

from gearstash.errors import StoreError
from gearstash.model.records import JobKey, JobRecord, JobRef

from .reads import JOB_WIDTH, Reads
from .rows import build_record, expired, expired_record
from .schema import MAX_KEY_BYTES

IN_CHUNK = 500  # parameters per IN list
EXACT_CHUNK = 300  # whole keys (three parameters each) per statement
_T = TypeVar("_T")
_SEQ = itemgetter(0)  # a chunk row's seq (see gearstash_sql.reads)


class ReadPath:
    """``get_many()``, ``get_after()`` and what they run; :class:`~gearstash_sql.store.SqlStore`
    provides the connections."""

    # set by SqlStore.__init__
    _closed: bool
    _guard: contextlib.AbstractContextManager[Any]
    _reads: Reads
    _replica: bool  # reads go to a replica (?read_url=), then to the primary where need be

    if TYPE_CHECKING:  # SqlStore's methods

        def _reading(self, body: Callable[[Any], _T], primary: bool = False) -> _T: ...
        def _closed_error(self) -> StoreError: ...

    # ------------------------------------------------------------------ Store protocol

    def get_many(self, refs: Sequence[JobRef]) -> list[JobRecord | None]:
        """The newest record matching each reference, in order (None if none). Raises StoreError.

        One reference: one statement. More: two statements per 500 (see :mod:`gearstash_sql.reads`).
        With a replica, again from the primary for those it has no final record of.
        """
        if not refs:
            return []
        now = time.time()
        found = self._get_many(refs, now, False)
        if self._replica:
            again = [
                i for i, record in enumerate(found) if record is None or not record.state.final
            ]
            if again:
                fresh = self._get_many([refs[i] for i in again], now, True)
                for i, record in zip(again, fresh, strict=True):
                    found[i] = record
        return found

    def _get_many(
        self, refs: Sequence[JobRef], now: float, primary: bool
    ) -> list[JobRecord | None]:
        if len(refs) == 1:
            return [self._get_one(refs[0], 0, now, primary)]
        exact = not self._reads.multi  # whole keys in one statement (see gearstash_sql.reads)
        handles = list(
            {
                ref.handle
                for ref in refs
                if len(ref.handle) <= MAX_KEY_BYTES
                and not ref.by_unique
                and not (exact and _whole(ref))
            }
        )
        uniques = list(
            {
                unique_of(ref)
                for ref in refs
                if ref.by_unique and len(unique_of(ref)) <= MAX_KEY_BYTES
            }
        )
        with self._guard:
            candidates, rows, chunk_rows = self._reading(
                lambda cursor: self._read_many(cursor, refs, handles, uniques, now), primary
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
        returned are read from the database (one statement; with a replica, again from the
        primary when the replica has no final record). Raises StoreError.
        """
        after, now = max(int(after), 0), time.time()
        record = self._get_one(ref, after, now, False)
        if self._replica and (record is None or not record.state.final):
            record = self._get_one(ref, after, now, True)
        return record

    def stamps(self, refs: Sequence[JobRef]) -> list[Hashable]:
        """Per reference a change stamp of the newest job it matches (None: no job): its row id
        and :data:`~gearstash_sql.reads.STAMP_COLUMNS`, read from the job rows alone (no chunks;
        one statement per 500 handles, on the replica when there is one: its stamps move in
        commit order too). Raises StoreError."""
        if not refs:
            return []
        if self._closed:
            raise self._closed_error()
        handles = list({ref.handle for ref in refs if not ref.by_unique})
        uniques = list({unique_of(ref) for ref in refs if ref.by_unique})
        with self._guard:
            newest = self._reading(
                lambda cursor: _stamped(cursor, self._reads, refs, handles, uniques)
            )
        return [None if row is None else (row[0], *row[4:]) for row in newest]

    def _get_one(self, ref: JobRef, after: int, now: float, primary: bool) -> JobRecord | None:
        """One reference's record in one statement (``after``: a cursor read)."""
        if self._closed:
            raise self._closed_error()
        by_unique = ref.by_unique
        server, unique = ref.server, ref.unique
        params: list[Any]
        if by_unique:
            unique = unique_of(ref)
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
                ),
                primary,
            )
            row = found_jobs[0] if found_jobs else None
            chunk_rows = [item[1:] for item in found_chunks]
        else:
            sql = reads.one(server is not None, unique is not None, bool(after), by_unique)
            with self._guard:
                found = self._reading(lambda cursor: _fetch(cursor, sql, params), primary)
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
        rows: dict[int, Any] = {}
        chunk_rows: dict[int, list[Any]] = {}
        # whole keys: their rows and chunks at once (the key is unique: no candidates to choose)
        whole: dict[tuple[bytes, str | None, bytes | None], int] = {}
        if not reads.multi:
            keys = list(
                {
                    (ref.handle, ref.server, ref.unique): None
                    for ref in refs
                    if _whole(ref) and len(ref.handle) <= MAX_KEY_BYTES
                }
            )
            for key_part in _slices(keys, EXACT_CHUNK):
                params: list[Any] = [value for key in key_part for value in key]
                params.append(now)
                cursor.execute(reads.exact(len(key_part)), params)
                _take(cursor.fetchall(), rows, chunk_rows)
            for job_id, row in rows.items():
                whole[(bytes(row[2]), row[1], bytes(row[3]))] = job_id
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
            if whole and _whole(ref):
                chosen.append(whole.get((ref.handle, ref.server, ref.unique)))
                continue
            best: int | None = None
            candidates = (
                by_unique.get(unique_of(ref), ()) if ref.by_unique else found.get(ref.handle, ())
            )
            for job_id, key in candidates:
                if (best is None or job_id > best) and ref.matches(key):
                    best = job_id
            chosen.append(best)
        ids = sorted({job_id for job_id in chosen if job_id is not None and job_id not in rows})
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
            _take(cursor.fetchall(), rows, chunk_rows)
        for job_chunks in chunk_rows.values():
            job_chunks.sort(key=_SEQ)
        return chosen, rows, chunk_rows


def _stamped(
    cursor: Any, reads: Reads, refs: Sequence[JobRef], handles: list[bytes], uniques: list[bytes]
) -> list[Any]:
    """Per reference the row (id, server, handle, unique, *STAMP_COLUMNS) of the newest job it
    matches, or None: per 500 handles one query, per 500 uniques one (the references by unique
    alone). A whole reference names one row (the key is unique): found by its key."""
    found: dict[bytes, list[Any]] = {}
    by_unique: dict[bytes, list[Any]] = {}
    exact: dict[tuple[bytes, str, bytes], Any] = {}
    for column, values, index in (("handle", handles, found), ("unique_key", uniques, by_unique)):
        for part in _slices([value for value in values if len(value) <= MAX_KEY_BYTES]):
            cursor.execute(reads.stamp_find(column, len(part)), part)
            for row in cursor.fetchall():
                row_handle, row_unique = bytes(row[2]), bytes(row[3])
                exact[(row_handle, row[1], row_unique)] = row
                part_of = row_unique if index is by_unique else row_handle
                index.setdefault(part_of, []).append(row)
    chosen: list[Any] = []
    for ref in refs:
        if _whole(ref):
            chosen.append(exact.get((ref.handle, ref.server, ref.unique)))  # type: ignore[arg-type]
            continue
        best: Any = None
        candidates = by_unique.get(unique_of(ref), ()) if ref.by_unique else found.get(ref.handle, ())
        for row in candidates:
            if (best is None or row[0] > best[0]) and ref.matches(
                JobKey(row[1], bytes(row[2]), bytes(row[3]))
            ):
                best = row
        chosen.append(best)
    return chosen


def _whole(ref: JobRef) -> bool:
    """True for a reference that names a whole key (handle, server and unique)."""
    return bool(ref.handle) and ref.server is not None and ref.unique is not None


def _take(items: Sequence[Any], rows: dict[int, Any], chunk_rows: dict[int, list[Any]]) -> None:
    """Sort the rows of a union read (see gearstash_sql.reads) into job rows by id and chunk
    rows by job id."""
    for item in items:
        if item[JOB_WIDTH] < 0:
            rows[item[0]] = item[:JOB_WIDTH]
        else:
            chunk_rows.setdefault(item[0], []).append(item[JOB_WIDTH:])


def unique_of(ref: JobRef) -> bytes:
    """The unique a reference by unique alone names (as ``JobRef.matches`` reads one without)."""
    return ref.unique or b""


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


def _slices(items: list[_T], size: int = IN_CHUNK) -> Iterator[list[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
