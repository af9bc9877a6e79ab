"""The connections writes run on: one per thread (PostgreSQL, MariaDB) or one per store (SQLite).

A write costs one DBAPI call per statement here, with no pool checkout or check-in (which cost as
much as the INSERT on SQLite). Each :class:`Writer` owns a DBAPI connection in autocommit mode: a
write that is a single statement runs alone; a longer one issues ``BEGIN`` (SQLite: ``BEGIN
IMMEDIATE``) and ``COMMIT`` itself.

* PostgreSQL, MariaDB: a connection per thread (``threading.local``), made on the thread's first
  write from a pool-less engine and closed when the thread ends, when it fails, or by
  :meth:`Writers.close` (which closes every thread's).
* SQLite: SQLite runs one writer at a time, and threads of one process waiting on its busy handler
  sleep a millisecond or more per try; so a file store has one write connection that its threads
  take in turn under a lock (other processes still wait in the busy handler). An in-memory store
  writes on its only connection.

After ``fork()`` the child never uses or closes the parent's connections (closing would end the
parent's session or SQLite locks): it keeps the objects alive and connects afresh.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import weakref
from collections.abc import Callable
from typing import Any

# forks seen by this process (bumped in the child); a connection made before a fork is not ours
_forks = 0
# parent connections a forked child must neither use nor close (nor let the garbage collector close)
_orphans: list[Any] = []
# live objects whose after_fork_in_child() runs in a forked child (see on_fork)
_fork_hooks: weakref.WeakSet[Any] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _forks
    _forks += 1
    for obj in list(_fork_hooks):
        with contextlib.suppress(Exception):  # a hook must not break fork()
            obj.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def on_fork(obj: Any) -> None:
    """Have ``obj.after_fork_in_child()`` run in a forked child while ``obj`` lives.

    It runs before the child runs anything else: the place to replace locks, which a thread of the
    parent may have held at the fork (the child would wait on them for ever).
    """
    _fork_hooks.add(obj)


def forks() -> int:
    """How many times this process's ancestry forked since the module was imported (in the child)."""
    return _forks


def orphan(obj: Any) -> None:
    """Keep ``obj`` (a parent's connection or pool) alive for good without using it."""
    _orphans.append(obj)


class Writer:
    """One DBAPI connection in autocommit mode, its cursor, and where it came from."""

    __slots__ = ("__weakref__", "conn", "cursor", "forks", "owned", "pid", "poller")

    def __init__(self, conn: Any, *, owned: bool, socket: int | None) -> None:
        self.conn = conn
        self.cursor = conn.cursor()
        self.forks = _forks
        self.pid = os.getpid()
        self.owned = owned  # False: the engine's (in-memory SQLite), closed with the engine
        self.poller: Any = None
        if socket is not None:
            self.poller = select.poll()
            self.poller.register(socket, select.POLLIN | select.POLLPRI)

    def idle_ok(self) -> bool:
        """False when the server said something (a shutdown notice) or hung up while we were idle.

        Checked before each write so that a statement never goes out on a connection known dead:
        once sent, its outcome would be unknown if the connection then failed.
        """
        return self.poller is None or not self.poller.poll(0)

    def close(self) -> None:
        """Close the connection (the parent's, after a fork: only forget it). Idempotent."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        # pid, not forks: a forked child's interpreter drops the other threads' state (and so
        # their writers) before its at-fork hooks run
        if self.pid != os.getpid():
            orphan(conn)
            orphan(self.cursor)
        elif self.owned:
            with contextlib.suppress(Exception):
                conn.close()

    def __del__(self) -> None:
        # A thread ended (its threading.local let go of us), or the store was dropped. Plain
        # try/except: at interpreter exit the module's globals (contextlib) may be gone already.
        try:  # noqa: SIM105
            self.close()
        except Exception:
            pass


class Writers:
    """Hands each thread its :class:`Writer`; :meth:`close` closes them all."""

    def __init__(self, connect: Callable[[], Writer], *, shared: bool) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._all: weakref.WeakSet[Writer] = weakref.WeakSet()
        self._closed = False
        self.shared = shared
        self._local: Any = _Shared() if shared else threading.local()
        on_fork(self)

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    def get(self) -> Writer:
        """This thread's writer, connected if need be (after a fork, a failure, a hang-up)."""
        writer: Writer | None = getattr(self._local, "writer", None)
        if (
            writer is not None
            and writer.forks == _forks
            and (writer.poller is None or not writer.poller.poll(0))
        ):
            return writer
        return self._renew(writer)

    def _renew(self, old: Writer | None) -> Writer:
        if old is not None:
            self.drop(old)
        if old is not None and old.forks != _forks:
            self._forget_parent()
        writer = self._connect()
        with self._lock:
            if self._closed:
                writer.close()
                raise WritersClosed
            self._all.add(writer)
        self._local.writer = writer
        return writer

    def _forget_parent(self) -> None:
        with self._lock:
            parents = [w for w in self._all if w.forks != _forks]
            for writer in parents:
                self._all.discard(writer)
        for writer in parents:
            writer.close()  # orphans it
        if not self.shared:
            self._local = threading.local()  # the parent's threads' entries, if any survived

    def drop(self, writer: Writer) -> None:
        """Close ``writer`` (it failed); this thread gets a new one on its next :meth:`get`."""
        with self._lock:
            self._all.discard(writer)
        if getattr(self._local, "writer", None) is writer:
            self._local.writer = None
        writer.close()

    def close(self) -> None:
        """Close every thread's connection; :meth:`get` raises :class:`WritersClosed` afterwards."""
        with self._lock:
            self._closed = True
            writers = list(self._all)
            self._all.clear()
        for writer in writers:
            writer.close()
        self._local = _Shared()

    def __len__(self) -> int:
        """How many connections are open (for tests)."""
        with self._lock:
            return sum(1 for w in self._all if w.conn is not None)


class _Shared:
    writer: Writer | None = None


class WritersClosed(Exception):
    """The store was closed while a thread was connecting."""
