"""Group commit (``Worker(pipeline=K)``): a slot runs the next job while the last ones' events are
written, several jobs a store write, and each job's final packet goes out only after its events
are stored. Real gearmand and SQLite; the store is wrapped to be slow (so jobs pile up behind a
write) or to fail."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest
from workers import FUNCTIONS, running_worker

from gearstash import Client, Worker
from gearstash.errors import StoreError
from gearstash.model.records import Event, EventKind, JobRecord, JobRef, State
from gearstash.spine.manager import open_store
from gearstash.store.contract import Store


class SlowStore:
    """A real store whose writes take ``delay`` seconds longer; counts the jobs of each write."""

    def __init__(self, inner: Store, delay: float) -> None:
        self.inner = inner
        self.delay = delay
        self.url = inner.url
        self.capabilities = inner.capabilities
        self.jobs_per_write: list[int] = []
        self.fail = threading.Event()

    def write(self, events: Sequence[Event]) -> None:
        time.sleep(self.delay)
        if self.fail.is_set():
            raise StoreError("the test store is down")
        self.jobs_per_write.append(len({e.key for e in events}))
        self.inner.write(events)

    def get_many(self, refs: Sequence[JobRef]) -> list[JobRecord | None]:
        return self.inner.get_many(refs)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def slow_store(tmp_sqlite_url):
    store = SlowStore(open_store(tmp_sqlite_url), delay=0.02)
    try:
        yield store
    finally:
        store.close()


def test_events_are_stored_before_the_server_hears_done(gearmand, tmp_sqlite_url, slow_store):
    """Whenever a client sees a job gone from the server, its record is final and whole; jobs
    ended while a write was in flight were written together."""
    n = 60
    with (
        running_worker([gearmand.address], slow_store, pipeline=8),
        Client([gearmand.address], store=tmp_sqlite_url) as c,
    ):
        refs = [c.submit_background("reverse", b"r%d" % i) for i in range(n)]
        pending = set(range(n))
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            todo = sorted(pending)
            for i, view in zip(todo, c.fetch_many([refs[i] for i in todo]), strict=True):
                if view.status is not None and not view.status.known:
                    assert view.state is State.COMPLETE, view
                    assert view.result == (b"r%d" % i)[::-1]
                    assert view.data == [b"chunk-0", b"chunk-1", b"chunk-2"]
                    assert view.record is not None and view.record.warnings == [b"careful"]
                    pending.discard(i)
        assert not pending, f"{len(pending)} jobs not finished in time"
    assert max(slow_store.jobs_per_write) > 1, slow_store.jobs_per_write  # group commit happened
    assert max(slow_store.jobs_per_write) <= 8 + 1  # K ended jobs (+ the running one's start)


def test_foreground_outcomes_arrive_after_their_records(gearmand, tmp_sqlite_url, slow_store):
    """complete / exception / fail: the client's answer comes only once the record is stored."""
    want = {"echo": None, "boom": "exception", "refuse": "fail"}
    with (
        running_worker([gearmand.address], slow_store, pipeline=4),
        Client([gearmand.address], store=tmp_sqlite_url) as c,
    ):
        for name, error in want.items():
            answer = c.submit(name, b"x", timeout=20)
            state = State.COMPLETE if error is None else State.FAILED
            assert answer.state is state
            stored = slow_store.get_many([answer.ref])[0]  # read at once, no waiting
            assert stored is not None and stored.state is state, (name, stored)
            assert (stored.error.kind if stored.error else None) == error
            assert stored.data == (
                [b"x"] if name == "echo" else [b"before the crash"] if name == "boom" else []
            )


def test_max_jobs_stops_with_everything_stored_and_told(gearmand, tmp_sqlite_url, slow_store):
    worker = Worker([gearmand.address], store=slow_store, pipeline=16)
    worker.register("echo", FUNCTIONS["echo"])
    with Client([gearmand.address], store=tmp_sqlite_url) as c:
        refs = [c.submit_background("echo", b"%d" % i) for i in range(40)]
        worker.work(handle_signals=False, max_jobs=40)
        assert [r.state for r in slow_store.get_many(refs)] == [State.COMPLETE] * 40  # type: ignore[union-attr]
        deadline = (
            time.monotonic() + 10
        )  # the server was told (it reads the packets a moment later)
        while not gearmand_idle(gearmand, "echo"):
            assert time.monotonic() < deadline, gearmand.admin("status")
            time.sleep(0.05)
        views = c.fetch_many(refs)
    assert all(v.status is not None and not v.status.known for v in views)


def gearmand_idle(gearmand, function: str) -> bool:
    from gearstash.protocol.admin import parse_status

    rows = [
        r for r in parse_status(gearmand.admin("status").splitlines()) if r.function == function
    ]
    return all(r.queued == 0 and r.running == 0 for r in rows)


def test_store_down_fails_the_pipelined_jobs(gearmand, tmp_sqlite_url, slow_store):
    """on_store_down="fail": jobs whose final write failed end with WORK_FAIL, not COMPLETE."""
    slow_store.fail.set()
    with (
        running_worker([gearmand.address], slow_store, pipeline=4, on_store_down="fail", lease=0),
        Client([gearmand.address], store=tmp_sqlite_url) as c,
    ):
        assert c.submit("echo", b"lost", timeout=20).state is State.FAILED
        slow_store.fail.clear()
        view = c.submit("echo", b"kept", timeout=20)
        assert c.fetch(view.ref).state is State.COMPLETE


def test_pipeline_must_be_positive():
    from gearstash.errors import ConfigError

    with pytest.raises(ConfigError, match="pipeline"):
        Worker(["127.0.0.1:1"], store="null://", pipeline=0)


def test_event_kinds_of_a_pipelined_job_keep_their_order(gearmand, tmp_sqlite_url, slow_store):
    """Within a job, events reach the store in the order the job said them."""
    seen: list[list[EventKind]] = []
    original = slow_store.inner.write

    def record(events: Sequence[Event]) -> None:
        by_job: dict[object, list[EventKind]] = {}
        for e in events:
            by_job.setdefault(e.key, []).append(e.kind)
        seen.extend(by_job.values())
        original(events)

    slow_store.inner.write = record  # type: ignore[method-assign]
    with (
        running_worker([gearmand.address], slow_store, pipeline=8, flush_interval=0),
        Client([gearmand.address], store=tmp_sqlite_url) as c,
    ):
        refs = [c.submit_background("reverse", b"%d" % i) for i in range(20)]
        for ref in refs:
            assert c.wait(ref, timeout=20).state is State.COMPLETE
    flat = [k for kinds in seen for k in kinds]
    assert flat.count(EventKind.COMPLETED) == 20
    for kinds in seen:  # a final event is always the last of its job in a write
        if EventKind.COMPLETED in kinds:
            assert kinds[-1] is EventKind.COMPLETED


def test_prefetch_with_pipeline_keeps_the_guarantee(gearmand, tmp_sqlite_url, slow_store):
    """With the next job asked for while one runs: every job done once, stored whole before the
    server hears it ended; on stop the job assigned ahead goes back to the queue, unrun."""
    worker = Worker([gearmand.address], store=slow_store, pipeline=8, prefetch=True)
    worker.register("echo", FUNCTIONS["echo"])
    with Client([gearmand.address], store=tmp_sqlite_url) as c:
        refs = [c.submit_background("echo", b"%d" % i) for i in range(30)]
        worker.work(handle_signals=False, max_jobs=20)
        worker.close()
        stored = slow_store.get_many(refs)
        done = [r for r in stored if r is not None and r.state is State.COMPLETE]
        assert len(done) == 20
        assert sum(r is not None and r.state is State.QUEUED for r in stored) == 10  # unrun
        assert all(r.data == [r.result] for r in done)
        deadline = time.monotonic() + 10  # the 10 others (one of them assigned ahead) queued
        while gearmand_queued(gearmand, "echo") != (10, 0):
            assert time.monotonic() < deadline, gearmand.admin("status")
            time.sleep(0.05)
        with running_worker([gearmand.address], slow_store, pipeline=8, prefetch=True):
            for ref in refs:
                assert c.wait(ref, timeout=20).state is State.COMPLETE
    assert slow_store.get_many(refs)[0].attempt == 1  # type: ignore[union-attr]


def gearmand_queued(gearmand, function: str) -> tuple[int, int]:
    from gearstash.protocol.admin import parse_status

    for row in parse_status(gearmand.admin("status").splitlines()):
        if row.function == function:
            return row.queued, row.running
    return 0, 0


def test_work_packets_go_out_together_and_before_the_end(gearmand, tmp_sqlite_url, slow_store):
    """With a committer, a job's data/status/warning packets reach the server (and a foreground
    client) in order, all before the result, and those of a job that went quiet do not wait
    for its end (the flush thread sends them)."""
    seen: list[tuple[str, object]] = []
    began = threading.Event()

    def talk_then_wait(job):  # type: ignore[no-untyped-def]
        job.send_status(1, 2)
        job.send_data(b"one")
        job.send_warning(b"two")
        began.wait(10)  # released once the client saw the data: it did not wait for the end
        job.send_data(b"three")
        return b"done"

    with (
        running_worker(
            [gearmand.address],
            slow_store,
            {"talk": talk_then_wait},
            pipeline=4,
            flush_interval=0.05,
        ),
        Client([gearmand.address], store=tmp_sqlite_url) as c,
    ):

        def on_data(chunk: bytes) -> None:
            seen.append(("data", chunk))
            began.set()

        view = c.submit(
            "talk",
            b"",
            on_data=on_data,
            on_warning=lambda w: seen.append(("warning", w)),
            on_status=lambda n, d: seen.append(("status", (n, d))),
            timeout=20,
        )
    assert view.state is State.COMPLETE and view.result == b"done"
    assert seen == [
        ("status", (1, 2)),
        ("data", b"one"),
        ("warning", b"two"),
        ("data", b"three"),
    ]
