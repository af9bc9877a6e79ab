"""The subscription hub: every SSE follower of one store shares one reader.

A follower subscribes to a job reference and awaits new versions of its record; the hub keeps one
asyncio task that, while anyone follows anything, reads the records of every followed reference in
ONE ``get_many`` call on a worker thread (the event loop's default executor), compares each with
what it had, and wakes the followers of the records that changed. Between two reads the same thread
blocks on one store watch of all followed references: on a store that can wake it (Redis pub/sub,
PostgreSQL LISTEN, memory, a SQLite file's ``data_version``) a write wakes it at once and nothing is
read while nothing is written; on the others it sleeps ``interval`` seconds. So a thousand followers
cost one thread at a time and one store query per round, never a thread each.

A change of the followed set closes the current watch (which ends its wait), so a new follower is
served within one round. Pure asyncio (no Starlette): :class:`gearstash.aio.AsyncClient` uses it
too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from gearstash.model.records import JobRecord, JobRef
from gearstash.store.contract import PollWatch, Store, Watch, watch

log = logging.getLogger("gearstash.web.hub")

PUSH_WAIT = 1.0  # seconds one round waits on a push store's watch at most
CLOSE_WAIT = 10.0  # seconds close() waits for a read in progress


def _signature(record: JobRecord | None) -> tuple[object, ...] | None:
    if record is None:
        return None
    return (
        record.state,
        record.attempt,
        record.updated_at,
        record.lease_until,
        len(record.data),
        len(record.warnings),
        len(record.status),
        record.expires_at,
    )


@dataclass(eq=False)
class _Entry:
    """What the hub knows of one followed reference."""

    followers: int = 0
    version: int = 0  # 0: not read yet
    record: JobRecord | None = None
    signature: tuple[object, ...] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class Hub:
    """One reader for every follower of ``store`` (see the module doc).

    Use from one event loop. :meth:`follow` yields the current record of a reference (None while
    the store has none) and then each new version as it is read.
    """

    def __init__(self, store: Store, *, interval: float = 0.1) -> None:
        self.store = store
        self.interval = interval
        self._entries: dict[JobRef, _Entry] = {}
        self._task: asyncio.Task[None] | None = None
        self._watch: Watch | None = None
        self._watch_lock = threading.Lock()
        self._set_changed = True
        self._stopping = False
        self.rounds = 0  # reads done (tests and benchmarks look)

    @property
    def followed(self) -> int:
        """How many references are followed now."""
        return len(self._entries)

    async def follow(self, ref: JobRef) -> AsyncGenerator[JobRecord | None, None]:
        """The record of ``ref`` now (after the hub's next read) and at every change after."""
        entry = self._entries.get(ref)
        if entry is None:
            entry = self._entries[ref] = _Entry()
            self._membership_changed()
        entry.followers += 1
        self._ensure_task()
        seen = 0
        try:
            while True:
                while entry.version == seen:
                    await entry.changed.wait()
                seen = entry.version
                yield entry.record
        finally:
            entry.followers -= 1
            if entry.followers == 0 and self._entries.get(ref) is entry:
                del self._entries[ref]
                self._membership_changed()

    def _membership_changed(self) -> None:
        self._set_changed = True
        with self._watch_lock:
            current, self._watch = self._watch, None
        if current is not None:
            current.close()  # ends a wait in progress: the next round reads the new set

    def _ensure_task(self) -> None:
        if self._stopping:
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="gearstash-hub")

    async def close(self) -> None:
        """Stop reading (followers still waiting never get another version).

        Waits for a read in progress on the worker thread to end (closing the watch ends its
        wait), so the store may be closed right after.
        """
        self._stopping = True
        task, self._task = self._task, None
        self._membership_changed()
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), CLOSE_WAIT)
            except TimeoutError:  # a store read that hangs: give up on it
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _run(self) -> None:
        while self._entries and not self._stopping:
            refs = list(self._entries)
            fresh, self._set_changed = self._set_changed, False
            try:
                records = await asyncio.to_thread(self._read, refs, not fresh)
            except Exception as exc:  # a store outage: tell no one, try again
                log.warning("reading %d followed jobs failed: %s", len(refs), exc)
                await asyncio.sleep(max(self.interval, 0.5))
                continue
            if self._stopping:
                break
            self.rounds += 1
            for ref, record in zip(refs, records, strict=True):
                entry = self._entries.get(ref)
                if entry is None:
                    continue
                signature = _signature(record)
                if entry.version and signature == entry.signature:
                    continue
                entry.record, entry.signature = record, signature
                entry.version += 1
                entry.changed.set()
                entry.changed = asyncio.Event()

    def _read(self, refs: list[JobRef], wait_first: bool) -> list[JobRecord | None]:
        """On the worker thread: wait for a change, then read every followed job.

        The watch of ``refs`` is made before the read it follows, so a write landing between a
        read and the next wait still wakes that wait. A store whose watch can wake (push, or a
        SQLite file's ``data_version``) is read when woken, and at least every
        :data:`PUSH_WAIT` seconds; one that cannot (a :class:`~gearstash.store.contract.PollWatch`) is read
        every ``interval`` seconds.
        """
        with self._watch_lock:
            current = self._watch
        if wait_first and current is not None:
            if isinstance(current, PollWatch):
                current.wait(self.interval)
            else:
                current.wait(PUSH_WAIT)
        elif wait_first:
            threading.Event().wait(self.interval)
        if self._stopping:  # close() is waiting: read nothing more
            return [None] * len(refs)
        with self._watch_lock:
            if self._watch is None and not self._set_changed:
                self._watch = watch(self.store, refs)
        return self.store.get_many(refs)
