"""The store contract every store implements, and URL → store.

A store keeps job records. The worker hands it :class:`~gearstash.records.Event` batches in the order
the job produced them; clients read :class:`~gearstash.records.JobRecord` objects back. Stores are
found by URL scheme through the ``register_stores`` hook, so a built-in store and a third-party one are
registered the same way (see ``gearstash.plugins``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from gearstash.errors import ConfigError
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
      pressure before they expire), ``push`` (can wake waiters).
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


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``; the form to print and log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{user}:***@{host}" + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


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
