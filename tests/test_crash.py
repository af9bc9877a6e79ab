"""Crashes and restarts produced for real: a worker killed with SIGKILL mid-job, leases running
out, gearmand restarting with and without a persistent queue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.waiting import wait_until
from workers import running_worker

from gearstash import Client
from gearstash.model.records import State

TESTS = Path(__file__).parent


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest) -> str:
    """A store shared by processes: SQLite on disk, or Redis."""
    fixture = "tmp_sqlite_url" if request.param == "sqlite" else "redis_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """``spawn(server, store, spec, *args)``: a ``gearstash worker`` process; killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(server: str, store: str, spec: str, *args: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONPATH=str(TESTS), GEARSTASH_STORE=store)
        log = open(tmp_path / f"worker-{len(procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "gearstash", "-v", "worker", "-s", server, *args, spec],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_sigkill_mid_job_leaves_the_next_attempt_alone(gearmand, store_url, spawn, tmp_path):
    marker = tmp_path / "attempted"
    first = spawn(gearmand.address, store_url, "crashjobs:attempt")
    with Client([gearmand.address], store=store_url) as client:
        ref = client.submit_background("attempt", str(marker))
        running = wait_until(
            lambda: (v := client.fetch(ref)).state is State.RUNNING and len(v.data) == 3 and v,
            what="three chunks of the first attempt",
        )
        assert running.data == [f"{first.pid}:{i}".encode() for i in range(3)]
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = spawn(gearmand.address, store_url, "crashjobs:attempt")
        done = client.wait(ref, timeout=30)
    assert done.state is State.COMPLETE, done
    assert done.record is not None and done.record.attempt == 2
    assert done.data == [f"{second.pid}:{i}".encode() for i in range(5)]
    assert done.result == f"done by {second.pid}".encode()


def test_a_dead_workers_job_reads_lost_once_its_lease_ran_out(gearmand, store_url, spawn):
    worker = spawn(gearmand.address, store_url, "crashjobs:hang", "--lease", "1")
    with Client([gearmand.address], store=store_url, timeout=5) as client:
        ref = client.submit_background("hang", b"600")
        view = wait_until(
            lambda: (v := client.fetch(ref)).data == [b"begun"] and v, what="the job to begin"
        )
        assert view.state is State.RUNNING
        assert view.record is not None and view.record.lease_until is not None
        assert view.record.lease_until > view.record.started_at
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        gearmand.restart()  # no persistent queue: the server forgets the job; nobody takes it over
        lost = client.wait(ref, timeout=20)
    assert lost.state is State.LOST
    assert lost.data == [b"begun"] and lost.result is None


def test_a_live_worker_keeps_renewing_its_lease(gearmand, store_url, spawn):
    # a 6 s lease renewed every 2 s, a job of 12 s: a renewal late by up to 4 s is still in time
    spawn(gearmand.address, store_url, "crashjobs:hang", "--lease", "6")
    with Client([gearmand.address], store=store_url, connect_timeout=1, timeout=2) as client:
        ref = client.submit_background("hang", b"12")
        wait_until(lambda: client.fetch(ref).data == [b"begun"], what="the job to begin")
        gearmand.stop()  # the record alone now tells whether the job is alive
        states: set[State] = set()
        leases: set[float] = set()
        while True:
            view = client.fetch(ref)
            states.add(view.state)
            assert view.status is None
            if view.state.final:
                break
            assert view.record is not None and view.record.lease_until is not None
            leases.add(view.record.lease_until)
            time.sleep(0.2)
    assert view.state is State.COMPLETE and view.result == b"woke"
    assert State.LOST not in states and State.RUNNING in states
    assert len(leases) >= 3, "the lease was not renewed while the job ran"


def test_persistent_queue_restart_keeps_queued_jobs_records(gearmand_factory, store_url, tmp_path):
    queue = tmp_path / "queue.db"
    server = gearmand_factory(extra_args=["-q", "libsqlite3", f"--libsqlite3-db={queue}"])
    with Client([server.address], store=store_url) as client:
        refs = [client.submit_background("reverse", f"job{i}") for i in range(5)]
        assert [v.state for v in client.fetch_many(refs)] == [State.QUEUED] * 5
        server.restart()
        # the server replays the jobs under new handles; they are still queued
        assert [v.state for v in client.fetch_many(refs)] == [State.QUEUED] * 5
        fresh = client.submit_background("reverse", "fresh")
        with running_worker([server.address], store_url):
            done = [client.wait(r, timeout=20) for r in refs]
            fresh_done = client.wait(fresh, timeout=20)
        assert [v.state for v in done] == [State.COMPLETE] * 5
        assert [v.result for v in done] == [f"{i}boj".encode() for i in range(5)]
        assert fresh_done.result == b"hserf"
        # a handle the restarted server gave out again never shows an old job's output
        reused = [r for r in refs if r.handle == fresh.handle]
        for ref in reused:
            assert client.fetch(ref).result != b"hserf"
        assert client.fetch(fresh).result == b"hserf"


def test_follow_flags_the_new_attempt_and_restarts_its_chunks(gearmand, store_url, spawn, tmp_path):
    marker = tmp_path / "attempted"
    first = spawn(gearmand.address, store_url, "crashjobs:attempt")
    second = None
    with Client([gearmand.address], store=store_url) as client:
        ref = client.submit_background("attempt", str(marker))
        updates = []
        for update in client.follow(ref, timeout=60):
            updates.append(update)
            seen = [c for u in updates for c in u.chunks]
            if second is None and len(seen) >= 3:
                first.send_signal(signal.SIGKILL)
                first.wait(10)
                second = spawn(gearmand.address, store_url, "crashjobs:attempt")
    assert second is not None
    restarts = [i for i, u in enumerate(updates) if u.restarted]
    assert len(restarts) == 1, [(u.offset, u.chunks, u.restarted) for u in updates]
    before = [c for u in updates[: restarts[0]] for c in u.chunks]
    after = [c for u in updates[restarts[0] :] for c in u.chunks]
    assert before == [f"{first.pid}:{i}".encode() for i in range(3)]
    assert updates[restarts[0]].offset == 0
    assert after == [f"{second.pid}:{i}".encode() for i in range(5)]
    assert updates[-1].view.state is State.COMPLETE


def test_sigkill_of_a_concurrent_worker_restarts_every_job_it_held(
    gearmand, store_url, spawn, tmp_path
):
    first = spawn(gearmand.address, store_url, "crashjobs:attempt", "-c", "3")
    with Client([gearmand.address], store=store_url) as client:
        refs = client.submit_background_many(
            [("attempt", str(tmp_path / f"attempted-{i}")) for i in range(3)]
        )
        wait_until(
            lambda: all(len(v.data) == 3 for v in client.fetch_many(refs)),
            what="three chunks of every first attempt",
        )
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = spawn(gearmand.address, store_url, "crashjobs:attempt", "-c", "3")
        done = [client.wait(ref, timeout=30) for ref in refs]
    for view in done:
        assert view.state is State.COMPLETE and view.record is not None
        assert view.record.attempt == 2
        assert view.data == [f"{second.pid}:{i}".encode() for i in range(5)]
