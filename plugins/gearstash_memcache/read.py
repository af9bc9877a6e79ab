"""``get_many()`` and ``get_after()`` on memcached: references to heads, tombstones and chunks.

Each round reads the keys of every reference at once (multi-key ``get``, per server): heads and
tombstones (or handle or unique indexes first, then the heads they name), the parts of split heads, chunks,
the parts of split chunks. A full reference to a live, whole head takes a shortcut. The round-trip
costs are in :mod:`gearstash_memcache.store`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from gearstash.model.records import JobKey, JobRecord, JobRef, State, StatusPoint

from . import protocol
from .cache import DigestCache
from .cluster import Cluster
from .layout import (
    DATA,
    PLAIN,
    STATUS,
    WARNINGS,
    Head,
    Keys,
    PartsHeader,
    handle_digest,
    job_digest,
    join_parts,
    parse_index,
    parse_main,
    part_key,
    record_from_tombstone,
    unique_digest,
)

EXPIRY_TOLERANCE = 1.0  # memcached's clock has 1 s steps

Lists = tuple[list[bytes], list[bytes], list[StatusPoint]]  # data, warnings, status


@dataclass(slots=True)
class Found:
    """What a read found for one job digest."""

    head: Head | None = None
    tomb: JobRecord | None = None
    head_value: bytes | None = None  # the head's stored value (a parts header when split)
    damaged: bool = False  # a head is there but could not be read whole
    tomb_value: bytes | None = None  # the tombstone's stored value, until parsed


@dataclass(slots=True)
class Plan:
    """One reference's lookup: a digest to read, or an index to read first (of a handle ``h``, or
    of a unique ``u`` for a reference by unique; neither: nothing to find)."""

    j: str | None
    h: str | None
    candidates: list[str] = field(default_factory=list)
    u: str | None = None


class Reader:
    """Reads the jobs of one store; :meth:`plans` and :meth:`find` also serve deletes."""

    def __init__(self, keys: Keys, cluster: Cluster, digests: DigestCache) -> None:
        self.keys = keys
        self.cluster = cluster
        self.digests = digests

    def read(self, refs: Sequence[JobRef], after: int | None) -> list[JobRecord | None]:
        """The newest record matching each reference (data chunks from ``after`` on)."""
        one = refs[0]
        if len(refs) == 1 and one.handle and one.server is not None and one.unique is not None:
            record = self._read_one(refs[0], after or 0)
            if record is not None:
                return [record]
        now = time.time()
        plans = self.plans(refs)
        found = self.find(plans)
        chosen = [
            self._choose(ref, plan, found, now) for ref, plan in zip(refs, plans, strict=True)
        ]
        heads: dict[str, Head] = {}
        for pick in chosen:
            if pick is not None and isinstance(pick[1], Head):
                expires = pick[1].record.expires_at
                if expires is None or expires > now:
                    heads[pick[0]] = pick[1]
        lists = self._read_chunks(heads, after or 0)
        out: list[JobRecord | None] = []
        handed: set[str] = set()
        for pick in chosen:
            if pick is None:
                out.append(None)
                continue
            j, what = pick
            if isinstance(what, JobRecord):  # a tombstone: expired
                out.append(what.copy())  # each reference gets its own object
                continue
            base = what.record
            if j not in heads:  # expired, memcached has not dropped it yet
                out.append(
                    JobRecord(
                        base.key,
                        function=base.function,
                        state=State.EXPIRED,
                        attempt=base.attempt,
                        expires_at=base.expires_at,
                    )
                )
                continue
            record = base if j not in handed else base.copy()  # each reference its own object
            handed.add(j)
            chunks = lists.get(j)
            if chunks is not None:
                record.data, record.warnings, record.status = (
                    list(chunks[0]),
                    list(chunks[1]),
                    list(chunks[2]),
                )
            record.data_offset = after or 0
            out.append(record)
        return out

    def _read_one(self, ref: JobRef, after: int) -> JobRecord | None:
        """The common read: one full reference to a live, whole head. None: take the long way."""
        assert ref.server is not None and ref.unique is not None
        key = JobKey(ref.server, ref.handle, ref.unique)
        j = self.digests.of(key)[0]
        server = self.cluster.route(j)
        head_key = self.keys.head(j)
        answer = protocol.run(self.cluster.pools, {server: protocol.get([head_key])})[server][0]
        value = answer.get(head_key)
        if value is None or value[0][:1] != PLAIN:  # missing (expired? unknown?) or split
            return None
        head = Head.from_json_bytes(value[0][1:])
        record = head.record
        expires = record.expires_at
        if record.key != key or (expires is not None and expires <= time.time()):
            return None
        if any(head.counts):
            data, warnings, status = self._read_chunks({j: head}, after)[j]
            record.data, record.warnings, record.status = data, warnings, status
        record.data_offset = after
        return record

    def plans(self, refs: Sequence[JobRef]) -> list[Plan]:
        """What to look up for each reference: its job digest, or its handle's index."""
        plans = []
        for ref in refs:
            if not ref.handle and ref.unique:  # by unique
                plans.append(Plan(None, None, u=unique_digest(ref.unique)))
            elif ref.handle and ref.server is not None and ref.unique is not None:
                plans.append(
                    Plan(self.digests.of(JobKey(ref.server, ref.handle, ref.unique))[0], None)
                )
            else:  # an empty unique is never listed: an empty handle looks among empty handles
                plans.append(Plan(None, handle_digest(ref.handle)))
        return plans

    def find(self, plans: list[Plan]) -> dict[str, Found]:
        """Read the heads and tombstones of the plans' jobs (through their indexes as needed)."""
        keys = self.keys
        route = self.cluster.route
        wanted: dict[bytes, int] = {}
        digests: dict[str, int] = {}  # J -> its server
        for plan in plans:
            if plan.j is not None:
                if plan.j not in digests:
                    server = digests[plan.j] = route(plan.j)
                    wanted[keys.head(plan.j)] = server
                    wanted[keys.tombstone(plan.j)] = server
            elif plan.h is not None:
                wanted[keys.index(plan.h)] = route(plan.h)
            elif plan.u is not None:
                wanted[keys.unique_index(plan.u)] = route(plan.u)
        values = self.cluster.get(wanted)
        more: dict[bytes, int] = {}
        for plan in plans:
            if plan.h is not None:
                index = keys.index(plan.h)
            elif plan.u is not None:
                index = keys.unique_index(plan.u)
            else:
                continue
            plan.candidates = parse_index(values.get(index, b""))
            for j in plan.candidates:
                if j not in digests:
                    server = digests[j] = route(j)
                    more[keys.head(j)] = server
                    more[keys.tombstone(j)] = server
        if more:
            values.update(self.cluster.get(more))
        mains = {}
        for j, server in digests.items():
            value = values.get(keys.head(j))
            if value is not None:
                mains[keys.head(j)] = (value, server)
        bodies = self._resolve(mains)
        found: dict[str, Found] = {}
        for j in digests:
            item = found[j] = Found()
            head_key = keys.head(j)
            if head_key in bodies:
                body = bodies[head_key]
                item.head_value = values[head_key]
                if body is None:
                    item.damaged = True
                else:
                    head = Head.from_json_bytes(body)
                    if job_digest(head.record.key) == j:  # never another job's record
                        item.head = head
            item.tomb_value = values.get(keys.tombstone(j))
        return found

    @staticmethod
    def tomb(j: str, item: Found) -> JobRecord | None:
        """The expired record a job's tombstone stands for (parsed on demand)."""
        if item.tomb is None and item.tomb_value is not None:
            body = parse_main(item.tomb_value)
            item.tomb_value = None
            if isinstance(body, bytes):
                record = record_from_tombstone(body)
                if job_digest(record.key) == j:
                    item.tomb = record
        return item.tomb

    def _choose(
        self, ref: JobRef, plan: Plan, found: dict[str, Found], now: float
    ) -> tuple[str, Head | JobRecord] | None:
        """The newest job matching ``ref``: (J, its head) or (J, its expired record), or None."""
        order = [plan.j] if plan.j is not None else reversed(plan.candidates)
        for j in order:
            item = found.get(j) if j is not None else None
            if item is None:
                continue
            if item.head is not None:
                if ref.matches(item.head.record.key):
                    return j, item.head
                continue
            tomb = self.tomb(j, item)
            if (
                tomb is not None
                and ref.matches(tomb.key)
                and tomb.expires_at is not None
                and tomb.expires_at <= now + EXPIRY_TOLERANCE
            ):
                return j, tomb
        return None

    def _read_chunks(self, heads: dict[str, Head], after: int) -> dict[str, Lists]:
        """The committed chunks of each head, each stream up to its first missing chunk."""
        keys = self.keys
        wanted: dict[bytes, int] = {}
        ranges: dict[str, list[range]] = {}
        for j, head in heads.items():
            counts = head.counts
            if not any(counts):
                continue
            server = self.cluster.route(j)
            spans = [range(min(after, counts[DATA]), counts[DATA])]
            spans += [range(counts[WARNINGS]), range(counts[STATUS])]
            ranges[j] = spans
            for s, span in enumerate(spans):
                for i in span:
                    wanted[keys.chunk(j, head.gen, s, i)] = server
        if not wanted:  # e.g. a cursor past the last data chunk and no warnings or status
            return {j: ([], [], []) for j in ranges}
        values = self.cluster.get(wanted)
        bodies = self._resolve({k: (v, wanted[k]) for k, v in values.items()})
        out: dict[str, Lists] = {}
        for j, spans in ranges.items():
            gen = heads[j].gen
            streams: list[list[bytes]] = [[], [], []]
            for s, span in enumerate(spans):
                for i in span:
                    body = bodies.get(keys.chunk(j, gen, s, i))
                    if body is None:  # not written yet (a concurrent writer) or evicted
                        break
                    streams[s].append(body)
            points = [_status_point(b) for b in streams[STATUS]]
            out[j] = (streams[DATA], streams[WARNINGS], points)
        return out

    def _resolve(self, mains: dict[bytes, tuple[bytes, int]]) -> dict[bytes, bytes | None]:
        """The bodies of stored values (key -> (value, server)); None for a broken one.

        Split values cost one more round trip per server, for all of them together.
        """
        bodies: dict[bytes, bytes | None] = {}
        headers: dict[bytes, tuple[PartsHeader, int]] = {}
        for key, (value, server) in mains.items():
            parsed = parse_main(value)
            if isinstance(parsed, PartsHeader):
                headers[key] = (parsed, server)
            else:
                bodies[key] = parsed
        if headers:  # split values: one more round trip for all their parts
            wanted = {
                part_key(key, h.part_id, k): server
                for key, (h, server) in headers.items()
                for k in range(h.parts)
            }
            parts = self.cluster.get(wanted)
            for key, (h, _) in headers.items():
                bodies[key] = join_parts(
                    h, [parts.get(part_key(key, h.part_id, k)) for k in range(h.parts)]
                )
        return bodies


def _status_point(body: bytes) -> StatusPoint:
    obj = json.loads(body)
    return StatusPoint(int(obj["numerator"]), int(obj["denominator"]), float(obj["at"]))
