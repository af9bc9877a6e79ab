"""The capturing worker and the client helper against a real gearmand (started per test)."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import uuid

import pytest
from workers import FUNCTIONS, running_worker

from gearstash import Client, JobRef, ProtocolError, State, Worker
from gearstash.errors import JobNotFound, ServerUnavailable
from gearstash.model.records import JobRecord
from gearstash.protocol.admin import parse_status
from gearstash.spine.manager import open_store

pytestmark = pytest.mark.gearmand


@pytest.fixture
def store_url() -> str:
    return f"memory://{uuid.uuid4().hex}"


def test_seed_flow_background_job_fetched_by_handle(gearmand, store_url):
    with (
        running_worker([gearmand.address], store_url),
        Client([gearmand.address], store=store_url) as c,
    ):
        ref = c.submit_background("reverse", b"ABC123")
        assert ref.server == gearmand.address and ref.unique and ref.handle.startswith(b"H:")
        progress: list[tuple[int, int]] = []
        view = c.wait(
            ref, timeout=10, on_progress=lambda v: progress.append((v.numerator, v.denominator))
        )
        assert view.state is State.COMPLETE
        assert view.result == b"321CBA"
        assert view.data == [b"chunk-0", b"chunk-1", b"chunk-2"]
        assert view.record is not None and view.record.warnings == [b"careful"]
        assert [(p.numerator, p.denominator) for p in view.record.status] == [
            (1, 3),
            (2, 3),
            (3, 3),
        ]
        # gearmand itself forgets the job (once the worker's WORK_COMPLETE, sent just after the
        # store write, reaches it): finished looks like unknown there ...
        deadline = time.monotonic() + 5
        live = c.status(ref)
        while live.known and time.monotonic() < deadline:
            time.sleep(0.01)
            live = c.status(ref)
        assert (live.known, live.running) == (False, False)
        # ... but fetch by the bare handle, from a fresh client, gives the definite state and data.
        with Client([gearmand.address], store=store_url) as other:
            again = other.fetch(ref.handle.decode())
        assert again.state is State.COMPLETE and again.result == b"321CBA"
        assert again.to_json()["data"] == ["chunk-0", "chunk-1", "chunk-2"]


def test_queued_running_and_unknown_states(gearmand, store_url):
    with Client([gearmand.address], store=store_url) as c:
        ref = c.submit_background("slow", b"1.0")
        assert c.fetch(ref).state is State.QUEUED  # no worker yet
        assert c.fetch("H:nowhere:99").state is State.UNKNOWN
        with pytest.raises(JobNotFound):
            c.wait("H:nowhere:99", timeout=2)
        with running_worker([gearmand.address], store_url):
            deadline = time.monotonic() + 5
            while c.fetch(ref).state is State.QUEUED and time.monotonic() < deadline:
                time.sleep(0.01)
            assert c.fetch(ref).state is State.RUNNING
            assert c.wait(ref, timeout=10).state is State.COMPLETE


def test_foreground_job_with_callbacks(gearmand, store_url):
    with (
        running_worker([gearmand.address], store_url),
        Client([gearmand.address], store=store_url) as c,
    ):
        seen: list[object] = []
        view = c.submit(
            "reverse",
            b"hello",
            on_data=lambda d: seen.append(("data", d)),
            on_status=lambda n, d: seen.append(("status", n, d)),
            on_warning=lambda w: seen.append(("warning", w)),
        )
        assert view.state is State.COMPLETE and view.result == b"olleh"
        assert seen == [
            ("status", 1, 3),
            ("data", b"chunk-0"),
            ("status", 2, 3),
            ("data", b"chunk-1"),
            ("status", 3, 3),
            ("data", b"chunk-2"),
            ("warning", b"careful"),
        ]
        # the worker captured the foreground job too
        stored = c.fetch(view.ref)
        assert stored.state is State.COMPLETE and stored.data == [
            b"chunk-0",
            b"chunk-1",
            b"chunk-2",
        ]


def test_exceptions_and_failures_are_kept(gearmand, store_url):
    with (
        running_worker([gearmand.address], store_url),
        Client([gearmand.address], store=store_url) as c,
    ):
        fg = c.submit("boom", b"x")
        assert fg.state is State.FAILED
        assert fg.record is not None and fg.record.error is not None
        assert fg.record.error.message == "ValueError: bad input: x"
        bg = c.wait(c.submit_background("boom", b"y"), timeout=10)
        assert bg.state is State.FAILED and bg.data == [b"before the crash"]
        assert bg.record is not None and bg.record.error is not None
        assert bg.record.error.kind == "exception"
        assert (
            "Traceback" in bg.record.error.traceback and "bad input: y" in bg.record.error.traceback
        )
        refused = c.wait(c.submit_background("refuse", b"z"), timeout=10)
        assert refused.state is State.FAILED
        assert refused.record is not None and refused.record.error is not None
        assert (refused.record.error.kind, refused.record.error.message) == ("fail", "refused z")
        # the worker is still serving
        assert c.submit("echo", b"still alive").result == b"still alive"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\0",
        b"a\0b\0\0",
        bytes(range(256)),
        b"\xff\xfe not utf-8 \x80",
        os.urandom(3 * 1024 * 1024),
    ],
    ids=["empty", "nul", "nuls", "all-bytes", "invalid-utf8", "3MB"],
)
def test_binary_payloads_round_trip(gearmand, tmp_sqlite_url, payload):
    with (
        running_worker([gearmand.address], tmp_sqlite_url),
        Client([gearmand.address], store=tmp_sqlite_url) as c,
    ):
        assert c.submit("echo", payload).result == payload
        view = c.wait(c.submit_background("echo", payload), timeout=20)
        assert view.result == payload and view.data == [payload]
        record = JobRecord.from_json(view.to_json() | {"format": "gearstash.job/1"})
        assert record.result == payload and record.data == [payload]


def test_unique_over_63_bytes_is_refused_before_sending(gearmand, store_url):
    with Client([gearmand.address], store=store_url) as c:
        with pytest.raises(ProtocolError, match="63"):
            c.submit_background("echo", b"x", unique=b"u" * 64)
        ref = c.submit_background("echo", b"x", unique=b"u" * 63)
        assert ref.unique == b"u" * 63
        assert c.status_unique(b"u" * 63).known
        status = {s.function: s for s in parse_status(gearmand.admin("status").splitlines())}
        assert status["echo"].queued == 1, status  # the 63-byte one only: no worker runs here


def test_several_job_servers(gearmand_factory, store_url):
    a, b = gearmand_factory(), gearmand_factory()
    servers = [a.address, b.address]
    with Client(servers, store=store_url) as c:
        refs = [c.submit_background("reverse", b"job%d" % i) for i in range(20)]
        assert {r.server for r in refs} == set(servers)  # spread by unique
        # both servers issue the same first handle: identity must not collide
        handles = {(r.server, r.handle) for r in refs}
        assert len(handles) == 20
        with running_worker(servers, store_url):
            views = [c.wait(r, timeout=10) for r in refs]
        for i, v in enumerate(views):
            assert v.state is State.COMPLETE and v.result == (b"job%d" % i)[::-1]
        # the same bare handle on two servers resolves to the right job when the server is given
        same = [r for r in refs if r.handle == refs[0].handle]
        for r in same:
            assert c.fetch(JobRef(r.handle, r.server)).result == c.fetch(r).result
        many = c.fetch_many(refs)
        assert [m.result for m in many] == [v.result for v in views]


def test_one_server_down_client_fails_over(gearmand_factory, store_url):
    a, b = gearmand_factory(), gearmand_factory()
    b.stop()
    with Client([a.address, b.address], store=store_url, connect_timeout=1) as c:
        refs = [c.submit_background("echo", b"%d" % i) for i in range(10)]
        assert {r.server for r in refs} == {a.address}
        with running_worker([a.address, b.address], store_url):
            assert all(c.wait(r, timeout=10).state is State.COMPLETE for r in refs)
    with (
        Client([b.address], store=store_url, connect_timeout=1) as dead,
        pytest.raises(ServerUnavailable, match="cannot connect"),
    ):
        dead.submit_background("echo", b"x")


def test_gearmand_restart_reuses_handles_without_mixing_jobs(gearmand, tmp_sqlite_url):
    with (
        running_worker([gearmand.address], tmp_sqlite_url),
        Client([gearmand.address], store=tmp_sqlite_url) as c,
    ):
        first = c.wait(c.submit_background("reverse", b"before"), timeout=10)
        assert first.result == b"erofeb"
        gearmand.restart()
        time.sleep(0.2)
        deadline = time.monotonic() + 10
        while True:  # the worker reconnects with backoff; the client reconnects on demand
            try:
                second_ref = c.submit_background("slow", b"0.6")
                break
            except ServerUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert second_ref.handle == first.ref.handle  # gearmand reused the handle
        # the new job is in flight: its handle must not show the old job's output
        mid = c.fetch(second_ref)
        assert mid.state in (State.QUEUED, State.RUNNING) and mid.result is None
        bare = c.fetch(second_ref.handle.decode())
        assert bare.state in (State.QUEUED, State.RUNNING) and bare.result is None
        done = c.wait(second_ref, timeout=15)
        assert done.result == b"slept" and done.data == []
        # the old job is still reachable by its full reference
        old = c.fetch(first.ref)
        assert old.state is State.COMPLETE and old.result == b"erofeb"


@pytest.mark.gearman_tools
def test_job_from_the_c_gearman_tool_is_captured(gearmand, tmp_sqlite_url):
    tool = shutil.which("gearman")
    if tool is None:
        from servers import need

        need(False, "the C gearman tool (Debian package gearman-tools) is not installed")
    out = subprocess.run(
        [tool, "-h", "127.0.0.1", "-p", str(gearmand.port), "-f", "reverse", "-b", "-v", "Rasmus"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    handle = next(w for w in out.split() if w.startswith("H:"))
    with (
        running_worker([gearmand.address], tmp_sqlite_url),
        Client([gearmand.address], store=tmp_sqlite_url) as c,
    ):
        view = c.wait(handle, timeout=10)
        assert view.state is State.COMPLETE and view.result == b"sumsaR"
        assert view.record is not None and len(view.record.key.unique) > 0  # libgearman sent a UUID


def test_worker_survives_a_failing_store(gearmand):
    calls: list[int] = []

    class BrokenStore:
        url = "broken://"
        capabilities = frozenset[str]()

        def write(self, events):
            calls.append(len(events))
            raise RuntimeError("disk on fire")

        def get_many(self, refs):
            return [None] * len(refs)

        def close(self):
            pass

    with (
        running_worker([gearmand.address], BrokenStore()),
        Client([gearmand.address], store="null://") as c,
    ):
        for i in range(3):
            assert c.submit("reverse", b"x%d" % i).result == (b"x%d" % i)[::-1]
    # every event was offered to the store: started, 3 status, 3 data, 1 warning, completed
    assert sum(calls) == 3 * 9


def test_worker_rides_out_a_gearmand_restart(gearmand, store_url):
    with (
        running_worker([gearmand.address], store_url),
        Client([gearmand.address], store=store_url) as c,
    ):
        assert c.submit("echo", b"one").result == b"one"
        gearmand.stop()
        time.sleep(0.5)
        gearmand.start()
        deadline = time.monotonic() + 15
        while True:
            try:
                ref = c.submit_background("echo", b"two")
                break
            except ServerUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert c.wait(ref, timeout=15).result == b"two"


def test_concurrency_runs_jobs_at_once(gearmand, store_url):
    with (
        running_worker([gearmand.address], store_url, concurrency=4),
        Client([gearmand.address], store=store_url) as c,
    ):
        refs = [c.submit_background("slow", b"1.5") for _ in range(4)]
        deadline = time.monotonic() + 10
        states: list[State] = []
        while time.monotonic() < deadline:
            states = [v.state for v in c.fetch_many(refs)]
            if states == [State.RUNNING] * 4:
                break
            time.sleep(0.01)
        assert states == [State.RUNNING] * 4  # all four held by the one worker at once
        for r in refs:
            assert c.wait(r, timeout=10).state is State.COMPLETE


def test_stored_before_the_server_hears_done(gearmand, tmp_sqlite_url):
    """A client that sees the job gone from the server always finds the final record."""
    with (
        running_worker([gearmand.address], tmp_sqlite_url),
        Client([gearmand.address], store=tmp_sqlite_url) as c,
    ):
        refs = [c.submit_background("reverse", b"r%d" % i) for i in range(50)]
        pending = set(range(50))
        deadline = time.monotonic() + 20
        while pending and time.monotonic() < deadline:
            todo = sorted(pending)
            for i, view in zip(todo, c.fetch_many([refs[i] for i in todo]), strict=True):
                if view.status is not None and not view.status.known:
                    assert view.state is State.COMPLETE, view
                    assert view.data == [b"chunk-0", b"chunk-1", b"chunk-2"]
                    pending.discard(i)
        assert not pending


def test_fetch_many_is_one_round_trip_per_server(gearmand_factory, store_url, monkeypatch):
    a, b = gearmand_factory(), gearmand_factory()
    with Client([a.address, b.address], store=store_url) as c:
        refs = [c.submit_background("echo", b"%d" % i) for i in range(300)]
        from gearstash.transport.connection import Connection

        sends: list[int] = []
        original = Connection.send

        def counting(self, data):
            sends.append(len(data))
            return original(self, data)

        monkeypatch.setattr(Connection, "send", counting)
        store = open_store(store_url)
        gets: list[int] = []
        original_get = type(store).get_many
        monkeypatch.setattr(
            type(store), "get_many", lambda s, r: gets.append(len(r)) or original_get(s, r)
        )
        views = c.fetch_many(refs)
    assert len(views) == 300 and all(v.state is State.QUEUED for v in views)
    assert len(sends) == 2  # one pipelined GET_STATUS batch per server
    assert gets == [300]  # one store query


def test_pipelined_statuses_keep_each_jobs_own_answer(gearmand, store_url):
    """Replies alike share one Status; replies that differ keep their own (known or not)."""
    with Client([gearmand.address], store=store_url) as c:
        queued = [c.submit_background("nobody_serves_this", b"%d" % i) for i in range(3)]
        unknown = [JobRef(b"H:nowhere:%d" % i, gearmand.address) for i in range(3)]
        refs = [queued[0], unknown[0], queued[1], unknown[1], unknown[2], queued[2]]
        found, down = c.links.statuses(refs)
        assert not down
        answers = [found[(r.server, r.handle)] for r in refs]
        assert [(a.known, a.running) for a in answers] == [
            (True, False),
            (False, False),
            (True, False),
            (False, False),
            (False, False),
            (True, False),
        ]
        assert all(a.server == gearmand.address for a in answers)
        for one, ref in zip(answers, refs, strict=True):
            assert c.links.status(ref) == one  # as asked alone


def test_stop_finishes_the_job_in_hand(gearmand, store_url):
    worker = Worker([gearmand.address], store=store_url)
    worker.register("slow", FUNCTIONS["slow"])
    thread = threading.Thread(target=worker.work, kwargs={"handle_signals": False})
    thread.start()
    with Client([gearmand.address], store=store_url) as c:
        ref = c.submit_background("slow", b"1.0")
        deadline = time.monotonic() + 5
        while c.fetch(ref).state is not State.RUNNING and time.monotonic() < deadline:
            time.sleep(0.01)
        worker.stop()
        thread.join(10)
        assert not thread.is_alive()
        view = c.fetch(ref)
        assert view.state is State.COMPLETE and view.result == b"slept"


def test_a_silent_running_job_reaches_the_store_within_the_flush_interval(gearmand, store_url):
    def quiet(job):
        time.sleep(1.0)
        return b"done"

    with (
        running_worker([gearmand.address], store_url, {"quiet": quiet}, flush_interval=0.05),
        Client([gearmand.address], store=store_url) as c,
    ):
        ref = c.submit_background("quiet", b"")
        store = open_store(store_url)
        deadline = time.monotonic() + 5
        record = None
        while (record is None or record.state is State.QUEUED) and time.monotonic() < deadline:
            record = store.get_many([ref])[0]  # queued: the client's submission marker
            time.sleep(0.01)
        assert record is not None and record.state is State.RUNNING and record.worker
        assert c.fetch(ref).state is State.RUNNING
        assert c.wait(ref, timeout=10).result == b"done"


def test_chatty_job_events_are_written_in_batches(gearmand):
    writes: list[int] = []
    inner = open_store(f"memory://{uuid.uuid4().hex}")

    class CountingStore:
        url = "counting://"
        capabilities = frozenset[str]()

        def write(self, events):
            writes.append(len(events))
            inner.write(events)

        def get_many(self, refs):
            return inner.get_many(refs)

        def close(self):
            pass

    def chatty(job):
        for i in range(200):
            job.send_data(b"%d" % i)
        return b"ok"

    store = CountingStore()
    with (
        running_worker([gearmand.address], store, {"chatty": chatty}, flush_interval=10),
        Client([gearmand.address], store=store, mark_submissions=False) as c,
    ):
        view = c.wait(c.submit_background("chatty", b""), timeout=10)
    assert view.data == [b"%d" % i for i in range(200)]
    assert writes == [202]  # started + 200 chunks + completed in one write


def _paced(job):
    """Five data chunks, a little apart, then the joined result."""
    for i in range(5):
        job.send_status(i + 1, 5)
        job.send_data(b"line %d" % i)
        time.sleep(0.05)
    return b"paced"


def test_follow_yields_every_chunk_once_in_order_then_the_final_state(gearmand, store_url):
    with (
        running_worker([gearmand.address], store_url, {"paced": _paced}),
        Client([gearmand.address], store=store_url) as c,
    ):
        ref = c.submit_background("paced", b"")
        updates = list(c.follow(ref, timeout=20))
    chunks = [chunk for u in updates for chunk in u.chunks]
    assert chunks == [b"line %d" % i for i in range(5)]
    offsets = [u.offset for u in updates if u.chunks]
    assert offsets == sorted(offsets) and offsets[0] == 0
    assert updates[-1].view.state is State.COMPLETE
    assert len(updates) > 2  # it followed the job as it went, not just at the end


def test_follow_from_a_cursor(gearmand, store_url):
    with (
        running_worker([gearmand.address], store_url, {"paced": _paced}),
        Client([gearmand.address], store=store_url) as c,
    ):
        ref = c.submit_background("paced", b"")
        c.wait(ref, timeout=20)
        updates = list(c.follow(ref, after=3, timeout=5))
    assert [chunk for u in updates for chunk in u.chunks] == [b"line 3", b"line 4"]
    assert updates[0].offset == 3


def test_forget_removes_the_record(gearmand, store_url):
    with (
        running_worker([gearmand.address], store_url),
        Client([gearmand.address], store=store_url) as c,
    ):
        ref = c.submit_background("echo", b"bye")
        assert c.wait(ref, timeout=10).result == b"bye"
        # the record turns final just before gearmand hears the job ended: let it forget the job
        deadline = time.monotonic() + 5
        while c.status(ref).known and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.forget(ref) == 1
        assert c.fetch(ref).state is State.UNKNOWN
        assert c.forget(ref) == 0


def test_per_function_ttl_expires_the_record(gearmand):
    store_url = f"memory://{uuid.uuid4().hex}?ttl=3600"
    worker_functions = {"echo": FUNCTIONS["echo"]}
    worker = Worker([gearmand.address], store=store_url)
    worker.register("echo", worker_functions["echo"])
    worker.register("brief", FUNCTIONS["echo"], ttl=0.3)
    thread = threading.Thread(target=worker.work, kwargs={"handle_signals": False})
    thread.start()
    try:
        with Client([gearmand.address], store=store_url) as c:
            kept = c.submit_background("echo", b"kept")
            brief = c.submit_background("brief", b"brief")
            assert c.wait(brief, timeout=10).result == b"brief"
            assert c.wait(kept, timeout=10).result == b"kept"
            record = c.fetch(brief).record
            assert record is not None and record.expires_at is not None
            time.sleep(0.4)
            gone = c.fetch(brief)
            assert gone.state is State.EXPIRED and gone.data == [] and gone.result is None
            assert c.fetch(kept).state is State.COMPLETE
            assert open_store(store_url).purge() == 1  # type: ignore[attr-defined]
            assert c.fetch(brief).state is State.UNKNOWN
    finally:
        worker.stop()
        thread.join(10)
