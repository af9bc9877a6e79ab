"""Built-in ``memory://`` and ``null://`` stores.

``memory://`` keeps records in a dict inside the current process (tests, one-process apps): nothing is
shared with other processes and nothing survives the process. ``memory://NAME`` stores with the same
name in one process share their records. ``?ttl=SECONDS`` sets the default time a job is kept after
its last event (default one day; 0 = for ever); an expired job reads as ``expired`` until
``purge()`` (run by itself every 1,000 writes) drops it. Waiters in the same process are woken by
push. ``null://`` keeps nothing: a worker with it only runs hooks (the "plain worker" of the
benchmarks).

Registered through the ``gearstash`` entry-point group exactly as a third-party store would be.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Sequence

from gearstash import hookimpl
from gearstash.model.records import Event, EventKind, JobKey, JobRecord, JobRef, State
from gearstash.spine.hookspecs import RegisterStore
from gearstash.store.contract import (
    JobFilter,
    JobPage,
    JobSummary,
    PollWatch,
    make_cursor,
    read_cursor,
)
from gearstash.store.urls import ttl_from_query

_shared: dict[str, MemoryStore] = {}
_shared_lock = threading.Lock()
PURGE_EVERY = 1000


class MemoryWatch:
    """Woken by every write to its store; :meth:`changes` names the watched references whose jobs
    were written (the store tells each open watch the keys it writes)."""

    def __init__(self, store: MemoryStore, refs: Sequence[JobRef] = ()) -> None:
        self._store = store
        self._seen = store._version
        self._closed = False
        self.heard: set[JobKey] = set()  # keys written since the last changes(), under the cond
        self._by_handle: dict[bytes, list[JobRef]] = {}
        self._by_unique: dict[bytes, list[JobRef]] = {}
        for ref in refs:
            index = self._by_unique if ref.by_unique else self._by_handle
            index.setdefault((ref.unique or b"") if ref.by_unique else ref.handle, []).append(ref)

    def changes(self) -> set[JobRef]:
        """The watched references matching a job written since the last call."""
        with self._store._cond:
            heard, self.heard = self.heard, set()
        found: set[JobRef] = set()
        for key in heard:
            for ref in (*self._by_handle.get(key.handle, ()), *self._by_unique.get(key.unique, ())):
                if ref.matches(key):
                    found.add(ref)
        return found

    def wait(self, timeout: float) -> bool:
        """Block until the store is written to (True) or ``timeout`` passes (False)."""
        cond = self._store._cond
        with cond:
            if self._store._version == self._seen and not self._closed:
                cond.wait(timeout)
            changed = self._store._version != self._seen
            self._seen = self._store._version
        return changed

    def close(self) -> None:
        """Stop watching (wakes a waiting thread)."""
        with self._store._cond:
            self._closed = True
            self._store._watches.discard(self)
            self._store._cond.notify_all()


class MemoryStore:
    """Records in a dict, guarded by a condition variable. Thread-safe; not shared across processes."""

    capabilities = frozenset({"push", "expires", "delete", "list"})
    _CURSOR = "m"

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self.ttl = ttl_from_query(url)
        self._cond = threading.Condition()
        self._version = 0
        self._writes = 0
        self._records: dict[JobKey, JobRecord] = {}
        self._by_handle: dict[bytes, list[JobKey]] = {}
        self._by_unique: dict[bytes, list[JobKey]] = {}
        self._serial: dict[JobKey, int] = {}  # listing order: 1, 2, ... as records are made
        self._made = 0
        # open watches (weakly: one never closed does not stay): told the keys each write touches
        self._watches: weakref.WeakSet[MemoryWatch] = weakref.WeakSet()

    def write(self, events: Sequence[Event]) -> None:
        """Apply ``events`` in order under one lock (atomic for readers); wake watchers."""
        with self._cond:
            for event in events:
                record = self._records.get(event.key)
                if record is None:
                    record = JobRecord.create(event)
                    if record is None:
                        continue
                    self._records[event.key] = record
                    self._made += 1
                    self._serial[event.key] = self._made
                    self._by_handle.setdefault(event.key.handle, []).append(event.key)
                    self._by_unique.setdefault(event.key.unique, []).append(event.key)
                elif event.kind is EventKind.SUBMITTED:
                    continue
                record.apply(event)
                ttl = self.ttl if event.ttl is None else event.ttl
                record.expires_at = event.at + ttl if ttl > 0 else None
            for subscription in self._watches:
                subscription.heard.update(event.key for event in events)
            self._version += 1
            self._writes += 1
            if self._writes % PURGE_EVERY == 0:
                self._purge_locked(time.time())
            self._cond.notify_all()

    def _keys(self, ref: JobRef) -> list[JobKey]:
        if ref.by_unique:
            return self._by_unique.get(ref.unique or b"", [])
        return self._by_handle.get(ref.handle, [])

    def _forget(self, key: JobKey) -> None:
        del self._records[key]
        del self._serial[key]
        for index, part in ((self._by_handle, key.handle), (self._by_unique, key.unique)):
            keys = index[part]
            keys.remove(key)
            if not keys:
                del index[part]

    def _find(self, ref: JobRef) -> JobRecord | None:
        for key in reversed(self._keys(ref)):
            if ref.matches(key):
                return self._records[key]
        return None

    @staticmethod
    def _view(record: JobRecord, now: float, after: int = 0) -> JobRecord:
        if record.expires_at is not None and record.expires_at <= now:
            return JobRecord(
                record.key,
                function=record.function,
                state=State.EXPIRED,
                attempt=record.attempt,
                expires_at=record.expires_at,
            )
        copy = record.copy()
        if after:
            copy.data = copy.data[after:]
            copy.data_offset = after
        return copy

    def get_many(self, refs: Sequence[JobRef]) -> list[JobRecord | None]:
        """The newest matching record for each reference (copies; safe to keep)."""
        now = time.time()
        with self._cond:
            found = [self._find(ref) for ref in refs]
            return [None if r is None else self._view(r, now) for r in found]

    def get_after(self, ref: JobRef, after: int) -> JobRecord | None:
        """Like ``get_many([ref])[0]`` with only the data chunks from index ``after`` on."""
        return self.get_many_after([ref], [after])[0]

    def get_many_after(
        self, refs: Sequence[JobRef], afters: Sequence[int]
    ) -> list[JobRecord | None]:
        """:meth:`get_after` of each reference (with its own ``after``), under one lock."""
        now = time.time()
        with self._cond:
            found = [self._find(ref) for ref in refs]
            return [
                None if record is None else self._view(record, now, max(0, after))
                for record, after in zip(found, afters, strict=True)
            ]

    def list_jobs(self, filter: JobFilter, limit: int, cursor: str | None) -> JobPage:
        """Jobs matching ``filter``, newest first, ``limit`` at most (see
        :func:`gearstash.store.contract.list_jobs`); the cursor is the serial of the last one listed."""
        before = read_cursor(self._CURSOR, cursor)
        now = time.time()
        jobs: list[JobSummary] = []
        with self._cond:
            for key in reversed(self._records):  # dicts keep insertion (creation) order
                serial = self._serial[key]
                if before is not None and serial >= before:
                    continue
                summary = JobSummary.of(self._records[key], now)
                if filter.matches(summary):
                    jobs.append(summary)
                    if len(jobs) == limit:
                        return JobPage(jobs, make_cursor(self._CURSOR, serial))
        return JobPage(jobs, None)

    def count_by_state(self, filter: JobFilter) -> dict[State, int]:
        """How many jobs match ``filter``, by state as read now."""
        now = time.time()
        counts: dict[State, int] = {}
        with self._cond:
            for record in self._records.values():
                summary = JobSummary.of(record, now)
                if filter.matches(summary):
                    counts[summary.state] = counts.get(summary.state, 0) + 1
        return counts

    def watch(self, refs: Sequence[JobRef]) -> MemoryWatch:
        """A watch woken by any write to this store, telling which of ``refs`` were written."""
        with self._cond:  # made and registered at one version: no write falls in between
            made = MemoryWatch(self, refs)
            self._watches.add(made)
        return made

    def delete(self, refs: Sequence[JobRef]) -> int:
        """Forget every record each reference matches; returns how many were removed."""
        removed = 0
        with self._cond:
            for ref in refs:
                for key in [k for k in self._keys(ref) if ref.matches(k)]:
                    self._forget(key)
                    removed += 1
                    for subscription in self._watches:
                        subscription.heard.add(key)
            self._version += 1
            self._cond.notify_all()
        return removed

    def purge(self) -> int:
        """Drop expired records now; returns how many."""
        with self._cond:
            return self._purge_locked(time.time())

    def _purge_locked(self, now: float) -> int:
        dead = [
            k for k, r in self._records.items() if r.expires_at is not None and r.expires_at <= now
        ]
        for key in dead:
            self._forget(key)
        return len(dead)

    def close(self) -> None:
        """Nothing to release."""


class NullStore:
    """Keeps nothing: every read answers ``None``."""

    capabilities = frozenset[str]()

    def __init__(self, url: str = "null://") -> None:
        self.url = url

    def write(self, events: Sequence[Event]) -> None:
        """Drop ``events``."""

    def get_many(self, refs: Sequence[JobRef]) -> list[JobRecord | None]:
        """``None`` for every reference."""
        return [None] * len(refs)

    def watch(self, refs: Sequence[JobRef]) -> PollWatch:
        """Nothing ever changes here: a polling watch."""
        return PollWatch()

    def close(self) -> None:
        """Nothing to release."""


def open_memory(url: str) -> MemoryStore:
    """``memory://`` → a new private store; ``memory://NAME`` → the process-wide store NAME."""
    name = url.partition("://")[2].partition("?")[0]
    if not name:
        return MemoryStore(url)
    with _shared_lock:
        store = _shared.get(name)
        if store is None:
            store = _shared[name] = MemoryStore(url)
        return store


@hookimpl
def register_stores(register: RegisterStore) -> None:
    """Register ``memory`` and ``null``."""
    register("memory", open_memory, description="in this process only (tests); not shared")
    register("null", NullStore, description="keeps nothing (hooks only)")
