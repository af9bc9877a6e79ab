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
* its handle already used by another job: 1 more (``append`` to the handle index).

Every command gets an answer (no ``noreply``): ``write()`` returns once memcached has stored
everything (the worker's ordering guarantee), and a failure is a StoreError, never silent.

Reads. One full reference (server, handle, unique) to a job that exists: 1 round trip (+1 when it
has chunks). Otherwise :meth:`MemcacheStore.get_many` takes at most six rounds of multi-key
``get`` per server (heads and tombstones, or handle indexes; the heads the indexes name; parts of
split heads; chunks; parts of split chunks), whatever the number of references.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pymemcache.exceptions import MemcacheError

from gearstash.errors import ConfigError, StoreError
from gearstash.records import Event, EventKind, JobKey, JobRecord, JobRef, State, StatusPoint
from gearstash.store import PollWatch, redact_url, ttl_from_query

from . import protocol
from .layout import (
    DATA,
    PLAIN,
    STATUS,
    WARNINGS,
    Encoded,
    Head,
    Keys,
    PartsHeader,
    encode_value,
    exptime,
    handle_digest,
    job_digest,
    join_parts,
    new_token,
    parse_index,
    parse_main,
    part_key,
    pick_server,
    record_from_tombstone,
    status_body,
    tombstone_body,
)
from .protocol import Cmd, ServerFailure

DEFAULT_PORT = 11211
DEFAULT_TIMEOUT = 2.0
DEFAULT_GRACE = 86400.0
MAX_SLACK = 3600.0  # chunks live up to this much longer than their job (see _chunk_expiry)
MAX_TRIES = 64  # rounds of one job's write before giving up (lost cas races)
CACHE_SIZE = 4096  # heads (with their CAS value) remembered per store
EXPIRY_TOLERANCE = 1.0  # memcached's clock has 1 s steps
MAX_DETAIL = 400
_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_OPTIONS = {"ttl", "grace", "prefix", "timeout"}
_STREAM_OF = {EventKind.DATA: DATA, EventKind.WARNING: WARNINGS, EventKind.STATUS: STATUS}
_STARTED = EventKind.STARTED
_FINAL_STATES = (State.COMPLETE, State.FAILED)
# Everything a memcached conversation can raise; mapped to StoreError in MemcacheStore._error.
_MAPPED = (StoreError, ServerFailure, OSError, MemcacheError, protocol.ReplyError, ValueError)

Step = dict[int, list[Cmd]]  # server index -> commands of one round trip
Answers = dict[int, list[Any]]  # server index -> their replies
Gen = Generator[Step, Answers, Any]


@dataclass(frozen=True, slots=True)
class Target:
    """What a ``memcache://`` URL names."""

    servers: list[tuple[str, int]]  # (host as given to connect(), port)
    names: list[str]  # "host:port" (IPv6 in brackets): routing and messages
    ttl: float
    grace: float
    prefix: str
    timeout: float


def parse_url(url: str) -> Target:
    """Parse ``memcache://host[:port][,host[:port]...][?ttl=&grace=&prefix=&timeout=]``."""
    shown = redact_url(url)
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("memcache", "memcached"):
        raise ConfigError(f"not a memcache:// URL: {shown!r}")
    netloc = parts.netloc
    if "@" in netloc:
        raise ConfigError(
            f"memcache URLs take no user or password (memcached's text protocol has no "
            f"authentication): {shown!r}"
        )
    if parts.path not in ("", "/"):
        raise ConfigError(f"a memcache URL has no path: {shown!r}")
    servers: list[tuple[str, int]] = []
    names: list[str] = []
    for item in netloc.split(","):
        host, port = _host_port(item.strip(), shown)
        name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if name in names:
            raise ConfigError(f"server {name} named twice in {shown!r}")
        servers.append((host, port))
        names.append(name)
    options = parse_qs(parts.query, keep_blank_values=True)
    unknown = [k for k in options if k not in _OPTIONS and not k.startswith("gearstash_")]
    if unknown:
        raise ConfigError(
            f"unknown option {unknown[0]!r} in {shown!r} (known: {', '.join(sorted(_OPTIONS))})"
        )

    def number(name: str, default: float, positive: bool = False) -> float:
        values = options.get(name)
        if not values:
            return default
        try:
            value = float(values[-1])
        except ValueError:
            raise ConfigError(f"{name} must be a number of seconds in {shown!r}") from None
        if value < 0 or (positive and value == 0) or value != value:
            raise ConfigError(f"{name} out of range in {shown!r}")
        return value

    prefix = options.get("prefix", ["gs"])[-1]
    if not _PREFIX.fullmatch(prefix):
        raise ConfigError(f"prefix must be 1-32 of [A-Za-z0-9_.-] in {shown!r}")
    return Target(
        servers,
        names,
        ttl_from_query(url),
        number("grace", DEFAULT_GRACE),
        prefix,
        number("timeout", DEFAULT_TIMEOUT, positive=True),
    )


def _host_port(item: str, shown: str) -> tuple[str, int]:
    if item.startswith("["):
        host, sep, rest = item[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"bad server {item!r} in {shown!r}")
        port_text = rest[1:]
    elif item.count(":") > 1:
        raise ConfigError(f"put an IPv6 address in brackets ([::1]:11211) in {shown!r}")
    else:
        host, _, port_text = item.partition(":")
    host = host.lower()
    if not host:
        raise ConfigError(f"a memcache URL needs host[:port] in {shown!r}")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"bad port {port_text!r} in {shown!r}")
    return host, int(port_text)


# ---------------------------------------------------------------------------------- fork safety

_STORES: weakref.WeakSet[MemcacheStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------------------------- the store


@dataclass(slots=True)
class _Chunks:
    """Chunk writes prepared for one commit: under ``gen``, up to ``top[s]`` per stream."""

    gen: str
    top: list[int]
    split: list[list[Any]]
    commands: list[Cmd]
    expires: float | None  # the earliest expiry among these chunks (None: never / none)
    sent: bool = False


@dataclass(slots=True)
class _Found:
    """What a read found for one job digest."""

    head: Head | None = None
    tomb: JobRecord | None = None
    head_value: bytes | None = None  # the head's stored value (a parts header when split)
    damaged: bool = False  # a head is there but could not be read whole
    tomb_value: bytes | None = None  # the tombstone's stored value, until parsed


@dataclass(slots=True)
class _Plan:
    """One reference's lookup: a digest to read, or a handle index to read first."""

    j: str | None
    h: str | None
    candidates: list[str] = field(default_factory=list)


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
        self._target = target
        self._closed = False
        self._pools = self._make_pools()
        self._cache: OrderedDict[str, tuple[Head, int]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._digest_cache: dict[JobKey, tuple[str, str]] = {}  # plain dict ops: thread-safe
        self._single = len(self.servers) == 1
        self.part_size = 0
        try:
            self.part_size = self._probe()
        except _MAPPED as exc:
            raise self._error(exc, "opening the store") from exc
        _STORES.add(self)

    def __repr__(self) -> str:
        return f"MemcacheStore({self.url!r})"

    def _make_pools(self) -> list[protocol.Pool]:
        return [
            protocol.Pool(name, host, port, self.timeout)
            for name, (host, port) in zip(self.servers, self._target.servers, strict=True)
        ]

    def _probe(self) -> int:
        """Reach every server; the part size: what fits one slab chunk of the smallest server."""
        sizes = []
        for index, pool in enumerate(self._pools):
            try:
                client = pool.acquire()
                try:
                    settings = client.stats("settings")
                finally:
                    client.close()
            except Exception as exc:
                raise ServerFailure(self.servers[index], exc) from exc
            item_max = int(settings.get(b"item_size_max", 1024 * 1024))
            chunk_max = int(settings.get(b"slab_chunk_max", item_max // 2))
            sizes.append(min(item_max, chunk_max) - 1024)
        return max(4096, min(sizes))

    def _after_fork(self) -> None:
        # The parent's sockets must not be shared: new pools. The child's copies of the old
        # sockets are closed when collected, which leaves the parent's open. The old pools'
        # locks are not touched (another thread of the parent may have held one at the fork).
        self._pools = self._make_pools()
        self._cache_lock = threading.Lock()

    # ------------------------------------------------------------------ failures (the one place)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.url}: the store is closed")

    def _error(self, exc: BaseException, doing: str) -> StoreError:
        """The StoreError for ``exc``: the redacted URL, what failed, where and why (one line)."""
        if isinstance(exc, StoreError):
            return exc
        where = ""
        if isinstance(exc, ServerFailure):
            where = f" (memcached {exc.server})"
            exc = exc.cause
        if isinstance(exc, TimeoutError | socket.timeout):
            detail = f"no answer within {self.timeout:g} s"
        elif isinstance(exc, ConnectionRefusedError):
            detail = "connection refused (is memcached running there?)"
        elif isinstance(exc, OSError):
            detail = f"{type(exc).__name__}: {exc.strerror or exc}"
        elif isinstance(exc, protocol.ReplyError):
            detail = str(exc)
        elif isinstance(exc, ValueError):
            detail = f"unreadable value ({exc})"
        else:
            detail = f"{type(exc).__name__}: {exc}"
        detail = " ".join(detail.split())
        if len(detail) > MAX_DETAIL:
            detail = detail[: MAX_DETAIL - 3] + "..."
        return StoreError(f"{self.url}: {doing} failed{where}: {detail}")

    # ------------------------------------------------------------------ plumbing

    def _route(self, token: str) -> int:
        return 0 if self._single else pick_server(self.servers, token)

    def _digests(self, key: JobKey) -> tuple[str, str]:
        """(J, H) of ``key``, remembered: a job is written and read several times in a row."""
        found = self._digest_cache.get(key)
        if found is None:
            if len(self._digest_cache) >= CACHE_SIZE:
                self._digest_cache.clear()
            found = self._digest_cache[key] = (job_digest(key), handle_digest(key.handle))
        return found

    def _drive(self, gens: list[Gen]) -> None:
        """Advance every generator one round trip at a time, all servers in parallel."""
        if len(gens) == 1:  # the common case, without the bookkeeping
            gen = gens[0]
            try:
                step = next(gen)
                while True:
                    step = gen.send(protocol.run(self._pools, step))
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
            replies = protocol.run(self._pools, batches)
            answers: dict[int, Answers] = {}
            for i, server, start, count in spans:
                answers.setdefault(i, {})[server] = replies[server][start : start + count]
            following: dict[int, Step] = {}
            for i in pending:
                with contextlib.suppress(StopIteration):
                    following[i] = gens[i].send(answers[i])
            pending = following

    def _get(self, keys: dict[bytes, int]) -> dict[bytes, bytes]:
        """One round trip per server: the values of ``keys`` (key -> server) that exist."""
        by_server: dict[int, list[bytes]] = {}
        for key, server in keys.items():
            by_server.setdefault(server, []).append(key)
        if not by_server:
            return {}
        replies = protocol.run(self._pools, {s: protocol.get(ks) for s, ks in by_server.items()})
        found: dict[bytes, bytes] = {}
        for answers in replies.values():
            for answer in answers:
                for key, (value, _) in answer.items():
                    found[key] = value
        return found

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
            parts = self._get(wanted)
            for key, (h, _) in headers.items():
                bodies[key] = join_parts(
                    h, [parts.get(part_key(key, h.part_id, k)) for k in range(h.parts)]
                )
        return bodies

    def _cache_get(self, j: str) -> tuple[Head, int] | None:
        with self._cache_lock:
            return self._cache.get(j)

    def _cache_put(self, j: str, head: Head | None, cas: int | None) -> None:
        with self._cache_lock:
            if head is None or cas is None:
                self._cache.pop(j, None)
                return
            self._cache[j] = (head, cas)
            self._cache.move_to_end(j)
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)

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
            self._drive([self._write_job(key, evs) for key, evs in groups.items()])
        except _MAPPED as exc:
            raise self._error(exc, "writing") from exc

    def _write_job(self, key: JobKey, events: list[Event]) -> Gen:
        keys = self.keys
        j, h = self._digests(key)
        server = self._route(j)
        index_server = self._route(h)
        head_key = keys.head(j)
        index_key = keys.index(h)
        has_started = any(e.kind is _STARTED for e in events)
        last = events[-1]
        ttl = self.ttl if last.ttl is None else last.ttl
        cached = self._cache_get(j)
        known: Head | None = cached[0] if cached else None
        cas: int | None = cached[1] if cached else None
        # Whether known/cas say what the server holds. Not needed for a batch with 'started'
        # (it begins a new attempt whatever was there: 'add' first, and 'cas' if that loses).
        looked = cached is not None
        must_read = False  # a commit lost a race we did not see the winner of
        fresh: _Chunks | None = None  # chunks written under a new generation
        appended: _Chunks | None = None  # chunks written under known.gen
        for _ in range(MAX_TRIES):
            now = time.time()
            if not looked and (not has_started or must_read):
                answers = yield {server: protocol.get([head_key], cas=True)}
                seen = answers[server][0].get(head_key)
                known, cas = yield from self._load_head(server, head_key, seen, key)
                looked = True
                continue
            record, chunk_events = _advance(known, key, events, ttl)
            expires = record.expires_at
            before: list[Cmd] = []
            if has_started or known is None:
                # A new attempt (or a new record): its chunks under a generation nobody reads yet.
                if fresh is None:
                    fresh = self._new_chunks(j, chunk_events, expires, ttl, now)
                if not fresh.sent:
                    before += fresh.commands
                    fresh.sent = True
                previous = [] if known is None else [*known.previous, _generation(known)]
                head = Head(
                    record, fresh.gen, list(fresh.top), fresh.expires, list(fresh.split), previous
                )
            else:
                if chunk_events and (appended is None or appended.gen != known.gen):
                    appended = yield from self._append_chunks(
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
                before += self._refresh_chunks(j, head, expires, ttl, now)
            encoded = encode_value(head.to_json_bytes(), self.part_size)
            head_time = exptime(expires, now)
            commands = before
            if encoded.parts:
                commands += self._part_commands(head_key, encoded, head_time)
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
            answers = yield step
            mine = answers[server]
            outcome = mine[commit_at]
            seen = mine[commit_at + 1].get(head_key) if read_back else None
            if outcome == b"STORED":
                if seen is not None and seen[0] == encoded.main:
                    self._cache_put(j, head, seen[1])
                elif cached is not None:
                    self._cache_put(j, None, None)
                listed = answers[index_server][-1]
                if (listing and listed != b"STORED") or listed is False:  # exists / was evicted
                    yield from self._list(index_server, index_key, j, gone_time)
                return
            # Lost a race (or the head vanished): start again from the head as it is now.
            if read_back or outcome == b"NOT_FOUND":
                known, cas = yield from self._load_head(server, head_key, seen, key)
                looked = True
            else:
                known, cas, looked, must_read = None, None, False, True
                self._cache_put(j, None, None)
            if known is None and cas is None and looked:
                appended = None
            if known is not None and not has_started:
                fresh = None  # the record exists after all: append to its generation
        raise StoreError(f"{self.url}: too many writers raced on job {key.handle!r}; gave up")

    def _list(self, server: int, index_key: bytes, j: str, when: int) -> Gen:
        """Append J to an existing handle index, or make it if there is none (any more).

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

    def _chunk_expiry(self, expires: float | None, ttl: float) -> float | None:
        """Chunks and counters outlive their head by a slack, refreshed when the job outruns it."""
        return None if expires is None else expires + min(ttl, MAX_SLACK)

    def _chunk_commands(
        self, key: bytes, body: bytes, when: int, split: list[Any], where: tuple[int, int]
    ) -> list[Cmd]:
        encoded = encode_value(body, self.part_size)
        if encoded.parts:
            split.append([where[0], where[1], encoded.part_id, len(encoded.parts)])
        return [
            *self._part_commands(key, encoded, when),
            protocol.store(b"set", key, encoded.main, when),
        ]

    def _part_commands(self, key: bytes, encoded: Encoded, when: int) -> list[Cmd]:
        return [
            protocol.store(b"set", part_key(key, encoded.part_id, k), part, when)
            for k, part in enumerate(encoded.parts)
        ]

    def _new_chunks(
        self, j: str, chunk_events: list[Event], expires: float | None, ttl: float, now: float
    ) -> _Chunks:
        gen = new_token()
        top = [0, 0, 0]
        split: list[list[Any]] = []
        commands: list[Cmd] = []
        chunk_exp = self._chunk_expiry(expires, ttl)
        when = exptime(chunk_exp, now)
        for event in chunk_events:
            stream = _STREAM_OF[event.kind]
            key = self.keys.chunk(j, gen, stream, top[stream])
            commands += self._chunk_commands(
                key, _chunk_body(event), when, split, (stream, top[stream])
            )
            top[stream] += 1
        return _Chunks(gen, top, split, commands, chunk_exp if chunk_events else None)

    def _append_chunks(
        self,
        server: int,
        j: str,
        known: Head,
        chunk_events: list[Event],
        expires: float | None,
        ttl: float,
        now: float,
    ) -> Generator[Step, Answers, _Chunks | None]:
        """Take indices from the generation's counters (one round trip), then build the writes."""
        gen = known.gen
        wanted = [0, 0, 0]
        for event in chunk_events:
            wanted[_STREAM_OF[event.kind]] += 1
        chunk_exp = self._chunk_expiry(expires, ttl)
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
            stream = _STREAM_OF[event.kind]
            key = self.keys.chunk(j, gen, stream, nxt[stream])
            writes += self._chunk_commands(
                key, _chunk_body(event), when, split, (stream, nxt[stream])
            )
            nxt[stream] += 1
        return _Chunks(gen, top, split, writes, chunk_exp)

    def _refresh_chunks(
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
        target = self._chunk_expiry(expires, ttl)
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

    # ------------------------------------------------------------------ read

    def get_many(self, refs: Sequence[JobRef]) -> list[JobRecord | None]:
        """The newest record matching each reference, in order (None if none). Raises StoreError."""
        if not refs:
            return []
        self._check_open()
        try:
            return self._read(refs, None)
        except _MAPPED as exc:
            raise self._error(exc, "reading") from exc

    def get_after(self, ref: JobRef, after: int) -> JobRecord | None:
        """Like ``get_many([ref])[0]`` with only the data chunks from index ``after`` on."""
        self._check_open()
        try:
            return self._read([ref], max(0, after))[0]
        except _MAPPED as exc:
            raise self._error(exc, "reading") from exc

    def watch(self, refs: Sequence[JobRef]) -> PollWatch:
        """memcached cannot push: waiters poll."""
        return PollWatch()

    def purge(self) -> int:
        """memcached expires records by itself: nothing to do."""
        return 0

    def _plans(self, refs: Sequence[JobRef]) -> list[_Plan]:
        plans = []
        for ref in refs:
            if ref.server is not None and ref.unique is not None:
                plans.append(
                    _Plan(self._digests(JobKey(ref.server, ref.handle, ref.unique))[0], None)
                )
            else:
                plans.append(_Plan(None, handle_digest(ref.handle)))
        return plans

    def _find(self, plans: list[_Plan]) -> dict[str, _Found]:
        """Read the heads and tombstones of the plans' jobs (through handle indexes as needed)."""
        keys = self.keys
        wanted: dict[bytes, int] = {}
        digests: dict[str, int] = {}  # J -> its server
        for plan in plans:
            if plan.j is not None:
                if plan.j not in digests:
                    server = digests[plan.j] = self._route(plan.j)
                    wanted[keys.head(plan.j)] = server
                    wanted[keys.tombstone(plan.j)] = server
            else:
                assert plan.h is not None
                wanted[keys.index(plan.h)] = self._route(plan.h)
        values = self._get(wanted)
        more: dict[bytes, int] = {}
        for plan in plans:
            if plan.h is None:
                continue
            plan.candidates = parse_index(values.get(keys.index(plan.h), b""))
            for j in plan.candidates:
                if j not in digests:
                    server = digests[j] = self._route(j)
                    more[keys.head(j)] = server
                    more[keys.tombstone(j)] = server
        if more:
            values.update(self._get(more))
        mains = {}
        for j, server in digests.items():
            value = values.get(keys.head(j))
            if value is not None:
                mains[keys.head(j)] = (value, server)
        bodies = self._resolve(mains)
        found: dict[str, _Found] = {}
        for j in digests:
            item = found[j] = _Found()
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
    def _tomb(j: str, item: _Found) -> JobRecord | None:
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
        self, ref: JobRef, plan: _Plan, found: dict[str, _Found], now: float
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
            tomb = self._tomb(j, item)
            if (
                tomb is not None
                and ref.matches(tomb.key)
                and tomb.expires_at is not None
                and tomb.expires_at <= now + EXPIRY_TOLERANCE
            ):
                return j, tomb
        return None

    def _read_one(self, ref: JobRef, after: int) -> JobRecord | None:
        """The common read: one full reference to a live, whole head. None: take the long way."""
        assert ref.server is not None and ref.unique is not None
        key = JobKey(ref.server, ref.handle, ref.unique)
        j = self._digests(key)[0]
        server = self._route(j)
        head_key = self.keys.head(j)
        answer = protocol.run(self._pools, {server: protocol.get([head_key])})[server][0]
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

    def _read(self, refs: Sequence[JobRef], after: int | None) -> list[JobRecord | None]:
        if len(refs) == 1 and refs[0].server is not None and refs[0].unique is not None:
            record = self._read_one(refs[0], after or 0)
            if record is not None:
                return [record]
        now = time.time()
        plans = self._plans(refs)
        found = self._find(plans)
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

    def _read_chunks(
        self, heads: dict[str, Head], after: int
    ) -> dict[str, tuple[list[bytes], list[bytes], list[StatusPoint]]]:
        """The committed chunks of each head, each stream up to its first missing chunk."""
        keys = self.keys
        wanted: dict[bytes, int] = {}
        ranges: dict[str, list[range]] = {}
        for j, head in heads.items():
            counts = head.counts
            if not any(counts):
                continue
            server = self._route(j)
            spans = [range(min(after, counts[DATA]), counts[DATA])]
            spans += [range(counts[WARNINGS]), range(counts[STATUS])]
            ranges[j] = spans
            for s, span in enumerate(spans):
                for i in span:
                    wanted[keys.chunk(j, head.gen, s, i)] = server
        if not wanted:
            return {}
        values = self._get(wanted)
        bodies = self._resolve({k: (v, wanted[k]) for k, v in values.items()})
        out: dict[str, tuple[list[bytes], list[bytes], list[StatusPoint]]] = {}
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

    # ------------------------------------------------------------------ delete

    def delete(self, refs: Sequence[JobRef]) -> int:
        """Forget every job each reference matches (all its keys); returns how many."""
        if not refs:
            return 0
        self._check_open()
        try:
            return self._delete(refs)
        except _MAPPED as exc:
            raise self._error(exc, "deleting") from exc

    def _delete(self, refs: Sequence[JobRef]) -> int:
        keys = self.keys
        plans = self._plans(refs)
        found = self._find(plans)
        doomed: dict[str, _Found] = {}
        handles: dict[str, set[str]] = {}
        for ref, plan in zip(refs, plans, strict=True):
            for j in [plan.j] if plan.j is not None else plan.candidates:
                if j is None or j not in found:
                    continue
                item = found[j]
                record = item.head.record if item.head is not None else self._tomb(j, item)
                if (record is not None and ref.matches(record.key)) or (
                    record is None and item.damaged and plan.j is not None
                ):
                    doomed[j] = item
                    if record is not None:
                        handles.setdefault(handle_digest(record.key.handle), set()).add(j)
                    elif plan.j is not None:
                        handles.setdefault(handle_digest(ref.handle), set()).add(j)
        if not doomed:
            return 0
        # The counters say how far writers got (chunks past the committed counts).
        counters: dict[bytes, int] = {}
        for j, item in doomed.items():
            if item.head is not None:
                for s in range(3):
                    counters[keys.counter(j, item.head.gen, s)] = self._route(j)
        reached = self._get(counters)
        batches: dict[int, list[Cmd]] = {}
        for j, item in doomed.items():
            server = self._route(j)
            doomed_keys = [keys.head(j), keys.tombstone(j)]
            if item.head_value is not None:
                parsed = parse_main(item.head_value)
                if isinstance(parsed, PartsHeader):
                    doomed_keys += [
                        part_key(keys.head(j), parsed.part_id, k) for k in range(parsed.parts)
                    ]
            head = item.head
            if head is not None:
                generations = [*head.previous, _generation(head)]
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
            self._cache_put(j, None, None)
        protocol.run(self._pools, batches)
        self._unlist(handles)
        return len(doomed)

    def _unlist(self, handles: dict[str, set[str]]) -> None:
        """Remove deleted jobs from their handle indexes (gets + cas, again on a lost race)."""
        keys = self.keys
        pending = dict(handles)
        for _ in range(MAX_TRIES):
            if not pending:
                return
            index_keys = {keys.index(h): self._route(h) for h in pending}
            by_server: dict[int, list[bytes]] = {}
            for key, server in index_keys.items():
                by_server.setdefault(server, []).append(key)
            replies = protocol.run(
                self._pools, {s: protocol.get(ks, cas=True) for s, ks in by_server.items()}
            )
            current: dict[bytes, tuple[bytes, int | None]] = {}
            for answers in replies.values():
                for answer in answers:
                    current.update(answer)
            batches: dict[int, list[Cmd]] = {}
            order: list[str] = []
            when = exptime(
                None if self.ttl == 0 else time.time() + self.ttl + min(self.ttl, self.grace),
                time.time(),
            )
            for h, gone in pending.items():
                key = keys.index(h)
                seen = current.get(key)
                if seen is None or seen[1] is None:
                    continue
                kept = [j for j in parse_index(seen[0]) if j not in gone]
                value = b"".join(b" " + j.encode() for j in kept)
                batches.setdefault(index_keys[key], []).append(
                    protocol.store(b"cas", key, value, when, seen[1])
                )
                order.append(h)
            if not batches:
                return
            replies = protocol.run(self._pools, batches)
            positions: dict[int, int] = {}
            still: dict[str, set[str]] = {}
            for h in order:
                server = index_keys[keys.index(h)]
                n = positions.get(server, 0)
                positions[server] = n + 1
                if replies[server][n] == b"EXISTS":
                    still[h] = pending[h]
            pending = still

    def close(self) -> None:
        """Close the connections. Idempotent."""
        self._closed = True
        for pool in self._pools:
            pool.clear()


# ---------------------------------------------------------------------------------- helpers


def _generation(head: Head) -> list[Any]:
    return [head.gen, *head.counts, head.split]


def _earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _advance(
    known: Head | None, key: JobKey, events: list[Event], ttl: float
) -> tuple[JobRecord, list[Event]]:
    """The record fields after ``events`` (lists left empty) and the chunk events to store.

    The chunk events are those after the last ``started`` (a ``started`` clears the lists).
    """
    record = known.record.copy() if known is not None else JobRecord(key)
    chunks: list[Event] = []
    for event in events:
        record.apply(event)
        if event.kind is _STARTED:
            chunks.clear()
        elif event.kind in _STREAM_OF:
            chunks.append(event)
    record.data = []
    record.warnings = []
    record.status = []
    record.expires_at = events[-1].at + ttl if ttl > 0 else None
    return record, chunks


def _chunk_body(event: Event) -> bytes:
    if event.kind is EventKind.STATUS:
        return status_body(event.numerator, event.denominator, event.at)
    return event.payload


def _status_point(body: bytes) -> StatusPoint:
    obj = json.loads(body)
    return StatusPoint(int(obj["numerator"]), int(obj["denominator"]), float(obj["at"]))
