"""The job record, the events that build it, and the job reference.

Everything here is plain data with no I/O.

* A :class:`JobKey` names one job *instance*: the job server that issued it (``server``, as
  ``host:port``), its ``handle`` and its ``unique``. Handles alone are not identities: gearmand reuses
  them after a restart and two servers issue the same ones; the triple is what gearstash keys on.
* An :class:`Event` is one thing a worker said about a job (started, data, warning, status, completed,
  failed, exception). Stores apply events in order.
* A :class:`JobRecord` is everything stored about a job; :meth:`JobRecord.to_json` is the public,
  versioned JSON format documented in the README (``"format": "gearstash.job/1"``).
* A :class:`JobRef` is what a client keeps to find a job again; its string form is
  ``HANDLE[@SERVER][#UNIQUE]`` with ``@`` ``#`` and ``%`` in the handle and unique percent-encoded.

Bytes in JSON: a bytes value that is valid UTF-8 is written as a JSON string; any other bytes value is
written as the object ``{"base64": "..."}``. Nothing is ever pickled.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import quote_from_bytes, unquote_to_bytes

from gearstash.errors import ConfigError

FORMAT = "gearstash.job/1"
DEFAULT_PORT = 4730


class State(enum.StrEnum):
    """The definite state of a job as :meth:`gearstash.Client.fetch` reports it.

    ``queued``: the server holds the job, no worker has it. ``running``: a worker has it.
    ``complete`` / ``failed``: a worker finished it (``failed`` covers WORK_FAIL and exceptions).
    ``expired``: the store kept the job until its TTL ran out and can tell that it did.
    ``unknown``: neither the server nor the store has ever seen it (or the store forgot it).
    """

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    EXPIRED = "expired"
    UNKNOWN = "unknown"

    @property
    def final(self) -> bool:
        """True for ``complete``, ``failed`` and ``expired`` (nothing more will happen)."""
        return self in _FINAL_STATES


_FINAL_STATES = frozenset({State.COMPLETE, State.FAILED, State.EXPIRED})


class EventKind(enum.StrEnum):
    """What a worker said about a job."""

    STARTED = "started"
    DATA = "data"
    WARNING = "warning"
    STATUS = "status"
    COMPLETED = "completed"
    FAILED = "failed"
    EXCEPTION = "exception"


FINAL_EVENTS = frozenset({EventKind.COMPLETED, EventKind.FAILED, EventKind.EXCEPTION})


def normalize_server(address: str) -> str:
    """Return ``host:port`` for a server address (``host``, ``host:port`` or ``[v6]:port``).

    The host is lower-cased and the default port 4730 added, so that a worker and a client that name
    the same server the same way agree on the job's identity.
    """
    text = address.strip().lower()
    if not text:
        raise ConfigError("empty job-server address")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ConfigError(f"bad job-server address {address!r}")
        port = rest[1:] if rest.startswith(":") else ""
        host = f"[{host}]"
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    elif ":" in text:  # bare IPv6 without brackets
        host, port = f"[{text}]", ""
    else:
        host, port = text, ""
    if port and not port.isdigit():
        raise ConfigError(f"bad port in job-server address {address!r}")
    if not host:
        raise ConfigError(f"bad job-server address {address!r}")
    number = int(port) if port else DEFAULT_PORT
    if not 0 < number < 65536:
        raise ConfigError(f"port out of range in job-server address {address!r}")
    return f"{host}:{number}"


class JobKey(NamedTuple):
    """The identity of one job: the issuing server, the handle and the unique (hashable)."""

    server: str
    handle: bytes
    unique: bytes


@dataclass(frozen=True, slots=True)
class JobRef:
    """How a client finds a job again: a handle, and when known the server and the unique.

    ``server`` may be ``None`` (a bare handle: every configured server is asked); ``unique`` may be
    ``None`` (the newest record with that handle is taken, which after a gearmand restart may belong
    to a newer job with the same handle: keep the full reference to be safe).
    """

    handle: bytes
    server: str | None = None
    unique: bytes | None = None

    def __str__(self) -> str:
        text = quote_from_bytes(self.handle, safe=":/-_.~!$&'()*+,;=")
        if self.server:
            text += "@" + self.server
        if self.unique is not None:
            text += "#" + quote_from_bytes(self.unique, safe=":/-_.~")
        return text

    @classmethod
    def parse(cls, text: str | bytes) -> JobRef:
        """Parse ``HANDLE[@SERVER][#UNIQUE]`` (the form ``str(ref)`` prints) or a bare handle."""
        raw = text.decode("utf-8", "surrogateescape") if isinstance(text, bytes) else text
        raw = raw.strip()
        unique: bytes | None = None
        server: str | None = None
        if "#" in raw:
            raw, _, uniq = raw.rpartition("#")
            unique = unquote_to_bytes(uniq)
        if "@" in raw:
            raw, _, srv = raw.rpartition("@")
            server = normalize_server(srv)
        handle = unquote_to_bytes(raw)
        if not handle:
            raise ConfigError(f"empty job handle in {text!r}")
        return cls(handle, server, unique)

    def matches(self, key: JobKey) -> bool:
        """True when ``key`` is a job this reference may name."""
        return (
            key.handle == self.handle
            and (self.server is None or key.server == self.server)
            and (self.unique is None or key.unique == self.unique)
        )


@dataclass(slots=True)
class Event:
    """One thing a worker said about a job, in the order it said it.

    ``payload`` holds the chunk (data, warning), the result (completed) or the error text (failed,
    exception). ``numerator``/``denominator`` are set for status events. ``function`` and ``worker``
    are set on ``started``. ``traceback`` is set on ``exception``. ``ttl``, when not None,
    overrides the store's default time to keep the job (seconds after this write; 0 = for ever).
    Treat an event as immutable once made; it is not a frozen dataclass only because those are
    slow to build on the hot path.
    """

    kind: EventKind
    key: JobKey
    at: float
    payload: bytes = b""
    numerator: int = 0
    denominator: int = 0
    function: bytes = b""
    worker: str = ""
    traceback: str = ""
    ttl: float | None = None


@dataclass(frozen=True, slots=True)
class StatusPoint:
    """One WORK_STATUS the worker sent, with the time the worker sent it."""

    numerator: int
    denominator: int
    at: float


@dataclass(frozen=True, slots=True)
class JobError:
    """Why a job failed: ``kind`` is ``"fail"`` (WORK_FAIL) or ``"exception"``."""

    kind: str
    message: str = ""
    traceback: str = ""


@dataclass(slots=True)
class JobRecord:
    """Everything a store keeps about one job (see the README's "Record format").

    ``state`` is the stored state: ``running``, ``complete`` or ``failed`` (``expired`` when a
    store returns what it knows of an expired job: its key, no data). ``attempt`` counts how many
    times a worker started this job instance; a new attempt starts the data afresh.
    ``data_offset`` is the index of ``data[0]`` among all the job's chunks (non-zero only for
    records read with a cursor, :func:`gearstash.store.get_after`). ``expires_at`` is the unix
    time after which the store may forget the job (None: never, or the store cannot tell).
    """

    key: JobKey
    function: bytes = b""
    state: State = State.RUNNING
    attempt: int = 1
    data: list[bytes] = field(default_factory=list)
    warnings: list[bytes] = field(default_factory=list)
    status: list[StatusPoint] = field(default_factory=list)
    result: bytes | None = None
    error: JobError | None = None
    worker: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float | None = None
    expires_at: float | None = None
    data_offset: int = 0

    def apply(self, event: Event) -> None:
        """Apply one event to this record in memory (the reference semantics for every store)."""
        kind = event.kind
        self.updated_at = event.at
        if kind is EventKind.DATA:
            self.data.append(event.payload)
        elif kind is EventKind.STATUS:
            self.status.append(StatusPoint(event.numerator, event.denominator, event.at))
        elif kind is EventKind.WARNING:
            self.warnings.append(event.payload)
        elif kind is EventKind.STARTED:
            if self.started_at is not None:
                self.attempt += 1
            self.function = event.function or self.function
            self.worker = event.worker
            self.state = State.RUNNING
            self.started_at = event.at
            self.finished_at = None
            self.data.clear()
            self.warnings.clear()
            self.status.clear()
            self.result = None
            self.error = None
        elif kind is EventKind.COMPLETED:
            self.state = State.COMPLETE
            self.result = event.payload
            self.finished_at = event.at
        else:
            self.state = State.FAILED
            self.error = JobError(
                "exception" if kind is EventKind.EXCEPTION else "fail",
                event.payload.decode("utf-8", "replace"),
                event.traceback,
            )
            self.finished_at = event.at

    @classmethod
    def from_events(cls, key: JobKey, events: list[Event]) -> JobRecord:
        """Build a record from scratch by applying ``events`` in order."""
        record = cls(key)
        for event in events:
            record.apply(event)
        return record

    def copy(self) -> JobRecord:
        """A deep enough copy (lists are copied) for handing out of a store."""
        return dataclasses.replace(
            self, data=list(self.data), warnings=list(self.warnings), status=list(self.status)
        )

    def to_json(self) -> dict[str, Any]:
        """The documented JSON form (``"format": "gearstash.job/1"``)."""
        return {
            "format": FORMAT,
            "server": self.key.server,
            "handle": bytes_to_json(self.key.handle),
            "unique": bytes_to_json(self.key.unique),
            "function": bytes_to_json(self.function),
            "state": self.state.value,
            "attempt": self.attempt,
            "data": [bytes_to_json(c) for c in self.data],
            "warnings": [bytes_to_json(c) for c in self.warnings],
            "status": [
                {"numerator": p.numerator, "denominator": p.denominator, "at": p.at}
                for p in self.status
            ],
            "result": None if self.result is None else bytes_to_json(self.result),
            "error": None
            if self.error is None
            else {
                "kind": self.error.kind,
                "message": self.error.message,
                "traceback": self.error.traceback,
            },
            "worker": self.worker,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "updated_at": self.updated_at,
            "expires_at": self.expires_at,
            "data_offset": self.data_offset,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> JobRecord:
        """Read the JSON form back (the inverse of :meth:`to_json`)."""
        if obj.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} record: format={obj.get('format')!r}")
        error = obj.get("error")
        result = obj.get("result")
        return cls(
            key=JobKey(obj["server"], json_to_bytes(obj["handle"]), json_to_bytes(obj["unique"])),
            function=json_to_bytes(obj["function"]),
            state=State(obj["state"]),
            attempt=int(obj["attempt"]),
            data=[json_to_bytes(c) for c in obj["data"]],
            warnings=[json_to_bytes(c) for c in obj["warnings"]],
            status=[
                StatusPoint(int(p["numerator"]), int(p["denominator"]), float(p["at"]))
                for p in obj["status"]
            ],
            result=None if result is None else json_to_bytes(result),
            error=None
            if error is None
            else JobError(error["kind"], error["message"], error.get("traceback", "")),
            worker=obj.get("worker", ""),
            started_at=obj.get("started_at"),
            finished_at=obj.get("finished_at"),
            updated_at=obj.get("updated_at"),
            expires_at=obj.get("expires_at"),
            data_offset=int(obj.get("data_offset") or 0),
        )


def bytes_to_json(value: bytes) -> str | dict[str, str]:
    """A JSON string when ``value`` is valid UTF-8, else ``{"base64": ...}``."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode("ascii")}


def json_to_bytes(value: Any) -> bytes:
    """The inverse of :func:`bytes_to_json`."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and isinstance(value.get("base64"), str):
        return base64.b64decode(value["base64"], validate=True)
    raise ValueError(f"not an encoded bytes value: {value!r}")
