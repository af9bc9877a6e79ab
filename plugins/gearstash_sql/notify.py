"""PostgreSQL LISTEN/NOTIFY: a write wakes the watchers of its job at once (capability ``push``).

Every write on PostgreSQL (psycopg 3) notifies the channel of its job's handle, in the same
statement as the write (see :mod:`gearstash_sql.direct`; the general path and ``delete`` issue
``SELECT pg_notify(...)`` in their transaction). The channel is ``gearstash_`` followed by the hex of
the first 8 bytes of the BLAKE2b digest of the handle (:func:`channel`); the payload is that hex
too. One channel per handle rather than one for every job: the server then delivers a listener
only its own jobs' notifications, so a waiter is not woken (nor its socket filled) by the traffic
of every other job, and an idle listener cannot hold up the server's notification queue with
notifications it never asked for. A waiter that watches by handle alone (a reference without
server or unique) is woken by any job with that handle, and re-reads.

:meth:`SqlStore.watch <gearstash_sql.store.SqlStore.watch>` returns a :class:`PgWatch` on a
dedicated connection (autocommit) that LISTENs before ``watch`` returns; :meth:`PgWatch.wait`
waits on the connection's socket (and a pipe that :meth:`PgWatch.close` writes to, so a wait in
another thread ends at once). A closed watch's connection runs ``UNLISTEN *`` and goes back to
:class:`Listeners`, which keeps a few for the next watch. A connection that dies while waiting is
replaced, and the wait answers True (something may have changed meanwhile: the caller re-reads).

Cost: PostgreSQL takes a cluster-wide lock to queue notifications at commit, so concurrent
notifying writers commit one at a time; ``?notify=0`` in the store URL turns notifications (and
``push``) off, and waiters then poll.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from gearstash.model.records import JobRef

from .writers import orphan

CHANNEL_PREFIX = "gearstash_"
KEEP_IDLE = 4  # idle listener connections a store keeps for the next watch


def digest(handle: bytes) -> str:
    """The hex digest that names ``handle`` in notifications (16 characters)."""
    return hashlib.blake2b(handle, digest_size=8).hexdigest()


def channel(handle: bytes) -> str:
    """The channel a write to a job with ``handle`` notifies."""
    return CHANNEL_PREFIX + digest(handle)


def note(handle: bytes) -> tuple[str, str]:
    """The (channel, payload) parameters of ``pg_notify`` for a write to a job with ``handle``."""
    hexed = digest(handle)
    return CHANNEL_PREFIX + hexed, hexed


class Listeners:
    """Dedicated psycopg connections for watches; keeps up to :data:`KEEP_IDLE` idle ones."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._pid = os.getpid()
        self._closed = False

    def take(self) -> Any:
        """A connection in autocommit mode listening to nothing (new, or kept from a watch)."""
        while True:
            with self._lock:
                if self._pid != os.getpid():  # forked: the idle ones are the parent's
                    for conn in self._idle:
                        orphan(conn)
                    self._idle = []
                    self._pid = os.getpid()
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = self._connect()
                conn.autocommit = True
                return conn
            if _healthy(conn):
                return conn
            with contextlib.suppress(Exception):
                conn.close()

    def give(self, conn: Any) -> None:
        """Take back a watch's connection: stop its LISTENs and keep it, or close it."""
        if self._pid != os.getpid():
            orphan(conn)
            return
        keep = False
        with contextlib.suppress(Exception):
            if not conn.closed and not conn.broken:
                conn.execute("UNLISTEN *")
                keep = True
        if keep:
            with self._lock:
                if not self._closed and len(self._idle) < KEEP_IDLE:
                    self._idle.append(conn)
                    return
        with contextlib.suppress(Exception):
            conn.close()

    def close(self) -> None:
        """Close the idle connections; watches still open close theirs when closed."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            if self._pid != os.getpid():
                orphan(conn)
            else:
                with contextlib.suppress(Exception):
                    conn.close()


def _healthy(conn: Any) -> bool:
    """True when a kept connection still works (anything the server sent meanwhile is read)."""
    try:
        if conn.closed or conn.broken:
            return False
        pgconn = conn.pgconn
        poller = select.poll()
        poller.register(pgconn.socket, select.POLLIN | select.POLLPRI)
        if poller.poll(0):
            pgconn.consume_input()  # raises when the server hung up
            while pgconn.notifies() is not None:  # late notifications of the last watch
                pass
        return bool(pgconn.status == 0)  # CONNECTION_OK
    except Exception:
        return False


class PgWatch:
    """A LISTEN on the channels of some handles, on a connection of its own (see module doc).

    ``refs``: the watched references, for :meth:`changes` (the handles come from them, or from
    ``handles``).
    """

    def __init__(
        self, listeners: Listeners, handles: Iterable[bytes] = (), refs: Iterable[JobRef] = ()
    ) -> None:
        self._listeners = listeners
        self._by_channel: dict[str, list[JobRef]] = {}
        unheard: set[JobRef] = set()
        for ref in refs:
            if ref.by_unique:  # no handle to listen for
                unheard.add(ref)
            else:
                self._by_channel.setdefault(channel(ref.handle), []).append(ref)
        self._unheard = frozenset(unheard)
        self._channels = frozenset(channel(handle) for handle in handles) | set(self._by_channel)
        self._heard: set[str] = set()  # channels notified since the last changes()
        self._broke = False  # the connection was remade since the last changes()
        self._lock = threading.Lock()
        self._closed = False
        self._waiting = False
        self._pending = False  # a notification arrived outside wait() (during LISTEN)
        self._conn: Any = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        try:
            self._listen()
        except BaseException:
            self._release()
            raise

    def _listen(self) -> None:
        conn = self._listeners.take()
        try:
            conn.add_notify_handler(self._on_notify)
            if self._channels:
                conn.execute("; ".join(f'LISTEN "{name}"' for name in sorted(self._channels)))
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            raise
        self._conn = conn

    def _on_notify(self, notify: Any) -> None:
        if notify.channel in self._channels:
            self._heard.add(notify.channel)
            self._pending = True

    def changes(self) -> set[JobRef] | None:
        """The watched references whose handles were notified since the last call (and those by
        unique alone); None once after the connection had to be remade."""
        heard, self._heard = self._heard, set()
        if self._broke:
            self._broke = False
            return None
        found = set(self._unheard)
        for name in heard:
            found.update(self._by_channel.get(name, ()))
        return found

    def wait(self, timeout: float) -> bool:
        """True when a watched job was written (or the connection had to be remade), False after
        ``timeout`` seconds or once closed."""
        with self._lock:
            if self._closed:
                return False
            self._waiting = True
        try:
            return self._wait(timeout)
        finally:
            with self._lock:
                self._waiting = False
                release = self._closed
            if release:
                self._release()

    def _wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + max(timeout, 0.0)
        if self._conn is None:  # lost earlier and not yet remade
            self._broke = True
            try:
                self._listen()
            except Exception:
                time.sleep(max(0.0, deadline - time.monotonic()))
                return False
            return True
        pgconn = self._conn.pgconn
        poller = select.poll()
        poller.register(pgconn.socket, select.POLLIN | select.POLLPRI)
        poller.register(self._wake_r, select.POLLIN)
        channels = self._channels
        while True:
            if self._pending:
                self._pending = False
                return True
            if self._closed:
                return False
            left = deadline - time.monotonic()
            ready = poller.poll(max(0, int(left * 1000 + 0.999))) if left > 0 else poller.poll(0)
            if any(fd == self._wake_r for fd, _ in ready):
                return False
            if ready:
                try:
                    pgconn.consume_input()
                    while (got := pgconn.notifies()) is not None:
                        name = got.relname.decode()
                        if name in channels:
                            self._heard.add(name)
                            self._pending = True
                    if pgconn.status != 0:
                        raise ConnectionError("listener connection lost")
                except Exception:
                    self._lost()
                    return True
                continue
            if left <= 0:
                return False

    def _lost(self) -> None:
        """The connection died: drop it and LISTEN again on a new one (next wait, if this fails)."""
        self._broke = True
        conn, self._conn = self._conn, None
        with contextlib.suppress(Exception):
            conn.close()
        with contextlib.suppress(Exception):
            self._listen()

    def close(self) -> None:
        """Stop watching (idempotent); a wait in another thread returns False at once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            waiting = self._waiting
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if not waiting:
            self._release()

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.remove_notify_handler(self._on_notify)
            self._listeners.give(conn)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def __del__(self) -> None:
        try:  # noqa: SIM105
            self.close()
        except Exception:
            pass
