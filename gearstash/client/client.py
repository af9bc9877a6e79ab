"""The client helper: submit jobs, ask their live status, fetch what was stored, wait.

A :class:`Client` talks to several job servers and one store. It always sends a unique (a random
UUID when the caller gives none; at most 63 bytes) and places a job on the server picked by a hash of
its unique, falling back to the others when that server is down, so the same unique lands on the same
server and coalesces there.

:meth:`Client.fetch` merges the server's live status with the stored record into one definite
:class:`~gearstash.model.records.State`; :meth:`Client.fetch_many` does the same for many jobs with one
pipelined status round trip per server and one store query.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import pluggy

from gearstash import config
from gearstash.client.links import RefLike, ServerLinks, as_ref
from gearstash.client.submitting import BatchJob, Submitter
from gearstash.client.tokens import TokenSigner
from gearstash.errors import (
    GearstashError,
    JobNotFound,
    WaitTimeout,
)
from gearstash.model.records import (
    JobRecord,
    JobRef,
    State,
)
from gearstash.model.views import JobView, Status, merge_state, successor, uniqueless_twin
from gearstash.spine.manager import open_store
from gearstash.store.contract import Store, delete, get_after, watch
from gearstash.transport.connection import DEFAULT_CONNECT_TIMEOUT

log = logging.getLogger("gearstash.client")


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
    :param create_store: False for a client that only reads: a store URL naming a store that is
        not there (a missing SQLite file) raises StoreError instead of creating it.

    Thread-safe: each server connection is used under its own lock.

    A client is composed of its parts: :attr:`links` (the job-server connections, placement and
    live status, :class:`~gearstash.client.links.ServerLinks`), :attr:`submitter` (submissions
    and their markers, :class:`~gearstash.client.submitting.Submitter`) and :attr:`store`.
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
        create_store: bool = True,
    ) -> None:
        self.links = ServerLinks(servers, connect_timeout, timeout)
        self.submitter = Submitter(
            self.links, lambda: self.store, mark_submissions=mark_submissions
        )
        self._store: Store | None = store if not isinstance(store, str | None) else None
        self._store_url = store if isinstance(store, str) else None
        self._owns_store = self._store is None
        self._pm = plugin_manager
        self._create_store = create_store

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection, and the store if the client opened it."""
        self.links.close()
        if self._owns_store and self._store is not None:
            self._store.close()
            self._store = None

    @property
    def store(self) -> Store:
        """The store, opened on first use."""
        if self._store is None:
            url = self._store_url or config.store_url()
            self._store = open_store(url, self._pm, create=self._create_store)
        return self._store

    # ------------------------------------------------------------ servers and submitting

    @property
    def servers(self) -> list[str]:
        """The job servers, ``host:port``, in the order given."""
        return self.links.servers

    @property
    def mark_submissions(self) -> bool:
        """Whether background submissions write a ``submitted`` marker to the store."""
        return self.submitter.mark_submissions

    @mark_submissions.setter
    def mark_submissions(self, value: bool) -> None:
        self.submitter.mark_submissions = value

    def placement(self, unique: bytes) -> list[str]:
        """Servers in the order a job with ``unique`` is tried: its hashed home first."""
        return self.links.placement(unique)

    def status(self, ref: RefLike) -> Status:
        """The live status of one job (see :meth:`ServerLinks.status`); ServerUnavailable when
        its server (for a bare handle: every server) is unreachable."""
        return self.links.status(ref)

    def status_unique(self, unique: bytes | str) -> Status:
        """Live status by unique (see :meth:`ServerLinks.status_unique`)."""
        return self.links.status_unique(unique)

    def submit_background(
        self,
        function: str | bytes,
        workload: bytes | str = b"",
        *,
        unique: bytes | str | None = None,
        priority: str = "normal",
        when: float | None = None,
    ) -> JobRef:
        """Submit a background job; see :meth:`Submitter.submit_background`."""
        return self.submitter.submit_background(
            function, workload, unique=unique, priority=priority, when=when
        )

    def submit_background_many(
        self,
        jobs: Iterable[BatchJob],
        *,
        priority: str = "normal",
    ) -> list[JobRef]:
        """Submit many background jobs at once; see :meth:`Submitter.submit_background_many`."""
        return self.submitter.submit_background_many(jobs, priority=priority)

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
        """Run a foreground job to its end; see :meth:`Submitter.submit`."""
        return self.submitter.submit(
            function,
            workload,
            unique=unique,
            priority=priority,
            on_data=on_data,
            on_warning=on_warning,
            on_status=on_status,
            timeout=timeout,
        )

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
        found, down = self.links.statuses(jobs)
        by_unique = self.links.unique_statuses([j for j in jobs if j.by_unique], down)
        records = self._configured_only(jobs, self.store.get_many(jobs))
        now = time.time()
        views: list[JobView] = []
        for job, record in zip(jobs, records, strict=True):
            status = (
                by_unique.get(job) if job.by_unique else self.links.pick_status(job, record, found)
            )
            views.append(merge_state(job, status, record, now))
        return self._find_replayed(views, now, down)

    def _configured_only(
        self, jobs: Sequence[JobRef], records: list[JobRecord | None]
    ) -> list[JobRecord | None]:
        """``records`` with a reference that names no server (a bare handle, a unique alone)
        answered from this client's servers only: a record another server's job left in a shared
        store is replaced by the newest (latest start) of the configured servers' records, asked
        per server. Costs nothing when every record is of a configured server."""
        configured = set(self.servers)
        redo = [
            i
            for i, (job, record) in enumerate(zip(jobs, records, strict=True))
            if job.server is None and record is not None and record.key.server not in configured
        ]
        if not redo:
            return records
        probes = [JobRef(jobs[i].handle, s, jobs[i].unique) for i in redo for s in self.servers]
        found = self.store.get_many(probes)
        n = len(self.servers)
        out = list(records)
        for k, i in enumerate(redo):
            mine = [r for r in found[k * n : (k + 1) * n] if r is not None]
            out[i] = max(
                mine, key=lambda r: (r.started_at or 0.0, r.updated_at or 0.0), default=None
            )
        return out

    def _find_replayed(
        self,
        views: list[JobView],
        now: float,
        down: Iterable[str] = (),
    ) -> list[JobView]:
        """Second look at jobs that read ``lost``: the server may have replayed them under new
        handles (persistent queue) — ask the servers by unique and the store for the newest record
        with the unique (:func:`~gearstash.model.views.successor`); or a worker that could not
        learn the unique (a server without GRAB_JOB_UNIQ) stored the job under an empty one
        (:func:`~gearstash.model.views.uniqueless_twin`). Costs nothing when none is lost."""
        lost = [
            i
            for i, v in enumerate(views)
            if v.state is State.LOST
            and v.record is not None
            and (v.ref.unique is not None or (v.record.attempt == 0 and v.record.key.unique))
        ]
        if not lost:
            return views
        probes: list[JobRef] = []  # by unique: a replay under a new handle
        twins: list[JobRef] = []  # the same handle stored without its unique (no GRAB_JOB_UNIQ)
        for i in lost:
            record = views[i].record
            assert record is not None
            probes.append(JobRef(b"", record.key.server, record.key.unique))
            twins.append(JobRef(record.key.handle, record.key.server, b""))
        replayable = [views[i].ref.unique is not None for i in lost]
        asked = [p for p, ok in zip(probes, replayable, strict=True) if ok]
        statuses = self.links.unique_statuses(asked, down)
        found = iter(self.store.get_many(asked + twins))
        candidates = [next(found) if ok else None for ok in replayable]
        twin_records = list(found)
        for i, probe, candidate, twin in zip(lost, probes, candidates, twin_records, strict=True):
            view = views[i]
            record = view.record
            assert record is not None
            status = statuses.get(probe)
            if uniqueless_twin(record, twin):
                assert twin is not None
                merged = merge_state(JobRef(twin.key.handle, twin.key.server), None, twin, now)
                views[i] = JobView(view.ref, merged.state, view.status, twin)
            elif candidate is not None and successor(record, candidate):
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
                found, _down = self.links.statuses([job])
                status = (
                    self.links.unique_statuses([job]).get(job)
                    if job.by_unique
                    else self.links.pick_status(job, None, found)
                )
                record = self._after(job, cursor if data else 1 << 62)
                restarted = False
                # attempt 0 is the submission marker (no chunks): its first start is no restart
                if record is not None and attempt and record.attempt != attempt:
                    cursor, restarted = 0, True
                    record = self._after(job, 0 if data else 1 << 62)
                if record is not None:
                    attempt = record.attempt
                    if not job.by_unique and (status is None or job.server is None):
                        status = self.links.pick_status(job, record, found)
                view = merge_state(job, status, record)
                if view.state is State.LOST and not job.by_unique:
                    again = self.fetch(job)
                    other = again.record.key if again.record is not None else None
                    if other is not None and record is not None and other != record.key:
                        # replayed under a new handle, or stored without its unique by a worker
                        # that could not learn it: follow that record from its first chunk
                        job = JobRef(other.handle, other.server, other.unique)
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

    def _after(self, job: JobRef, after: int) -> JobRecord | None:
        """:func:`get_after` for ``job``; for a reference naming no server, among this client's
        servers only (see :meth:`_configured_only`)."""
        record = get_after(self.store, job, after)
        if job.server is None and record is not None and record.key.server not in self.servers:
            mine = self._configured_only([job], [record])[0]
            if mine is None:
                return None
            return get_after(
                self.store, JobRef(job.handle, mine.key.server, mine.key.unique), after
            )
        return record

    def forget(self, refs: RefLike | Sequence[RefLike]) -> int:
        """Delete the stored records of one or more jobs; returns how many records went.

        Raises StoreError when the store cannot delete.
        """
        items = [refs] if isinstance(refs, JobRef | str | bytes) else list(refs)
        return delete(self.store, [as_ref(r) for r in items])

    def fetch_token(self, token: str, signer: TokenSigner) -> JobView:
        """:meth:`fetch` the job a signed token names (see :mod:`gearstash.client.tokens`).

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
