"""The store contract every store implements.

A store keeps job records. The worker hands it :class:`~gearstash.model.records.Event` batches in the order
the job produced them; clients read :class:`~gearstash.model.records.JobRecord` objects back. Stores are
found by URL scheme through the ``register_stores`` hook, so a built-in store and a third-party one are
registered the same way (see ``gearstash.spine.manager``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from gearstash.errors import StoreError
from gearstash.model.records import FINAL_EVENTS, Event, EventKind, JobRecord, JobRef


@runtime_checkable
class Store(Protocol):
    """What every store provides.

    Contract:

    * ``write(events)`` applies the events in order, with the semantics of
      :meth:`JobRecord.apply <gearstash.model.records.JobRecord.apply>` (a ``started`` event for a key that
      already has a record begins a new attempt and clears its data). A batch is applied atomically
      where the store can (SQL: one transaction). It raises :class:`~gearstash.errors.StoreError` on
      failure and never half-applies a single event. Several processes may write different jobs at once.
    * ``get_many(refs)`` returns, for each reference in order, the newest matching record or ``None``
      (see :class:`~gearstash.model.records.JobRef` for what a reference without server or unique matches).
      It costs a bounded number of round trips, not one per reference.
    * ``url`` describes the store with any password replaced by ``***``; it is safe to log.
    * ``capabilities`` is a set of words: ``shared`` (several processes/hosts see the same records),
      ``persistent`` (survives a restart of the process), ``evicts`` (may drop records under memory
      pressure before they expire), ``push`` (can wake waiters), ``expires`` (honours TTLs),
      ``delete``.

    Optional methods (see the functions below for their contracts and fallbacks):
    ``get_after(ref, after) -> JobRecord | None`` (cursor read), ``watch(refs) -> Watch`` (push),
    ``delete(refs) -> int``, ``purge() -> int``. Every store should honour ``Event.ttl`` and its
    own default TTL, and set ``JobRecord.expires_at``.
    """

    url: str
    capabilities: frozenset[str]

    def write(self, events: Sequence[Event]) -> None:
        """Apply ``events`` in order. Raises StoreError."""
        ...

    def get_many(self, refs: Sequence[JobRef]) -> list[JobRecord | None]:
        """The newest record matching each reference, or None. Raises StoreError."""
        ...

    def close(self) -> None:
        """Release connections. Idempotent."""
        ...


def get_one(store: Store, ref: JobRef) -> JobRecord | None:
    """The newest record matching ``ref``, or ``None``."""
    return store.get_many([ref])[0]


# ------------------------------------------------------------------ optional store methods
#
# A store may also implement the methods below; the functions here call them when present and
# fall back to something correct (if slower) when not, so a minimal third-party store still works.


class Watch(Protocol):
    """A subscription to changes of some jobs (see :func:`watch`)."""

    def wait(self, timeout: float) -> bool:
        """Block until a watched job may have changed, or ``timeout`` seconds passed.

        True when the store signalled a change (a push store), False on timeout. A change that
        happened after the watch was made and before this call is not lost.
        """
        ...

    def close(self) -> None:
        """End the subscription; idempotent."""
        ...


class PollWatch:
    """The watch of a store without push: waits the whole timeout (callers poll)."""

    def __init__(self) -> None:
        self._closed = threading.Event()

    def wait(self, timeout: float) -> bool:
        """Sleep ``timeout`` seconds (less if closed); always False."""
        self._closed.wait(timeout)
        return False

    def close(self) -> None:
        """Wake a sleeping :meth:`wait`."""
        self._closed.set()


def get_after(store: Store, ref: JobRef, after: int) -> JobRecord | None:
    """The newest record matching ``ref`` holding only data chunks from index ``after`` on.

    ``record.data_offset == after`` in the result. Uses ``store.get_after(ref, after)`` when the
    store has it (a cursor read: only the new chunks travel), else slices a full read.
    """
    method = getattr(store, "get_after", None)
    if method is not None:
        result: JobRecord | None = method(ref, after)
        return result
    record = get_one(store, ref)
    if record is not None and after:
        record.data = record.data[after:]
        record.data_offset = after
    return record


def watch(store: Store, refs: Sequence[JobRef]) -> Watch:
    """Subscribe to changes of ``refs``: ``store.watch(refs)`` on push stores, else a PollWatch."""
    method = getattr(store, "watch", None)
    if method is None:
        return PollWatch()
    result: Watch = method(refs)
    return result


def delete(store: Store, refs: Sequence[JobRef]) -> int:
    """Forget the jobs matching ``refs`` (every record each one matches); returns how many.

    Raises StoreError when the store cannot delete.
    """
    method = getattr(store, "delete", None)
    if method is None:
        raise StoreError(f"store {store.url} cannot delete records")
    count: int = method(refs)
    return count


def purge(store: Store) -> int:
    """Remove expired records now (stores that expire by themselves return 0)."""
    method = getattr(store, "purge", None)
    return int(method()) if method is not None else 0


StoreFactory = Callable[[str], Store]


_KEPT_WHEN_REFUSED = frozenset({EventKind.STARTED, EventKind.STATUS, EventKind.HEARTBEAT})


def refusal_events(events: Sequence[Event], exc: Exception) -> list[Event]:
    """What to store instead of one job's batch a store refused for good (a value over its
    limit), so the record stays honest: the batch's small events, a warning with the reason, and
    when the batch ended the job, a ``failed`` end saying the outcome could not be stored."""
    last = events[-1]
    key, ttl, now = last.key, last.ttl, time.time()
    keep = [e for e in events if e.kind in _KEPT_WHEN_REFUSED]
    note = f"gearstash: the store refused {len(events)} events: {exc}"
    keep.append(Event(EventKind.WARNING, key, now, note.encode(), ttl=ttl))
    if last.kind in FINAL_EVENTS:
        why = f"gearstash: the job ended but its outcome could not be stored: {exc}"
        keep.append(Event(EventKind.FAILED, key, now, why.encode(), ttl=ttl))
    return keep


@dataclass(frozen=True, slots=True)
class StoreType:
    """A store implementation registered for a URL scheme."""

    scheme: str
    factory: StoreFactory
    description: str
    plugin: str
