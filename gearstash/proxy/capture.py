"""Writing what proxied jobs say to the store: one writer thread, group commits.

The proxy's event loop hands events to a :class:`CaptureWriter` and never blocks on the store.
The writer thread takes *everything* queued (events of any number of jobs and connections) and
writes it in one ``store.write`` call, so under load many jobs share one store round trip.

Guarantees:

* events are written in the order they were queued (so a job's events keep their order);
* :meth:`CaptureWriter.add_final` runs its callback, on the event loop, only after a write that
  contained its events returned (stored, or spooled by :class:`~gearstash.spool.SpoolingStore`),
  or failed (logged, ``store_failed`` hook): the proxy then tells the server the job ended;
* events without a callback (start, status, data, warnings, heartbeats) wait at most
  ``flush_interval`` seconds before they are written;
* a batch the store refuses for good (a value over its limit) is retried job by job, and for the
  job refused the record is kept honest with :func:`gearstash.slot.refusal_events`.
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
    """Queues events from the event loop and writes them to ``store`` from a thread of its own.

    ``inline=True`` writes on the event loop instead, at the end of each pass of the loop: for
    in-process stores (``memory://``, ``null://``), whose writes cost less than a hand-over to a
    thread.
    """

    def __init__(
        self,
        store: Store,
        hooks: EventHooks,
        loop: asyncio.AbstractEventLoop,
        *,
        flush_interval: float = 0.05,
        inline: bool = False,
    ) -> None:
        self.store = store
        self.inline = inline
        self.hooks = hooks
        self.loop = loop
        self.flush_interval = max(flush_interval, 0.0)
        self.batches = 0  # store writes made (for the log and tests)
        self.events = 0
        self._cond = threading.Condition(threading.Lock())
        self._events: list[Event] = []  # handed over, guarded by _cond
        self._callbacks: list[Callback] = []
        self._local: list[Event] = []  # queued during this pass of the loop (loop thread only)
        self._local_callbacks: list[Callback] = []
        self._since = 0.0
        self._closing = False
        self._thread: threading.Thread | None = None
        if not inline:
            self._thread = threading.Thread(
                target=self._run, name="gearstash-proxy-store", daemon=True
            )
            self._thread.start()

    def add(self, events: list[Event]) -> None:
        """Queue events that need no acknowledgement (written within ``flush_interval``).

        Called on the event loop only. Events queued during one pass of the loop are handed to
        the writer thread together, at the end of the pass (one lock, at most one wake-up).
        """
        if not self._local and not self._local_callbacks:
            self.loop.call_soon(self.hand_over)
        self._local += events

    def add_final(self, events: list[Event], stored: Callback) -> None:
        """Queue a job's last events; ``stored()`` runs on the loop once they were written.
        Called on the event loop only."""
        if not self._local and not self._local_callbacks:
            self.loop.call_soon(self.hand_over)
        self._local += events
        self._local_callbacks.append(stored)

    def hand_over(self) -> None:
        """Give what this pass of the loop queued to the writer thread (loop thread only)."""
        events, callbacks = self._local, self._local_callbacks
        self._local, self._local_callbacks = [], []
        if self.inline:
            if events:
                self._write(events)
            _run_all(callbacks)
            return
        with self._cond:
            if not self._events:
                self._since = time.monotonic()
                wake = not self.flush_interval
            else:
                wake = False
            self._events += events
            if callbacks:
                self._callbacks += callbacks
                wake = True
            if wake:
                self._cond.notify()

    def close(self) -> None:
        """Write what is queued, hand the last callbacks to the loop, stop the thread.
        Idempotent; may be called from any thread once :meth:`hand_over` ran on the loop."""
        if self._thread is None:
            return
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    # ------------------------------------------------------------ the writer thread

    def _take(self) -> tuple[list[Event], list[Callback]] | None:
        with self._cond:
            while True:
                if self._callbacks or (self._events and self._closing):
                    break
                if self._events:
                    wait = self._since + self.flush_interval - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                elif self._closing:
                    return None
                else:
                    self._cond.wait(self.flush_interval or None)
            events, callbacks = self._events, self._callbacks
            self._events, self._callbacks = [], []
            return events, callbacks

    def _run(self) -> None:
        while (taken := self._take()) is not None:
            events, callbacks = taken
            if events:
                self._write(events)
            if callbacks:
                try:
                    self.loop.call_soon_threadsafe(_run_all, callbacks)
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
