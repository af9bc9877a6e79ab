"""gearstash.aio.AsyncClient against a real gearmand, a real worker and real stores."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.allstores import open_kind
from workers import running_worker

from gearstash.aio import AsyncClient
from gearstash.client.client import Client
from gearstash.errors import JobNotFound, WaitTimeout
from gearstash.model.records import JobRef, State
from gearstash.spine.manager import open_store
from gearstash.testing.gearmand import Gearmand
from gearstash.worker.job import Job


def paced(job: Job) -> bytes:
    """Five chunks and status points, a little apart."""
    for i in range(5):
        job.send_status(i + 1, 5)
        job.send_data(b"part %d" % i)
        time.sleep(0.1)
    return b"paced " + job.workload


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest) -> Iterator[str]:
    url, cleanup = open_kind(request, request.param)
    try:
        yield url
    finally:
        cleanup()


def test_follow_wait_and_many_waiters(gearmand: Gearmand, store_url: str) -> None:
    servers = [gearmand.address]
    with (
        running_worker(servers, store_url, {"paced": paced}, concurrency=4),
        Client(servers, store=store_url) as submitter,
    ):
        refs = [submitter.submit_background("paced", b"%d" % i) for i in range(8)]

        async def scenario() -> None:
            async with AsyncClient(servers, store=store_url) as client:
                chunks: list[bytes] = []
                states = []
                async for update in client.follow(refs[0], timeout=60):
                    assert update.offset == len(chunks)
                    chunks += update.chunks
                    states.append(update.view.state)
                assert chunks == [b"part %d" % i for i in range(5)]
                assert states[-1] is State.COMPLETE
                threads = threading.active_count()
                views = await asyncio.gather(*(client.wait(r, timeout=60) for r in refs[1:] * 10))
                assert threading.active_count() - threads <= 6  # the default executor, not 70
                assert {v.state for v in views} == {State.COMPLETE}
                assert {v.result for v in views} == {b"paced %d" % i for i in range(1, 8)}
                assert all(v.data == [b"part %d" % i for i in range(5)] for v in views)
                fetched = await client.fetch_many(refs)
                assert [v.result for v in fetched] == [b"paced %d" % i for i in range(8)]

        asyncio.run(scenario())


def test_unknown_job_and_timeout(gearmand: Gearmand, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/aio.db"
    store = open_store(url)
    servers = [gearmand.address]

    async def scenario() -> None:
        async with AsyncClient(servers, store=store) as client:
            with pytest.raises(JobNotFound):
                async for _update in client.follow(JobRef(b"H:nobody:1", gearmand.address)):
                    pass
            # a job the server holds but no worker runs: still queued when the wait gives up
            ref = await asyncio.to_thread(client.client.submit_background, "nobody-serves", b"")
            started = time.monotonic()
            with pytest.raises(WaitTimeout):
                await client.wait(ref, timeout=0.5)
            assert time.monotonic() - started < 30

    try:
        asyncio.run(scenario())
    finally:
        store.close()
