"""The capturing worker.

A :class:`Worker` serves registered functions on every configured job server. For each job it builds
a :class:`Job`, runs the function, and turns what the function says into packets for the server *and*
events for the store and the observer hooks:

=====================  ===================  ==================================
the function does      the server gets      the store gets (then the hook)
=====================  ===================  ==================================
(job assigned)         —                    ``started`` (``job_started``)
``job.send_data(b)``   WORK_DATA            ``data`` (``job_data``)
``job.send_warning``   WORK_WARNING         ``warning`` (``job_warning``)
``job.send_status``    WORK_STATUS          ``status`` (``job_status``)
returns ``value``      WORK_COMPLETE        ``completed`` (``job_completed``)
raises ``JobFailed``   WORK_FAIL            ``failed`` (``job_failed``)
raises anything else   WORK_EXCEPTION       ``exception`` + traceback (``job_failed``)
=====================  ===================  ==================================

Ordering guarantee: every event of a job is written to the store *before* the server hears that the
job ended, so a client that sees "done" finds all the data. While a job runs, its events are written
in batches: an event waits at most ``flush_interval`` seconds (default 0.05; a flush thread writes
the events of a job that went quiet), so a job that only returns costs one store write.

A store failure is logged and reported through the ``store_failed`` hook; the job still runs and the
worker keeps serving. By default (``on_store_down="spool"``) what the store cannot take is spooled
on disk and replayed in order when it is back (:mod:`gearstash.store.spool`); with ``"fail"`` jobs fail
instead while the store is down. Lost job-server connections are re-made with backoff.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType

import pluggy

from gearstash import config
from gearstash.config import default_store_url
from gearstash.errors import ConfigError, StoreDenied, StoreError
from gearstash.spine.manager import EventHooks, is_local_store, open_store
from gearstash.store.contract import Store
from gearstash.store.deferred import DeferredStore
from gearstash.store.urls import redact_url, scrub
from gearstash.transport.connection import DEFAULT_CONNECT_TIMEOUT, servers_from
from gearstash.worker.job import JobFunction, Registration
from gearstash.worker.slot import Slot, SlotSettings

log = logging.getLogger("gearstash.worker")


class Worker:
    """Serves registered functions on every server and captures what each job says.

    :param servers: ``host[:port]`` addresses (default ``$GEARSTASH_SERVERS`` or ``127.0.0.1:4730``).
    :param store: a store object or URL (default ``$GEARSTASH_STORE`` or the SQLite default store).
        The store must be thread-safe when ``concurrency`` > 1.
    :param concurrency: jobs run at once; each runs in its own thread with its own connections.
    :param client_id: sent as SET_CLIENT_ID (default ``gearstash-HOST-PID``).
    :param read_timeout: seconds to wait for a server's answer before the connection is re-made.
    :param flush_interval: longest time, in seconds, an event of a running job waits before it is
        written to the store (events that come quicker are written together; 0 writes each event
        at once). A job's final events are always written before the server hears it ended.
    :param lease: seconds a running job's record promises the worker is alive. The worker renews
        it (a ``heartbeat`` event) every ``lease / 3`` seconds while the job runs; when a worker
        dies mid-job and no worker takes the job over, clients read the job as ``lost`` once the
        lease ran out. 0 disables leases (a dead worker's job then reads ``running`` for ever).
    :param on_store_down: ``"spool"`` (default): what the store cannot take is kept in an on-disk
        spool and replayed in order when the store is back (:mod:`gearstash.store.spool`); jobs go on.
        ``"fail"``: no spool; a job whose start cannot be stored is not run (WORK_FAIL), and a job
        whose events could not all be stored ends with WORK_FAIL (after a WORK_WARNING saying why).
    :param spool: the spool folder (default ``$GEARSTASH_SPOOL``, else ``spool/<hash of the store
        URL>`` under the gearstash home). Stores that declare neither ``shared`` nor ``persistent``
        (``memory://``, ``null://``) are spooled only when this is given.
    :param pipeline: group commit: how many ended jobs a slot may hand to its committer thread
        before their events are stored (1: none; each job's events are written, and its server
        told, before the next job is grabbed). With ``pipeline`` > 1 a slot grabs and runs the
        next job while the last ones' events are written; the events of all jobs that ended
        meanwhile go to the store in one write, and each job's final packet is sent only once
        that write returned — so events are still stored, in order, before the server hears the
        job ended. A job may then wait for a store write after it returned; the server holds up
        to ``pipeline`` jobs of a connection at a time.
    :param prefetch: ask the server for the next job as soon as one is assigned, so its answer
        travels while the job runs. The server then holds that next job for this worker while the
        current one runs (other workers do not get it; a ``CAN_DO_TIMEOUT`` clock starts at
        assignment), so use it for short jobs. On stop, a job assigned ahead is not run: the
        connection is closed and the server queues it again.
    :param spool_max_bytes: the spool's bound (default 1 GiB); beyond it new events are lost (logged).
    :param capture_workload: store each job's workload in its record (the ``started`` event
        carries it), so the web face can show it and an admin can resubmit a failed job. Off by
        default: workloads may hold what should not be kept.
    :param workload_max_bytes: the largest workload stored when capturing (default 64 KiB); a
        bigger one is not stored at all (the record's ``workload`` stays null), never truncated,
        so what is stored can always be resubmitted as it was.
    """

    def __init__(
        self,
        servers: Iterable[str] | str | None = None,
        *,
        store: Store | str | None = None,
        concurrency: int = 1,
        client_id: str | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = 30.0,
        flush_interval: float = 0.05,
        lease: float = 60.0,
        pipeline: int = 1,
        prefetch: bool = False,
        spool: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = config.DEFAULT_SPOOL_MAX_BYTES,
        on_store_down: str = "spool",
        capture_workload: bool = False,
        workload_max_bytes: int = config.DEFAULT_WORKLOAD_MAX_BYTES,
        plugin_manager: pluggy.PluginManager | None = None,
    ) -> None:
        if concurrency < 1:
            raise ConfigError("concurrency must be at least 1")
        if on_store_down not in ("spool", "fail"):
            raise ConfigError(f"on_store_down must be 'spool' or 'fail', not {on_store_down!r}")
        if lease < 0:
            raise ConfigError("lease must not be negative")
        if pipeline < 1:
            raise ConfigError("pipeline must be at least 1")
        if workload_max_bytes < 0:
            raise ConfigError("workload_max_bytes must not be negative")
        self.workload_max: int | None = workload_max_bytes if capture_workload else None
        """The largest workload stored, or None when workloads are not captured."""
        self.pipeline = pipeline
        self.prefetch = prefetch

        settings = config.resolve() if servers is None or not store else None
        self.servers = servers_from(settings.servers if servers is None and settings else servers)
        if store is None or isinstance(store, str):
            url = store or (settings.store if settings else None) or default_store_url()
            self.store: Store = _open_or_defer(url, plugin_manager)
            self._owns_store = True
        else:
            self.store = store
            self._owns_store = False
        self.on_store_down = on_store_down
        spool = config.spool_folder(spool, settings)  # option > environment > config file
        if on_store_down == "spool":
            from gearstash.store.spool import spool_if_needed

            inner = self.store
            self.store = spool_if_needed(
                inner,
                spool,
                max_bytes=spool_max_bytes,
                close_inner=self._owns_store,
                on_failure=lambda url, exc, n: self.hooks.store_failed(url, exc, n),
            )
            self._owns_store = self._owns_store or self.store is not inner
        self.concurrency = concurrency
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self.client_id = client_id or f"gearstash-{socket.gethostname()}-{os.getpid()}"
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.flush_interval = max(flush_interval, 0.0)
        self.lease: float | None = lease or None
        self.hooks = EventHooks(plugin_manager)
        self.functions: dict[str, Registration] = {}
        self.jobs_done = 0
        self.stopping = threading.Event()
        """Set when the worker should stop after the jobs in hand."""
        self.stopped_by: str | None = None
        """The name of the signal that stopped :meth:`work` (``"SIGTERM"``), else None."""
        self._slots: list[Slot] = []
        self._count_lock = threading.Lock()
        self._max_jobs: int | None = None

    def register(
        self,
        name: str,
        function: JobFunction,
        *,
        timeout: int | None = None,
        ttl: float | None = None,
    ) -> None:
        """Serve ``function`` under ``name``. Call before :meth:`work`.

        ``timeout``: seconds the server gives a job before it hands it to another worker
        (CAN_DO_TIMEOUT). ``ttl``: seconds the store keeps these jobs after their last event
        (0 = for ever; default: the store's own default).
        """
        if not name or "\0" in name:
            raise ConfigError(f"bad function name {name!r}")
        if ttl is not None and ttl < 0:
            raise ConfigError("ttl must not be negative")
        self.functions[name] = Registration(name, function, timeout, ttl)

    def function(
        self, name: str | None = None, *, timeout: int | None = None, ttl: float | None = None
    ) -> Callable[[JobFunction], JobFunction]:
        """Decorator form of :meth:`register` (the name defaults to the function's ``__name__``)."""

        def decorate(fn: JobFunction) -> JobFunction:
            self.register(name or fn.__name__, fn, timeout=timeout, ttl=ttl)
            return fn

        return decorate

    def work(self, *, handle_signals: bool = True, max_jobs: int | None = None) -> None:
        """Serve jobs until :meth:`stop`, SIGTERM/SIGINT, or ``max_jobs`` jobs are done.

        On stop the job in hand is finished and stored first. A second signal exits at once.
        Signal handlers are installed only from the main thread.
        """
        if not self.functions:
            raise ConfigError("no functions registered")
        self.stopping.clear()
        self._max_jobs = max_jobs
        settings = SlotSettings(
            servers=self.servers,
            functions=dict(self.functions),
            store=self.store,
            hooks=self.hooks,
            stopping=self.stopping,
            job_done=self.job_done,
            client_id=self.client_id,
            identity=self.identity,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            flush_interval=self.flush_interval,
            lease=self.lease,
            fail=self.on_store_down == "fail",
            pipeline=self.pipeline,
            prefetch=self.prefetch,
            workload_max=self.workload_max,
        )
        self._slots = [Slot(settings, i) for i in range(self.concurrency)]
        restore = self._install_signals() if handle_signals else None
        flusher_done = threading.Event()
        flusher = None
        if self.flush_interval > 0 or self.lease:
            flusher = threading.Thread(
                target=self._flush_loop, args=(flusher_done,), name="gearstash-flush", daemon=True
            )
            flusher.start()
        try:
            if self.concurrency == 1:
                self._slots[0].run()
            else:
                threads = [
                    threading.Thread(target=s.run, name=f"gearstash-worker-{i}", daemon=True)
                    for i, s in enumerate(self._slots)
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    while thread.is_alive():
                        thread.join(0.2)
        finally:
            flusher_done.set()
            if flusher is not None:
                flusher.join()
            if restore is not None:
                restore()
            for slot in self._slots:
                slot.close()
        log.info("worker stopped after %d jobs", self.jobs_done)

    def stop(self) -> None:
        """Ask the worker to stop after the jobs in hand. Safe from any thread or signal handler."""
        self.stopping.set()
        for slot in self._slots:
            slot.wake()

    def close(self) -> None:
        """Close the store if the worker opened it."""
        if self._owns_store:
            self.store.close()

    def job_done(self) -> bool:
        """Count a finished job; True when the worker is stopping (``max_jobs`` reached, or
        :meth:`stop` was called)."""
        if self.concurrency == 1:
            self.jobs_done += 1
        else:
            with self._count_lock:
                self.jobs_done += 1
        if self._max_jobs is not None and self.jobs_done >= self._max_jobs:
            self.stop()
        return self.stopping.is_set()

    def _flush_loop(self, done: threading.Event) -> None:
        """Write events of running jobs that waited ``flush_interval`` (e.g. a silent job's start),
        and renew the lease of jobs that have run for ``lease / 3`` since the last renewal."""
        flush = self.flush_interval
        renew = self.lease / 3 if self.lease else 0.0
        interval = min(x for x in (flush, renew / 4) if x > 0)
        while not done.wait(interval):
            now = time.time()
            for slot in self._slots:
                if flush:
                    slot.flush_due(now)
                if renew:
                    slot.renew_due(now, renew)

    def _install_signals(self) -> Callable[[], None] | None:
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum: int, frame: FrameType | None) -> None:
            if self.stopping.is_set():
                raise SystemExit(128 + signum)
            self.stopped_by = signal.Signals(signum).name
            log.info("%s: finishing the job in hand, then stopping", self.stopped_by)
            self.stop()

        old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, previous in old.items():
                signal.signal(sig, previous)

        return restore


def _open_or_defer(url: str, plugin_manager: pluggy.PluginManager | None) -> Store:
    """The store at ``url``; while it is unreachable (StoreError, not a bad URL), a
    :class:`~gearstash.store.deferred.DeferredStore` that opens it on first use, so that a
    worker started during an outage serves and spools instead of exiting. A local store (a
    SQLite file) that cannot be opened, or a store that refuses the credentials
    (:class:`~gearstash.errors.StoreDenied`), is an error at once."""
    try:
        return open_store(url, plugin_manager)
    except StoreDenied:
        raise  # wrong credentials: nothing to wait for
    except StoreError as exc:
        if is_local_store(url, plugin_manager):  # a file is not a server that comes back
            raise
        shown = redact_url(url)
        log.warning(
            "store %s unreachable at start (%s); serving anyway: captured events are spooled "
            "and replayed when it is back",
            shown,
            scrub(str(exc), url),
        )
        return DeferredStore(shown, lambda: open_store(url, plugin_manager))
