"""``gearstash worker --processes N``: real processes under the prefork supervisor, a private
gearmand and a SQLite file. A child killed with SIGKILL is replaced; SIGTERM to the supervisor
drains every child (the jobs in hand finish and are stored) and the supervisor exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.waiting import wait_until

from gearstash import Client
from gearstash.model.records import State

TESTS = Path(__file__).resolve().parent


def children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (Linux /proc)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return set()
    return {int(p) for p in text.split()}


@pytest.fixture
def supervisor(gearmand, tmp_sqlite_url, tmp_path) -> Iterator[subprocess.Popen[bytes]]:
    """``gearstash worker --processes 2 crashjobs:hang`` in a session of its own; the whole
    session is killed at teardown whatever the test left running."""
    env = dict(os.environ, PYTHONPATH=str(TESTS), GEARSTASH_STORE=tmp_sqlite_url)
    log = open(tmp_path / "supervisor.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gearstash",
            "-v",
            "worker",
            "-s",
            gearmand.address,
            "--processes",
            "2",
            "crashjobs:hang",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        for pid in children(proc.pid):
            os.kill(pid, signal.SIGKILL)


def test_a_dead_child_is_replaced_and_sigterm_drains_all(
    supervisor, gearmand, tmp_sqlite_url, tmp_path
):
    first = wait_until(lambda: len(c := children(supervisor.pid)) == 2 and c, what="2 children")
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    now = wait_until(
        lambda: len(c := children(supervisor.pid)) == 2 and victim not in c and c,
        what="the killed child replaced",
    )
    assert first - {victim} <= now  # the other child was left alone

    with Client([gearmand.address], store=tmp_sqlite_url) as client:
        refs = [client.submit_background("hang", b"2") for _ in range(4)]

        def both_running() -> list[Any] | None:
            views = client.fetch_many(refs)
            busy = [v.ref for v in views if v.state is State.RUNNING and v.data == [b"begun"]]
            return busy if len(busy) == 2 else None

        running = wait_until(both_running, what="both children running a job")
        workers = {client.fetch(r).record.worker for r in running}  # type: ignore[union-attr]
        assert len(workers) == 2, workers  # two processes, one job each

        os.kill(supervisor.pid, signal.SIGTERM)
        assert supervisor.wait(30) == 0
        assert children(supervisor.pid) == set()
        for pid in now:
            assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
        views = client.fetch_many(refs)
    done = [v for v in views if v.state is State.COMPLETE]
    assert {v.ref for v in done} == set(running)  # the jobs in hand finished and were stored
    assert all(v.result == b"woke" for v in done)
    assert sum(v.state is State.QUEUED for v in views) == 2  # nothing else was taken
    log = (tmp_path / "supervisor.log").read_text()
    assert f"worker process {victim} killed by SIGKILL; starting another" in log, log


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return True
