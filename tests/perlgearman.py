"""A second job-server implementation for interop tests: Perl's Gearman::Server (Debian package
gearman-server, whose ``/usr/bin/gearmand`` is a Perl script — not the C gearmand of
gearman-job-server in /usr/sbin), started on a free loopback port and stopped afterwards.

It speaks the original protocol only: no GRAB_JOB_UNIQ, WORK_DATA, WORK_WARNING,
GET_STATUS_UNIQUE, SUBMIT_JOB_HIGH_BG or SUBMIT_JOB_LOW*, and empty STATUS_RES numbers for a job
that never sent WORK_STATUS.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from servers import need, tcp_reachable

from gearstash.testing.gearmand import admin_command, free_port

PERL_GEARMAND = "/usr/bin/gearmand"


def find_perl_gearmand() -> str | None:
    """Path of Gearman::Server's gearmand script, else None."""
    try:
        with open(PERL_GEARMAND, "rb") as f:
            first = f.readline()
    except OSError:
        return None
    return PERL_GEARMAND if first.startswith(b"#!") and b"perl" in first else None


class PerlGearmanServer:
    """Gearman::Server on 127.0.0.1:<free port>; its output goes to ``workdir/perl-gearmand.log``."""

    def __init__(self, workdir: Path) -> None:
        script = find_perl_gearmand()
        need(
            script is not None,
            "Perl Gearman::Server is not installed (Debian package gearman-server)",
        )
        assert script is not None
        self.script = script
        self.host = "127.0.0.1"
        self.port = free_port()
        self.log = workdir / "perl-gearmand.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def admin(self, command: str) -> str:
        return admin_command(self.host, self.port, command)

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [self.script, "-p", str(self.port), "-L", self.host],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 15
        while not tcp_reachable(self.host, self.port, timeout=0.5):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Gearman::Server did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
