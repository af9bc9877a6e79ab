"""Submitting jobs: foreground (with callbacks), background, and many background jobs at once,
with the ``submitted`` markers that let a stored record say ``queued``.

:class:`Submitter` is a part of :class:`gearstash.client.client.Client`; use the client.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence

from gearstash.client.links import STATUS_BATCH, WORK_PACKETS, ServerLinks
from gearstash.errors import (
    ConfigError,
    GearstashError,
    ProtocolError,
    ServerError,
    ServerUnavailable,
    WaitTimeout,
)
from gearstash.model.records import Event, EventKind, JobKey, JobRecord, JobRef
from gearstash.model.views import JobView, Status
from gearstash.protocol.packets import (
    ErrorReply,
    Packet,
    PacketType,
    check_unique,
    encode_request,
    parse_int,
)
from gearstash.store.contract import Store

log = logging.getLogger("gearstash.client")

_SUBMIT = {
    ("normal", False): PacketType.SUBMIT_JOB,
    ("high", False): PacketType.SUBMIT_JOB_HIGH,
    ("low", False): PacketType.SUBMIT_JOB_LOW,
    ("normal", True): PacketType.SUBMIT_JOB_BG,
    ("high", True): PacketType.SUBMIT_JOB_HIGH_BG,
    ("low", True): PacketType.SUBMIT_JOB_LOW_BG,
}

BatchJob = tuple[str | bytes, bytes | str] | tuple[str | bytes, bytes | str, bytes | str | None]
"""A job for :meth:`Submitter.submit_background_many`: ``(function, workload[, unique])``."""


class PartlySubmitted(ServerError):
    """A server refused a job of a batch; ``submitted`` holds the references of the jobs that
    were submitted (and marked) before the refusal, in order."""

    def __init__(self, cause: ServerError, submitted: list[JobRef]) -> None:
        super().__init__(cause.code, cause.text, server=cause.server)
        self.submitted = submitted


class Submitter:
    """Job submission over ``links``; ``store()`` gives the store the ``submitted`` markers go
    to (called only when a marker is written, so a client's store opens on first use)."""

    def __init__(
        self, links: ServerLinks, store: Callable[[], Store], *, mark_submissions: bool = True
    ) -> None:
        self.links = links
        self.store = store
        self.mark_submissions = mark_submissions

    @staticmethod
    def _prepare(
        function: str | bytes, workload: bytes | str, unique: bytes | str | None
    ) -> tuple[bytes, bytes, bytes]:
        fn = function.encode() if isinstance(function, str) else bytes(function)
        if not fn or b"\0" in fn:
            raise ConfigError(f"bad function name {function!r}")
        data = workload.encode() if isinstance(workload, str) else bytes(workload)
        if unique is None:
            uniq = uuid.uuid4().hex.encode()
        else:
            uniq = unique.encode() if isinstance(unique, str) else bytes(unique)
        if b"\0" in uniq:
            raise ProtocolError("a unique cannot contain NUL", side="local")
        return fn, data, check_unique(uniq)

    def submit_background(
        self,
        function: str | bytes,
        workload: bytes | str = b"",
        *,
        unique: bytes | str | None = None,
        priority: str = "normal",
        when: float | None = None,
    ) -> JobRef:
        """Submit a background job; return its reference (handle, server, unique).

        ``priority`` is ``normal``, ``high`` or ``low``; ``when`` (unix time) uses SUBMIT_JOB_EPOCH.
        A unique over 63 bytes raises ProtocolError before anything is sent. Raises
        ServerUnavailable when no server accepts the job, ServerError when the server refuses it.
        """
        fn, data, uniq = self._prepare(function, workload, unique)
        if when is not None:
            packet = encode_request(PacketType.SUBMIT_JOB_EPOCH, fn, uniq, b"%d" % int(when), data)
        else:
            kind = _SUBMIT.get((priority, True))
            if kind is None:
                raise ConfigError(f"priority must be normal, high or low, not {priority!r}")
            packet = encode_request(kind, fn, uniq, data)
        since = time.time()
        ref = self._submit_one(packet, uniq)
        self._mark([(ref, fn)], since)
        return ref

    def _submit_one(self, packet: bytes, uniq: bytes) -> JobRef:
        """Send one SUBMIT_* ``packet`` to the unique's server, failing over to the others."""
        errors: list[str] = []
        for server in self.links.placement(uniq):
            try:
                with self.links.locked(server) as conn:
                    conn.send(packet)
                    created = self.links.expect(conn, PacketType.JOB_CREATED)
            except ServerUnavailable as exc:
                errors.append(str(exc))
                continue
            return JobRef(created.args[0], server, uniq)
        raise ServerUnavailable("no job server accepted the job: " + "; ".join(errors))

    def submit_background_many(
        self, jobs: Iterable[BatchJob], *, priority: str = "normal"
    ) -> list[JobRef]:
        """Submit many background jobs: pipelined, one round trip per server per 1,000 jobs,
        and one store write for all their ``submitted`` markers. Returns the references in order.

        Each job is ``(function, workload)`` or ``(function, workload, unique)`` (``None``: a
        random unique). Everything is checked (function names, uniques ≤ 63 bytes, priority)
        before anything is sent. A job whose server is unreachable is retried on the next
        server, one at a time (re-sending a job the server may already have coalesces: same
        function and unique). Raises :class:`PartlySubmitted` (a ServerError) when a server
        refuses a job, after the jobs submitted before it were marked; ``exc.submitted`` holds
        their references.
        """
        kind = _SUBMIT.get((priority, True))
        if kind is None:
            raise ConfigError(f"priority must be normal, high or low, not {priority!r}")
        prepared = [self._prepare(job[0], job[1], job[2] if len(job) > 2 else None) for job in jobs]
        refs: list[JobRef | None] = [None] * len(prepared)
        by_server: dict[str, list[int]] = {}
        since = time.time()
        for index, (_fn, _data, uniq) in enumerate(prepared):
            by_server.setdefault(self.links.placement(uniq)[0], []).append(index)
        try:
            for server, indexes in by_server.items():
                for start in range(0, len(indexes), STATUS_BATCH):
                    batch = indexes[start : start + STATUS_BATCH]
                    packets = [
                        encode_request(kind, fn, u, d) for fn, d, u in (prepared[i] for i in batch)
                    ]
                    handles: list[bytes] = []
                    try:
                        self._pipeline_submit(server, packets, handles)
                    finally:
                        for index, handle in zip(batch, handles, strict=False):
                            refs[index] = JobRef(handle, server, prepared[index][2])
            for index, ref in enumerate(refs):
                if ref is None:  # its server was unreachable: the usual fail-over, one by one
                    fn, data, uniq = prepared[index]
                    refs[index] = self._submit_one(encode_request(kind, fn, uniq, data), uniq)
        except ServerError as exc:
            raise PartlySubmitted(exc, [r for r in refs if r is not None]) from exc
        finally:  # mark what was submitted, also when a server refused a job midway
            self._mark([(r, prepared[i][0]) for i, r in enumerate(refs) if r is not None], since)
        return [r for r in refs if r is not None]

    def _pipeline_submit(self, server: str, packets: list[bytes], handles: list[bytes]) -> None:
        """Send ``packets`` to ``server`` at once and append their JOB_CREATED handles, in order,
        to ``handles``.

        Fewer handles than packets when the server went away midway (the caller retries the
        rest); an ERROR reply raises ServerError (the connection is closed: the unread replies
        would answer the next call).
        """
        try:
            with self.links.locked(server) as conn:
                conn.send(b"".join(packets))
                for _ in packets:
                    handles.append(self.links.expect(conn, PacketType.JOB_CREATED).args[0])
        except ServerUnavailable:
            return

    def _mark(self, submitted: Sequence[tuple[JobRef, bytes]], since: float) -> None:
        """Write the ``submitted`` markers of background jobs, given as ``(ref, function)``
        pairs, in one store write (when ``mark_submissions``), dated ``since`` (just before the
        submissions were sent: a worker cannot have started them earlier). Failures are only
        logged: the jobs are submitted."""
        if not self.mark_submissions or not submitted:
            return
        events = [
            Event(
                EventKind.SUBMITTED,
                JobKey(ref.server or "", ref.handle, ref.unique or b""),
                since,
                function=function,
            )
            for ref, function in submitted
        ]
        try:
            self.store().write(events)
        except GearstashError as exc:
            log.warning(
                "%d job(s) submitted (the first %s), but not recorded as submitted: %s",
                len(events),
                submitted[0][0],
                exc,
            )

    def submit(
        self,
        function: str | bytes,
        workload: bytes | str = b"",
        *,
        unique: bytes | str | None = None,
        priority: str = "normal",
        on_data: Callable[[bytes], None] | None = None,
        on_warning: Callable[[bytes], None] | None = None,
        on_status: Callable[[int, int], None] | None = None,
        timeout: float | None = None,
    ) -> JobView:
        """Run a foreground job and wait for its end, calling the callbacks as the worker speaks.

        Returns a :class:`JobView` whose ``record`` holds what this client received (data,
        warnings, status, result or error) and whose state is ``complete`` or ``failed``. It does
        not raise for a failed job. ``timeout`` bounds the whole wait (default: none; each read is
        still bounded by the client's timeout... unless the job is silent longer: then pass a
        larger client timeout). Raises WaitTimeout, ServerUnavailable, ServerError.
        """
        fn, data, uniq = self._prepare(function, workload, unique)
        kind = _SUBMIT.get((priority, False))
        if kind is None:
            raise ConfigError(f"priority must be normal, high or low, not {priority!r}")
        packet = encode_request(kind, fn, uniq, data)
        deadline = None if timeout is None else time.monotonic() + timeout
        errors: list[str] = []
        for server in self.links.placement(uniq):
            created = False
            try:
                with self.links.locked(server) as conn:
                    conn.send(packet)
                    handle = self.links.expect(conn, PacketType.JOB_CREATED).args[0]
                    created = True
                    record = JobRecord(JobKey(server, handle, uniq), function=fn)
                    while not record.state.final:
                        wait = None if deadline is None else deadline - time.monotonic()
                        if wait is not None and wait <= 0:
                            raise WaitTimeout(f"job {handle!r} did not finish within {timeout} s")
                        try:
                            p = conn.read_packet(wait if wait is not None else -1.0)
                        except ServerUnavailable:
                            if deadline is not None and time.monotonic() >= deadline:
                                raise WaitTimeout(
                                    f"job {handle!r} did not finish within {timeout} s"
                                ) from None
                            raise
                        if p.kind not in WORK_PACKETS or p.args[0] != handle:
                            if p.kind == PacketType.ERROR:
                                err = ErrorReply.from_packet(p)
                                raise ServerError(err.code, err.text, server=server)
                            continue
                        self._apply(record, p, on_data, on_warning, on_status)
            except ServerUnavailable as exc:
                if created:  # the job runs there: no fail-over to another server
                    raise
                errors.append(str(exc))
                continue
            status = Status(False, False, 0, 0, server)
            return JobView(JobRef(handle, server, uniq), record.state, status, record)
        raise ServerUnavailable("no job server accepted the job: " + "; ".join(errors))

    @staticmethod
    def _apply(
        record: JobRecord,
        p: Packet,
        on_data: Callable[[bytes], None] | None,
        on_warning: Callable[[bytes], None] | None,
        on_status: Callable[[int, int], None] | None,
    ) -> None:
        now = time.time()
        key = record.key
        kind = p.kind
        if kind == PacketType.WORK_DATA:
            record.apply(Event(EventKind.DATA, key, now, p.args[1]))
            if on_data:
                on_data(p.args[1])
        elif kind == PacketType.WORK_WARNING:
            record.apply(Event(EventKind.WARNING, key, now, p.args[1]))
            if on_warning:
                on_warning(p.args[1])
        elif kind == PacketType.WORK_STATUS:
            num, den = parse_int(p.args[1]), parse_int(p.args[2])
            record.apply(Event(EventKind.STATUS, key, now, numerator=num, denominator=den))
            if on_status:
                on_status(num, den)
        elif kind == PacketType.WORK_COMPLETE:
            record.apply(Event(EventKind.COMPLETED, key, now, p.args[1]))
        elif kind == PacketType.WORK_EXCEPTION:
            record.apply(Event(EventKind.EXCEPTION, key, now, p.args[1]))
        elif kind == PacketType.WORK_FAIL and record.error is None:
            record.apply(Event(EventKind.FAILED, key, now))
