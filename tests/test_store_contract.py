"""The store contract (``gearstash.testing.StoreContract``) on every built-in store, and what only
the SQL store promises.

``TestMemoryContract``, ``TestSqliteContract``, ``TestPostgresContract`` and ``TestMysqlContract``
run the shipped contract suite (the one third-party stores run) through ``open_store``. Its tests name
their jobs on servers unique to this run (``gs{RUN}-...``), so the session's PostgreSQL/MariaDB
databases can be shared by its tests; the fixtures delete this run's rows afterwards.

The tests after "SQL store" check what only the SQL store promises (schema, URLs, limits, threads,
fork, dead connections, expiry and purge, cursors, LISTEN/NOTIFY). Tests that purge use a private
database (a purge acts on every job in the tables, other tests' too).

The helpers and SQL fixtures the store tests share are in ``support.stores``.
"""

from __future__ import annotations

import gc
import multiprocessing
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from support.stores import (
    T0,
    assert_same,
    count_reads,
    delete_run_rows,
    ev,
    exact,
    full_job,
    get,
    new_handle,
    new_key,
    new_server,
    processes,
    raw_engine,
    sql_url_for,
)

from gearstash.errors import ConfigError, StoreError
from gearstash.model.records import Event, EventKind, JobKey, JobRecord, JobRef, State
from gearstash.spine.manager import open_store
from gearstash.store.contract import Store, get_after, watch
from gearstash.testing.contract import StoreContract

# ---------------------------------------------------------------------------------- the contract


class TestMemoryContract(StoreContract):
    @pytest.fixture
    def store_url(self) -> str:
        return f"memory://contract-{uuid.uuid4().hex}"  # named: the suite's threads share it


class TestSqliteContract(StoreContract):
    @pytest.fixture
    def store_url(self, tmp_sqlite_url: str) -> str:
        return tmp_sqlite_url


@pytest.mark.postgres
class TestPostgresContract(StoreContract):
    @pytest.fixture
    def store_url(self, postgres_url: str) -> Iterator[str]:
        yield postgres_url
        delete_run_rows(postgres_url)

    @pytest.fixture
    def store_url_with_password(self, postgres_url: str) -> str:
        # the private server trusts 127.0.0.1: the password is sent and ignored
        return postgres_url.replace("://postgres@", "://postgres:pg-contract-secret@")


@pytest.mark.mysql
class TestMysqlContract(StoreContract):
    @pytest.fixture
    def store_url(self, mysql_url: str) -> Iterator[str]:
        yield mysql_url
        delete_run_rows(mysql_url)

    @pytest.fixture
    def store_url_with_password(self, mysql_url: str) -> Iterator[str]:
        """A user of its own with a password and rights on ``test``, dropped afterwards."""
        root = sa.create_engine(mysql_url)
        user, password = f"gs_c_{uuid.uuid4().hex[:8]}", "my-contract-secret"
        with root.begin() as conn:
            conn.execute(sa.text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"))
            conn.execute(sa.text(f"GRANT ALL PRIVILEGES ON test.* TO '{user}'@'%'"))
        try:
            yield mysql_url.replace("://root@", f"://{user}:{password}@")
        finally:
            with root.begin() as conn:
                conn.execute(sa.text(f"DROP USER IF EXISTS '{user}'@'%'"))
            root.dispose()


# ---------------------------------------------------------------------------------- SQL store


def test_sql_key_limits(sql_url: str) -> None:
    store = open_store(sql_url)
    try:
        server = new_server()
        handle = new_handle()
        ok = JobKey(server, handle + b"\xff" * (255 - len(handle)), b"\x00" * 255)
        too_long = JobKey(server, new_handle() + b"x" * 255, b"")
        with pytest.raises(StoreError, match="255"):
            store.write([ev(EventKind.STARTED, ok, T0), ev(EventKind.STARTED, too_long, T0)])
        assert get(store, JobRef(ok.handle)) is None  # nothing of the refused batch was written
        store.write([ev(EventKind.STARTED, ok, T0)])
        got = get(store, JobRef(ok.handle, server, ok.unique))
        assert got is not None and got.key == ok
    finally:
        store.close()


def test_sql_get_many_is_a_bounded_number_of_queries(sql_url: str) -> None:
    store = open_store(sql_url)
    try:
        server = new_server()
        keys = [JobKey(server, new_handle(), b"") for _ in range(20)]
        store.write(
            [ev(EventKind.STARTED, k, T0) for k in keys]
            + [ev(EventKind.DATA, k, T0, payload=b"d") for k in keys]
        )
        statements = count_reads(store)
        refs = [JobRef(keys[i % 20].handle if i % 2 else new_handle("none")) for i in range(1200)]
        got = store.get_many(refs)
        assert sum(r is not None for r in got) == 600
        assert all(r is None or r.data == [b"d"] for r in got)
        # 620 handles: two queries for the candidates, one for the 20 jobs and their chunks
        assert len(statements) == 3
        assert not any("BEGIN" in s.upper() for s in statements)
    finally:
        store.close()


def test_sql_one_reference_is_one_statement(sql_url: str) -> None:
    """get_many of one reference (full or partial) and get_after are one round trip each, with
    no BEGIN/COMMIT of their own (MySQL: one query holding the read-only transaction)."""
    store = open_store(sql_url)
    try:
        server = new_server()
        key = JobKey(server, new_handle(), b"u1")
        older = JobKey(server, key.handle, b"u0")
        store.write(
            [
                ev(EventKind.STARTED, older, T0, function=b"old"),
                ev(EventKind.STARTED, key, T0, function=b"f"),
                ev(EventKind.DATA, key, T0 + 1, payload=b"a"),
                ev(EventKind.STATUS, key, T0 + 2, numerator=1, denominator=2),
                ev(EventKind.DATA, key, T0 + 3, payload=b""),
                ev(EventKind.WARNING, key, T0 + 4, payload=b"w"),
                ev(EventKind.COMPLETED, key, T0 + 5, payload=b"r"),
            ]
        )
        statements = count_reads(store)
        for ref in (exact(key), JobRef(key.handle), JobRef(key.handle, server), None):
            statements.clear()
            if ref is None:
                got = get_after(store, exact(key), 1)
                assert got is not None and (got.data, got.data_offset) == ([b""], 1)
            else:
                got = get(store, ref)
                assert got is not None and got.data == [b"a", b""]
            assert (got.key, got.function, got.result) == (key, b"f", b"r")
            assert (got.warnings, [p.numerator for p in got.status]) == ([b"w"], [1])
            assert len(statements) == 1
            if not sql_url.startswith("mysql"):
                assert "BEGIN" not in statements[0].upper()
        statements.clear()
        got = get(store, JobRef(key.handle, server, b"u0"))
        assert got is not None and (got.key, got.function, got.data) == (older, b"old", [])
        assert get(store, JobRef(key.handle, server, b"nope")) is None
        assert get(store, JobRef(new_handle("none"))) is None
        assert len(statements) == 3
    finally:
        store.close()


def test_sql_expired_job_reads_without_its_chunks(sql_url: str) -> None:
    store = open_store(sql_url)
    try:
        key = new_key()
        at = time.time() - 10
        store.write(
            [
                ev(EventKind.STARTED, key, at, function=b"f", ttl=5),
                ev(EventKind.DATA, key, at, payload=b"d"),
            ]
        )
        for got in (
            get(store, exact(key)),
            get_after(store, exact(key), 1),
            store.get_many([exact(key), JobRef(key.handle)])[1],
        ):
            assert got is not None and got.state is State.EXPIRED
            assert (got.data, got.function, got.data_offset) == ([], b"f", 0)
    finally:
        store.close()


def test_sqlite_reads_do_not_wait_for_a_writer(tmp_sqlite_url: str) -> None:
    """WAL: a read runs while another connection holds the write lock (readers take no lock)."""
    import sqlite3

    store = open_store(tmp_sqlite_url)
    try:
        key = new_key()
        store.write([ev(EventKind.STARTED, key, T0), ev(EventKind.DATA, key, T0, payload=b"d")])
        blocker = sqlite3.connect(tmp_sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            blocker.execute("UPDATE gearstash_jobs SET worker = 'x'")
            started = time.monotonic()
            got = store.get_many([exact(key)])[0]
            both = store.get_many([exact(key), JobRef(key.handle)])
            assert time.monotonic() - started < 8  # not the 10 s busy timeout of a waiting read
            assert got is not None and got.worker == "" and got.data == [b"d"]
            assert both == [got, got]
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
    finally:
        store.close()


def test_sql_schema_version_present(sql_url: str) -> None:
    open_store(sql_url).close()
    engine = sa.create_engine(sql_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            version = conn.execute(
                sa.text(
                    "SELECT value FROM gearstash_meta WHERE "
                    + _quoted_key(engine)
                    + " = 'schema_version'"
                )
            ).scalar_one()
    finally:
        engine.dispose()
    assert version == "4"


def _quoted_key(engine: sa.Engine) -> str:
    return engine.dialect.identifier_preparer.quote("key")


def test_sql_newer_schema_is_refused(private_sql_url: str) -> None:
    open_store(private_sql_url).close()
    engine = sa.create_engine(private_sql_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE gearstash_meta SET value = '5' WHERE "
                    + _quoted_key(engine)
                    + " = 'schema_version'"
                )
            )
    finally:
        engine.dispose()
    with pytest.raises(StoreError, match="schema_version 5, newer"):
        open_store(private_sql_url)


def test_sql_tables_created_by_racing_processes(private_sql_url: str) -> None:
    ctx = processes()
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_open_after, args=(private_sql_url, barrier)) for _ in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
    assert [proc.exitcode for proc in procs] == [0, 0, 0]
    store = open_store(private_sql_url)
    try:
        key = new_key()
        store.write(full_job(key))
        assert_same(get(store, JobRef(key.handle)), JobRecord.from_events(key, full_job(key)))
    finally:
        store.close()


def _open_after(url: str, barrier: Any) -> None:
    barrier.wait(timeout=60)
    open_store(url).close()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:s3cret@127.0.0.1:1/x",
        "postgres://u:s3cret@127.0.0.1:1/x",
        "mysql://u:s3cret@127.0.0.1:1/x",
        "mariadb+pymysql://u:s3cret@127.0.0.1:1/x",
        "sqlite:////proc/nonexistent/x.db",
    ],
)
def test_dead_store_raises_store_error_without_password(url: str) -> None:
    with pytest.raises(StoreError) as info:
        open_store(url)
    message = str(info.value)
    assert "s3cret" not in message
    assert url.split(":")[0] in message
    if "s3cret" in url:
        assert "u:***@127.0.0.1:1" in message


@pytest.mark.parametrize(
    ("base", "prefix", "scheme"),
    [
        pytest.param(
            "postgres", "postgresql+psycopg://", "postgresql://", marks=pytest.mark.postgres
        ),
        pytest.param(
            "postgres", "postgresql+psycopg://", "postgres://", marks=pytest.mark.postgres
        ),
        pytest.param("mysql", "mysql+pymysql://", "mysql://", marks=pytest.mark.mysql),
        pytest.param("mysql", "mysql+pymysql://", "mariadb://", marks=pytest.mark.mysql),
        pytest.param("sqlite", "sqlite:///", "sqlite:///", id="sqlite-options"),
    ],
)
def test_sql_url_forms(request: pytest.FixtureRequest, base: str, prefix: str, scheme: str) -> None:
    """Bare schemes get the default driver; gearstash_* options never reach SQLAlchemy."""
    base_url = sql_url_for(request, base)
    assert base_url.startswith(prefix)
    url = scheme + base_url[len(prefix) :]
    url += ("&" if "?" in url else "?") + "gearstash_ignored=1"
    try:
        store = open_store(url)
        try:
            assert store.url == url and store.capabilities >= {"shared", "persistent"}
            key = new_key()
            store.write(full_job(key))
            assert_same(get(store, JobRef(key.handle)), JobRecord.from_events(key, full_job(key)))
        finally:
            store.close()
    finally:
        delete_run_rows(base_url)


def test_sqlite_memory_is_private_to_the_store() -> None:
    first, second = open_store("sqlite:///:memory:"), open_store("sqlite://")
    try:
        key = new_key()
        first.write(full_job(key))
        assert_same(get(first, JobRef(key.handle)), JobRecord.from_events(key, full_job(key)))
        assert get(second, JobRef(key.handle)) is None
    finally:
        first.close()
        second.close()
        first.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        first.write(full_job(key))


def _writers(store: Store) -> Any:
    """The SQL store's write connections (gearstash_sql.writers.Writers)."""
    return store._writers  # type: ignore[attr-defined]


def test_sql_threads_write_at_once(sql_url: str) -> None:
    """Threads of one process write at once, each on its own connection (SQLite: one, in turn);
    a thread's connection closes when the thread ends, and close() closes every thread's."""
    store = open_store(sql_url)
    try:
        workers, count = 6, 25
        server = new_server()
        own = [JobKey(server, new_handle(), b"own") for _ in range(workers)]
        shared = JobKey(server, new_handle(), b"shared")
        store.write([ev(EventKind.STARTED, shared, T0, function=b"f")])
        barrier = threading.Barrier(workers)
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                barrier.wait(timeout=60)
                key = own[n]
                store.write([ev(EventKind.STARTED, key, T0, function=b"f", worker=f"t{n}")])
                for i in range(count):
                    payload = b"%d:%d" % (n, i)
                    store.write(
                        [
                            ev(EventKind.DATA, key, T0 + i, payload=payload),
                            ev(EventKind.STATUS, key, T0 + i, numerator=i, denominator=count),
                        ]
                    )
                    store.write([ev(EventKind.DATA, shared, T0 + i, payload=payload)])
                store.write([ev(EventKind.COMPLETED, key, T0 + count, payload=b"%d" % n)])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert errors == [] and not any(thread.is_alive() for thread in threads)
        records = store.get_many([JobRef(k.handle, server, k.unique) for k in [*own, shared]])
        for n, record in enumerate(records[:workers]):
            assert record is not None
            assert record.data == [b"%d:%d" % (n, i) for i in range(count)]
            assert [p.numerator for p in record.status] == list(range(count))
            assert (record.state, record.result, record.worker) == (
                State.COMPLETE,
                b"%d" % n,
                f"t{n}",
            )
        shared_record = records[-1]
        assert shared_record is not None and len(shared_record.data) == workers * count
        for n in range(workers):
            mine = [c for c in shared_record.data if c.startswith(b"%d:" % n)]
            assert mine == [b"%d:%d" % (n, i) for i in range(count)]
        gc.collect()
        assert len(_writers(store)) == 1  # this thread's (SQLite: the store's one)
    finally:
        store.close()
    assert len(_writers(store)) == 0
    with pytest.raises(StoreError, match="closed"):
        store.write([ev(EventKind.STARTED, new_key(), T0)])
    with pytest.raises(StoreError, match="closed"):
        store.get_many([JobRef(b"H:1")])


def _write_in_child(store: Store, key: JobKey) -> None:
    store.write([ev(EventKind.STARTED, key, T0), ev(EventKind.COMPLETED, key, T0 + 1)])
    assert get(store, JobRef(key.handle, key.server, key.unique)) is not None
    store.close()


def test_sql_forked_child_leaves_the_parents_connections_alone(sql_url: str) -> None:
    """A store used again after fork() connects afresh in the child and never closes (or uses)
    the parent's connections: the parent goes on writing on the connection it had. A lock some
    thread of the parent held at the fork does not block the child."""
    store = open_store(sql_url)
    parent_key, child_key = new_key(), new_key()
    # daemon: a child that hangs is killed below (and at exit), never left for the session to join
    child = multiprocessing.get_context("fork").Process(
        target=_write_in_child, args=(store, child_key), daemon=True
    )
    try:
        store.write([ev(EventKind.STARTED, parent_key, T0)])
        assert get(store, JobRef(parent_key.handle)) is not None  # a read connection too
        writer = _writers(store).get()
        reader = store._readers.get()  # type: ignore[attr-defined]
        with store._write_guard:  # type: ignore[attr-defined]  # as if a thread were writing
            child.start()
        child.join(timeout=30)
        assert child.exitcode == 0
        time.sleep(0.05)  # a hang-up caused by the child would have reached us
        store.write([ev(EventKind.COMPLETED, parent_key, T0 + 1, payload=b"ok")])
        assert _writers(store).get() is writer
        assert store._readers.get() is reader  # type: ignore[attr-defined]
        got = store.get_many(
            [JobRef(k.handle, k.server, k.unique) for k in (parent_key, child_key)]
        )
        assert [r.state if r else None for r in got] == [State.COMPLETE, State.COMPLETE]
    finally:
        if child.is_alive():  # hung (a bug): not left behind
            child.kill()
            child.join(timeout=10)
        store.close()


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ],
)
def test_sql_connection_dropped_while_idle_is_replaced(
    request: pytest.FixtureRequest, kind: str
) -> None:
    """The server ends a write connection while it is idle (restart, timeout): the next write
    goes out on a new connection instead of failing (and so is not lost)."""
    url = sql_url_for(request, kind)
    store = open_store(url)
    try:
        key = new_key()
        store.write([ev(EventKind.STARTED, key, T0)])
        writer = _writers(store).get()
        _kill(url, kind, writer)
        # one statement, run in autocommit: sent on a dead connection, its fate would be unknown
        store.write([ev(EventKind.COMPLETED, key, T0 + 2, payload=b"after")])
        assert _writers(store).get() is not writer
        got = get(store, JobRef(key.handle, key.server, key.unique))
        assert got is not None and (got.result, got.state) == (b"after", State.COMPLETE)
        # the read connection too: replaced before use when seen dead, else read again
        readers = store._readers  # type: ignore[attr-defined]
        for wait in (True, False):
            reader = readers.get()
            _kill(url, kind, reader, wait=wait)
            got = get(store, JobRef(key.handle, key.server, key.unique))
            assert got is not None and got.result == b"after"
            assert store.get_many([JobRef(key.handle), JobRef(b"none")])[0] == got
            assert readers.get() is not reader
    finally:
        store.close()
        delete_run_rows(url)


def _kill(url: str, kind: str, connection: Any, *, wait: bool = True) -> None:
    """End one of the store's own connections from the server side (``wait``: until it sees it)."""
    if kind == "postgres":
        kill = f"SELECT pg_terminate_backend({connection.conn.info.backend_pid})"  # ours
    else:
        kill = f"KILL {connection.conn.thread_id()}"  # ours
    admin = sa.create_engine(url)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(kill))
    finally:
        admin.dispose()
    if not wait:
        # skip the check-before-use: the next read goes out on the dead connection
        connection.poller = None
        time.sleep(0.2)
        return
    deadline = time.monotonic() + 5
    while not connection.poller.poll(0) and time.monotonic() < deadline:
        time.sleep(0.01)


# ---------------------------------------------------------------------------------- expiry, purge


def _with(url: str, **options: object) -> str:
    return url + ("&" if "?" in url else "?") + "&".join(f"{k}={v}" for k, v in options.items())


def _row(engine: sa.Engine, key: JobKey) -> tuple[Any, ...] | None:
    """(expires_at, result, error_message, number of chunks) of the job row, or None."""
    from gearstash_sql.schema import chunks, jobs

    with engine.connect() as conn:
        row = conn.execute(
            sa.select(jobs.c.id, jobs.c.expires_at, jobs.c.result, jobs.c.error_message).where(
                jobs.c.handle == key.handle, jobs.c.server == key.server
            )
        ).one_or_none()
        if row is None:
            return None
        count = conn.execute(
            sa.select(sa.func.count()).select_from(chunks).where(chunks.c.job_id == row[0])
        ).scalar_one()
    return (row[1], None if row[2] is None else bytes(row[2]), row[3], count)


def test_sql_ttl_from_the_url_and_events(sql_url: str) -> None:
    """?ttl= (never seen by the driver) is the default; started and final events set expires_at,
    data and status leave it; an event's ttl overrides; ttl 0 keeps for ever."""
    store = open_store(_with(sql_url, ttl=50))
    engine = raw_engine(sql_url)
    try:
        assert store.ttl == 50 and "expires" in store.capabilities  # type: ignore[attr-defined]
        key, forever, created = new_key(), new_key(), new_key()
        now = time.time()
        store.write([ev(EventKind.STARTED, key, now, function=b"f")])
        assert _row(engine, key) == (now + 50, None, None, 0)
        store.write([ev(EventKind.DATA, key, now + 5, payload=b"d", ttl=1)])
        store.write([ev(EventKind.STATUS, key, now + 6, numerator=1, denominator=2)])
        assert _row(engine, key) == (now + 50, None, None, 2)  # a running job keeps its expiry
        store.write([ev(EventKind.COMPLETED, key, now + 7, payload=b"r", ttl=600)])
        got = get(store, exact(key))
        assert got is not None and got.expires_at == now + 607 and got.state is State.COMPLETE
        store.write([ev(EventKind.STARTED, forever, now, ttl=0), ev(EventKind.DATA, forever, now)])
        store.write([ev(EventKind.FAILED, forever, now + 1, ttl=0)])
        got = get(store, exact(forever))
        assert got is not None and got.expires_at is None and got.state is State.FAILED
        store.write([ev(EventKind.DATA, created, now, payload=b"x")])  # a write that makes a row
        got = get(store, exact(created))
        assert got is not None and got.expires_at == now + 50
    finally:
        store.close()
        engine.dispose()
    for bad in ("ttl=x", "ttl=-1", "tombstone=soon", "purge_every=-5", "notify=maybe"):
        with pytest.raises(ConfigError):
            open_store(sql_url + ("&" if "?" in sql_url else "?") + bad)


def _job_at(store: Store, key: JobKey, at: float, ttl: float) -> None:
    """A whole job said at ``at`` (so it expires at ``at + ttl``)."""
    store.write(
        [
            ev(EventKind.STARTED, key, at, function=b"f", ttl=ttl),
            ev(EventKind.DATA, key, at, payload=b"chunk"),
            ev(EventKind.WARNING, key, at, payload=b"warn"),
            ev(EventKind.COMPLETED, key, at, payload=b"result" * 100, ttl=ttl),
        ]
    )


def test_sql_purge_cleans_expired_jobs_then_deletes_their_rows(
    private_sql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """purge(): an expired job loses its chunks and result (and reads as expired); once it has
    been expired longer than ?tombstone=, its row goes too. Bounded steps, run until done."""
    import gearstash_sql.removal as sql_removal

    url = _with(private_sql_url, tombstone=1000, purge_every=0)
    store = open_store(url)
    engine = raw_engine(url)
    try:
        now = time.time()
        live, recent, old = new_key(), new_key(), new_key()
        _job_at(store, live, now, 3600)
        _job_at(store, recent, now - 100, 10)  # expired 90 s ago: a tombstone
        _job_at(store, old, now - 5000, 10)  # expired 4990 s ago: past the tombstone period
        assert _row(engine, recent) == (now - 90, b"result" * 100, None, 2)
        got = get(store, exact(recent))
        assert got == JobRecord(recent, b"f", State.EXPIRED, 1, expires_at=now - 90)
        assert store.purge() == 2  # type: ignore[attr-defined]
        assert _row(engine, recent) == (now - 90, None, None, 0)
        assert _row(engine, old) is None
        assert get(store, exact(recent)) == got  # still reads as expired
        assert get(store, exact(old)) is None
        assert_same(get(store, exact(live)), JobRecord.from_events(live, _events(live, now)))
        assert _row(engine, live) == (now + 3600, b"result" * 100, None, 2)
        assert store.purge() == 0  # type: ignore[attr-defined]

        # many at once: steps of PURGE_LIMIT rows, until none is left
        monkeypatch.setattr(sql_removal, "PURGE_LIMIT", 3)
        many = [new_key() for _ in range(10)]
        for n, key in enumerate(many):
            _job_at(store, key, time.time(), 0.5 + n * 0.01)
        time.sleep(0.7)
        assert store.purge() == 10  # type: ignore[attr-defined]
        assert [_row(engine, key)[1:] for key in many] == [(None, None, 0)] * 10  # type: ignore[index]
    finally:
        store.close()
        engine.dispose()


def _events(key: JobKey, at: float) -> list[Event]:
    return [
        ev(EventKind.STARTED, key, at, function=b"f"),
        ev(EventKind.DATA, key, at, payload=b"chunk"),
        ev(EventKind.WARNING, key, at, payload=b"warn"),
        ev(EventKind.COMPLETED, key, at, payload=b"result" * 100),
    ]


def test_sql_writes_purge_by_themselves(private_sql_url: str) -> None:
    """Every ?purge_every= writes a store runs a purge step: no purge() call, no scheduler."""
    store = open_store(_with(private_sql_url, purge_every=10, tombstone=1000))
    engine = raw_engine(private_sql_url)
    try:
        now = time.time()
        expired, gone, running = new_key(), new_key(), new_key()
        _job_at(store, expired, now - 100, 10)
        _job_at(store, gone, now - 5000, 10)
        store.write([ev(EventKind.STARTED, running, now)])
        for i in range(20):
            store.write([ev(EventKind.DATA, running, now + i, payload=b"%d" % i)])
        assert _row(engine, expired) == (now - 90, None, None, 0)
        assert _row(engine, gone) is None
        got = get(store, exact(running))
        assert got is not None and len(got.data) == 20
    finally:
        store.close()
        engine.dispose()


def test_sql_delete_removes_rows_and_chunks(sql_url: str) -> None:
    store = open_store(sql_url)
    engine = raw_engine(sql_url)
    try:
        key, other = new_key(), new_key()
        store.write(full_job(key) + full_job(other))
        assert _row(engine, key) is not None
        assert store.delete([exact(key), JobRef(new_handle("none"))]) == 1  # type: ignore[attr-defined]
        assert _row(engine, key) is None and get(store, exact(key)) is None
        from gearstash_sql.schema import chunks, jobs

        with engine.connect() as conn:  # no orphan chunks
            orphans = conn.execute(
                sa.select(sa.func.count())
                .select_from(chunks)
                .where(~chunks.c.job_id.in_(sa.select(jobs.c.id)))
            ).scalar_one()
        assert orphans == 0
        assert get(store, exact(other)) is not None
    finally:
        store.close()
        engine.dispose()


# ---------------------------------------------------------------------------------- cursors


def test_sql_get_after_reads_only_the_chunks_it_returns(
    sql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gearstash_sql.reading as sql_reading

    store = open_store(sql_url)
    try:
        key = new_key()
        events = [ev(EventKind.STARTED, key, T0, function=b"f")]
        for i in range(300):
            events.append(ev(EventKind.DATA, key, T0 + i, payload=b"%d" % i * 100))
            if i % 100 == 0:
                events.append(ev(EventKind.STATUS, key, T0 + i, numerator=i, denominator=300))
                events.append(ev(EventKind.WARNING, key, T0 + i, payload=b"w%d" % i))
        store.write(events)
        fetched: list[int] = []
        real = sql_reading._record

        def counting(row: Any, chunk_rows: dict[int, list[Any]], now: float) -> JobRecord:
            fetched.append(len(chunk_rows.get(row[0], ())))
            return real(row, chunk_rows, now)

        monkeypatch.setattr(sql_reading, "_record", counting)
        statements = count_reads(store)
        whole = JobRecord.from_events(key, events)
        for after in (0, 1, 150, 298, 299, 300, 301, 10**6, 1 << 62):
            fetched.clear()
            statements.clear()
            got = get_after(store, exact(key), after)
            assert got is not None and got.data == whole.data[after:]
            assert got.data_offset == after
            assert (got.warnings, got.status) == (whole.warnings, whole.status)
            assert fetched == [len(got.data) + 6]  # the data returned, 3 warnings, 3 status
            assert len(statements) == 1
        assert get_after(store, JobRef(new_handle("none")), 5) is None
    finally:
        store.close()


# ---------------------------------------------------------------------------------- push


def _notify_in_child(url: str, key: JobKey, delay: float) -> None:
    time.sleep(delay)
    store = open_store(url)
    try:
        store.write([ev(EventKind.DATA, key, T0 + 1, payload=b"from the child")])
    finally:
        store.close()


@pytest.mark.postgres
def test_postgres_notify_wakes_a_watch_in_another_process(postgres_url: str) -> None:
    store = open_store(postgres_url)
    try:
        assert "push" in store.capabilities
        key, other = new_key(), new_key()
        store.write([ev(EventKind.STARTED, key, T0), ev(EventKind.STARTED, other, T0)])
        watcher = watch(store, [JobRef(key.handle)])
        try:
            assert watcher.wait(0) is False
            store.write([ev(EventKind.DATA, other, T0 + 1, payload=b"not watched")])
            assert watcher.wait(0.2) is False  # another job's write does not wake it
            child = processes().Process(target=_notify_in_child, args=(postgres_url, key, 0.2))
            child.start()
            started = time.monotonic()
            assert watcher.wait(30) is True
            assert time.monotonic() - started < 20
            child.join(timeout=30)
            assert child.exitcode == 0
            got = get_after(store, exact(key), 0)
            assert got is not None and got.data == [b"from the child"]
        finally:
            watcher.close()
        # several jobs' events in one call (the general path) and delete() notify too
        watcher = watch(store, [exact(key), exact(other)])
        try:
            store.write([ev(EventKind.DATA, key, T0 + 2), ev(EventKind.DATA, other, T0 + 2)])
            assert watcher.wait(5) is True
            store.delete([exact(other)])  # type: ignore[attr-defined]
            assert watcher.wait(5) is True
        finally:
            watcher.close()
    finally:
        store.close()


@pytest.mark.postgres
def test_postgres_watch_close_reuse_and_lost_connection(postgres_url: str) -> None:
    """close() from another thread ends a wait; closed watches' connections are reused; a
    listener connection the server ends is replaced (the wait answers True: re-read)."""
    store = open_store(postgres_url)
    try:
        key = new_key()
        watcher: Any = watch(store, [exact(key)])
        closer = threading.Timer(0.1, watcher.close)
        closer.start()
        started = time.monotonic()
        assert watcher.wait(30) is False
        assert time.monotonic() - started < 10
        closer.join()
        assert watcher.wait(0) is False  # closed
        listeners = store._listeners  # type: ignore[attr-defined]
        assert len(listeners._idle) == 1
        watcher = watch(store, [exact(key)])
        assert len(listeners._idle) == 0  # the kept connection
        pid = watcher._conn.info.backend_pid
        admin = sa.create_engine(postgres_url)
        try:
            with admin.begin() as conn:
                conn.execute(sa.text(f"SELECT pg_terminate_backend({pid})"))  # ours
        finally:
            admin.dispose()
        assert watcher.wait(10) is True  # lost: re-read
        assert watcher._conn is not None and watcher._conn.info.backend_pid != pid
        store.write([ev(EventKind.STARTED, key, T0)])
        assert watcher.wait(10) is True  # the new connection listens
        watcher.close()
    finally:
        store.close()


@pytest.mark.postgres
def test_postgres_notify_can_be_turned_off(postgres_url: str) -> None:
    store = open_store(_with(postgres_url, notify=0))
    try:
        assert "push" not in store.capabilities
        key = new_key()
        store.write(full_job(key))
        assert_same(get(store, exact(key)), JobRecord.from_events(key, full_job(key)))
        watcher = watch(store, [exact(key)])
        assert watcher.wait(0.01) is False
        watcher.close()
    finally:
        store.close()
        delete_run_rows(postgres_url)


def test_sql_no_push_outside_postgres(sql_url: str) -> None:
    store = open_store(sql_url)
    try:
        assert ("push" in store.capabilities) == sql_url.startswith("postgresql")
        assert {"expires", "delete", "shared", "persistent"} <= store.capabilities
    finally:
        store.close()
