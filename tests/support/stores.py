"""Store helpers the store tests share, and the SQL fixtures (a pytest plugin, loaded by
conftest.py): ``sql_url`` (each SQL database of the session; this run's rows deleted after the
test) and ``private_sql_url`` (a new SQLite file, PostgreSQL schema or MariaDB database).

The jobs are named on servers unique to this run (``gs{RUN}-...``, see ``gearstash.testing.contract``).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from gearstash.model.records import Event, EventKind, JobKey, JobRecord, JobRef
from gearstash.store.contract import Store
from gearstash.testing import contract as testing

RUN = testing.RUN  # the contract suite's servers are gs{RUN}-...: delete_run_rows finds them
T0 = testing.T0  # recent (not expired), full float precision
full_job = testing.full_job  # started, 3 data, warning, 2 status, completed
assert_same = testing.assert_same  # field by field, except expires_at
new_server = testing.new_server  # a job-server name unique to this run and call
new_handle = testing.new_handle  # a handle unique to this run and call
new_key = testing.new_key  # a job key no other test uses
_numbers = iter(range(10**9))

SQL_STORES = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    pytest.param("mysql", id="mysql", marks=pytest.mark.mysql),
]


def ev(kind: EventKind, key: JobKey, at: float, **kwargs: Any) -> Event:
    return Event(kind, key, at, **kwargs)


def get(store: Store, ref: JobRef) -> JobRecord | None:
    return store.get_many([ref])[0]


def exact(key: JobKey) -> JobRef:
    return JobRef(key.handle, key.server, key.unique)


def processes() -> Any:
    """A multiprocessing context whose children start fast and share nothing with the test.

    forkserver: each child forks from a clean server process that has gearstash and the drivers
    imported already (spawn would import them again for every child).
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(
        ["sqlalchemy", "psycopg", "pymysql", "gearstash.spine.manager", "gearstash_sql"]
    )
    return ctx


def sql_url_for(request: pytest.FixtureRequest, kind: str) -> str:
    """The session's URL of SQL database ``kind`` (sqlite: a file of this test)."""
    if kind == "sqlite":
        return str(request.getfixturevalue("tmp_sqlite_url"))
    if kind == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    if kind == "mysql":
        return str(request.getfixturevalue("mysql_url"))
    return "memory://"


def delete_run_rows(url: str) -> None:
    """Delete this run's rows from a SQL database the session's tests share."""
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


class CountingCursor:
    """A DBAPI cursor that notes each ``execute`` (one round trip) and passes everything on."""

    def __init__(self, cursor: Any, statements: list[str]) -> None:
        self._cursor = cursor
        self._statements = statements

    def execute(self, sql: str, *params: Any) -> Any:
        self._statements.append(sql)
        return self._cursor.execute(sql, *params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


def count_reads(store: Store) -> list[str]:
    """The statements this thread's reads send from now on (one per round trip)."""
    reader = store._readers.get()  # type: ignore[attr-defined]
    statements: list[str] = []
    reader.cursor = CountingCursor(reader.cursor, statements)
    return statements


def raw_engine(url: str) -> sa.Engine:
    """An engine on the store's tables (the store's own options removed from the URL)."""
    from gearstash_sql.engine import parse_url

    return sa.create_engine(parse_url(url).url)


@pytest.fixture(params=SQL_STORES)
def sql_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each SQL database of the session in turn; this run's rows deleted afterwards."""
    url = sql_url_for(request, request.param)
    yield url
    delete_run_rows(url)


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
