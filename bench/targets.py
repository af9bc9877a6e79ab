"""What bench/stores.py times per record: a gearstash store, or a Celery 5 result backend.

Each target makes its own keys (``key(tag, i)``), writes one finished job under a key and reads it
back, checking what it read. Both sides store a 100-byte result.
"""

from __future__ import annotations

import time
from typing import Any

from gearstash.model.records import Event, EventKind, JobKey, JobRef, State
from gearstash.spine.manager import open_store

RESULT = b"r" * 100
SERVER = "127.0.0.1:4730"

CELERY_MISSING = (
    "Celery is not installed: its rows are skipped. For the comparison install it into the venv:\n"
    "    .venv/bin/pip install 'celery[redis,memcache,sqlalchemy]'"
)


def celery_installed() -> bool:
    try:
        import celery  # noqa: F401
    except ImportError:
        return False
    return True


class GearstashTarget:
    """``store.write([started, completed])``, ``store.get_many([ref])``."""

    def __init__(self, url: str) -> None:
        self.store = open_store(url)

    def key(self, tag: str, i: int) -> JobKey:
        return JobKey(SERVER, f"H:bench:{tag}:{i}".encode(), f"{tag}-{i}".encode())

    def write(self, key: JobKey) -> None:
        now = time.time()
        self.store.write(
            [
                Event(EventKind.STARTED, key, now, function=b"bench", worker="bench"),
                Event(EventKind.COMPLETED, key, now, RESULT),
            ]
        )

    def read(self, key: JobKey) -> None:
        record = self.store.get_many([JobRef(key.handle, key.server, key.unique)])[0]
        if record is None or record.state is not State.COMPLETE or record.result != RESULT:
            raise RuntimeError(f"{self.store.url}: read back {record!r} for {key}")

    def close(self) -> None:
        self.store.close()


class BareTarget:
    """The floor: one bare client round trip per write and per read (redis-py SET/GET, or
    pymemcache set/get waiting for each reply), storing the 100-byte result under a key."""

    def __init__(self, kind: str, port: int) -> None:
        if kind == "redis":
            import redis

            self.client: Any = redis.Redis(port=port)
        else:
            from pymemcache.client.base import Client

            self.client = Client(("127.0.0.1", port), default_noreply=False)

    def key(self, tag: str, i: int) -> str:
        return f"bare-{tag}-{i}"

    def write(self, key: str) -> None:
        self.client.set(key, RESULT)

    def read(self, key: str) -> None:
        if self.client.get(key) != RESULT:
            raise RuntimeError(f"bare client: wrong value read back for {key}")

    def close(self) -> None:
        self.client.close()


class CeleryTarget:
    """``backend.store_result(task_id, result, 'SUCCESS')``, ``backend.get_task_meta(task_id)``.

    ``pooled`` marks the SQL backend's session manager as in a forked worker child, so that it
    keeps one engine (a connection pool) instead of making an engine and connection per call.
    """

    def __init__(self, url: str, pooled: bool = False) -> None:
        from celery import Celery

        self.app = Celery("gsbench", set_as_current=False)
        self.app.conf.update(result_backend=url, broker_url="memory://")
        self.backend: Any = self.app.backend
        if pooled:
            self.backend.session_manager.forked = True
        self.text = RESULT.decode()

    def key(self, tag: str, i: int) -> str:
        return f"bench-{tag}-{i}"

    def write(self, task_id: str) -> None:
        self.backend.store_result(task_id, self.text, "SUCCESS")

    def read(self, task_id: str) -> None:
        meta = self.backend.get_task_meta(task_id)
        if meta["status"] != "SUCCESS" or meta["result"] != self.text:
            raise RuntimeError(f"celery: read back {meta!r} for {task_id}")

    def close(self) -> None:
        self.app.close()
