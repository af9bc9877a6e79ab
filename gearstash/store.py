"""The store contract every store implements, and URL → store.

A store keeps job records. The worker hands it :class:`~gearstash.records.Event` batches in the order
the job produced them; clients read :class:`~gearstash.records.JobRecord` objects back. Stores are
found by URL scheme through the ``register_stores`` hook, so a built-in store and a third-party one are
registered the same way (see ``gearstash.plugins``).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import parse_qs, parse_qsl, quote, unquote, urlsplit, urlunsplit

from gearstash.errors import ConfigError, StoreError
from gearstash.records import Event, JobRecord, JobRef


@runtime_checkable
class Store(Protocol):
    """What every store provides.

    Contract:

    * ``write(events)`` applies the events in order, with the semantics of
      :meth:`JobRecord.apply <gearstash.records.JobRecord.apply>` (a ``started`` event for a key that
      already has a record begins a new attempt and clears its data). A batch is applied atomically
      where the store can (SQL: one transaction). It raises :class:`~gearstash.errors.StoreError` on
      failure and never half-applies a single event. Several processes may write different jobs at once.
    * ``get_many(refs)`` returns, for each reference in order, the newest matching record or ``None``
      (see :class:`~gearstash.records.JobRef` for what a reference without server or unique matches).
      It costs a bounded number of round trips, not one per reference.
    * ``url`` describes the store with any password replaced by ``***``; it is safe to log.
    * ``capabilities`` is a set of words: ``shared`` (several processes/hosts see the same records),
      ``persistent`` (survives a restart of the process), ``evicts`` (may drop records under memory
      pressure before they expire), ``push`` (can wake waiters), ``expires`` (honours TTLs),
      ``delete``.

    Optional methods (see the functions below for their contracts and fallbacks):
    ``get_after(ref, after) -> JobRecord | None`` (cursor read), ``watch(refs) -> Watch`` (push),
    ``delete(refs) -> int``, ``purge() -> int``. Every store should honour ``Event.ttl`` and its
    own default TTL, and set ``JobRecord.expires_at``.
    """

    url: str
    capabilities: frozenset[str]

    def write(self, events: Sequence[Event]) -> None:
        """Apply ``events`` in order. Raises StoreError."""
        ...

    def get_many(self, refs: Sequence[JobRef]) -> list[JobRecord | None]:
        """The newest record matching each reference, or None. Raises StoreError."""
        ...

    def close(self) -> None:
        """Release connections. Idempotent."""
        ...


def get_one(store: Store, ref: JobRef) -> JobRecord | None:
    """The newest record matching ``ref``, or ``None``."""
    return store.get_many([ref])[0]


# ------------------------------------------------------------------ optional store methods
#
# A store may also implement the methods below; the functions here call them when present and
# fall back to something correct (if slower) when not, so a minimal third-party store still works.


class Watch(Protocol):
    """A subscription to changes of some jobs (see :func:`watch`)."""

    def wait(self, timeout: float) -> bool:
        """Block until a watched job may have changed, or ``timeout`` seconds passed.

        True when the store signalled a change (a push store), False on timeout. A change that
        happened after the watch was made and before this call is not lost.
        """
        ...

    def close(self) -> None:
        """End the subscription; idempotent."""
        ...


class PollWatch:
    """The watch of a store without push: waits the whole timeout (callers poll)."""

    def __init__(self) -> None:
        self._closed = threading.Event()

    def wait(self, timeout: float) -> bool:
        """Sleep ``timeout`` seconds (less if closed); always False."""
        self._closed.wait(timeout)
        return False

    def close(self) -> None:
        """Wake a sleeping :meth:`wait`."""
        self._closed.set()


def get_after(store: Store, ref: JobRef, after: int) -> JobRecord | None:
    """The newest record matching ``ref`` holding only data chunks from index ``after`` on.

    ``record.data_offset == after`` in the result. Uses ``store.get_after(ref, after)`` when the
    store has it (a cursor read: only the new chunks travel), else slices a full read.
    """
    method = getattr(store, "get_after", None)
    if method is not None:
        result: JobRecord | None = method(ref, after)
        return result
    record = get_one(store, ref)
    if record is not None and after:
        record.data = record.data[after:]
        record.data_offset = after
    return record


def watch(store: Store, refs: Sequence[JobRef]) -> Watch:
    """Subscribe to changes of ``refs``: ``store.watch(refs)`` on push stores, else a PollWatch."""
    method = getattr(store, "watch", None)
    if method is None:
        return PollWatch()
    result: Watch = method(refs)
    return result


def delete(store: Store, refs: Sequence[JobRef]) -> int:
    """Forget the jobs matching ``refs`` (every record each one matches); returns how many.

    Raises StoreError when the store cannot delete.
    """
    method = getattr(store, "delete", None)
    if method is None:
        raise StoreError(f"store {store.url} cannot delete records")
    count: int = method(refs)
    return count


def purge(store: Store) -> int:
    """Remove expired records now (stores that expire by themselves return 0)."""
    method = getattr(store, "purge", None)
    return int(method()) if method is not None else 0


StoreFactory = Callable[[str], Store]


@dataclass(frozen=True, slots=True)
class StoreType:
    """A store implementation registered for a URL scheme."""

    scheme: str
    factory: StoreFactory
    description: str
    plugin: str


def url_scheme(url: str) -> str:
    """The scheme of a store URL, lower-cased (``postgresql+psycopg://`` → ``postgresql+psycopg``)."""
    scheme, sep, _ = url.partition(":")
    if not sep or not scheme:
        raise ConfigError(f"a store URL needs a scheme, like sqlite:///path: {redact_url(url)!r}")
    return scheme.lower()


DEFAULT_TTL = 86400.0
"""Seconds a store keeps a job after its last event unless told otherwise (``?ttl=`` in the URL)."""


def ttl_from_query(url: str, default: float = DEFAULT_TTL) -> float:
    """The ``ttl`` query parameter of a store URL in seconds (0 = keep for ever), else ``default``."""
    values = parse_qs(urlsplit(url).query).get("ttl")
    if not values:
        return default
    try:
        ttl = float(values[-1])
    except ValueError:
        raise ConfigError(f"ttl must be a number of seconds in {redact_url(url)!r}") from None
    if ttl < 0:
        raise ConfigError(f"ttl must not be negative in {redact_url(url)!r}")
    return ttl


_SECRET_OPTION = re.compile(r"pass|pwd|secret|token|credential", re.IGNORECASE)
"""Query options whose values are masked like a password (``password=``, ``sslpassword=``…)."""


def _secret_option(name: str) -> bool:
    return bool(_SECRET_OPTION.search(unquote(name)))


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``; the form to print and log.

    The userinfo password and the values of query options that name a secret (``password=``,
    ``sslpassword=``, ``secret=``, ``token=``…) become ``***``. A URL whose credentials cannot be
    located for sure (no scheme, or an ``@`` the parser did not read as the end of the userinfo,
    as with an unencoded ``/``, ``?`` or ``#`` in a password) is not shown at all.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if "@" in url:
        if not parts.scheme or not url[len(parts.scheme) + 1 :].startswith("//"):
            return "<unparseable URL>"
        if parts.netloc and "@" not in parts.netloc:
            return f"{parts.scheme}://<URL hidden: cannot tell where its password ends>"
        if not parts.netloc and not parts.path.startswith("/") and "@" in parts.path:
            return "<unparseable URL>"
    netloc = parts.netloc
    if parts.password is not None:
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        try:
            port = parts.port
        except ValueError:
            port = None
        netloc = f"{user}:***@{host}" + (f":{port}" if port else "")
    query = parts.query
    if query:
        items = []
        for item in query.split("&"):
            name, eq, _ = item.partition("=")
            items.append(f"{name}=***" if eq and _secret_option(name) else item)
        query = "&".join(items)
    if netloc == parts.netloc:
        if query == parts.query:
            return url
        # textually, so that ``unix:///path?…`` keeps its empty authority
        return (
            url.partition("?")[0] + "?" + query + ("#" + parts.fragment if parts.fragment else "")
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_secrets(url: str) -> list[str]:
    """The secrets a store URL holds: its password and secret-named query options' values.

    Each secret comes as written and percent-decoded (drivers see the decoded form); the longest
    first, so :func:`scrub` replaces a secret before any part of it.
    """
    found: set[str] = set()
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        password, parts = None, None
    if password:
        found.update((password, unquote(password)))
    if parts is not None:
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if value and _secret_option(name):
                found.update((value, quote(value, safe=""), value.replace(" ", "+")))
    return sorted((s for s in found if s), key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` (an error message, a log line) with every secret of ``url`` replaced by ``***``.

    The URL itself, should it appear, is replaced by its redacted form first.
    """
    if url and url in text:
        text = text.replace(url, redact_url(url))
    for secret in url_secrets(url):
        if len(secret) >= 3:  # shorter would mangle the message
            text = text.replace(secret, "***")
    return text


def default_store_url() -> str:
    """The store used when none is configured: SQLite under ``$XDG_DATA_HOME/gearstash``.

    ``$GEARSTASH_HOME`` overrides the folder. The folder is created when the store opens.
    """
    home = os.environ.get("GEARSTASH_HOME")
    if home:
        folder = Path(home)
    else:
        data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        folder = Path(data) / "gearstash"
    return f"sqlite:///{folder / 'jobs.db'}"
