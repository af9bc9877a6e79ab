"""The client helper: submit jobs, ask their live status, fetch what was stored, wait.

A :class:`Client` talks to several job servers and one store. It always sends a unique (a random
UUID when the caller gives none; at most 63 bytes) and places a job on the server picked by a hash of
its unique, falling back to the others when that server is down, so the same unique lands on the same
server and coalesces there.

:meth:`Client.fetch` merges the server's live status with the stored record into one definite
:class:`~gearstash.records.State`; :meth:`Client.fetch_many` does the same for many jobs with one
pipelined status round trip per server and one store query.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import pluggy

from gearstash import config
from gearstash.connection import DEFAULT_CONNECT_TIMEOUT, Connection, servers_from
from gearstash.errors import (
    ConfigError,
    GearstashError,
    JobNotFound,
    ProtocolError,
    ServerError,
    ServerUnavailable,
    WaitTimeout,
)
from gearstash.plugins import open_store
from gearstash.protocol import (
    MAX_UNIQUE,
    ErrorReply,
    Packet,
    PacketType,
    StatusReply,
    UniqueStatusReply,
    check_unique,
    encode_request,
    parse_int,
)
from gearstash.records import (
    Event,
    EventKind,
    JobKey,
    JobRecord,
    JobRef,
    State,
)
from gearstash.store import Store, delete, get_after, watch
from gearstash.tokens import TokenSigner
from gearstash.views import JobView, Status, merge_state, successor

log = logging.getLogger("gearstash.client")

_SUBMIT = {
    ("normal", False): PacketType.SUBMIT_JOB,
    ("high", False): PacketType.SUBMIT_JOB_HIGH,
    ("low", False): PacketType.SUBMIT_JOB_LOW,
    ("normal", True): PacketType.SUBMIT_JOB_BG,
    ("high", True): PacketType.SUBMIT_JOB_HIGH_BG,
    ("low", True): PacketType.SUBMIT_JOB_LOW_BG,
}
_WORK = frozenset(
    {
        PacketType.WORK_DATA,
        PacketType.WORK_WARNING,
        PacketType.WORK_STATUS,
        PacketType.WORK_COMPLETE,
        PacketType.WORK_FAIL,
        PacketType.WORK_EXCEPTION,
    }
)
STATUS_BATCH = 1000

RefLike = JobRef | str | bytes
BatchJob = tuple[str | bytes, bytes | str] | tuple[str | bytes, bytes | str, bytes | str | None]


def as_ref(ref: RefLike) -> JobRef:
    """A :class:`JobRef` from a reference, its string form or a bare handle."""
    return ref if isinstance(ref, JobRef) else JobRef.parse(ref)


class Client:
    """Submit jobs and read them back by handle.

    :param servers: ``host[:port]`` addresses (default ``$GEARSTASH_SERVERS`` or ``127.0.0.1:4730``).
    :param store: a store object or URL (default ``$GEARSTASH_STORE``, the config file's ``store``
        or the SQLite default store, see :mod:`gearstash.config`);
        opened on first use.
    :param connect_timeout: seconds to wait for a TCP connection.
    :param timeout: seconds to wait for any one answer from a server.
    :param mark_submissions: write a ``submitted`` event to the store for every background job
        submitted (the job then reads ``queued`` from the store alone, ``lost`` when the server
        forgot it, and is found again after a persistent-queue server replays it under a new
        handle). A failed marker write is logged, never raised: the job is submitted.

    Thread-safe: each server connection is used under its own lock.
    """

    def __init__(
        self,
        servers: Iterable[str] | str | None = None,
        *,
        store: Store | str | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        timeout: float = 30.0,
        plugin_manager: pluggy.PluginManager | None = None,
        mark_submissions: bool = True,
    ) -> None:
        self.mark_submissions = mark_submissions
        self.servers = servers_from(servers if servers is not None else config.servers())
        self._conns = {
            s: Connection(s, connect_timeout=connect_timeout, read_timeout=timeout)
            for s in self.servers
        }
        self._locks = {s: threading.Lock() for s in self.servers}
        self._store: Store | None = store if not isinstance(store, str | None) else None
        self._store_url = store if isinstance(store, str) else None
        self._owns_store = self._store is None
        self._pm = plugin_manager
        self.timeout = timeout

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection, and the store if the client opened it."""
        for conn in self._conns.values():
            conn.close()
        if self._owns_store and self._store is not None:
            self._store.close()
            self._store = None

    @property
    def store(self) -> Store:
        """The store, opened on first use."""
        if self._store is None:
            url = self._store_url or config.store_url()
            self._store = open_store(url, self._pm)
        return self._store

    # ------------------------------------------------------------ connections

    def _conn(self, server: str) -> Connection:
        """The open connection to ``server`` (caller holds its lock)."""
        conn = self._conns[server]
        if not conn.connected:
            conn.connect()
            conn.send(encode_request(PacketType.OPTION_REQ, b"exceptions"))
            reply = self._expect(conn, PacketType.OPTION_RES)
            if reply.args[0] != b"exceptions":
                conn.close()
                raise ProtocolError(f"job server {server} answered OPTION_RES {reply.args[0]!r}")
        return conn

    def _expect(self, conn: Connection, kind: PacketType) -> Packet:
        """Read until a ``kind`` packet, skipping stray WORK_* packets; ERROR raises ServerError."""
        while True:
            packet = conn.read_packet()
            if packet.kind == kind:
                return packet
            if packet.kind == PacketType.ERROR:
                err = ErrorReply.from_packet(packet)
                raise ServerError(err.code, err.text, server=conn.server)
            if packet.kind in _WORK or packet.kind == PacketType.NOOP:
                continue
            conn.close()
            raise ProtocolError(
                f"job server {conn.server} sent {packet.kind.name} where {kind.name} was expected"
            )

    def placement(self, unique: bytes) -> list[str]:
        """Servers in the order a job with ``unique`` is tried: its hashed home first."""
        n = len(self.servers)
        start = zlib.crc32(unique) % n
        return [self.servers[(start + i) % n] for i in range(n)]

    # ------------------------------------------------------------ submit

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
        ref = self._submit_one(packet, uniq)
        if self.mark_submissions:
            self._mark(ref, fn)
        return ref

    def _submit_one(self, packet: bytes, uniq: bytes) -> JobRef:
        """Send one SUBMIT_* ``packet`` to the unique's server, failing over to the others."""
        errors: list[str] = []
        for server in self.placement(uniq):
            with self._locks[server]:
                try:
                    conn = self._conn(server)
                    conn.send(packet)
                    created = self._expect(conn, PacketType.JOB_CREATED)
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
        function and unique). Raises ServerError when a server refuses a job, after the jobs
        submitted before it were marked; ``exc.submitted`` holds their references.
        """
        kind = _SUBMIT.get((priority, True))
        if kind is None:
            raise ConfigError(f"priority must be normal, high or low, not {priority!r}")
        prepared = [self._prepare(job[0], job[1], job[2] if len(job) > 2 else None) for job in jobs]
        refs: list[JobRef | None] = [None] * len(prepared)
        by_server: dict[str, list[int]] = {}
        for index, (_fn, _data, uniq) in enumerate(prepared):
            by_server.setdefault(self.placement(uniq)[0], []).append(index)
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
            done = [r for r in refs if r is not None]
            self._mark_many(done, prepared, refs)
            exc.submitted = done
            raise
        out = [r for r in refs if r is not None]
        self._mark_many(out, prepared, refs)
        return out

    def _pipeline_submit(self, server: str, packets: list[bytes], handles: list[bytes]) -> None:
        """Send ``packets`` to ``server`` at once and append their JOB_CREATED handles, in order,
        to ``handles``.

        Fewer handles than packets when the server went away midway (the caller retries the
        rest); an ERROR reply raises ServerError (the connection is closed: the unread replies
        would answer the next call).
        """
        with self._locks[server]:
            try:
                conn = self._conn(server)
                conn.send(b"".join(packets))
                for _ in packets:
                    handles.append(self._expect(conn, PacketType.JOB_CREATED).args[0])
            except ServerUnavailable:
                return
            except BaseException:
                self._conns[server].close()
                raise

    def _mark_many(
        self,
        done: list[JobRef],
        prepared: list[tuple[bytes, bytes, bytes]],
        refs: list[JobRef | None],
    ) -> None:
        if not self.mark_submissions or not done:
            return
        now = time.time()
        events = [
            Event(
                EventKind.SUBMITTED,
                JobKey(r.server or "", r.handle, r.unique or b""),
                now,
                function=prepared[i][0],
            )
            for i, r in enumerate(refs)
            if r is not None
        ]
        try:
            self.store.write(events)
        except GearstashError as exc:
            log.warning(
                "%d jobs submitted, but their submissions were not recorded: %s", len(events), exc
            )

    def _mark(self, ref: JobRef, function: bytes) -> None:
        """Write the ``submitted`` marker of a background job (failures are only logged)."""
        key = JobKey(ref.server or "", ref.handle, ref.unique or b"")
        try:
            self.store.write([Event(EventKind.SUBMITTED, key, time.time(), function=function)])
        except GearstashError as exc:
            log.warning("job %s submitted, but its submission was not recorded: %s", ref, exc)

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
        for server in self.placement(uniq):
            with self._locks[server]:
                try:
                    conn = self._conn(server)
                    conn.send(packet)
                    handle = self._expect(conn, PacketType.JOB_CREATED).args[0]
                except ServerUnavailable as exc:
                    errors.append(str(exc))
                    continue
                key = JobKey(server, handle, uniq)
                record = JobRecord(key, function=fn)
                try:
                    while not record.state.final:
                        wait = None if deadline is None else deadline - time.monotonic()
                        if wait is not None and wait <= 0:
                            raise WaitTimeout(f"job {handle!r} did not finish within {timeout} s")
                        p = conn.read_packet(wait if wait is not None else -1.0)
                        if p.kind not in _WORK or p.args[0] != handle:
                            if p.kind == PacketType.ERROR:
                                err = ErrorReply.from_packet(p)
                                raise ServerError(err.code, err.text, server=server)
                            continue
                        self._apply(record, p, on_data, on_warning, on_status)
                except BaseException:
                    conn.close()  # the rest of this job's packets would confuse the next call
                    raise
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

    # ------------------------------------------------------------ status

    def _status_batch(self, server: str, handles: Sequence[bytes]) -> dict[bytes, Status]:
        """GET_STATUS for many handles on one server, pipelined. Raises ServerUnavailable."""
        out: dict[bytes, Status] = {}
        with self._locks[server]:
            conn = self._conn(server)
            try:
                for start in range(0, len(handles), STATUS_BATCH):
                    batch = handles[start : start + STATUS_BATCH]
                    conn.send(b"".join(encode_request(PacketType.GET_STATUS, h) for h in batch))
                    for _ in batch:
                        reply = StatusReply.from_packet(self._expect(conn, PacketType.STATUS_RES))
                        out[reply.handle] = Status(
                            reply.known, reply.running, reply.numerator, reply.denominator, server
                        )
            except BaseException:
                conn.close()  # unread replies of this batch would answer the next call
                raise
        return out

    def _unique_status_batch(self, server: str, uniques: Sequence[bytes]) -> dict[bytes, Status]:
        """GET_STATUS_UNIQUE for many uniques on one server, pipelined. Raises ServerUnavailable."""
        out: dict[bytes, Status] = {}
        with self._locks[server]:
            conn = self._conn(server)
            try:
                for start in range(0, len(uniques), STATUS_BATCH):
                    batch = uniques[start : start + STATUS_BATCH]
                    conn.send(
                        b"".join(encode_request(PacketType.GET_STATUS_UNIQUE, u) for u in batch)
                    )
                    for _ in batch:
                        r = UniqueStatusReply.from_packet(
                            self._expect(conn, PacketType.STATUS_RES_UNIQUE)
                        )
                        out[r.unique] = Status(
                            r.known,
                            r.running,
                            r.numerator,
                            r.denominator,
                            server,
                            r.waiting_clients,
                        )
            except BaseException:
                conn.close()
                raise
        return out

    def _unique_statuses(self, refs: Sequence[JobRef]) -> dict[JobRef, Status]:
        """Live status by unique for each reference (on its server, else the first that knows
        it); references no server answered for are left out."""
        wanted: dict[str, list[bytes]] = {}
        for ref in refs:
            if ref.unique is None or len(ref.unique) > MAX_UNIQUE:
                continue
            for server in [ref.server] if ref.server else self.servers:
                if server in self._conns:
                    wanted.setdefault(server, []).append(ref.unique)
        answers: dict[tuple[str, bytes], Status] = {}
        for server, uniques in wanted.items():
            try:
                batch = self._unique_status_batch(server, list(dict.fromkeys(uniques)))
            except ServerUnavailable:
                continue
            for unique, status in batch.items():
                answers[(server, unique)] = status
        out: dict[JobRef, Status] = {}
        for ref in refs:
            got = [
                answers[(s, ref.unique or b"")]
                for s in ([ref.server] if ref.server else self.servers)
                if (s, ref.unique or b"") in answers
            ]
            if got:
                out[ref] = next((a for a in got if a.known), got[0])
        return out

    def _statuses(self, refs: Sequence[JobRef]) -> tuple[dict[tuple[str, bytes], Status], set[str]]:
        wanted: dict[str, list[bytes]] = {s: [] for s in self.servers}
        for ref in refs:
            if ref.by_unique:
                continue
            for server in [ref.server] if ref.server else self.servers:
                if server not in wanted:
                    raise ConfigError(
                        f"job {ref} belongs to server {server}, which this client does not use "
                        f"(servers: {', '.join(self.servers)})"
                    )
                wanted[server].append(ref.handle)
        found: dict[tuple[str, bytes], Status] = {}
        down: set[str] = set()
        for server, handles in wanted.items():
            if not handles:
                continue
            try:
                for handle, status in self._status_batch(
                    server, list(dict.fromkeys(handles))
                ).items():
                    found[(server, handle)] = status
            except ServerUnavailable:
                down.add(server)
        return found, down

    def status(self, ref: RefLike) -> Status:
        """The live status of one job on the server that owns it (every server for a bare handle).

        Raises ServerUnavailable when the owning server (or, for a bare handle, every server) is
        unreachable.
        """
        job = as_ref(ref)
        if job.by_unique:
            return self.status_unique(job.unique or b"")
        found, down = self._statuses([job])
        servers = [job.server] if job.server else self.servers
        answers = [found[(s, job.handle)] for s in servers if (s, job.handle) in found]
        if not answers:
            raise ServerUnavailable(f"no job server answered for {job}: {', '.join(sorted(down))}")
        return next((a for a in answers if a.known), answers[0])

    def status_unique(self, unique: bytes | str) -> Status:
        """Live status by unique (GET_STATUS_UNIQUE), asking the unique's home server first.

        Raises ServerUnavailable when no server answers.
        """
        uniq = check_unique(unique.encode() if isinstance(unique, str) else bytes(unique))
        first: Status | None = None
        for server in self.placement(uniq):
            try:
                with self._locks[server]:
                    conn = self._conn(server)
                    try:
                        conn.send(encode_request(PacketType.GET_STATUS_UNIQUE, uniq))
                        r = UniqueStatusReply.from_packet(
                            self._expect(conn, PacketType.STATUS_RES_UNIQUE)
                        )
                    except ProtocolError:
                        conn.close()  # a malformed reply: start afresh on the next call
                        raise
            except ServerUnavailable:
                continue
            status = Status(
                r.known, r.running, r.numerator, r.denominator, server, r.waiting_clients
            )
            if status.known:
                return status
            first = first or status
        if first is None:
            raise ServerUnavailable("no job server answered GET_STATUS_UNIQUE")
        return first

    # ------------------------------------------------------------ fetch

    def fetch(self, ref: RefLike) -> JobView:
        """One job's merged view: live status + stored record (see :func:`merge_state`).

        Never raises for an unknown job (its state is ``unknown``); raises StoreError when the store
        fails. An unreachable server leaves ``status`` None and the state to the record.
        """
        return self.fetch_many([ref])[0]

    def fetch_many(self, refs: Sequence[RefLike]) -> list[JobView]:
        """Views of many jobs: one pipelined status round trip per server, one store query."""
        jobs = [as_ref(r) for r in refs]
        if not jobs:
            return []
        found, _down = self._statuses(jobs)
        by_unique = self._unique_statuses([j for j in jobs if j.by_unique])
        records = self.store.get_many(jobs)
        now = time.time()
        views: list[JobView] = []
        for job, record in zip(jobs, records, strict=True):
            status = by_unique.get(job) if job.by_unique else self._pick_status(job, record, found)
            views.append(merge_state(job, status, record, now))
        return self._find_replayed(views, now)

    def _find_replayed(self, views: list[JobView], now: float) -> list[JobView]:
        """Second look at jobs that read ``lost``: the server may have replayed them under new
        handles (persistent queue) — ask the servers by unique and the store for the newest record
        with the unique (:func:`~gearstash.views.successor`). Costs nothing when none is lost."""
        lost = [
            i
            for i, v in enumerate(views)
            if v.state is State.LOST and v.record is not None and v.ref.unique is not None
        ]
        if not lost:
            return views
        probes: list[JobRef] = []
        for i in lost:
            record = views[i].record
            assert record is not None
            probes.append(JobRef(b"", record.key.server, record.key.unique))
        statuses = self._unique_statuses(probes)
        candidates = self.store.get_many(probes)
        for i, probe, candidate in zip(lost, probes, candidates, strict=True):
            view = views[i]
            record = view.record
            assert record is not None
            status = statuses.get(probe)
            if candidate is not None and successor(record, candidate):
                merged = merge_state(probe, status, candidate, now)
                views[i] = JobView(view.ref, merged.state, merged.status, candidate)
            elif status is not None and status.known:
                state = State.RUNNING if status.running else State.QUEUED
                views[i] = JobView(view.ref, state, status, record)
        return views

    def wait(
        self,
        ref: RefLike,
        timeout: float | None = None,
        *,
        on_progress: Callable[[JobView], None] | None = None,
        interval: float = 0.02,
        max_interval: float = 0.5,
    ) -> JobView:
        """Wait until the job is complete, failed or expired; return its final view.

        On a push store (``push`` capability) the store wakes the wait as soon as the worker
        writes; elsewhere it polls with backoff from ``interval`` to ``max_interval`` seconds.
        ``on_progress(view)`` is called whenever the state, status or number of data chunks
        changes. Raises JobNotFound when the job is unknown to both server and store (it never
        existed, or ended under a worker that does not capture), WaitTimeout after ``timeout``.
        """
        for update in self.follow(
            ref, timeout=timeout, interval=interval, max_interval=max_interval, data=False
        ):
            if on_progress is not None:
                on_progress(update.view)
            if update.view.state.final:
                return self.fetch(update.view.ref)  # the whole record, every chunk
        raise AssertionError("follow() ended without a final state")  # pragma: no cover

    def follow(
        self,
        ref: RefLike,
        *,
        after: int = 0,
        timeout: float | None = None,
        interval: float = 0.02,
        max_interval: float = 0.5,
        data: bool = True,
    ) -> Iterator[Update]:
        """Yield :class:`Update` objects as the job progresses, ending with its final state.

        Each update carries the data chunks that arrived since the previous one (from chunk
        ``after`` on; none when ``data`` is False), and the job's current view. An update is
        yielded when chunks arrive or the state, status or progress changes; the last one has a
        final state. ``update.view.record`` holds only the chunks of that update. A new attempt
        of the job (a worker crashed and another took it) restarts the chunks from 0, flagged by
        ``update.restarted``. Push stores wake the follower at once;
        others are polled with backoff. Raises JobNotFound and WaitTimeout like :meth:`wait`.
        """
        job = as_ref(ref)
        deadline = None if timeout is None else time.monotonic() + timeout
        cursor = after
        attempt: int | None = None
        seen: tuple[object, ...] | None = None
        delay = interval
        warned = False
        with contextlib.closing(watch(self.store, [job])) as watcher:
            while True:
                found, _down = self._statuses([job])
                status = (
                    self._unique_statuses([job]).get(job)
                    if job.by_unique
                    else self._pick_status(job, None, found)
                )
                record = get_after(self.store, job, cursor if data else 1 << 62)
                restarted = False
                if record is not None and attempt is not None and record.attempt != attempt:
                    cursor, restarted = 0, True
                    record = get_after(self.store, job, 0 if data else 1 << 62)
                if record is not None:
                    attempt = record.attempt
                    if not job.by_unique and (status is None or job.server is None):
                        status = self._pick_status(job, record, found)
                view = merge_state(job, status, record)
                if view.state is State.LOST and job.unique is not None and not job.by_unique:
                    again = self.fetch(job)
                    if again.record is not None and again.record.key.handle != job.handle:
                        # replayed under a new handle: follow that one from its first chunk
                        job = JobRef(again.record.key.handle, again.record.key.server, job.unique)
                        cursor, attempt = 0, None
                        continue
                    view = again
                chunks = list(record.data) if data and view.record is not None and record else []
                offset = cursor
                cursor += len(chunks)
                marker = (view.state, view.numerator, view.denominator, cursor)
                if chunks or marker != seen or restarted:
                    seen = marker
                    delay = interval
                    yield Update(chunks, offset, view, restarted)
                if view.state.final:
                    return
                if view.state is State.UNKNOWN and view.status is not None:
                    raise JobNotFound(f"job {job} is unknown to the job server and the store")
                if view.status is None and not warned:
                    warned = True
                    log.warning("no job server answers for %s; still waiting", job)
                wait = delay
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise WaitTimeout(f"job {job} still {view.state.value} after {timeout} s")
                    wait = min(wait, left)
                if not watcher.wait(wait):
                    delay = min(delay * 1.5, max_interval)

    def _pick_status(
        self, job: JobRef, record: JobRecord | None, found: dict[tuple[str, bytes], Status]
    ) -> Status | None:
        """The live status that belongs to ``job`` among the answers in ``found``."""
        if job.server:
            return found.get((job.server, job.handle))
        if record is not None and (record.key.server, job.handle) in found:
            return found[(record.key.server, job.handle)]
        answers = [found[(s, job.handle)] for s in self.servers if (s, job.handle) in found]
        return next((a for a in answers if a.known), answers[0] if answers else None)

    def forget(self, refs: RefLike | Sequence[RefLike]) -> int:
        """Delete the stored records of one or more jobs; returns how many records went.

        Raises StoreError when the store cannot delete.
        """
        items = [refs] if isinstance(refs, JobRef | str | bytes) else list(refs)
        return delete(self.store, [as_ref(r) for r in items])

    def fetch_token(self, token: str, signer: TokenSigner) -> JobView:
        """:meth:`fetch` the job a signed token names (see :mod:`gearstash.tokens`).

        The token is verified first; a refused one raises :class:`~gearstash.errors.BadToken`
        (reason ``malformed``, ``bad signature`` or ``expired``) before any server or store is
        asked anything.
        """
        return self.fetch(signer.verify(token))


@dataclass(frozen=True, slots=True)
class Update:
    """One step of :meth:`Client.follow`: new ``chunks`` (starting at chunk number ``offset``),
    the job's current ``view``, and whether a new attempt ``restarted`` the chunks from 0."""

    chunks: list[bytes]
    offset: int
    view: JobView
    restarted: bool = False


__all__ = [
    "Client",
    "GearstashError",
    "JobView",
    "Status",
    "Update",
    "as_ref",
    "merge_state",
]
