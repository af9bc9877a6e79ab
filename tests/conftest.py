"""Fixtures for real servers, all of the suite's own on free loopback ports: gearmand per test;
Redis, memcached, PostgreSQL (initdb) and MariaDB (mariadb-install-db) once per session, started
when a test first asks for them and stopped and removed at the end. Nothing reaches the
machine's standard ports (the ``support.guard`` plugin refuses and reports any try).

A missing binary fails the test; ``GEARSTASH_ALLOW_SKIP=1`` makes it a skip (``support.need``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from support.need import SETUP_HINT, need
from support.seeds import SEED_ENV, seed

from gearstash.testing.gearmand import Gearmand, find_gearmand
from gearstash.testing.servers import (
    PrivateRedisCluster,
    PrivateServer,
    ServerMissing,
    ServerSpec,
    find_binary,
    mariadb_spec,
    memcached_command,
    memcached_spec,
    php_has_extension,
    postgres_spec,
    redis_spec,
)

pytest_plugins = ["support.guard", "support.stores"]

# CI profile: a busy 2-core machine is slow, not wrong; the same examples every run, so a
# submission passes or fails on its code, not on the draw. HYPOTHESIS_PROFILE=explore draws new
# examples each run (and ten times as many): run it to look for new failures, then pin what it
# finds with @example.
settings.register_profile("ci", deadline=None, print_blob=True, derandomize=True)
settings.register_profile("explore", deadline=None, print_blob=True, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_report_header(config: pytest.Config) -> str:
    return f"random seeds: {SEED_ENV}={seed()} (set it to replay this run's random tests)"


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
    "GEARSTASH_WEB_ADMIN",
    "GEARSTASH_WEB_ADMIN_FILE",
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


def private_server(spec: Callable[[], ServerSpec]) -> PrivateServer:
    """A started :class:`PrivateServer` of ``spec()``; a missing binary fails (or skips)."""
    try:
        made = spec()
    except ServerMissing as exc:
        need(False, f"{exc}: {SETUP_HINT}")
        raise  # need(False, ...) always raises
    server = PrivateServer(made)
    server.__enter__()
    return server


@pytest.fixture
def own_server() -> Iterator[Callable[[Callable[[], ServerSpec]], PrivateServer]]:
    """``own_server(spec) -> PrivateServer``: servers of this test's own (e.g. to stop and
    start them), closed and removed at teardown."""
    made: list[PrivateServer] = []

    def factory(spec: Callable[[], ServerSpec]) -> PrivateServer:
        made.append(private_server(spec))
        return made[-1]

    try:
        yield factory
    finally:
        for server in reversed(made):
            server.close()


@pytest.fixture(scope="session")
def memcached_session() -> Iterator[PrivateServer]:
    """The session's memcached (a test that killed it gets it started again by ``memcached``)."""
    server = private_server(memcached_spec)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def memcached(memcached_session: PrivateServer) -> str:
    """``"127.0.0.1:PORT"`` of the session's private memcached, emptied (``flush_all``) for
    this test. A test that wants to kill or restart a server takes ``memcached_server``."""
    server = memcached_session
    if server.pid is None:
        server.start()
    answer = memcached_command(server.host, server.port, "flush_all")
    assert answer == "OK", f"memcached flush_all answered {answer!r}"
    return server.address


@pytest.fixture
def memcached_server(
    own_server: Callable[[Callable[[], ServerSpec]], PrivateServer],
) -> PrivateServer:
    """A memcached of this test's own, removed after it."""
    return own_server(memcached_spec)


def _session_server(spec: Callable[[], ServerSpec]) -> Iterator[PrivateServer]:
    server = private_server(spec)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PrivateServer]:
    """The session's PostgreSQL (initdb'ed in a temp folder, database ``test``, trust auth)."""
    yield from _session_server(postgres_spec)


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[PrivateServer]:
    """The session's MariaDB (mariadb-install-db in a temp folder; database ``test``)."""
    yield from _session_server(mariadb_spec)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[PrivateServer]:
    """The session's Redis (no persistence), db 15."""
    yield from _session_server(lambda: redis_spec(db=15))


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[PrivateRedisCluster]:
    """The session's Redis Cluster: three masters with a replica each (six redis-servers on free
    loopback ports, ``cluster-node-timeout`` 1000 ms), password ``cluster-contract-secret`` (in
    its URL). Tests that stop a node make their own."""
    try:
        cluster = PrivateRedisCluster(password="cluster-contract-secret")
    except ServerMissing as exc:
        need(False, f"{exc}: {SETUP_HINT}")
        raise
    with cluster:
        yield cluster


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PrivateServer) -> str:
    """``postgresql+psycopg://postgres@127.0.0.1:PORT/test`` of the session's PostgreSQL."""
    return postgres_server.url


@pytest.fixture(scope="session")
def mysql_url(mariadb_server: PrivateServer) -> str:
    """``mysql+pymysql://root@127.0.0.1:PORT/test`` of the session's MariaDB."""
    return mariadb_server.url


@pytest.fixture(scope="session")
def redis_url(redis_server: PrivateServer) -> str:
    """``redis://127.0.0.1:PORT/15`` of the session's Redis."""
    return redis_server.url


@pytest.fixture
def tmp_sqlite_url(tmp_path: Path) -> str:
    """A SQLite file URL in this test's temp dir."""
    return f"sqlite:///{tmp_path}/gearstash.db"


@pytest.fixture
def gearman_tool(request: pytest.FixtureRequest) -> str:
    """Path of the C ``gearman`` command-line client/worker."""
    request.node.add_marker(pytest.mark.gearman_tools)
    tool = find_binary("gearman")
    need(
        tool is not None,
        "the C gearman tool is not installed (Debian package gearman-tools): " + SETUP_HINT,
    )
    assert tool is not None
    return tool


@pytest.fixture(scope="session")
def php_gearman() -> str:
    """Path of a php-cli that loads the pecl gearman extension."""
    php = find_binary("php")
    need(
        php is not None and php_has_extension(php, "gearman"),
        "php-cli with the gearman extension is not installed (php-cli php-gearman): " + SETUP_HINT,
    )
    assert php is not None
    return php
