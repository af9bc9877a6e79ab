"""Test helpers: a gearstash worker running in a thread, and job functions used by several tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from gearstash import JobFailed, Worker
from gearstash.worker.job import Job


def reverse(job: Job) -> bytes:
    """Three status steps and a data chunk per step, a warning, then the reversed workload."""
    for i in range(3):
        job.send_status(i + 1, 3)
        job.send_data(b"chunk-%d" % i)
    job.send_warning(b"careful")
    return job.workload[::-1]


def echo(job: Job) -> bytes:
    """Return the workload unchanged (data chunk = the workload too)."""
    job.send_data(job.workload)
    return job.workload


def boom(job: Job) -> bytes:
    """Raise an exception after sending one chunk."""
    job.send_data(b"before the crash")
    raise ValueError("bad input: " + job.workload.decode("utf-8", "replace"))


def refuse(job: Job) -> bytes:
    """Fail the job with JobFailed (WORK_FAIL)."""
    raise JobFailed("refused " + job.workload.decode("utf-8", "replace"))


def slow(job: Job) -> bytes:
    """Sleep the number of seconds given in the workload, reporting progress."""
    seconds = float(job.workload or b"0.5")
    for i in range(10):
        job.send_status(i, 10)
        time.sleep(seconds / 10)
    return b"slept"


FUNCTIONS: dict[str, Callable[[Job], Any]] = {
    "reverse": reverse,
    "echo": echo,
    "boom": boom,
    "refuse": refuse,
    "slow": slow,
}


@contextmanager
def running_worker(
    servers: list[str],
    store: Any,
    functions: dict[str, Callable[[Job], Any]] | None = None,
    **options: Any,
) -> Iterator[Worker]:
    """A Worker serving ``functions`` (default FUNCTIONS) in a thread; stopped and joined on exit."""
    worker = Worker(servers, store=store, **options)
    for name, fn in (functions or FUNCTIONS).items():
        worker.register(name, fn)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.work(handle_signals=False)
        except BaseException as exc:  # surfaced by the test below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(15)
        worker.close()
    assert not thread.is_alive(), "worker did not stop within 15 s"
    assert not errors, f"worker thread died: {errors[0]!r}"
