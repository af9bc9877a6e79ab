"""The memcached servers of one store: their connection pools, which one holds a key, round trips.

Every round trip goes through :func:`protocol.run <gearstash_memcache.protocol.run>`: one request
per server, all servers in parallel. Multi-step conversations (a job's write) are generators that
yield the commands of their next round trip (a :data:`Step`) and receive the replies
(:data:`Answers`); :meth:`Cluster.drive` advances many of them together.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from typing import Any

from . import protocol
from .layout import pick_server
from .protocol import Cmd, ServerFailure
from .url import Target

Step = dict[int, list[Cmd]]  # server index -> commands of one round trip
Answers = dict[int, list[Any]]  # server index -> their replies
Gen = Generator[Step, Answers, Any]


class Cluster:
    """The servers a ``memcache://`` URL names (index = place in the URL). Thread-safe."""

    def __init__(self, target: Target) -> None:
        self.names = target.names
        self.timeout = target.timeout
        self._target = target
        self._single = len(self.names) == 1
        self.pools = self._make_pools()

    def _make_pools(self) -> list[protocol.Pool]:
        return [
            protocol.Pool(name, host, port, self.timeout)
            for name, (host, port) in zip(self.names, self._target.servers, strict=True)
        ]

    def probe(self) -> int:
        """Reach every server; the part size: what fits one slab chunk of the smallest server."""
        sizes = []
        for index, pool in enumerate(self.pools):
            try:
                client = pool.acquire()
                try:
                    settings = client.stats("settings")
                finally:
                    client.close()
            except Exception as exc:
                raise ServerFailure(self.names[index], exc) from exc
            item_max = int(settings.get(b"item_size_max", 1024 * 1024))
            chunk_max = int(settings.get(b"slab_chunk_max", item_max // 2))
            sizes.append(min(item_max, chunk_max) - 1024)
        return max(4096, min(sizes))

    def after_fork(self) -> None:
        # The parent's sockets must not be shared: new pools. The child's copies of the old
        # sockets are closed when collected, which leaves the parent's open. The old pools'
        # locks are not touched (another thread of the parent may have held one at the fork).
        self.pools = self._make_pools()

    def close(self) -> None:
        for pool in self.pools:
            pool.clear()

    def route(self, token: str) -> int:
        """The index of the server holding ``token`` (a job digest J or a handle digest H)."""
        return 0 if self._single else pick_server(self.names, token)

    def drive(self, gens: list[Gen]) -> None:
        """Advance every generator one round trip at a time, all servers in parallel."""
        if len(gens) == 1:  # the common case, without the bookkeeping
            gen = gens[0]
            try:
                step = next(gen)
                while True:
                    step = gen.send(protocol.run(self.pools, step))
            except StopIteration:
                return
        pending: dict[int, Step] = {}
        for i, gen in enumerate(gens):
            with contextlib.suppress(StopIteration):
                pending[i] = next(gen)
        while pending:
            batches: dict[int, list[Cmd]] = {}
            spans: list[tuple[int, int, int, int]] = []
            for i, step in pending.items():
                for server, commands in step.items():
                    batch = batches.setdefault(server, [])
                    spans.append((i, server, len(batch), len(commands)))
                    batch.extend(commands)
            replies = protocol.run(self.pools, batches)
            answers: dict[int, Answers] = {}
            for i, server, start, count in spans:
                answers.setdefault(i, {})[server] = replies[server][start : start + count]
            following: dict[int, Step] = {}
            for i in pending:
                with contextlib.suppress(StopIteration):
                    following[i] = gens[i].send(answers[i])
            pending = following

    def get(self, keys: dict[bytes, int]) -> dict[bytes, bytes]:
        """One round trip per server: the values of ``keys`` (key -> server) that exist."""
        by_server: dict[int, list[bytes]] = {}
        for key, server in keys.items():
            by_server.setdefault(server, []).append(key)
        if not by_server:
            return {}
        replies = protocol.run(self.pools, {s: protocol.get(ks) for s, ks in by_server.items()})
        found: dict[bytes, bytes] = {}
        for answers in replies.values():
            for answer in answers:
                for key, (value, _) in answer.items():
                    found[key] = value
        return found
