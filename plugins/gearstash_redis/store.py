""":class:`RedisStore`: the Store contract on Redis (layout in the package docstring).

Connections: redis-py's connection classes (TCP, TLS, unix socket; the hiredis parser when it is
installed), kept in a small free list instead of redis-py's pool, whose bookkeeping costs more than
a round trip to a local Redis. A thread takes a connection, runs its round trip and puts it back, so
the store is thread-safe and never holds more connections than threads using it at once. A
connection found half-closed when taken (the server restarted) is reconnected first. After a fork
the child forgets its parent's connections (without shutting them down) and opens its own.

Round trips: ``write()`` is one EVALSHA; ``get_many()`` and ``get_after()`` one pipeline of read
scripts, one per distinct reference (a complete reference reads its job's keys; another one
follows the handle index to the newest matching job that has not vanished, inside the script);
``delete()`` two. A NOSCRIPT answer (Redis restarted, ``SCRIPT FLUSH``) loads the script and
repeats the commands in one more round trip.

Retries: a command is sent again once, on a fresh connection, when a reused connection broke
before it was sent (a write) or at any point (a read, ``delete``). A write whose answer was lost is
not repeated (it may have been applied): it raises StoreError.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.retry import Retry

from gearstash.errors import ConfigError, StoreError
from gearstash.records import (
    Event,
    EventKind,
    JobError,
    JobKey,
    JobRecord,
    JobRef,
    State,
    StatusPoint,
)
from gearstash.store import DEFAULT_TTL, redact_url, ttl_from_query

from .failures import to_store_error
from .layout import DEFAULT_PREFIX, JobKeys, Layout, decode_key
from .scripts import (
    MAX_RUN,
    OP_COMPLETED,
    OP_DATA,
    OP_FAILED,
    OP_STARTED,
    OP_STATUS,
    OP_WARNING,
    READ_REF_SHA,
    READ_SHA,
    SOURCES,
    WRITE_GT_SHA,
    WRITE_SHA,
)


def _hiredis_packer() -> Callable[[tuple[Any, ...]], bytes] | None:
    try:
        from hiredis import pack_command
    except ImportError:  # pragma: no cover - hiredis is in the redis extra
        return None
    return pack_command


_hiredis_pack = _hiredis_packer()

DEFAULT_TIMEOUT = 5.0
"""Seconds to connect, and to wait for an answer (``socket_connect_timeout`` / ``socket_timeout``)."""

DEFAULT_GRACE = DEFAULT_TTL
"""At most this many seconds an expired job keeps reading as ``expired`` (``?grace=``)."""

OWN_OPTIONS = frozenset({"ttl", "grace", "prefix"})

Command = tuple[Any, ...]

_DATA = EventKind.DATA
_WARNING = EventKind.WARNING
_STATUS = EventKind.STATUS
_STARTED = EventKind.STARTED
_COMPLETED = EventKind.COMPLETED
_EXCEPTION = EventKind.EXCEPTION
_NOT_WATCHED = object()
_STATES = {state.value.encode(): state for state in State}


def _own_option(name: str) -> bool:
    return name in OWN_OPTIONS or name.startswith("gearstash_")


def split_url(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without gearstash's own query options (for redis-py), and those options."""
    base, sep, query = url.partition("?")
    if not sep:
        return url, {}
    pairs = parse_qsl(query.partition("#")[0], keep_blank_values=True)
    own = {name: value for name, value in pairs if _own_option(name)}
    rest = "&".join(part for part in query.split("&") if not _own_option(part.partition("=")[0]))
    return (base + "?" + rest if rest else base), own


def redact(url: str) -> str:
    """:func:`~gearstash.store.redact_url`, and ``***`` for query options naming a password."""
    text = redact_url(url)
    base, sep, query = text.partition("?")
    if not sep:
        return text
    parts = []
    for part in query.split("&"):
        name, eq, _ = part.partition("=")
        parts.append(f"{name}=***" if eq and "password" in name.lower() else part)
    return base + "?" + "&".join(parts)


def secrets_of(url: str) -> list[str]:
    """The passwords a URL holds (its userinfo password, ``*password*`` query options)."""
    found = []
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        found.append(password)
    query = url.partition("?")[2]
    found += [v for k, v in parse_qsl(query, keep_blank_values=True) if "password" in k.lower()]
    return [s for s in found if s]


def _seconds(own: dict[str, str], name: str, default: float, url: str) -> float:
    if name not in own:
        return default
    try:
        value = float(own[name])
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds in {url!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative in {url!r}")
    return value


def _ms(seconds: float) -> int:
    """Whole milliseconds for PEXPIRE; 0 only for 0 (keep for ever)."""
    return max(1, round(seconds * 1000)) if seconds > 0 else 0


class RedisStore:
    """Job records in Redis (see the package docstring for the key layout). Thread-safe.

    Opening connects, authenticates and loads the scripts (one round trip); it raises
    :class:`~gearstash.errors.StoreError` when the server cannot be reached or refuses, and
    :class:`~gearstash.errors.ConfigError` for a malformed URL or option.
    """

    capabilities = frozenset({"shared", "push", "expires", "delete"})

    def __init__(self, url: str) -> None:
        self.url = redact(url)
        target, own = split_url(url)
        self.ttl = ttl_from_query(url)
        self.grace = _seconds(own, "grace", DEFAULT_GRACE, self.url)
        prefix = own.get("prefix", DEFAULT_PREFIX)
        if not prefix or any(c in prefix for c in "{}*?[]\\ "):
            raise ConfigError(f"prefix must be a plain non-empty word in {self.url!r}")
        self.layout = Layout(prefix)
        self._prefix = prefix.encode()
        self._secrets = secrets_of(url)
        try:
            pool = redis.ConnectionPool.from_url(
                target,
                socket_connect_timeout=DEFAULT_TIMEOUT,
                socket_timeout=DEFAULT_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
                health_check_interval=0,
                client_name="gearstash",
            )
        except ValueError as exc:
            raise ConfigError(f"{self.url}: {exc}") from None
        self._pool = pool  # for pub/sub (watch) only
        self._connection_class: Callable[..., Any] = pool.connection_class
        self._connection_kwargs: dict[str, Any] = dict(pool.connection_kwargs)
        self._closed = False
        self._reset()
        self._write_sha = self._open()

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r})"

    # ------------------------------------------------------------------ Store protocol

    def write(self, events: Sequence[Event]) -> None:
        """Apply ``events`` in order, atomically, in one round trip. Raises StoreError."""
        if not events:
            return
        keys, args = self._encode(events)
        self._scripts(
            [(b"EVALSHA", self._write_sha, len(keys), *keys, *args)], "write", retry=False
        )

    def get_many(self, refs: Sequence[JobRef]) -> list[JobRecord | None]:
        """The newest record matching each reference, in order (None if none). Raises StoreError."""
        return self._read(refs, 0)

    def get_after(self, ref: JobRef, after: int) -> JobRecord | None:
        """Like ``get_many([ref])[0]`` with only the data chunks from index ``after`` on."""
        return self._read([ref], max(0, after))[0]

    def watch(self, refs: Sequence[JobRef]) -> RedisWatch:
        """A subscription to the jobs of ``refs``, made before this returns (nothing is lost)."""
        channels: dict[bytes, set[bytes] | None] = {}
        for ref in refs:
            channel = self.layout.channel(ref.handle)
            if ref.server is None or ref.unique is None:
                channels[channel] = None  # any job with this handle
                continue
            digest = self.layout.keys(JobKey(ref.server, ref.handle, ref.unique)).job_digest
            wanted = channels.setdefault(channel, set())
            if wanted is not None:
                wanted.add(digest)
        return RedisWatch(self, channels)

    def delete(self, refs: Sequence[JobRef]) -> int:
        """Forget every job each reference matches (all its keys); returns how many there were."""
        found: dict[JobKey, None] = {}
        for candidates in self._candidates(refs):
            found.update(dict.fromkeys(candidates))
        if not found:
            return 0
        commands: list[Command] = []
        for key in found:
            names = self.layout.keys(key)
            commands += [
                (b"DEL", names.job, names.data, names.warnings, names.status, names.gone),
                (b"ZREM", names.handle_index, names.member),
                (b"PUBLISH", names.channel, names.job_digest),
            ]
        replies = self._checked(self._roundtrip(commands, "delete", retry=True), "delete")
        return sum(1 for reply in replies[::3] if reply)

    def purge(self) -> int:
        """Redis expires keys by itself: nothing to do."""
        return 0

    def close(self) -> None:
        """Close every connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            connections = list(self._all)
            self._all.clear()
            self._idle.clear()
        for connection in connections:
            connection.disconnect()
        self._pool.disconnect()

    # ------------------------------------------------------------------ connections

    def _reset(self) -> None:
        """Fresh connection bookkeeping (at open, and in a forked child)."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._idle: deque[Any] = deque()  # append/pop are atomic: no lock on the hot path
        self._all: set[Any] = set()

    def _connect(self) -> Any:
        """A new redis-py connection to this store's server (not connected yet, not pooled)."""
        try:
            return self._connection_class(**self._connection_kwargs)
        except TypeError as exc:  # an option in the URL that redis-py does not know
            raise ConfigError(f"{self.url}: {exc}") from None

    def _pubsub(self) -> redis.client.PubSub:
        """A redis-py PubSub on a connection of its own (for :class:`RedisWatch`)."""
        if self._closed:
            raise StoreError(f"{self.url}: the store is closed")
        return redis.client.PubSub(self._pool)

    def _checkout(self) -> tuple[Any, bool]:
        """A connection, and whether it is an open one reused (that may have died meanwhile)."""
        if self._pid != os.getpid():
            # Forked: the connections belong to the parent. Forget them (redis-py never shuts down
            # a socket another process opened) and connect afresh.
            self._reset()
        if self._closed:
            raise StoreError(f"{self.url}: the store is closed")
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._connect()
            with self._lock:
                self._all.add(conn)
            return conn, False
        sock = conn._sock
        if sock is None:
            return conn, False
        # Data or EOF waiting on an idle connection: it is dead (the server closed it).
        if type(sock) is socket.socket:  # TCP or unix: one poll() on a poller kept with it
            watched = getattr(conn, "_gearstash_poll", None)
            if watched is None or watched[0] is not sock:
                poller = select.poll()
                poller.register(sock, select.POLLIN)
                watched = conn._gearstash_poll = (sock, poller)
            stale = bool(watched[1].poll(0))
        else:  # TLS: a readable socket may hold a session ticket; ask redis-py's parser
            try:
                stale = conn.can_read()
            except (RedisError, OSError):
                stale = True
        if stale:
            conn.disconnect()
            return conn, False
        return conn, True

    def _roundtrip(self, commands: list[Command], doing: str, retry: bool) -> list[Any]:
        """Send ``commands`` in one pipeline; their replies (a ResponseError object for an error).

        ``retry``: also send again when the connection broke after sending (a read).
        """
        for attempt in (1, 2):
            conn, reused = self._checkout()
            sent = False
            try:
                if _hiredis_pack is None:  # pragma: no cover - hiredis is in the redis extra
                    packed = conn.pack_commands(commands)
                elif len(commands) == 1:
                    packed = [_hiredis_pack(commands[0])]
                else:
                    packed = [b"".join([_hiredis_pack(c) for c in commands])]
                conn.send_packed_command(packed, check_health=False)
                sent = True
                replies: list[Any] = []
                for _ in commands:
                    try:
                        replies.append(conn.read_response())
                    except ResponseError as exc:
                        replies.append(exc)
            except (RedisError, OSError) as exc:
                conn.disconnect()
                self._idle.append(conn)
                if attempt == 1 and reused and (retry or not sent):
                    continue
                raise self._error(exc, doing) from exc
            except BaseException:
                conn.disconnect()  # an answer may be half read: never reuse it
                self._idle.append(conn)
                raise
            self._idle.append(conn)
            return replies
        raise AssertionError("unreachable")  # pragma: no cover

    def _open(self) -> bytes:
        """Connect, authenticate, load the scripts; the write script this server can run."""
        doing = "opening the store"
        commands: list[Command] = [(b"SCRIPT", b"LOAD", source) for source in SOURCES.values()]
        # PEXPIRE ... GT (Redis >= 7) on a key that does not exist: 0, or a syntax error
        commands.append((b"PEXPIRE", self._prefix + b":probe", 1, b"GT"))
        replies = self._roundtrip(commands, doing, retry=True)
        self._checked(replies[:-1], doing)
        return WRITE_SHA if isinstance(replies[-1], ResponseError) else WRITE_GT_SHA

    def _scripts(self, commands: list[Command], doing: str, retry: bool = True) -> list[Any]:
        """Run EVALSHA commands; load the scripts the server lacks and run those again."""
        replies = self._roundtrip(commands, doing, retry)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # NOSCRIPT: the command did not run, so sending it again is safe
            shas = {commands[i][1] for i in missing}
            again: list[Command] = [(b"SCRIPT", b"LOAD", SOURCES[sha]) for sha in shas]
            again += [commands[i] for i in missing]
            answers = self._roundtrip(again, doing, retry)[len(shas) :]
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

    # ------------------------------------------------------------------ writing

    def _encode(self, events: Sequence[Event]) -> tuple[list[bytes], list[Any]]:
        """KEYS and ARGV of the write script for ``events`` (grouped by job, order kept)."""
        first = events[0].key
        groups: Iterable[tuple[JobKey, Sequence[Event]]]
        if all(event.key == first for event in events):
            groups = ((first, events),)
        else:
            by_key: dict[JobKey, list[Event]] = {}
            for event in events:
                by_key.setdefault(event.key, []).append(event)
            groups = by_key.items()
        keys: list[bytes] = []
        args: list[Any] = []
        keys_of = self.layout.keys
        default_ttl = self.ttl
        grace = self.grace
        now = time.time()
        for key, group in groups:
            names: JobKeys = keys_of(key)
            keys += names[2:8]  # job, data, warnings, status, gone, index
            ops = _ops(group)
            last = group[-1]
            ttl = default_ttl if last.ttl is None else last.ttl
            ttl_ms = _ms(ttl)
            life_ms = ttl_ms + _ms(min(ttl, grace)) if ttl_ms else 0
            args += (
                names.member,
                key.server,
                key.handle,
                key.unique,
                ttl_ms,
                life_ms,
                repr(last.at),
                f"{now + ttl:.3f}",
                len(ops),
            )
            args += ops
        return keys, args

    # ------------------------------------------------------------------ reading

    def _candidates(self, refs: Sequence[JobRef]) -> list[list[JobKey]]:
        """Per reference, the jobs it may name, newest first (one index round trip at most)."""
        partial = list({ref.handle for ref in refs if ref.server is None or ref.unique is None})
        indexed: dict[bytes, list[JobKey]] = {}
        if partial:
            index = self.layout.index
            commands: list[Command] = [(b"ZRANGE", index(h), 0, -1) for h in partial]
            replies = self._checked(self._roundtrip(commands, "read", retry=True), "read")
            for handle, members in zip(partial, replies, strict=True):
                found = []
                for member in reversed(members):  # ascending creation order: newest last
                    key = decode_key(member)
                    if key is not None and key.handle == handle:
                        found.append(key)
                indexed[handle] = found
        out: list[list[JobKey]] = []
        for ref in refs:
            if ref.server is not None and ref.unique is not None:
                out.append([JobKey(ref.server, ref.handle, ref.unique)])
            else:
                out.append([key for key in indexed[ref.handle] if ref.matches(key)])
        return out

    def _read(self, refs: Sequence[JobRef], after: int) -> list[JobRecord | None]:
        """One pipeline: the read script per complete reference, READ_REF per other one."""
        if not refs:
            return []
        layout = self.layout
        commands: list[Command] = []
        slots: dict[JobRef, int] = {}
        order: list[int] = []
        for ref in refs:
            slot = slots.get(ref)
            if slot is None:
                slot = slots[ref] = len(commands)
                server, unique = ref.server, ref.unique
                if server is not None and unique is not None:
                    names = layout.keys(JobKey(server, ref.handle, unique))
                    # job, data, warnings, status, gone
                    commands.append((b"EVALSHA", READ_SHA, 5, *names[2:7], after))
                else:
                    commands.append(
                        (
                            b"EVALSHA",
                            READ_REF_SHA,
                            1,
                            layout.index(ref.handle),
                            self._prefix,
                            ref.handle,
                            server or b"",
                            b"0" if server is None else b"1",
                            unique or b"",
                            b"0" if unique is None else b"1",
                            after,
                        )
                    )
            order.append(slot)
        replies = self._scripts(commands, "read")
        records: list[JobRecord | None] = []
        for ref, reply in zip(slots, replies, strict=True):
            try:
                if ref.server is not None and ref.unique is not None:
                    key = JobKey(ref.server, ref.handle, ref.unique)
                    records.append(_record(key, reply, after))
                elif reply is None:
                    records.append(None)
                else:
                    found = decode_key(reply[0])
                    records.append(None if found is None else _record(found, reply[1:], after))
            except (KeyError, ValueError, IndexError, TypeError) as exc:
                raise StoreError(
                    f"{self.url}: read failed: a malformed job record for {ref} "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
        out: list[JobRecord | None] = []
        used: set[int] = set()
        for slot in order:
            record = records[slot]
            if record is not None and slot in used:  # a job asked for twice: a record each
                record = record.copy()
            used.add(slot)
            out.append(record)
        return out


def _ops(events: Sequence[Event]) -> list[Any]:
    """The write script's ops for one job's events (runs of chunks become one RPUSH)."""
    ops: list[Any] = []
    run: list[Any] = []
    run_code = b""
    item: bytes | str
    for event in events:
        kind = event.kind
        if kind is _DATA:
            code, item = OP_DATA, event.payload
        elif kind is _STATUS:
            code, item = OP_STATUS, f"{event.numerator} {event.denominator} {event.at!r}"
        elif kind is _WARNING:
            code, item = OP_WARNING, event.payload
        else:
            if run:
                ops += (run_code, len(run), *run)
                run = []
            if kind is _STARTED:
                ops += (OP_STARTED, repr(event.at), event.function, _text(event.worker))
            elif kind is _COMPLETED:
                ops += (OP_COMPLETED, repr(event.at), event.payload)
            else:
                ops += (
                    OP_FAILED,
                    repr(event.at),
                    b"exception" if kind is _EXCEPTION else b"fail",
                    _text(event.payload.decode("utf-8", "replace")),
                    _text(event.traceback),
                )
            continue
        if code is not run_code or len(run) >= MAX_RUN:
            if run:
                ops += (run_code, len(run), *run)
            run = []
            run_code = code
        run.append(item)
    if run:
        ops += (run_code, len(run), *run)
    return ops


def _text(value: str) -> bytes:
    return value.encode("utf-8", "replace")


def _float(value: bytes | None) -> float | None:
    return None if value is None else float(value)


def _record(key: JobKey, reply: list[Any], after: int) -> JobRecord | None:
    """A record from the read script's answer; None when the job is gone without a trace."""
    if reply[0] == 0:
        if reply[1] is None:
            return None
        return JobRecord(key, state=State.EXPIRED, expires_at=float(reply[1]), data_offset=after)
    _, flat, data, warnings, status = reply
    fields: dict[bytes, bytes] = dict(zip(flat[::2], flat[1::2], strict=True))
    stored = (fields.get(b"server", b"").decode("utf-8", "replace"), fields.get(b"handle"))
    if stored != (key.server, key.handle) or fields.get(b"unique") != key.unique:
        return None  # another job under the same digest (never seen; 96 bits)
    error = None
    kind = fields.get(b"error_kind")
    if kind is not None:
        error = JobError(
            kind.decode(),
            fields.get(b"error_message", b"").decode("utf-8", "replace"),
            fields.get(b"traceback", b"").decode("utf-8", "replace"),
        )
    points = []
    for item in status:
        numerator, denominator, at = item.split(b" ")
        points.append(StatusPoint(int(numerator), int(denominator), float(at)))
    return JobRecord(
        key,
        function=fields.get(b"function", b""),
        state=_STATES[fields.get(b"state", b"running")],
        attempt=int(fields.get(b"attempt", b"1")),
        data=data,
        warnings=warnings,
        status=points,
        result=fields.get(b"result"),
        error=error,
        worker=fields.get(b"worker", b"").decode("utf-8", "replace"),
        started_at=_float(fields.get(b"started_at")),
        finished_at=_float(fields.get(b"finished_at")),
        updated_at=_float(fields.get(b"updated_at")),
        expires_at=_float(fields.get(b"expires_at")),
        data_offset=after,
    )


class RedisWatch:
    """A pub/sub subscription to the channels of some handles (see :meth:`RedisStore.watch`).

    Subscribed on a connection of its own before the constructor returns, so a write made after
    that is never missed. :meth:`wait` returns True as soon as a write to a watched job is
    announced (for a reference without server or unique: to any job with its handle). Used by one
    thread; :meth:`close` may come from another (the waiter notices within 0.1 s).
    """

    SLICE = 0.1  # seconds between looks at a close() from another thread

    def __init__(self, store: RedisStore, channels: dict[bytes, set[bytes] | None]) -> None:
        self._store = store
        self._channels = channels
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._pubsub: Any = None
        self._pending = False
        if channels:
            self._subscribe()

    def _subscribe(self) -> None:
        store = self._store
        pubsub = store._pubsub()
        try:
            pubsub.subscribe(*self._channels)
            deadline = time.monotonic() + DEFAULT_TIMEOUT
            confirmed = 0
            while confirmed < len(self._channels):  # subscribed for sure before we return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreError(f"{store.url}: watch failed: no answer to SUBSCRIBE")
                message = pubsub.get_message(timeout=left)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    confirmed += 1
                elif self._relevant(message):  # a write that raced the later subscriptions
                    self._pending = True
        except (RedisError, OSError) as exc:
            pubsub.close()
            raise store._error(exc, "watch") from exc
        except BaseException:
            pubsub.close()
            raise
        self._pubsub = pubsub

    def _relevant(self, message: dict[str, Any]) -> bool:
        if message["type"] != "message":
            return False
        wanted = self._channels.get(message["channel"], _NOT_WATCHED)
        return wanted is None or (isinstance(wanted, set) and message["data"] in wanted)

    def wait(self, timeout: float) -> bool:
        """True when a watched job was written to since the last call; False after ``timeout`` s.

        A broken subscription (Redis restarted) answers True (anything may have changed) and is
        made again by the next call, which raises StoreError when that fails.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            try:
                if self._closed.is_set():
                    return False
                if not self._channels:
                    self._closed.wait(timeout)
                    return False
                if self._pubsub is None:
                    self._subscribe()
                    return True
                if self._pending:
                    self._pending = False
                    self._drain()
                    return True
                return self._wait_locked(deadline)
            finally:
                if self._closed.is_set():
                    self._disconnect()

    def _wait_locked(self, deadline: float) -> bool:
        pubsub = self._pubsub
        while True:
            left = deadline - time.monotonic()
            try:
                message = pubsub.get_message(timeout=min(max(left, 0.0), self.SLICE))
                if message is not None and (self._relevant(message) | self._drain()):
                    return True
            except (RedisError, OSError):
                self._disconnect()
                return True
            if left <= 0 or self._closed.is_set():
                return False

    def _drain(self) -> bool:
        """Read every announcement already waiting; True if one concerns a watched job."""
        relevant = False
        while (message := self._pubsub.get_message(timeout=0)) is not None:
            relevant = self._relevant(message) or relevant
        return relevant

    def _disconnect(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            pubsub.close()

    def close(self) -> None:
        """End the subscription (and its connection); idempotent."""
        self._closed.set()
        if self._lock.acquire(blocking=False):
            try:
                self._disconnect()
            finally:
                self._lock.release()
