"""Prefork: N worker processes under one supervisor (``gearstash worker --processes N``).

The supervisor forks ``processes`` children; each builds its own worker *after* the fork (no
socket, store connection or thread crosses a fork) and serves until told to stop. A child that
dies is replaced (after a short pause that grows while children keep dying at once, so a broken
setup does not spin); a child that exits 0 by itself (it did its ``--max-jobs``) is done and is
not replaced, and the supervisor returns 0 once every child is done. SIGTERM or SIGINT to the
supervisor drains them all: each child gets SIGTERM, finishes and stores the job in hand, and
exits; the supervisor returns when the last one did. A second signal is passed on too (a child
then exits at once, see :meth:`gearstash.worker.worker.Worker.work`). A child whose supervisor
is gone (killed: it could pass nothing on) stops by itself as on SIGTERM within a second or two.

POSIX only (``os.fork``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("gearstash.worker")

_MIN_PAUSE = 0.1
_MAX_PAUSE = 5.0
_QUICK_DEATH = 1.0  # seconds: a child that dies younger than this makes the next pause longer


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        return f"killed by {signal.Signals(signum).name}"
    return f"exited {os.waitstatus_to_exitcode(status)}"


class Supervisor:
    """Keeps ``processes`` children running ``serve`` (called in the child; its return value is
    the child's exit code, an exception exits 1) until :meth:`stop`.

    ``on_start(pid)`` is called in the supervisor for every child it forks (tests and logs).
    """

    def __init__(
        self,
        serve: Callable[[], int],
        processes: int,
        *,
        on_start: Callable[[int], None] | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError("processes must be at least 1")
        self.serve = serve
        self.processes = processes
        self.on_start = on_start
        self.children: dict[int, float] = {}  # pid -> when it started
        self.stopping = threading.Event()
        self.restarts = 0
        self._signals = 0

    # ------------------------------------------------------------ in the supervisor

    def run(self) -> int:
        """Fork the children and keep them going until a stop; returns 0 when every child
        exited 0 after the stop, else 1. Installs SIGTERM/SIGINT handlers (main thread only)."""
        restore = self._install_signals()
        pause = _MIN_PAUSE
        worst = 0
        try:
            while not self.stopping.is_set() and len(self.children) < self.processes:
                self._fork()
            while self.children:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    self.stopping.wait(0.1)
                    continue
                started = self.children.pop(pid, None)
                if started is None:
                    continue
                if self.stopping.is_set():
                    if status != 0:
                        log.warning("worker process %d %s while stopping", pid, _describe(status))
                        worst = 1
                    continue
                if status == 0:  # it stopped by itself: its --max-jobs are done
                    log.info("worker process %d is done (exit 0): not replaced", pid)
                    continue
                young = time.monotonic() - started < _QUICK_DEATH
                pause = min(pause * 2, _MAX_PAUSE) if young else _MIN_PAUSE
                log.warning(
                    "worker process %d %s; starting another in %.1f s",
                    pid,
                    _describe(status),
                    pause,
                )
                if self.stopping.wait(pause):
                    continue
                self.restarts += 1
                self._fork()
        finally:
            restore()
        return worst

    def stop(self) -> None:
        """Drain: SIGTERM to every child; no more are started. Safe from a signal handler."""
        self.stopping.set()
        self._kill_all(signal.SIGTERM)

    def _kill_all(self, signum: int) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _fork(self) -> None:
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            self._child(supervisor)
        self.children[pid] = time.monotonic()
        log.info("worker process %d started", pid)
        if self.on_start is not None:
            self.on_start(pid)

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum: int, frame: FrameType | None) -> None:
            self._signals += 1
            if self._signals == 1:
                log.info("signal %d: draining %d worker processes", signum, len(self.children))
                self.stop()
            else:  # the children exit at once on their second signal
                self._kill_all(signum)

        old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, previous in old.items():
                signal.signal(sig, previous)

        return restore

    # ------------------------------------------------------------ in the child

    def _child(self, supervisor: int) -> None:
        code = 1
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)  # the worker installs its own
            threading.Thread(
                target=_stop_when_orphaned, args=(supervisor,), name="orphan-watch", daemon=True
            ).start()
            code = self.serve()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("worker process %d failed", os.getpid())
        finally:
            logging.shutdown()
            os._exit(code)


def _stop_when_orphaned(supervisor: int, every: float = 1.0) -> None:
    """In a child: once the supervisor is gone (killed, so it passed no signal on), SIGTERM
    this process, which then stops as a drained child does (the job in hand finishes)."""
    while os.getppid() == supervisor:
        time.sleep(every)
    log.warning("worker process %d: its supervisor %d is gone; stopping", os.getpid(), supervisor)
    os.kill(os.getpid(), signal.SIGTERM)
