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
from gearstash.model.records import Event, EventKind, JobKey, JobRecord, JobRef, State
from gearstash.store.urls import ttl_from_query


def _short(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()[:16]


def _name(key: JobKey) -> str:
    digest = hashlib.sha256(b"\0".join([key.server.encode(), key.handle, key.unique])).hexdigest()
    return f"{_short(key.handle)}-{_short(key.unique)}-{digest[:32]}.json"


class JsonDirStore:
    """Records as JSON files ``<sha256(handle)[:16]>-<sha256(unique)[:16]>-<sha256(server, handle,
    unique)[:32]>.json`` holding ``{"created": <ns>, "record": <gearstash.job/1 record>}``."""

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

    def _read(self, path: Path) -> tuple[int, JobRecord] | None:
        """(creation stamp, record) of one file; the stamp orders jobs that share a handle."""
        try:
            with open(path, encoding="utf-8") as f:
                obj = json.load(f)
            return int(obj["created"]), JobRecord.from_json(obj["record"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as exc:
            raise StoreError(f"store {self.url}: cannot read {path.name}: {exc}") from exc

    def _load(self, path: Path) -> JobRecord | None:
        found = self._read(path)
        if found is None:
            return None
        record = found[1]
        if record.expires_at is not None and record.expires_at <= time.time():
            return JobRecord(
                record.key,
                function=record.function,
                state=State.EXPIRED,
                attempt=record.attempt,
                expires_at=record.expires_at,
            )
        return record

    def write(self, events: Sequence[Event]) -> None:
        """Apply the events to each job's file under the directory lock."""
        try:
            with self._locked():
                records: dict[JobKey, tuple[int, JobRecord] | None] = {}
                changed: set[JobKey] = set()
                for event in events:
                    if event.key not in records:
                        records[event.key] = self._read(self.root / _name(event.key))
                    found = records[event.key]
                    if found is None:  # the first event of a new job (a heartbeat makes none)
                        new = JobRecord.create(event)
                        if new is None:
                            continue
                        found = records[event.key] = (time.time_ns(), new)
                    elif event.kind is EventKind.SUBMITTED:
                        continue  # only creates a record: changes nothing in one that exists
                    record = found[1]
                    record.apply(event)
                    changed.add(event.key)
                    ttl = self.ttl if event.ttl is None else event.ttl
                    record.expires_at = event.at + ttl if ttl > 0 else None
                for key in changed:
                    written = records[key]
                    assert written is not None
                    created, record = written
                    path = self.root / _name(key)
                    tmp = path.with_suffix(".tmp")
                    body = {"created": created, "record": record.to_json()}
                    tmp.write_text(json.dumps(body), encoding="utf-8")
                    os.replace(tmp, path)
        except OSError as exc:
            raise StoreError(f"store {self.url}: {exc}") from exc

    def _candidates(self, ref: JobRef) -> list[JobRecord]:
        """Every job with the reference's handle (or, by unique, its unique), oldest first."""
        own = f"*-{_short(ref.unique or b'')}-*" if ref.by_unique else f"{_short(ref.handle)}-*"
        pattern = own + ".json"
        found = [(p, self._read(p)) for p in self.root.glob(pattern)]
        ordered = sorted((f[0], str(p)) for p, f in found if f is not None)
        loaded = [self._load(Path(p)) for _, p in ordered]
        return [r for r in loaded if r is not None and ref.matches(r.key)]

    def get_many(self, refs: Sequence[JobRef]) -> list[JobRecord | None]:
        """The newest (last written) matching record per reference."""
        out: list[JobRecord | None] = []
        for ref in refs:
            matching = self._candidates(ref)
            out.append(matching[-1] if matching else None)
        return out

    def delete(self, refs: Sequence[JobRef]) -> int:
        """Remove the files of every matching job."""
        removed = 0
        with self._locked():
            for ref in refs:
                for record in self._candidates(ref):
                    (self.root / _name(record.key)).unlink(missing_ok=True)
                    removed += 1
        return removed

    def close(self) -> None:
        """Nothing to release."""


@gearstash.hookimpl
def register_stores(register):  # type: ignore[no-untyped-def]
    """Register the ``jsondir`` scheme."""
    register("jsondir", JsonDirStore, description="one JSON file per job (example plugin)")
