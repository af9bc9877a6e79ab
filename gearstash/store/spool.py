"""Ride out store outages: :class:`SpoolingStore` keeps what the store cannot take on disk.

While the store answers, a write goes straight to it. When a write fails, the batch is appended
to this process's spool file (see :mod:`gearstash.store.spoolfile` for the format) and from then on
*every* write goes to the spool, so no job's events are ever reordered. A replay thread retries
the store with backoff (0.2 s growing to 2 s) and writes the spooled batches back in order,
advancing a durable replay offset after each store write; when the spool is empty, writes go
straight to the store again.

Guarantees and limits:

* nothing captured is lost while the spool has room; it is bounded by ``max_bytes`` (the spool
  files this store holds), beyond which ``write`` raises ``StoreError("spool full ...")``;
* a spool file outlives the process: one left by a stopped or dead worker (its ``flock`` is free)
  is adopted by the next :class:`SpoolingStore` on the same folder and replayed first;
* at-least-once for one replay write: if the worker dies after the store applied a replay write
  and before its offset reached the disk, those batches (at most ``replay_batch``) are applied
  again by the next worker.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gearstash import config
from gearstash.errors import REFUSED_FOR_GOOD, StoreError
from gearstash.model.records import Event, JobRecord, JobRef
from gearstash.store.contract import Store
from gearstash.store.spoolfile import SpoolFile, decode_events, encode_events, spool_files
from gearstash.store.urls import redact_url

log = logging.getLogger("gearstash.spool")

DEFAULT_MAX_BYTES = config.DEFAULT_SPOOL_MAX_BYTES
MIN_BACKOFF, MAX_BACKOFF = 0.2, 2.0
STILL_DOWN_EVERY = 60.0  # seconds between "still unreachable" log lines


def default_spool_dir(store_url: str) -> Path:
    """``<gearstash home>/spool/<16 hex of sha256(redacted store URL)>``."""
    digest = hashlib.sha256(redact_url(store_url).encode("utf-8")).hexdigest()[:16]
    return config.gearstash_home() / "spool" / digest


def spool_if_needed(
    store: Store,
    spool: str | os.PathLike[str] | None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    close_inner: bool = True,
    on_failure: Callable[[str, Exception, int], None] | None = None,
) -> Store:
    """``store`` wrapped in a :class:`SpoolingStore` when ``spool`` (a folder) is given or the store
    is ``shared`` or ``persistent`` (the folder then defaults to :func:`default_spool_dir`); else
    ``store`` itself (a ``memory://`` or ``null://`` store is not worth spooling)."""
    if spool is None and not store.capabilities & {"shared", "persistent"}:
        return store
    return SpoolingStore(
        store,
        spool if spool is not None else default_spool_dir(store.url),
        max_bytes=max_bytes,
        close_inner=close_inner,
        on_failure=on_failure,
    )


class SpoolingStore:
    """A store that spools to disk what ``inner`` cannot take, and replays it when it can.

    ``url``, ``capabilities``, ``get_many`` and the optional store methods are ``inner``'s.
    ``close()`` stops the replay thread, tries one last replay (for at most ``close_timeout``
    seconds), leaves what is still spooled on disk for the next worker, and closes ``inner``
    when ``close_inner``. ``on_failure(url, exc, events)`` is called (outside any lock) when a
    write to ``inner`` fails and the batch was spooled instead.
    """

    def __init__(
        self,
        inner: Store,
        spool_dir: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        close_inner: bool = True,
        replay_batch: int = 64,
        close_timeout: float = 10.0,
        on_failure: Callable[[str, Exception, int], None] | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.inner = inner
        self.url: str = inner.url
        self.capabilities: frozenset[str] = inner.capabilities
        self.spool_dir = Path(spool_dir)
        self.max_bytes = max_bytes
        self.replay_batch = max(replay_batch, 1)
        self.close_timeout = close_timeout
        self._close_inner = close_inner
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._files: list[SpoolFile] = []  # adopted ones first, then ours (appends go to ours)
        self._own: SpoolFile | None = None
        self._spooling = False
        self._down_since = 0.0
        self._last_said = 0.0
        self._replayed = [0, 0]  # batches, events since the outage began
        self._full = False
        self._closed = False
        self.adopted = 0
        """Batches found in spool files left by stopped workers when this store was made (their
        replay starts at once, on a thread of its own: :attr:`spooled` may already be lower)."""
        self._adopt()

    def __repr__(self) -> str:
        return f"<SpoolingStore {self.url} spool={self.spool_dir}>"

    def __getattr__(self, name: str) -> Any:
        # get_after, watch, delete, purge…: whatever the inner store has (and only that).
        if name.startswith("_") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def down_for(self) -> float:
        """Seconds since the store stopped taking writes (0.0 while writes go straight to it)."""
        return time.monotonic() - self._down_since if self._spooling else 0.0

    @property
    def spooled(self) -> int:
        """Batches waiting in the spool."""
        with self._lock:
            return sum(f.pending for f in self._files)

    # ------------------------------------------------------------ the Store interface

    def get_many(self, refs: Sequence[JobRef]) -> list[JobRecord | None]:
        return self.inner.get_many(refs)

    def write(self, events: Sequence[Event]) -> None:
        """Write to the store, or append to the spool while the store is down or the spool holds
        anything. Raises StoreError only when the spool is full or cannot be written."""
        if not self._spooling:
            try:
                self.inner.write(events)
                return
            except REFUSED_FOR_GOOD:
                # the store is up and refuses this batch for good (or cannot encode it: a bug
                # in the store): spooling and replaying it cannot help
                raise
            except Exception as exc:
                with self._lock:
                    if not self._spooling:
                        self._outage_began(exc)
                    self._append(events)
                if self._on_failure is not None:
                    self._on_failure(self.url, exc, len(events))
                return
        with self._lock:
            if self._spooling:
                self._append(events)
                return
        self.write(events)  # the spool drained meanwhile

    def close(self) -> None:
        """Stop replaying; one last try; leave the rest on disk (logged). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join()
        deadline = time.monotonic() + self.close_timeout
        try:
            while self._spooling and time.monotonic() < deadline:
                self._replay_some()
        except Exception as exc:
            self._last_said = 0.0
            self._say_still_down(exc)
        with self._lock:
            left = [f for f in self._files if f.pending]
            for f in self._files:
                if f.pending:
                    f.close()
                else:
                    f.remove()
            self._files = []
            self._own = None
        if left:
            log.warning(
                "store %s: %d spooled batches (%d bytes) left in %s; a worker started with this "
                "spool folder replays them",
                self.url,
                sum(f.pending for f in left),
                sum(f.size for f in left),
                ", ".join(str(f.path) for f in left),
            )
        if self._close_inner:
            self.inner.close()

    # ------------------------------------------------------------ spooling

    def _adopt(self) -> None:
        for path in spool_files(self.spool_dir):
            try:
                found = SpoolFile.adopt(path)
            except OSError as exc:
                log.warning("spool: cannot adopt %s: %s", path, exc)
                continue
            if found is None:
                continue
            if not found.pending:
                found.remove()
                continue
            log.warning(
                "spool: adopted %s, left by a stopped worker: %d batches to replay into %s",
                path,
                found.pending,
                self.url,
            )
            self._files.append(found)
            self.adopted += found.pending
        if self._files:
            self._spooling = True
            self._down_since = time.monotonic()
            self._start_thread()

    def _outage_began(self, exc: Exception) -> None:
        """Caller holds the lock."""
        self._down_since = self._last_said = time.monotonic()
        self._replayed = [0, 0]
        self._full = False
        log.warning(
            "store %s unreachable (%s); spooling captured events to %s",
            self.url,
            _reason(exc),
            self.spool_dir,
        )

    def _append(self, events: Sequence[Event]) -> None:
        """Caller holds the lock."""
        payload = encode_events(events)
        used = sum(f.size for f in self._files)
        if used + len(payload) + 8 > self.max_bytes:
            if not self._full:
                self._full = True
                log.error(
                    "spool %s full (%d bytes, max %d) while store %s is unreachable: new events "
                    "are lost until the store is back",
                    self.spool_dir,
                    used,
                    self.max_bytes,
                    self.url,
                )
            raise StoreError(
                f"spool full ({used} bytes, max {self.max_bytes}) in {self.spool_dir}; "
                f"store {self.url} unreachable"
            )
        try:
            if self._own is None:
                self._own = SpoolFile.create(self.spool_dir)
                self._files.append(self._own)
            self._own.append(payload)
        except OSError as exc:
            raise StoreError(f"cannot write the spool in {self.spool_dir}: {exc}") from exc
        self._spooling = True
        if self._thread is None:
            self._start_thread()
        self._kick.set()

    # ------------------------------------------------------------ replay

    def _start_thread(self) -> None:
        self._thread = threading.Thread(
            target=self._replay_loop, name="gearstash-spool-replay", daemon=True
        )
        self._thread.start()

    def _replay_loop(self) -> None:
        backoff = MIN_BACKOFF
        while not self._stop.is_set():
            self._kick.clear()
            if not self._spooling:
                self._kick.wait()
                continue
            try:
                self._replay_some()
            except Exception as exc:
                self._say_still_down(exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            backoff = MIN_BACKOFF

    def _replay_some(self) -> None:
        """Write the next group of spooled batches to the store (raises what the store raises)."""
        with self._lock:
            source = next((f for f in self._files if f.pending), None)
            if source is None:
                self._drained()
                return
            frames = source.read(self.replay_batch, 1 << 20)
        events: list[Event] = []
        for end, payload in frames:
            try:
                events.extend(decode_events(payload))
            except ValueError as exc:
                log.error(
                    "spool: %s: cannot read the batch ending at offset %d (%s); skipped",
                    source.path,
                    end,
                    exc,
                )
        if events:
            try:
                self.inner.write(events)
            except REFUSED_FOR_GOOD:
                self._replay_one_by_one(source, frames)
                return
        self._advanced(source, frames, len(events))

    def _replay_one_by_one(self, source: SpoolFile, frames: list[tuple[int, bytes]]) -> None:
        """Replay ``frames`` one at a time, dropping (with an error logged) each batch the store
        refuses for good, so one poison batch cannot hold the spool back for ever."""
        for frame in frames:
            try:
                events = decode_events(frame[1])
            except ValueError:
                events = []
            try:
                if events:
                    self.inner.write(events)
            except REFUSED_FOR_GOOD as exc:
                log.error(
                    "spool: store %s refused a spooled batch of %d events (job %r) for good: "
                    "%s; dropped",
                    self.url,
                    len(events),
                    events[0].key.handle,
                    exc,
                )
            self._advanced(source, [frame], len(events))

    def _advanced(self, source: SpoolFile, frames: list[tuple[int, bytes]], events: int) -> None:
        """Record that ``frames`` of ``source`` (holding ``events`` events) are done with."""
        with self._lock:
            if frames:
                source.advance(frames[-1][0], len(frames))
            self._replayed[0] += len(frames)
            self._replayed[1] += events
            if not source.pending and source is not self._own:
                self._files.remove(source)
                source.remove()
            if not any(f.pending for f in self._files):
                self._drained()

    def _drained(self) -> None:
        """Caller holds the lock: everything spooled is in the store."""
        if self._own is not None:
            self._own.reset()
        if self._spooling:
            batches, events = self._replayed
            log.warning(
                "store %s back: replayed %d batches (%d events) in %.1f s",
                self.url,
                batches,
                events,
                time.monotonic() - self._down_since,
            )
        self._spooling = False
        self._full = False
        self._replayed = [0, 0]

    def _say_still_down(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_said < STILL_DOWN_EVERY:
            return
        self._last_said = now
        log.warning(
            "store %s still unreachable after %.0f s (%s); %d batches spooled in %s",
            self.url,
            now - self._down_since,
            _reason(exc),
            self.spooled,
            self.spool_dir,
        )


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
