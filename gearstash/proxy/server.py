"""The proxy's listening side: routes, the event loop, heartbeats, stopping, several processes.

:class:`Proxy` owns the store, the :class:`~gearstash.proxy.capture.CaptureWriter` and every
:class:`~gearstash.proxy.relay.Pair`. :func:`run` starts one process (or ``processes`` forked
ones sharing the listening ports through ``SO_REUSEPORT``) and returns when it was stopped.

Stopping (SIGTERM or SIGINT): the proxy stops accepting, closes the pairs that have no job in
hand, lets the others finish their jobs for ``grace`` seconds (closing each pair once its last job
ended), then closes what is left (those jobs are left to their leases), writes what is queued to
the store, closes the store and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import time
from dataclasses import dataclass

from gearstash.errors import GearstashError
from gearstash.protocol.packets import DEFAULT_MAX_PACKET
from gearstash.proxy.capture import CaptureWriter
from gearstash.proxy.relay import Pair
from gearstash.proxy.routes import Route
from gearstash.spine.manager import EventHooks, open_store
from gearstash.store.contract import Store
from gearstash.store.spool import DEFAULT_MAX_BYTES, spool_if_needed
from gearstash.transport.connection import cannot_listen, split_address

log = logging.getLogger("gearstash.proxy")

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


@dataclass
class Settings:
    """What ``gearstash proxy`` was asked to do (see the CLI's help for each field)."""

    routes: list[Route]
    store_url: str
    lease: float = 60.0
    flush_interval: float = 0.05
    grace: float = 30.0
    spool: str | None = None
    spool_max_bytes: int = DEFAULT_MAX_BYTES
    max_packet: int = DEFAULT_MAX_PACKET
    connect_timeout: float = 5.0
    processes: int = 1
    writers: int = 1
    backlog: int = 1024
    workload_max: int | None = None
    """The largest workload stored in a job's record (None: workloads are not captured)."""


class Proxy:
    """One process of the proxy: its store, its writer and its connection pairs."""

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self.loop = loop
        self.hooks = EventHooks()
        inner = open_store(settings.store_url)
        self.store: Store = spool_if_needed(
            inner,
            settings.spool,
            max_bytes=settings.spool_max_bytes,
            on_failure=lambda url, exc, n: self.hooks.store_failed(url, exc, n),
        )
        self.writer = CaptureWriter(
            self.store,
            self.hooks,
            loop,
            flush_interval=settings.flush_interval,
            # an in-process store (memory://, null://) is written on the loop: no I/O to wait for
            inline=self.store is inner and not inner.capabilities & {"shared", "persistent"},
            writers=settings.writers,
        )
        self.lease: float | None = settings.lease or None
        self.workload_max = settings.workload_max
        self.max_packet = settings.max_packet
        self.connect_timeout = settings.connect_timeout
        self.identity = f"gearstash-proxy@{os.uname().nodename}:{os.getpid()}"
        self.pairs: set[Pair] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.stopping = asyncio.Event()

    async def serve(self, reuse_port: bool, parent: int | None = None) -> None:
        """Listen on every route until :meth:`stop`; then drain, flush and close."""
        for route in self.settings.routes:
            host, port = split_address(route.listen)
            try:
                server = await self.loop.create_server(
                    lambda route=route: Pair(self, route).worker_protocol(),
                    host,
                    port,
                    reuse_address=True,
                    reuse_port=reuse_port or None,
                    backlog=self.settings.backlog,
                )
            except OSError as exc:  # taken, not a local address: nothing was relayed yet
                await self._shut_down()
                raise cannot_listen(route.listen, exc) from None
            self.servers.append(server)
            log.info(
                "proxy listening on %s for %s (records under %s), store %s",
                route.listen,
                route.upstream,
                route.server_name,
                self.store.url,
            )
        beat = self.loop.create_task(self._heartbeats()) if self.lease else None
        orphan = self.loop.create_task(self._stop_when_orphaned(parent)) if parent else None
        try:
            await self.stopping.wait()
        finally:
            for task in (beat, orphan):
                if task is not None:
                    task.cancel()
            await self._shut_down()

    def stop(self) -> None:
        """Ask the proxy to stop (safe from a signal handler on the loop)."""
        self.stopping.set()

    async def _stop_when_orphaned(self, parent: int) -> None:
        """One of ``--processes``: stop as on SIGTERM once the parent is gone (killed)."""
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        log.warning("proxy parent process %d is gone; stopping", parent)
        self.stop()

    async def _heartbeats(self) -> None:
        lease = self.lease
        assert lease is not None
        every = lease / 3
        while True:
            await asyncio.sleep(min(every / 4, 5.0))
            now = time.time()
            for pair in list(self.pairs):
                pair.renew(now, every, lease)

    async def _shut_down(self) -> None:
        for server in self.servers:
            server.close()
        held = sum(len(p.jobs) for p in self.pairs)
        log.info(
            "proxy stopping: no new connections; %d connections, %d jobs in hand (grace %.0f s)",
            len(self.pairs),
            held,
            self.settings.grace,
        )
        for pair in list(self.pairs):
            pair.drain()
        deadline = time.monotonic() + self.settings.grace
        while self.pairs and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for pair in list(self.pairs):
            pair.close("grace period over")
        await asyncio.sleep(0)  # let the transports close
        self.writer.hand_over()
        await self.loop.run_in_executor(None, self.writer.close)
        await self.loop.run_in_executor(None, self.store.close)
        log.info(
            "proxy stopped: %d events written in %d store writes",
            self.writer.events,
            self.writer.batches,
        )


def _raise_fd_limit() -> None:
    """Each connection pair takes two descriptors: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_one(settings: Settings, reuse_port: bool = False, parent: int | None = None) -> None:
    """Run one proxy process until SIGTERM/SIGINT (then stop as the module says), or, for one
    of ``--processes`` (``parent`` is the forking process), until its parent is gone."""
    _raise_fd_limit()
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    try:
        proxy = Proxy(settings, loop)
        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, proxy.stop)
        # forked by run(): a stop signal that came during start-up was held back for us
        if signal.sigpending() & _STOP_SIGNALS:
            proxy.stop()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        loop.run_until_complete(proxy.serve(reuse_port, parent))
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def run(settings: Settings) -> int:
    """Run the proxy (``settings.processes`` processes); return the exit status."""
    if settings.processes <= 1:
        run_one(settings)
        return 0
    # open (and close) the store once first: a bad URL fails here, not in every child, and a new
    # store's tables are made by one process, not raced for by all of them
    open_store(settings.store_url).close()
    children: list[int] = []
    # children start with the stop signals blocked until their own handlers are in place
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    parent = os.getpid()
    for _ in range(settings.processes):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child's exit code tells
            code = 0
            try:
                run_one(settings, reuse_port=True, parent=parent)
            except GearstashError as exc:  # one line, as the CLI says it
                log.error("%s", exc)
                code = 1
            except BaseException:
                log.exception("proxy process %d failed", os.getpid())
                code = 1
            finally:
                os._exit(code)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    for sig in _STOP_SIGNALS:
        signal.signal(sig, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    status = 0
    for child in children:
        while True:
            try:
                _, code = os.waitpid(child, 0)
                break
            except ChildProcessError:
                code = 0
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
        if os.waitstatus_to_exitcode(code) != 0:
            status = 1
    return status
