""":class:`RedisClusterStore`: the Store contract on Redis Cluster (``redis+cluster://``).

``redis+cluster://[[user]:password@]host:port[,host:port…][?options]`` (``rediss+cluster://``
for TLS): one or more nodes of the cluster (the others are found from them). Options: ``ttl``,
``grace``, ``prefix`` as for ``redis://``, and

* ``shards=N`` — how many slots the jobs spread over (default 64; part of the layout, see
  :mod:`gearstash_redis.shards`);
* ``wait=N`` — after its writes, a master waits until N of its replicas have them (``WAIT``;
  default 1, never more than the master has; ``0``: do not wait);
* ``wait_timeout=SECONDS`` — at most this long (default 1); a write the replicas did not confirm in
  time still counts as done (its master has it);

any other one goes to redis-py (``socket_timeout=2``, ``ssl_ca_certs=...``).

Round trips: ``write()`` is one EVALSHA per shard it touches, each to the master of its slot, all
masters at once (and their ``WAIT``); reads are one READ_MANY script per shard and slice; listing
and counting ask every shard (one script or three ZCOUNTs per state each) and merge the answers.

Failover: when a master is stopped, writes fail (StoreError; a worker spools them) until its
replica takes over, then go to the new master. A write whose connection broke after it was sent
— the master may have applied it, and its replica may or may not have it — is *in doubt*: each of
its script calls left a random token in its jobs' ``PREFIX:{S}:{J}:w``, and the store remembers
the calls in doubt. When a later write (the spool's replay) starts with the same events for such
a job, the store first reads the token: if the surviving master has it, those events are already
there and are not written again. Together with ``wait=1`` this keeps every event exactly once
through a master's crash. (The memory is the store's: a worker process that dies while a write is
in doubt leaves it to its spool's replay, which may repeat it.)

On a cluster, a write of several jobs is atomic per job (per shard), not as a whole; a lookup by
unique alone asks every shard and takes the job written last.

Not followed: ``ASK`` (a slot being moved to another master): a write to that shard fails and is
spooled until the move is done. The slot map is read when the store opens and after a failure;
how many replicas a master has (for ``WAIT``) when it is first written to and after a short
``WAIT``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote

from redis import connection as redis_connection
from redis.connection import SSLConnection
from redis.exceptions import RedisError, ResponseError

from gearstash.errors import ConfigError
from gearstash.model.records import Event, JobKey, JobRecord, JobRef, State
from gearstash.store.contract import JobFilter, JobPage
from gearstash.store.urls import ttl_from_query

from .connection import Command
from .doubt import Ledger
from .failures import to_store_error
from .layout import DEFAULT_PREFIX, decode_key
from .listing import (
    counts,
    forget_commands,
    list_args,
    state_count_commands,
    state_counts,
    summary,
)
from .nodes import ClusterConnections, InDoubt, SlotCommand
from .read import ReadBatch
from .scripts import LIST, LIST_SHA, READ_MANY, READ_MANY_SHA, WRITE, WRITE_GT
from .shards import (
    DEFAULT_SHARDS,
    MAX_SHARDS,
    ShardedLayout,
    before_of,
    cluster_script,
    merge_pages,
    read_position,
    sha1,
)
from .url import DEFAULT_GRACE, redact, seconds, secrets_of, split_url
from .watch import RedisWatch, watched_channels
from .write import script_args

CLUSTER_OWN_OPTIONS = frozenset({"shards", "wait", "wait_timeout"})
DEFAULT_WAIT_TIMEOUT = 1.0
MAX_IN_DOUBT = 100_000  # jobs whose last write is in doubt, remembered at most

WRITE_CLUSTER = cluster_script(WRITE)  # Redis < 7
WRITE_CLUSTER_GT = cluster_script(WRITE_GT)  # Redis >= 7: PEXPIRE ... GT
SOURCES = {
    sha1(WRITE_CLUSTER): WRITE_CLUSTER.encode(),
    sha1(WRITE_CLUSTER_GT): WRITE_CLUSTER_GT.encode(),
    READ_MANY_SHA: READ_MANY.encode(),
    LIST_SHA: LIST.encode(),
}


def redact_cluster_url(url: str) -> str:
    """``url`` with its password (userinfo, ``*password*`` options) shown as ``***``, every node
    kept (the generic redaction reads one host only)."""
    scheme, _, rest = url.partition("://")
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, hosts = netloc.rpartition("@")
    if ":" in userinfo:
        userinfo = userinfo.partition(":")[0] + ":***"
    shown_tail = redact("redis://h" + tail)[len("redis://h") :] if tail else ""
    return f"{scheme}://{userinfo}{at}{hosts}{shown_tail}"


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any], dict[str, str]]:
    """The nodes, redis-py's keyword arguments and gearstash's own options of a cluster URL.

    Raises ConfigError (the message shows no password).
    """
    shown = redact_cluster_url(url)
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("redis+cluster", "rediss+cluster"):
        raise ConfigError(f"not a redis+cluster:// URL: {shown!r}")
    target, own = split_url(url)
    rest = target.partition("://")[2]
    netloc, _, query = rest.partition("?")
    kept = []
    for part in query.split("&") if query else []:
        name, _, value = part.partition("=")
        if name in CLUSTER_OWN_OPTIONS:
            own[name] = unquote(value)
        else:
            kept.append(part)
    query = "&".join(kept)
    netloc, _, path = netloc.partition("/")
    if path not in ("", "0"):
        raise ConfigError(f"Redis Cluster has only database 0: {shown!r}")
    userinfo, at, hosts = netloc.rpartition("@")
    nodes: list[tuple[str, int]] = []
    for part in hosts.split(","):
        host, colon, port = part.strip().rpartition(":")
        host = host.strip("[]")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"each node must be host:port in {shown!r}")
        nodes.append((host, int(port)))
    base = "rediss" if scheme.lower().startswith("rediss") else "redis"
    first_host, first_port = nodes[0]
    first = f"[{first_host}]:{first_port}" if ":" in first_host else f"{first_host}:{first_port}"
    single = f"{base}://{userinfo}{at}{first}/0" + (f"?{query}" if query else "")
    try:
        kwargs: dict[str, Any] = redis_connection.parse_url(single)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise ConfigError(f"{shown}: {exc}") from None
    for name in ("host", "port", "db", "path"):
        kwargs.pop(name, None)
    if kwargs.pop("connection_class", None) is SSLConnection:
        kwargs["ssl"] = True
    return nodes, kwargs, own


class RedisClusterStore:
    """Job records in a Redis Cluster (layout: :mod:`gearstash_redis.shards`). Thread-safe.

    Opening finds the cluster, authenticates and loads the scripts on every node; it raises
    :class:`~gearstash.errors.StoreError` when no node answers, ConfigError for a bad URL.
    """

    capabilities = frozenset({"shared", "push", "expires", "delete", "list"})

    def __init__(self, url: str) -> None:
        self.url = redact_cluster_url(url)
        nodes, kwargs, own = parse_cluster_url(url)
        self.ttl = ttl_from_query(url)
        self.grace = seconds(own, "grace", DEFAULT_GRACE, self.url)
        prefix = own.get("prefix", DEFAULT_PREFIX)
        if not prefix or any(c in prefix for c in "{}*?[]\\ "):
            raise ConfigError(f"prefix must be a plain non-empty word in {self.url!r}")
        self.shards = self._count(own, "shards", DEFAULT_SHARDS, 1, MAX_SHARDS)
        self.wait = self._count(own, "wait", 1, 0, 16)
        self.wait_timeout = seconds(own, "wait_timeout", DEFAULT_WAIT_TIMEOUT, self.url)
        self.layout = ShardedLayout(prefix, self.shards)
        self._secrets = secrets_of(url)
        self._connections = ClusterConnections(nodes, kwargs, self.url, self._secrets, SOURCES)
        self._ledger = Ledger(MAX_IN_DOUBT)  # what failed writes left behind
        self._write_sha = self._open()

    def _count(self, own: dict[str, str], name: str, default: int, low: int, high: int) -> int:
        raw = own.get(name)
        if raw is None:
            return default
        if not raw.isdigit() or not low <= int(raw) <= high:
            raise ConfigError(f"{name} must be a whole number from {low} to {high} in {self.url!r}")
        return int(raw)

    def __repr__(self) -> str:
        return f"RedisClusterStore({self.url!r})"

    def _open(self) -> bytes:
        """Load the scripts on every node that answers (replicas too: a promoted one has them;
        a master that lacks one later gets it on NOSCRIPT); the write script this cluster runs."""
        loads: list[Command] = [(b"SCRIPT", b"LOAD", source) for source in SOURCES.values()]
        cluster: Any = self._connections.cluster
        for node in cluster.get_nodes():
            pipe = cluster.get_redis_connection(node).pipeline(transaction=False)
            for command in loads:
                pipe.execute_command(*command)
            with contextlib.suppress(RedisError, OSError):  # a node down: its turn comes later
                pipe.execute()
        # PEXPIRE ... GT (Redis >= 7) on a key that does not exist: 0, or a syntax error
        probe = (b"PEXPIRE", self.layout.prefixes[0] + b":probe", 1, b"GT")
        try:
            reply = self._connections.roundtrip([(self.layout.slots[0], probe)], "opening", True)
        except Exception:
            self._connections.close()
            raise
        return sha1(WRITE_CLUSTER if isinstance(reply[0], ResponseError) else WRITE_CLUSTER_GT)

    def _error(self, exc: BaseException, doing: str) -> Exception:
        return to_store_error(exc, self.url, doing, self._secrets)

    # ------------------------------------------------------------------ writing

    def write(self, events: Sequence[Event]) -> None:
        """Apply ``events`` in order (atomically per job), one script call per shard, all in one
        round trip. Raises StoreError (see the module docstring for a write in doubt)."""
        if not events:
            return
        dropped: dict[JobKey, list[Event]] = {}
        if self._ledger:
            events, dropped = self._settle(events)
        by_shard: dict[int, list[Event]] = {}
        shard_of = self.layout.shard
        for event in events:
            by_shard.setdefault(shard_of(event.key.handle), []).append(event)
        commands: list[SlotCommand] = []
        tokens: list[bytes] = []
        for shard, group in by_shard.items():
            keys, args = script_args(group, self.layout.keys, self.ttl, self.grace)
            token = os.urandom(12).hex().encode()
            tokens.append(token)
            command = (b"EVALSHA", self._write_sha, len(keys), *keys, *args, token,
                       self._token_ms(group))  # fmt: skip
            commands.append((self.layout.slots[shard], command))
        groups = list(by_shard.values())
        try:
            replies = self._connections.roundtrip(commands, "write", False, self._wait)
        except InDoubt as doubt:
            outcomes = [
                "doubt" if i in doubt.doubtful else "applied" if i in doubt.applied else "lost"
                for i in range(len(groups))
            ]
            self._ledger.failed(dropped, list(zip(groups, tokens, outcomes, strict=True)))
            raise doubt.cause from None
        except BaseException:
            self._ledger.failed(dropped, [])
            raise
        failed = [reply for reply in replies if isinstance(reply, ResponseError)]
        if failed:
            outcomes = ["lost" if isinstance(r, ResponseError) else "applied" for r in replies]
            self._ledger.failed(dropped, list(zip(groups, tokens, outcomes, strict=True)))
            raise self._error(failed[0], "write") from failed[0]
        if self._ledger:
            self._ledger.done([*dropped, *(event.key for event in events)])

    def _settle(self, events: Sequence[Event]) -> tuple[list[Event], dict[JobKey, list[Event]]]:
        """``events`` without what earlier failed writes surely stored (reading the tokens of the
        jobs in doubt: one round trip), and per job what was dropped (:class:`Ledger`)."""
        ask = self._ledger.in_doubt(events)
        tokens: dict[JobKey, bytes | None] = {}
        if ask:
            layout = self.layout
            commands: list[SlotCommand] = [
                (layout.slots[layout.shard(key.handle)], (b"GET", layout.token_key(key)))
                for key in ask
            ]
            replies = self._checked(self._connections.roundtrip(commands, "write", True), "write")
            tokens = dict(zip(ask, replies, strict=True))
        return self._ledger.settle(events, tokens)

    def _wait(self, node: Any) -> list[Command]:
        """``WAIT`` after a master's writes (as many replicas as asked, and as it has)."""
        replicas = min(self.wait, self._connections.replicas_of(node))
        if not replicas:
            return []
        return [(b"WAIT", replicas, max(1, round(self.wait_timeout * 1000)))]

    def _token_ms(self, group: Sequence[Event]) -> int:
        """How long a write's token lives: as long as the longest-lived job it wrote (0: ever)."""
        last: dict[JobKey, Event] = {event.key: event for event in group}
        longest = 0.0
        for event in last.values():
            ttl = self.ttl if event.ttl is None else event.ttl
            if ttl <= 0:
                return 0
            longest = max(longest, ttl + min(ttl, self.grace))
        return max(1, round(longest * 1000))

    # ------------------------------------------------------------------ reading

    def get_many(self, refs: Sequence[JobRef]) -> list[JobRecord | None]:
        """The newest record matching each reference, in order (None if none). Raises StoreError."""
        return self._read(refs, 0)

    def get_after(self, ref: JobRef, after: int) -> JobRecord | None:
        """Like ``get_many([ref])[0]`` with only the data chunks from index ``after`` on."""
        return self._read([ref], max(0, after))[0]

    def _read(self, refs: Sequence[JobRef], after: int) -> list[JobRecord | None]:
        """One round trip: READ_MANY scripts per shard (every shard for a lookup by unique)."""
        if not refs:
            return []
        every = range(self.shards)
        per_shard: dict[int, list[int]] = {}
        for i, ref in enumerate(refs):
            shards = every if (not ref.handle and ref.unique) else (self.layout.shard(ref.handle),)
            for shard in shards:
                per_shard.setdefault(shard, []).append(i)
        batches: list[tuple[int, ReadBatch]] = []
        commands: list[SlotCommand] = []
        for shard, indexes in per_shard.items():
            layout = self.layout.layouts[shard]
            batch = ReadBatch(
                layout, self.layout.prefixes[shard], [refs[i] for i in indexes], after, self.url
            )
            batches.append((shard, batch))
            commands += [(self.layout.slots[shard], command) for command in batch.commands]
        replies = self._scripts(commands, "read")
        found: list[list[JobRecord]] = [[] for _ in refs]
        position = 0
        for shard, batch in batches:
            answers = replies[position : position + len(batch.commands)]
            position += len(batch.commands)
            records = batch.records([batch.convert(i, a) for i, a in enumerate(answers)])
            for i, record in zip(per_shard[shard], records, strict=True):
                if record is not None:
                    found[i].append(record)
        return [max(records, key=_written_at) if records else None for records in found]

    def watch(self, refs: Sequence[JobRef]) -> RedisWatch:
        """A subscription to the jobs of ``refs``, made before this returns (nothing is lost)."""
        by_shard: dict[int, list[JobRef]] = {}
        for ref in refs:
            if ref.handle:  # a reference by unique alone has no channel: its waiter polls
                by_shard.setdefault(self.layout.shard(ref.handle), []).append(ref)
        channels: dict[bytes, set[bytes] | None] = {}
        for shard, mine in by_shard.items():
            channels.update(watched_channels(self.layout.layouts[shard], mine))
        slot = self.layout.slots[0]
        return RedisWatch(self.url, lambda: self._connections.pubsub(slot), self._error, channels)

    # ------------------------------------------------------------------ deleting

    def delete(self, refs: Sequence[JobRef]) -> int:
        """Forget every job each reference matches (all its keys); returns how many there were."""
        found: dict[JobKey, None] = {}
        for candidates in self._candidates(refs):
            found.update(dict.fromkeys(candidates))
        if not found:
            return 0
        commands: list[SlotCommand] = []
        for key in found:
            shard = self.layout.shard(key.handle)
            slot, prefix = self.layout.slots[shard], self.layout.prefixes[shard]
            names = self.layout.keys(key)
            per_job = forget_commands(names, prefix, self.layout.token_key(key))
            commands += [(slot, command) for command in per_job]
        per = len(commands) // len(found)
        replies = self._checked(self._connections.roundtrip(commands, "delete", True), "delete")
        return sum(1 for reply in replies[::per] if reply)

    def _candidates(self, refs: Sequence[JobRef]) -> list[list[JobKey]]:
        """Per reference, the jobs it may name, newest first (one round trip at most)."""
        wanted: dict[tuple[int, bytes], None] = {}
        for ref in refs:
            if not ref.handle and ref.unique:
                for shard in range(self.shards):
                    wanted[(shard, self.layout.layouts[shard].unique_index(ref.unique))] = None
            elif not ref.handle or ref.server is None or ref.unique is None:
                shard = self.layout.shard(ref.handle)
                wanted[(shard, self.layout.layouts[shard].index(ref.handle))] = None
        indexed: dict[tuple[int, bytes], list[JobKey]] = {}
        if wanted:
            commands: list[SlotCommand] = [
                (self.layout.slots[shard], (b"ZRANGE", name, 0, -1)) for shard, name in wanted
            ]
            replies = self._checked(self._connections.roundtrip(commands, "read", True), "read")
            for name, members in zip(wanted, replies, strict=True):
                keys = [decode_key(member) for member in reversed(members)]
                indexed[name] = [key for key in keys if key is not None]
        out: list[list[JobKey]] = []
        for ref in refs:
            if not ref.handle and ref.unique:
                out.append(
                    [
                        key
                        for shard in range(self.shards)
                        for key in indexed[
                            (shard, self.layout.layouts[shard].unique_index(ref.unique))
                        ]
                        if ref.matches(key)
                    ]
                )
            elif ref.handle and ref.server is not None and ref.unique is not None:
                out.append([JobKey(ref.server, ref.handle, ref.unique)])
            else:
                shard = self.layout.shard(ref.handle)
                name = (shard, self.layout.layouts[shard].index(ref.handle))
                out.append([key for key in indexed[name] if ref.matches(key)])
        return out

    # ------------------------------------------------------------------ listing

    def list_jobs(self, filter: JobFilter, limit: int, cursor: str | None) -> JobPage:
        """Jobs matching ``filter``, newest first: one LIST script per shard, merged (see
        :func:`gearstash_redis.shards.merge_pages`). Raises StoreError, BadCursor."""
        position = read_position(cursor, self.shards)
        now = time.time()
        commands: list[SlotCommand] = []
        for shard in range(self.shards):
            args = list_args(self.layout.prefixes[shard], filter, limit, None, now)
            args[1] = before_of(position, shard)
            all_key = self.layout.prefixes[shard] + b":all"
            commands.append((self.layout.slots[shard], (b"EVALSHA", LIST_SHA, 1, all_key, *args)))
        answers = self._scripts(commands, "list jobs")
        entries, following = merge_pages(answers, limit, self.shards)
        return JobPage([summary(entry) for entry in entries], following)

    def count_by_state(self, filter: JobFilter) -> dict[State, int]:
        """How many jobs match ``filter``, by state as read now: the state indexes of every shard
        without a filter; with one, a LIST script per shard (O(jobs))."""
        now = time.time()
        total: dict[State, int] = {}
        if filter == JobFilter():
            commands: list[SlotCommand] = []
            for shard in range(self.shards):
                per = state_count_commands(self.layout.prefixes[shard], now, self.grace)
                commands += [(self.layout.slots[shard], command) for command in per]
            replies = self._checked(
                self._connections.roundtrip(commands, "count jobs", True), "count jobs"
            )
            size = len(commands) // self.shards
            for shard in range(self.shards):
                part = state_counts(replies[shard * size : (shard + 1) * size])
                for state, n in part.items():
                    total[state] = total.get(state, 0) + n
            return total
        scripts: list[SlotCommand] = []
        for shard in range(self.shards):
            args = list_args(self.layout.prefixes[shard], filter, 0, None, now)
            all_key = self.layout.prefixes[shard] + b":all"
            scripts.append((self.layout.slots[shard], (b"EVALSHA", LIST_SHA, 1, all_key, *args)))
        for answer in self._scripts(scripts, "count jobs"):
            for state, n in counts(answer).items():
                total[state] = total.get(state, 0) + n
        return total

    def purge(self) -> int:
        """Redis expires keys by itself: nothing to do."""
        return 0

    def close(self) -> None:
        """Close every connection. Idempotent."""
        self._connections.close()

    # ------------------------------------------------------------------ helpers

    def _scripts(self, commands: list[SlotCommand], doing: str) -> list[Any]:
        """Run read-only scripts (sent again as needed: NOSCRIPT, MOVED, a broken connection)."""
        return self._checked(self._connections.roundtrip(commands, doing, True), doing)

    def _checked(self, replies: list[Any], doing: str) -> list[Any]:
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise self._error(reply, doing) from reply
        return replies


def _written_at(record: JobRecord) -> float:
    """When a job was last written (to pick the newest of the jobs with one unique)."""
    for value in (record.updated_at, record.started_at, record.expires_at):
        if value is not None:
            return value
    return 0.0
