"""The store contract every store implements.

A store keeps job records. The worker hands it :class:`~gearstash.model.records.Event` batches in the order
the job produced them; clients read :class:`~gearstash.model.records.JobRecord` objects back. Stores are
found by URL scheme through the ``register_stores`` hook, so a built-in store and a third-party one are
registered the same way (see ``gearstash.spine.manager``).
"""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from gearstash.errors import BadCursor, ConfigError, StoreError
from gearstash.model.records import FINAL_EVENTS, Event, EventKind, JobKey, JobRecord, JobRef, State


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
      ``delete``, ``list`` (can list and count its jobs; memcached cannot).

    Optional methods (see the functions below for their contracts and fallbacks):
    ``get_after(ref, after) -> JobRecord | None`` (cursor read), ``get_many_after(refs, afters)``
    (cursor reads of several jobs at once), ``stamps(refs)`` (cheap change stamps),
    ``watch(refs) -> Watch`` (push; the watch may also tell which jobs changed: ``changes()``),
    ``delete(refs) -> int``, ``purge() -> int``, and — for a store that claims the ``list``
    capability — ``list_jobs(filter, limit, cursor) -> JobPage`` and ``count_by_state(filter) ->
    dict[State, int]`` (see :func:`list_jobs`). Every store should honour ``Event.ttl`` and its
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
    """A subscription to changes of some jobs (see :func:`watch`).

    A watch may also have ``changes() -> set[JobRef] | None``: which of its references may have
    changed (see :func:`changes`).
    """

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


def get_many_after(
    store: Store, refs: Sequence[JobRef], afters: Sequence[int]
) -> list[JobRecord | None]:
    """:func:`get_after` of each ``refs[i]`` from chunk ``afters[i]`` on, in order.

    Uses ``store.get_many_after(refs, afters)`` when the store has it (a bounded number of round
    trips). Else a reference is read with :func:`get_after` when there are at most
    :data:`FEW_AFTER` of them or when its ``after`` is over :data:`WHOLE_UP_TO` (only its new
    chunks travel), and the others in one ``get_many``, sliced (one round trip for many jobs
    that hold few chunks).
    """
    if len(refs) != len(afters):
        raise ValueError("get_many_after needs one 'after' per reference")
    method = getattr(store, "get_many_after", None)
    if method is not None:
        result: list[JobRecord | None] = method(refs, afters)
        return result
    few = len(refs) <= FEW_AFTER
    out: list[JobRecord | None] = [None] * len(refs)
    whole: list[int] = []
    for i, (ref, after) in enumerate(zip(refs, afters, strict=True)):
        if few or after > WHOLE_UP_TO:
            out[i] = get_after(store, ref, after)
        else:
            whole.append(i)
    if whole:
        for i, record in zip(whole, store.get_many([refs[i] for i in whole]), strict=True):
            after = afters[i]
            if record is not None and after:
                record.data = record.data[after:]
                record.data_offset = after
            out[i] = record
    return out


FEW_AFTER = 16
"""Up to this many references, :func:`get_many_after` on a store without it reads each with
:func:`get_after`."""

WHOLE_UP_TO = 64
"""Past this many chunks already read, :func:`get_many_after` on a store without it reads a job
with :func:`get_after` rather than whole."""


def stamps(store: Store, refs: Sequence[JobRef]) -> list[Hashable] | None:
    """A change stamp per reference, or None when the store has no cheap way to tell.

    Uses ``store.stamps(refs)``: for each reference a hashable value that is the same for two
    reads of the same unchanged record and differs once the record was written to (None while
    there is none). It reads far less than ``get_many`` (SQL: a few columns of the job rows, no
    chunks), so a reader following many jobs learns which changed without reading them whole.
    Raises StoreError.
    """
    method = getattr(store, "stamps", None)
    if method is None:
        return None
    result: list[Hashable] = method(refs)
    return result


def changes(subscription: Watch) -> set[JobRef] | None:
    """The references of a watch whose jobs may have changed since it was made or since the
    last call (each call forgets what it returned), or None when the watch cannot tell.

    Uses ``subscription.changes()`` when the watch has it: a push store's watch names the jobs
    whose writes it heard announced (always including the references it cannot hear about, e.g.
    by unique alone), and answers None once after it lost its subscription (anything may have
    changed meanwhile). A watch without it (a :class:`PollWatch`, SQLite's) answers None.
    """
    method = getattr(subscription, "changes", None)
    if method is None:
        return None
    result: set[JobRef] | None = method()
    return result


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


# ------------------------------------------------------------------ listing and counting

LISTED_STATES = frozenset(
    {State.QUEUED, State.RUNNING, State.COMPLETE, State.FAILED, State.EXPIRED}
)
"""The states a store can list and count: what it stores, plus ``expired`` (past ``expires_at``).
``lost`` and ``unknown`` are a client's conclusions, never stored."""

MAX_LIST_LIMIT = 1000
"""The most jobs one :func:`list_jobs` call returns."""


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which jobs :func:`list_jobs` and :func:`count_by_state` consider (every field optional).

    ``states``: the job's state as read now (a job past ``expires_at`` is ``expired``), one of
    :data:`LISTED_STATES`; empty = any. ``function``/``server``: equal to. ``since``/``until``:
    ``since <= updated_at < until`` (Unix seconds; a job never updated does not match a time
    bound). ``prefix``: the handle or the unique starts with these bytes.
    """

    states: frozenset[State] = frozenset()
    function: bytes | None = None
    server: str | None = None
    since: float | None = None
    until: float | None = None
    prefix: bytes | None = None

    def __post_init__(self) -> None:
        odd = set(self.states) - LISTED_STATES
        if odd:
            names = ", ".join(sorted(str(s) for s in odd))
            raise ConfigError(
                f"cannot list jobs by state {names}: stores keep only "
                f"{', '.join(sorted(LISTED_STATES))}"
            )

    def matches(self, summary: JobSummary) -> bool:
        """True when ``summary`` (whose ``state`` is already the state as read) passes."""
        key = summary.key
        if self.states and summary.state not in self.states:
            return False
        if self.function is not None and summary.function != self.function:
            return False
        if self.server is not None and key.server != self.server:
            return False
        if self.since is not None or self.until is not None:
            at = summary.updated_at
            if at is None:
                return False
            if self.since is not None and at < self.since:
                return False
            if self.until is not None and at >= self.until:
                return False
        prefix = self.prefix
        return not prefix or key.handle.startswith(prefix) or key.unique.startswith(prefix)


@dataclass(frozen=True, slots=True)
class JobSummary:
    """One line of a job list: a stored job without its chunks, result or error text.

    ``state`` is the state as read now (``expired`` past ``expires_at``); ``numerator`` and
    ``denominator`` are the job's last status point (0/0 without one); ``error_kind`` is
    ``fail``/``exception`` for a failed job, else None.
    """

    key: JobKey
    function: bytes
    state: State
    attempt: int
    worker: str
    started_at: float | None
    finished_at: float | None
    updated_at: float | None
    expires_at: float | None
    lease_until: float | None
    numerator: int = 0
    denominator: int = 0
    error_kind: str | None = None

    @classmethod
    def of(cls, record: JobRecord, now: float) -> JobSummary:
        """The summary of a whole record (its state turned ``expired`` past ``expires_at``)."""
        expired = record.expires_at is not None and record.expires_at <= now
        last = record.status[-1] if record.status and not expired else None
        return cls(
            record.key,
            record.function,
            State.EXPIRED if expired else record.state,
            record.attempt,
            record.worker,
            record.started_at,
            record.finished_at,
            record.updated_at,
            record.expires_at,
            record.lease_until,
            last.numerator if last else 0,
            last.denominator if last else 0,
            None if record.error is None or expired else record.error.kind,
        )

    @property
    def ref(self) -> JobRef:
        """The job's full reference."""
        return JobRef(self.key.handle, self.key.server, self.key.unique)


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of :func:`list_jobs`: ``jobs`` newest first, and the ``cursor`` of the next page
    (None when there is none)."""

    jobs: list[JobSummary]
    cursor: str | None


def make_cursor(kind: str, position: int) -> str:
    """A listing cursor of store kind ``kind`` (a short tag) at ``position`` (an int ≥ 0)."""
    return f"{kind}.{position}"


def read_cursor(kind: str, cursor: str | None) -> int | None:
    """The position in a cursor :func:`make_cursor` made for ``kind``; None for no cursor.

    Raises :class:`~gearstash.errors.BadCursor` for anything else (another store kind's cursor,
    an altered one).
    """
    if cursor is None or cursor == "":
        return None
    tag, dot, number = cursor.partition(".")
    if tag != kind or not dot or not number.isdigit() or len(number) > 19:
        raise BadCursor("this cursor was not made by this store: start from the first page")
    return int(number)


def check_limit(limit: int) -> int:
    """``limit`` when 1 ≤ limit ≤ :data:`MAX_LIST_LIMIT`, else ConfigError."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise ConfigError(f"a page holds 1 to {MAX_LIST_LIMIT} jobs, not {limit!r}")
    return limit


def can_list(store: Store) -> bool:
    """True when ``store`` can list and count its jobs (the ``list`` capability)."""
    return "list" in store.capabilities and hasattr(store, "list_jobs")


def list_jobs(
    store: Store, filter: JobFilter | None = None, limit: int = 50, cursor: str | None = None
) -> JobPage:
    """Stored jobs matching ``filter``, newest first (the order the store first saw them).

    ``cursor`` is the ``JobPage.cursor`` of the previous page (None: the first page); a job
    created after the first page was read never shows up on a later page, and no job shows up
    twice. Raises :class:`~gearstash.errors.BadCursor` for a cursor the store did not make,
    ConfigError for a ``limit`` out of 1..:data:`MAX_LIST_LIMIT`, StoreError when the store
    cannot list (no ``list`` capability: look jobs up by handle instead) or fails.
    """
    check_limit(limit)
    if not can_list(store):
        raise StoreError(f"store {store.url} cannot list jobs: look a job up by its handle")
    page: JobPage = store.list_jobs(filter or JobFilter(), limit, cursor)  # type: ignore[attr-defined]
    return page


def count_by_state(store: Store, filter: JobFilter | None = None) -> dict[State, int]:
    """How many stored jobs match ``filter``, by state as read now (every state of
    :data:`LISTED_STATES` is a key, 0 included). Raises StoreError like :func:`list_jobs`."""
    if not can_list(store):
        raise StoreError(f"store {store.url} cannot count jobs: look a job up by its handle")
    counts: dict[State, int] = store.count_by_state(filter or JobFilter())  # type: ignore[attr-defined]
    return {state: int(counts.get(state, 0)) for state in sorted(LISTED_STATES)}


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
    """A store implementation registered for a URL scheme.

    ``exists(url)``, when given, tells whether the store at ``url`` is there already (a SQLite
    file): commands that only read never create a store. ``driver`` names the module the store
    needs (``"redis"``) and ``extra`` the pip extra that installs it; while ``driver`` cannot be
    imported the scheme is listed as needing the extra and opening it says what to install.
    """

    scheme: str
    factory: StoreFactory
    description: str
    plugin: str
    exists: Callable[[str], bool] | None = None
    driver: str = ""
    extra: str = ""

    @property
    def missing(self) -> str:
        """``""`` when the store can be used; else the pip extra (or module) it needs."""
        if not self.driver or importlib.util.find_spec(self.driver) is not None:
            return ""
        return self.extra or self.driver
