"""``write()`` on memcached: each job of a call is one commit, driven as a generator of round trips.

The head is the commit point: chunks first (:mod:`gearstash_memcache.chunks`), then the head with
``add`` (a new job) or ``cas``, read back with ``gets`` in the same round trip unless the job is
finished; the tombstone, the handle index and the unique index ride along. A lost ``cas``
re-applies the events to the head that won. A call that changes nothing (``submitted`` for a job
that has a record, ``heartbeat`` for one that has none) writes nothing. The round-trip costs are
in :mod:`gearstash_memcache.store`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Generator

from gearstash.errors import StoreError
from gearstash.model.records import Event, EventKind, JobKey, JobRecord, State

from . import protocol
from .cache import DigestCache, HeadCache
from .chunks import STREAM_OF, Chunks, ChunkWriter, generation, part_commands
from .cluster import Answers, Cluster, Gen, Step
from .layout import (
    PLAIN,
    Head,
    Keys,
    PartsHeader,
    encode_value,
    exptime,
    join_parts,
    parse_main,
    part_key,
    tombstone_body,
)
from .protocol import Cmd

MAX_TRIES = 64  # rounds of one job's write before giving up (lost cas races)
_STARTED = EventKind.STARTED
_SUBMITTED = EventKind.SUBMITTED
_FINAL_STATES = (State.COMPLETE, State.FAILED)


class Writer:
    """Writes the jobs of one store (see :meth:`job`)."""

    def __init__(
        self,
        url: str,
        keys: Keys,
        cluster: Cluster,
        digests: DigestCache,
        heads: HeadCache,
        ttl: float,
        grace: float,
        part_size: int,
    ) -> None:
        self.url = url
        self.keys = keys
        self.cluster = cluster
        self.digests = digests
        self.heads = heads
        self.ttl = ttl
        self.grace = grace
        self.part_size = part_size
        self.chunks = ChunkWriter(keys, part_size)

    def job(self, key: JobKey, events: list[Event]) -> Gen:
        """Commit ``events`` (all of job ``key``, in order); for :meth:`Cluster.drive`."""
        keys = self.keys
        j, h, u = self.digests.of(key)
        server = self.cluster.route(j)
        index_server = self.cluster.route(h)
        head_key = keys.head(j)
        index_key = keys.index(h)
        # the unique index (a job with an empty unique is not listed)
        unique_key = keys.unique_index(u) if key.unique else None
        unique_server = self.cluster.route(u) if key.unique else index_server
        has_started = any(e.kind is _STARTED for e in events)
        last = events[-1]
        ttl = self.ttl if last.ttl is None else last.ttl
        cached = self.heads.get(j)
        known: Head | None = cached[0] if cached else None
        cas: int | None = cached[1] if cached else None
        # Whether known/cas say what the server holds. Not needed for a batch with 'started'
        # (it begins a new attempt whatever was there: 'add' first, and 'cas' if that loses).
        looked = cached is not None
        must_read = False  # a commit lost a race we did not see the winner of
        fresh: Chunks | None = None  # chunks written under a new generation
        appended: Chunks | None = None  # chunks written under known.gen
        for tries in range(MAX_TRIES):
            if tries > 2:  # writers keep colliding on this job: back off a random little while
                time.sleep(random.uniform(0, 0.0005 * min(tries, 40)))
            now = time.time()
            if not looked and (not has_started or must_read):
                answers = yield {server: protocol.get([head_key], cas=True)}
                seen = answers[server][0].get(head_key)
                known, cas = yield from self._load_head(server, head_key, seen, key)
                looked = True
                continue
            record, chunk_events = _advance(known, key, events, ttl)
            if record is None:
                return  # nothing changed: a heartbeat without a record, a repeated submission
            expires = record.expires_at
            before: list[Cmd] = []
            if has_started or known is None:
                # A new attempt (or a new record): its chunks under a generation nobody reads yet.
                if fresh is None:
                    fresh = self.chunks.new_chunks(j, chunk_events, expires, ttl, now)
                if not fresh.sent:
                    before += fresh.commands
                    fresh.sent = True
                previous = [] if known is None else [*known.previous, generation(known)]
                head = Head(
                    record, fresh.gen, list(fresh.top), fresh.expires, list(fresh.split), previous
                )
            else:
                if chunk_events and (appended is None or appended.gen != known.gen):
                    appended = yield from self.chunks.append_chunks(
                        server, j, known, chunk_events, expires, ttl, now
                    )
                    if appended is None:
                        continue  # a counter vanished under us: try again
                    before += appended.commands
                counts = list(known.counts)
                split = list(known.split)
                chunk_exp = known.chunk_exp
                if chunk_events and appended is not None:
                    counts = [max(c, t) for c, t in zip(counts, appended.top, strict=True)]
                    split += [s for s in appended.split if s not in split]
                    chunk_exp = _earliest(chunk_exp, appended.expires)
                head = Head(record, known.gen, counts, chunk_exp, split, list(known.previous))
            if head.chunk_exp is not None:
                before += self.chunks.refresh_chunks(j, head, expires, ttl, now)
            encoded = encode_value(head.to_json_bytes(), self.part_size)
            head_time = exptime(expires, now)
            commands = before
            if encoded.parts:
                commands += part_commands(head_key, encoded, head_time)
            if cas is not None:
                commands.append(protocol.store(b"cas", head_key, encoded.main, head_time, cas))
            else:
                commands.append(protocol.store(b"add", head_key, encoded.main, head_time))
            commit_at = len(commands) - 1
            # Read the head back (its CAS value for this process's next write), unless the job is
            # finished: few writes follow, and a lost race then costs one more round trip.
            read_back = record.state not in _FINAL_STATES
            if read_back:
                commands += protocol.get([head_key], cas=True)
            grace = min(ttl, self.grace)
            gone_time = exptime(None if expires is None else expires + grace, now)
            tomb_key = keys.tombstone(j)
            tomb = PLAIN + tombstone_body(record) if expires is not None and grace > 0 else b""
            if tomb and len(tomb) < self.part_size:
                commands.append(protocol.store(b"set", tomb_key, tomb, gone_time))
            else:  # kept for ever, no grace, or a key too big to remember: no tombstone
                commands.append(protocol.delete(tomb_key))
            listing = cas is None  # a new head: list it under its handle
            if listing:
                index_command = protocol.store(b"add", index_key, b" " + j.encode(), gone_time)
            else:
                index_command = protocol.touch(index_key, gone_time)
            step: Step = {server: commands}
            step.setdefault(index_server, []).append(index_command)
            index_at = len(step[index_server]) - 1
            unique_at = 0
            if unique_key is not None:
                if listing:
                    unique_command = protocol.store(
                        b"add", unique_key, b" " + j.encode(), gone_time
                    )
                else:
                    unique_command = protocol.touch(unique_key, gone_time)
                step.setdefault(unique_server, []).append(unique_command)
                unique_at = len(step[unique_server]) - 1
            answers = yield step
            mine = answers[server]
            outcome = mine[commit_at]
            seen = mine[commit_at + 1].get(head_key) if read_back else None
            if outcome == b"STORED":
                if seen is not None and seen[0] == encoded.main:
                    self.heads.put(j, head, seen[1])
                elif cached is not None:
                    self.heads.put(j, None, None)
                listed = answers[index_server][index_at]
                if (listing and listed != b"STORED") or listed is False:  # exists / was evicted
                    yield from self._list(index_server, index_key, j, gone_time)
                if unique_key is not None:
                    listed = answers[unique_server][unique_at]
                    if (listing and listed != b"STORED") or listed is False:
                        yield from self._list(unique_server, unique_key, j, gone_time)
                return
            # Lost a race (or the head vanished): start again from the head as it is now.
            if read_back or outcome == b"NOT_FOUND":
                known, cas = yield from self._load_head(server, head_key, seen, key)
                looked = True
            else:
                known, cas, looked, must_read = None, None, False, True
                self.heads.put(j, None, None)
            if known is None and cas is None and looked:
                appended = None
            if known is not None and not has_started:
                fresh = None  # the record exists after all: append to its generation
        raise StoreError(f"{self.url}: too many writers raced on job {key.handle!r}; gave up")

    def _list(self, server: int, index_key: bytes, j: str, when: int) -> Gen:
        """Append J to an existing handle (or unique) index, or make it if there is none (any more).

        An index lost to eviction comes back with the jobs written after the loss.
        """
        for _ in range(MAX_TRIES):
            answers = yield {
                server: [
                    protocol.store(b"append", index_key, b" " + j.encode(), when),
                    protocol.touch(index_key, when),
                ]
            }
            if answers[server][0] == b"STORED":
                return
            answers = yield {server: [protocol.store(b"add", index_key, b" " + j.encode(), when)]}
            if answers[server][0] == b"STORED":
                return

    def _load_head(
        self, server: int, head_key: bytes, seen: tuple[bytes, int | None] | None, key: JobKey
    ) -> Generator[Step, Answers, tuple[Head | None, int | None]]:
        """The head from a ``gets`` answer (fetching its parts if split) and its CAS value.

        A head that cannot be read whole (a part was evicted) comes back as (None, cas): the
        writer then replaces it as if the record were new.
        """
        if seen is None:
            return None, None
        value, cas = seen
        parsed = parse_main(value)
        if isinstance(parsed, PartsHeader):
            wanted = [part_key(head_key, parsed.part_id, k) for k in range(parsed.parts)]
            answers = yield {server: protocol.get(wanted)}
            found: dict[bytes, bytes] = {}
            for answer in answers[server]:
                found.update({k: v for k, (v, _) in answer.items()})
            body = join_parts(parsed, [found.get(k) for k in wanted])
            if body is None:
                return None, cas
        else:
            body = parsed
        head = Head.from_json_bytes(body)
        if head.record.key != key:
            raise StoreError(
                f"{self.url}: key digest collision between {key} and {head.record.key}: not stored"
            )
        return head, cas


def _earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _advance(
    known: Head | None, key: JobKey, events: list[Event], ttl: float
) -> tuple[JobRecord | None, list[Event]]:
    """The record fields after ``events`` (lists left empty) and the chunk events to store.

    The chunk events are those after the last ``started`` (a ``started`` clears the lists).
    The record is None when the events change nothing: a ``heartbeat`` finds no record, a
    ``submitted`` finds one (see ``JobRecord.create`` and ``JobRecord.apply``).
    """
    record = known.record.copy() if known is not None else None
    changed = False
    chunks: list[Event] = []
    for event in events:
        if record is None:
            record = JobRecord.create(event)
            if record is None:
                continue  # a heartbeat makes no record
        elif event.kind is _SUBMITTED:
            continue  # a submission only makes a record
        changed = True
        record.apply(event)
        if event.kind is _STARTED:
            chunks.clear()
        elif event.kind in STREAM_OF:
            chunks.append(event)
    if record is None or not changed:
        return None, []
    record.data = []
    record.warnings = []
    record.status = []
    record.expires_at = events[-1].at + ttl if ttl > 0 else None
    return record, chunks
