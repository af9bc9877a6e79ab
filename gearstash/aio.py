"""An asyncio client for FastAPI/Starlette and other asyncio applications.

:class:`AsyncClient` offers :meth:`~AsyncClient.fetch`, :meth:`~AsyncClient.fetch_many`,
:meth:`~AsyncClient.wait` and :meth:`~AsyncClient.follow`. Fetches run the blocking
:class:`gearstash.client.client.Client` on the event loop's default executor; waits and follows share
one subscription hub (:class:`gearstash.web.hub.Hub`) per client, so a thousand waiters cost one
store read per round and no thread each::

    client = AsyncClient(["gearman1:4730"], store="redis://127.0.0.1/0")
    async for update in client.follow(ref):
        print(update.chunks, update.view.state)
    await client.aclose()
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Sequence

from gearstash.client.client import Client, Update
from gearstash.client.links import RefLike, as_ref
from gearstash.errors import JobNotFound, WaitTimeout
from gearstash.model.records import JobRecord, JobRef, State
from gearstash.model.views import JobView, merge_state
from gearstash.store.contract import Store
from gearstash.web.events import read_state
from gearstash.web.hub import Hub


class AsyncClient:
    """asyncio access to jobs (see the module doc).

    :param servers: as for :class:`gearstash.client.client.Client`.
    :param store: a store object or URL, as for ``Client``.
    :param client: an existing ``Client`` to use instead (not closed by :meth:`aclose`).
    :param interval: seconds between two reads of a store without push, while anything is
        followed.

    Use one instance from one event loop.
    """

    def __init__(
        self,
        servers: Iterable[str] | str | None = None,
        *,
        store: Store | str | None = None,
        client: Client | None = None,
        interval: float = 0.05,
    ) -> None:
        self._owns = client is None
        self._client = client if client is not None else Client(servers, store=store)
        self._interval = interval
        self._hub: Hub | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def client(self) -> Client:
        """The blocking client underneath."""
        return self._client

    async def aclose(self) -> None:
        """Stop the hub; close the client if this object made it."""
        if self._hub is not None:
            await self._hub.close()
            self._hub = None
        if self._owns:
            await asyncio.to_thread(self._client.close)

    async def fetch(self, ref: RefLike) -> JobView:
        """:meth:`Client.fetch <gearstash.client.client.Client.fetch>` without blocking the loop."""
        return await asyncio.to_thread(self._client.fetch, ref)

    async def fetch_many(self, refs: Sequence[RefLike]) -> list[JobView]:
        """:meth:`Client.fetch_many <gearstash.client.client.Client.fetch_many>` without blocking."""
        return await asyncio.to_thread(self._client.fetch_many, list(refs))

    def _the_hub(self) -> Hub:
        if self._hub is None:
            self._hub = Hub(self._client.store, interval=self._interval)
        return self._hub

    async def follow(
        self, ref: RefLike, *, after: int = 0, timeout: float | None = None
    ) -> AsyncIterator[Update]:
        """Yield :class:`~gearstash.client.Update` objects as the job progresses, ending with its
        final state — like :meth:`Client.follow <gearstash.client.client.Client.follow>`, driven by the
        store's records (an ``update.view`` has no live server status: ``status`` is None).

        Chunks from index ``after`` on; a new attempt restarts them from 0 (``restarted``).
        Raises JobNotFound when neither the job server nor the store knows the job at the start,
        WaitTimeout after ``timeout`` seconds.
        """
        job = as_ref(ref)
        first = await self.fetch(job)
        if first.state is State.UNKNOWN and first.status is not None:
            raise JobNotFound(f"job {job} is unknown to the job server and the store")
        if first.state.final:
            record = first.record
            chunks = record.data[after:] if record is not None else []
            yield Update(chunks, after, first)
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        updates = self._the_hub().follow(job)
        cursor, attempt = after, None
        seen: tuple[object, ...] | None = None
        try:
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise WaitTimeout(f"job {job} not finished after {timeout} s")
                try:
                    record = await asyncio.wait_for(anext(updates), left)
                except TimeoutError:
                    raise WaitTimeout(f"job {job} not finished after {timeout} s") from None
                update, cursor, attempt = _update(job, record, cursor, attempt)
                marker = (update.view.state, update.view.numerator, cursor, attempt)
                if update.chunks or update.restarted or marker != seen:
                    seen = marker
                    yield update
                if update.view.state.final:
                    return
        finally:
            await updates.aclose()

    async def wait(self, ref: RefLike, timeout: float | None = None) -> JobView:
        """Wait until the job is complete, failed, expired or lost; its final merged view (every
        chunk). Raises JobNotFound and WaitTimeout like :meth:`follow`."""
        async for update in self.follow(ref, after=1 << 62, timeout=timeout):
            if update.view.state.final:
                return await self.fetch(update.view.ref)
        raise AssertionError("follow() ended without a final state")  # pragma: no cover


def _update(
    job: JobRef, record: JobRecord | None, cursor: int, attempt: int | None
) -> tuple[Update, int, int | None]:
    """The update one version of the record makes, and the new (cursor, attempt)."""
    restarted = False
    if record is not None:
        if attempt and record.attempt != attempt:
            cursor, restarted = 0, True
        attempt = record.attempt
    view = merge_state(job, None, record)
    view.state = read_state(record, time.time()) if record is not None else view.state
    chunks = list(record.data[cursor:]) if record is not None else []
    update = Update(chunks, cursor, view, restarted)
    return update, cursor + len(chunks), attempt


__all__ = ["AsyncClient"]
