"""The subscription hub's change feed (gearstash.web.hub) on every store, through real servers:
a round reads only the followed jobs that changed, and followers still get every event of
their job in order, once, when many jobs change at once (also across a reconnect with the
last event id, and across a new attempt).

A counting wrapper (a real store underneath) tells which references each read asked for.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
from starlette.testclient import TestClient
from support.allstores import ALL_STORES, open_kind

from gearstash.model.records import Event, EventKind, JobKey, JobRef
from gearstash.spine.manager import open_store
from gearstash.store.contract import Store
from gearstash.testing.contract import new_key
from gearstash.testing.servers import PrivateServer, ServerSpec, redis_spec
from gearstash.web import api
from gearstash.web import hub as hub_module
from gearstash.web.app import create_app
from gearstash.web.events import Cursor, Follower
from gearstash.web.hub import Hub

READS = ("get_many", "get_after", "get_many_after")


class Counting:
    """A store that passes everything to ``inner`` and notes the references of each read.

    Has an optional method (``get_after``, ``stamps``, ``watch``…) only when ``inner`` has it,
    so the hub takes the same path as on the real store.
    """

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url
        self.capabilities = inner.capabilities
        self.read: list[JobRef] = []
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def _note(self, name: str, refs: list[JobRef]) -> None:
        with self._lock:
            self.calls[name] = self.calls.get(name, 0) + 1
            if name in READS:
                self.read.extend(refs)

    def reset(self) -> None:
        with self._lock:
            self.read.clear()
            self.calls.clear()

    def write(self, events: Any) -> None:
        self.inner.write(events)

    def get_many(self, refs: Any) -> Any:
        self._note("get_many", list(refs))
        return self.inner.get_many(refs)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        method: Callable[..., Any] = getattr(self.inner, name)  # AttributeError when absent

        def counted(*args: Any) -> Any:
            if name == "get_after":
                self._note(name, [args[0]])
            elif name in ("get_many_after", "stamps"):
                self._note(name, list(args[0]))
            return method(*args)

        return counted


@pytest.fixture(params=ALL_STORES)
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    url, cleanup = open_kind(request, request.param)
    opened = open_store(url)
    try:
        yield opened
    finally:
        opened.close()
        cleanup()


def _ref(key: JobKey) -> JobRef:
    return JobRef(key.handle, key.server, key.unique)


def _started(keys: list[JobKey]) -> list[Event]:
    return [Event(EventKind.STARTED, k, time.time(), function=b"f") for k in keys]


def test_a_round_reads_only_the_jobs_that_changed(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100 followed jobs, 3 written to: after the first read, reads ask for those 3 only (a
    store that can tell neither by its watch nor by stamps — memcached — reads them all)."""
    monkeypatch.setattr(hub_module, "RESYNC", 3600.0)  # no periodic check during the test
    counting = Counting(store)
    keys = [new_key() for _ in range(100)]
    store.write(_started(keys))
    changed = keys[10:13]

    async def scenario() -> None:
        hub = Hub(counting, interval=0.02)  # type: ignore[arg-type]
        firsts = {_ref(k): asyncio.Event() for k in keys}
        got: dict[JobRef, list[bytes]] = {}

        async def follower(ref: JobRef) -> None:
            async for record in hub.follow(ref):
                firsts[ref].set()
                if record is not None and record.data:
                    got[ref] = list(record.data)
                    return

        tasks = [asyncio.create_task(follower(_ref(k))) for k in keys]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in firsts.values())), 30)
        assert counting.read and set(counting.read) == {_ref(k) for k in keys}  # the first read
        await asyncio.sleep(0.2)  # a round or more with nothing written
        counting.reset()
        await asyncio.to_thread(
            store.write, [Event(EventKind.DATA, k, time.time(), b"x" + k.handle) for k in changed]
        )
        await asyncio.wait_for(asyncio.gather(*tasks[10:13]), 30)
        await asyncio.sleep(0.2)  # rounds after the write
        assert got == {_ref(k): [b"x" + k.handle] for k in changed}
        if "memcache" in store.url:
            assert set(counting.read) == {_ref(k) for k in keys}  # no change feed: all read
        else:
            assert counting.read and set(counting.read) <= {_ref(k) for k in changed}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await hub.close()

    asyncio.run(scenario())


def _chunks(messages: list[str]) -> list[tuple[str, Any, str]]:
    """(event, data, id) of each SSE message."""
    out = []
    for message in messages:
        fields = dict(line.split(": ", 1) for line in message.strip("\n").split("\n"))
        out.append((fields["event"], json.loads(fields["data"]), fields.get("id", "")))
    return out


def test_followers_get_every_event_in_order_when_many_jobs_change_at_once(
    store: Store,
) -> None:
    """60 jobs, each followed: 5 rounds in which every job gets a batch of 1 to 31 chunks (some
    jobs pass 64 chunks, read from their cursor), a status point and a warning; a sixth of the
    jobs restart (a new attempt) after round 3; every tenth follower leaves after its second
    message and comes back with its last event id. Each follower's events: every chunk written
    in its attempt, in order, once; the attempts' restart; the final state last."""
    keys = [new_key() for _ in range(60)]
    restarted = set(keys[::6])
    resumed = set(keys[::10])
    store.write(_started(keys))
    written: dict[JobKey, list[list[str]]] = {k: [[]] for k in keys}

    def writer() -> None:
        for round_no in range(5):
            batch: list[Event] = []
            for i, key in enumerate(keys):
                if round_no == 3 and key in restarted:
                    batch.append(Event(EventKind.STARTED, key, time.time(), function=b"f"))
                    written[key].append([])
                for n in range(1 + (i % 3) * 15):
                    text = f"{key.handle.decode()} r{round_no} c{n}"
                    written[key][-1].append(text)
                    batch.append(Event(EventKind.DATA, key, time.time(), text.encode()))
                batch.append(
                    Event(EventKind.STATUS, key, time.time(), numerator=round_no, denominator=5)
                )
                batch.append(Event(EventKind.WARNING, key, time.time(), b"w%d" % round_no))
            for start in range(0, len(batch), 200):  # many jobs in each write
                store.write(batch[start : start + 200])
            time.sleep(0.05)
        store.write([Event(EventKind.COMPLETED, k, time.time(), b"done") for k in keys])

    async def follow(hub: Hub, key: JobKey) -> list[str]:
        messages: list[str] = []
        cursor = Cursor()
        leave = key in resumed
        while True:
            follower = Follower(Cursor.parse(str(cursor)) if messages else Cursor())
            async for record in hub.follow(_ref(key)):
                messages.extend(follower.step(record, time.time()))
                cursor = follower.cursor
                if follower.done:
                    return messages
                if leave and len(messages) >= 2:
                    break  # this follower goes away; it comes back with its event id
            leave = False

    async def scenario() -> dict[JobKey, list[str]]:
        hub = Hub(store, interval=0.02)
        tasks = {k: asyncio.create_task(follow(hub, k)) for k in keys}
        await asyncio.sleep(0.2)
        await asyncio.to_thread(writer)
        done = await asyncio.wait_for(asyncio.gather(*tasks.values()), 120)
        await hub.close()
        return dict(zip(tasks, done, strict=True))

    for key, messages in asyncio.run(scenario()).items():
        events = _chunks(messages)
        assert events[-1][0] == "final" and events[-1][1]["state"] == "complete", key
        attempts: list[list[str]] = [[]]
        for event, data, _id in events:
            if event == "restart":
                attempts.append([])
            elif event == "chunk":
                attempts[-1].append(data["data"])
        if key in restarted:
            assert len(attempts) == 2, key
            first = written[key][0]
            assert attempts[0] == first[: len(attempts[0])], key  # a prefix: the rest was dropped
            assert attempts[1] == written[key][1], key
        else:
            assert attempts == written[key], key
        ids = [i for e, _d, i in events if e in ("chunk", "warning", "status")]
        assert len(ids) == len(set(ids)), key  # nothing sent twice


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_an_idle_stream_gets_keepalives_and_stays_open(
    kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job quiet for several keepalive periods: the stream sends keepalive comments and stays
    open, and the chunk written after them arrives on it, then the final state."""
    monkeypatch.setattr(api, "KEEPALIVE", 0.2)
    url, cleanup = open_kind(request, kind)
    opened = open_store(url)
    key = new_key()
    opened.write(_started([key]))

    def later() -> None:
        time.sleep(1.0)  # five keepalive periods
        opened.write([Event(EventKind.DATA, key, time.time(), b"late")])
        opened.write([Event(EventKind.COMPLETED, key, time.time(), b"r")])

    app = create_app(store=opened, servers=["127.0.0.1:9"], hub_interval=0.02)
    writer = threading.Thread(target=later)
    try:
        with TestClient(app, client=("127.0.0.1", 41000)) as client:
            writer.start()
            path = "/api/jobs/" + quote(str(_ref(key)), safe="") + "/events"
            with client.stream("GET", path) as response:
                text = "".join(response.iter_text())
            writer.join()
    finally:
        opened.close()
        cleanup()
    before_chunk = text.partition("event: chunk")[0]
    assert before_chunk.count(": keepalive") >= 2
    events = _chunks([m for m in text.split("\n\n") if m.startswith("id:")])
    assert [d["data"] for e, d, _i in events if e == "chunk"] == ["late"]
    assert events[-1][0] == "final" and events[-1][1]["state"] == "complete"


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
def test_a_follower_learns_a_lease_ran_out_without_a_write(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """A running job whose worker stops renewing its lease: with no write at all, its follower
    gets the state ``lost`` once the lease is over (the hub re-reads at the deadline)."""
    url, cleanup = open_kind(request, kind)
    opened = open_store(url)
    key = new_key()
    opened.write([Event(EventKind.STARTED, key, time.time(), function=b"f", lease=0.5)])

    async def scenario() -> list[str]:
        hub = Hub(opened, interval=0.02)
        follower = Follower(Cursor())
        states: list[str] = []
        async for record in hub.follow(_ref(key)):
            for event, data, _id in _chunks(list(follower.step(record, time.time()))):
                if event == "state":
                    states.append(data["state"])
            if states and states[-1] == "lost":
                break
        await hub.close()
        return states

    try:
        states = asyncio.run(asyncio.wait_for(scenario(), 30))
    finally:
        opened.close()
        cleanup()
    assert states == ["running", "lost"]


def test_a_store_outage_is_logged_once_and_followers_go_on_after_it(
    own_server: Callable[[Callable[[], ServerSpec]], PrivateServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis stops while a job is followed: the hub says so in one warning (not one a round),
    retries with a growing pause, says when reads work again, and the follower then gets what
    was written after the outage."""
    server = own_server(lambda: redis_spec(persistent=True))
    opened = open_store(server.url)
    key = new_key()
    opened.write([Event(EventKind.STARTED, key, time.time(), function=b"f")])
    caplog.set_level(logging.DEBUG, logger=hub_module.__name__)

    def failed_rounds() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "followed jobs failed" in r.getMessage()]

    async def scenario() -> list[str]:
        hub = Hub(opened, interval=0.02)
        follower = Follower(Cursor())
        seen: list[str] = []

        async def outage() -> None:
            await asyncio.sleep(0.3)
            await asyncio.to_thread(server.stop)
            while len(failed_rounds()) < 3:
                await asyncio.sleep(0.05)
            await asyncio.to_thread(server.start)
            await asyncio.to_thread(
                opened.write, [Event(EventKind.DATA, key, time.time(), b"after the outage")]
            )

        task = asyncio.create_task(outage())
        async for record in hub.follow(_ref(key)):
            for event, data, _id in _chunks(list(follower.step(record, time.time()))):
                seen.append(event if event != "chunk" else data["data"])
            if "after the outage" in seen:
                break
        await task
        await hub.close()
        return seen

    try:
        seen = asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        opened.close()
    assert seen == ["state", "after the outage"]
    failures = failed_rounds()
    assert len(failures) >= 3
    assert [r.levelno for r in failures] == [logging.WARNING] + [logging.DEBUG] * (len(failures) - 1)
    back = [r for r in caplog.records if "works again" in r.getMessage()]
    assert len(back) == 1 and back[0].levelno == logging.WARNING
