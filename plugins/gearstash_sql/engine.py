"""Store URL → SQLAlchemy engine, with the per-database settings the store relies on.

* ``sqlite:///path``: the parent folder is created; WAL journal, ``synchronous=NORMAL``, a busy
  timeout of :data:`SQLITE_BUSY_TIMEOUT_MS`; pysqlite in autocommit mode. A write of several
  statements begins with ``BEGIN IMMEDIATE`` (SQLite serialises writers, so a write holds the lock
  from its first statement and never has to upgrade a read lock); a write of one statement runs
  alone, which SQLite starts as a write transaction too. Reads are single statements in
  autocommit (see :mod:`gearstash_sql.reads`). (``cache_size``, ``temp_store`` and a larger
  ``wal_autocheckpoint`` were measured: none made writes cheaper.)
  ``sqlite://`` and ``sqlite:///:memory:`` give a private in-process database on one shared connection.
* ``postgresql://`` / ``postgres://`` use psycopg 3 unless a driver is named (``postgresql+...``).
* ``mysql://`` / ``mariadb://`` use PyMySQL unless a driver is named.

Query options whose name starts with ``gearstash_``, and the store's own options (:data:`OPTIONS`:
``ttl``, ``tombstone``, ``purge_every``, ``notify``, ``read_url``), are for gearstash and never
reach SQLAlchemy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.pool import NullPool, StaticPool

from gearstash.errors import ConfigError
from gearstash.store.urls import redact_url

SQLITE_BUSY_TIMEOUT_MS = 10_000
CONNECT_TIMEOUT_S = 10
_CLIENT_MULTI_STATEMENTS = 1 << 16  # pymysql.constants.CLIENT.MULTI_STATEMENTS (the protocol's)

# backend → default driver (the DBAPI gearstash installs with its extras)
DEFAULT_DRIVERS = {
    "sqlite": "pysqlite",
    "postgresql": "psycopg",
    "mysql": "pymysql",
    "mariadb": "pymysql",
}
ALIASES = {"postgres": "postgresql"}
# the store's own URL query options (see gearstash_sql.store), removed before SQLAlchemy sees the URL
OPTIONS = frozenset({"ttl", "tombstone", "purge_every", "notify", "read_url"})


@dataclass(frozen=True, slots=True)
class Target:
    """What a store URL points at."""

    url: sa.URL  # what SQLAlchemy gets: driver filled in, gearstash_* and OPTIONS removed
    family: str  # "sqlite", "postgresql" or "mysql" (MariaDB included)
    memory: bool  # an in-process SQLite database
    password: str  # to scrub from error messages ("" if none)


def parse_url(url: str) -> Target:
    """Check ``url`` and resolve the driver. Raises ConfigError for a URL that is not a SQL store."""
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        raise ConfigError(f"cannot parse SQL store URL {redact_url(url)!r}") from None
    backend, _, driver = parsed.drivername.lower().partition("+")
    backend = ALIASES.get(backend, backend)
    if backend not in DEFAULT_DRIVERS:
        raise ConfigError(f"not a SQL store URL: {redact_url(url)!r}")
    driver = driver or DEFAULT_DRIVERS[backend]
    drivername = backend if backend == "sqlite" and driver == "pysqlite" else f"{backend}+{driver}"
    options = [
        name
        for name in parsed.query
        if name.lower().startswith("gearstash_") or name.lower() in OPTIONS
    ]
    parsed = parsed.set(drivername=drivername).difference_update_query(options)
    memory = backend == "sqlite" and parsed.database in (None, "", ":memory:")
    family = "mysql" if backend == "mariadb" else backend
    return Target(parsed, family, memory, parsed.password or "")


def read_target(primary: Target, read_url: str) -> Target:
    """The read replica a store URL's ``?read_url=`` names, checked against the ``primary``.

    The replica must be the same database family over the same driver (the reads are compiled
    once for one dialect), and SQLite has none. Raises ConfigError (no secret in the message).
    """
    if primary.family == "sqlite":
        raise ConfigError("read_url: SQLite stores have no read replica")
    replica = parse_url(read_url)
    if replica.url.drivername != primary.url.drivername:
        raise ConfigError(
            f"read_url {redact_url(read_url)!r} must name the same database and driver as the "
            f"store ({primary.url.drivername}), not {replica.url.drivername}"
        )
    return replica


def make_engine(target: Target, *, pooled: bool = True) -> sa.Engine:
    """An engine for ``target`` (created once per store). May raise OSError (SQLite folder).

    ``pooled=False``: a pool-less engine, whose every connection is new; the store takes its write
    connections from one and keeps them (see :mod:`gearstash_sql.writers`).
    """
    kwargs: dict[str, Any] = {"hide_parameters": True}
    connect_args: dict[str, Any] = {}
    query = {name.lower() for name in target.url.query}
    if not pooled:
        kwargs["poolclass"] = NullPool
    if target.family == "sqlite":
        # gearstash issues BEGIN itself (BEGIN IMMEDIATE for a write: gearstash_sql.writing and
        # the schema migration); pysqlite must not.
        connect_args.update(isolation_level=None, check_same_thread=False)
        if target.memory:
            kwargs["poolclass"] = StaticPool
        else:
            assert target.url.database is not None
            create_private_file(Path(target.url.database))
    elif target.family == "postgresql":
        if "connect_timeout" not in query:
            connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    else:
        if pooled:
            kwargs["pool_recycle"] = 3600  # MariaDB drops idle connections after wait_timeout
            # Every gearstash transaction ends in COMMIT or ROLLBACK; PyMySQL would spend a round
            # trip on the pool's extra ROLLBACK at each check-in.
            kwargs["pool_reset_on_return"] = None
        if "connect_timeout" not in query:
            connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    engine = sa.create_engine(target.url, connect_args=connect_args, **kwargs)
    if target.family == "sqlite":
        _sqlite_hooks(engine, wal=not target.memory)
    elif not pooled and multi_statements(target):
        _multi_statements_hook(engine)
    return engine


def create_private_file(path: Path) -> None:
    """Make ``path`` (a SQLite file) if missing, readable by its owner only (0600), in a folder
    made 0700 when missing: job output can be private. SQLite gives its -wal and -shm files the
    database file's mode. An existing file or folder keeps its mode. Raises OSError."""
    folder = path.parent
    if not folder.is_dir():
        folder.mkdir(parents=True, mode=0o700, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def sqlite_exists(url: str) -> bool:
    """True when the SQLite store at ``url`` is there already (an in-memory one always is)."""
    target = parse_url(url)
    return target.memory or Path(target.url.database or "").exists()


def multi_statements(target: Target) -> bool:
    """True when the write connections take several statements per query (MySQL over PyMySQL)."""
    return target.family == "mysql" and target.url.get_driver_name() == "pymysql"


def _multi_statements_hook(engine: sa.Engine) -> None:
    """PyMySQL: ``CLIENT.MULTI_STATEMENTS`` on top of the flags SQLAlchemy sets (FOUND_ROWS)."""

    @event.listens_for(engine, "do_connect")
    def _on_connect(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        cparams["client_flag"] = int(cparams.get("client_flag", 0)) | _CLIENT_MULTI_STATEMENTS


def _sqlite_hooks(engine: sa.Engine, *, wal: bool) -> None:
    """Per-connection PRAGMAs."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            if wal:
                cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()
