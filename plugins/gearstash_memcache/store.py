""":class:`MemcacheStore`: the Store contract on memcached (see the package docstring for the layout).

Writes. Each job of a ``write()`` call is a small state machine (a generator) yielding the commands
of its next round trip; all jobs of the call advance together, so a call costs as many round trips
as its slowest job, whatever the number of jobs. The head ``<p>:<J>:job`` is the commit point: chunks
are written first, under a generation id no reader follows yet or under indices taken with ``incr``
from the generation's counter, then the head is replaced with ``add`` (new job) or ``cas`` (against
the CAS value this process last saw, or just read), and — unless the job is finished — read back
with ``gets`` in the same round trip, for the next ``cas``. A lost ``cas`` re-applies the events to
the head that won. Round trips per job, one server:

* a new job (a batch with ``started``, with or without chunks and its final event): 1;
* a batch of chunks for a job this process wrote before: 2 (``incr``, then chunks + head);
* a batch with only the final event: 1; a job this process never saw: 1 more (``gets``);
* its handle (or its unique) already used by another job: 1 more (``append`` to that index);
* ``submitted``: 2 for a job without a record (``gets``, ``add``), else 1 (0 when this process
  wrote the head); a ``started`` for a job submitted by another process: 2 (the ``add``
  loses, then ``cas``);
* ``heartbeat``: 1 for a job this process wrote before, else 2 (1 when there is no record).

Every command gets an answer (no ``noreply``): ``write()`` returns once memcached has stored
everything (the worker's ordering guarantee), and a failure is a StoreError, never silent.

Reads. One full reference (server, handle, unique) to a job that exists: 1 round trip (+1 when it
has chunks). Otherwise :meth:`MemcacheStore.get_many` takes at most six rounds of multi-key
``get`` per server (heads and tombstones, or handle or unique indexes; the heads they name; parts of
split heads; chunks; parts of split chunks), whatever the number of references.

The modules behind it: :mod:`~gearstash_memcache.url` (what the URL names),
:mod:`~gearstash_memcache.cluster` (pools, routing, round trips), :mod:`~gearstash_memcache.write`
and :mod:`~gearstash_memcache.chunks` (writes), :mod:`~gearstash_memcache.read` (reads),
:mod:`~gearstash_memcache.delete`, :mod:`~gearstash_memcache.cache` (heads and digests remembered),
:mod:`~gearstash_memcache.failures` (exceptions to StoreError), on top of
:mod:`~gearstash_memcache.protocol` and :mod:`~gearstash_memcache.layout`.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence

from gearstash.errors import StoreError
from gearstash.model.records import Event, JobKey, JobRecord, JobRef
from gearstash.store.contract import PollWatch
from gearstash.store.urls import redact_url

from . import protocol
from .cache import CACHE_SIZE, DigestCache, HeadCache
from .chunks import MAX_SLACK
from .cluster import Answers, Cluster, Gen, Step
from .delete import Deleter
from .failures import MAPPED, MAX_DETAIL, to_store_error
from .layout import Keys
from .read import EXPIRY_TOLERANCE, Reader
from .url import DEFAULT_GRACE, DEFAULT_PORT, DEFAULT_TIMEOUT, Target, parse_url
from .write import MAX_TRIES, Writer

__all__ = [  # the store, and what was defined here before the store was split into modules
    "CACHE_SIZE",
    "DEFAULT_GRACE",
    "DEFAULT_PORT",
    "DEFAULT_TIMEOUT",
    "EXPIRY_TOLERANCE",
    "MAX_DETAIL",
    "MAX_SLACK",
    "MAX_TRIES",
    "Answers",
    "Gen",
    "MemcacheStore",
    "Step",
    "Target",
    "parse_url",
]

# ---------------------------------------------------------------------------------- fork safety

_STORES: weakref.WeakSet[MemcacheStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------------------------- the store


class MemcacheStore:
    """Records in memcached; see the package docstring. Thread-safe, fork-safe, shared by hosts."""

    capabilities = frozenset({"shared", "expires", "delete", "evicts"})

    def __init__(self, url: str) -> None:
        self.url = redact_url(url)
        target = parse_url(url)
        self.servers = target.names
        self.ttl = target.ttl
        self.grace = target.grace
        self.timeout = target.timeout
        self.keys = Keys(target.prefix)
        self._closed = False
        self._cluster = Cluster(target)
        self._heads = HeadCache()
        self._digests = DigestCache()
        self.part_size = 0
        try:
            self.part_size = self._cluster.probe()
        except MAPPED as exc:
            raise self._error(exc, "opening the store") from exc
        self._writer = Writer(
            self.url,
            self.keys,
            self._cluster,
            self._digests,
            self._heads,
            self.ttl,
            self.grace,
            self.part_size,
        )
        self._reader = Reader(self.keys, self._cluster, self._digests)
        self._deleter = Deleter(
            self.keys, self._cluster, self._reader, self._heads, self.ttl, self.grace
        )
        _STORES.add(self)

    def __repr__(self) -> str:
        return f"MemcacheStore({self.url!r})"

    @property
    def _pools(self) -> list[protocol.Pool]:
        """The connection pools, one per server (in URL order)."""
        return self._cluster.pools

    def _after_fork(self) -> None:
        self._cluster.after_fork()
        self._heads.after_fork()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.url}: the store is closed")

    def _error(self, exc: BaseException, doing: str) -> StoreError:
        """The StoreError for ``exc``: the redacted URL, what failed, where and why (one line)."""
        return to_store_error(exc, self.url, self.timeout, doing)

    # ------------------------------------------------------------------ write

    def write(self, events: Sequence[Event]) -> None:
        """Apply ``events`` in order (JobRecord.apply semantics), each job's as one commit.

        Jobs of one call are written together (one round trip for all of them per step). Raises
        StoreError; a failed call may have committed some of its jobs, never half an event.
        """
        if not events:
            return
        self._check_open()
        try:
            groups: dict[JobKey, list[Event]] = {}
            for event in events:
                groups.setdefault(event.key, []).append(event)
            job = self._writer.job
            self._cluster.drive([job(key, evs) for key, evs in groups.items()])
        except MAPPED as exc:
            raise self._error(exc, "writing") from exc

    # ------------------------------------------------------------------ read

    def get_many(self, refs: Sequence[JobRef]) -> list[JobRecord | None]:
        """The newest record matching each reference, in order (None if none). Raises StoreError."""
        if not refs:
            return []
        self._check_open()
        try:
            return self._reader.read(refs, None)
        except MAPPED as exc:
            raise self._error(exc, "reading") from exc

    def get_after(self, ref: JobRef, after: int) -> JobRecord | None:
        """Like ``get_many([ref])[0]`` with only the data chunks from index ``after`` on."""
        self._check_open()
        try:
            return self._reader.read([ref], max(0, after))[0]
        except MAPPED as exc:
            raise self._error(exc, "reading") from exc

    def watch(self, refs: Sequence[JobRef]) -> PollWatch:
        """memcached cannot push: waiters poll."""
        return PollWatch()

    def purge(self) -> int:
        """memcached expires records by itself: nothing to do."""
        return 0

    # ------------------------------------------------------------------ delete

    def delete(self, refs: Sequence[JobRef]) -> int:
        """Forget every job each reference matches (all its keys); returns how many."""
        if not refs:
            return 0
        self._check_open()
        try:
            return self._deleter.delete(refs)
        except MAPPED as exc:
            raise self._error(exc, "deleting") from exc

    def close(self) -> None:
        """Close the connections. Idempotent."""
        self._closed = True
        self._cluster.close()
