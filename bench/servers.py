"""Servers for the benchmarks: redis-server and memcached of their own on free loopback ports
(the test suite's one harness, :mod:`gearstash.testing.servers`), and a schema (PostgreSQL) or
database (MariaDB) of their own on the machine's SQL servers, as BENCHMARKS.md measured them.

Each is a context manager that leaves nothing behind: the processes it started are stopped (by
their own pid) and the schema or database is dropped.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from gearstash.testing.servers import (
    PrivateRedisCluster,
    PrivateServer,
    mariadb_spec,
    memcached_spec,
    postgres_spec,
    redis_spec,
)

POSTGRES_BASES = (
    "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "postgresql+psycopg://root@127.0.0.1:5432/test",
)
MARIADB_BASE = "mysql+pymysql://root@127.0.0.1:3306/test"


def redis_server() -> PrivateServer:
    """redis-server without persistence (no RDB, no AOF) on a free port (enter it to start)."""
    return PrivateServer(redis_spec())


def redis_cluster() -> PrivateRedisCluster:
    """A Redis Cluster of three masters with a replica each, no persistence (enter it to start)."""
    return PrivateRedisCluster()


def memcached(megabytes: int = 256) -> PrivateServer:
    """memcached with ``megabytes`` of memory on a free port (enter it to start)."""
    return PrivateServer(memcached_spec(memory_mb=megabytes))


@contextlib.contextmanager
def private_postgres() -> Iterator[str]:
    """A schema of its own on a PostgreSQL of the run's own (the test suite's: a free loopback
    port, fsync, full_page_writes and synchronous_commit off), removed afterwards."""
    with PrivateServer(postgres_spec()) as server, postgres_schema((server.url,)) as url:
        yield url


@contextlib.contextmanager
def private_mariadb() -> Iterator[str]:
    """A database of its own on a MariaDB of the run's own (the test suite's: a free loopback
    port, innodb_flush_log_at_trx_commit=0, no binary log), removed afterwards."""
    with PrivateServer(mariadb_spec()) as server, mariadb_database(server.url) as url:
        yield url


@contextlib.contextmanager
def postgres_schema(bases: tuple[str, ...] = POSTGRES_BASES) -> Iterator[str]:
    """A SQLAlchemy URL of a fresh schema in PostgreSQL's db ``test`` (dropped afterwards), on
    the first of ``bases`` that answers."""
    import sqlalchemy as sa

    name = f"gsbench_{os.getpid()}"
    problems = []
    for base in bases:
        engine = sa.create_engine(base)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {name}"))
        except Exception as exc:
            problems.append(f"{base}: {type(exc).__name__}")
            engine.dispose()
            continue
        try:
            yield f"{base}?options=-csearch_path%3D{name}"
        finally:
            with engine.begin() as conn:
                conn.execute(sa.text(f"DROP SCHEMA {name} CASCADE"))
            engine.dispose()
        return
    raise RuntimeError("PostgreSQL unavailable: " + "; ".join(problems))


@contextlib.contextmanager
def mariadb_database(base: str = MARIADB_BASE) -> Iterator[str]:
    """A SQLAlchemy URL of a fresh database on the MariaDB at ``base`` (dropped afterwards)."""
    import sqlalchemy as sa

    name = f"gsbench_{os.getpid()}"
    engine = sa.create_engine(base)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE DATABASE IF NOT EXISTS {name}"))
        yield sa.make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with contextlib.suppress(Exception), engine.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        engine.dispose()
