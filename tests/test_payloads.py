"""Payloads from 0 bytes to 64 MiB through every store, and through gearmand and a worker.

Each store gets a job that already holds a small state (started, one data chunk, one status), then
one batch with a data chunk and a result of the size under test. The batch round-trips exactly
(compared by SHA-256, never byte by byte in an assertion message), except where ``REFUSED`` pins
a refusal: there it raises a StoreError that names the limit, and the job reads back exactly as
it was before the batch: nothing half-written, no partial chunk.

Sizes: 0, 1, 1 MiB + 1 (over memcached's default 1 MB item size: the memcache store splits
values), 16 MiB + 1 (over MariaDB's default max_allowed_packet of 16 MiB), 64 MiB. memcached
gets a server of its own with room for 64 MiB twice (the session's has 64 MB and would evict).
The sizes are tested one at a time per store so a failure names the store and the size.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator

import pytest
from support.allstores import ALL_STORES, open_kind
from workers import echo, running_worker

from gearstash import Client, Job, State
from gearstash.errors import StoreError
from gearstash.model.records import Event, EventKind, JobKey, JobRecord, JobRef
from gearstash.spine.manager import open_store
from gearstash.store.contract import Store
from gearstash.testing import contract as testing
from gearstash.testing.servers import PrivateServer, memcached_spec

MiB = 1024 * 1024
SIZES = [0, 1, MiB + 1, 16 * MiB + 1, 64 * MiB]
# What each store refuses (store kind -> sizes, and the words its error names); every other
# store and size must round-trip. MariaDB's max_allowed_packet is 16 MiB (the private server is
# started with MariaDB's default); PostgreSQL's bytea, Redis and SQLite take 1 GB or more.
REFUSED = {"mysql": ({16 * MiB + 1, 64 * MiB}, "max_allowed_packet")}
T0 = testing.T0

_BLOCK = os.urandom(MiB)


def payload(size: int, salt: bytes) -> bytes:
    """``size`` bytes, different for each salt (cheap: a random MiB repeated, salted at the front)."""
    body = (salt + _BLOCK) * (size // (MiB + len(salt)) + 1)
    return body[:size]


def sha(value: bytes | None) -> str | None:
    return None if value is None else hashlib.sha256(value).hexdigest()


def summary(record: JobRecord | None) -> object:
    """What a record holds, with the bytes as digests (small enough for an assertion message)."""
    if record is None:
        return None
    return (
        record.key,
        record.state,
        record.attempt,
        [sha(c) for c in record.data],
        [sha(w) for w in record.warnings],
        [(p.numerator, p.denominator) for p in record.status],
        sha(record.result),
    )


@pytest.fixture(scope="module")
def big_memcached() -> Iterator[str]:
    """A private memcached with room for two 64 MiB values (its parts are ~511 KiB items)."""
    with PrivateServer(memcached_spec(memory_mb=512)) as server:
        yield server.address


@pytest.fixture(params=ALL_STORES)
def store(request: pytest.FixtureRequest) -> Iterator[tuple[str, Store]]:
    """(kind, an open store of that kind)."""
    kind = request.param
    if kind == "memcache":
        url, cleanup = f"memcache://{request.getfixturevalue('big_memcached')}", lambda: None
    else:
        url, cleanup = open_kind(request, kind)
    opened = open_store(url)
    try:
        yield kind, opened
    finally:
        opened.close()
        cleanup()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s}B")
def test_payload_round_trips_or_fails_before_writing(store: tuple[str, Store], size: int) -> None:
    kind, store_ = store
    refused_sizes, limit_word = REFUSED.get(kind, (set(), ""))
    refused = size in refused_sizes
    key = JobKey(testing.new_server("big"), testing.new_handle(), uuid.uuid4().hex.encode())
    ref = JobRef(key.handle, key.server, key.unique)
    store_.write(
        [
            Event(EventKind.STARTED, key, T0, function=b"big", worker="w"),
            Event(EventKind.DATA, key, T0 + 0.1, b"before"),
            Event(EventKind.STATUS, key, T0 + 0.2, numerator=1, denominator=2),
        ]
    )
    before = summary(store_.get_many([ref])[0])
    assert before is not None
    chunk, result = payload(size, b"chunk"), payload(size, b"result")
    batch = [
        Event(EventKind.DATA, key, T0 + 0.3, chunk),
        Event(EventKind.COMPLETED, key, T0 + 0.4, result),
    ]
    if refused:
        with pytest.raises(StoreError) as error:
            store_.write(batch)
        assert limit_word in str(error.value), str(error.value)
        after = summary(store_.get_many([ref])[0])
        assert after == before, "a refused write left part of itself behind"
        return
    store_.write(batch)  # any other store and size must round-trip
    record = store_.get_many([ref])[0]
    assert record is not None and record.state is State.COMPLETE
    assert [sha(c) for c in record.data] == [sha(b"before"), sha(chunk)]
    assert [len(c) for c in record.data] == [6, size]
    assert sha(record.result) == sha(result) and len(record.result or b"") == size


@pytest.mark.gearmand
def test_64_mib_job_through_gearmand_and_the_worker(gearmand) -> None:
    """A 64 MiB workload in (SUBMIT_JOB, JOB_ASSIGN_UNIQ), 64 MiB out twice (WORK_DATA and
    WORK_COMPLETE), and the same bytes in the store."""
    url = f"memory://payloads-{uuid.uuid4().hex}"
    workload = payload(64 * MiB, b"workload")
    with (
        running_worker([gearmand.address], url, {"echo": echo}, read_timeout=60),
        Client([gearmand.address], store=url, timeout=60) as client,
    ):
        chunks: list[bytes] = []
        view = client.submit("echo", workload, on_data=chunks.append, timeout=60)
        assert view.state is State.COMPLETE
        assert sha(view.result) == sha(workload)
        assert [sha(c) for c in chunks] == [sha(workload)]
        stored = client.fetch(view.ref)
        assert stored.state is State.COMPLETE
        assert sha(stored.result) == sha(workload) and [sha(c) for c in stored.data] == [
            sha(workload)
        ]


@pytest.mark.mysql
def test_a_result_over_the_stores_limit_fails_the_record_clearly_and_the_worker_goes_on(
    gearmand, request: pytest.FixtureRequest
) -> None:
    url, cleanup = open_kind(request, "mysql")
    big = b"r" * (MiB * 16 + 1)  # over MariaDB's max_allowed_packet of 16 MiB

    def huge(job: Job) -> bytes:
        job.send_data(b"small chunk")
        return big

    try:
        with (
            running_worker([gearmand.address], url, {"huge": huge, "echo": echo}),
            Client([gearmand.address], store=url) as client,
        ):
            view = client.wait(client.submit_background("huge", b""), timeout=60)
            assert view.state is State.FAILED
            assert view.record is not None and view.record.error is not None
            assert "could not be stored" in view.record.error.message
            assert "max_allowed_packet" in view.record.error.message
            assert any(b"refused" in w for w in view.record.warnings)
            assert view.result is None and view.data == []  # nothing of the refused batch
            after = client.wait(client.submit_background("echo", b"still serving"), timeout=30)
            assert after.state is State.COMPLETE and after.result == b"still serving"
    finally:
        cleanup()
