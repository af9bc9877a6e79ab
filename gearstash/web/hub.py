"""The subscription hub: every SSE follower of one store shares one reader.

A follower subscribes to a job reference and awaits new versions of its record; the hub keeps one
asyncio task that, while anyone follows anything, runs rounds on a worker thread (the event
loop's default executor). A round waits on ONE store watch of all followed references, learns
which jobs changed, reads only those, and wakes their followers:

* **Which jobs changed.** A push store's watch names them (:func:`~gearstash.store.contract.changes`:
  the Redis channel and job digest that fired, the PostgreSQL channel of the handle, the keys a
  memory store wrote). A store that cannot name them (SQLite, whose watch only sees that the file
  changed; MariaDB, polled every ``interval``) answers one small query for the change stamps of
  every followed job (:func:`~gearstash.store.contract.stamps`: a few columns of the job rows, no
  chunks), and the jobs whose stamp moved are the changed ones (such rounds are spaced to take
  at most a quarter of the time: :data:`PROBE_SPACING`). On a store with neither (memcached)
  every followed job is read every round, as before. Besides, a job is read when its expiry or
  its lease passes (its state as read changes with no write: ``expired``, ``lost``), and every
  followed job is checked again (stamps, or a read) after a new watch was made, after a failed
  round and every :data:`RESYNC` seconds — so a notification lost in transit delays an event, never loses it.
* **Reading incrementally.** A changed job is read from the chunk after the last one the hub has
  (:func:`~gearstash.store.contract.get_many_after`), and the new chunks are appended to the
  record it holds; a job not read yet, or one that began a new attempt, is read whole.

So a write costs a round one job's read, not a read of every followed job, and a thousand
followers cost one thread at a time and a few store queries per round, never a thread each.

A new follower of a reference nobody followed closes the current watch (which ends its wait), so
it is served within one round; a follower leaving changes nothing until the watch is made again.
Pure asyncio (no Starlette): :class:`gearstash.aio.AsyncClient` uses it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import AsyncGenerator, Hashable
from dataclasses import dataclass, field
from typing import cast

from gearstash.model.records import JobRecord, JobRef, State
from gearstash.store.contract import (
    PollWatch,
    Store,
    Watch,
    changes,
    get_many_after,
    stamps,
    watch,
)

log = logging.getLogger("gearstash.web.hub")

PUSH_WAIT = 1.0  # seconds one round waits on a waking store's watch at most
CLOSE_WAIT = 10.0  # seconds close() waits for a read in progress
RESYNC = 10.0  # seconds between checks of every followed job (stamps or a read)
OUTAGE_RETRY_MAX = 5.0  # seconds between retries at most while the store does not answer
PROBE_SPACING = 4  # a round with stamps() starts at least this many times its cost after the last
_UNKNOWN = object()  # the change stamp of a job whose stamp was not read with its record


def _signature(record: JobRecord | None, now: float) -> tuple[object, ...] | None:
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
        record.lost(now),
        record.expires_at is not None and record.expires_at <= now,
    )


def _deadline(record: JobRecord | None, now: float) -> float | None:
    """When the state of ``record`` as read changes with no write: its expiry, or the end of a
    running job's lease (whichever comes first after ``now``)."""
    if record is None or record.state is State.EXPIRED:
        return None
    times = [record.expires_at]
    if record.state is State.RUNNING:
        times.append(record.lease_until)
    later = [at for at in times if at is not None and at > now]
    return min(later) if later else None


def _same_attempt(old: JobRecord, new: JobRecord) -> bool:
    """True when ``new`` continues the attempt of ``old`` (its chunks follow old's)."""
    return (
        new.key == old.key
        and new.attempt == old.attempt
        and new.started_at == old.started_at
        and new.state is not State.EXPIRED
    )


class Idle:
    """The type of :data:`IDLE`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "IDLE"


IDLE = Idle()
"""What :meth:`Hub.follow_idle` yields after a quiet spell."""


@dataclass(eq=False)
class _Entry:
    """What the hub knows of one followed reference."""

    followers: int = 0
    version: int = 0  # 0: not read yet
    record: JobRecord | None = None
    signature: tuple[object, ...] | None = None
    stamp: Hashable = _UNKNOWN
    deadline: float | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    changed_at: float = 0.0  # the event loop's time of the last new version or pulse
    pulse: int = 0  # keepalive pulses (see Hub.follow_idle)


@dataclass
class _Round:
    """What one round read: new records, and change stamps (of jobs read or only probed)."""

    records: dict[JobRef, JobRecord | None] = field(default_factory=dict)
    stamps: dict[JobRef, Hashable] = field(default_factory=dict)


class Hub:
    """One reader for every follower of ``store`` (see the module doc).

    Use from one event loop. :meth:`follow` yields the current record of a reference (None while
    the store has none) and then each new version as it is read, with every chunk from the first.
    """

    def __init__(self, store: Store, *, interval: float = 0.1) -> None:
        self.store = store
        self.interval = interval
        self._entries: dict[JobRef, _Entry] = {}
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._idle_followers = 0
        self._refs: tuple[JobRef, ...] | None = None  # the followed references (None: remake)
        self._unread: set[JobRef] = set()  # followed, not read yet
        self._deadlines: list[tuple[float, int, JobRef]] = []  # heap of (deadline, tie, ref)
        self._ties = itertools.count()
        self._watch: Watch | None = None
        self._watched: frozenset[JobRef] = frozenset()
        self._watch_lock = threading.Lock()
        self._check_all = True  # the next round checks every followed job
        self._checked_at = 0.0
        self._probe_cost = 0.0  # seconds the last stamps() took
        self._stopping = False
        self.rounds = 0  # rounds done (tests and benchmarks look)
        self.jobs_read = 0  # records read over all rounds (tests and benchmarks look)

    @property
    def followed(self) -> int:
        """How many references are followed now."""
        return len(self._entries)

    def follow(self, ref: JobRef) -> AsyncGenerator[JobRecord | None, None]:
        """The record of ``ref`` now (after the hub's next read) and at every change after."""
        return cast(AsyncGenerator[JobRecord | None, None], self._follow(ref, None))

    def follow_idle(
        self, ref: JobRef, idle: float
    ) -> AsyncGenerator[JobRecord | Idle | None, None]:
        """Like :meth:`follow`, and :data:`IDLE` when the job did not change for ``idle`` to
        1.5 x ``idle`` seconds (an event stream's keepalive). One timer of the hub serves every
        such follower (no timer per wait); wait on it with no timeout of one's own: a timeout
        that cancels a wait inside the generator ends the subscription."""
        return self._follow(ref, idle)

    async def _follow(
        self, ref: JobRef, idle: float | None
    ) -> AsyncGenerator[JobRecord | Idle | None, None]:
        entry = self._entries.get(ref)
        if entry is None:
            entry = self._entries[ref] = _Entry()
            self._refs = None
            self._unread.add(ref)
            if ref not in self._watched:
                self._end_watch()
        entry.followers += 1
        if idle is not None:
            self._idle_followers += 1
            self._ensure_ticker(idle)
        self._ensure_task()
        seen = 0
        pulse = entry.pulse
        try:
            while True:
                while entry.version == seen:
                    await entry.changed.wait()
                    if entry.version == seen and entry.pulse != pulse and idle is not None:
                        pulse = entry.pulse
                        yield IDLE
                seen = entry.version
                pulse = entry.pulse
                yield entry.record
        finally:
            entry.followers -= 1
            if idle is not None:
                self._idle_followers -= 1
            if entry.followers == 0 and self._entries.get(ref) is entry:
                del self._entries[ref]
                self._refs = None
                self._unread.discard(ref)

    def _ensure_ticker(self, idle: float) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(
                self._tick(idle), name="gearstash-hub-keepalive"
            )

    async def _tick(self, idle: float) -> None:
        """While anyone follows with ``idle``: every ``idle / 2`` seconds, wake the followers of
        the jobs that did not change for ``idle`` seconds (a pulse, no new version)."""
        loop = asyncio.get_running_loop()
        while self._idle_followers > 0 and not self._stopping:
            await asyncio.sleep(idle / 2)
            now = loop.time()
            for entry in list(self._entries.values()):
                if now - entry.changed_at >= idle:
                    entry.changed_at = now
                    entry.pulse += 1
                    entry.changed.set()
                    entry.changed = asyncio.Event()

    def _end_watch(self) -> None:
        """Close the current watch: a wait in progress ends, and the next round makes a watch of
        the references followed then."""
        with self._watch_lock:
            current, self._watch = self._watch, None
            self._watched = frozenset()
        if current is not None:
            current.close()

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
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
        self._end_watch()
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), CLOSE_WAIT)
            except TimeoutError:  # a store read that hangs: give up on it
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _run(self) -> None:
        failures = 0  # rounds failed in a row: the outage is logged once, retries back off
        try:
            while self._entries and not self._stopping:
                refs = self._refs
                if refs is None:
                    refs = self._refs = tuple(self._entries)
                due, wake_by = self._due(time.time())
                try:
                    found = await asyncio.to_thread(
                        self._round, refs, list(self._unread), due, wake_by
                    )
                except Exception as exc:  # a store outage: followers wait, the hub retries
                    failures += 1
                    (log.warning if failures == 1 else log.debug)(
                        "reading %d followed jobs failed (retrying until the store answers): %s",
                        len(refs),
                        exc,
                    )
                    self._check_all = True
                    await asyncio.sleep(min(max(self.interval, 0.5) * failures, OUTAGE_RETRY_MAX))
                    continue
                if failures:
                    log.warning("reading followed jobs works again after %d failed rounds", failures)
                    failures = 0
                if self._stopping:
                    break
                self.rounds += 1
                self.jobs_read += len(found.records)
                self._apply(found, due)
        finally:
            with self._watch_lock:
                current, self._watch = self._watch, None
                self._watched = frozenset()
            if current is not None:
                current.close()

    def _due(self, now: float) -> tuple[set[JobRef], float]:
        """The references whose deadline passed, and when the next one comes."""
        due: set[JobRef] = set()
        if len(self._deadlines) > 4 * len(self._entries) + 64:  # mostly moved deadlines
            self._deadlines = [
                (e.deadline, next(self._ties), ref)
                for ref, e in self._entries.items()
                if e.deadline is not None
            ]
            heapq.heapify(self._deadlines)
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            at, _tie, ref = heapq.heappop(heap)
            entry = self._entries.get(ref)
            if entry is not None and entry.deadline == at:
                due.add(ref)
        return due, heap[0][0] if heap else now + PUSH_WAIT

    def _apply(self, found: _Round, due: set[JobRef]) -> None:
        """Hand the records of a round to the followers whose record changed."""
        now = time.time()
        loop_time = asyncio.get_running_loop().time()
        for ref, stamp in found.stamps.items():
            entry = self._entries.get(ref)
            if entry is not None:
                entry.stamp = stamp
        for ref in due | found.records.keys():
            entry = self._entries.get(ref)
            if entry is None:
                continue
            record = found.records.get(ref, entry.record)
            signature = _signature(record, now)
            deadline = _deadline(record, now)
            if deadline is not None and deadline != entry.deadline:
                heapq.heappush(self._deadlines, (deadline, next(self._ties), ref))
            entry.deadline = deadline
            if entry.version and signature == entry.signature:
                continue
            entry.record, entry.signature = record, signature
            entry.version += 1
            self._unread.discard(ref)
            entry.changed_at = loop_time
            entry.changed.set()
            entry.changed = asyncio.Event()

    # ------------------------------------------------------------------ on the worker thread

    def _have(self, ref: JobRef) -> tuple[JobRecord | None, Hashable] | None:
        """The record and stamp the hub holds for ``ref`` (None: not read yet). Read from the
        worker thread while the event loop waits for the round: only :meth:`_apply` changes
        them, after the round."""
        entry = self._entries.get(ref)
        if entry is None or not entry.version:
            return None
        return entry.record, entry.stamp

    def _round(
        self, refs: tuple[JobRef, ...], unread: list[JobRef], due: set[JobRef], wake_by: float
    ) -> _Round:
        """Wait for a change, then read the followed jobs that changed (see the module doc).

        ``refs``: every followed reference; ``unread``: those not read yet (read whole). The
        watch of the references is made before the reads it is followed by, so a write landing
        between a read and the next wait still wakes that wait. Costs O(changed jobs) but for
        the stamps of a store that needs them (one query over ``refs``).
        """
        with self._watch_lock:
            current = self._watch
        if current is not None and not unread and not due:
            if isinstance(current, PollWatch):
                current.wait(self.interval)
            else:
                current.wait(max(0.0, min(PUSH_WAIT, wake_by - time.time())))
        elif current is None and not unread and not due:
            threading.Event().wait(self.interval)
        found = _Round()
        if self._stopping:  # close() is waiting: read nothing more
            return found
        check_all = self._check_all or time.monotonic() - self._checked_at >= RESYNC
        with self._watch_lock:
            current = self._watch
            stale = current is not None and len(self._watched) > 2 * len(refs) + 64
            if (current is None or stale) and not self._stopping:
                if current is not None:
                    current.close()
                current = self._watch = watch(self.store, refs)
                self._watched = frozenset(refs)
                check_all = True  # a write between two watches was heard by neither
        self._check_all = False
        heard = None if current is None else changes(current)
        have = self._have
        changed: list[JobRef] = []
        if check_all or heard is None:
            # stamps cost O(followed): their rounds are spaced so they take at most a quarter
            # of the time (a burst of writes waits a little longer, and leaves the CPU to the
            # followers' events)
            rest = PROBE_SPACING * self._probe_cost - (time.monotonic() - self._checked_at)
            if rest > 0 and not self._stopping:
                time.sleep(min(rest, PUSH_WAIT))
            self._checked_at = started = time.monotonic()
            probed = stamps(self.store, refs)
            self._probe_cost = time.monotonic() - started
            if probed is None:
                changed = [ref for ref in refs if have(ref) is not None]
            else:
                for ref, stamp in zip(refs, probed, strict=True):
                    held = have(ref)
                    if held is None:
                        found.stamps[ref] = stamp  # read whole below, after this stamp
                    elif held[1] != stamp:
                        changed.append(ref)
                        found.stamps[ref] = stamp
        else:
            changed = [ref for ref in heard if have(ref) is not None]
        changed += [ref for ref in due if have(ref) is not None]
        whole = unread + self._read_after(changed, found)
        if whole:
            found.records.update(zip(whole, self.store.get_many(whole), strict=True))
        return found

    def _read_after(self, refs: list[JobRef], found: _Round) -> list[JobRef]:
        """Read ``refs`` from the chunk after the last the hub has, into ``found``; the
        references to read whole instead (a new attempt began) are returned."""
        refs = list(dict.fromkeys(refs))
        if not refs:
            return []
        held = [have[0] if (have := self._have(ref)) is not None else None for ref in refs]
        afters = [
            len(old.data) if old is not None and old.state is not State.EXPIRED else 0
            for old in held
        ]
        again: list[JobRef] = []
        for ref, old, after, new in zip(
            refs, held, afters, get_many_after(self.store, refs, afters), strict=True
        ):
            if new is not None and after:
                if new.state is State.EXPIRED:
                    new.data_offset = 0
                elif old is not None and _same_attempt(old, new) and new.data_offset == after:
                    new.data = old.data + new.data
                    new.data_offset = 0
                else:
                    again.append(ref)
                    continue
            found.records[ref] = new
            found.stamps.setdefault(ref, _UNKNOWN)
        for ref in again:
            found.stamps.setdefault(ref, _UNKNOWN)
        return again
