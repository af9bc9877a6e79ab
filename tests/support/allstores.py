"""Every built-in store as a pytest parameter, for tests that must hold on all of them
(test_hostile, test_payloads).

``ALL_STORES`` parametrizes a fixture; ``open_kind(request, kind)`` gives the URL of that store for
this test and a cleanup function: a named memory store, a SQLite file of the test, the shared
PostgreSQL/MariaDB databases (rows of this run deleted afterwards), a Redis key prefix of the
test's own on db 15 (its keys deleted afterwards), and the session memcached (flushed first).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable

import pytest

from gearstash.testing import contract as testing
from support.stores import delete_run_rows

ALL_STORES = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    pytest.param("mysql", id="mysql", marks=pytest.mark.mysql),
    pytest.param("redis", id="redis"),
    pytest.param("memcache", id="memcache"),
]
SQL_KINDS = ("sqlite", "postgres", "mysql")
SHARED_KINDS = ("postgres", "mysql")  # databases other runs share: tag keys with the run

_numbers = itertools.count()


def open_kind(request: pytest.FixtureRequest, kind: str) -> tuple[str, Callable[[], None]]:
    """``(store URL, cleanup)`` of store ``kind`` for this test."""
    if kind == "memory":
        return f"memory://allstores-{uuid.uuid4().hex}", lambda: None
    if kind == "sqlite":
        return str(request.getfixturevalue("tmp_sqlite_url")), lambda: None
    if kind in SHARED_KINDS:
        url = str(request.getfixturevalue("postgres_url" if kind == "postgres" else "mysql_url"))
        return url, lambda: delete_run_rows(url)
    if kind == "redis":
        import redis

        base = str(request.getfixturevalue("redis_url"))
        prefix = f"gsa{testing.RUN}x{next(_numbers)}"

        def cleanup() -> None:
            client = redis.Redis.from_url(base)
            try:
                keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
                for start in range(0, len(keys), 500):
                    client.delete(*keys[start : start + 500])
            finally:
                client.close()

        return f"{base}?prefix={prefix}", cleanup
    if kind == "memcache":
        return f"memcache://{request.getfixturevalue('memcached')}", lambda: None
    raise AssertionError(f"unknown store kind {kind}")
