"""A PostgreSQL outage: the worker spools what the SQL store cannot take and replays it later.

Like the Redis and memcached outage tests in test_outage.py (whose job module and helpers this
reuses), with a PostgreSQL of the test's own (tests/pgserver.py; never the shared server on
127.0.0.1:5432), stopped with ``pg_ctl stop -m fast`` for ``OUTAGE`` seconds while a real
``gearstash worker`` keeps completing jobs. PostgreSQL keeps its data across the stop, so the jobs
from before the outage are checked too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import test_outage
from pgserver import OwnPostgres
from test_outage import WorkerProcess, _jobs_before_across_during_and_after

from gearstash import Client
from gearstash.store.spoolfile import spool_files
from gearstash.testing.gearmand import Gearmand

worker_process = test_outage.worker_process  # the fixture: `gearstash worker` processes


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    with OwnPostgres() as server:
        yield server


@pytest.mark.gearmand
def test_postgresql_outage_jobs_go_on_and_every_event_lands_in_order(
    gearmand: Gearmand,
    own_postgres: OwnPostgres,
    worker_process: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    url = own_postgres.url
    spool = tmp_path / "spool"
    worker = worker_process(gearmand.address, url, "-c", "2", "--spool", str(spool))
    with Client([gearmand.address], store=url) as client:
        # The early jobs were stored before the stop: they come back with the data directory.
        _jobs_before_across_during_and_after(client, own_postgres.stop, own_postgres.start)
    assert worker.stop() == 0
    log = worker.text()
    assert f"store {url} unreachable" in log, log
    assert f"spooling captured events to {spool}" in log, log
    assert f"store {url} back: replayed" in log, log
    assert "events of job" not in log, log  # nothing lost
    assert not spool_files(spool), "the drained spool file was removed"
