""":class:`RedisStore`: the Store contract on Redis (layout in the package docstring).

Connections: redis-py's connection classes in a small free list of the store's own, thread-safe
and fork-safe (:mod:`gearstash_redis.connection`).

Round trips: ``write()`` is one EVALSHA (packed by
:class:`~gearstash_redis.write.WritePacker`); ``get_many()`` and ``get_after()`` one pipeline of read
scripts, one per slice of up to 250 distinct references (a complete reference reads its job's
keys; another one follows the handle index to the newest matching job that has not vanished,
inside the script; records are built from a slice's answer while Redis runs the next slice);
``delete()`` two. A NOSCRIPT answer (Redis restarted, ``SCRIPT FLUSH``) loads the script and
repeats the commands in one more round trip.

Retries: a command is sent again once, on a fresh connection, when a reused connection broke
before it was sent (a write) or at any point (a read, ``delete``). A write whose answer was lost is
not repeated (it may have been applied): it raises StoreError.

The modules behind it: :mod:`~gearstash_redis.url` (the URL's options),
:mod:`~gearstash_redis.connection`, :mod:`~gearstash_redis.scripts` (the Lua),
:mod:`~gearstash_redis.write` and :mod:`~gearstash_redis.read` (what the scripts are given and
what their answers mean), :mod:`~gearstash_redis.watch` (pub/sub), :mod:`~gearstash_redis.layout`
(key names) and :mod:`~gearstash_redis.failures` (exceptions to StoreError).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from gearstash.errors import ConfigError
from gearstash.model.records import Event, JobKey, JobRecord, JobRef, State
from gearstash.store.contract import JobFilter, JobPage
from gearstash.store.urls import ttl_from_query

from .connection import DEFAULT_TIMEOUT, Command, Connections
from .failures import to_store_error
from .layout import DEFAULT_PREFIX, Layout, decode_key
from .listing import (
    counts,
    forget_commands,
    list_args,
    page,
    state_count_commands,
    state_counts,
)
from .read import ReadBatch
from .scripts import LIST_SHA, SOURCES, WRITE_GT_SHA, WRITE_SHA
from .url import DEFAULT_GRACE, OWN_OPTIONS, redact, seconds, secrets_of, split_url
from .watch import RedisWatch, watched_channels, watched_refs
from .write import WritePacker

__all__ = [  # the store, and what was defined here before the store was split into modules
    "DEFAULT_GRACE",
    "DEFAULT_TIMEOUT",
    "OWN_OPTIONS",
    "Command",
    "RedisStore",
    "RedisWatch",
    "redact",
    "secrets_of",
    "split_url",
]


class RedisStore:
    """Job records in Redis (see the package docstring for the key layout). Thread-safe.

    Opening connects, authenticates and loads the scripts (one round trip); it raises
    :class:`~gearstash.errors.StoreError` when the server cannot be reached or refuses, and
    :class:`~gearstash.errors.ConfigError` for a malformed URL or option.
    """

    capabilities = frozenset({"shared", "push", "expires", "delete", "list"})

    def __init__(self, url: str) -> None:
        self.url = redact(url)
        target, own = split_url(url)
        self.ttl = ttl_from_query(url)
        self.grace = seconds(own, "grace", DEFAULT_GRACE, self.url)
        prefix = own.get("prefix", DEFAULT_PREFIX)
        if not prefix or any(c in prefix for c in "{}*?[]\\ "):
            raise ConfigError(f"prefix must be a plain non-empty word in {self.url!r}")
        self.layout = Layout(prefix)
        self._prefix = prefix.encode()
        self._secrets = secrets_of(url)
        self._connections = Connections(target, self.url, self._secrets)
        # Every round trip of the store goes through this one attribute (tests count them).
        self._roundtrip = self._connections.roundtrip
        self._write_sha = self._open()
        self._packer = WritePacker(self.layout, self.ttl, self.grace)

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r})"

    @property
    def _connection_kwargs(self) -> dict[str, Any]:
        """What redis-py is given for each connection (from the URL, and our timeouts)."""
        return self._connections.kwargs

    # ------------------------------------------------------------------ Store protocol

    def write(self, events: Sequence[Event]) -> None:
        """Apply ``events`` in order, atomically, in one round trip. Raises StoreError."""
        if not events:
            return
        command = self._packer.pack(events, self._write_sha)
        reply = self._roundtrip([command], "write", False)[0]
        if isinstance(reply, NoScriptError):  # the command did not run: load and send it again
            load = (b"SCRIPT", b"LOAD", SOURCES[self._write_sha])
            reply = self._checked(self._roundtrip([load, command], "write", False), "write")[1]
        elif isinstance(reply, ResponseError):
            raise self._error(reply, "write") from reply

    def get_many(self, refs: Sequence[JobRef]) -> list[JobRecord | None]:
        """The newest record matching each reference, in order (None if none). Raises StoreError."""
        return self._read(refs, 0)

    def get_after(self, ref: JobRef, after: int) -> JobRecord | None:
        """Like ``get_many([ref])[0]`` with only the data chunks from index ``after`` on."""
        return self._read([ref], max(0, after))[0]

    def get_many_after(
        self, refs: Sequence[JobRef], afters: Sequence[int]
    ) -> list[JobRecord | None]:
        """:meth:`get_after` of each reference with its own ``after``: one pipeline per
        distinct ``after``."""
        groups: dict[int, list[int]] = {}
        for i, after in enumerate(afters):
            groups.setdefault(max(0, after), []).append(i)
        out: list[JobRecord | None] = [None] * len(refs)
        for after, places in groups.items():
            for i, record in zip(places, self._read([refs[i] for i in places], after), strict=True):
                out[i] = record
        return out

    def watch(self, refs: Sequence[JobRef]) -> RedisWatch:
        """A subscription to the jobs of ``refs``, made before this returns (nothing is lost)."""
        return RedisWatch(
            self.url,
            self._connections.pubsub,
            self._error,
            watched_channels(self.layout, refs),
            watched_refs(self.layout, refs),
        )

    def delete(self, refs: Sequence[JobRef]) -> int:
        """Forget every job each reference matches (all its keys); returns how many there were."""
        found: dict[JobKey, None] = {}
        for candidates in self._candidates(refs):
            found.update(dict.fromkeys(candidates))
        if not found:
            return 0
        commands: list[Command] = []
        for key in found:
            commands += forget_commands(self.layout.keys(key), self._prefix)
        per_job = len(commands) // len(found)
        replies = self._checked(self._roundtrip(commands, "delete", retry=True), "delete")
        return sum(1 for reply in replies[::per_job] if reply)

    def list_jobs(self, filter: JobFilter, limit: int, cursor: str | None) -> JobPage:
        """Jobs matching ``filter``, newest first (see :mod:`gearstash_redis.listing`): one
        script call. Raises StoreError, BadCursor."""
        args = list_args(self._prefix, filter, limit, cursor, time.time())
        reply = self._scripts([(b"EVALSHA", LIST_SHA, 0, *args)], "list jobs")[0]
        return page(reply)

    def count_by_state(self, filter: JobFilter) -> dict[State, int]:
        """How many jobs match ``filter``, by state as read now. Without a filter: ZCOUNTs of the
        state indexes (one round trip, O(log n)); with one: a script call that walks the
        listing index (O(jobs))."""
        now = time.time()
        if filter == JobFilter():  # the state indexes: O(log n) per state
            commands = state_count_commands(self._prefix, now, self.grace)
            return state_counts(
                self._checked(self._roundtrip(commands, "count jobs", True), "count jobs")
            )
        args = list_args(self._prefix, filter, 0, None, now)
        return counts(self._scripts([(b"EVALSHA", LIST_SHA, 0, *args)], "count jobs")[0])

    def purge(self) -> int:
        """Redis expires keys by itself: nothing to do."""
        return 0

    def close(self) -> None:
        """Close every connection. Idempotent."""
        self._connections.close()

    # ------------------------------------------------------------------ scripts, failures

    def _open(self) -> bytes:
        """Connect, authenticate, load the scripts; the write script this server can run."""
        doing = "opening the store"
        commands: list[Command] = [(b"SCRIPT", b"LOAD", source) for source in SOURCES.values()]
        # PEXPIRE ... GT (Redis >= 7) on a key that does not exist: 0, or a syntax error
        commands.append((b"PEXPIRE", self._prefix + b":probe", 1, b"GT"))
        replies = self._roundtrip(commands, doing, retry=True)
        self._checked(replies[:-1], doing)
        return WRITE_SHA if isinstance(replies[-1], ResponseError) else WRITE_GT_SHA

    def _scripts(
        self,
        commands: list[Command],
        doing: str,
        retry: bool = True,
        convert: Callable[[int, Any], Any] | None = None,
    ) -> list[Any]:
        """Run EVALSHA commands; load the scripts the server lacks and run those again.

        ``convert(i, reply)`` turns each answer as it arrives (see ``Connections.roundtrip``).
        """
        replies = self._roundtrip(commands, doing, retry, convert)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # NOSCRIPT: the command did not run, so sending it again is safe
            shas = {commands[i][1] for i in missing}
            again: list[Command] = [(b"SCRIPT", b"LOAD", SOURCES[sha]) for sha in shas]
            again += [commands[i] for i in missing]
            loads = len(shas)
            shifted = None
            if convert is not None:
                known = convert

                def shifted(i: int, reply: Any) -> Any:
                    return reply if i < loads else known(missing[i - loads], reply)

            answers = self._roundtrip(again, doing, retry, shifted)[loads:]
            for i, answer in zip(missing, answers, strict=True):
                replies[i] = answer
        return self._checked(replies, doing)

    def _checked(self, replies: list[Any], doing: str) -> list[Any]:
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise self._error(reply, doing) from reply
        return replies

    def _error(self, exc: BaseException, doing: str) -> Exception:
        return to_store_error(exc, self.url, doing, self._secrets)

    # ------------------------------------------------------------------ reading

    def _candidates(self, refs: Sequence[JobRef]) -> list[list[JobKey]]:
        """Per reference, the jobs it may name, newest first (one index round trip at most)."""
        # the handle index of a partial reference, the unique index of one by unique
        wanted: dict[bytes, None] = {}
        for ref in refs:
            if not ref.handle and ref.unique:
                wanted[self.layout.unique_index(ref.unique)] = None
            elif not ref.handle or ref.server is None or ref.unique is None:
                # an empty unique is never listed: an empty handle looks among empty handles
                wanted[self.layout.index(ref.handle)] = None
        indexed: dict[bytes, list[JobKey]] = {}
        if wanted:
            commands: list[Command] = [(b"ZRANGE", name, 0, -1) for name in wanted]
            replies = self._checked(self._roundtrip(commands, "read", retry=True), "read")
            for name, members in zip(wanted, replies, strict=True):
                found = []
                for member in reversed(members):  # ascending creation order: newest last
                    key = decode_key(member)
                    if key is not None:
                        found.append(key)
                indexed[name] = found
        out: list[list[JobKey]] = []
        for ref in refs:
            if not ref.handle and ref.unique:
                name = self.layout.unique_index(ref.unique)
                out.append([key for key in indexed[name] if ref.matches(key)])
            elif ref.handle and ref.server is not None and ref.unique is not None:
                out.append([JobKey(ref.server, ref.handle, ref.unique)])
            else:
                name = self.layout.index(ref.handle)
                out.append([key for key in indexed[name] if ref.matches(key)])
        return out

    def _read(self, refs: Sequence[JobRef], after: int) -> list[JobRecord | None]:
        """One pipeline: a READ_MANY script per slice of distinct references."""
        if not refs:
            return []
        batch = ReadBatch(self.layout, self._prefix, refs, after, self.url)
        return batch.records(self._scripts(batch.commands, "read", convert=batch.convert))
