"""The SQL store's schema version 2: migrating version 1 tables, leases, submissions and lookups by
unique (beyond the contract suite, which ``test_store_contract`` runs on every SQL database).

Tests that build version 1 tables use a private database (a new SQLite file, PostgreSQL schema or
MariaDB database: the ``private_sql_url`` fixture of ``support.stores``).
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from support.seeds import seed
from support.stores import (
    RUN,
    T0,
    CountingCursor,
    assert_same,
    count_reads,
    ev,
    exact,
    full_job,
    get,
    new_handle,
    new_key,
    new_server,
    processes,
    raw_engine,
)

from gearstash.model.records import Event, EventKind, JobKey, JobRecord, JobRef, State
from gearstash.spine.manager import open_store
from gearstash.store.contract import Store, delete, get_after, watch

# ---------------------------------------------------------------------------------- version 1 tables

# The version 1 DDL, as gearstash 0.1 created it ({t}: the dialect's types, see _V1_TYPES).
_V1_JOBS = """CREATE TABLE gearstash_jobs (
    id {id},
    server {server} NOT NULL,
    handle {key} NOT NULL,
    unique_key {key} NOT NULL,
    {function} {blob} NOT NULL,
    state VARCHAR(16) NOT NULL,
    attempt INTEGER NOT NULL,
    result {blob},
    error_kind VARCHAR(16),
    error_message {text},
    traceback {text},
    worker TEXT NOT NULL,
    started_at {double},
    finished_at {double},
    updated_at {double},
    expires_at {double},
    next_seq INTEGER NOT NULL,
    CONSTRAINT pk_gearstash_jobs PRIMARY KEY (id),
    CONSTRAINT uq_gearstash_jobs_key UNIQUE (handle, server, unique_key)
){engine}"""
_V1_CHUNKS = """CREATE TABLE gearstash_chunks (
    job_id {ref} NOT NULL,
    seq INTEGER NOT NULL,
    kind VARCHAR(8) NOT NULL,
    payload {blob},
    numerator BIGINT,
    denominator BIGINT,
    at {double} NOT NULL,
    CONSTRAINT pk_gearstash_chunks PRIMARY KEY (job_id, seq),
    CONSTRAINT fk_gearstash_chunks_job_id FOREIGN KEY(job_id) REFERENCES gearstash_jobs (id)
        ON DELETE CASCADE
){chunks_end}"""
_V1_META = """CREATE TABLE gearstash_meta (
    {keycol} VARCHAR(64) NOT NULL,
    value VARCHAR(255) NOT NULL,
    CONSTRAINT pk_gearstash_meta PRIMARY KEY ({keycol})
){engine}"""
_V1_INDEX = "CREATE INDEX ix_gearstash_jobs_expires_at ON gearstash_jobs (expires_at){where}"
_V1_TYPES = {
    "sqlite": {
        "id": "INTEGER NOT NULL",
        "server": "VARCHAR(255)",
        "key": "BLOB",
        "function": "function",
        "blob": "BLOB",
        "text": "TEXT",
        "double": "DOUBLE",
        "engine": "",
        "ref": "INTEGER",
        "chunks_end": " WITHOUT ROWID",
        "keycol": '"key"',
        "where": " WHERE expires_at IS NOT NULL",
    },
    "postgresql": {
        "id": "BIGSERIAL NOT NULL",
        "server": "VARCHAR(255)",
        "key": "BYTEA",
        "function": "function",
        "blob": "BYTEA",
        "text": "TEXT",
        "double": "DOUBLE PRECISION",
        "engine": "",
        "ref": "BIGINT",
        "chunks_end": "",
        "keycol": "key",
        "where": " WHERE expires_at IS NOT NULL",
    },
    "mysql": {
        "id": "BIGINT NOT NULL AUTO_INCREMENT",
        "server": "VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        "key": "VARBINARY(255)",
        "function": "`function`",
        "blob": "LONGBLOB",
        "text": "LONGTEXT",
        "double": "DOUBLE",
        "engine": "ENGINE=InnoDB CHARSET=utf8mb4",
        "ref": "BIGINT",
        "chunks_end": "ENGINE=InnoDB CHARSET=utf8mb4",
        "keycol": "`key`",
        "where": "",
    },
}


def _family(engine: sa.Engine) -> str:
    return "mysql" if engine.dialect.name in ("mysql", "mariadb") else engine.dialect.name


def _make_v1(url: str) -> tuple[JobKey, JobKey]:
    """Version 1 tables holding two jobs (one complete with chunks, one running), as 0.1 wrote
    them; returns their keys."""
    done = JobKey(new_server(), new_handle(), b"u-done")
    running = JobKey(new_server(), new_handle(), b"u-run")
    engine = raw_engine(url)
    if engine.dialect.name == "sqlite":
        Path(str(engine.url.database)).parent.mkdir(parents=True, exist_ok=True)
    try:
        types = _V1_TYPES[_family(engine)]
        with engine.begin() as conn:
            for ddl in (_V1_JOBS, _V1_META, _V1_CHUNKS, _V1_INDEX):
                conn.exec_driver_sql(ddl.format(**types))
            key = engine.dialect.identifier_preparer.quote("key")
            conn.execute(
                sa.text(f"INSERT INTO gearstash_meta ({key}, value) VALUES ('schema_version', '1')")
            )
            columns = (
                "server, handle, unique_key, {f}, state, attempt, result, error_kind, "
                "error_message, traceback, worker, started_at, finished_at, updated_at, "
                "expires_at, next_seq"
            ).format(f=engine.dialect.identifier_preparer.quote("function"))
            insert = sa.text(
                f"INSERT INTO gearstash_jobs ({columns}) VALUES (:server, :handle, :unique, "
                ":function, :state, 1, :result, NULL, NULL, NULL, 'w', :at, :finished, :updated, "
                ":expires, :next_seq)"
            )
            for job, state, result, finished, next_seq in (
                (done, "complete", b"done", T0 + 3, 3),
                (running, "running", None, None, 1),
            ):
                conn.execute(
                    insert,
                    {
                        "server": job.server,
                        "handle": job.handle,
                        "unique": job.unique,
                        "function": b"f",
                        "state": state,
                        "result": result,
                        "at": T0,
                        "finished": finished,
                        "updated": finished or T0 + 1,
                        "expires": T0 + 86400,
                        "next_seq": next_seq,
                    },
                )
            ids = dict(conn.execute(sa.text("SELECT unique_key, id FROM gearstash_jobs")).all())
            chunk = sa.text(
                "INSERT INTO gearstash_chunks (job_id, seq, kind, payload, numerator, denominator, "
                "at) VALUES (:job, :seq, :kind, :payload, :num, :den, :at)"
            )
            for job, seq, kind, payload, num, den in (
                (done.unique, 0, "data", b"one", None, None),
                (done.unique, 1, "status", None, 1, 2),
                (done.unique, 2, "data", b"two", None, None),
                (running.unique, 0, "warning", b"w", None, None),
            ):
                conn.execute(
                    chunk,
                    {
                        "job": ids[job],
                        "seq": seq,
                        "kind": kind,
                        "payload": payload,
                        "num": num,
                        "den": den,
                        "at": T0 + 1 + seq,
                    },
                )
    finally:
        engine.dispose()
    return done, running


def _v1_events(done: JobKey, running: JobKey) -> tuple[list[Event], list[Event]]:
    """Events that give the records _make_v1 wrote."""
    return (
        [
            ev(EventKind.STARTED, done, T0, function=b"f", worker="w"),
            ev(EventKind.DATA, done, T0 + 1, payload=b"one"),
            ev(EventKind.STATUS, done, T0 + 2, numerator=1, denominator=2),
            ev(EventKind.DATA, done, T0 + 3, payload=b"two"),
            ev(EventKind.COMPLETED, done, T0 + 3, payload=b"done"),
        ],
        [
            ev(EventKind.STARTED, running, T0, function=b"f", worker="w"),
            ev(EventKind.WARNING, running, T0 + 1, payload=b"w"),
        ],
    )


def _schema(url: str) -> tuple[str, set[str], set[str]]:
    """(schema_version, columns of gearstash_jobs, its index names)."""
    engine = raw_engine(url)
    try:
        with engine.connect() as conn:
            key = engine.dialect.identifier_preparer.quote("key")
            version = conn.execute(
                sa.text(f"SELECT value FROM gearstash_meta WHERE {key} = 'schema_version'")
            ).scalar_one()
            inspector = sa.inspect(conn)
            columns = {c["name"] for c in inspector.get_columns("gearstash_jobs")}
            indexes = {str(i["name"]) for i in inspector.get_indexes("gearstash_jobs")}
    finally:
        engine.dispose()
    return version, columns, indexes


def test_sql_version_1_tables_are_migrated(private_sql_url: str) -> None:
    """Opening version 1 tables adds lease_until, workload, the unique and state indexes, sets
    version 4, keeps
    every record; the new features then work on the old rows."""
    done, running = _make_v1(private_sql_url)
    assert _schema(private_sql_url)[0] == "1"
    store = open_store(private_sql_url)
    try:
        version, columns, indexes = _schema(private_sql_url)
        assert version == "4" and {"lease_until", "workload"} <= columns
        assert {"ix_gearstash_jobs_unique_key", "ix_gearstash_jobs_state"} <= indexes
        done_events, running_events = _v1_events(done, running)
        got_done, got_running = store.get_many([exact(done), JobRef(running.handle)])
        assert_same(got_done, JobRecord.from_events(done, done_events))
        assert_same(got_running, JobRecord.from_events(running, running_events))
        assert got_running is not None and got_running.lease_until is None
        # by unique, a heartbeat on an old row, a new job
        assert got_done is not None
        assert_same(get(store, JobRef(b"", None, done.unique)), got_done)
        beat = ev(EventKind.HEARTBEAT, running, T0 + 5, lease=30.0)
        store.write([beat])
        assert_same(
            get(store, exact(running)), JobRecord.from_events(running, [*running_events, beat])
        )
        key = new_key()
        store.write(full_job(key))
        assert_same(get(store, exact(key)), JobRecord.from_events(key, full_job(key)))
    finally:
        store.close()
    open_store(private_sql_url).close()  # again: nothing left to do
    assert _schema(private_sql_url)[0] == "4"


def test_sql_interrupted_migration_is_finished(private_sql_url: str) -> None:
    """Version 1 tables that already have the column (a migration stopped after its first step,
    as MariaDB's DDL is not transactional) are finished by the next opener."""
    done, running = _make_v1(private_sql_url)
    engine = raw_engine(private_sql_url)
    try:
        double = "DOUBLE PRECISION" if engine.dialect.name == "postgresql" else "DOUBLE"
        with engine.begin() as conn:
            conn.exec_driver_sql(f"ALTER TABLE gearstash_jobs ADD COLUMN lease_until {double}")
    finally:
        engine.dispose()
    store = open_store(private_sql_url)
    try:
        version, _columns, indexes = _schema(private_sql_url)
        assert version == "4" and "ix_gearstash_jobs_unique_key" in indexes
        got = get(store, JobRef(b"", done.server, done.unique))
        assert_same(got, JobRecord.from_events(done, _v1_events(done, running)[0]))
    finally:
        store.close()


def _open_and_read(url: str, key: JobKey, barrier: Any) -> None:
    barrier.wait(timeout=60)
    store = open_store(url)
    try:
        got = store.get_many([exact(key)])[0]
        assert got is not None and got.result == b"done"
    finally:
        store.close()


def test_sql_version_1_migrated_by_racing_processes(private_sql_url: str) -> None:
    done, _running = _make_v1(private_sql_url)
    ctx = processes()
    barrier = ctx.Barrier(4)
    procs = [
        ctx.Process(target=_open_and_read, args=(private_sql_url, done, barrier)) for _ in range(4)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0] * 4
    version, columns, indexes = _schema(private_sql_url)
    assert version == "4" and "lease_until" in columns
    assert {"ix_gearstash_jobs_unique_key", "ix_gearstash_jobs_state"} <= indexes


def _downgraded(url: str, version: int, statement: str) -> JobKey:
    """Current tables holding one full job, taken back to ``version`` by ``statement`` (the
    version row set to match); the job's key."""
    store = open_store(url)
    key = new_key()
    try:
        store.write(full_job(key))
    finally:
        store.close()
    engine = raw_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(statement)
            quoted = engine.dialect.identifier_preparer.quote("key")
            conn.exec_driver_sql(
                f"UPDATE gearstash_meta SET value = '{version}' WHERE {quoted} = 'schema_version'"
            )
    finally:
        engine.dispose()
    assert _schema(url)[0] == str(version)
    return key


def test_sql_version_2_tables_get_the_state_index(private_sql_url: str) -> None:
    """Version 2 tables (no state index) are migrated to version 4 on open; records kept."""
    mysql = private_sql_url.startswith(("mysql", "mariadb"))
    on = " ON gearstash_jobs" if mysql else ""
    key = _downgraded(private_sql_url, 2, f"DROP INDEX ix_gearstash_jobs_state{on}")
    store = open_store(private_sql_url)
    try:
        version, _columns, indexes = _schema(private_sql_url)
        assert version == "4" and "ix_gearstash_jobs_state" in indexes
        assert_same(get(store, exact(key)), JobRecord.from_events(key, full_job(key)))
    finally:
        store.close()


def test_sql_version_3_tables_get_the_workload_column(private_sql_url: str) -> None:
    """Version 3 tables (no workload column) are migrated to version 4 on open: old records read
    with no workload, and a captured workload is then stored and read back."""
    key = _downgraded(private_sql_url, 3, "ALTER TABLE gearstash_jobs DROP COLUMN workload")
    assert "workload" not in _schema(private_sql_url)[1]
    store = open_store(private_sql_url)
    try:
        version, columns, _indexes = _schema(private_sql_url)
        assert version == "4" and "workload" in columns
        old = get(store, exact(key))
        assert_same(old, JobRecord.from_events(key, full_job(key)))
        assert old is not None and old.workload is None
        new = new_key()
        events = [ev(EventKind.STARTED, new, T0, function=b"f", workload=b"\x00load\xff")]
        store.write(events)
        got = get(store, exact(new))
        assert_same(got, JobRecord.from_events(new, events))
        assert got is not None and got.workload == b"\x00load\xff"
    finally:
        store.close()


# ---------------------------------------------------------------------------------- semantics


def _reference(events: list[Event]) -> dict[JobKey, JobRecord]:
    """What JobRecord.create/apply make of ``events`` (the records every store must show)."""
    records: dict[JobKey, JobRecord] = {}
    for event in events:
        record = records.get(event.key)
        if record is None:
            record = JobRecord.create(event)
            if record is None:
                continue
            records[event.key] = record
        record.apply(event)
    return records


def test_sql_random_runs_match_the_reference(sql_url: str) -> None:
    """Random event runs (every kind, leases, several jobs per call or one, any batch split) read
    back as JobRecord.create + apply make them: the direct statements, the general path and the
    Python row changes agree."""
    rng = random.Random(f"{seed()}-sql")  # replay: GEARSTASH_TEST_SEED (pytest's header)
    kinds = list(EventKind)
    store = open_store(sql_url)
    try:
        server = new_server()
        keys = [JobKey(server, new_handle(), b"u%d" % i) for i in range(12)]
        events: list[Event] = []
        at = time.time()  # now, not the session's T0: ttl=600 must not run out mid-suite
        for _ in range(400):
            at += 0.001
            key = rng.choice(keys)
            kind = rng.choice(kinds)
            # (no NUL in an error message: PostgreSQL's TEXT cannot hold one)
            binary = b"\xff\xfe" if kind in (EventKind.FAILED, EventKind.EXCEPTION) else b"\x00\xff"
            events.append(
                Event(
                    kind,
                    key,
                    at,
                    payload=rng.choice([b"", b"x", binary]),
                    numerator=rng.randrange(5),
                    denominator=5,
                    function=rng.choice([b"", b"f", b"g"]),
                    worker=rng.choice(["", "w1"]),
                    lease=rng.choice([None, None, 3600.0]),
                    ttl=rng.choice([None, 0, 86400]),  # T0 is taken at import: a slow suite
                    # outlives a short TTL (600 s expired in a 14-minute run on a busy host)
                )
            )
        start = 0
        while start < len(events):
            batch = events[start : start + rng.choice([1, 1, 2, 3, 5, 8])]
            if rng.random() < 0.5:  # one job per call (the direct statements)
                same = [e.key == batch[0].key for e in batch]
                batch = batch[: same.index(False)] if False in same else batch
            start += len(batch)
            store.write(batch)
        want = _reference(events)
        got = store.get_many([exact(k) for k in keys])
        for key, record in zip(keys, got, strict=True):
            if key in want:
                assert_same(record, want[key])
            else:
                assert record is None
    finally:
        store.close()


def test_sql_random_runs_in_batch_order(sql_url: str) -> None:
    """The same with the batches taken exactly as written (no event dropped or reordered)."""
    rng = random.Random(f"{seed()}-order")  # replay: GEARSTASH_TEST_SEED
    store = open_store(sql_url)
    try:
        server = new_server()
        keys = [JobKey(server, new_handle(), b"") for _ in range(6)]
        written: list[Event] = []
        at = time.time()  # now, not the session's T0: ttl=600 must not run out mid-suite
        for _ in range(120):
            batch = []
            for _ in range(rng.choice([1, 2, 4])):
                at += 0.001
                kind = rng.choice(list(EventKind))
                batch.append(
                    Event(
                        kind,
                        rng.choice(keys[:2]) if rng.random() < 0.7 else rng.choice(keys),
                        at,
                        payload=b"p",
                        numerator=1,
                        denominator=2,
                        function=b"f" if kind is EventKind.SUBMITTED else b"",
                        lease=rng.choice([None, 3600.0]),
                    )
                )
            store.write(batch)
            written += batch
        want = _reference(written)
        for key, record in zip(keys, store.get_many([exact(k) for k in keys]), strict=True):
            if key in want:
                assert_same(record, want[key])
            else:
                assert record is None
    finally:
        store.close()


def test_sql_submitted_then_replayed_under_a_new_handle(sql_url: str) -> None:
    """A submitted marker, then the job run under another handle (a persistent queue replayed it):
    the reference by unique finds the run; get_after and delete work by unique too."""
    store = open_store(sql_url)
    try:
        server = new_server()
        unique = f"replay-{RUN}-{new_handle().decode()}".encode()
        marker = JobKey(server, new_handle(), unique)
        replayed = JobKey(server, new_handle(), unique)
        store.write([ev(EventKind.SUBMITTED, marker, T0, function=b"resize")])
        by_unique = JobRef(b"", server, unique)
        got = get(store, by_unique)
        assert got is not None and (got.key, got.state, got.attempt) == (marker, State.QUEUED, 0)
        store.write(full_job(replayed, T0 + 1))
        got = get(store, by_unique)
        assert_same(got, JobRecord.from_events(replayed, full_job(replayed, T0 + 1)))
        tail = get_after(store, by_unique, 2)
        assert tail is not None and tail.data == [b"three"] and tail.data_offset == 2
        assert get(store, exact(marker)) is not None  # the marker stays, under its handle
        assert store.get_many([by_unique, JobRef(b"", None, unique + b"?")])[1] is None
        assert delete(store, [by_unique]) == 2  # every record with that unique (on that server)
        assert store.get_many([by_unique, exact(marker), exact(replayed)]) == [None] * 3
    finally:
        store.close()


def test_sql_reads_by_unique_are_bounded(sql_url: str) -> None:
    """Many references by unique and by handle: a fixed number of statements, right answers."""
    store = open_store(sql_url)
    try:
        server = new_server()
        keys = [JobKey(server, new_handle(), b"U-%s-%d" % (RUN.encode(), i)) for i in range(20)]
        store.write([ev(EventKind.STARTED, k, T0, function=b"%d" % i) for i, k in enumerate(keys)])
        refs: list[JobRef] = []
        want: list[bytes | None] = []
        for i in range(1200):
            key = keys[i % 20]
            if i % 3 == 0:
                refs.append(JobRef(b"", None if i % 2 else server, key.unique))
            elif i % 3 == 1:
                refs.append(JobRef(key.handle, server))
            else:
                refs.append(JobRef(b"", server, key.unique + b"-none"))
                want.append(None)
                continue
            want.append(b"%d" % (i % 20))
        statements = count_reads(store)
        got = store.get_many(refs)
        assert [None if r is None else r.function for r in got] == want
        # handles: 1 query; uniques (40 of them): 1; the 20 jobs: 1
        assert len(statements) == 3
    finally:
        store.close()


def _count_writes(store: Store) -> list[str]:
    """The statements this thread's writes send from now on."""

    writer = store._writers.get()  # type: ignore[attr-defined]
    statements: list[str] = []
    writer.cursor = CountingCursor(writer.cursor, statements)
    return statements


def test_sql_leases_stay_on_the_fast_path(sql_url: str) -> None:
    """started with a lease is still one statement; a heartbeat is one UPDATE; a heartbeat of a
    job with no row writes nothing."""
    store = open_store(sql_url)
    try:
        key = new_key()
        statements = _count_writes(store)
        store.write([ev(EventKind.STARTED, key, T0, function=b"f", lease=60.0)])
        assert len(statements) == 1
        statements.clear()
        store.write([ev(EventKind.HEARTBEAT, key, T0 + 20, lease=60.0)])
        assert len(statements) == 1
        assert statements[0].lstrip().upper().startswith(("UPDATE", "WITH"))
        got = get(store, exact(key))
        assert got is not None and (got.lease_until, got.updated_at) == (T0 + 80, T0 + 20)
        statements.clear()
        nobody = new_key()
        store.write([ev(EventKind.HEARTBEAT, nobody, T0, lease=60.0)])
        assert get(store, exact(nobody)) is None
    finally:
        store.close()


def test_sqlite_lookup_by_unique_uses_the_index(tmp_sqlite_url: str) -> None:
    store = open_store(tmp_sqlite_url)
    try:
        sql = store._reads.one(True, True, False, True)  # type: ignore[attr-defined]
    finally:
        store.close()
    engine = raw_engine(tmp_sqlite_url)
    try:
        with engine.connect() as conn:
            plan = conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + sql, (b"u", "s:4730", T0)
            ).fetchall()
    finally:
        engine.dispose()
    assert any("ix_gearstash_jobs_unique_key" in str(row) for row in plan), plan


def test_sql_uniques_compare_exactly(sql_url: str) -> None:
    """Lookups by unique compare bytes: trailing spaces and NULs, case and non-UTF-8 all count
    (MariaDB: VARBINARY, no padding or collation)."""
    store = open_store(sql_url)
    try:
        server = new_server()
        uniques = [b"u", b"u ", b"u\x00", b"U", b"\xff", b"\xc3\xbf", b""]
        keys = [JobKey(server, new_handle(), unique) for unique in uniques]
        store.write([ev(EventKind.SUBMITTED, k, T0 + i, function=b"f") for i, k in enumerate(keys)])
        refs = [JobRef(b"", server, unique) for unique in uniques]
        assert [r.key if r else None for r in store.get_many(refs)] == keys
        assert [r.key if r else None for r in (get(store, ref) for ref in refs)] == keys
        assert delete(store, refs[:2]) == 2
        assert [r.key if r else None for r in store.get_many(refs)] == [None, None, *keys[2:]]
    finally:
        store.close()


def _write_in_child(url: str, key: JobKey, delay: float) -> None:
    time.sleep(delay)
    store = open_store(url)
    try:
        store.write([ev(EventKind.DATA, key, T0 + 1, payload=b"from the child")])
    finally:
        store.close()


def test_sqlite_watch_wakes_on_commits_from_another_process(tmp_sqlite_url: str) -> None:
    """A SQLite file's watch (PRAGMA data_version) wakes on another process's commit, times out
    cleanly without one, and ends at once when closed from another thread."""
    store = open_store(tmp_sqlite_url)
    try:
        key = new_key()
        store.write([ev(EventKind.STARTED, key, T0)])
        watcher = watch(store, [exact(key)])
        try:
            assert watcher.wait(0.05) is False  # nothing written since the watch was made
            child = processes().Process(target=_write_in_child, args=(tmp_sqlite_url, key, 0.2))
            child.start()
            assert watcher.wait(30) is True
            child.join(30)
            assert child.exitcode == 0
            got = get(store, exact(key))
            assert got is not None and got.data == [b"from the child"]
            store.write([ev(EventKind.DATA, key, T0 + 2, payload=b"here")])  # this process
            assert watcher.wait(5) is True
            closer = threading.Timer(0.1, watcher.close)
            closer.start()
            started = time.monotonic()
            assert watcher.wait(30) is False
            assert time.monotonic() - started < 10
            closer.join()
        finally:
            watcher.close()
    finally:
        store.close()


def test_records_are_built_with_jobrecords_fields_in_order() -> None:
    """build_record passes JobRecord's fields by position: a field added or moved in JobRecord
    must be added or moved there too (mypy cannot tell two fields of one type apart)."""
    import dataclasses

    from gearstash_sql.rows import RECORD_COLUMNS, build_record

    row = [None] * len(RECORD_COLUMNS)
    values = {
        "id": 1, "server": "s:1", "handle": b"H:x:1", "unique_key": b"u", "function": b"f",
        "state": "complete", "attempt": 2, "result": b"r", "error_kind": None,
        "error_message": None, "traceback": None, "worker": "w", "started_at": 1.0,
        "finished_at": 2.0, "updated_at": 3.0, "expires_at": 4.0, "next_seq": 0,
        "lease_until": 5.0, "workload": b"in",
    }  # fmt: skip
    for i, name in enumerate(RECORD_COLUMNS):
        row[i] = values[name]
    record = build_record(row, [(1, "data", b"d", None, None, 1.5)])
    want = JobRecord(
        key=JobKey("s:1", b"H:x:1", b"u"), function=b"f", state=State.COMPLETE, attempt=2,
        data=[b"d"], result=b"r", worker="w", started_at=1.0, finished_at=2.0, updated_at=3.0,
        expires_at=4.0, lease_until=5.0, workload=b"in",
    )  # fmt: skip
    assert record == want
    assert [f.name for f in dataclasses.fields(JobRecord)][-3:] == [
        "data_offset",
        "lease_until",
        "workload",
    ]
