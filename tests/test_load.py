"""Load: 4 worker processes x 250 jobs x 5 chunks into Redis and into PostgreSQL; every chunk is
stored exactly once and in order (the driver is bench/load.py; its full run is in BENCHMARKS.md).
No timing is asserted.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from gearstash.model.records import JobKey, JobRecord, State

_PATH = Path(__file__).resolve().parents[1] / "bench" / "load.py"
_spec = importlib.util.spec_from_file_location("gearstash_bench_load", _PATH)
assert _spec is not None and _spec.loader is not None
load = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = load  # dataclasses look their module up
_spec.loader.exec_module(load)

WORKERS, JOBS_PER_WORKER, CHUNKS = 4, 250, 5


def _assert_exactly_once_in_order(report: load.Report, jobs_per_worker: int) -> None:
    total = WORKERS * jobs_per_worker
    assert not report.worker_errors, report.text()
    assert not report.anomalies, report.text()
    assert report.jobs_ok == total, report.text()
    assert report.chunks_stored == total * CHUNKS, report.text()
    assert report.raw_jobs == total, report.text()
    assert report.raw_chunks == total * CHUNKS, report.text()
    assert sum(report.jobs_per_worker.values()) == total, report.text()
    assert len(report.jobs_per_worker) <= WORKERS, report.text()
    assert report.ok, report.text()


def _run(gearmand, url: str, jobs_per_worker: int = JOBS_PER_WORKER, **options) -> None:
    # live: the workers are up while the jobs are submitted (the queue fills and drains at once)
    report = load.run_load(
        gearmand.address,
        url,
        workers=WORKERS,
        jobs_per_worker=jobs_per_worker,
        chunks=CHUNKS,
        live=True,
        **options,
    )
    _assert_exactly_once_in_order(report, jobs_per_worker)


def test_load_redis(gearmand, redis_url):
    """4 ``gearstash worker`` processes x 250 jobs x 5 chunks into Redis."""
    with load.redis_store(redis_url) as url:
        _run(gearmand, url)


@pytest.mark.postgres
def test_load_postgres(gearmand, postgres_url):
    """4 ``gearstash worker`` processes x 250 jobs x 5 chunks into PostgreSQL."""
    with load.postgres_store(postgres_url) as url:
        _run(gearmand, url)


@pytest.mark.postgres
def test_load_postgres_every_event_its_own_write(gearmand, postgres_url):
    """4 x 100 jobs with ``flush_interval=0``: 7 store transactions per job from 4 processes."""
    with load.postgres_store(postgres_url) as url:
        _run(gearmand, url, jobs_per_worker=100, flush_interval=0)


def test_load_two_gearmands_prefork_redis(gearmand_factory, redis_url):
    """Two gearmands, ``gearstash worker --processes 4`` serving both, 4 x 100 jobs into Redis:
    the jobs went to both servers, and every chunk is stored exactly once and in order."""
    _two_gearmands(gearmand_factory, load.redis_store(redis_url))


@pytest.mark.postgres
def test_load_two_gearmands_prefork_postgres(gearmand_factory, postgres_url):
    """The same into PostgreSQL."""
    _two_gearmands(gearmand_factory, load.postgres_store(postgres_url))


def _two_gearmands(gearmand_factory, store) -> None:
    servers = [gearmand_factory().address, gearmand_factory().address]
    with store as url:
        report = load.run_load(
            servers, url, workers=WORKERS, jobs_per_worker=100, chunks=CHUNKS, prefork=True
        )
    _assert_exactly_once_in_order(report, 100)
    assert report.gearmands == 2 and report.prefork, report.text()
    assert set(report.jobs_per_server) == set(servers), report.text()
    assert sum(report.jobs_per_server.values()) == WORKERS * 100, report.text()


# ------------------------------------------------------------------ the checker itself


def _record(data: list[bytes], unique: bytes = b"u-1", **fields: object) -> JobRecord:
    record = JobRecord(JobKey("127.0.0.1:4730", b"H:x:1", unique), state=State.COMPLETE)
    record.data = data
    record.result = load.expected_result(unique)
    for name, value in fields.items():
        setattr(record, name, value)
    return record


@pytest.mark.parametrize(
    ("order", "kinds"),
    [
        ([0, 1, 2, 3, 4], set()),
        ([0, 1, 2, 2, 3, 4], {"duplicated chunk"}),
        ([0, 1, 3, 4], {"lost chunk"}),
        ([0, 2, 1, 3, 4], {"out of order"}),
        ([0, 1, 2, 3, 4, 4], {"duplicated chunk"}),
        ([0, 1, 1, 3, 4], {"duplicated chunk", "lost chunk"}),
    ],
)
def test_checker_names_every_kind_of_bad_chunk_list(order, kinds):
    expected = [load.expected_chunk(b"u-1", i, 8) for i in range(5)]
    report = load.Report("memory://", 1, 1, 5)
    bad = load.check_job(_record([expected[i] for i in order]), State.COMPLETE, expected, report)
    assert bad == bool(kinds)
    assert set(report.anomalies) == kinds


def test_checker_names_foreign_chunks_wrong_attempts_results_and_states():
    expected = [load.expected_chunk(b"u-1", i, 8) for i in range(5)]
    foreign = [*expected[:4], load.expected_chunk(b"u-2", 4, 8)]
    report = load.Report("memory://", 1, 1, 5)
    load.check_job(_record(foreign), State.COMPLETE, expected, report)
    load.check_job(_record(expected, attempt=2), State.COMPLETE, expected, report)
    load.check_job(_record(expected, result=b"done:u-2"), State.COMPLETE, expected, report)
    load.check_job(_record(expected, state=State.RUNNING), State.RUNNING, expected, report)
    assert set(report.anomalies) == {
        "foreign chunk",
        "lost chunk",
        "attempt != 1",
        "wrong result",
        "not complete",
    }
    assert not report.ok
