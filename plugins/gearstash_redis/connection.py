"""Connections to the Redis server of one store, and one pipelined round trip on them.

redis-py's connection classes (TCP, TLS, unix socket; the hiredis parser when it is installed),
kept in a small free list instead of redis-py's pool, whose bookkeeping costs more than a round
trip to a local Redis. A thread takes a connection, runs its round trip and puts it back, so the
store is thread-safe and never holds more connections than threads using it at once. A connection
found half-closed when taken (the server restarted) is reconnected first. After a fork the child
forgets its parent's connections (without shutting them down) and opens its own.

Retries: a pipeline is sent again once, on a fresh connection, when a reused connection broke
before it was sent, or at any point when the caller says so (reads, ``delete``).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from gearstash.errors import ConfigError, StoreError

from . import driver
from .failures import to_store_error


def _hiredis_packer() -> Callable[[tuple[Any, ...]], bytes] | None:
    try:
        from hiredis import pack_command
    except ImportError:  # pragma: no cover - hiredis is in the redis extra
        return None
    return pack_command


_hiredis_pack = _hiredis_packer()

DEFAULT_TIMEOUT = 5.0
"""Seconds to connect, and to wait for an answer (``socket_connect_timeout`` / ``socket_timeout``)."""

Command = tuple[Any, ...]


def _pack(conn: Any, command: Command | bytes) -> bytes:
    """The RESP bytes of ``command`` (as they are when already packed)."""
    if isinstance(command, bytes):
        return command
    if _hiredis_pack is None:  # pragma: no cover - hiredis is in the redis extra
        return b"".join(conn.pack_command(*command))
    return _hiredis_pack(command)


class Connections:
    """The connections of one store to its server (``target``: a URL for redis-py).

    ``name`` (the redacted URL) and ``secrets`` (the passwords it held) make the error messages.
    Raises ConfigError for a URL redis-py cannot read; connects only when first used.
    """

    def __init__(self, target: str, name: str, secrets: list[str]) -> None:
        self.name = name
        self._secrets = secrets
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
            raise ConfigError(f"{name}: {exc}") from None
        self._pool = pool  # for pub/sub (watch) only
        self._connection_class: Callable[..., Any] = pool.connection_class
        self.kwargs: dict[str, Any] = dict(pool.connection_kwargs)
        self._closed = False
        self._reset()

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

    def _error(self, exc: BaseException, doing: str) -> Exception:
        return to_store_error(exc, self.name, doing, self._secrets)

    def _reset(self) -> None:
        """Fresh connection bookkeeping (at open, and in a forked child)."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._idle: deque[Any] = deque()  # append/pop are atomic: no lock on the hot path
        self._all: set[Any] = set()

    def _connect(self) -> Any:
        """A new redis-py connection to this store's server (not connected yet, not pooled)."""
        try:
            return self._connection_class(**self.kwargs)
        except TypeError as exc:  # an option in the URL that redis-py does not know
            raise ConfigError(f"{self.name}: {exc}") from None

    def pubsub(self) -> redis.client.PubSub:
        """A redis-py PubSub on a connection of its own (for :class:`RedisWatch`)."""
        if self._closed:
            raise StoreError(f"{self.name}: the store is closed")
        return redis.client.PubSub(self._pool)

    def _checkout(self) -> tuple[Any, bool]:
        """A connection, and whether it is an open one reused (that may have died meanwhile)."""
        if self._pid != os.getpid():
            # Forked: the connections belong to the parent. Forget them (redis-py never shuts down
            # a socket another process opened) and connect afresh.
            self._reset()
        if self._closed:
            raise StoreError(f"{self.name}: the store is closed")
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._connect()
            with self._lock:
                self._all.add(conn)
            return conn, False
        if not driver.connected(conn):
            return conn, False
        # Data or EOF waiting on an idle connection: it is dead (the server closed it).
        stale = driver.stale(conn)
        if stale:
            conn.disconnect()
            return conn, False
        return conn, True

    def roundtrip(
        self,
        commands: Sequence[Command | bytes],
        doing: str,
        retry: bool,
        convert: Callable[[int, Any], Any] | None = None,
    ) -> list[Any]:
        """Send ``commands`` in one pipeline; their replies (a ResponseError object for an error).

        A command is its arguments, or its RESP bytes already packed (sent as they are).

        ``retry``: also send again when the connection broke after sending (a read).
        ``convert(i, reply)``, when given, turns the reply to command ``i`` (not an error) into
        what is returned for it, as soon as it arrives (while the server works on the next ones).
        """
        for attempt in (1, 2):
            conn, reused = self._checkout()
            sent = False
            try:
                if len(commands) == 1:
                    packed = [_pack(conn, commands[0])]
                else:
                    packed = [b"".join([_pack(conn, c) for c in commands])]
                conn.send_packed_command(packed, check_health=False)
                sent = True
                replies: list[Any] = []
                for i in range(len(commands)):
                    try:
                        reply = conn.read_response()
                    except ResponseError as exc:
                        replies.append(exc)
                        continue
                    replies.append(reply if convert is None else convert(i, reply))
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
