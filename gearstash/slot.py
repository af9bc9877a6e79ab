"""The worker's slots: one job at a time, on connections of their own to every server.

Internal to :class:`gearstash.worker.Worker` (which makes ``concurrency`` of them): the grab /
sleep / wake loop of each server link, reconnects with backoff, running one job and writing its
events to the store (batched, leases renewed, refused writes recorded) before the final packet.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
import traceback
from typing import TYPE_CHECKING

from gearstash.connection import Connection
from gearstash.errors import (
    REFUSED_FOR_GOOD,
    JobFailed,
    ProtocolError,
    ServerUnavailable,
)
from gearstash.protocol import Packet, PacketType, encode_request, encode_work
from gearstash.records import FINAL_EVENTS, Event, EventKind, JobError
from gearstash.worker import Job, to_bytes

if TYPE_CHECKING:
    from gearstash.worker import Worker

log = logging.getLogger("gearstash.worker")

_GRAB = encode_request(PacketType.GRAB_JOB_UNIQ)
_PRE_SLEEP = encode_request(PacketType.PRE_SLEEP)
_ASSIGN = frozenset({PacketType.JOB_ASSIGN_UNIQ, PacketType.JOB_ASSIGN, PacketType.JOB_ASSIGN_ALL})
_MAX_BACKOFF = 5.0
_SMALL_EVENTS = frozenset({EventKind.STARTED, EventKind.STATUS, EventKind.HEARTBEAT})


def _text(message: str) -> str:
    """Error text as stored: valid UTF-8 without NUL (which PostgreSQL text cannot hold), with
    NUL written ``\\x00`` and lone surrogates ``\\udcff``."""
    if "\0" in message:
        message = message.replace("\0", "\\x00")
    try:
        message.encode("utf-8")
    except UnicodeEncodeError:
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return message


_DOWN, _AWAKE, _SLEEPING = 0, 1, 2


class _Link:
    """One slot's connection to one server, and where it stands."""

    __slots__ = ("backoff", "conn", "grab_sent", "retry_at", "state", "was_up")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.state = _DOWN
        self.grab_sent = False
        self.retry_at = 0.0
        self.backoff = 0.1
        self.was_up = False


class _Slot:
    """One job at a time, on connections of its own to every server."""

    def __init__(self, worker: Worker, index: int) -> None:
        self.worker = worker
        self.index = index
        self.hooks = worker.hooks
        self.store = worker.store
        self.interval = worker.flush_interval
        self.lock = threading.Lock()
        self.job: Job | None = None
        self.fail = worker.on_store_down == "fail"
        self.failed_job: Job | None = None  # under "fail": the job a store write failed for
        self.links = [
            _Link(
                Connection(
                    s, connect_timeout=worker.connect_timeout, read_timeout=worker.read_timeout
                )
            )
            for s in worker.servers
        ]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._hello = b"".join(
            [encode_request(PacketType.SET_CLIENT_ID, worker.client_id.encode())]
            + [
                encode_request(PacketType.CAN_DO, r.name.encode())
                if r.timeout is None
                else encode_request(PacketType.CAN_DO_TIMEOUT, r.name.encode(), b"%d" % r.timeout)
                for r in worker.functions.values()
            ]
        )

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def close(self) -> None:
        for link in self.links:
            link.conn.close()
        self._wake_r.close()
        self._wake_w.close()

    # ------------------------------------------------------------ loop

    def run(self) -> None:
        stopping = self.worker._stopping
        while not stopping.is_set():
            self._reconnect_due()
            served = False
            for link in self.links:
                if link.state == _AWAKE and not stopping.is_set():
                    served = self._serve(link) or served
            if not served and not stopping.is_set():
                self._wait()

    def _serve(self, link: _Link) -> bool:
        """Grab and run at most one job on ``link``; True if one ran."""
        conn = link.conn
        try:
            if not link.grab_sent:
                conn.send(_GRAB)
            link.grab_sent = False
            while True:
                packet = conn.read_packet()
                kind = packet.kind
                if kind in _ASSIGN:
                    final = self._run(conn, packet)
                    if self.worker._stopping.is_set() or self._last_job():
                        conn.send(final)
                    else:
                        conn.send(final + _GRAB)
                        link.grab_sent = True
                    return True
                if kind == PacketType.NO_JOB:
                    conn.send(_PRE_SLEEP)
                    link.state = _SLEEPING
                    return False
                if kind == PacketType.ERROR:
                    log.warning("job server %s answered ERROR %r", conn.server, packet.args)
                elif kind != PacketType.NOOP:
                    log.warning("job server %s sent unexpected %s; ignored", conn.server, kind.name)
        except (ServerUnavailable, ProtocolError) as exc:
            self._down(link, exc)
            return False

    def _last_job(self) -> bool:
        self.worker._job_done()
        return self.worker._stopping.is_set()

    def _wait(self) -> None:
        """Sleep until a sleeping link gets NOOP, a reconnect is due, or we are woken."""
        now = time.monotonic()
        timeout = 1.0
        for link in self.links:
            if link.state == _DOWN:
                timeout = min(timeout, max(link.retry_at - now, 0.0))
        with selectors.DefaultSelector() as sel:
            sel.register(self._wake_r, selectors.EVENT_READ, None)
            for link in self.links:
                if link.state == _SLEEPING:
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
                    if packet.kind == PacketType.NOOP:
                        link.state = _AWAKE
                    elif packet.kind == PacketType.ERROR:
                        log.warning(
                            "job server %s answered ERROR %r", link.conn.server, packet.args
                        )
                    else:
                        raise ProtocolError(
                            f"job server {link.conn.server} sent {packet.kind.name} to a sleeping "
                            "worker"
                        )
            except (ServerUnavailable, ProtocolError) as exc:
                self._down(link, exc)

    def _reconnect_due(self) -> None:
        now = time.monotonic()
        for link in self.links:
            if link.state != _DOWN or link.retry_at > now:
                continue
            conn = link.conn
            try:
                conn.connect()
                conn.send(self._hello)
            except ServerUnavailable as exc:
                conn.close()
                if link.was_up or link.backoff == 0.1:
                    log.warning("%s; retrying", exc)
                link.was_up = False
                link.retry_at = now + link.backoff
                link.backoff = min(link.backoff * 2, _MAX_BACKOFF)
                continue
            if not link.was_up:
                log.info("serving %s on %s", ", ".join(self.worker.functions), conn.server)
            link.state, link.grab_sent, link.backoff, link.was_up = _AWAKE, False, 0.1, True

    def _down(self, link: _Link, exc: Exception) -> None:
        link.conn.close()
        if link.was_up:
            log.warning("%s; reconnecting", exc)
        link.state = _DOWN
        link.grab_sent = False
        link.retry_at = time.monotonic() + link.backoff

    # ------------------------------------------------------------ jobs

    def record(self, job: Job, event: Event) -> None:
        """Queue ``event`` for the store; write the queue when the oldest event waited long enough."""
        with self.lock:
            pending = job._pending
            if not pending:
                job._since = event.at
            pending.append(event)
            if event.at - job._since >= self.interval:
                self._write(job)

    def flush_due(self, now: float) -> None:
        """Called by the flush thread: write the current job's queue if it waited long enough."""
        job = self.job
        if job is None or not job._pending or now - job._since < self.interval:
            return
        with self.lock:
            if job._pending:
                self._write(job)

    def renew_due(self, now: float, every: float) -> None:
        """Called by the flush thread: renew the current job's lease when ``every`` seconds passed.

        The heartbeat is written at once, with whatever events were queued before it.
        """
        job = self.job
        lease = self.worker.lease
        if job is None or lease is None or now - job._leased < every:
            return
        with self.lock:
            if self.job is job:
                job._leased = now
                job._pending.append(
                    Event(EventKind.HEARTBEAT, job.key, now, ttl=job._ttl, lease=lease)
                )
                self._write(job)

    def finish(self, job: Job, event: Event) -> None:
        """Queue the job's final event and write everything queued, before the server is told."""
        with self.lock:
            job._pending.append(event)
            self._write(job)
            self.job = None

    def _write(self, job: Job) -> None:
        """Write the job's queued events (caller holds the lock); failures are logged, never raised."""
        events = job._pending
        job._pending = []
        try:
            self.store.write(events)
        except REFUSED_FOR_GOOD as exc:  # refused for good: see _rejected
            self._rejected(job, events, exc)
        except Exception as exc:
            if self.fail:
                self.failed_job = job
                log.error(
                    "store down: %s failed (%d events of job %r not stored): %s",
                    self.store.url,
                    len(events),
                    job.handle,
                    exc,
                )
            else:
                log.error(
                    "store %s failed (%d events of job %r lost): %s",
                    self.store.url,
                    len(events),
                    job.handle,
                    exc,
                )
            self.hooks.store_failed(self.store.url, exc, len(events))

    def _rejected(self, job: Job, events: list[Event], exc: Exception) -> None:
        """The store refused a batch for good (a value over its limit): nothing of it was written.
        Keep the record honest instead: its small events, a warning with the reason, and when
        the batch ended the job, a ``failed`` end saying the outcome could not be stored."""
        log.error(
            "store %s refused %d events of job %r: %s", self.store.url, len(events), job.handle, exc
        )
        self.hooks.store_failed(self.store.url, exc, len(events))
        now = time.time()
        keep = [e for e in events if e.kind in _SMALL_EVENTS]
        note = f"gearstash: the store refused {len(events)} events: {exc}"
        keep.append(Event(EventKind.WARNING, job.key, now, note.encode(), ttl=job._ttl))
        if events[-1].kind in FINAL_EVENTS:
            why = f"gearstash: the job ended but its outcome could not be stored: {exc}"
            keep.append(Event(EventKind.FAILED, job.key, now, why.encode(), ttl=job._ttl))
        try:
            self.store.write(keep)
        except Exception as again:
            log.error("store %s: cannot record the refusal either: %s", self.store.url, again)

    def _final(self, job: Job, packet: bytes) -> bytes:
        """``packet``, or under ``on_store_down="fail"`` WORK_WARNING + WORK_FAIL when a store
        write of ``job`` failed (its record is incomplete)."""
        if self.failed_job is not job:
            return packet
        self.failed_job = None
        return self._refuse(job, "not all of its events could be stored")

    def _refuse(self, job: Job, why: str) -> bytes:
        message = (
            f"store down: failing job {job.handle!r} ({job.function}): {why} in {self.store.url}"
        )
        log.error("%s", message)
        text = ("gearstash: " + message).encode("utf-8", "replace")
        return encode_work(PacketType.WORK_WARNING, job.handle, text) + encode_request(
            PacketType.WORK_FAIL, job.handle
        )

    def _run(self, conn: Connection, packet: Packet) -> bytes:
        """Run one job; return the final packet for the server (its events already stored)."""
        args = packet.args
        kind = packet.kind
        if kind is PacketType.JOB_ASSIGN_UNIQ:
            handle, function, unique, workload = args
        elif kind is PacketType.JOB_ASSIGN:
            handle, function, workload = args
            unique = b""
        else:  # JOB_ASSIGN_ALL: handle, function, unique, reducer, workload
            handle, function, unique, _reducer, workload = args
        job = Job(self, conn, handle, function, unique, workload)
        registration = self.worker.functions.get(job.function)
        ttl = job._ttl = registration.ttl if registration is not None else None
        job._since = job._leased = now = time.time()
        job._pending.append(
            Event(
                EventKind.STARTED,
                job.key,
                now,
                function=function,
                worker=self.worker.identity,
                ttl=ttl,
                lease=self.worker.lease,
            )
        )
        if self.fail:  # the start must be stored before the function runs
            with self.lock:
                self._write(job)
            if self.failed_job is job:
                self.failed_job = None
                return self._refuse(job, "its start could not be stored; not run")
        self.job = job
        self.hooks.started(job)
        try:
            if registration is None:
                raise JobFailed(f"this worker does not serve {job.function!r}")
            result = to_bytes(registration.function(job))
        except JobFailed as exc:
            error = JobError("fail", _text(str(exc)))
            self.finish(
                job,
                Event(EventKind.FAILED, job.key, time.time(), error.message.encode(), ttl=ttl),
            )
            self.hooks.failed(job, error)
            return self._final(job, encode_request(PacketType.WORK_FAIL, handle))
        except Exception as exc:
            message = _text(f"{type(exc).__name__}: {exc}")
            error = JobError("exception", message, _text(traceback.format_exc()))
            text = message.encode("utf-8", "replace")
            self.finish(
                job,
                Event(
                    EventKind.EXCEPTION,
                    job.key,
                    time.time(),
                    text,
                    traceback=error.traceback,
                    ttl=ttl,
                ),
            )
            self.hooks.failed(job, error)
            log.info("job %r (%s) raised %s", handle, job.function, message)
            return self._final(job, encode_work(PacketType.WORK_EXCEPTION, handle, text))
        self.finish(job, Event(EventKind.COMPLETED, job.key, time.time(), result, ttl=ttl))
        self.hooks.completed(job, result)
        return self._final(job, encode_work(PacketType.WORK_COMPLETE, handle, result))
