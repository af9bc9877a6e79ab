"""SQLite watches: woken by any commit to the database file, through ``PRAGMA data_version``.

SQLite has no notifications, but a connection's ``PRAGMA data_version`` changes whenever another
connection (in this process or another) commits to the file. :class:`DataVersionWatch` keeps a
read-only connection of its own and checks it every :data:`CHECK_S` seconds (a few microseconds
each, no disk I/O while nothing changes), so a waiter wakes within about 10 ms of a write instead
of at its next poll — and sleeps without reading anything while nothing is written. It is woken
by every write to the file, not only the watched jobs' (the waiter re-reads). The store does not
claim ``push`` for it: only processes on the same host see the file.
"""

from __future__ import annotations

import sqlite3
import threading
import time

CHECK_S = 0.01


class DataVersionWatch:
    """A watch of one SQLite file (see the module doc). ``wait`` and ``close`` may be called
    from different threads."""

    def __init__(self, path: str) -> None:
        self._conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
        )
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._seen = self._version()

    def _version(self) -> int:
        with self._lock:
            if self._closed.is_set():
                return -1
            row = self._conn.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def wait(self, timeout: float) -> bool:
        """True as soon as a commit to the file is seen (since the watch was made or the last
        True), False after ``timeout`` seconds or once closed."""
        deadline = time.monotonic() + timeout
        while not self._closed.is_set():
            version = self._version()
            if version != self._seen and version != -1:
                self._seen = version
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._closed.wait(min(CHECK_S, left))
        return False

    def close(self) -> None:
        """End the watch (a wait in another thread returns False); idempotent."""
        self._closed.set()
        with self._lock:
            self._conn.close()
