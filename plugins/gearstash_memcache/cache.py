"""What one store remembers between calls: heads with their CAS values, and job digests.

A worker writes one job several times in a row: the head it last wrote (and the CAS value memcached
gave it) spares a ``gets`` before the next ``cas``, and the digests spare two SHA-1s per call.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from gearstash.model.records import JobKey

from .layout import Head, handle_digest, job_digest, unique_digest

CACHE_SIZE = 4096  # heads (with their CAS value) remembered per store


class HeadCache:
    """The heads this process last wrote or read, by job digest J, with their CAS values (LRU)."""

    def __init__(self) -> None:
        self._cache: OrderedDict[str, tuple[Head, int]] = OrderedDict()
        self._lock = threading.Lock()

    def after_fork(self) -> None:
        # Another thread of the parent may have held the lock at the fork.
        self._lock = threading.Lock()

    def get(self, j: str) -> tuple[Head, int] | None:
        with self._lock:
            return self._cache.get(j)

    def put(self, j: str, head: Head | None, cas: int | None) -> None:
        """Remember ``head`` and ``cas`` for ``j``; forget ``j`` when either is None."""
        with self._lock:
            if head is None or cas is None:
                self._cache.pop(j, None)
                return
            self._cache[j] = (head, cas)
            self._cache.move_to_end(j)
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)


class DigestCache:
    """(J, H, U) of job keys, remembered; plain dict operations, so thread-safe."""

    def __init__(self) -> None:
        self._cache: dict[JobKey, tuple[str, str, str]] = {}

    def of(self, key: JobKey) -> tuple[str, str, str]:
        """(J, H, U) of ``key``, remembered: a job is written and read several times in a row."""
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            found = self._cache[key] = (
                job_digest(key),
                handle_digest(key.handle),
                unique_digest(key.unique),
            )
        return found
