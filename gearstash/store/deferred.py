"""A store that could not be opened yet: opened again on each use until it opens.

A worker started while its store is down (Redis restarting, the database failing over) must not
exit — a restarted worker would crash-loop through the outage. :class:`DeferredStore` stands in for
the store: each call first tries to open it, and raises StoreError while it cannot, which the
:class:`~gearstash.store.spool.SpoolingStore` around it answers by spooling; the replay then
opens the store once it is back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from gearstash.errors import StoreError
from gearstash.model.records import Event, JobRecord, JobRef
from gearstash.store.contract import Store


class DeferredStore:
    """Stands for the store ``open_store()`` opens, until it opens.

    ``url`` is the redacted URL (for logs and the spool folder's name). ``capabilities`` are
    assumed ``shared`` and ``persistent`` until the store opens (a store that can be down is a
    server). Optional store methods (``get_after``, ``watch``…) are the opened store's.
    Thread-safe.
    """

    def __init__(self, url: str, open_store: Callable[[], Store]) -> None:
        self.url = url
        self.capabilities: frozenset[str] = frozenset({"shared", "persistent"})
        self._open = open_store
        self._store: Store | None = None
        self._lock = threading.Lock()

    def _opened(self) -> Store:
        """The store, opened now if it was not (raises StoreError while it cannot be)."""
        store = self._store
        if store is not None:
            return store
        with self._lock:
            if self._store is None:
                self._store = self._open()
                self.capabilities = self._store.capabilities
            return self._store

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return getattr(self._opened(), name)
        except StoreError:
            raise AttributeError(name) from None

    def write(self, events: Sequence[Event]) -> None:
        self._opened().write(events)

    def get_many(self, refs: Sequence[JobRef]) -> list[JobRecord | None]:
        return self._opened().get_many(refs)

    def close(self) -> None:
        with self._lock:
            store, self._store = self._store, None
        if store is not None:
            store.close()
