"""What a cluster store remembers of its writes that failed part-way, so that their replay does not
store an event twice. No I/O.

A write to a cluster is one script call per shard, and a failure may leave some calls applied,
some not, and some *in doubt* (sent, then the connection broke: the master may have run it, and
its replica, which takes over, may or may not have it). The worker's spool then replays the whole
write, followed by later ones, in order. The :class:`Ledger` keeps, per job, the events already
stored that the replay will start with, and the events of a call in doubt with the random token
that call wrote to the job's ``PREFIX:{S}:{J}:w``. Before the next write of such a job the store
reads the token (:meth:`Ledger.in_doubt`), and :meth:`Ledger.settle` drops from the write what
is already stored. What a job's write does not start with is never dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gearstash.model.records import Event, JobKey


@dataclass
class Memory:
    """One job: ``stored`` — events surely stored, that its next write repeats first;
    ``doubt`` — (token, events) of a call in doubt, which follow ``stored``."""

    stored: list[Event]
    doubt: tuple[bytes, list[Event]] | None


def by_job(events: Iterable[Event]) -> dict[JobKey, list[Event]]:
    """The events of each job, in order."""
    jobs: dict[JobKey, list[Event]] = {}
    for event in events:
        jobs.setdefault(event.key, []).append(event)
    return jobs


class Ledger:
    """The jobs of failed writes (at most ``limit``, the oldest forgotten first). Thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._jobs: dict[JobKey, Memory] = {}
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._jobs)

    def in_doubt(self, events: Sequence[Event]) -> list[JobKey]:
        """The jobs of ``events`` whose last write is in doubt (their tokens are to be read)."""
        with self._lock:
            return [
                key
                for key in dict.fromkeys(e.key for e in events)
                if (m := self._jobs.get(key)) is not None and m.doubt is not None
            ]

    def settle(
        self, events: Sequence[Event], tokens: dict[JobKey, bytes | None]
    ) -> tuple[list[Event], dict[JobKey, list[Event]]]:
        """``events`` without what is already stored, and per job the events dropped.

        ``tokens``: the token stored now for each job :meth:`in_doubt` named.
        """
        jobs = by_job(events)
        skip: dict[JobKey, int] = {}
        dropped: dict[JobKey, list[Event]] = {}
        with self._lock:
            for key, mine in jobs.items():
                memory = self._jobs.get(key)
                if memory is None:
                    continue
                n = len(memory.stored)
                if mine[:n] != memory.stored:
                    continue  # not the replay: keep everything
                if memory.doubt is not None:
                    token, doubtful = memory.doubt
                    if tokens.get(key) == token and mine[n : n + len(doubtful)] == doubtful:
                        n += len(doubtful)
                if n:
                    skip[key] = n
                    dropped[key] = mine[:n]
        if not skip:
            return list(events), {}
        out = []
        for event in events:
            left = skip.get(event.key, 0)
            if left:
                skip[event.key] = left - 1
                continue
            out.append(event)
        return out, dropped

    def done(self, keys: Iterable[JobKey]) -> None:
        """These jobs' write succeeded: the spool goes past it, nothing is left to drop."""
        with self._lock:
            for key in keys:
                self._jobs.pop(key, None)

    def failed(
        self,
        dropped: dict[JobKey, list[Event]],
        calls: Sequence[tuple[Sequence[Event], bytes, str]],
    ) -> None:
        """A write failed (it will be replayed whole, with what :meth:`settle` dropped first).

        ``calls``: each script call's events, token and outcome (``applied``, ``doubt`` or
        ``lost``: surely not applied).
        """
        with self._lock:
            seen: set[JobKey] = set()
            for group, token, outcome in calls:
                for key, mine in by_job(group).items():
                    seen.add(key)
                    stored = list(dropped.get(key, ()))
                    doubt = None
                    if outcome == "applied":
                        stored += mine
                    elif outcome == "doubt":
                        doubt = (token, mine)
                    self._keep(key, stored, doubt)
            for key, stored in dropped.items():
                if key not in seen:
                    self._keep(key, list(stored), None)

    def _keep(
        self, key: JobKey, stored: list[Event], doubt: tuple[bytes, list[Event]] | None
    ) -> None:
        self._jobs.pop(key, None)
        if not stored and doubt is None:
            return
        while len(self._jobs) >= self.limit:
            self._jobs.pop(next(iter(self._jobs)))
        self._jobs[key] = Memory(stored, doubt)
