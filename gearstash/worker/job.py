"""The :class:`Job` a job function is given, and how its return value becomes the result.

A leaf module: a job knows its identity and workload, and hands everything it says to its
:class:`JobChannel` (the worker slot running it), which stores the event, calls the observer hooks
and tells the job server. Plugins and hookspecs import :class:`Job` from here without pulling in
the worker.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gearstash.model.records import JobKey, JobRef

__all__ = ["Job", "JobChannel", "JobFunction", "Registration", "text_bytes", "to_bytes"]


class JobChannel(Protocol):
    """Where a running job's events go. Implementations never raise because the job server or
    the store went away: the job keeps running and its events keep being stored."""

    def data(self, job: Job, chunk: bytes) -> None:
        """Store ``chunk`` as the job's next data chunk, tell the observers and the server."""

    def warning(self, job: Job, chunk: bytes) -> None:
        """Store ``chunk`` as the job's next warning, tell the observers and the server."""

    def status(self, job: Job, numerator: int, denominator: int) -> None:
        """Store the status point, tell the observers and the server."""


def to_bytes(value: Any) -> bytes:
    """How a job function's return value becomes the WORK_COMPLETE payload.

    bytes-like → as is; ``str`` → UTF-8; ``None`` → empty; anything else → its JSON text (raises
    ``TypeError`` when it has none, which fails the job).
    """
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if value is None:
        return b""
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return json.dumps(value).encode("utf-8")


def text_bytes(value: bytes | str) -> bytes:
    """A chunk as sent: ``str`` as UTF-8, bytes-like as bytes."""
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


class Job:
    """One job in a worker's hands, passed to the job function.

    Attributes: ``handle`` (bytes), ``unique`` (bytes), ``function`` (str), ``workload`` (bytes),
    ``server`` (``host:port`` of the server that assigned it), ``key`` (its :class:`JobKey`) and
    ``ttl`` (seconds the store keeps it, None for the store's default).

    The ``send_*`` methods record the event for the store, call the observer hooks, then tell the
    server. Recorded events reach the store within the worker's ``flush_interval`` and always before
    the server hears that the job ended. They never raise because the server or the store went
    away. Events sent after the job ended (from a thread the function left behind) are dropped
    with a warning in the log: the record of an ended job does not change.
    """

    __slots__ = ("_channel", "function", "handle", "key", "server", "ttl", "unique", "workload")

    def __init__(
        self,
        channel: JobChannel,
        key: JobKey,
        function: str,
        workload: bytes,
        ttl: float | None = None,
    ) -> None:
        self.key = key
        self.handle = key.handle
        self.unique = key.unique
        self.server: str = key.server
        self.function = function
        self.workload = workload
        self.ttl = ttl
        self._channel = channel

    def __repr__(self) -> str:
        return f"<Job {self.function} {self.handle!r} unique={self.unique!r}>"

    @property
    def ref(self) -> JobRef:
        """The reference a client can fetch this job with."""
        return JobRef(self.handle, self.server, self.unique)

    def send_data(self, data: bytes | str) -> None:
        """Send a WORK_DATA chunk (str is sent as UTF-8); it is stored in order."""
        self._channel.data(self, text_bytes(data))

    def send_warning(self, warning: bytes | str) -> None:
        """Send a WORK_WARNING (str is sent as UTF-8); it is stored in order."""
        self._channel.warning(self, text_bytes(warning))

    def send_status(self, numerator: int, denominator: int) -> None:
        """Send WORK_STATUS ``numerator/denominator`` (non-negative integers); stored with its time."""
        num, den = int(numerator), int(denominator)
        if num < 0 or den < 0:
            raise ValueError(f"status must not be negative: {num}/{den}")
        self._channel.status(self, num, den)


JobFunction = Callable[[Job], Any]
"""A job function: takes the :class:`Job`, returns the result (see :func:`to_bytes`)."""


@dataclass(frozen=True, slots=True)
class Registration:
    """A function served under ``name``; ``timeout`` is sent as CAN_DO_TIMEOUT when set; ``ttl``
    overrides the store's default time to keep this function's jobs."""

    name: str
    function: JobFunction
    timeout: int | None = None
    ttl: float | None = None
