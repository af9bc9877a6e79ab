"""Writing what proxied jobs say to the store: writer threads, group commits.

The proxy's event loop hands events to a :class:`CaptureWriter` and never blocks on the store.
Each job belongs to one of a few writer threads; a thread takes *everything* queued for it
(events of any number of jobs and connections) and writes it in one ``store.write`` call, so
under load many jobs share one store round trip, and the threads' round trips overlap. An
in-process store (``memory://``, ``null://``) is written on the event loop instead (no I/O to
wait for, cheaper than a hand-over to a thread).

Guarantees:

* a job's events are written in the order they were queued (one thread writes all of them);
* :meth:`CaptureWriter.add_final` runs its callback, on the event loop, only after a write that
  contained its events returned (stored, or spooled by
  :class:`~gearstash.store.spool.SpoolingStore`),
  or failed (logged, ``store_failed`` hook): the proxy then tells the server the job ended;
* events without a callback (start, status, data, warnings, heartbeats) wait at most
  ``flush_interval`` seconds before they are written;
* a batch the store refuses for good (a value over its limit) is retried job by job, and for the
  job refused the record is kept honest with :func:`gearstash.store.contract.refusal_events`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from gearstash.errors import REFUSED_FOR_GOOD
from gearstash.model.records import Event, JobKey
from gearstash.spine.manager import EventHooks
from gearstash.store.contract import Store, refusal_events

log = logging.getLogger("gearstash.proxy")

Callback = Callable[[], None]


class CaptureWriter:
    """Queues events from the event loop and writes them to ``store`` from ``writers`` threads.

    Each job belongs to one writer thread (by its key), so its events stay in order, while the
    writes of different jobs overlap (a store round trip of one does not hold up the others).
    ``inline=True`` writes on the event loop instead, at the end of each pass of the loop: for
    in-process stores (``memory://``, ``null://``), whose writes cost less than a hand-over to a
    thread. Call every method but :meth:`close` on the event loop's thread.
    """

    def __init__(
        self,
        store: Store,
        hooks: EventHooks,
        loop: asyncio.AbstractEventLoop,
        *,
        flush_interval: float = 0.05,
        inline: bool = False,
        writers: int = 1,
    ) -> None:
        self.store = store
        self.inline = inline
        self.hooks = hooks
        self.loop = loop
        self.flush_interval = max(flush_interval, 0.0)
        count = 1 if inline else max(writers, 1)
        self._shards = [_Shard(self, i) for i in range(count)]
        self._pending = False  # a hand-over is scheduled for the end of this pass
        if not inline:
            for shard in self._shards:
                shard.start()

    @property
    def batches(self) -> int:
        """Store writes made so far."""
        return sum(shard.batches for shard in self._shards)

    @property
    def events(self) -> int:
        """Events written (or handed to the spool) so far."""
        return sum(shard.events for shard in self._shards)

    def _shard(self, key: JobKey) -> _Shard:
        shards = self._shards
        return shards[hash(key) % len(shards)] if len(shards) > 1 else shards[0]

    def add(self, events: list[Event]) -> None:
        """Queue events that need no acknowledgement (written within ``flush_interval``).

        Events queued during one pass of the loop are handed to the writer threads together, at
        the end of the pass (one lock per thread, at most one wake-up).
        """
        if not self._pending:
            self._pending = True
            self.loop.call_soon(self.hand_over)
        for event in events:
            self._shard(event.key).local.append(event)

    def add_final(self, events: list[Event], stored: Callback) -> None:
        """Queue a job's last events; ``stored()`` runs on the loop once they were written."""
        self.add(events)
        self._shard(events[0].key).local_callbacks.append(stored)

    def write_now(self, events: list[Event]) -> bool:
        """``inline`` only: write everything queued and ``events`` at once, on the loop, and
        return True (the caller may then go on as if :meth:`add_final` had called back); without
        ``inline`` do nothing and return False."""
        if not self.inline:
            return False
        self.add(events)
        self.hand_over()
        return True

    def hand_over(self) -> None:
        """Give what this pass of the loop queued to the writer threads."""
        self._pending = False
        for shard in self._shards:
            if shard.local or shard.local_callbacks:
                shard.hand_over()

    def close(self) -> None:
        """Write what is queued, hand the last callbacks to the loop, stop the threads.
        Idempotent; may be called from any thread once :meth:`hand_over` ran on the loop."""
        for shard in self._shards:
            shard.close()


class _Shard:
    """One writer thread and the jobs that belong to it."""

    def __init__(self, writer: CaptureWriter, index: int) -> None:
        self.writer = writer
        self.store = writer.store
        self.hooks = writer.hooks
        self.index = index
        self.batches = 0
        self.events = 0
        self.local: list[Event] = []  # queued during this pass of the loop (loop thread only)
        self.local_callbacks: list[Callback] = []
        self._cond = threading.Condition(threading.Lock())
        self._events: list[Event] = []  # handed over, guarded by _cond
        self._callbacks: list[Callback] = []
        self._since = 0.0
        self._closing = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"gearstash-proxy-store-{self.index}", daemon=True
        )
        self._thread.start()

    def hand_over(self) -> None:
        events, callbacks = self.local, self.local_callbacks
        self.local, self.local_callbacks = [], []
        if self._thread is None:  # inline
            if events:
                self._write(events)
            _run_all(callbacks)
            return
        flush = self.writer.flush_interval
        with self._cond:
            wake = False
            if not self._events:
                self._since = time.monotonic()
                wake = not flush
            self._events += events
            if callbacks:
                self._callbacks += callbacks
                wake = True
            if wake:
                self._cond.notify()

    def close(self) -> None:
        if self._thread is None:
            return
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    # ------------------------------------------------------------ the writer thread

    def _take(self) -> tuple[list[Event], list[Callback]] | None:
        flush = self.writer.flush_interval
        with self._cond:
            while True:
                if self._callbacks or (self._events and self._closing):
                    break
                if self._events:
                    wait = self._since + flush - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                elif self._closing:
                    return None
                else:
                    self._cond.wait(flush or None)
            events, callbacks = self._events, self._callbacks
            self._events, self._callbacks = [], []
            return events, callbacks

    def _run(self) -> None:
        loop = self.writer.loop
        while (taken := self._take()) is not None:
            events, callbacks = taken
            if events:
                self._write(events)
            if callbacks:
                try:
                    loop.call_soon_threadsafe(_run_all, callbacks)
                except RuntimeError:  # the loop is closed: nobody waits for these any more
                    log.debug("event loop closed; %d stored jobs not handed back", len(callbacks))

    def _write(self, events: list[Event]) -> None:
        """One store write; never raises (failures are logged and reported to the hooks)."""
        self.batches += 1
        self.events += len(events)
        try:
            self.store.write(events)
        except REFUSED_FOR_GOOD:
            self._write_job_by_job(events)
        except Exception as exc:
            self._failed(exc, events)

    def _write_job_by_job(self, events: list[Event]) -> None:
        by_key: dict[JobKey, list[Event]] = {}
        for event in events:
            by_key.setdefault(event.key, []).append(event)
        for key, own in by_key.items():
            try:
                self.store.write(own)
            except REFUSED_FOR_GOOD as exc:
                log.error(
                    "store %s refused %d events of job %r: %s",
                    self.store.url,
                    len(own),
                    key.handle,
                    exc,
                )
                self.hooks.store_failed(self.store.url, exc, len(own))
                try:
                    self.store.write(refusal_events(own, exc))
                except Exception as again:
                    log.error(
                        "store %s: cannot record the refusal either: %s", self.store.url, again
                    )
            except Exception as exc:
                self._failed(exc, own)

    def _failed(self, exc: Exception, events: list[Event]) -> None:
        jobs = len({event.key for event in events})
        log.error(
            "store %s failed (%d events of %d jobs lost): %s",
            self.store.url,
            len(events),
            jobs,
            exc,
        )
        self.hooks.store_failed(self.store.url, exc, len(events))


def _run_all(callbacks: list[Callback]) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("proxy: handing a stored job back failed")
