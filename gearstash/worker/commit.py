"""Group commit: a thread that stores the final events of finished jobs, several jobs a write.

Internal to :class:`gearstash.worker.slot.Slot` when the worker's ``pipeline`` is above 1. The
slot hands each finished job over (:meth:`Committer.put`) and goes on to grab and run the next
one while the job's events are written; the committer takes everything handed over since its
last write, writes it in one store round trip, and only then lets the slot send each job's final
packet (WORK_COMPLETE…). So the guarantee stays — a job's events are stored, in order, before
its server hears it ended — while the store's round trip overlaps the next job instead of
adding to every job.

At most ``depth`` jobs are handed over and not yet done; :meth:`put` blocks beyond that.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger("gearstash.worker")

T = TypeVar("T")


class Committer(Generic[T]):
    """Runs ``commit(batch)`` on a thread of its own for the items :meth:`put` hands over.

    ``commit`` gets every item queued since it last ran, in the order they were put; it must not
    raise (an exception is logged and the batch counts as done, so the slot never hangs).
    """

    def __init__(self, commit: Callable[[list[T]], None], depth: int, name: str) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self._commit = commit
        self.depth = depth
        self._cond = threading.Condition()
        self._queue: list[T] = []
        self._open = 0  # handed over and not yet committed
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def put(self, item: T) -> None:
        """Hand ``item`` over; blocks while ``depth`` items are still open."""
        with self._cond:
            while self._open >= self.depth:
                self._cond.wait()
            self._queue.append(item)
            self._open += 1
            self._cond.notify_all()

    def drain(self) -> None:
        """Block until everything handed over is committed."""
        with self._cond:
            while self._open:
                self._cond.wait()

    def close(self) -> None:
        """Commit what is open, then stop the thread. Idempotent."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()

    def _loop(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._queue and not self._closing:
                    cond.wait()
                if not self._queue:
                    return
                batch, self._queue = self._queue, []
            try:
                self._commit(batch)
            except Exception:  # a bug: never leave the slot waiting
                log.exception("committing %d finished jobs failed", len(batch))
            with cond:
                self._open -= len(batch)
                cond.notify_all()
