"""Store outages: the worker spools what the store cannot take and replays it when it is back.

The outage tests stop a Redis, a memcached or a PostgreSQL of their own (never a shared server) for
``OUTAGE`` seconds while background jobs run on a private gearmand, with the worker as a real
``gearstash worker`` process; then they check that every job's record is complete, with every
chunk exactly once and in order, and that the worker's log said what happened. The last tests
check the spool file format itself (no servers).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.waiting import wait_until
from workers import running_worker

from gearstash import Client, StoreError, StoreRejected
from gearstash.model.records import Event, EventKind, JobKey, JobRef, State
from gearstash.spine.manager import open_store
from gearstash.store.spool import SpoolingStore
from gearstash.store.spoolfile import (
    FRAME,
    HEADER,
    SpoolFile,
    decode_events,
    encode_events,
    spool_files,
)
from gearstash.testing.gearmand import Gearmand
from gearstash.testing.servers import PrivateServer, postgres_spec, redis_spec

OUTAGE = 10.0  # seconds the store is down in the outage tests (the issue asks for ten)
CHUNKS = 5

JOBS_MODULE = '''
import time


def chunky(job):
    """CHUNKS data chunks "<workload>-<i>", DELAY s apart; the result is the reversed workload."""
    name, _, delay = job.workload.decode().partition("/")
    for i in range(CHUNKS):
        job.send_status(i + 1, CHUNKS)
        job.send_data(f"{name}-{i}")
        time.sleep(float(delay or 0.01))
    return name[::-1]
'''


def expected_data(name: str) -> list[bytes]:
    return [f"{name}-{i}".encode() for i in range(CHUNKS)]


# ------------------------------------------------------------------------- servers of our own


@pytest.fixture
def own_redis(own_server: Callable[..., PrivateServer]) -> PrivateServer:
    """A redis-server of this test's own with an fsync'ed append-only file: a stop and a start
    on the same port keep the data."""
    return own_server(lambda: redis_spec(persistent=True))


@pytest.fixture
def own_postgres(own_server: Callable[..., PrivateServer]) -> PrivateServer:
    """A PostgreSQL of this test's own (initdb'ed): a stop and a start keep the data."""
    return own_server(postgres_spec)


# ------------------------------------------------------------------------- worker processes


class WorkerProcess:
    """``gearstash worker`` serving ``jobs:chunky`` in a process of its own; its stderr is kept."""

    def __init__(self, folder: Path, server: str, store: str, *options: str) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "jobs.py").write_text(f"CHUNKS = {CHUNKS}\n" + textwrap.dedent(JOBS_MODULE))
        self.log = folder / f"worker-{time.monotonic_ns()}.log"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("GEARSTASH_") and k != "XDG_CONFIG_HOME"
        }
        env.update(GEARSTASH_HOME=str(folder / "home"), XDG_CONFIG_HOME=str(folder / "config"))
        env["GEARSTASH_STORE"] = store  # the URL stays off the command line
        argv = [sys.executable, "-m", "gearstash", "worker", "-s", server, *options, "jobs:chunky"]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                argv, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        wait_until(lambda: "gearstash worker: serving" in self.text(), 20, "the worker to start")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the worker did not stop on SIGTERM:\n{self.text()}") from None


@pytest.fixture
def worker_process(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    made: list[WorkerProcess] = []

    def start(server: str, store: str, *options: str) -> WorkerProcess:
        made.append(WorkerProcess(tmp_path / "worker", server, store, *options))
        return made[-1]

    try:
        yield start
    finally:
        for w in made:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()


def submit_chunky(client: Client, names: list[str], delay: float = 0.01) -> dict[str, JobRef]:
    return {n: client.submit_background("chunky", f"{n}/{delay}", unique=n) for n in names}


def _gone_from_server(client: Client, refs: dict[str, JobRef], timeout: float) -> None:
    """Wait until gearmand forgot every job: each one was completed by the worker."""

    def gone() -> bool:
        return not any(client.status(ref).known for ref in refs.values())

    wait_until(gone, timeout, "gearmand to forget the jobs (the worker to complete them)")


def assert_complete(client: Client, refs: dict[str, JobRef], timeout: float = 60) -> None:
    """Every job's stored record is complete: each chunk exactly once and in order, its result."""

    def all_final() -> bool:
        return all(v.state.final for v in client.fetch_many(list(refs.values())))

    wait_until(all_final, timeout, "every record to turn final")
    for name, view in zip(refs, client.fetch_many(list(refs.values())), strict=True):
        record = view.record
        assert record is not None, name
        assert view.state is State.COMPLETE, (name, view.state)
        assert record.data == expected_data(name), name
        assert [p.numerator for p in record.status] == list(range(1, CHUNKS + 1)), name
        assert record.result == name[::-1].encode(), name
        assert record.attempt == 1, name


def _run_outage(
    client: Client,
    stop_store: Callable[[], None],
    start_store: Callable[[], None],
    before: dict[str, JobRef],
) -> dict[str, JobRef]:
    """Stop the store for OUTAGE seconds while jobs are submitted and run; start it again.

    Returns the jobs submitted during the outage (all of them done by the worker before the
    store came back). Jobs in ``before`` are running when the store goes down.
    """
    stop_store()
    down_at = time.monotonic()
    during: dict[str, JobRef] = {}
    i = 0
    while time.monotonic() - down_at < OUTAGE - 2:
        during.update(submit_chunky(client, [f"during{i}"]))
        i += 1
        time.sleep(0.4)
    _gone_from_server(client, {**before, **during}, OUTAGE)
    time.sleep(max(OUTAGE - (time.monotonic() - down_at), 0))
    start_store()
    return during


def _jobs_before_across_during_and_after(
    client: Client, stop: Callable[[], Any], start: Callable[[], Any]
) -> None:
    """Jobs stored before the outage, slow jobs whose start is stored before it and whose data
    is not, at least 10 jobs while the store is down, jobs after: every one complete, each
    event once and in order (the store keeps its data across the stop)."""
    early = submit_chunky(client, [f"early{i}" for i in range(3)])
    assert_complete(client, early)
    crossing = submit_chunky(client, ["crossing0", "crossing1"], delay=0.5)
    wait_until(
        lambda: all(
            v.record is not None and v.record.started_at is not None
            for v in client.fetch_many(list(crossing.values()))
        ),
        10,
        "the slow jobs' start to be stored",
    )
    during = _run_outage(client, stop, start, crossing)
    after = submit_chunky(client, [f"after{i}" for i in range(3)])
    assert_complete(client, {**early, **crossing, **during, **after})
    assert len(during) >= 10


@pytest.mark.gearmand
def test_redis_outage_jobs_go_on_and_every_event_lands_in_order(
    gearmand: Gearmand, own_redis: PrivateServer, worker_process: Callable[..., WorkerProcess]
) -> None:
    worker = worker_process(gearmand.address, own_redis.url, "-c", "2")
    with Client([gearmand.address], store=own_redis.url) as client:
        _jobs_before_across_during_and_after(client, own_redis.stop, own_redis.start)
    assert worker.stop() == 0
    log = worker.text()
    assert f"store {own_redis.url} unreachable" in log, log
    assert "spooling captured events to" in log, log
    assert f"store {own_redis.url} back: replayed" in log, log
    assert "events of job" not in log, log  # nothing lost
    spool = Path(worker.folder / "home" / "spool")
    assert not [p for p in spool.rglob("*.spool")], "the drained spool file was removed"


@pytest.mark.gearmand
def test_memcached_outage_jobs_go_on_and_every_event_lands_in_order(
    gearmand: Gearmand, memcached_server: Any, worker_process: Callable[..., WorkerProcess]
) -> None:
    url = f"memcache://{memcached_server.address}"
    worker = worker_process(gearmand.address, url)
    with Client([gearmand.address], store=url) as client:
        early = submit_chunky(client, ["early0"])
        assert_complete(client, early)
        # memcached forgets everything when it stops: only jobs that start during the outage
        # can be checked after it.
        during = _run_outage(client, memcached_server.kill, memcached_server.start, {})
        after = submit_chunky(client, ["after0", "after1"])
        assert_complete(client, {**during, **after})
    assert len(during) >= 10
    assert worker.stop() == 0
    log = worker.text()
    assert f"store {url} unreachable" in log, log
    assert f"store {url} back: replayed" in log, log


@pytest.mark.gearmand
def test_spool_survives_a_worker_restart(
    gearmand: Gearmand,
    own_redis: PrivateServer,
    worker_process: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    folder = tmp_path / "spool"
    first = worker_process(gearmand.address, own_redis.url, "--spool", str(folder))
    with Client([gearmand.address], store=own_redis.url) as client:
        own_redis.stop()
        jobs = submit_chunky(client, [f"restart{i}" for i in range(6)])
        _gone_from_server(client, jobs, 20)
        assert first.stop() == 0  # SIGTERM while the store is still down
        text = first.text()
        assert "spooled batches" in text and "left in" in text, text
        assert [p.name for p in spool_files(folder)], "the spool file stays on disk"
        own_redis.start()
        # The store is back but nobody replays yet: the records are not there.
        assert all(v.record is None for v in client.fetch_many(list(jobs.values())))
        second = worker_process(gearmand.address, own_redis.url, "--spool", str(folder))
        assert_complete(client, jobs)
    assert second.stop() == 0
    text = second.text()
    assert "adopted" in text and "left by a stopped worker" in text, text
    assert "back: replayed" in text, text
    assert not spool_files(folder), "the replayed file was deleted"


@pytest.mark.gearmand
def test_full_spool_is_logged_and_the_worker_keeps_serving(
    gearmand: Gearmand, own_redis: PrivateServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    store = open_store(own_redis.url)
    with (
        running_worker(
            [gearmand.address],
            store,
            functions={"echo": lambda job: job.workload},
            spool=tmp_path / "spool",
            spool_max_bytes=600,
        ),
        Client([gearmand.address], store="null://") as client,
    ):
        own_redis.stop()
        results = [client.submit("echo", f"job{i}".encode(), timeout=20) for i in range(8)]
        assert [v.result for v in results] == [f"job{i}".encode() for i in range(8)]
        assert all(v.state is State.COMPLETE for v in results)
        own_redis.start()
    store.close()
    messages = [r.getMessage() for r in caplog.records]
    full = [m for m in messages if "spool" in m and "full" in m]
    assert full, messages
    assert any(m.startswith("spool ") and "new events are lost" in m for m in full), full
    assert any("lost" in m and "spool full" in m for m in messages), messages


@pytest.mark.gearmand
def test_on_store_down_fail_fails_jobs_while_the_store_is_down(
    gearmand: Gearmand, own_redis: PrivateServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    store = open_store(own_redis.url)
    with (
        running_worker(
            [gearmand.address],
            store,
            functions={"echo": lambda job: job.workload},
            on_store_down="fail",
        ) as worker,
        Client([gearmand.address], store=own_redis.url) as client,
    ):
        assert worker.store is store  # no spool under "fail"
        assert client.submit("echo", b"before", timeout=20).state is State.COMPLETE
        own_redis.stop()
        down = client.submit("echo", b"during", timeout=20)
        assert down.state is State.FAILED
        assert down.result is None
        assert down.record is not None
        (warning,) = down.record.warnings
        assert b"store down" in warning and b"not run" in warning, warning
        assert own_redis.url.encode() in warning
        own_redis.start()
        up = client.submit("echo", b"after", timeout=20)
        assert up.state is State.COMPLETE and up.result == b"after"
        stored = client.fetch(up.ref)
        assert stored.state is State.COMPLETE and stored.result == b"after"
    store.close()
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("store down: failing job") for m in messages), messages


# ------------------------------------------------------------------------- the spool format

KEY = JobKey("127.0.0.1:4730", b"H:host:1", b"\xffu\x00")


def _batch(i: int) -> list[Event]:
    return [Event(EventKind.DATA, KEY, time.time(), b"chunk-%d" % i, ttl=600.0)]


def test_every_event_field_round_trips_without_pickle() -> None:
    events = [
        Event(
            kind,
            KEY,
            1795896878.123456,
            payload=b"\x00\xff\xfebinary",
            numerator=3,
            denominator=7,
            function=b"reverse",
            worker="host:42",
            traceback="Traceback…\n",
            ttl=None if kind is EventKind.DATA else 0.5,
            workload=None if kind is EventKind.DATA else b"\x00\xffload",
        )
        for kind in EventKind
    ]
    payload = encode_events(events)
    assert b"pickle" not in payload and payload.startswith(b"[{")
    for name in (f.name for f in dataclasses.fields(Event)):  # every field, whatever it is
        assert f'"{name}":'.encode() in payload
    assert decode_events(payload) == events
    back = decode_events(payload)[0]
    assert isinstance(back.kind, EventKind) and isinstance(back.key, JobKey)


def test_frames_replay_in_order_and_only_once(tmp_path: Path) -> None:
    spool = SpoolFile.create(tmp_path)
    for i in range(5):
        spool.append(encode_events(_batch(i)))
    frames = spool.read(2, 1 << 20)
    assert [decode_events(p)[0].payload for _, p in frames] == [b"chunk-0", b"chunk-1"]
    spool.advance(frames[-1][0], len(frames))  # these two landed
    spool.close()
    adopted = SpoolFile.adopt(spool.path)
    assert adopted is not None and adopted.pending == 3
    rest = adopted.read(10, 1 << 20)
    assert [decode_events(p)[0].payload for _, p in rest] == [b"chunk-2", b"chunk-3", b"chunk-4"]
    adopted.close()


def test_torn_tail_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = SpoolFile.create(tmp_path)
    for i in range(3):
        spool.append(encode_events(_batch(i)))
    spool.close()
    with open(spool.path, "r+b") as f:  # a crash in the middle of the third append
        f.truncate(os.path.getsize(spool.path) - 5)
    adopted = SpoolFile.adopt(spool.path)
    assert adopted is not None
    assert adopted.pending == 2
    assert [decode_events(p)[0].payload for _, p in adopted.read(10, 1 << 20)] == [
        b"chunk-0",
        b"chunk-1",
    ]
    assert any("torn frame" in r.getMessage() for r in caplog.records)
    adopted.close()
    with open(spool.path, "r+b") as f:  # only a piece of a frame header
        f.truncate(HEADER.size + 3)
    adopted = SpoolFile.adopt(spool.path)
    assert adopted is not None and adopted.pending == 0
    adopted.close()


def test_corrupt_frame_stops_the_file_there(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = SpoolFile.create(tmp_path)
    ends = []
    for i in range(3):
        spool.append(encode_events(_batch(i)))
        ends.append(spool.end)
    spool.close()
    with open(spool.path, "r+b") as f:  # flip a payload byte of the second frame
        f.seek(ends[0] + FRAME.size + 4)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x55]))
    adopted = SpoolFile.adopt(spool.path)
    assert adopted is not None and adopted.pending == 1
    assert any("crc mismatch" in r.getMessage() for r in caplog.records)
    adopted.close()


def test_a_locked_file_is_left_alone_an_unlocked_one_is_adopted_and_replayed(
    tmp_path: Path,
) -> None:
    live = SpoolFile.create(tmp_path)
    live.append(encode_events(_batch(0)))
    assert SpoolFile.adopt(live.path) is None  # its process holds it
    dead = SpoolFile.create(tmp_path)
    for i in range(1, 4):
        dead.append(encode_events(_batch(i)))
    dead.close()  # the worker stopped: the lock is free
    store = open_store(f"memory://adopt-{time.monotonic_ns()}")
    spooling = SpoolingStore(store, tmp_path)
    wait_until(lambda: spooling.spooled == 0, 10, "the adopted file to be replayed")
    record = store.get_many([JobRef(KEY.handle, KEY.server, KEY.unique)])[0]
    assert record is not None
    assert record.data == [b"chunk-1", b"chunk-2", b"chunk-3"]
    assert sorted(spool_files(tmp_path)) == [live.path], "the replayed file was deleted"
    spooling.close()
    live.close()


class _Switch:
    """A real memory store that refuses writes while ``down`` (the spool's unit tests)."""

    def __init__(self) -> None:
        self.inner = open_store(f"memory://switch-{time.monotonic_ns()}")
        self.url = "switch://"
        self.capabilities = frozenset({"shared"})
        self.down = False
        self.writes: list[list[Event]] = []

    def write(self, events: Any) -> None:
        if self.down:
            raise StoreError("switch://: write failed: down")
        if any(e.payload == b"poison" for e in events):
            raise StoreRejected("switch://: value over the limit")
        self.writes.append(list(events))
        self.inner.write(events)

    def get_many(self, refs: Any) -> Any:
        return self.inner.get_many(refs)

    def close(self) -> None:
        pass


def test_spooling_store_keeps_order_across_an_outage_and_a_close(tmp_path: Path) -> None:
    inner = _Switch()
    store = SpoolingStore(inner, tmp_path, close_timeout=0.5)
    store.write(_batch(0))
    inner.down = True
    for i in range(1, 50):
        store.write(_batch(i))
    assert store.spooled == 49
    store.close()  # still down: left on disk
    assert len(spool_files(tmp_path)) == 1
    inner.down = False
    again = SpoolingStore(inner, tmp_path)
    again.write(_batch(50))  # waits behind the adopted batches
    wait_until(lambda: again.spooled == 0, 10, "the replay")
    again.write(_batch(51))
    record = inner.get_many([JobRef(KEY.handle, KEY.server, KEY.unique)])[0]
    assert record is not None
    assert record.data == [b"chunk-%d" % i for i in range(52)]
    again.close()
    assert not spool_files(tmp_path)


def test_many_writers_one_spool(tmp_path: Path) -> None:
    inner = _Switch()
    store = SpoolingStore(inner, tmp_path)
    inner.down = True
    keys = [JobKey("s:1", b"H:%d" % t, b"u") for t in range(4)]

    def writer(key: JobKey) -> None:
        for i in range(100):
            store.write([Event(EventKind.DATA, key, time.time(), b"%d" % i)])
            if i == 50:
                inner.down = False

    threads = [threading.Thread(target=writer, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_until(lambda: store.spooled == 0, 10, "the replay")
    for key in keys:
        record = inner.get_many([JobRef(key.handle, key.server, key.unique)])[0]
        assert record is not None and record.data == [b"%d" % i for i in range(100)]
    store.close()


def test_a_batch_the_store_refuses_for_good_is_not_spooled_and_cannot_block_the_replay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inner = _Switch()
    store = SpoolingStore(inner, tmp_path)
    poison = [Event(EventKind.DATA, KEY, time.time(), b"poison")]
    with pytest.raises(StoreRejected):
        store.write(poison)  # the store is up: the caller hears it refused, nothing is spooled
    assert store.spooled == 0
    inner.down = True
    store.write(_batch(0))
    store.write(poison)
    store.write(_batch(1))
    assert store.spooled == 3
    with caplog.at_level(logging.ERROR, logger="gearstash"):
        inner.down = False
        store.write(_batch(2))
        wait_until(lambda: store.spooled == 0, 10, "the replay past the refused batch")
    store.close()
    record = inner.get_many([JobRef(KEY.handle, KEY.server, KEY.unique)])[0]
    assert record is not None and record.data[-3:] == [b"chunk-0", b"chunk-1", b"chunk-2"]
    assert b"poison" not in record.data
    assert any("refused a spooled batch" in r.getMessage() for r in caplog.records)


@pytest.mark.gearmand
def test_postgresql_outage_jobs_go_on_and_every_event_lands_in_order(
    gearmand: Gearmand,
    own_postgres: PrivateServer,
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
