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

import dataclasses
import enum
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol
from urllib.parse import quote_from_bytes, unquote_to_bytes

from gearstash.errors import ConfigError
from gearstash.model.codec import bytes_to_json, json_to_bytes

FORMAT = "gearstash.job/1"
DEFAULT_PORT = 4730


class State(enum.StrEnum):
    """The definite state of a job as :meth:`gearstash.Client.fetch` reports it.

    ``queued``: the server holds the job, no worker has it. ``running``: a worker has it.
    ``complete`` / ``failed``: a worker finished it (``failed`` covers WORK_FAIL and exceptions).
    ``expired``: the store kept the job until its TTL ran out and can tell that it did.
    ``lost``: the job will not finish: its worker stopped renewing its lease (it died) and the job
    server no longer has the job, or it was submitted and the job server forgot it (a restart
    without a persistent queue). Stores never store ``lost``; clients work it out when they read.
    ``unknown``: neither the server nor the store has ever seen it (or the store forgot it).
    """

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    EXPIRED = "expired"
    LOST = "lost"
    UNKNOWN = "unknown"

    @property
    def final(self) -> bool:
        """True for ``complete``, ``failed``, ``expired`` and ``lost`` (nothing more will happen)."""
        return self in _FINAL_STATES


_FINAL_STATES = frozenset({State.COMPLETE, State.FAILED, State.EXPIRED, State.LOST})


class EventKind(enum.StrEnum):
    """What a worker (or, for ``submitted``, a client) said about a job.

    ``submitted``: a client submitted the job (written only if the store has no record of the key
    yet: it creates a ``queued`` record with attempt 0). ``heartbeat``: the job's worker is alive;
    it renews the lease and changes nothing else (ignored when the store has no record of the key).
    """

    SUBMITTED = "submitted"
    HEARTBEAT = "heartbeat"
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
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"bad job-server address {address!r}")
        port = rest[1:]
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
    inner = host[1:-1] if host.startswith("[") else host
    if not inner or any(c in "[]@#/?\\" or c.isspace() or not c.isprintable() for c in inner):
        # these would make str(JobRef) ambiguous (a '#' or '@' in the server) or are no host
        raise ConfigError(f"bad host in job-server address {address!r}")
    return f"{host}:{number}"


_PERL_FORM = re.compile(r"([^\s/@#]+)//(.+)", re.DOTALL)
"""``SERVER//HANDLE``: Perl's Gearman::Client job handles."""


class JobKey(NamedTuple):
    """The identity of one job: the issuing server, the handle and the unique (hashable)."""

    server: str
    handle: bytes
    unique: bytes


class JobInfo(Protocol):
    """What observer hooks see of a job in a worker's hands: a :class:`gearstash.worker.Job` of the
    Python worker or a job relayed by the capturing proxy (:mod:`gearstash.proxy`) alike."""

    handle: bytes
    unique: bytes
    function: str
    workload: bytes
    server: str
    key: JobKey

    @property
    def ref(self) -> JobRef:
        """The reference a client can fetch this job with."""
        ...


@dataclass(frozen=True, slots=True)
class JobRef:
    """How a client finds a job again: a handle, and when known the server and the unique.

    ``server`` may be ``None`` (a bare handle: every configured server is asked); ``unique`` may be
    ``None`` (the newest record with that handle is taken, which after a gearmand restart may belong
    to a newer job with the same handle: keep the full reference to be safe).

    An empty ``handle`` with a ``unique`` (string form ``[@SERVER]#UNIQUE``) names the newest record
    with that unique under any handle: a persistent-queue job server replays a queued job under a
    new handle after a restart, and only the unique survives.
    """

    handle: bytes
    server: str | None = None
    unique: bytes | None = None

    def __str__(self) -> str:
        # "/" is quoted: a handle holding "//" would read back as Perl's SERVER//HANDLE form
        text = quote_from_bytes(self.handle, safe=":-_.~!$&'()*+,;=")
        if self.server:
            text += "@" + self.server
        if self.unique is not None:
            text += "#" + quote_from_bytes(self.unique, safe=":/-_.~")
        return text

    @classmethod
    def parse(cls, text: str | bytes) -> JobRef:
        """Parse ``HANDLE[@SERVER][#UNIQUE]`` (the form ``str(ref)`` prints), a bare handle, or
        ``SERVER//HANDLE`` (the form the Perl Gearman::Client hands out: ``127.0.0.1:4730//H:h:1``).

        The one parser of handles: every command and API that takes a handle goes through it.
        """
        raw = text.decode("utf-8", "surrogateescape") if isinstance(text, bytes) else text
        raw = raw.strip()
        unique: bytes | None = None
        server: str | None = None
        perl = _PERL_FORM.fullmatch(raw)
        if perl is not None:
            server = normalize_server(perl[1])
            raw = perl[2]
        if "#" in raw:
            raw, _, uniq = raw.rpartition("#")
            unique = unquote_to_bytes(uniq.encode("utf-8", "surrogateescape"))
        if "@" in raw:
            raw, _, srv = raw.rpartition("@")
            named = normalize_server(srv)
            if server is not None and named != server:
                raise ConfigError(f"two servers in job reference {text!r}")
            server = named
        handle = unquote_to_bytes(raw.encode("utf-8", "surrogateescape"))  # argv-style text
        if not handle and unique is None:
            raise ConfigError(f"empty job handle in {text!r}")
        return cls(handle, server, unique)

    @property
    def by_unique(self) -> bool:
        """True for a reference by unique alone (empty handle), which matches any handle."""
        return not self.handle

    def matches(self, key: JobKey) -> bool:
        """True when ``key`` is a job this reference may name."""
        return (
            (key.handle == self.handle or not self.handle)
            and (self.server is None or key.server == self.server)
            and (self.unique is None or key.unique == self.unique)
        )


@dataclass(slots=True)
class Event:
    """One thing a worker said about a job, in the order it said it.

    ``payload`` holds the chunk (data, warning), the result (completed) or the error text (failed,
    exception). ``numerator``/``denominator`` are set for status events. ``function`` and ``worker``
    are set on ``started`` (``function`` also on ``submitted``). ``workload``, when not None, is
    the job's workload as the worker captured it (set on ``started`` only, and only by a worker
    or proxy asked to capture workloads; see :attr:`JobRecord.workload`). ``traceback`` is set on
    ``exception``. ``ttl``, when not None, overrides the store's default time to keep the job
    (seconds after this write; 0 = for ever). ``lease``, when not None, sets the record's
    ``lease_until`` to ``at + lease`` (the worker sets it on ``started`` and ``heartbeat``).
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
    lease: float | None = None
    workload: bytes | None = None


def captured_workload(workload: bytes, cap: int | None) -> bytes | None:
    """What a ``started`` event stores of ``workload``: itself when capturing (``cap`` not None)
    and it is at most ``cap`` bytes, else None (a bigger workload is not stored, never cut)."""
    if cap is None or len(workload) > cap:
        return None
    return bytes(workload)


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

    ``state`` is the stored state: ``queued`` (submitted, no worker has started it),
    ``running``, ``complete`` or ``failed`` (``expired`` when a store returns what it knows of an
    expired job: its key, no data). ``attempt`` counts how many times a worker started this job
    instance (0 while queued); a new attempt starts the data afresh. ``lease_until`` is the unix
    time until which the running job's worker promised to renew its lease (see :meth:`lost`).
    ``data_offset`` is the index of ``data[0]`` among all the job's chunks (non-zero only for
    records read with a cursor, :func:`gearstash.store.contract.get_after`). ``expires_at`` is the unix
    time after which the store may forget the job (None: never, or the store cannot tell).
    ``workload`` is the job's workload when a capturing worker stored it (None: not captured —
    capture off, or the workload was over the worker's size cap); a ``started`` event that
    carries none leaves it as it was, so a retry by a worker that does not capture keeps it.
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
    lease_until: float | None = None
    workload: bytes | None = None

    @classmethod
    def create(cls, event: Event) -> JobRecord | None:
        """The record a store makes when ``event`` is the first it sees for ``event.key``.

        ``None`` for a ``heartbeat`` (it never creates a record). Stores that build records
        themselves must give the same result as ``create`` followed by :meth:`apply`.
        """
        if event.kind is EventKind.HEARTBEAT:
            return None
        if event.kind is EventKind.SUBMITTED:
            return cls(
                event.key,
                function=event.function,
                state=State.QUEUED,
                attempt=0,
                updated_at=event.at,
            )
        return cls(event.key)

    def lost(self, now: float) -> bool:
        """True when the record says ``running`` but its lease ran out before ``now``."""
        return (
            self.state is State.RUNNING and self.lease_until is not None and self.lease_until < now
        )

    def apply(self, event: Event) -> None:
        """Apply one event to this record in memory (the reference semantics for every store).

        A ``submitted`` event changes nothing in an existing record (it only creates one, see
        :meth:`create`).
        """
        kind = event.kind
        if kind is EventKind.SUBMITTED:
            return
        self.updated_at = event.at
        if event.lease is not None:
            self.lease_until = event.at + event.lease
        if kind is EventKind.HEARTBEAT:
            return
        if kind is EventKind.DATA:
            self.data.append(event.payload)
        elif kind is EventKind.STATUS:
            self.status.append(StatusPoint(event.numerator, event.denominator, event.at))
        elif kind is EventKind.WARNING:
            self.warnings.append(event.payload)
        elif kind is EventKind.STARTED:
            self.attempt = self.attempt + 1 if self.started_at is not None else 1
            self.function = event.function or self.function
            self.worker = event.worker
            if event.workload is not None:
                self.workload = event.workload
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
        """The record ``events`` make, applied in order from nothing (the reference for every store).

        The first event that makes a record (see :meth:`create`; a ``heartbeat`` makes none)
        creates it and is applied to it, as is every event after it; events before it are
        skipped. The record's key is that first event's key. When no event makes a record the
        result is ``JobRecord(key)`` (``running``, attempt 1, nothing else), never ``None``: a
        store has no record then, so compare with care (see :meth:`create`).
        """
        record: JobRecord | None = None
        for event in events:
            if record is None:
                record = cls.create(event)
                if record is None:
                    continue
            record.apply(event)
        return record if record is not None else cls(key)

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
            "lease_until": self.lease_until,
            "data_offset": self.data_offset,
            "workload": None if self.workload is None else bytes_to_json(self.workload),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> JobRecord:
        """Read the JSON form back (the inverse of :meth:`to_json`).

        Other programs write this format: whatever JSON value ``obj`` is, the only error raised is
        ``ValueError`` (a missing key, a wrong type or an out-of-range number included).
        """
        if not isinstance(obj, dict):
            raise ValueError(f"a {FORMAT} record is a JSON object, not {type(obj).__name__}")
        try:
            record = cls._from_json(obj)
        except (KeyError, TypeError, AttributeError, OverflowError) as exc:
            raise ValueError(f"malformed {FORMAT} record: {type(exc).__name__}: {exc}") from None
        _check_json_types(obj, record)
        return record

    @classmethod
    def _from_json(cls, obj: dict[str, Any]) -> JobRecord:
        if obj.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} record: format={obj.get('format')!r}")
        error = obj.get("error")
        result = obj.get("result")
        workload = obj.get("workload")
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
            lease_until=obj.get("lease_until"),
            data_offset=int(obj.get("data_offset") or 0),
            workload=None if workload is None else json_to_bytes(workload),
        )


def _check_json_types(obj: dict[str, Any], record: JobRecord) -> None:
    """ValueError naming the fields of a ``from_json`` input that have the wrong JSON type."""
    bad = [name for name in ("data", "warnings", "status") if not isinstance(obj[name], list)]
    if not isinstance(record.key.server, str):
        bad.append("server")
    if not isinstance(record.worker, str):
        bad.append("worker")
    error = record.error
    if error is not None and not all(
        isinstance(v, str) for v in (error.kind, error.message, error.traceback)
    ):
        bad.append("error")
    for name in ("started_at", "finished_at", "updated_at", "expires_at", "lease_until"):
        value = getattr(record, name, None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            bad.append(name)
    if bad:
        raise ValueError(f"malformed {FORMAT} record: wrong type for {', '.join(bad)}")


