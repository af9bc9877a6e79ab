"""The store contract suite, for gearstash's own stores and for third-party ones.

Subclass :class:`StoreContract` in a test module and give it a ``store_url`` fixture; pytest then
runs every contract test against your store::

    import pytest
    from gearstash.testing.contract import StoreContract

    class TestMyStore(StoreContract):
        @pytest.fixture
        def store_url(self):
            return "mystore://localhost/test"

The URL must open the store through :func:`gearstash.spine.manager.open_store` (so the entry-point
registration is tested too). Tests name their jobs on job servers unique to the run, so a shared
database or cache may hold other data. What a store does not claim in ``capabilities`` is tested
for its documented fallback instead of being skipped: without ``shared`` the concurrent writers are
threads instead of processes; without ``push`` a watch must time out cleanly; without ``delete``
forgetting must raise :class:`~gearstash.errors.StoreError`.

Needs pytest (``pip install gearstash[test]``); importing this module has no other side effects.
"""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from gearstash.errors import BadCursor, ConfigError, StoreError
from gearstash.model.records import Event, EventKind, JobError, JobKey, JobRecord, JobRef, State
from gearstash.spine.manager import open_store
from gearstash.store.contract import (
    JobFilter,
    JobSummary,
    Store,
    can_list,
    count_by_state,
    delete,
    get_after,
    list_jobs,
    watch,
)

__all__ = ["RUN", "StoreContract", "full_job", "new_key"]

RUN = uuid.uuid4().hex[:10]
"""A tag unique to this test run; every server name the suite writes starts with ``gs{RUN}-``."""

_numbers = itertools.count()
T0 = float(int(time.time())) + 0.123456  # recent (nothing expires), full float precision


def new_server(tag: str = "s") -> str:
    """A job-server name unique to this run and call."""
    return f"gs{RUN}-{next(_numbers)}-{tag}.test:4730"


def new_handle(tag: str = "") -> bytes:
    """A handle unique to this run and call."""
    return f"H:{RUN}:{next(_numbers)}{tag}".encode()


def new_key(server: str | None = None, unique: bytes = b"u") -> JobKey:
    """A job key no other test uses."""
    return JobKey(server or new_server(), new_handle(), unique)


def full_job(key: JobKey, at: float = T0) -> list[Event]:
    """started, 3 data, warning, 2 status, completed."""
    return [
        Event(EventKind.STARTED, key, at, function=b"resize", worker="host-1.42"),
        Event(EventKind.DATA, key, at + 0.1, b"one"),
        Event(EventKind.DATA, key, at + 0.2, b"two"),
        Event(EventKind.WARNING, key, at + 0.3, b"careful"),
        Event(EventKind.STATUS, key, at + 0.4, numerator=1, denominator=3),
        Event(EventKind.DATA, key, at + 0.5, b"three"),
        Event(EventKind.STATUS, key, at + 0.6, numerator=3, denominator=3),
        Event(EventKind.COMPLETED, key, at + 0.7, b"done"),
    ]


def exact(key: JobKey) -> JobRef:
    """The full reference of ``key``."""
    return JobRef(key.handle, key.server, key.unique)


def assert_same(got: JobRecord | None, want: JobRecord) -> None:
    """Field by field (except ``expires_at``, the store's to set), so a failure names the field."""
    assert got is not None, f"no record for {want.key}"
    for f in dataclasses.fields(JobRecord):
        if f.name != "expires_at":
            assert getattr(got, f.name) == getattr(want, f.name), f.name


def _write_concurrently(
    url: str, writer: int, own: JobKey, shared: JobKey, count: int, barrier: Any
) -> None:
    """One writer: its own job from started to completed, and chunks into a shared job."""
    store = open_store(url)
    try:
        barrier.wait(timeout=60)
        store.write([Event(EventKind.STARTED, own, T0, function=b"f", worker=f"w{writer}")])
        for i in range(count):
            payload = b"%d:%d" % (writer, i)
            store.write([Event(EventKind.DATA, own, T0 + i, payload)])
            store.write([Event(EventKind.DATA, shared, T0 + i, payload)])
        store.write([Event(EventKind.COMPLETED, own, T0 + count, b"%d" % writer)])
    finally:
        store.close()


class StoreContract:
    """Every store's contract as pytest tests. Subclass it and provide a ``store_url`` fixture."""

    @pytest.fixture
    def store(self, store_url: str) -> Iterator[Store]:
        """The store under test, opened from ``store_url`` and closed afterwards."""
        opened = open_store(store_url)
        try:
            yield opened
        finally:
            opened.close()

    # ---------------------------------------------------------------- records

    def test_full_job_round_trip(self, store: Store) -> None:
        key = new_key()
        events = full_job(key)
        store.write(events[:1])
        store.write(events[1:4])
        store.write(events[4:])
        want = JobRecord.from_events(key, events)
        assert want.state is State.COMPLETE and want.data == [b"one", b"two", b"three"]
        assert_same(store.get_many([exact(key)])[0], want)

    def test_one_batch_equals_many(self, store: Store) -> None:
        one, many = new_key(), new_key()
        store.write(full_job(one))
        for event in full_job(many):
            store.write([event])
        got_one, got_many = store.get_many([JobRef(one.handle), JobRef(many.handle)])
        assert_same(got_one, JobRecord.from_events(one, full_job(one)))
        assert_same(got_many, JobRecord.from_events(many, full_job(many)))

    def test_exception_and_fail(self, store: Store) -> None:
        key, failed = new_key(), new_key()
        events = [
            Event(EventKind.STARTED, key, T0, function=b"f", worker="w"),
            Event(EventKind.DATA, key, T0 + 1, b"partial"),
            Event(EventKind.EXCEPTION, key, T0 + 2, b"boom \xff", traceback="Traceback...\n  x"),
        ]
        store.write(events)
        store.write([Event(EventKind.STARTED, failed, T0), Event(EventKind.FAILED, failed, T0 + 1)])
        got, got_failed = store.get_many([JobRef(key.handle, key.server), exact(failed)])
        assert_same(got, JobRecord.from_events(key, events))
        assert got is not None and got.state is State.FAILED and got.result is None
        assert got.error == JobError("exception", "boom \ufffd", "Traceback...\n  x")
        assert got_failed is not None and got_failed.error == JobError("fail", "", "")

    def test_second_started_is_a_new_attempt(self, store: Store) -> None:
        key = new_key()
        first = full_job(key)
        second = [
            Event(EventKind.STARTED, key, T0 + 10, worker="host-2.7"),
            Event(EventKind.DATA, key, T0 + 11, b"again"),
        ]
        store.write(first)
        store.write(second)
        got = store.get_many([exact(key)])[0]
        assert_same(got, JobRecord.from_events(key, first + second))
        assert got is not None
        assert (got.attempt, got.data, got.warnings, got.status) == (2, [b"again"], [], [])
        assert (got.result, got.error, got.function) == (None, None, b"resize")

    def test_events_without_started(self, store: Store) -> None:
        key = new_key()
        before = [
            Event(EventKind.DATA, key, T0, b"early"),
            Event(EventKind.STATUS, key, T0 + 1, numerator=5, denominator=9),
        ]
        store.write(before[:1])
        store.write(before[1:])
        got = store.get_many([exact(key)])[0]
        assert_same(got, JobRecord.from_events(key, before))
        assert got is not None and (got.attempt, got.started_at) == (1, None)
        later = [
            Event(EventKind.STARTED, key, T0 + 2, function=b"f"),
            Event(EventKind.COMPLETED, key, T0 + 3),
        ]
        store.write(later)
        got = store.get_many([exact(key)])[0]
        assert_same(got, JobRecord.from_events(key, before + later))

    def test_servers_and_uniques_never_mix(self, store: Store) -> None:
        handle = new_handle()
        s1, s2 = new_server("one"), new_server("two")
        old, other, new = (
            JobKey(s1, handle, b"u1"),
            JobKey(s2, handle, b"u1"),
            JobKey(s1, handle, b"u2"),
        )
        for n, key in enumerate((old, other, new)):
            store.write(
                [
                    Event(EventKind.STARTED, key, T0 + n),
                    Event(EventKind.DATA, key, T0 + n, b"%d" % n),
                ]
            )
        store.write([Event(EventKind.DATA, old, T0 + 9, b"late")])  # newer data, older job

        def data(ref: JobRef) -> list[bytes] | None:
            record = store.get_many([ref])[0]
            return None if record is None else record.data

        assert data(JobRef(handle, s1, b"u1")) == [b"0", b"late"]
        assert data(JobRef(handle, s2, b"u1")) == [b"1"]
        assert data(JobRef(handle, s1, b"u2")) == [b"2"]
        assert data(JobRef(handle, s1)) == [b"2"]  # the newest job on s1
        assert data(JobRef(handle)) == [b"2"]  # the newest job anywhere
        assert data(JobRef(handle, None, b"u1")) == [b"1"]
        assert data(JobRef(handle, s2, b"u2")) is None
        assert data(JobRef(handle + b"x")) is None

    def test_workload_is_kept_and_survives_a_retry(self, store: Store) -> None:
        """A captured workload (on ``started``) is read back exactly; an empty one is not
        "none"; a later attempt whose ``started`` carries none keeps it; one that carries
        another replaces it; a job without one reads ``None``."""
        key, empty, binary, plain = new_key(), new_key(), new_key(), new_key()
        load = b'{"image": "cat.png", "size": [640, 480]}'
        first = [
            Event(EventKind.STARTED, key, T0, function=b"resize", worker="w", workload=load),
            Event(EventKind.DATA, key, T0 + 1, b"half"),
            Event(EventKind.EXCEPTION, key, T0 + 2, b"boom", traceback="tb"),
        ]
        store.write(first)
        store.write([Event(EventKind.STARTED, empty, T0, workload=b"")])
        odd = b"\x00\xff\xfe not utf-8 " + bytes(range(256)) * 256  # 64 KiB + a little
        store.write(
            [
                Event(EventKind.SUBMITTED, binary, T0, function=b"f"),
                Event(EventKind.STARTED, binary, T0 + 1, workload=odd),
            ]
        )
        store.write(full_job(plain))
        got, got_empty, got_binary, got_plain = store.get_many(
            [exact(key), exact(empty), exact(binary), exact(plain)]
        )
        assert_same(got, JobRecord.from_events(key, first))
        assert got is not None and got.workload == load
        assert got_empty is not None and got_empty.workload == b""
        assert got_binary is not None and got_binary.workload == odd
        assert got_plain is not None and got_plain.workload is None
        retry = [
            Event(EventKind.STARTED, key, T0 + 10, worker="w2"),
            Event(EventKind.COMPLETED, key, T0 + 11, b"ok"),
        ]
        store.write(retry)
        got = store.get_many([exact(key)])[0]
        assert_same(got, JobRecord.from_events(key, first + retry))
        assert got is not None and (got.attempt, got.workload) == (2, load)
        again = [Event(EventKind.STARTED, key, T0 + 20, workload=b"other")]
        store.write(again)
        got = store.get_many([JobRef(key.handle)])[0]
        assert got is not None and (got.attempt, got.workload) == (3, b"other")
        assert JobRecord.from_json(got.to_json()).workload == b"other"

    def test_binary_and_large_values_kept_exactly(self, store: Store) -> None:
        key = JobKey(new_server(), new_handle() + b"\x00\xff ../'\";%#@", b"\x00\xfe\x80 u")
        big = bytes(range(256)) * (5 * 4096)  # 5 MiB
        chunks = [b"\x00\x00nul", b"\xff\xfe\x80 not utf-8", b"", big]
        events = [Event(EventKind.STARTED, key, T0, function=b"fn\x00\xff")]
        events += [Event(EventKind.DATA, key, T0 + i, c) for i, c in enumerate(chunks)]
        events += [
            Event(EventKind.WARNING, key, T0 + 5, b"\x00w\xff"),
            Event(EventKind.COMPLETED, key, T0 + 6, b"\x00result\xff" * 100_000),
        ]
        store.write(events[:3])
        store.write(events[3:5])
        store.write(events[5:])
        got = store.get_many([exact(key)])[0]
        assert got is not None and got.key == key
        assert [len(c) for c in got.data] == [len(c) for c in chunks]
        assert_same(got, JobRecord.from_events(key, events))

    def test_get_many_in_order_with_missing(self, store: Store) -> None:
        server = new_server()
        keys = [JobKey(server, new_handle(), b"%d" % i) for i in range(300)]
        batch: list[Event] = []
        for i, key in enumerate(keys):
            batch += [
                Event(EventKind.STARTED, key, T0 + i, function=b"f"),
                Event(EventKind.DATA, key, T0 + i, b"data %d" % i),
                Event(EventKind.COMPLETED, key, T0 + i, b"%d" % i),
            ]
            if len(batch) >= 150:  # several jobs per write() call
                store.write(batch)
                batch = []
        store.write(batch)
        refs: list[JobRef] = []
        want: list[bytes | None] = []
        for i in range(1000):
            if i % 5 == 4:
                refs.append(JobRef(new_handle("missing"), server))
                want.append(None)
            else:
                n = (i * 37) % 300
                refs.append(JobRef(keys[n].handle, server) if i % 2 else JobRef(keys[n].handle))
                want.append(b"%d" % n)
        got = store.get_many(refs)
        assert [None if r is None else r.result for r in got] == want
        assert store.get_many([]) == []

    def test_long_keys_are_refused_or_kept(self, store: Store) -> None:
        key = JobKey(new_server(), new_handle() + b"h" * 300, b"u" * 300)
        event = Event(EventKind.STARTED, key, T0, function=b"f")
        try:
            store.write([event])
        except StoreError:
            assert store.get_many([JobRef(key.handle)])[0] is None
        else:
            assert_same(store.get_many([exact(key)])[0], JobRecord.from_events(key, [event]))

    # ---------------------------------------------------------------- leases, submissions, uniques

    def test_lease_set_on_start_and_renewed_by_heartbeat(self, store: Store) -> None:
        key = new_key()
        events = full_job(key)[:3]
        events[0].lease = 30.0
        store.write(events)
        got = store.get_many([exact(key)])[0]
        assert got is not None and got.lease_until == T0 + 30.0
        beat = Event(EventKind.HEARTBEAT, key, T0 + 10, lease=30.0)
        store.write([beat])
        got = store.get_many([exact(key)])[0]
        assert_same(got, JobRecord.from_events(key, [*events, beat]))
        assert got is not None and got.lease_until == T0 + 40.0 and got.data == [b"one", b"two"]
        assert not got.lost(T0 + 39.0) and got.lost(T0 + 41.0)

    def test_heartbeat_creates_no_record(self, store: Store) -> None:
        key = new_key()
        store.write([Event(EventKind.HEARTBEAT, key, T0, lease=30.0)])
        assert store.get_many([exact(key)]) == [None]

    def test_submitted_makes_a_queued_record_until_a_worker_starts(self, store: Store) -> None:
        key = new_key()
        first = Event(EventKind.SUBMITTED, key, T0 - 5, function=b"resize")
        store.write([first])
        got = store.get_many([exact(key)])[0]
        assert got is not None
        assert (got.state, got.attempt, got.function) == (State.QUEUED, 0, b"resize")
        store.write([Event(EventKind.SUBMITTED, key, T0 - 4, function=b"other")])
        assert_same(store.get_many([exact(key)])[0], JobRecord.from_events(key, [first]))
        events = full_job(key)
        store.write(events)
        got = store.get_many([exact(key)])[0]
        assert_same(got, JobRecord.from_events(key, [first, *events]))
        assert got is not None and got.attempt == 1 and got.state is State.COMPLETE

    def test_submitted_after_started_changes_nothing(self, store: Store) -> None:
        key = new_key()
        events = full_job(key)[:3]
        store.write(events)
        store.write([Event(EventKind.SUBMITTED, key, T0 + 1, function=b"late")])
        assert_same(store.get_many([exact(key)])[0], JobRecord.from_events(key, events))

    def test_lookup_by_unique_finds_the_newest_handle(self, store: Store) -> None:
        server, other = new_server(), new_server()
        unique = f"u-{RUN}-{next(_numbers)}".encode()
        old, new = JobKey(server, new_handle(), unique), JobKey(server, new_handle(), unique)
        elsewhere = JobKey(other, new_handle(), unique)
        stranger = JobKey(server, new_handle(), unique + b"x")
        store.write(full_job(old, T0))
        store.write(full_job(new, T0 + 10)[:2])
        store.write(full_job(stranger, T0 + 20))
        got_server, got_missing = store.get_many(
            [JobRef(b"", server, unique), JobRef(b"", server, unique + b"y")]
        )
        assert got_server is not None and got_server.key == new
        assert got_server.data == [b"one"]
        assert got_missing is None
        store.write(full_job(elsewhere, T0 + 30))
        mine, anywhere = store.get_many([JobRef(b"", server, unique), JobRef(b"", None, unique)])
        assert mine is not None and mine.key == new
        assert anywhere is not None and anywhere.key == elsewhere

    # ---------------------------------------------------------------- concurrency

    def test_concurrent_writers(self, store_url: str, store: Store) -> None:
        """Processes when the store is ``shared``, threads otherwise: nothing lost, order kept."""
        writers, count = 4, 30
        server = new_server()
        own = [JobKey(server, new_handle(), b"own") for _ in range(writers)]
        shared = JobKey(server, new_handle(), b"shared")
        runners: list[Any]
        if "shared" in store.capabilities:
            ctx = multiprocessing.get_context("forkserver")
            barrier: Any = ctx.Barrier(writers)
            runners = [
                ctx.Process(
                    target=_write_concurrently, args=(store_url, w, own[w], shared, count, barrier)
                )
                for w in range(writers)
            ]
        else:
            barrier = threading.Barrier(writers)
            runners = [
                threading.Thread(
                    target=_write_concurrently, args=(store_url, w, own[w], shared, count, barrier)
                )
                for w in range(writers)
            ]
        for runner in runners:
            runner.start()
        for runner in runners:
            runner.join(timeout=120)
        if "shared" in store.capabilities:
            assert [r.exitcode for r in runners] == [0] * writers
        records = store.get_many([exact(k) for k in [*own, shared]])
        for w, record in enumerate(records[:writers]):
            assert record is not None
            assert record.data == [b"%d:%d" % (w, i) for i in range(count)]
            assert (record.state, record.result) == (State.COMPLETE, b"%d" % w)
        shared_record = records[-1]
        assert shared_record is not None and len(shared_record.data) == writers * count
        for w in range(writers):
            mine = [c for c in shared_record.data if c.startswith(b"%d:" % w)]
            assert mine == [b"%d:%d" % (w, i) for i in range(count)]

    # ---------------------------------------------------------------- optional features

    def test_ttl(self, store: Store) -> None:
        """A TTL from the event overrides the store default; ttl 0 keeps for ever."""
        now = time.time()
        short, forever, default = new_key(), new_key(), new_key()
        store.write([Event(EventKind.STARTED, short, now, ttl=600)])
        store.write([Event(EventKind.STARTED, forever, now, ttl=0)])
        store.write([Event(EventKind.STARTED, default, now)])
        got_short, got_forever, got_default = store.get_many(
            [exact(short), exact(forever), exact(default)]
        )
        assert got_short is not None and got_forever is not None and got_default is not None
        if "expires" in store.capabilities:
            assert got_short.expires_at is not None
            assert now + 590 <= got_short.expires_at <= now + 610
            assert got_forever.expires_at is None

    def test_expired_job_is_expired_or_gone(self, store: Store) -> None:
        key = new_key()
        store.write(full_job(key, time.time())[:3])
        store.write([Event(EventKind.COMPLETED, key, time.time(), b"r", ttl=1.0)])
        if "expires" not in store.capabilities:
            assert store.get_many([exact(key)])[0] is not None
            return
        deadline = time.monotonic() + 10
        got = store.get_many([exact(key)])[0]
        while got is not None and got.state is not State.EXPIRED and time.monotonic() < deadline:
            time.sleep(0.1)
            got = store.get_many([exact(key)])[0]
        assert got is None or (got.state is State.EXPIRED and got.data == [] and got.result is None)

    def test_cursor_reads_chunks_after_n(self, store: Store) -> None:
        key = new_key()
        store.write(full_job(key))
        tail = get_after(store, exact(key), 1)
        assert tail is not None and tail.data == [b"two", b"three"] and tail.data_offset == 1
        assert tail.state is State.COMPLETE and tail.result == b"done"
        none_left = get_after(store, exact(key), 3)
        assert none_left is not None and none_left.data == [] and none_left.data_offset == 3
        assert get_after(store, JobRef(new_handle()), 0) is None

    def test_watch_wakes_a_waiter(self, store: Store) -> None:
        key = new_key()
        store.write([Event(EventKind.STARTED, key, T0)])
        watcher = watch(store, [exact(key)])
        try:
            if "push" not in store.capabilities:
                started = time.monotonic()
                assert watcher.wait(0.05) is False
                assert time.monotonic() - started < 5
                return
            store.write([Event(EventKind.DATA, key, T0 + 1, b"before the wait")])
            assert watcher.wait(5) is True  # a change before wait() is not lost
            timer = threading.Timer(
                0.05, store.write, args=([Event(EventKind.DATA, key, T0 + 2, b"later")],)
            )
            timer.start()
            try:
                assert watcher.wait(5) is True
            finally:
                timer.join()
        finally:
            watcher.close()

    def test_delete(self, store: Store) -> None:
        keep, gone = new_key(), new_key()
        other = JobKey(new_server(), gone.handle, b"other")
        for key in (keep, gone, other):
            store.write(full_job(key))
        if "delete" not in store.capabilities:
            with pytest.raises(StoreError):
                delete(store, [exact(gone)])
            return
        assert delete(store, [exact(gone)]) == 1
        assert store.get_many([exact(gone)])[0] is None
        assert store.get_many([exact(other)])[0] is not None
        assert delete(store, [JobRef(gone.handle)]) == 1  # the other job with that handle
        assert store.get_many([JobRef(gone.handle)])[0] is None
        assert store.get_many([exact(keep)])[0] is not None
        assert delete(store, [exact(gone)]) == 0

    @pytest.fixture
    def store_url_with_password(self) -> str | None:
        """A URL that opens the store with a password in it (its user/password part or its query),
        or None for a store type that takes no password (the password test then skips, saying so).
        Stores with passwords override this."""
        return None

    def test_url_hides_the_password(
        self, store: Store, store_url_with_password: str | None
    ) -> None:
        assert "://" in store.url and isinstance(store.capabilities, frozenset)
        if store_url_with_password is None:
            pytest.skip("this store type takes no password (store_url_with_password is None)")
        secret = urlsplit(store_url_with_password).password
        assert secret, f"store_url_with_password holds no password: {store_url_with_password!r}"
        opened = open_store(store_url_with_password)
        try:
            assert secret not in opened.url and secret not in repr(opened), opened.url
            assert urlsplit(opened.url).password == "***", opened.url
        finally:
            opened.close()

    # ---------------------------------------------------------------- listing and counting

    def _listed_jobs(self, store: Store) -> tuple[str, list[JobKey]]:
        """Six jobs on a server of their own, made in this order: queued, running (with a
        status point), complete, failed (exception), expired, running again (attempt 2)."""
        server = new_server("list")
        keys = [JobKey(server, new_handle(), f"list-{RUN}-{i}".encode()) for i in range(6)]
        now = time.time()
        store.write([Event(EventKind.SUBMITTED, keys[0], now - 50, function=b"queued-fn")])
        store.write(full_job(keys[1], now - 40)[:5])
        store.write(full_job(keys[2], now - 30))
        store.write(
            [
                Event(EventKind.STARTED, keys[3], now - 20, function=b"resize", worker="w"),
                Event(EventKind.EXCEPTION, keys[3], now - 19, b"boom", traceback="tb"),
            ]
        )
        store.write([Event(EventKind.STARTED, keys[4], now - 10, function=b"resize", ttl=0.5)])
        store.write(full_job(keys[5], now - 5)[:2])
        store.write([Event(EventKind.STARTED, keys[5], now - 4, function=b"resize", worker="w2")])
        time.sleep(0.6)  # keys[4] expires
        return server, keys

    def test_list_jobs_newest_first_in_pages(self, store: Store) -> None:
        if "list" not in store.capabilities:
            assert not can_list(store)
            with pytest.raises(StoreError):
                list_jobs(store, JobFilter())
            with pytest.raises(StoreError):
                count_by_state(store)
            return
        server, keys = self._listed_jobs(store)
        mine = JobFilter(server=server)
        seen: list[JobSummary] = []
        cursor: str | None = None
        pages = 0
        while True:
            page = list_jobs(store, mine, 4, cursor)
            pages += 1
            seen += page.jobs
            if page.cursor is None:
                break
            cursor = page.cursor
            if pages == 1:  # a job made after the first page is not on a later one
                store.write([Event(EventKind.STARTED, JobKey(server, new_handle(), b"late"), T0)])
            assert pages < 10
        assert [s.key for s in seen[:6]] == keys[::-1]
        assert len(seen) in (6, 7) and all(s.key.unique != b"late" for s in seen)
        states = [s.state for s in seen[:6]]
        assert states == [
            State.RUNNING,
            State.EXPIRED,
            State.FAILED,
            State.COMPLETE,
            State.RUNNING,
            State.QUEUED,
        ]
        again, expired, failed, complete, running, queued = seen[:6]
        assert (again.attempt, again.worker, again.function) == (2, "w2", b"resize")
        assert (running.numerator, running.denominator) == (1, 3)
        assert (complete.numerator, complete.denominator) == (3, 3)
        assert complete.finished_at is not None and complete.started_at is not None
        assert failed.error_kind == "exception" and complete.error_kind is None
        assert (queued.attempt, queued.function) == (0, b"queued-fn")
        assert expired.expires_at is not None and expired.expires_at <= time.time()
        assert seen[0].ref == JobRef(keys[5].handle, server, keys[5].unique)

    def test_list_jobs_filters(self, store: Store) -> None:
        if "list" not in store.capabilities:
            return
        server, keys = self._listed_jobs(store)

        def listed(**fields: Any) -> list[JobKey]:
            page = list_jobs(store, JobFilter(server=server, **fields), 100)
            assert page.cursor is None
            return [s.key for s in page.jobs]

        assert listed(states=frozenset({State.RUNNING})) == [keys[5], keys[1]]
        assert listed(states=frozenset({State.COMPLETE, State.FAILED})) == [keys[3], keys[2]]
        assert listed(states=frozenset({State.EXPIRED})) == [keys[4]]
        assert listed(states=frozenset({State.QUEUED})) == [keys[0]]
        assert listed(function=b"queued-fn") == [keys[0]]
        assert listed(function=b"nothing") == []
        assert listed(prefix=keys[2].handle) == [keys[2]]
        assert listed(prefix=f"list-{RUN}-3".encode()) == [keys[3]]  # a unique prefix
        assert listed(prefix=b"no such prefix") == []
        now = time.time()
        # a store may forget an expired job's function and times (it keeps its key and expiry)
        assert listed(since=now - 25) in ([keys[5], keys[4], keys[3]], [keys[5], keys[3]])
        assert listed(since=now - 25, until=now - 8) in ([keys[4], keys[3]], [keys[3]])
        assert list_jobs(store, JobFilter(server=new_server())).jobs == []

    def test_count_by_state(self, store: Store) -> None:
        if "list" not in store.capabilities:
            return
        server, _keys = self._listed_jobs(store)
        counts = count_by_state(store, JobFilter(server=server))
        assert counts == {
            State.QUEUED: 1,
            State.RUNNING: 2,
            State.COMPLETE: 1,
            State.FAILED: 1,
            State.EXPIRED: 1,
        }
        resized = count_by_state(store, JobFilter(server=server, function=b"resize"))
        assert resized.pop(State.EXPIRED) in (0, 1)  # its function may be forgotten
        assert resized == {State.QUEUED: 0, State.RUNNING: 2, State.COMPLETE: 1, State.FAILED: 1}
        assert sum(count_by_state(store, JobFilter(server=new_server())).values()) == 0

    def test_list_jobs_refuses_foreign_cursors_and_limits(self, store: Store) -> None:
        if "list" not in store.capabilities:
            return
        server, _keys = self._listed_jobs(store)
        for cursor in ("nonsense", "x.5", "1.-3", "\x00", "9" * 40, "m.1.2"):
            with pytest.raises(BadCursor):
                list_jobs(store, JobFilter(server=server), 10, cursor)
        for limit in (0, -1, 100_000):
            with pytest.raises(ConfigError):
                list_jobs(store, JobFilter(server=server), limit)
        with pytest.raises(ConfigError):
            JobFilter(states=frozenset({State.LOST}))
