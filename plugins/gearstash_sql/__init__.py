"""Built-in SQL stores: ``sqlite://``, ``postgresql://``, ``mysql://`` and ``mariadb://``.

One implementation (:class:`~gearstash_sql.store.SqlStore`, on SQLAlchemy Core) for every database;
the tables are described in :mod:`gearstash_sql.schema`. ``sqlite:///PATH`` is the store gearstash
uses when none is configured. A URL without a driver gets the one gearstash installs: psycopg 3 for
PostgreSQL, PyMySQL for MySQL/MariaDB; ``postgresql+DRIVER://`` picks another.

Store options in the URL query (never passed to the driver): ``ttl=SECONDS`` (default TTL, one day;
``0`` keeps jobs for ever), ``tombstone=SECONDS`` (how long an expired job's row stays, reading as
``expired``; 7 days), ``purge_every=N`` (writes between two purge steps; 1,000; ``0``: only
``purge()``), ``notify=0`` (PostgreSQL: no LISTEN/NOTIFY push). See :mod:`gearstash_sql.store`.

Registered through the ``gearstash`` entry-point group exactly as a third-party store would be.
"""

from __future__ import annotations

from gearstash import hookimpl
from gearstash.spine.hookspecs import RegisterStore

from .engine import sqlite_exists
from .store import SqlStore

__all__ = ["SqlStore", "open_sql", "register_stores"]


def open_sql(url: str) -> SqlStore:
    """Open the SQL store at ``url`` (creates the tables if missing). Raises StoreError, ConfigError."""
    return SqlStore(url)


POSTGRES = {"driver": "psycopg", "extra": "postgres"}
MYSQL = {"driver": "pymysql", "extra": "mysql"}


@hookimpl
def register_stores(register: RegisterStore) -> None:
    """Register the SQL schemes."""
    register(
        "sqlite",
        open_sql,
        description="SQLite file (sqlite:///path): the default; shared by processes on one host",
        exists=sqlite_exists,
    )
    register(
        "postgresql",
        open_sql,
        description="PostgreSQL (psycopg 3 unless postgresql+DRIVER://); shared by hosts",
        **POSTGRES,
    )
    register("postgres", open_sql, description="PostgreSQL (alias of postgresql://)", **POSTGRES)
    register(
        "mysql",
        open_sql,
        description="MySQL or MariaDB (PyMySQL unless mysql+DRIVER://)",
        **MYSQL,
    )
    register(
        "mariadb", open_sql, description="MariaDB (PyMySQL unless mariadb+DRIVER://)", **MYSQL
    )
