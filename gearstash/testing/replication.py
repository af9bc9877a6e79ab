"""Replication between the suite's private SQL servers (:mod:`gearstash.testing.servers`).

A PostgreSQL standby follows its primary from the start (``postgres_spec(standby_of=...)``); a
MariaDB replica is pointed at its primary by :func:`follow_mariadb`. :class:`Replica` then
waits for the replica to catch up, and pauses and resumes applying the primary's changes, so a
test can tell which server a read reached: a change made on the primary while the replica is
paused is on the primary only.

Nothing here imports pytest; SQLAlchemy (with the store's drivers) does the talking.
"""

from __future__ import annotations

import time
from typing import Any

from .servers import PrivateServer


def sql_value(url: str, sql: str, params: dict[str, Any] | None = None) -> Any:
    """Run ``sql`` (named ``:params``) at ``url`` on a new connection in autocommit; its one
    value, or None when it returns no rows."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            result = conn.execute(sa.text(sql), params or {})
            return result.scalar() if result.returns_rows else None
    finally:
        engine.dispose()


def follow_mariadb(primary: PrivateServer, replica: PrivateServer) -> None:
    """Make the running MariaDB ``replica`` replicate the running ``primary`` (started with a
    binary log and another server id) from the start of its binary log, by GTID, as root."""
    sql_value(
        replica.url,
        f"CHANGE MASTER TO MASTER_HOST='{primary.host}', MASTER_PORT={primary.port}, "
        "MASTER_USER='root', MASTER_PASSWORD='', MASTER_USE_GTID=slave_pos",
    )
    sql_value(replica.url, "START SLAVE")


class Replica:
    """A running replica of a running primary: PostgreSQL (``family="postgresql"``, a streaming
    standby) or MariaDB (``family="mysql"``, a binlog replica)."""

    def __init__(self, family: str, primary: PrivateServer, replica: PrivateServer) -> None:
        if family not in ("postgresql", "mysql"):
            raise ValueError(f"no replication for {family!r}")
        self.family = family
        self.primary = primary
        self.replica = replica

    def caught_up(self, timeout: float = 30.0) -> None:
        """Return once the replica has applied everything the primary committed so far;
        raise TimeoutError after ``timeout`` s (the replica must not be paused)."""
        deadline = time.monotonic() + timeout
        if self.family == "mysql":
            position = sql_value(self.primary.url, "SELECT @@gtid_binlog_pos")
            done = sql_value(
                self.replica.url,
                "SELECT MASTER_GTID_WAIT(:pos, :timeout)",
                {"pos": position, "timeout": timeout},
            )
            if done != 0:
                raise TimeoutError(f"the MariaDB replica did not reach {position} in {timeout} s")
            return
        # the insert position, not pg_current_wal_lsn() (the write position): with
        # synchronous_commit=off (the private servers' setting) a commit record can sit in the
        # WAL buffers past the write position for up to wal_writer_delay
        lsn = sql_value(self.primary.url, "SELECT pg_current_wal_insert_lsn()::text")
        while not sql_value(
            self.replica.url,
            "SELECT pg_last_wal_replay_lsn() >= CAST(:lsn AS pg_lsn)",
            {"lsn": lsn},
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the PostgreSQL standby did not replay {lsn} in {timeout} s")
            time.sleep(0.02)

    def pause(self) -> None:
        """Catch up, then stop applying the primary's changes (they keep arriving, or wait on
        the primary, and are applied after :meth:`resume`)."""
        self.caught_up()
        if self.family == "mysql":
            sql_value(self.replica.url, "STOP SLAVE")
        else:
            sql_value(self.replica.url, "SELECT pg_wal_replay_pause()")

    def resume(self) -> None:
        """Apply the primary's changes again, and wait until they are all applied."""
        if self.family == "mysql":
            sql_value(self.replica.url, "START SLAVE")
        else:
            sql_value(self.replica.url, "SELECT pg_wal_replay_resume()")
        self.caught_up()
