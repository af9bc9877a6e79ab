"""``delete()`` on memcached: every key of each matching job, then its place in its indexes.

A job's keys are its head (and the head's parts), its tombstone, and for every generation it had
(the current one and ``previous``) the counters and the chunks up to the higher of the committed
count and the counter (a writer may have got further), with their parts.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

from gearstash.model.records import JobRef

from . import protocol
from .cache import HeadCache
from .chunks import generation
from .cluster import Cluster
from .layout import (
    Keys,
    PartsHeader,
    exptime,
    handle_digest,
    parse_index,
    parse_main,
    part_key,
    unique_digest,
)
from .protocol import Cmd
from .read import Found, Reader
from .write import MAX_TRIES


class Deleter:
    """Deletes the jobs of one store; finds them with the store's :class:`Reader`."""

    def __init__(
        self,
        keys: Keys,
        cluster: Cluster,
        reader: Reader,
        heads: HeadCache,
        ttl: float,
        grace: float,
    ) -> None:
        self.keys = keys
        self.cluster = cluster
        self.reader = reader
        self.heads = heads
        self.ttl = ttl
        self.grace = grace

    def delete(self, refs: Sequence[JobRef]) -> int:
        """Forget every job each reference matches (all its keys); returns how many."""
        keys = self.keys
        route = self.cluster.route
        plans = self.reader.plans(refs)
        found = self.reader.find(plans)
        doomed: dict[str, Found] = {}
        indexes: dict[bytes, set[str]] = {}  # index key -> the Js to remove from it
        servers: dict[bytes, int] = {}  # index key -> its server
        for ref, plan in zip(refs, plans, strict=True):
            for j in [plan.j] if plan.j is not None else plan.candidates:
                if j is None or j not in found:
                    continue
                item = found[j]
                record = item.head.record if item.head is not None else self.reader.tomb(j, item)
                if (record is not None and ref.matches(record.key)) or (
                    record is None and item.damaged and plan.j is not None
                ):
                    doomed[j] = item
                    listed = record.key if record is not None else ref
                    h = handle_digest(listed.handle)
                    indexes.setdefault(keys.index(h), set()).add(j)
                    servers[keys.index(h)] = route(h)
                    if listed.unique:
                        u = unique_digest(listed.unique)
                        indexes.setdefault(keys.unique_index(u), set()).add(j)
                        servers[keys.unique_index(u)] = route(u)
        if not doomed:
            return 0
        # The counters say how far writers got (chunks past the committed counts).
        counters: dict[bytes, int] = {}
        for j, item in doomed.items():
            if item.head is not None:
                for s in range(3):
                    counters[keys.counter(j, item.head.gen, s)] = route(j)
        reached = self.cluster.get(counters)
        batches: dict[int, list[Cmd]] = {}
        for j, item in doomed.items():
            server = route(j)
            doomed_keys = [keys.head(j), keys.tombstone(j)]
            if item.head_value is not None:
                parsed = parse_main(item.head_value)
                if isinstance(parsed, PartsHeader):
                    doomed_keys += [
                        part_key(keys.head(j), parsed.part_id, k) for k in range(parsed.parts)
                    ]
            head = item.head
            if head is not None:
                generations = [*head.previous, generation(head)]
                for gen, nd, nw, ns, split in generations:
                    counts = [nd, nw, ns]
                    for s in range(3):
                        counter = keys.counter(j, gen, s)
                        top = counts[s]
                        with contextlib.suppress(KeyError, ValueError):
                            top = max(top, int(reached[counter]))
                        doomed_keys.append(counter)
                        doomed_keys += [keys.chunk(j, gen, s, i) for i in range(top)]
                    for stream, index, part_id, parts in split:
                        chunk = keys.chunk(j, gen, stream, index)
                        doomed_keys += [part_key(chunk, part_id, k) for k in range(parts)]
            batches.setdefault(server, []).extend(protocol.delete(k) for k in doomed_keys)
            self.heads.put(j, None, None)
        protocol.run(self.cluster.pools, batches)
        self._unlist(indexes, servers)
        return len(doomed)

    def _unlist(self, indexes: dict[bytes, set[str]], servers: dict[bytes, int]) -> None:
        """Remove deleted jobs from their handle and unique indexes (gets + cas, again on a lost
        race); ``indexes`` maps an index key to the Js to remove, ``servers`` to its server."""
        pending = dict(indexes)
        for _ in range(MAX_TRIES):
            if not pending:
                return
            index_keys = {key: servers[key] for key in pending}
            by_server: dict[int, list[bytes]] = {}
            for key, server in index_keys.items():
                by_server.setdefault(server, []).append(key)
            replies = protocol.run(
                self.cluster.pools, {s: protocol.get(ks, cas=True) for s, ks in by_server.items()}
            )
            current: dict[bytes, tuple[bytes, int | None]] = {}
            for answers in replies.values():
                for answer in answers:
                    current.update(answer)
            batches: dict[int, list[Cmd]] = {}
            order: list[bytes] = []
            when = exptime(
                None if self.ttl == 0 else time.time() + self.ttl + min(self.ttl, self.grace),
                time.time(),
            )
            for key, gone in pending.items():
                seen = current.get(key)
                if seen is None or seen[1] is None:
                    continue
                kept = [j for j in parse_index(seen[0]) if j not in gone]
                value = b"".join(b" " + j.encode() for j in kept)
                batches.setdefault(index_keys[key], []).append(
                    protocol.store(b"cas", key, value, when, seen[1])
                )
                order.append(key)
            if not batches:
                return
            replies = protocol.run(self.cluster.pools, batches)
            positions: dict[int, int] = {}
            still: dict[bytes, set[str]] = {}
            for key in order:
                server = index_keys[key]
                n = positions.get(server, 0)
                positions[server] = n + 1
                if replies[server][n] == b"EXISTS":
                    still[key] = pending[key]
            pending = still
