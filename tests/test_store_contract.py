"""The store contract (``gearstash.store.Store``), run against every built-in store.

The contract tests are plain functions of a ``store`` fixture (opened with ``open_store`` so the
entry-point registration is exercised too): memory, SQLite, PostgreSQL and MariaDB. They name their
jobs on servers unique to this run and test (``_server()``), so the shared PostgreSQL/MariaDB
databases can hold other runs' rows, and the fixture deletes this run's rows afterwards.

The tests after "SQL store" check what only the SQL store promises (schema, URLs, limits).
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import multiprocessing
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from gearstash.errors import StoreError
from gearstash.plugins import open_store
from gearstash.records import Event, EventKind, JobError, JobKey, JobRecord, JobRef, State
from gearstash.store import Store

RUN = uuid.uuid4().hex[:10]
_numbers = itertools.count()

STORES = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    pytest.param("mysql", id="mysql", marks=pytest.mark.mysql),
]
SQL_STORES = STORES[1:]

T0 = float(int(time.time())) + 0.123456  # recent (not expired), full float precision


def _processes() -> Any:
    """A multiprocessing context whose children start fast and share nothing with the test.

    forkserver: each child forks from a clean server process that has gearstash and the drivers
    imported already (spawn would import them again for every child).
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(
        ["sqlalchemy", "psycopg", "pymysql", "gearstash.plugins", "gearstash_sql"]
    )
    return ctx


def _server(tag: str = "s") -> str:
    """A job-server name unique to this run and call."""
    return f"gs{RUN}-{next(_numbers)}-{tag}.test:4730"


def _handle(tag: str = "") -> bytes:
    """A handle unique to this run and call (other runs may share the database)."""
    return f"H:{RUN}:{next(_numbers)}{tag}".encode()


def _key(server: str | None = None, unique: bytes = b"u") -> JobKey:
    return JobKey(server or _server(), _handle(), unique)


def ev(kind: EventKind, key: JobKey, at: float, **kwargs: Any) -> Event:
    return Event(kind, key, at, **kwargs)


def full_job(key: JobKey) -> list[Event]:
    """started, 3 data, warning, 2 status, completed."""
    return [
        ev(EventKind.STARTED, key, T0, function=b"resize", worker="host-1.42"),
        ev(EventKind.DATA, key, T0 + 0.1, payload=b"one"),
        ev(EventKind.DATA, key, T0 + 0.2, payload=b"two"),
        ev(EventKind.WARNING, key, T0 + 0.3, payload=b"careful"),
        ev(EventKind.STATUS, key, T0 + 0.4, numerator=1, denominator=3),
        ev(EventKind.DATA, key, T0 + 0.5, payload=b"three"),
        ev(EventKind.STATUS, key, T0 + 0.6, numerator=3, denominator=3),
        ev(EventKind.COMPLETED, key, T0 + 0.7, payload=b"done"),
    ]


def get(store: Store, ref: JobRef) -> JobRecord | None:
    return store.get_many([ref])[0]


def assert_same(got: JobRecord | None, want: JobRecord) -> None:
    """Field by field, so a failure names the field."""
    assert got is not None, f"no record for {want.key}"
    for field in dataclasses.fields(JobRecord):
        if field.name == "expires_at":  # the store's TTL decides; tested on its own
            continue
        assert getattr(got, field.name) == getattr(want, field.name), field.name


def sql_url_for(request: pytest.FixtureRequest, kind: str) -> str:
    if kind == "sqlite":
        return str(request.getfixturevalue("tmp_sqlite_url"))
    if kind == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    if kind == "mysql":
        return str(request.getfixturevalue("mysql_url"))
    return "memory://"


def delete_run_rows(url: str) -> None:
    """Delete this run's rows from a shared SQL database."""
    if url.startswith(("memory:", "sqlite:")):
        return
    from gearstash_sql.schema import chunks, jobs

    engine = sa.create_engine(url)
    try:
        mine = jobs.c.server.like(f"gs{RUN}-%")
        with engine.begin() as conn:
            conn.execute(
                chunks.delete().where(chunks.c.job_id.in_(sa.select(jobs.c.id).where(mine)))
            )
            conn.execute(jobs.delete().where(mine))
    finally:
        engine.dispose()


@pytest.fixture(params=STORES)
def store_url(request: pytest.FixtureRequest) -> Iterator[str]:
    url = sql_url_for(request, request.param)
    yield url
    delete_run_rows(url)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(params=SQL_STORES)
def sql_url(request: pytest.FixtureRequest) -> Iterator[str]:
    url = sql_url_for(request, request.param)
    yield url
    delete_run_rows(url)


# ---------------------------------------------------------------------------------- the contract


def test_full_job_round_trip(store: Store) -> None:
    key = _key()
    events = full_job(key)
    store.write(events[:1])
    store.write(events[1:4])
    store.write(events[4:])
    want = JobRecord.from_events(key, events)
    assert want.state is State.COMPLETE and want.data == [b"one", b"two", b"three"]
    assert_same(get(store, JobRef(key.handle, key.server, key.unique)), want)


def test_one_batch_equals_many(store: Store) -> None:
    one, many = _key(), _key()
    store.write(full_job(one))
    for event in full_job(many):
        store.write([event])
    got_one, got_many = store.get_many([JobRef(one.handle), JobRef(many.handle)])
    assert_same(got_one, JobRecord.from_events(one, full_job(one)))
    assert_same(got_many, JobRecord.from_events(many, full_job(many)))


def test_exception(store: Store) -> None:
    key = _key()
    events = [
        ev(EventKind.STARTED, key, T0, function=b"f", worker="w"),
        ev(EventKind.DATA, key, T0 + 1, payload=b"partial"),
        ev(EventKind.EXCEPTION, key, T0 + 2, payload=b"boom \xff", traceback="Traceback...\n  x"),
    ]
    store.write(events)
    got = get(store, JobRef(key.handle, key.server))
    assert_same(got, JobRecord.from_events(key, events))
    assert got is not None and got.state is State.FAILED
    assert got.error == JobError("exception", "boom \ufffd", "Traceback...\n  x")
    assert got.result is None and got.finished_at == T0 + 2


def test_fail(store: Store) -> None:
    key = _key()
    events = [ev(EventKind.STARTED, key, T0), ev(EventKind.FAILED, key, T0 + 1)]
    store.write(events)
    got = get(store, JobRef(key.handle, key.server, key.unique))
    assert_same(got, JobRecord.from_events(key, events))
    assert got is not None and got.error == JobError("fail", "", "")


def test_second_started_is_a_new_attempt(store: Store) -> None:
    key = _key()
    first = full_job(key)
    second = [
        ev(EventKind.STARTED, key, T0 + 10, worker="host-2.7"),  # no function: keeps the old one
        ev(EventKind.DATA, key, T0 + 11, payload=b"again"),
    ]
    store.write(first)
    store.write(second)
    got = get(store, JobRef(key.handle, key.server, key.unique))
    assert_same(got, JobRecord.from_events(key, first + second))
    assert got is not None
    assert (got.attempt, got.data, got.warnings, got.status) == (2, [b"again"], [], [])
    assert (got.result, got.error, got.finished_at, got.function) == (None, None, None, b"resize")
    third = [
        ev(EventKind.STARTED, key, T0 + 20, function=b"other", worker="w3"),
        ev(EventKind.STATUS, key, T0 + 21, numerator=1, denominator=2),
        ev(EventKind.EXCEPTION, key, T0 + 22, payload=b"x"),
    ]
    store.write(third)
    got = get(store, JobRef(key.handle, key.server, key.unique))
    assert_same(got, JobRecord.from_events(key, first + second + third))
    assert got is not None and got.attempt == 3 and got.state is State.FAILED


def test_events_without_started(store: Store) -> None:
    key = _key()
    before = [
        ev(EventKind.DATA, key, T0, payload=b"early"),
        ev(EventKind.STATUS, key, T0 + 1, numerator=5, denominator=9),
    ]
    store.write(before[:1])
    store.write(before[1:])
    got = get(store, JobRef(key.handle, key.server, key.unique))
    assert_same(got, JobRecord.from_events(key, before))
    assert got is not None and (got.attempt, got.started_at, got.state) == (1, None, State.RUNNING)
    later = [
        ev(EventKind.STARTED, key, T0 + 2, function=b"f"),
        ev(EventKind.COMPLETED, key, T0 + 3),
    ]
    store.write(later)
    got = get(store, JobRef(key.handle, key.server, key.unique))
    assert_same(got, JobRecord.from_events(key, before + later))
    assert got is not None and got.attempt == 1 and got.data == [] and got.result == b""


def test_servers_and_uniques_never_mix(store: Store) -> None:
    handle = _handle()
    s1, s2 = _server("one"), _server("two")
    old = JobKey(s1, handle, b"u1")
    other = JobKey(s2, handle, b"u1")
    new = JobKey(s1, handle, b"u2")  # gearmand restarted on s1 and reused the handle
    for n, key in enumerate((old, other, new)):
        store.write(
            [ev(EventKind.STARTED, key, T0 + n), ev(EventKind.DATA, key, T0 + n, payload=b"%d" % n)]
        )
    store.write([ev(EventKind.DATA, old, T0 + 9, payload=b"late")])  # newer data, older job

    def data(ref: JobRef) -> list[bytes] | None:
        record = get(store, ref)
        return None if record is None else record.data

    assert data(JobRef(handle, s1, b"u1")) == [b"0", b"late"]
    assert data(JobRef(handle, s2, b"u1")) == [b"1"]
    assert data(JobRef(handle, s1, b"u2")) == [b"2"]
    assert data(JobRef(handle, s1)) == [b"2"]  # newest job on s1
    assert data(JobRef(handle, s2)) == [b"1"]
    assert data(JobRef(handle)) == [b"2"]  # newest job anywhere
    assert data(JobRef(handle, None, b"u1")) == [b"1"]  # newest with that unique
    assert data(JobRef(handle, s2, b"u2")) is None
    assert data(JobRef(handle, _server("three"))) is None
    assert data(JobRef(handle + b"x")) is None
    record = get(store, JobRef(handle, s1, b"u1"))
    assert record is not None and record.key == old


def test_binary_bytes_kept_exactly(store: Store) -> None:
    key = JobKey(_server(), _handle() + b"\x00\xff", b"\x00\xfe\x80")
    big = bytes(range(256)) * (5 * 4096)  # 5 MiB
    chunks = [b"\x00\x00nul", b"\xff\xfe\x80 not utf-8", b"", big]
    events = [ev(EventKind.STARTED, key, T0, function=b"fn\x00\xff")]
    events += [ev(EventKind.DATA, key, T0 + i, payload=c) for i, c in enumerate(chunks)]
    events += [
        ev(EventKind.WARNING, key, T0 + 5, payload=b"\x00w\xff"),
        ev(EventKind.COMPLETED, key, T0 + 6, payload=b"\x00result\xff" * 1000),
    ]
    store.write(events[:3])
    store.write(events[3:5])
    store.write(events[5:])
    got = get(store, JobRef(key.handle, key.server, key.unique))
    assert got is not None
    assert got.key == key
    assert [len(c) for c in got.data] == [len(c) for c in chunks]
    assert got.data == chunks
    assert_same(got, JobRecord.from_events(key, events))


def test_get_many_in_order_with_missing(store: Store) -> None:
    server = _server()
    keys = [JobKey(server, _handle(), b"%d" % i) for i in range(400)]
    batch: list[Event] = []
    for i, key in enumerate(keys):
        batch += [
            ev(EventKind.STARTED, key, T0 + i, function=b"f"),
            ev(EventKind.DATA, key, T0 + i, payload=b"data %d" % i),
            ev(EventKind.COMPLETED, key, T0 + i, payload=b"%d" % i),
        ]
        if len(batch) >= 150:  # several jobs per write() call
            store.write(batch)
            batch = []
    store.write(batch)
    refs: list[JobRef] = []
    want: list[bytes | None] = []
    for i in range(1000):
        if i % 5 == 4:
            refs.append(JobRef(_handle("missing"), server))
            want.append(None)
        elif i % 7 == 3:
            refs.append(JobRef(keys[i % 400].handle, _server("wrong")))
            want.append(None)
        else:
            key = keys[(i * 37) % 400]
            refs.append(JobRef(key.handle, server) if i % 2 else JobRef(key.handle))
            want.append(b"%d" % ((i * 37) % 400))
    got = store.get_many(refs)
    assert len(got) == 1000
    assert [None if r is None else r.result for r in got] == want
    for ref, record in zip(refs, got, strict=True):
        if record is not None:
            assert record.key.handle == ref.handle and record.data == [b"data " + record.result]
    same = [r for r in got if r is not None and r.key == keys[0]]
    assert len(same) >= 2 and same[0] is not same[1]  # a ref asked twice: two records
    assert store.get_many([]) == []


def _write_concurrently(
    url: str, writer: int, own: JobKey, shared: JobKey, count: int, barrier: Any
) -> None:
    """One writer process: its own job from started to completed, and chunks into a shared job."""
    store = open_store(url)
    try:
        barrier.wait(timeout=60)
        store.write([Event(EventKind.STARTED, own, T0, function=b"f", worker=f"w{writer}")])
        for i in range(count):
            payload = b"%d:%d" % (writer, i)
            store.write([Event(EventKind.DATA, own, T0 + i, payload=payload)])
            store.write([Event(EventKind.DATA, shared, T0 + i, payload=payload)])
        store.write([Event(EventKind.COMPLETED, own, T0 + count, payload=b"%d" % writer)])
    finally:
        store.close()


def test_concurrent_writer_processes(store_url: str, store: Store) -> None:
    if "shared" not in store.capabilities:
        pytest.skip(f"{store.url} is not shared between processes")
    writers, count = 4, 40
    server = _server()
    own = [JobKey(server, _handle(), b"own") for _ in range(writers)]
    shared = JobKey(server, _handle(), b"shared")
    ctx = _processes()
    barrier = ctx.Barrier(writers)
    procs = [
        ctx.Process(target=_write_concurrently, args=(store_url, w, own[w], shared, count, barrier))
        for w in range(writers)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0] * writers
    records = store.get_many([JobRef(k.handle, server, k.unique) for k in [*own, shared]])
    for w, record in enumerate(records[:writers]):
        assert record is not None
        assert record.data == [b"%d:%d" % (w, i) for i in range(count)]
        assert (record.state, record.result, record.attempt) == (State.COMPLETE, b"%d" % w, 1)
    shared_record = records[-1]
    assert shared_record is not None and shared_record.attempt == 1
    assert len(shared_record.data) == writers * count
    for w in range(writers):
        mine = [c for c in shared_record.data if c.startswith(b"%d:" % w)]
        assert mine == [b"%d:%d" % (w, i) for i in range(count)]


def test_long_keys_are_refused_or_kept(store: Store) -> None:
    key = JobKey(_server(), _handle() + b"h" * 300, b"u" * 300)
    event = ev(EventKind.STARTED, key, T0, function=b"f")
    try:
        store.write([event])
    except StoreError as exc:
        assert "255" in str(exc)
        assert get(store, JobRef(key.handle)) is None
    else:
        assert_same(
            get(store, JobRef(key.handle, key.server, key.unique)),
            JobRecord.from_events(key, [event]),
        )


# ---------------------------------------------------------------------------------- SQL store


def test_sql_key_limits(sql_url: str) -> None:
    store = open_store(sql_url)
    try:
        server = _server()
        handle = _handle()
        ok = JobKey(server, handle + b"\xff" * (255 - len(handle)), b"\x00" * 255)
        too_long = JobKey(server, _handle() + b"x" * 255, b"")
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
        server = _server()
        keys = [JobKey(server, _handle(), b"") for _ in range(20)]
        store.write(
            [ev(EventKind.STARTED, k, T0) for k in keys]
            + [ev(EventKind.DATA, k, T0, payload=b"d") for k in keys]
        )
        statements: list[str] = []
        engine = store._engine  # type: ignore[attr-defined]
        sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        refs = [JobRef(keys[i % 20].handle if i % 2 else _handle("none")) for i in range(1200)]
        got = store.get_many(refs)
        assert sum(r is not None for r in got) == 600
        assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) <= 3 * 3
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
    assert version == "1"


def _quoted_key(engine: sa.Engine) -> str:
    return engine.dialect.identifier_preparer.quote("key")


@pytest.fixture(params=SQL_STORES)
def private_sql_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """A SQL database nobody else uses: a new SQLite file, PostgreSQL schema or MariaDB database."""
    name = f"gs_{RUN}_{next(_numbers)}"
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/private/{name}.db"
        return
    base = sql_url_for(request, request.param)
    engine = sa.create_engine(base)
    if request.param == "postgres":
        create, drop = f"CREATE SCHEMA {name}", f"DROP SCHEMA {name} CASCADE"
        url = f"{base}?options=-csearch_path%3D{name}"
    else:
        create, drop = f"CREATE DATABASE {name}", f"DROP DATABASE {name}"
        url = str(sa.make_url(base).set(database=name).render_as_string(hide_password=False))
    with engine.begin() as conn:
        conn.execute(sa.text(create))
    try:
        yield url
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(drop))
        engine.dispose()


def test_sql_newer_schema_is_refused(private_sql_url: str) -> None:
    open_store(private_sql_url).close()
    engine = sa.create_engine(private_sql_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE gearstash_meta SET value = '2' WHERE "
                    + _quoted_key(engine)
                    + " = 'schema_version'"
                )
            )
    finally:
        engine.dispose()
    with pytest.raises(StoreError, match="schema_version 2, newer"):
        open_store(private_sql_url)


def test_sql_tables_created_by_racing_processes(private_sql_url: str) -> None:
    ctx = _processes()
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_open_after, args=(private_sql_url, barrier)) for _ in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
    assert [proc.exitcode for proc in procs] == [0, 0, 0]
    store = open_store(private_sql_url)
    try:
        key = _key()
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
            key = _key()
            store.write(full_job(key))
            assert_same(get(store, JobRef(key.handle)), JobRecord.from_events(key, full_job(key)))
        finally:
            store.close()
    finally:
        delete_run_rows(base_url)


def test_sqlite_memory_is_private_to_the_store() -> None:
    first, second = open_store("sqlite:///:memory:"), open_store("sqlite://")
    try:
        key = _key()
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
        server = _server()
        own = [JobKey(server, _handle(), b"own") for _ in range(workers)]
        shared = JobKey(server, _handle(), b"shared")
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
        store.write([ev(EventKind.STARTED, _key(), T0)])
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
    parent_key, child_key = _key(), _key()
    # daemon: a child that hangs is killed below (and at exit), never left for the session to join
    child = multiprocessing.get_context("fork").Process(
        target=_write_in_child, args=(store, child_key), daemon=True
    )
    try:
        store.write([ev(EventKind.STARTED, parent_key, T0)])
        assert get(store, JobRef(parent_key.handle)) is not None  # a pooled read connection too
        writer = _writers(store).get()
        with store._write_guard:  # type: ignore[attr-defined]  # as if a thread were writing
            child.start()
        child.join(timeout=30)
        assert child.exitcode == 0
        time.sleep(0.05)  # a hang-up caused by the child would have reached us
        store.write([ev(EventKind.COMPLETED, parent_key, T0 + 1, payload=b"ok")])
        assert _writers(store).get() is writer
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
        key = _key()
        store.write([ev(EventKind.STARTED, key, T0)])
        writer = _writers(store).get()
        if kind == "postgres":
            kill = f"SELECT pg_terminate_backend({writer.conn.info.backend_pid})"  # ours
        else:
            kill = f"KILL {writer.conn.thread_id()}"  # ours
        admin = sa.create_engine(url)
        try:
            with admin.begin() as conn:
                conn.execute(sa.text(kill))
        finally:
            admin.dispose()
        deadline = time.monotonic() + 5
        while not writer.poller.poll(0) and time.monotonic() < deadline:
            time.sleep(0.01)
        # one statement, run in autocommit: sent on a dead connection, its fate would be unknown
        store.write([ev(EventKind.COMPLETED, key, T0 + 2, payload=b"after")])
        assert _writers(store).get() is not writer
        got = get(store, JobRef(key.handle, key.server, key.unique))
        assert got is not None and (got.result, got.state) == (b"after", State.COMPLETE)
    finally:
        store.close()
        delete_run_rows(url)
