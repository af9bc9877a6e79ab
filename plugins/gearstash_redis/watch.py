"""``watch()`` on Redis: pub/sub on the channels of the watched handles (``PREFIX:ev:{H}``).

Every write publishes the job digest J on the channel of its handle; a watch wakes for the Js it
was asked about (or for any J of a handle watched without server or unique), and
:meth:`RedisWatch.changes` names the references those announcements concern.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import RedisError

from gearstash.errors import StoreError
from gearstash.model.records import JobKey, JobRef

from .connection import DEFAULT_TIMEOUT
from .layout import Layout

_NOT_WATCHED = object()


def watched_channels(layout: Layout, refs: Sequence[JobRef]) -> dict[bytes, set[bytes] | None]:
    """Channel -> the job digests wanted on it (None: any job with that handle).

    A reference by unique (no handle) has no channel: its waiter polls (the watch times out).
    """
    channels: dict[bytes, set[bytes] | None] = {}
    for ref in refs:
        if not ref.handle:
            continue
        channel = layout.channel(ref.handle)
        if ref.server is None or ref.unique is None:
            channels[channel] = None  # any job with this handle
            continue
        digest = layout.keys(JobKey(ref.server, ref.handle, ref.unique)).job_digest
        wanted = channels.setdefault(channel, set())
        if wanted is not None:
            wanted.add(digest)
    return channels


WatchedRefs = tuple[dict[tuple[bytes, bytes | None], list[JobRef]], frozenset[JobRef]]


def watched_refs(layout: Layout, refs: Sequence[JobRef]) -> WatchedRefs:
    """(channel, job digest) -> the references an announcement concerns (digest None: any job on
    the channel), and the references no channel announces (by unique alone)."""
    lookup: dict[tuple[bytes, bytes | None], list[JobRef]] = {}
    unheard: set[JobRef] = set()
    for ref in refs:
        if not ref.handle:
            unheard.add(ref)
            continue
        digest = None
        if ref.server is not None and ref.unique is not None:
            digest = layout.keys(JobKey(ref.server, ref.handle, ref.unique)).job_digest
        lookup.setdefault((layout.channel(ref.handle), digest), []).append(ref)
    return lookup, frozenset(unheard)


class RedisWatch:
    """A pub/sub subscription to the channels of some handles (see :meth:`RedisStore.watch`).

    Subscribed on a connection of its own before the constructor returns, so a write made after
    that is never missed. :meth:`wait` returns True as soon as a write to a watched job is
    announced (for a reference without server or unique: to any job with its handle). Used by one
    thread; :meth:`close` may come from another (the waiter notices within 0.1 s).
    """

    SLICE = 0.1  # seconds between looks at a close() from another thread

    def __init__(
        self,
        url: str,
        pubsub: Callable[[], Any],
        error: Callable[[BaseException, str], Exception],
        channels: dict[bytes, set[bytes] | None],
        refs: WatchedRefs | None = None,
    ) -> None:
        """``url``: the store's (redacted) URL for messages; ``pubsub()`` makes a redis-py PubSub
        on a connection of its own; ``error(exc, doing)`` turns a driver failure into the
        store's StoreError (secrets scrubbed); ``refs``: :func:`watched_refs` of the watched
        references, for :meth:`changes`."""
        self._refs, self._unheard = refs or ({}, frozenset())
        self._heard: set[tuple[bytes, bytes]] = set()  # (channel, digest) announced
        self._lost = False  # the subscription broke since the last changes()
        self._url = url
        self._new_pubsub = pubsub
        self._error = error
        self._channels = channels
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._pubsub: Any = None
        self._pending = False
        if channels:
            self._subscribe()

    def _subscribe(self) -> None:
        pubsub = self._new_pubsub()
        try:
            pubsub.subscribe(*self._channels)
            deadline = time.monotonic() + DEFAULT_TIMEOUT
            confirmed = 0
            while confirmed < len(self._channels):  # subscribed for sure before we return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreError(f"{self._url}: watch failed: no answer to SUBSCRIBE")
                message = pubsub.get_message(timeout=left)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    confirmed += 1
                elif self._relevant(message):  # a write that raced the later subscriptions
                    self._pending = True
        except (RedisError, OSError) as exc:
            pubsub.close()
            raise self._error(exc, "watch") from exc
        except BaseException:
            pubsub.close()
            raise
        self._pubsub = pubsub

    def _relevant(self, message: dict[str, Any]) -> bool:
        if message["type"] != "message":
            return False
        wanted = self._channels.get(message["channel"], _NOT_WATCHED)
        if wanted is None or (isinstance(wanted, set) and message["data"] in wanted):
            self._heard.add((message["channel"], message["data"]))
            return True
        return False

    def changes(self) -> set[JobRef] | None:
        """The watched references whose jobs were announced written since the last call (and
        those by unique alone, never announced); None once after the subscription broke."""
        heard, self._heard = self._heard, set()
        if self._lost:
            self._lost = False
            return None
        found = set(self._unheard)
        lookup = self._refs
        for channel, digest in heard:
            found.update(lookup.get((channel, digest), ()))
            found.update(lookup.get((channel, None), ()))
        return found

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
                    self._lost = True
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
                self._lost = True
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
