"""Job functions for the crash tests, imported by worker subprocesses (``crashjobs:NAME``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from gearstash.worker.job import Job


def attempt(job: Job) -> bytes:
    """The first attempt (its marker file, named by the workload, is absent) streams 3 chunks and
    hangs; a later attempt streams 5 chunks and completes. Chunks are ``PID:i``."""
    marker = Path(job.workload.decode())
    first = not marker.exists()
    if first:
        marker.write_text(str(os.getpid()))
    for i in range(3 if first else 5):
        job.send_data(f"{os.getpid()}:{i}")
    if first:
        time.sleep(600)
    return f"done by {os.getpid()}".encode()


def hang(job: Job) -> bytes:
    """Send one chunk, sleep for ``workload`` seconds, return ``woke``."""
    job.send_data(b"begun")
    time.sleep(float(job.workload or b"600"))
    return b"woke"
