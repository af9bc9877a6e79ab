"""One worker (or client) connection and its own connection upstream, relayed both ways.

A :class:`Pair` passes every frame on unchanged in meaning, with three exceptions that keep a
worker's jobs capturable:

* a plain GRAB_JOB goes upstream as GRAB_JOB_UNIQ, and the JOB_ASSIGN_UNIQ answering it comes
  back to the worker as the JOB_ASSIGN it asked for (so every record has the job's unique);
* a job's last packet (WORK_COMPLETE / WORK_FAIL / WORK_EXCEPTION) goes upstream only once its
  events are stored (or spooled); frames the worker sends after it wait behind it, in order;
* a WORK_STATUS whose numbers are no numbers closes the pair (it cannot be stored honestly).

Only jobs assigned *on this connection* are captured, so nothing a worker sends can reach another
job's record. A pair whose worker or upstream side breaks the framing (bad magic, oversized
packet, endless text line) is closed, with the reason logged; the other pairs go on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast

from gearstash.errors import ProtocolError
from gearstash.model.records import (
    Event,
    EventKind,
    JobError,
    JobKey,
    JobRef,
    captured_workload,
)
from gearstash.protocol.packets import REQ, RES, PacketType, encode_request, encode_response
from gearstash.proxy.framing import Frame, Splitter, split_args

if TYPE_CHECKING:
    from gearstash.proxy.capture import CaptureWriter
    from gearstash.proxy.routes import Route
    from gearstash.spine.manager import EventHooks

log = logging.getLogger("gearstash.proxy")

_T = PacketType
_GRAB_UNIQ = encode_request(_T.GRAB_JOB_UNIQ)
_GRAB_JOB, _GRAB_JOB_UNIQ, _GRAB_JOB_ALL = (
    int(_T.GRAB_JOB),
    int(_T.GRAB_JOB_UNIQ),
    int(_T.GRAB_JOB_ALL),
)
_JOB_ASSIGN, _JOB_ASSIGN_UNIQ, _JOB_ASSIGN_ALL = (
    int(_T.JOB_ASSIGN),
    int(_T.JOB_ASSIGN_UNIQ),
    int(_T.JOB_ASSIGN_ALL),
)
_NO_JOB = int(_T.NO_JOB)
_WORK_STATUS, _WORK_DATA, _WORK_WARNING = (
    int(_T.WORK_STATUS),
    int(_T.WORK_DATA),
    int(_T.WORK_WARNING),
)
_WORK_COMPLETE, _WORK_FAIL, _WORK_EXCEPTION = (
    int(_T.WORK_COMPLETE),
    int(_T.WORK_FAIL),
    int(_T.WORK_EXCEPTION),
)
_GRABS = frozenset({_GRAB_JOB, _GRAB_JOB_UNIQ, _GRAB_JOB_ALL})
_FINALS = frozenset({_WORK_COMPLETE, _WORK_FAIL, _WORK_EXCEPTION})
_ASSIGNS = frozenset({_JOB_ASSIGN, _JOB_ASSIGN_UNIQ, _JOB_ASSIGN_ALL})
_WORK = frozenset(
    {_WORK_STATUS, _WORK_DATA, _WORK_WARNING, _WORK_COMPLETE, _WORK_FAIL, _WORK_EXCEPTION}
)
_HOLD_PAUSE = 256  # frames waiting behind a final packet before the worker is paused


class ProxyJob:
    """A job in the hands of a proxied worker, as observers see it (a
    :class:`gearstash.model.records.JobInfo`)."""

    __slots__ = ("function", "handle", "key", "leased", "server", "unique", "workload")

    def __init__(
        self, server: str, handle: bytes, function: bytes, unique: bytes, workload: bytes
    ) -> None:
        self.handle = handle
        self.unique = unique
        self.function: str = function.decode("utf-8", "surrogateescape")
        self.workload = workload
        self.server = server
        self.key = JobKey(server, handle, unique)
        self.leased = time.time()

    def __repr__(self) -> str:
        return f"<ProxyJob {self.function} {self.handle!r} unique={self.unique!r}>"

    @property
    def ref(self) -> JobRef:
        """The reference a client can fetch this job with."""
        return JobRef(self.handle, self.server, self.unique)


class Hub(Protocol):
    """What a pair needs of the proxy that made it (:class:`gearstash.proxy.server.Proxy`)."""

    writer: CaptureWriter
    hooks: EventHooks
    max_packet: int
    connect_timeout: float
    identity: str
    lease: float | None
    workload_max: int | None
    pairs: set[Pair]


class _Side(asyncio.Protocol):
    """asyncio's callbacks of one side, handed to the pair."""

    def __init__(self, pair: Pair, upstream: bool) -> None:
        self.pair = pair
        self.upstream = upstream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)  # uvloop's are no asyncio.Transport subclass
        if self.upstream:
            self.pair.upstream_made(stream)
        else:
            self.pair.accepted(stream)

    def data_received(self, data: bytes) -> None:
        if self.upstream:
            self.pair.from_upstream(data)
        else:
            self.pair.from_worker(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pair.lost(self.upstream, exc)

    def pause_writing(self) -> None:
        self.pair.backlog(self.upstream, True)

    def resume_writing(self) -> None:
        self.pair.backlog(self.upstream, False)


class Pair:
    """A worker-side connection, its own upstream connection, and the jobs assigned on it."""

    def __init__(self, proxy: Hub, route: Route) -> None:
        self.proxy = proxy
        self.route = route
        self.server = route.server_name
        self.writer = proxy.writer
        self.hooks = proxy.hooks
        self.worker: asyncio.Transport | None = None
        self.up: asyncio.Transport | None = None
        self.peer = "?"
        self.jobs: dict[bytes, ProxyJob] = {}
        self.grabs: deque[int] = deque()
        self.held: list[Frame] | None = []  # frames waiting (for upstream, or behind a final)
        self.finals = 0  # final packets waiting for the store
        self.closed = False
        self.draining = False
        self.paused = False  # the worker side's reading (too much held, or upstream backlogged)
        self.up_paused = False
        self.backlogged = {False: False, True: False}  # side -> its send buffer is full
        self._connecting: asyncio.Task[None] | None = None
        self._from_worker = Splitter(REQ, proxy.max_packet)
        self._from_up = Splitter(RES, proxy.max_packet)

    def __repr__(self) -> str:
        return f"<Pair {self.peer} -> {self.route.upstream}>"

    # ------------------------------------------------------------ set-up

    def worker_protocol(self) -> asyncio.Protocol:
        """The protocol for the accepted worker connection."""
        return _Side(self, False)

    def accepted(self, transport: asyncio.Transport) -> None:
        self.worker = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"{peer[0]}:{peer[1]}"
        self.proxy.pairs.add(self)
        self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        route = self.route
        loop = asyncio.get_running_loop()
        try:
            delay = route.wait_for_retry()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.closed:
                return
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Side(self, True), route.upstream_host, route.upstream_port
                ),
                self.proxy.connect_timeout,
            )
        except (TimeoutError, OSError) as exc:
            route.failed(exc)
            self.close(None)
            return
        route.succeeded()

    def upstream_made(self, transport: asyncio.Transport) -> None:
        self.up = transport
        if self.closed:
            transport.close()
            return
        self._release()

    # ------------------------------------------------------------ worker -> upstream

    def from_worker(self, data: bytes) -> None:
        try:
            frames = self._from_worker.feed(data)
        except ProtocolError as exc:
            self.close(f"worker {self.peer} sent what is no Gearman: {exc}")
            return
        if self.held is not None:
            self.held += frames
            self._flow()
            return
        self._relay_up(frames, 0)

    def backlog(self, upstream: bool, full: bool) -> None:
        """A side's send buffer went over (or back under) asyncio's high-water mark: stop (or
        go on) reading from the other side, so a slow reader cannot make the proxy hoard."""
        self.backlogged[upstream] = full
        self._flow()

    def _flow(self) -> None:
        """Pause or resume reading on each side as the held frames and the backlogs ask."""
        held = self.held is not None and len(self.held) > _HOLD_PAUSE
        pause_worker = held or self.backlogged[True]
        if self.worker is not None and pause_worker != self.paused and not self.closed:
            self.paused = pause_worker
            (self.worker.pause_reading if pause_worker else self.worker.resume_reading)()
        pause_up = self.backlogged[False]
        if self.up is not None and pause_up != self.up_paused and not self.closed:
            self.up_paused = pause_up
            (self.up.pause_reading if pause_up else self.up.resume_reading)()

    def _relay_up(self, frames: list[Frame], start: int, first: bytes = b"") -> None:
        """Pass ``first`` and ``frames[start:]`` upstream; stop behind a final packet of a
        captured job."""
        out: list[bytes] = [first] if first else []
        jobs = self.jobs
        try:
            for index in range(start, len(frames)):
                frame = frames[index]
                num = frame.num
                if num in _GRABS:
                    self.grabs.append(num)
                    out.append(_GRAB_UNIQ if num == _GRAB_JOB else frame.raw)
                elif num in _WORK and jobs:
                    args = split_args(frame)
                    job = jobs.get(args[0])
                    if job is not None and self._work(job, num, args, frame.raw):
                        self.held = frames[index + 1 :]
                        break
                    out.append(frame.raw)
                    if self.draining and not self.jobs and num in _FINALS and job is not None:
                        break  # stopping: its last job ended; nothing after it goes up
                else:
                    out.append(frame.raw)
        except ProtocolError as exc:
            if out and self.up is not None:
                self.up.write(b"".join(out))
                out = []
            self.close(f"worker {self.peer}: {exc}")
            return
        finally:  # what came before a bad frame still goes up, before the pair closes
            if out and self.up is not None and not self.up.is_closing():
                self.up.write(b"".join(out))
        if self.draining and not self.jobs and not self.finals and not self.closed:
            self.close(None)  # stopping, and its last job just ended

    def _work(self, job: ProxyJob, num: int, args: tuple[bytes, ...], raw: bytes) -> bool:
        """Capture one WORK_* packet of ``job``; True when it ended the job (``raw`` then goes
        upstream once stored)."""
        key, now, hooks = job.key, time.time(), self.hooks
        if num == _WORK_DATA:
            self.writer.add([Event(EventKind.DATA, key, now, args[1])])
            hooks.data(job, args[1])
            return False
        if num == _WORK_STATUS:
            try:
                numerator, denominator = int(args[1]), int(args[2])
            except ValueError:
                raise ProtocolError(
                    f"WORK_STATUS of job {job.handle!r} with numbers {args[1]!r}/{args[2]!r}"
                ) from None
            self.writer.add(
                [Event(EventKind.STATUS, key, now, numerator=numerator, denominator=denominator)]
            )
            hooks.status(job, numerator, denominator)
            return False
        if num == _WORK_WARNING:
            self.writer.add([Event(EventKind.WARNING, key, now, args[1])])
            hooks.warning(job, args[1])
            return False
        del self.jobs[job.handle]
        if num == _WORK_COMPLETE:
            event = Event(EventKind.COMPLETED, key, now, args[1])
            done: Callable[[], None] = lambda: hooks.completed(job, args[1])  # noqa: E731
        elif num == _WORK_FAIL:
            event = Event(EventKind.FAILED, key, now)
            done = lambda: hooks.failed(job, JobError("fail", ""))  # noqa: E731
        else:
            event = Event(EventKind.EXCEPTION, key, now, args[1])
            text = args[1].decode("utf-8", "replace").replace("\0", "\\x00")
            done = lambda: hooks.failed(job, JobError("exception", text))  # noqa: E731
        if self.writer.write_now([event]):  # an in-process store: stored already
            done()
            return False
        self.finals += 1

        def stored() -> None:
            self.finals -= 1
            done()
            if self.closed or (self.draining and not self.jobs):
                if self.up is not None and not self.up.is_closing():
                    self.up.write(raw)
                if not self.closed:
                    self.close(None)
                elif not self.finals and self.up is not None:
                    self.up.close()
                return
            self._release(raw)  # the final packet, and what waited behind it, in one write

        self.writer.add_final([event], stored)
        return True

    def _release(self, first: bytes = b"") -> None:
        """Relay ``first`` (a stored final packet) and what waited (for the upstream connection
        or behind that packet)."""
        held = self.held
        self.held = None
        self._flow()
        self._relay_up(held or [], 0, first)

    # ------------------------------------------------------------ upstream -> worker

    def from_upstream(self, data: bytes) -> None:
        try:
            frames = self._from_up.feed(data)
            out = [self._down(frame) for frame in frames]
        except ProtocolError as exc:
            self.close(f"upstream {self.route.upstream} (for worker {self.peer}): {exc}")
            return
        if self.worker is not None:
            self.worker.write(b"".join(out))

    def _down(self, frame: Frame) -> bytes:
        num = frame.num
        if num == _NO_JOB:
            if self.grabs:
                self.grabs.popleft()
            return frame.raw
        if num not in _ASSIGNS:
            return frame.raw
        asked = self.grabs.popleft() if self.grabs else num
        args = split_args(frame)
        if num == _JOB_ASSIGN_UNIQ:
            handle, function, unique, workload = args
        elif num == _JOB_ASSIGN:
            handle, function, workload = args
            unique = b""
        else:
            handle, function, unique, _reducer, workload = args
        self._start(handle, function, unique, workload)
        if asked == _GRAB_JOB and num == _JOB_ASSIGN_UNIQ:
            return encode_response(_T.JOB_ASSIGN, handle, function, workload)
        return frame.raw

    def _start(self, handle: bytes, function: bytes, unique: bytes, workload: bytes) -> None:
        job = ProxyJob(self.server, handle, function, unique, workload)
        self.jobs[handle] = job
        self.writer.add(
            [
                Event(
                    EventKind.STARTED,
                    job.key,
                    job.leased,
                    function=function,
                    worker=f"{self.proxy.identity} for {self.peer}",
                    lease=self.proxy.lease,
                    workload=captured_workload(workload, self.proxy.workload_max),
                )
            ]
        )
        self.hooks.started(job)

    # ------------------------------------------------------------ heartbeats and the end

    def renew(self, now: float, every: float, lease: float) -> None:
        """Queue a heartbeat for every job in hand whose lease was renewed ``every`` s ago."""
        due = [job for job in self.jobs.values() if now - job.leased >= every]
        for job in due:
            job.leased = now
        if due:
            self.writer.add([Event(EventKind.HEARTBEAT, j.key, now, lease=lease) for j in due])

    def drain(self) -> None:
        """Stopping: close now when no job is in hand, else once the last one ended."""
        self.draining = True
        if not self.jobs and not self.finals:
            self.close(None)

    def lost(self, upstream: bool, exc: Exception | None) -> None:
        if upstream:
            self.up = None
            if not self.closed:
                why = f": {exc}" if exc else ""
                log.info(
                    "upstream %s closed the connection of worker %s%s",
                    self.route.upstream,
                    self.peer,
                    why,
                )
        else:
            self.worker = None
        self.close(None)

    def close(self, reason: str | None) -> None:
        """Close both sides (the upstream side once stored final packets went out). Jobs in hand
        are left to their leases."""
        if reason:
            log.warning("closing %s: %s", self, reason)
        if self.closed:
            return
        self.closed = True
        self.proxy.pairs.discard(self)
        if self.jobs:
            log.info(
                "worker %s left %d jobs unfinished (left to their leases): %s",
                self.peer,
                len(self.jobs),
                ", ".join(repr(h) for h in self.jobs),
            )
            self.jobs.clear()
        self.held = None
        if self.worker is not None:
            self.worker.close()
        if self.up is not None and not self.finals:
            self.up.close()
