"""Private servers for the benchmarks: redis-server and memcached on free loopback ports, and a
schema (PostgreSQL) or database (MariaDB) of their own on the shared SQL servers.

Each is a context manager that leaves nothing behind: the processes it started are stopped (by
their own pid) and the schema or database is dropped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

from gearstash.testing.gearmand import free_port

POSTGRES_BASES = (
    "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "postgresql+psycopg://root@127.0.0.1:5432/test",
)
MARIADB_BASE = "mysql+pymysql://root@127.0.0.1:3306/test"
START_TIMEOUT = 10.0


class Private:
    """A server process of our own on 127.0.0.1:<free port>."""

    def __init__(self, binary: str, argv: list[str], port: int) -> None:
        self.port = port
        if shutil.which(binary) is None:
            raise RuntimeError(f"{binary} is not installed")
        self.proc = subprocess.Popen(
            [binary, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not _listening(port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{binary} did not start on 127.0.0.1:{port}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Private:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def redis_server() -> Private:
    """redis-server without persistence (no RDB, no AOF) on a free port."""
    port = free_port()
    argv = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return Private("redis-server", argv, port)


def memcached(megabytes: int = 256) -> Private:
    port = free_port()
    argv = ["-u", "root", "-l", "127.0.0.1", "-p", str(port), "-m", str(megabytes)]
    return Private("memcached", argv, port)


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A SQLAlchemy URL of a fresh schema in PostgreSQL's db ``test`` (dropped afterwards)."""
    import sqlalchemy as sa

    name = f"gsbench_{os.getpid()}"
    problems = []
    for base in POSTGRES_BASES:
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
def mariadb_database() -> Iterator[str]:
    """A SQLAlchemy URL of a fresh database on MariaDB (dropped afterwards)."""
    import sqlalchemy as sa

    name = f"gsbench_{os.getpid()}"
    engine = sa.create_engine(MARIADB_BASE)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE DATABASE IF NOT EXISTS {name}"))
        yield sa.make_url(MARIADB_BASE).set(database=name).render_as_string(hide_password=False)
    finally:
        with contextlib.suppress(Exception), engine.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        engine.dispose()
