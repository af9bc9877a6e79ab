"""Deleting and purging jobs in :class:`~gearstash_sql.store.SqlStore` (:class:`Removal`, a mixin).

``delete()`` and ``purge()``, and the opportunistic purge step of every ``?purge_every=N`` writes
(see :mod:`gearstash_sql.store` for the expiry rules, :mod:`gearstash_sql.maintenance` for the
SQL). Both run on the thread's write connection.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from gearstash.errors import StoreError
from gearstash.model.records import JobKey, JobRef

from .maintenance import Maintenance, slices
from .notify import note
from .reading import IN_CHUNK, unique_of
from .schema import MAX_KEY_BYTES

log = logging.getLogger("gearstash_sql.store")  # the logger these messages always had

PURGE_LIMIT = 1000  # rows per purge statement
_T = TypeVar("_T")


class Removal:
    """``delete()``, ``purge()`` and the purge step; :class:`~gearstash_sql.store.SqlStore`
    provides the connections and transactions."""

    # set by SqlStore.__init__
    tombstone: float
    purge_every: int
    _purge_countdown: int
    _notify: bool
    _closed: bool
    _write_guard: contextlib.AbstractContextManager[Any]
    _maintenance: Maintenance

    if TYPE_CHECKING:  # SqlStore's methods

        def _transaction(self, body: Callable[[Any, bool], None], doing: str = "write") -> None: ...
        def _reading_writer(self, body: Callable[[Any], _T], doing: str) -> _T: ...
        def _closed_error(self) -> StoreError: ...

    # ------------------------------------------------------------------ Store protocol

    def delete(self, refs: Sequence[JobRef]) -> int:
        """Delete every job each reference matches (rows and chunks); returns how many.

        One transaction. Raises StoreError.
        """
        if self._closed:
            raise self._closed_error()
        wanted: dict[bytes, list[JobRef]] = {}
        wanted_unique: dict[bytes, list[JobRef]] = {}  # references by unique alone
        for ref in refs:
            if ref.by_unique:
                if len(unique_of(ref)) <= MAX_KEY_BYTES:
                    wanted_unique.setdefault(unique_of(ref), []).append(ref)
            elif len(ref.handle) <= MAX_KEY_BYTES:
                wanted.setdefault(ref.handle, []).append(ref)
        if not wanted and not wanted_unique:
            return 0
        handles = sorted(wanted)
        uniques = sorted(wanted_unique)
        maintenance = self._maintenance
        removed = [0]

        def body(cursor: Any, _first: bool) -> None:
            ids: set[int] = set()
            gone: set[bytes] = set()
            for part in slices(handles, IN_CHUNK):
                cursor.execute(maintenance.find(len(part)), list(part))
                for job_id, server, handle, unique in cursor.fetchall():
                    key = JobKey(server, bytes(handle), bytes(unique))
                    if any(ref.matches(key) for ref in wanted[key.handle]):
                        ids.add(job_id)
                        gone.add(key.handle)
            for part in slices(uniques, IN_CHUNK):
                cursor.execute(maintenance.find_unique(len(part)), list(part))
                for job_id, server, handle, unique in cursor.fetchall():
                    key = JobKey(server, bytes(handle), bytes(unique))
                    if any(ref.matches(key) for ref in wanted_unique[key.unique]):
                        ids.add(job_id)
                        gone.add(key.handle)
            count = 0
            for part in slices(sorted(ids), IN_CHUNK):
                count += maintenance.delete_ids(cursor, list(part))
            if self._notify:
                for handle in sorted(gone):
                    cursor.execute("SELECT pg_notify(%s, %s)", note(handle))
            removed[0] = count

        with self._write_guard:
            self._transaction(body)
        return removed[0]

    def purge(self) -> int:
        """Purge expired jobs now (see :mod:`gearstash_sql.store`); returns how many were cleaned or deleted.

        Runs bounded steps, each its own short transaction, until nothing is left. Raises
        StoreError.
        """
        if self._closed:
            raise self._closed_error()
        total = 0
        while True:
            deleted, cleaned, more = self._purge_step(time.time())
            total += deleted + cleaned
            if not more:
                return total

    def _purge_step(self, now: float) -> tuple[int, int, bool]:
        """One bounded purge step: (rows deleted, rows cleaned, more to do)."""
        maintenance = self._maintenance
        done = [(0, 0)]

        def body(cursor: Any, _first: bool) -> None:
            done[0] = maintenance.apply(cursor, plan)

        with self._write_guard:
            plan = self._reading_writer(
                lambda cursor: maintenance.plan(cursor, now, self.tombstone, PURGE_LIMIT), "purge"
            )
            if plan.work:
                self._transaction(body, doing="purge")
        return (*done[0], plan.more)

    def _purge_due(self) -> None:
        """The opportunistic purge step of every ``purge_every``-th write; never raises."""
        self._purge_countdown = self.purge_every
        try:
            self._purge_step(time.time())
        except Exception as exc:
            log.warning("%s: purging expired jobs failed (the write was stored): %s", self, exc)
