"""The worker's slots: one job at a time, on connections of their own to every server.

Internal to :class:`gearstash.worker.worker.Worker` (which makes ``concurrency`` of them): the
grab / sleep / wake loop of each server link (its protocol state is a sans-IO
:class:`~gearstash.protocol.worker_side.WorkerSide`), reconnects with backoff, running one job and
writing its events to the store (batched, leases renewed, refused writes recorded) before the
final packet.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gearstash.errors import (
    REFUSED_FOR_GOOD,
    JobFailed,
    ProtocolError,
    ServerUnavailable,
)
from gearstash.model.records import Event, EventKind, JobError, JobKey, captured_workload
from gearstash.protocol.packets import (
    JobAssignment,
    PacketType,
    encode_request,
    encode_status,
    encode_work,
)
from gearstash.protocol.worker_side import (
    Assigned,
    ErrorAnswer,
    LinkState,
    NoJob,
    Unexpected,
    WorkerSide,
)
from gearstash.spine.manager import EventHooks
from gearstash.store.contract import Store, refusal_events
from gearstash.transport.connection import Connection
from gearstash.worker.commit import Committer
from gearstash.worker.job import Job, Registration, to_bytes

log = logging.getLogger("gearstash.worker")

_MAX_BACKOFF = 5.0
_SERVING = (LinkState.IDLE, LinkState.GRABBING)


def stored_text(message: str) -> str:
    """Error text as stored: valid UTF-8 without NUL (which PostgreSQL text cannot hold), with
    NUL written ``\\x00`` and lone surrogates ``\\udcff``."""
    if "\0" in message:
        message = message.replace("\0", "\\x00")
    try:
        message.encode("utf-8")
    except UnicodeEncodeError:
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return message


@dataclass(frozen=True, slots=True)
class SlotSettings:
    """What a slot needs of its worker (see :class:`gearstash.worker.worker.Worker`)."""

    servers: Sequence[str]
    functions: Mapping[str, Registration]
    store: Store
    hooks: EventHooks
    stopping: threading.Event
    job_done: Callable[[], bool]
    """Counts a finished job; True when the worker should stop now."""
    client_id: str
    identity: str
    connect_timeout: float
    read_timeout: float
    flush_interval: float
    lease: float | None
    fail: bool
    """``on_store_down="fail"``: fail jobs whose events could not be stored."""
    pipeline: int = 1
    """Jobs a slot may have finished and not yet told its server about (group commit, see
    :mod:`gearstash.worker.commit`); 1 writes and tells each job before the next is grabbed."""
    prefetch: bool = False
    """Ask for the next job while one runs (:meth:`WorkerSide.grab_ahead`)."""
    workload_max: int | None = None
    """The largest workload the ``started`` event carries (None: workloads are not captured)."""


class Link:
    """One slot's connection to one server: the socket, the protocol state, the retry clock.

    ``epoch`` counts the times the connection was lost: a job's final packet goes out only on
    the connection that was assigned the job (same epoch), never on a re-made one.
    """

    __slots__ = ("backoff", "conn", "epoch", "retry_at", "side", "was_up")

    def __init__(self, conn: Connection, side: WorkerSide) -> None:
        self.conn = conn
        self.side = side
        self.retry_at = 0.0
        self.backoff = 0.1
        self.was_up = False
        self.epoch = 0


@dataclass(slots=True)
class Finished:
    """A job that ended: its events still to store, then ``after`` (its observer hook), then its
    final ``packet`` for the server (on ``link`` if still in ``epoch``)."""

    job: Job
    events: list[Event]
    packet: bytes
    after: Callable[[], None]
    link: Link
    epoch: int
    failed: bool
    """A write of the job's events failed (under ``on_store_down="fail"`` the job then fails)."""


class Slot:
    """One job at a time, on connections of its own to every server.

    The slot is the running job's :class:`~gearstash.worker.job.JobChannel`: it queues the job's
    events (written at least every ``flush_interval``, and always before the final packet), calls
    the observer hooks and sends the work packets.
    """

    def __init__(self, settings: SlotSettings, index: int) -> None:
        self.settings = settings
        self.index = index
        self.hooks = settings.hooks
        self.store = settings.store
        self.interval = settings.flush_interval
        self.lock = threading.Lock()
        self.fail = settings.fail
        self.failed_job: Job | None = None  # under "fail": the job a store write failed for
        # the job in hand and its queued events (under self.lock)
        self.job: Job | None = None
        self.job_conn: Connection | None = None
        self.job_side: WorkerSide | None = None
        """The protocol state of the job's server link: whether it takes WORK_DATA/WARNING."""
        self.pending: list[Event] = []
        self.since = 0.0
        self.leased = 0.0
        # with a committer: the job's work packets, sent together (see _send)
        self.outbox: list[bytes] = []
        self.out_since = 0.0
        self.out_bytes = 0
        functions = [(r.name, r.timeout) for r in settings.functions.values()]
        client_id = settings.client_id.encode()
        self.links = [
            Link(
                Connection(
                    s,
                    connect_timeout=settings.connect_timeout,
                    read_timeout=settings.read_timeout,
                ),
                WorkerSide(client_id, functions),
            )
            for s in settings.servers
        ]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.send_lock = threading.Lock()  # the committer sends final packets too
        self.committer: Committer[Finished] | None = None
        if settings.pipeline > 1:
            self.committer = Committer(self._commit, settings.pipeline, f"gearstash-commit-{index}")

    def wake(self) -> None:
        """Interrupt a wait (the worker is stopping). Safe from any thread."""
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def close(self) -> None:
        """Store and tell what jobs ended, then close every connection of this slot."""
        if self.committer is not None:
            self.committer.close()
        for link in self.links:
            link.conn.close()
        self._wake_r.close()
        self._wake_w.close()

    # ------------------------------------------------------------ loop

    def run(self) -> None:
        """Serve until the worker stops: grab and run jobs, sleep when there are none."""
        stopping = self.settings.stopping
        while not stopping.is_set():
            self._reconnect_due()
            served = False
            for link in self.links:
                if link.side.state in _SERVING and not stopping.is_set():
                    served = self._serve(link) or served
            if not served and not stopping.is_set():
                self._wait()
        if self.committer is not None:
            self.committer.drain()

    def _send_on(self, conn: Connection, data: bytes) -> None:
        with self.send_lock:
            conn.send(data)

    def _serve(self, link: Link) -> bool:
        """Grab and run at most one job on ``link``; True if one ran."""
        conn = link.conn
        side = link.side
        try:
            if side.state is LinkState.IDLE:
                self._send_on(conn, side.grab())
            while True:
                event = side.receive(conn.read_packet())
                if type(event) is Assigned:
                    self.job_side = side
                    if self.settings.prefetch and not self.settings.stopping.is_set():
                        self._send_on(conn, side.grab_ahead())
                    final = self._run(link, event.assignment)
                    grab = not self.settings.job_done()
                    out = final + side.finished(grab=grab)
                    if out:  # empty with a committer and a grab sent ahead
                        self._send_on(conn, out)
                    return True
                if type(event) is NoJob:
                    self._send_on(conn, event.send)
                    return False
                if type(event) is ErrorAnswer:
                    if event.no_work_output or not event.send:
                        _say_error(conn.server, event)
                    else:
                        log.warning(
                            "job server %s answered %s to GRAB_JOB_UNIQ: an older protocol; "
                            "grabbing with GRAB_JOB (jobs come without their unique)",
                            conn.server,
                            event.error,
                        )
                        self._send_on(conn, event.send)
                elif type(event) is Unexpected:
                    log.warning(
                        "job server %s sent unexpected %s; ignored",
                        conn.server,
                        event.packet.kind.name,
                    )
        except (ServerUnavailable, ProtocolError) as exc:
            self._down(link, exc)
            return False

    def _wait(self) -> None:
        """Sleep until a sleeping link gets NOOP, a reconnect is due, or we are woken."""
        now = time.monotonic()
        timeout = 1.0
        for link in self.links:
            if link.side.state is LinkState.DOWN:
                timeout = min(timeout, max(link.retry_at - now, 0.0))
        with selectors.DefaultSelector() as sel:
            sel.register(self._wake_r, selectors.EVENT_READ, None)
            for link in self.links:
                if link.side.state is LinkState.SLEEPING:
                    sel.register(link.conn.fileno(), selectors.EVENT_READ, link)
            ready = sel.select(timeout)
        for key, _ in ready:
            link = key.data
            if link is None:
                with contextlib.suppress(OSError):
                    self._wake_r.recv(64)
                continue
            try:
                for packet in link.conn.read_available():
                    event = link.side.receive(packet)
                    if type(event) is ErrorAnswer:
                        _say_error(link.conn.server, event)
                    elif type(event) is Unexpected:
                        raise ProtocolError(
                            f"job server {link.conn.server} sent {packet.kind.name} to a "
                            "sleeping worker"
                        )
            except (ServerUnavailable, ProtocolError) as exc:
                self._down(link, exc)

    def _reconnect_due(self) -> None:
        now = time.monotonic()
        for link in self.links:
            if link.side.state is not LinkState.DOWN or link.retry_at > now:
                continue
            conn = link.conn
            try:
                conn.connect()
                conn.send(link.side.connected())
            except ServerUnavailable as exc:
                link.side.lost()
                conn.close()
                if link.was_up or link.backoff == 0.1:
                    log.warning("%s; retrying", exc)
                link.was_up = False
                link.retry_at = now + link.backoff
                link.backoff = min(link.backoff * 2, _MAX_BACKOFF)
                continue
            if not link.was_up:
                log.info("serving %s on %s", ", ".join(self.settings.functions), conn.server)
            link.backoff, link.was_up = 0.1, True

    def _down(self, link: Link, exc: Exception) -> None:
        with self.send_lock:
            link.epoch += 1
        link.conn.close()
        if link.was_up:
            log.warning("%s; reconnecting", exc)
        link.side.lost()
        link.retry_at = time.monotonic() + link.backoff

    # ------------------------------------------------------------ the job's channel

    def data(self, job: Job, chunk: bytes) -> None:
        """:class:`~gearstash.worker.job.JobChannel`: a WORK_DATA chunk."""
        if self._record(job, Event(EventKind.DATA, job.key, time.time(), chunk, ttl=job.ttl)):
            self.hooks.data(job, chunk)
            if self._output_taken():
                self._send(job, encode_work(PacketType.WORK_DATA, job.handle, chunk))

    def warning(self, job: Job, chunk: bytes) -> None:
        """:class:`~gearstash.worker.job.JobChannel`: a WORK_WARNING."""
        if self._record(job, Event(EventKind.WARNING, job.key, time.time(), chunk, ttl=job.ttl)):
            self.hooks.warning(job, chunk)
            if self._output_taken():
                self._send(job, encode_work(PacketType.WORK_WARNING, job.handle, chunk))

    def status(self, job: Job, numerator: int, denominator: int) -> None:
        """:class:`~gearstash.worker.job.JobChannel`: a WORK_STATUS point."""
        event = Event(
            EventKind.STATUS,
            job.key,
            time.time(),
            numerator=numerator,
            denominator=denominator,
            ttl=job.ttl,
        )
        if self._record(job, event):
            self.hooks.status(job, numerator, denominator)
            self._send(job, encode_status(job.handle, numerator, denominator))

    def _output_taken(self) -> bool:
        """Whether the job's server takes WORK_DATA/WORK_WARNING (stored either way)."""
        side = self.job_side
        return side is None or side.work_output

    def _send(self, job: Job, packet: bytes) -> None:
        """Send a work packet of the running job. With a committer (``pipeline`` > 1) and a
        ``flush_interval``, packets wait in the outbox like events wait for the store: at most
        ``flush_interval`` (the flush thread sends them), or until the job ends or 64 KiB
        gathered; then they go in one send, always before the job's final packet."""
        conn = self.job_conn
        if conn is None or self.job is not job:
            return
        if self.committer is None or not self.interval:
            self._send_now(job, conn, packet)
            return
        with self.lock:
            if self.job is not job:
                return
            if not self.outbox:
                self.out_since = time.time()
            self.outbox.append(packet)
            self.out_bytes += len(packet)
            if self.out_bytes >= 65536:
                self._send_outbox(job)

    def _send_now(self, job: Job, conn: Connection, packet: bytes) -> None:
        try:
            self._send_on(conn, packet)
        except ServerUnavailable as exc:
            log.warning("%s; job %r goes on, its events are still stored", exc, job.handle)
            self.job_conn = None

    def _send_outbox(self, job: Job) -> None:
        """Send the outbox of ``job`` (caller holds the lock)."""
        packets, self.outbox, self.out_bytes = self.outbox, [], 0
        conn = self.job_conn
        if conn is not None and packets:
            self._send_now(job, conn, b"".join(packets))

    # ------------------------------------------------------------ the store

    def _record(self, job: Job, event: Event) -> bool:
        """Queue ``event`` of the job in hand; write the queue when its oldest event waited long
        enough. False (and nothing queued) when ``job`` is not in hand any more."""
        with self.lock:
            if self.job is not job:
                log.warning(
                    "job %r sent %s after it ended; not stored", job.handle, event.kind.value
                )
                return False
            pending = self.pending
            if not pending:
                self.since = event.at
            pending.append(event)
            if event.at - self.since >= self.interval:
                self._write(job)
        return True

    def flush_due(self, now: float) -> None:
        """Called by the flush thread: write the current job's queue if it waited long enough."""
        job = self.job
        if job is None:
            return
        if self.outbox and now - self.out_since >= self.interval:
            with self.lock:
                if self.job is job:
                    self._send_outbox(job)
        if not self.pending or now - self.since < self.interval:
            return
        with self.lock:
            if self.job is job and self.pending:
                self._write(job)

    def renew_due(self, now: float, every: float) -> None:
        """Called by the flush thread: renew the current job's lease when ``every`` seconds passed.

        The heartbeat is written at once, with whatever events were queued before it.
        """
        job = self.job
        lease = self.settings.lease
        if job is None or lease is None or now - self.leased < every:
            return
        with self.lock:
            if self.job is job:
                self.leased = now
                self.pending.append(
                    Event(EventKind.HEARTBEAT, job.key, now, ttl=job.ttl, lease=lease)
                )
                self._write(job)

    def _end(
        self, link: Link, job: Job, event: Event, packet: bytes, after: Callable[[], None]
    ) -> bytes:
        """The job ended with ``event``: its queued events and ``event`` are stored, then
        ``after`` runs, then the server gets ``packet``. Without a committer all that happens
        here and the packet is returned for the caller to send; with one, the job is handed over
        and b"" is returned (the committer sends the packet once the events are stored)."""
        with self.lock:
            self.pending.append(event)
            events, self.pending = self.pending, []
            if self.outbox:  # the job's work packets go out before its final packet can
                self._send_outbox(job)
            self.job = None
            self.job_conn = None
        failed = self.failed_job is job
        if failed:
            self.failed_job = None
        done = Finished(job, events, packet, after, link, link.epoch, failed)
        if self.committer is not None:
            self.committer.put(done)
            return b""
        self._store_finished([done])
        return self._packet(done)

    def _commit(self, batch: list[Finished]) -> None:
        """The committer's work: store the batch, then send each job's final packet on its
        connection (consecutive packets for one connection in one send)."""
        self._store_finished(batch)
        out: list[bytes] = []
        link: Link | None = None
        with self.send_lock:
            for done in batch:
                if done.link is not link:
                    self._send_finals(link, out)
                    link, out = done.link, []
                if done.epoch == done.link.epoch:
                    out.append(self._packet(done))
            self._send_finals(link, out)

    def _send_finals(self, link: Link | None, packets: list[bytes]) -> None:
        if link is None or not packets:
            return
        try:
            link.conn.send(b"".join(packets))
        except ServerUnavailable as exc:
            log.warning("%s; %d ended jobs go back to the server's queue", exc, len(packets))

    def _store_finished(self, batch: list[Finished]) -> None:
        """Write the events of every job of ``batch`` in one store write (each job's alone when
        the store refuses the batch for good), then run each job's ``after``."""
        if len(batch) == 1:
            done = batch[0]
            done.failed |= not self._write_events(done.job, done.events)
        else:
            events = [e for done in batch for e in done.events]
            try:
                self.store.write(events)
            except REFUSED_FOR_GOOD:  # nothing was written: find the job it was, store the rest
                for done in batch:
                    done.failed |= not self._write_events(done.job, done.events)
            except Exception as exc:
                handles = ", ".join(repr(done.job.handle) for done in batch)
                self._lost(f"jobs {handles}", len(events), exc)
                for done in batch:
                    done.failed = True
        for done in batch:
            done.after()

    def _packet(self, done: Finished) -> bytes:
        """The job's final packet, or under ``on_store_down="fail"`` WORK_WARNING + WORK_FAIL
        when a store write of the job failed (its record is incomplete)."""
        if done.failed and self.fail:
            return self._refuse(done.job, "not all of its events could be stored")
        return done.packet

    def _write(self, job: Job) -> None:
        """Write the queued events (caller holds the lock); failures are logged, never raised."""
        events = self.pending
        self.pending = []
        if not self._write_events(job, events) and self.fail:
            self.failed_job = job

    def _write_events(self, job: Job, events: list[Event]) -> bool:
        """Write ``events`` of ``job``; False when the store failed (logged, never raised). A
        batch the store refuses for good is recorded by :meth:`_rejected` (True)."""
        try:
            self.store.write(events)
        except REFUSED_FOR_GOOD as exc:  # refused for good: see _rejected
            self._rejected(job, events, exc)
        except Exception as exc:
            self._lost(f"job {job.handle!r}", len(events), exc)
            return False
        return True

    def _lost(self, whose: str, count: int, exc: Exception) -> None:
        if self.fail:
            log.error(
                "store down: %s failed (%d events of %s not stored): %s",
                self.store.url,
                count,
                whose,
                exc,
            )
        else:
            log.error(
                "store %s failed (%d events of %s lost): %s", self.store.url, count, whose, exc
            )
        self.hooks.store_failed(self.store.url, exc, count)

    def _rejected(self, job: Job, events: list[Event], exc: Exception) -> None:
        """The store refused a batch for good (a value over its limit): nothing of it was
        written; store :func:`~gearstash.store.contract.refusal_events` instead."""
        log.error(
            "store %s refused %d events of job %r: %s", self.store.url, len(events), job.handle, exc
        )
        self.hooks.store_failed(self.store.url, exc, len(events))
        try:
            self.store.write(refusal_events(events, exc))
        except Exception as again:
            log.error("store %s: cannot record the refusal either: %s", self.store.url, again)

    def _refuse(self, job: Job, why: str) -> bytes:
        message = (
            f"store down: failing job {job.handle!r} ({job.function}): {why} in {self.store.url}"
        )
        log.error("%s", message)
        text = ("gearstash: " + message).encode("utf-8", "replace")
        return encode_work(PacketType.WORK_WARNING, job.handle, text) + encode_request(
            PacketType.WORK_FAIL, job.handle
        )

    # ------------------------------------------------------------ running a job

    def _run(self, link: Link, assignment: JobAssignment) -> bytes:
        """Run one job; return the final packet for the server (its events already stored), or
        b"" when the committer sends it (see :meth:`_end`)."""
        conn = link.conn
        handle = assignment.handle
        name = assignment.function.decode("utf-8", "surrogateescape")
        registration = self.settings.functions.get(name)
        ttl = registration.ttl if registration is not None else None
        job = Job(
            self, JobKey(conn.server, handle, assignment.unique), name, assignment.workload, ttl
        )
        now = time.time()
        cap = self.settings.workload_max
        with self.lock:
            self.job, self.job_conn = job, conn
            self.since = self.leased = now
            self.pending = [
                Event(
                    EventKind.STARTED,
                    job.key,
                    now,
                    function=assignment.function,
                    worker=self.settings.identity,
                    ttl=ttl,
                    lease=self.settings.lease,
                    workload=captured_workload(assignment.workload, cap),
                )
            ]
            if self.fail:  # the start must be stored before the function runs
                self._write(job)
        if self.failed_job is job:
            self.failed_job = None
            with self.lock:
                self.job = self.job_conn = None
            return self._refuse(job, "its start could not be stored; not run")
        self.hooks.started(job)
        try:
            if registration is None:
                raise JobFailed(f"this worker does not serve {job.function!r}")
            result = to_bytes(registration.function(job))
        except JobFailed as exc:
            error = JobError("fail", stored_text(str(exc)))
            return self._end(
                link,
                job,
                Event(EventKind.FAILED, job.key, time.time(), error.message.encode(), ttl=ttl),
                encode_request(PacketType.WORK_FAIL, handle),
                lambda: self.hooks.failed(job, error),
            )
        except Exception as exc:
            message = stored_text(f"{type(exc).__name__}: {exc}")
            error = JobError("exception", message, stored_text(traceback.format_exc()))
            text = message.encode("utf-8", "replace")
            log.info("job %r (%s) raised %s", handle, job.function, message)
            return self._end(
                link,
                job,
                Event(
                    EventKind.EXCEPTION,
                    job.key,
                    time.time(),
                    text,
                    traceback=error.traceback,
                    ttl=ttl,
                ),
                encode_work(PacketType.WORK_EXCEPTION, handle, text),
                lambda: self.hooks.failed(job, error),
            )
        return self._end(
            link,
            job,
            Event(EventKind.COMPLETED, job.key, time.time(), result, ttl=ttl),
            encode_work(PacketType.WORK_COMPLETE, handle, result),
            lambda: self.hooks.completed(job, result),
        )


def _say_error(server: str, event: ErrorAnswer) -> None:
    """Log an ERROR a job server answered (one that asks for nothing to be sent instead)."""
    if event.no_work_output:
        log.warning(
            "job server %s does not take WORK_DATA/WORK_WARNING (%s): they are stored, no longer "
            "sent to it",
            server,
            event.error,
        )
    else:
        log.warning("job server %s answered ERROR %s", server, event.error)
