"""Where a write puts its chunks (data, warnings, status): the commands that store them.

A new attempt writes its chunks under a new generation no reader follows yet; a write to a running
job takes indices from the generation's counters (``incr``, one round trip) first. Chunks too big
for one memcached item are split into parts (``layout.encode_value``), and noted in the head's
``split`` so that deletes and refreshes find them.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from gearstash.model.records import Event, EventKind

from . import protocol
from .cluster import Answers, Step
from .layout import (
    DATA,
    STATUS,
    WARNINGS,
    Encoded,
    Head,
    Keys,
    encode_value,
    exptime,
    new_token,
    part_key,
    status_body,
)
from .protocol import Cmd

MAX_SLACK = 3600.0  # chunks live up to this much longer than their job (see chunk_expiry)
STREAM_OF = {EventKind.DATA: DATA, EventKind.WARNING: WARNINGS, EventKind.STATUS: STATUS}


@dataclass(slots=True)
class Chunks:
    """Chunk writes prepared for one commit: under ``gen``, up to ``top[s]`` per stream."""

    gen: str
    top: list[int]
    split: list[list[Any]]
    commands: list[Cmd]
    expires: float | None  # the earliest expiry among these chunks (None: never / none)
    sent: bool = False


class ChunkWriter:
    """Builds the chunk commands of one store (its keys, its part size)."""

    def __init__(self, keys: Keys, part_size: int) -> None:
        self.keys = keys
        self.part_size = part_size

    def _chunk_commands(
        self, key: bytes, body: bytes, when: int, split: list[Any], where: tuple[int, int]
    ) -> list[Cmd]:
        encoded = encode_value(body, self.part_size)
        if encoded.parts:
            split.append([where[0], where[1], encoded.part_id, len(encoded.parts)])
        return [
            *part_commands(key, encoded, when),
            protocol.store(b"set", key, encoded.main, when),
        ]

    def new_chunks(
        self, j: str, chunk_events: list[Event], expires: float | None, ttl: float, now: float
    ) -> Chunks:
        """The chunks of a new attempt (or a new record), under a new generation."""
        gen = new_token()
        top = [0, 0, 0]
        split: list[list[Any]] = []
        commands: list[Cmd] = []
        chunk_exp = chunk_expiry(expires, ttl)
        when = exptime(chunk_exp, now)
        for event in chunk_events:
            stream = STREAM_OF[event.kind]
            key = self.keys.chunk(j, gen, stream, top[stream])
            commands += self._chunk_commands(
                key, chunk_body(event), when, split, (stream, top[stream])
            )
            top[stream] += 1
        return Chunks(gen, top, split, commands, chunk_exp if chunk_events else None)

    def append_chunks(
        self,
        server: int,
        j: str,
        known: Head,
        chunk_events: list[Event],
        expires: float | None,
        ttl: float,
        now: float,
    ) -> Generator[Step, Answers, Chunks | None]:
        """Take indices from the generation's counters (one round trip), then build the writes."""
        gen = known.gen
        wanted = [0, 0, 0]
        for event in chunk_events:
            wanted[STREAM_OF[event.kind]] += 1
        chunk_exp = chunk_expiry(expires, ttl)
        when = exptime(chunk_exp, now)
        commands: list[Cmd] = []
        streams = [s for s in range(3) if wanted[s]]
        for s in streams:
            counter = self.keys.counter(j, gen, s)
            commands.append(protocol.store(b"add", counter, b"%d" % known.counts[s], when))
            commands.append(protocol.incr(counter, wanted[s]))
        answers = yield {server: commands}
        top = [0, 0, 0]
        for n, s in enumerate(streams):
            value = answers[server][2 * n + 1]
            if value is None:
                return None
            top[s] = value
        nxt = [top[s] - wanted[s] for s in range(3)]
        split: list[list[Any]] = []
        writes: list[Cmd] = []
        for event in chunk_events:
            stream = STREAM_OF[event.kind]
            key = self.keys.chunk(j, gen, stream, nxt[stream])
            writes += self._chunk_commands(
                key, chunk_body(event), when, split, (stream, nxt[stream])
            )
            nxt[stream] += 1
        return Chunks(gen, top, split, writes, chunk_exp)

    def refresh_chunks(
        self, j: str, head: Head, expires: float | None, ttl: float, now: float
    ) -> list[Cmd]:
        """Touch every chunk of the head's generation when some would expire before the head.

        Happens when a job runs longer than the slack (at most an hour) past its first chunks,
        or when the TTL becomes "for ever"; updates ``head.chunk_exp``.
        """
        if head.chunk_exp is None or not any(head.counts):
            return []
        if expires is not None and head.chunk_exp >= expires:
            return []
        target = chunk_expiry(expires, ttl)
        when = exptime(target, now)
        commands = []
        for s in range(3):
            commands.append(protocol.touch(self.keys.counter(j, head.gen, s), when))
            commands += [
                protocol.touch(self.keys.chunk(j, head.gen, s, i), when)
                for i in range(head.counts[s])
            ]
        for stream, index, part_id, parts in head.split:
            key = self.keys.chunk(j, head.gen, stream, index)
            commands += [protocol.touch(part_key(key, part_id, k), when) for k in range(parts)]
        head.chunk_exp = target
        return commands


def chunk_expiry(expires: float | None, ttl: float) -> float | None:
    """Chunks and counters outlive their head by a slack, refreshed when the job outruns it."""
    return None if expires is None else expires + min(ttl, MAX_SLACK)


def part_commands(key: bytes, encoded: Encoded, when: int) -> list[Cmd]:
    """``set`` the parts of a split value stored under ``key`` (none for a plain value)."""
    return [
        protocol.store(b"set", part_key(key, encoded.part_id, k), part, when)
        for k, part in enumerate(encoded.parts)
    ]


def generation(head: Head) -> list[Any]:
    """The head's current generation as ``previous`` lists it: ``[gen, counts..., split]``."""
    return [head.gen, *head.counts, head.split]


def chunk_body(event: Event) -> bytes:
    if event.kind is EventKind.STATUS:
        return status_body(event.numerator, event.denominator, event.at)
    return event.payload
