"""Built-in ``memory://`` and ``null://`` stores.

``memory://`` keeps records in a dict inside the current process (tests, one-process apps): nothing is
shared with other processes and nothing survives the process. ``memory://NAME`` stores with the same
name in one process share their records. ``null://`` keeps nothing: a worker with it only runs hooks
(the "plain worker" of the benchmarks).

Registered through the ``gearstash`` entry-point group exactly as a third-party store would be.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from gearstash import hookimpl
from gearstash.hookspecs import RegisterStore
from gearstash.records import Event, JobKey, JobRecord, JobRef

_shared: dict[str, MemoryStore] = {}
_shared_lock = threading.Lock()


class MemoryStore:
    """Records in a dict, guarded by a lock. Thread-safe; not shared across processes."""

    capabilities = frozenset[str]()

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._lock = threading.Lock()
        self._records: dict[JobKey, JobRecord] = {}
        self._by_handle: dict[bytes, list[JobKey]] = {}

    def write(self, events: Sequence[Event]) -> None:
        """Apply ``events`` in order under one lock (atomic for readers)."""
        with self._lock:
            for event in events:
                record = self._records.get(event.key)
                if record is None:
                    record = self._records[event.key] = JobRecord(event.key)
                    self._by_handle.setdefault(event.key.handle, []).append(event.key)
                record.apply(event)

    def get_many(self, refs: Sequence[JobRef]) -> list[JobRecord | None]:
        """The newest matching record for each reference (copies; safe to keep)."""
        out: list[JobRecord | None] = []
        with self._lock:
            for ref in refs:
                found = None
                for key in reversed(self._by_handle.get(ref.handle, ())):
                    if ref.matches(key):
                        found = self._records[key].copy()
                        break
                out.append(found)
        return out

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

    def close(self) -> None:
        """Nothing to release."""


def open_memory(url: str) -> MemoryStore:
    """``memory://`` → a new private store; ``memory://NAME`` → the process-wide store NAME."""
    name = url.partition("://")[2]
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
