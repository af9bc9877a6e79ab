"""``jsondir:///path``: one JSON file per job (format ``gearstash.job/1``) in a directory.

An example of a third-party store: a class with ``write``/``get_many``/``close`` (plus the optional
``delete``), registered through the ``register_stores`` hook and the ``gearstash`` entry point.
Writers on one host serialise on a lock file; every file is replaced atomically.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import gearstash
from gearstash.errors import StoreError
from gearstash.records import Event, JobKey, JobRecord, JobRef, State
from gearstash.store import ttl_from_query


def _name(key: JobKey) -> str:
    digest = hashlib.sha256(b"\0".join([key.server.encode(), key.handle, key.unique])).hexdigest()
    handle = hashlib.sha256(key.handle).hexdigest()[:16]
    return f"{handle}-{digest[:32]}.json"


class JsonDirStore:
    """Records as JSON files named ``<sha256(handle)[:16]>-<sha256(server, handle, unique)[:32]>``."""

    capabilities = frozenset({"shared", "persistent", "expires", "delete"})

    def __init__(self, url: str) -> None:
        self.url = url
        self.ttl = ttl_from_query(url)
        self.root = Path(url.partition("://")[2].partition("?")[0] or ".")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"store {url}: cannot create {self.root}: {exc}") from exc

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _load(self, path: Path) -> JobRecord | None:
        try:
            with open(path, encoding="utf-8") as f:
                record = JobRecord.from_json(json.load(f))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StoreError(f"store {self.url}: cannot read {path.name}: {exc}") from exc
        if record.expires_at is not None and record.expires_at <= time.time():
            return JobRecord(record.key, function=record.function, state=State.EXPIRED,
                             attempt=record.attempt, expires_at=record.expires_at)
        return record

    def write(self, events: Sequence[Event]) -> None:
        """Apply the events to each job's file under the directory lock."""
        try:
            with self._locked():
                records: dict[JobKey, JobRecord] = {}
                for event in events:
                    record = records.get(event.key)
                    if record is None:
                        record = self._load(self.root / _name(event.key)) or JobRecord(event.key)
                        records[event.key] = record
                    record.apply(event)
                    ttl = self.ttl if event.ttl is None else event.ttl
                    record.expires_at = event.at + ttl if ttl > 0 else None
                for key, record in records.items():
                    path = self.root / _name(key)
                    tmp = path.with_suffix(".tmp")
                    tmp.write_text(json.dumps(record.to_json()), encoding="utf-8")
                    os.replace(tmp, path)
        except OSError as exc:
            raise StoreError(f"store {self.url}: {exc}") from exc

    def _candidates(self, handle: bytes) -> list[JobRecord]:
        prefix = hashlib.sha256(handle).hexdigest()[:16]
        paths = sorted(self.root.glob(f"{prefix}-*.json"), key=lambda p: p.stat().st_mtime_ns)
        found = [self._load(p) for p in paths]
        return [r for r in found if r is not None and r.key.handle == handle]

    def get_many(self, refs: Sequence[JobRef]) -> list[JobRecord | None]:
        """The newest (last written) matching record per reference."""
        out: list[JobRecord | None] = []
        for ref in refs:
            matching = [r for r in self._candidates(ref.handle) if ref.matches(r.key)]
            out.append(matching[-1] if matching else None)
        return out

    def delete(self, refs: Sequence[JobRef]) -> int:
        """Remove the files of every matching job."""
        removed = 0
        with self._locked():
            for ref in refs:
                for record in self._candidates(ref.handle):
                    if ref.matches(record.key):
                        (self.root / _name(record.key)).unlink(missing_ok=True)
                        removed += 1
        return removed

    def close(self) -> None:
        """Nothing to release."""


@gearstash.hookimpl
def register_stores(register):  # type: ignore[no-untyped-def]
    """Register the ``jsondir`` scheme."""
    register("jsondir", JsonDirStore, description="one JSON file per job (example plugin)")
