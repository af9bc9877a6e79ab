"""Read replicas of the SQL stores (``?read_url=``): reads go to the replica, writes to the
primary, the replica's password stays hidden, and a lagging replica never hides a job.

Real replication on loopback: a private PostgreSQL primary and a streaming hot standby made by
``pg_basebackup -R``; a private MariaDB primary with a binary log and a replica following it by
GTID. A test tells which server answered by pausing the replica (PostgreSQL: WAL replay
paused; MariaDB: ``STOP SLAVE``): a change made on the primary then is on the primary only.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from support.need import SETUP_HINT, need

from gearstash.errors import ConfigError, StoreError
from gearstash.model.records import Event, EventKind, JobKey, JobRef, State
from gearstash.spine.manager import open_store
from gearstash.store.contract import JobFilter, Store, delete, get_after
from gearstash.store.urls import redact_url, scrub, url_secrets
from gearstash.testing.replication import Replica, follow_mariadb, sql_value
from gearstash.testing.servers import (
    PrivateServer,
    ServerMissing,
    free_port,
    mariadb_spec,
    postgres_spec,
)

SERVER = "127.0.0.1:4730"
REPLICA_SECRET = "r3plica-Secret"


def _started(server: PrivateServer) -> PrivateServer:
    try:
        server.__enter__()
    except ServerMissing as exc:  # pragma: no cover - a machine without the servers
        need(False, f"{exc}: {SETUP_HINT}")
    return server


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ],
)
def replication(request: pytest.FixtureRequest) -> Iterator[Replica]:
    """A running primary and a replica that follows it, of each SQL family in turn."""
    made: list[PrivateServer] = []
    try:
        if request.param == "postgresql":
            try:
                primary_spec = postgres_spec()
            except ServerMissing as exc:
                need(False, f"{exc}: {SETUP_HINT}")
                raise
            primary = _started(PrivateServer(primary_spec))
            made.append(primary)
            replica = _started(PrivateServer(postgres_spec(standby_of=primary)))
            made.append(replica)
        else:
            try:
                primary_spec = mariadb_spec(server_id=1, binlog=True)
            except ServerMissing as exc:
                need(False, f"{exc}: {SETUP_HINT}")
                raise
            primary = _started(PrivateServer(primary_spec))
            made.append(primary)
            replica = _started(PrivateServer(mariadb_spec(server_id=2)))
            made.append(replica)
            follow_mariadb(primary, replica)
        _add_reader(primary.url, request.param)
        pair = Replica(request.param, primary, replica)
        pair.caught_up()
        yield pair
    finally:
        for server in reversed(made):
            server.close()


def _add_reader(url: str, family: str) -> None:
    """Make the role ``reader`` (password :data:`REPLICA_SECRET`) that may only SELECT, on the
    primary: replication brings it to the replica. (PostgreSQL's private servers trust loopback
    logins, so there the password is sent and ignored.)"""
    if family == "postgresql":
        statements = [
            f"CREATE ROLE reader LOGIN PASSWORD '{REPLICA_SECRET}'",
            "GRANT USAGE ON SCHEMA public TO reader",
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO reader",
        ]
    else:
        statements = [
            f"CREATE USER 'reader'@'127.0.0.1' IDENTIFIED BY '{REPLICA_SECRET}'",
            "GRANT SELECT ON test.* TO 'reader'@'127.0.0.1'",
        ]
    for statement in statements:
        sql_value(url, statement)


def _with_password(url: str, password: str, user: str = "reader") -> str:
    """``url`` as ``user`` with ``password``."""
    parsed = sa.make_url(url).set(username=user, password=password)
    return parsed.render_as_string(hide_password=False)


def _replicated_url(pair: Replica) -> str:
    """The primary's URL with ``?read_url=`` naming the replica, as the SELECT-only reader."""
    replica = _with_password(pair.replica.url, REPLICA_SECRET)
    return f"{pair.primary.url}?ttl=0&read_url={quote(replica, safe='')}"


def _rows(url: str, handle: bytes) -> int:
    """How many job rows with ``handle`` the database at ``url`` holds (asked directly)."""
    sql = "SELECT COUNT(*) FROM gearstash_jobs WHERE handle = :handle"
    return int(sql_value(url, sql, {"handle": handle}))


def _key(name: str) -> JobKey:
    return JobKey(SERVER, f"H:replica:{name}".encode(), name.encode())


def _start(store: Store, key: JobKey) -> None:
    store.write([Event(EventKind.STARTED, key, 1.0, function=b"f", worker="w")])
    store.write([Event(EventKind.DATA, key, 2.0, b"chunk")])


def _finish(store: Store, key: JobKey, result: bytes) -> None:
    store.write([Event(EventKind.COMPLETED, key, 3.0, result)])


def _ref(key: JobKey) -> JobRef:
    return JobRef(key.handle, key.server, key.unique)


def test_reads_go_to_the_replica_and_writes_to_the_primary(replication: Replica) -> None:
    pair = replication
    store = open_store(_replicated_url(pair))
    try:
        early, late, running, never = (_key(n) for n in ("early", "late", "running", "never"))
        _start(store, early)
        _finish(store, early, b"early result")
        _start(store, running)
        pair.pause()
        try:
            # a delete is a write: the primary loses the row, the paused replica keeps it
            assert delete(store, [_ref(early)]) == 1
            assert _rows(pair.primary.url, early.handle) == 0
            assert _rows(pair.replica.url, early.handle) == 1
            # so a read that still finds it was answered by the replica...
            (record,) = store.get_many([_ref(early)])
            assert record is not None and record.state is State.COMPLETE
            assert record.result == b"early result" and record.data == [b"chunk"]
            # ...and so do listings and counts
            listed = [s.key.handle for s in store.list_jobs(JobFilter(), 10, None).jobs]
            assert early.handle in listed
            assert store.count_by_state(JobFilter()).get(State.COMPLETE) == 1

            # writes while the replica is paused reach the primary only
            _start(store, late)
            _finish(store, late, b"late result")
            _finish(store, running, b"ran")
            assert _rows(pair.primary.url, late.handle) == 1
            assert _rows(pair.replica.url, late.handle) == 0
            # read-your-writes: the replica has no record of "late", and only a running
            # record of "running": both come from the primary
            got = store.get_many([_ref(early), _ref(late), _ref(running), _ref(never)])
            assert [r.state if r else None for r in got] == [
                State.COMPLETE,
                State.COMPLETE,
                State.COMPLETE,
                None,
            ]
            assert got[1] is not None and got[1].result == b"late result"
            assert got[2] is not None and got[2].result == b"ran"
            (single,) = store.get_many([_ref(late)])
            assert single is not None and single.result == b"late result"
            after = get_after(store, _ref(running), 1)
            assert after is not None and after.state is State.COMPLETE and after.data == []
            # listings are the replica's: they lag
            listed = [s.key.handle for s in store.list_jobs(JobFilter(), 10, None).jobs]
            assert late.handle not in listed and early.handle in listed
        finally:
            pair.resume()
        (gone,) = store.get_many([_ref(early)])
        assert gone is None
        listed = [s.key.handle for s in store.list_jobs(JobFilter(), 10, None).jobs]
        assert late.handle in listed and early.handle not in listed
        assert store.count_by_state(JobFilter()).get(State.COMPLETE) == 2
    finally:
        delete(store, [_ref(k) for k in (_key("late"), _key("running"))])
        store.close()


def test_the_replica_password_stays_hidden(replication: Replica) -> None:
    pair = replication
    secret = "Hidden-Replica-Pw"
    down = sa.make_url(pair.replica.url).set(port=free_port(), password=secret)
    down_url = down.render_as_string(hide_password=False)
    url = f"{pair.primary.url}?read_url={quote(down_url, safe='')}"
    store = open_store(url)
    try:
        assert secret not in store.url and secret not in repr(store)
        assert "***" in store.url
        key = _key("hidden")
        _start(store, key)  # writes reach the primary while the replica is down
        assert _rows(pair.primary.url, key.handle) == 1
        with pytest.raises(StoreError) as caught:
            store.get_many([_ref(key)])
        message = str(caught.value)
        assert "read from the replica" in message and "***" in message
        assert secret not in message and quote(secret) not in message
        with pytest.raises(StoreError) as caught:
            store.list_jobs(JobFilter(), 5, None)
        assert secret not in str(caught.value) and "list jobs" in str(caught.value)
        delete(store, [_ref(key)])
    finally:
        store.close()


def test_read_url_must_name_a_replica_of_the_same_kind(replication: Replica) -> None:
    pair = replication
    other = "sqlite:////tmp/x.db" if pair.family != "sqlite" else ""
    for bad in (
        f"sqlite:////tmp/gs-never.db?read_url={quote(pair.replica.url, safe='')}",
        f"{pair.primary.url}?read_url={quote(other, safe='')}",
        "{}?read_url={}".format(
            pair.primary.url,
            quote(
                _with_password(
                    "postgresql+psycopg2://u@127.0.0.1:1/test"
                    if pair.family == "postgresql"
                    else "mysql+mysqldb://u@127.0.0.1:1/test",
                    REPLICA_SECRET,
                ),
                safe="",
            ),
        ),
    ):
        with pytest.raises(ConfigError) as caught:
            open_store(bad)
        assert "read_url" in str(caught.value) and REPLICA_SECRET not in str(caught.value)


def test_a_nested_url_keeps_its_secrets() -> None:
    replica = "postgresql://reader:p%40ss%20word@replica:5433/db?sslmode=require"
    url = f"postgresql://writer:main-pw@primary/db?ttl=5&read_url={quote(replica, safe='')}"
    shown = redact_url(url)
    assert "main-pw" not in shown and "p%40ss" not in shown and "p%2540ss" not in shown
    assert shown.startswith("postgresql://writer:***@primary/db?ttl=5&read_url=")
    assert "reader%3A***%40replica%3A5433" in shown
    secrets = set(url_secrets(url))
    assert {"main-pw", "p@ss word", "p%40ss%20word", "p%2540ss%2520word"} <= secrets
    text = f"failed for p@ss word, p%40ss%20word and {url}"
    assert scrub(text, url) == f"failed for ***, *** and {shown}"
    # a nested URL with no password is shown as it is
    plain = f"postgresql://primary/db?read_url={quote('postgresql://replica/db', safe='')}"
    assert redact_url(plain) == plain and url_secrets(plain) == []
