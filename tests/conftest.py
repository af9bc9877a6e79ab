"""Fixtures for real servers: gearmand and memcached are started per test on free loopback ports;
PostgreSQL, MariaDB and Redis are expected at their usual loopback ports and only checked.

A missing binary or server skips the test with the reason, except under GEARSTASH_REQUIRE_ALL=1
(CI), where it fails it: see ``servers.need``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import (
    MYSQL_URL,
    POSTGRES_URLS,
    REDIS_URL,
    SETUP_HINT,
    Memcached,
    find_binary,
    find_gearman_tool,
    find_memcached,
    memcached_command,
    need,
    php_has_gearman,
    redis_ping,
    sql_problem,
    tcp_reachable,
)

from gearstash.testing.gearmand import Gearmand, find_gearmand


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the developer's own config file, default store and spools out of the tests: the
    suite gets its own $XDG_CONFIG_HOME and $GEARSTASH_HOME (tests that need others set them)."""
    home = tmp_path_factory.mktemp("home")
    saved = {k: os.environ.get(k) for k in _ISOLATED}
    for name in _ISOLATED:
        os.environ.pop(name, None)
    os.environ["XDG_CONFIG_HOME"] = str(home / "config")
    os.environ["GEARSTASH_HOME"] = str(home / "gearstash")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_ISOLATED = (
    "XDG_CONFIG_HOME",
    "GEARSTASH_HOME",
    "GEARSTASH_CONFIG",
    "GEARSTASH_STORE",
    "GEARSTASH_STORE_FILE",
    "GEARSTASH_SERVERS",
    "GEARSTASH_SPOOL",
    "GEARSTASH_TOKEN_SECRET",
    "GEARSTASH_TOKEN_SECRET_FILE",
)


def _need_gearmand(request: pytest.FixtureRequest) -> None:
    request.node.add_marker(pytest.mark.gearmand)
    need(
        find_gearmand() is not None,
        "gearmand is not installed (Debian package gearman-job-server): " + SETUP_HINT,
    )


@pytest.fixture
def gearmand(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gearmand]:
    """A private gearmand on a free 127.0.0.1 port, started for this test and stopped after it.

    Its log stays in pytest's temp dir (``gearmand.log_path``) for post-mortems.
    """
    _need_gearmand(request)
    server = Gearmand(workdir=tmp_path_factory.mktemp("gearmand"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gearmand_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Gearmand]]:
    """``factory(**kwargs) -> Gearmand``: start one more gearmand (kwargs go to ``Gearmand``).

    Every server it made is stopped at teardown, whatever state the test left it in.
    """
    _need_gearmand(request)
    made: list[Gearmand] = []

    def factory(**kwargs: Any) -> Gearmand:
        kwargs.setdefault("workdir", tmp_path_factory.mktemp("gearmand"))
        server = Gearmand(**kwargs)
        made.append(server)
        server.start()
        return server

    try:
        yield factory
    finally:
        errors: list[BaseException] = []
        for server in reversed(made):
            try:
                server.stop()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def _need_memcached() -> None:
    need(
        find_memcached() is not None,
        "memcached is not installed (Debian package memcached): " + SETUP_HINT,
    )


@pytest.fixture(scope="session")
def _memcached_session() -> Iterator[Memcached]:
    # One server for the session: memcached takes ~1 s to exit on SIGTERM.
    _need_memcached()
    with Memcached() as server:
        yield server


@pytest.fixture
def memcached(_memcached_session: Memcached) -> str:
    """``"127.0.0.1:PORT"`` of a private memcached, emptied (``flush_all``) for this test.

    The server is shared by the session and restarted if a test killed it; a test that wants to
    kill or restart its own server takes ``memcached_server`` instead.
    """
    server = _memcached_session
    if server.pid is None:
        server.start()
    answer = memcached_command(server.host, server.port, "flush_all")
    assert answer == "OK", f"memcached flush_all answered {answer!r}"
    return server.address


@pytest.fixture
def memcached_server() -> Iterator[Memcached]:
    """A memcached of this test's own (the ``Memcached`` object), killed after it."""
    _need_memcached()
    server = Memcached()
    server.start()
    try:
        yield server
    finally:
        server.kill()  # SIGKILL: instant, where SIGTERM takes memcached ~1 s
        server.stop()  # clean up its temp dir


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A SQLAlchemy URL for the ``test`` database on 127.0.0.1:5432 (user postgres, else root)."""
    need(
        tcp_reachable("127.0.0.1", 5432),
        "PostgreSQL is not reachable on 127.0.0.1:5432: start it (db test, trust auth)",
    )
    problems = []
    for url in POSTGRES_URLS:
        problem = sql_problem(url)
        if problem is None:
            return url
        problems.append(f"{url}: {problem}")
    need(False, "PostgreSQL on 127.0.0.1:5432 refused SELECT 1: " + "; ".join(problems))
    raise AssertionError("unreachable")  # need(False, ...) always raises


@pytest.fixture(scope="session")
def mysql_url() -> str:
    """A SQLAlchemy URL for the ``test`` database of MariaDB/MySQL on 127.0.0.1:3306."""
    need(
        tcp_reachable("127.0.0.1", 3306),
        "MariaDB/MySQL is not reachable on 127.0.0.1:3306: start it (root, empty password, db test)",
    )
    problem = sql_problem(MYSQL_URL)
    need(problem is None, f"MariaDB/MySQL on 127.0.0.1:3306 refused SELECT 1: {problem}")
    return MYSQL_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    """``redis://127.0.0.1:6379/15`` once the server answers PING."""
    need(redis_ping("127.0.0.1", 6379), "Redis does not answer PING on 127.0.0.1:6379")
    return REDIS_URL


@pytest.fixture
def tmp_sqlite_url(tmp_path: Path) -> str:
    """A SQLite file URL in this test's temp dir."""
    return f"sqlite:///{tmp_path}/gearstash.db"


@pytest.fixture
def gearman_tool(request: pytest.FixtureRequest) -> str:
    """Path of the C ``gearman`` command-line client/worker."""
    request.node.add_marker(pytest.mark.gearman_tools)
    tool = find_gearman_tool()
    need(
        tool is not None,
        "the C gearman tool is not installed (Debian package gearman-tools): " + SETUP_HINT,
    )
    assert tool is not None
    return tool


@pytest.fixture(scope="session")
def php_gearman() -> str:
    """Path of a php-cli that loads the pecl gearman extension."""
    php = find_binary("php", "/usr/bin/php")
    need(
        php is not None and php_has_gearman(php),
        "php-cli with the gearman extension is not installed (php-cli php-gearman): " + SETUP_HINT,
    )
    assert php is not None
    return php
