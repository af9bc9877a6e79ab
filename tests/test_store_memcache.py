"""The memcache store (``memcache://``): the store contract, and what only memcached makes hard.

Every test runs against a private memcached (the session's shared one, emptied before each test,
or one of the test's own when it kills, restarts or inspects the server).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote_to_bytes

import gearstash_memcache.protocol as protocol
import pytest
from gearstash_memcache.layout import exptime, handle_digest, job_digest, pick_server
from gearstash_memcache.store import MemcacheStore
from support import stores as contract
from support.waiting import wait_until

from gearstash.errors import ConfigError, StoreError
from gearstash.model.records import Event, EventKind, JobKey, JobRecord, JobRef, State
from gearstash.spine.manager import open_store
from gearstash.store.contract import Store, get_after
from gearstash.testing.contract import StoreContract
from gearstash.testing.servers import PrivateServer, memcached_spec

T0 = contract.T0
ev = contract.ev


@pytest.fixture
def mc_url(memcached: str) -> str:
    return f"memcache://{memcached}"


@pytest.fixture
def mc_store(mc_url: str) -> Iterator[Store]:
    store = open_store(mc_url)
    try:
        yield store
    finally:
        store.close()


def _mc(store: Store) -> MemcacheStore:
    assert isinstance(store, MemcacheStore)
    return store


def get(store: Store, ref: JobRef) -> JobRecord | None:
    return store.get_many([ref])[0]


def full_ref(key: JobKey) -> JobRef:
    return JobRef(key.handle, key.server, key.unique)


STORING = (b"set", b"add", b"cas", b"append")


class Spy:
    """Records every command the store sends (wraps ``protocol.run``)."""

    def __init__(self) -> None:
        self.rounds: list[dict[int, list[protocol.Cmd]]] = []

    def commands(self) -> Iterator[tuple[list[bytes], bytes]]:
        """Every command sent, in order: the words of its first line, and what follows it."""
        for batches in self.rounds:
            for commands in batches.values():
                for command in commands:
                    line, _, rest = command.text.partition(b"\r\n")
                    yield line.split(b" "), rest

    def sent_keys(self) -> list[bytes]:
        found = []
        for words, _ in self.commands():
            found += words[1:] if words[0] in (b"get", b"gets") else [words[1]]
        return found

    def written_keys(self) -> list[bytes]:
        """The key of every set/add/cas/append sent, in order."""
        return [words[1] for words, _ in self.commands() if words[0] in STORING]

    def stored_sizes(self) -> list[int]:
        sizes = []
        for words, rest in self.commands():
            if words[0] in STORING:
                sizes.append(int(words[4]))
                assert len(rest) == int(words[4]) + 2
        return sizes


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    recorder = Spy()
    real = protocol.run

    def run(pools: Any, batches: dict[int, list[protocol.Cmd]]) -> Any:
        recorder.rounds.append(batches)
        return real(pools, batches)

    monkeypatch.setattr(protocol, "run", run)
    return recorder


def metadump(server: PrivateServer) -> dict[bytes, dict[str, str]]:
    """Every live key on ``server`` with its metadata (``lru_crawler metadump all``).

    One crawl can skip an item that memcached's LRU maintainer is moving between segments at
    that moment, so crawls are repeated until one finds nothing new; the union is returned."""
    items: dict[bytes, dict[str, str]] = {}
    for _ in range(6):
        found = _metadump_once(server)
        new = found.keys() - items.keys()
        items.update(found)
        if not new and items:
            break
    return items


def _metadump_once(server: PrivateServer) -> dict[bytes, dict[str, str]]:
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(b"lru_crawler metadump all\r\n")
        buf = b""
        while not buf.endswith(b"END\r\n"):
            chunk = sock.recv(65536)
            assert chunk, "memcached closed the connection"
            buf += chunk
    items = {}
    for line in buf.decode().splitlines():
        if line.startswith("key="):
            fields = dict(word.split("=", 1) for word in line.split())
            items[unquote_to_bytes(fields.pop("key"))] = fields
    return items


def raw_client(address: str) -> Any:
    from pymemcache.client.base import Client

    host, _, port = address.rpartition(":")
    # every set is acknowledged (pymemcache sends noreply by default: a store read on another
    # connection could then overtake it)
    return Client((host, int(port)), connect_timeout=2, timeout=2, default_noreply=False)


# ------------------------------------------------------------------------ the store contract


class TestMemcacheContract(StoreContract):
    """The shipped store contract (gearstash.testing.contract) on memcached."""

    @pytest.fixture
    def store_url(self, mc_url: str) -> str:
        return mc_url


def test_open_through_both_schemes_and_capabilities(memcached: str) -> None:
    for scheme in ("memcache", "memcached"):
        store = open_store(f"{scheme}://{memcached}?ttl=60&prefix=x1")
        try:
            assert store.url == f"{scheme}://{memcached}?ttl=60&prefix=x1"
            assert store.capabilities == {"shared", "expires", "delete", "evicts"}
            assert "push" not in store.capabilities
            key = contract.new_key()
            # now, not the suite's fixed T0: with ?ttl=60 a job written at T0 would already be
            # expired once the session is a minute old
            store.write(contract.full_job(key, time.time()))
            assert get(store, full_ref(key)) is not None
            assert _mc(store).keys.head(job_digest(key)).startswith(b"x1:")
        finally:
            store.close()
    with pytest.raises(StoreError, match="closed"):
        store.write(contract.full_job(contract.new_key()))


# ------------------------------------------------------------------------ keys


HOSTILE = [
    (b"H:with space:1", b"uniq with spaces"),
    (b"H:\r\n\x00\x01\x7f:2", b"\r\nset evil 0 0 1\r\nx"),
    (b"H:" + b"h" * 400, b"u" * 400),
    (b"../../etc/passwd", b"../"),
    (b"\xff\xfe\x80invalid", b"\xc3\x28"),
    (b"", b""),
]


def test_keys_are_valid_for_memcached_whatever_the_job(
    memcached_server: PrivateServer, spy: Spy
) -> None:
    store = open_store(f"memcache://{memcached_server.address}")
    try:
        keys = []
        for n, (handle, unique) in enumerate(HOSTILE):
            server = f"weird host\r\n:{n}" if n % 2 else contract.new_server()
            key = JobKey(server, handle, unique)
            keys.append(key)
            store.write(contract.full_job(key))
            store.write([ev(EventKind.DATA, key, T0 + 1, payload=b"late")])
        refs = [full_ref(k) for k in keys] + [JobRef(k.handle) for k in keys]
        got = store.get_many(refs)
        for key, record in zip(keys + keys, got, strict=True):
            assert record is not None and record.key == key
            assert record.data == [b"one", b"two", b"three", b"late"]
        assert store.delete([JobRef(keys[1].handle)]) == 1
    finally:
        store.close()
    sent = spy.sent_keys()
    assert len(sent) > 50
    for key in sent:
        assert 0 < len(key) <= 250, key
        assert all(0x20 < c < 0x7F for c in key), key
    stored = metadump(memcached_server)
    assert len(stored) > 20
    assert not any(k.startswith(b"evil") for k in stored)
    for key in stored:
        assert len(key) <= 250 and all(0x20 < c < 0x7F for c in key), key


def test_a_digest_collision_never_returns_another_job(mc_store: Store, mc_url: str) -> None:
    store = _mc(mc_store)
    mine, other = contract.new_key(), contract.new_key()
    store.write(contract.full_job(other))
    # Make "mine"'s head key hold "other"'s head: what a SHA-1 collision would look like.
    client = raw_client(mc_url.removeprefix("memcache://"))
    try:
        value = client.get(store.keys.head(job_digest(other)))
        assert value is not None
        assert client.set(store.keys.head(job_digest(mine)), value)
    finally:
        client.close()
    assert get(store, full_ref(mine)) is None
    assert get(store, full_ref(other)) is not None
    with pytest.raises(StoreError, match="collision"):
        store.write([ev(EventKind.DATA, mine, T0, payload=b"x")])


# ------------------------------------------------------------------------ several servers


@pytest.fixture
def two_servers(
    memcached_server: PrivateServer, own_server: Any
) -> tuple[PrivateServer, PrivateServer]:
    return memcached_server, own_server(memcached_spec)


def test_several_servers_share_the_jobs(two_servers: tuple[PrivateServer, PrivateServer]) -> None:
    first, second = two_servers
    url = f"memcache://{first.address},{second.address}"
    store = open_store(url)
    reader = open_store(f"memcached://{first.address},{second.address}")
    try:
        keys = [contract.new_key() for _ in range(120)]
        for key in keys:
            store.write(contract.full_job(key))
        got = reader.get_many([JobRef(k.handle) for k in keys] + [full_ref(k) for k in keys])
        assert [r.key if r else None for r in got] == keys + keys
        assert all(r is not None and r.data == [b"one", b"two", b"three"] for r in got)
        names = [first.address, second.address]
        dumps = [metadump(first), metadump(second)]
        for key in keys:  # every key of a job on the server rendezvous hashing picks
            j = job_digest(key)
            home = pick_server(names, j)
            assert any(k.startswith(f"gs:{j}:".encode()) for k in dumps[home])
            assert not any(f":{j}:".encode() in k for k in dumps[1 - home])
            index = f"gs:h:{handle_digest(key.handle)}".encode()
            assert index in dumps[pick_server(names, handle_digest(key.handle))]
        homes = [pick_server(names, job_digest(k)) for k in keys]
        assert 30 < homes.count(0) < 90  # spread over both
        assert store.delete([JobRef(k.handle) for k in keys[:60]]) == 60
        got = reader.get_many([JobRef(k.handle) for k in keys])
        assert got[:60] == [None] * 60 and all(r is not None for r in got[60:])
    finally:
        store.close()
        reader.close()


def test_pick_server_is_the_documented_formula() -> None:
    import hashlib

    servers = ["10.0.0.1:11211", "10.0.0.2:11211", "[::1]:11211"]
    for n in range(50):
        token = f"{n:024x}"
        scores = [hashlib.sha256(f"{s} {token}".encode()).hexdigest() for s in servers]
        assert pick_server(servers, token) == scores.index(max(scores))


# ------------------------------------------------------------------------ concurrent writers


def test_concurrent_threads_append_to_one_job(mc_store: Store) -> None:
    key = contract.new_key()
    mc_store.write([ev(EventKind.STARTED, key, T0, function=b"f")])
    writers, count = 8, 30
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def work(w: int) -> None:
        try:
            barrier.wait(timeout=10)
            for i in range(count):
                batch = [ev(EventKind.DATA, key, T0 + i, payload=b"%d:%d" % (w, i))]
                if i % 3 == 0:
                    batch.append(ev(EventKind.WARNING, key, T0 + i, payload=b"w%d:%d" % (w, i)))
                mc_store.write(batch)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    record = get(mc_store, full_ref(key))
    assert record is not None and record.attempt == 1 and record.state is State.RUNNING
    assert len(record.data) == writers * count == len(set(record.data))
    assert len(record.warnings) == writers * 10
    for w in range(writers):
        assert [c for c in record.data if c.startswith(b"%d:" % w)] == [
            b"%d:%d" % (w, i) for i in range(count)
        ]


def test_writers_racing_to_create_a_job_lose_nothing(mc_url: str) -> None:
    """Several stores (no shared cache) write the first events of the same jobs at once."""
    writers, rounds = 6, 15
    stores = [open_store(mc_url) for _ in range(writers)]
    keys = [contract.new_key() for _ in range(rounds)]
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def work(w: int) -> None:
        try:
            for key in keys:
                barrier.wait(timeout=10)
                stores[w].write([ev(EventKind.DATA, key, T0 + w, payload=b"%d" % w)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        for record in stores[0].get_many([full_ref(k) for k in keys]):
            assert record is not None and record.attempt == 1 and record.started_at is None
            assert sorted(record.data) == [b"%d" % w for w in range(writers)]
    finally:
        for store in stores:
            store.close()


def _fork_writer(store: Store, key: JobKey, w: int, count: int) -> None:
    for i in range(count):
        store.write([Event(EventKind.DATA, key, T0 + i, payload=b"%d:%d" % (w, i))])
    store.close()


def test_a_store_survives_fork(mc_store: Store) -> None:
    """Children forked with the parent's store (and its open connections) write safely."""
    key = contract.new_key()
    mc_store.write([ev(EventKind.STARTED, key, T0)])  # the parent's pool holds a connection now
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_fork_writer, args=(mc_store, key, w, 25)) for w in range(3)]
    for proc in procs:
        proc.start()
    for i in range(25):
        mc_store.write([ev(EventKind.DATA, key, T0 + i, payload=b"p:%d" % i)])
    for proc in procs:
        proc.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    record = get(mc_store, full_ref(key))
    assert record is not None and len(record.data) == 100
    for w in ["0", "1", "2", "p"]:
        mine = [c for c in record.data if c.startswith(w.encode() + b":")]
        assert mine == [b"%s:%d" % (w.encode(), i) for i in range(25)]


def test_a_stale_writer_appends_to_the_new_attempt(mc_url: str) -> None:
    """Apply semantics: data from a writer that missed a restart lands in the current attempt."""
    old, new = open_store(mc_url), open_store(mc_url)
    try:
        key = contract.new_key()
        old.write([ev(EventKind.STARTED, key, T0), ev(EventKind.DATA, key, T0, payload=b"a1")])
        new.write(
            [ev(EventKind.STARTED, key, T0 + 5), ev(EventKind.DATA, key, T0 + 5, payload=b"b1")]
        )
        old.write([ev(EventKind.DATA, key, T0 + 6, payload=b"a2")])  # its cached head is stale
        old.write([ev(EventKind.COMPLETED, key, T0 + 7, payload=b"done")])
        record = get(new, full_ref(key))
        assert record is not None
        assert (record.attempt, record.data, record.result) == (2, [b"b1", b"a2"], b"done")
    finally:
        old.close()
        new.close()


def test_a_reader_stops_at_a_hole(mc_store: Store, mc_url: str) -> None:
    store = _mc(mc_store)
    key = contract.new_key()
    store.write([ev(EventKind.STARTED, key, T0)])
    for i in range(5):
        store.write([ev(EventKind.DATA, key, T0, payload=b"%d" % i)])
    head = get(store, full_ref(key))
    assert head is not None and head.data == [b"0", b"1", b"2", b"3", b"4"]
    client = raw_client(mc_url.removeprefix("memcache://"))
    try:
        j = job_digest(key)
        value = client.get(store.keys.head(j))
        gen = json.loads(value[1:])["chunks"]["generation"]
        assert client.delete(store.keys.chunk(j, gen, 0, 2), noreply=False)
    finally:
        client.close()
    record = get(store, full_ref(key))
    assert record is not None and record.data == [b"0", b"1"]


# ------------------------------------------------------------------------ big values


def test_big_values_are_split_below_the_item_limit(mc_store: Store, spy: Spy) -> None:
    key = contract.new_key()
    chunk = os.urandom(3 * 1024 * 1024)
    result = bytes(range(256)) * (5 * 4096) + b"\xff"  # 5 MiB + 1, not UTF-8
    mc_store.write([ev(EventKind.STARTED, key, T0)])
    mc_store.write([ev(EventKind.DATA, key, T0 + 1, payload=chunk)])
    mc_store.write([ev(EventKind.DATA, key, T0 + 2, payload=b"small")])
    mc_store.write([ev(EventKind.COMPLETED, key, T0 + 3, payload=result)])
    record = get(mc_store, full_ref(key))
    assert record is not None
    assert record.data == [chunk, b"small"] and record.result == result
    assert get_after(mc_store, full_ref(key), 1).data == [b"small"]  # type: ignore[union-attr]
    sizes = spy.stored_sizes()
    assert max(sizes) < 1024 * 1024 - 4096  # every memcached item stays under 1 MiB
    assert sum(sizes) > len(chunk) + len(result) * 4 // 3  # all of it went (result as base64)


def test_a_split_running_head_survives_races(mc_url: str) -> None:
    """A head too big for one item, written by two stores whose cached CAS values go stale."""
    first, second = open_store(mc_url), open_store(mc_url)
    try:
        key = contract.new_key()
        huge = b"f" * 1_500_000  # the function name alone overflows an item
        first.write([ev(EventKind.STARTED, key, T0, function=huge)])
        second.write([ev(EventKind.DATA, key, T0 + 1, payload=b"from second")])
        first.write([ev(EventKind.DATA, key, T0 + 2, payload=b"from first")])  # stale CAS
        second.write([ev(EventKind.COMPLETED, key, T0 + 3, payload=b"done")])  # stale CAS
        for store in (first, second):
            record = get(store, JobRef(key.handle))
            assert record is not None and record.function == huge
            assert record.data == [b"from second", b"from first"]
            assert (record.state, record.result, record.attempt) == (State.COMPLETE, b"done", 1)
    finally:
        first.close()
        second.close()


def test_an_evicted_handle_index_comes_back(mc_store: Store, mc_url: str) -> None:
    store = _mc(mc_store)
    key = contract.new_key()
    store.write([ev(EventKind.STARTED, key, T0)])
    client = raw_client(mc_url.removeprefix("memcache://"))
    try:
        index = store.keys.index(handle_digest(key.handle))
        assert client.get(index) == b" " + job_digest(key).encode()
        assert client.delete(index, noreply=False)  # as if memcached had evicted it
        assert get(store, JobRef(key.handle)) is None
        store.write([ev(EventKind.DATA, key, T0 + 1, payload=b"more")])
        record = get(store, JobRef(key.handle))
        assert record is not None and record.data == [b"more"]
    finally:
        client.close()


def test_unique_index_submissions_and_heartbeats(mc_store: Store, mc_url: str, spy: Spy) -> None:
    store = _mc(mc_store)
    unique = contract.new_handle("u")
    key, retry = contract.new_key(unique=unique), contract.new_key(unique=unique)
    client = raw_client(mc_url.removeprefix("memcache://"))
    try:
        spy.rounds.clear()
        store.write([ev(EventKind.SUBMITTED, key, T0, function=b"f")])
        assert len(spy.rounds) == 2  # gets (is there a record?), then add
        index = store.keys.unique_index(handle_digest(unique))
        assert client.get(index) == b" " + job_digest(key).encode()
        head = client.get(store.keys.head(job_digest(key)))
        spy.rounds.clear()
        store.write([ev(EventKind.SUBMITTED, key, T0 + 1, function=b"g")])
        assert len(spy.rounds) == 0  # this process wrote the head: nothing to do
        assert client.get(store.keys.head(job_digest(key))) == head
        spy.rounds.clear()
        store.write([ev(EventKind.STARTED, key, T0 + 2, lease=30.0)])
        assert len(spy.rounds) == 1  # cas: this process wrote the queued head
        spy.rounds.clear()
        store.write([ev(EventKind.HEARTBEAT, key, T0 + 3, lease=30.0)])
        assert len(spy.rounds) == 1  # cas
        record = get(store, JobRef(b"", None, unique))
        assert record is not None and (record.attempt, record.lease_until) == (1, T0 + 33.0)
        store.write([ev(EventKind.STARTED, retry, T0 + 4)])  # the unique again, another handle
        assert client.get(index) == b" %s %s" % (
            job_digest(key).encode(),
            job_digest(retry).encode(),
        )
        assert client.delete(index, noreply=False)  # as if memcached had evicted it
        assert get(store, JobRef(b"", None, unique)) is None
        store.write([ev(EventKind.DATA, retry, T0 + 5, payload=b"more")])  # comes back
        record = get(store, JobRef(b"", None, unique))
        assert record is not None and record.key == retry and record.data == [b"more"]
        assert store.delete([JobRef(b"", None, unique)]) == 1  # the first was lost with the index
        assert client.get(index) == b""

        nothing = contract.new_key()
        spy.rounds.clear()
        store.write([ev(EventKind.HEARTBEAT, nothing, T0, lease=30.0)])
        assert [k for k in spy.sent_keys() if not k.endswith(b":job")] == []  # a gets, no more
        assert get(store, full_ref(nothing)) is None
        assert client.get(store.keys.index(handle_digest(nothing.handle))) is None

        third = contract.new_key()
        store.write([ev(EventKind.SUBMITTED, third, T0)])
        other = open_store(mc_url)  # a worker elsewhere
        try:
            spy.rounds.clear()
            other.write([ev(EventKind.STARTED, third, T0 + 1, lease=30.0)])
            assert len(spy.rounds) == 2  # add (loses to the queued head), cas
        finally:
            other.close()
        record = get(store, full_ref(third))
        assert record is not None and (record.state, record.attempt) == (State.RUNNING, 1)
    finally:
        client.close()


# ------------------------------------------------------------------------ TTL


def test_ttl_expires_records(memcached: str) -> None:
    """Wide windows (memcached's clock has whole seconds, the machine may be busy): ``kept``
    lives 4 s, then reads expired for min(ttl, grace) = 4 s more; ``gone`` lives 1 s and
    leaves no tombstone."""
    store = open_store(f"memcache://{memcached}?ttl=4&grace=60")
    quick = open_store(f"memcache://{memcached}?ttl=1&grace=0")
    try:
        now = time.time()
        kept, gone = contract.new_key(), contract.new_key()
        store.write(
            [ev(EventKind.STARTED, kept, now), Event(EventKind.DATA, kept, now, b"d", ttl=4)]
        )
        quick.write([ev(EventKind.STARTED, gone, now), ev(EventKind.DATA, gone, now, payload=b"d")])
        fresh = get(store, full_ref(kept))
        assert fresh is not None and fresh.state is State.RUNNING and fresh.data == [b"d"]
        assert fresh.expires_at == pytest.approx(now + 4)
        wait_until(lambda: get(quick, JobRef(gone.handle)) is None, what="gone to be forgotten")
        a = wait_until(
            lambda: (
                (r := get(store, JobRef(kept.handle))) is not None
                and r.state is State.EXPIRED
                and r
            ),
            what="kept to read expired",
        )
        assert (a.state, a.key, a.data) == (State.EXPIRED, kept, [])
        assert a.expires_at == pytest.approx(now + 4)
        assert time.time() >= now + 4 - 1  # memcached may drop an item up to 1 s early
    finally:
        store.close()
        quick.close()


def test_a_job_running_longer_than_its_ttl_keeps_its_first_chunks(memcached: str) -> None:
    """Chunks are refreshed when the job outruns them: ttl=3, chunks live ttl + slack, and the
    job writes a chunk every 0.5 s for 10 s (a stall of 2 s is still within the slack)."""
    store = open_store(f"memcache://{memcached}?ttl=3")
    try:
        key = contract.new_key()
        store.write([ev(EventKind.STARTED, key, time.time())])
        sent = []
        for i in range(20):
            sent.append(b"%d" % i)
            store.write([ev(EventKind.DATA, key, time.time(), payload=sent[-1])])
            time.sleep(0.5)
        store.write([ev(EventKind.COMPLETED, key, time.time(), payload=b"r")])
        record = get(store, full_ref(key))
        assert record is not None and record.data == sent and record.result == b"r"
    finally:
        store.close()


def test_ttl_per_event_and_beyond_30_days(mc_store: Store, mc_url: str) -> None:
    now = time.time()
    forever, long = contract.new_key(), contract.new_key()
    mc_store.write([Event(EventKind.STARTED, forever, now, ttl=0)])
    mc_store.write([Event(EventKind.STARTED, long, now, ttl=40 * 86400)])
    got_forever, got_long = mc_store.get_many([full_ref(forever), full_ref(long)])
    assert got_forever is not None and got_forever.expires_at is None
    assert got_long is not None and got_long.expires_at == pytest.approx(now + 40 * 86400)
    store = _mc(mc_store)
    exps = metadump_like(mc_url, [store.keys.head(job_digest(k)) for k in (forever, long)])
    assert exps[0] == -1  # memcached: never expires
    assert exps[1] == pytest.approx(now + 40 * 86400, abs=5)  # a unix time, not "in 40 days"
    assert exptime(now + 40 * 86400, now) > 1_000_000_000 and 0 < exptime(now + 60, now) <= 61


def metadump_like(mc_url: str, keys: list[bytes]) -> list[float]:
    """The expiry (unix time, -1 = never) memcached holds for ``keys`` (``me`` debug command)."""
    host, _, port = mc_url.removeprefix("memcache://").rpartition(":")
    out = []
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        for key in keys:
            sock.sendall(b"me " + key + b"\r\n")
            line = b""
            while not line.endswith(b"\r\n"):
                line += sock.recv(4096)
            if not line.startswith(b"ME "):
                raise AssertionError(line)
            fields = dict(w.split(b"=", 1) for w in line.split()[2:])
            exp = int(fields[b"exp"])  # minus the seconds left; -1 for "never"
            out.append(-1.0 if exp == -1 else time.time() - exp)
    return out


# ------------------------------------------------------------------------ cursor, delete


def test_get_after_reads_only_new_data_chunks(mc_store: Store, spy: Spy) -> None:
    store = _mc(mc_store)
    key = contract.new_key()
    events = [ev(EventKind.STARTED, key, T0)]
    events += [ev(EventKind.DATA, key, T0 + i, payload=b"c%d" % i) for i in range(10)]
    events += [ev(EventKind.STATUS, key, T0 + 11, numerator=1, denominator=2)]
    events += [ev(EventKind.WARNING, key, T0 + 12, payload=b"w")]
    store.write(events)
    spy.rounds.clear()
    record = store.get_after(full_ref(key), 7)
    assert record is not None
    assert (record.data, record.data_offset) == ([b"c7", b"c8", b"c9"], 7)
    assert (record.warnings, [p.numerator for p in record.status]) == ([b"w"], [1])
    data_keys = [k for k in spy.sent_keys() if b":d:" in k]
    assert len(data_keys) == 3
    past = store.get_after(JobRef(key.handle), 50)
    assert past is not None and (past.data, past.data_offset) == ([], 50)


def test_delete_removes_every_key(memcached_server: PrivateServer, spy: Spy) -> None:
    store = open_store(f"memcache://{memcached_server.address}")
    try:
        handle = contract.new_handle()
        one = JobKey(contract.new_server(), handle, b"u1")
        two = JobKey(contract.new_server(), handle, b"u2")
        keep = contract.new_key()
        big = os.urandom(1_500_000)
        for key in (one, two, keep):
            store.write(contract.full_job(key))
        store.write(
            [ev(EventKind.STARTED, one, T0 + 9), ev(EventKind.DATA, one, T0 + 9, payload=big)]
        )
        store.write([ev(EventKind.COMPLETED, one, T0 + 10, payload=big)])
        store.write([ev(EventKind.DATA, two, T0 + 9, payload=b"late")])
        # every key the store wrote for the two jobs, from the commands it sent (memcached's
        # `lru_crawler metadump` can skip items the LRU is moving between its segments)
        mine = [job_digest(k).encode() for k in (one, two)]
        written = {k for k in spy.written_keys() if any(j in k for j in mine)}
        assert len(written) >= 25  # records, events and the big values' chunks
        client = raw_client(memcached_server.address)
        try:
            assert all(client.get(k) is not None for k in written)
            assert store.delete([JobRef(handle)]) == 2
            assert store.get_many([JobRef(handle), full_ref(one), full_ref(two)]) == [None] * 3
            assert get(store, full_ref(keep)) is not None
            assert [k for k in written if client.get(k) is not None] == []
            assert [k for k in metadump(memcached_server) if any(j in k for j in mine)] == []
        finally:
            client.close()
        assert store.delete([JobRef(handle)]) == 0
        index = _mc(store).keys.index(handle_digest(handle))
        client = raw_client(memcached_server.address)
        try:
            assert client.get(index) == b""  # both jobs unlisted
        finally:
            client.close()
    finally:
        store.close()


def test_purge_and_watch(mc_store: Store) -> None:
    from gearstash.store.contract import PollWatch, purge, watch

    assert purge(mc_store) == 0
    waiter = watch(mc_store, [JobRef(b"H:x:1")])
    assert isinstance(waiter, PollWatch)
    started = time.monotonic()
    assert waiter.wait(0.05) is False and time.monotonic() - started >= 0.04
    waiter.close()


# ------------------------------------------------------------------------ failures


def test_dead_memcached_raises_store_error(memcached_server: PrivateServer) -> None:
    url = f"memcache://{memcached_server.address}?timeout=0.5"
    store = open_store(url)
    try:
        key = contract.new_key()
        store.write([ev(EventKind.STARTED, key, T0)])
        memcached_server.kill()
        for action in (
            lambda: store.write([ev(EventKind.DATA, key, T0, payload=b"x")]),
            lambda: store.get_many([JobRef(key.handle)]),
            lambda: store.delete([JobRef(key.handle)]),
        ):
            with pytest.raises(StoreError) as info:
                action()
            message = str(info.value)
            assert message.startswith(f"{url}: ")
            assert f"memcached {memcached_server.address}" in message
            assert "refused" in message or "closed" in message or "reset" in message.lower()
        memcached_server.start()  # same port: the store reconnects by itself
        store.write([ev(EventKind.STARTED, key, T0)])
        assert get(store, full_ref(key)) is not None
    finally:
        store.close()
    with pytest.raises(StoreError, match=r"opening the store failed .*refused"):
        memcached_server.kill()
        open_store(url)


def test_silent_server_times_out() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match=r"no answer within 0.3 s"):
            open_store(f"memcache://127.0.0.1:{port}?timeout=0.3")
        assert time.monotonic() - started < 3
    finally:
        for sock in accepted:
            sock.close()
        listener.close()


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("memcache://user:s3cret@127.0.0.1:1", "no user or password"),
        ("memcache://127.0.0.1:1,127.0.0.1:1", "named twice"),
        ("memcache://127.0.0.1:99999", "bad port"),
        ("memcache://127.0.0.1:1?ttl=-1", "ttl"),
        ("memcache://127.0.0.1:1?prefix=a%20b", "prefix"),
        ("memcache://127.0.0.1:1?bogus=1", "unknown option"),
        ("memcache://::1", "brackets"),
        ("memcache://127.0.0.1:1/path", "no path"),
    ],
)
def test_bad_urls(url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        open_store(url)
    assert "s3cret" not in str(info.value)


def test_sockets_have_tcp_nodelay(mc_store: Store) -> None:
    pool = _mc(mc_store)._pools[0]
    client = pool.acquire()
    try:
        assert client.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert client.sock.gettimeout() == 2.0
    finally:
        pool.release(client)


# ------------------------------------------------------------------------ round trips, speed


def test_get_many_is_a_bounded_number_of_round_trips(mc_store: Store, spy: Spy) -> None:
    server = contract.new_server()
    keys = [JobKey(server, contract.new_handle(), b"%d" % i) for i in range(500)]
    batch: list[Event] = []
    for i, key in enumerate(keys):
        batch += [ev(EventKind.STARTED, key, T0, function=b"f")]
        batch += [ev(EventKind.DATA, key, T0, payload=b"d%d" % i)]
        batch += [ev(EventKind.COMPLETED, key, T0, payload=b"%d" % i)]
    spy.rounds.clear()
    mc_store.write(batch)
    assert len(spy.rounds) == 1  # 500 new jobs in one write(): one round trip
    refs = [JobRef(k.handle) if i % 2 else full_ref(k) for i, k in enumerate(keys * 2)]
    spy.rounds.clear()
    started = time.perf_counter()
    got = mc_store.get_many(refs)
    elapsed = time.perf_counter() - started
    assert [r.result if r else None for r in got] == [b"%d" % (i % 500) for i in range(1000)]
    assert len(spy.rounds) <= 4  # indexes, heads, chunks (nothing is split here)
    print(f"\nget_many(1000 refs, half bare handles): {elapsed * 1000:.1f} ms")


def test_a_big_batch_cannot_deadlock(mc_store: Store) -> None:
    """15 MB of running heads in one write(): each is read back (``gets``) in the same round.

    Sent in one piece, memcached's answers would fill the socket while the store still sends,
    and both would wait for ever: the store's socket timeout would raise a StoreError. (How
    fast such a write is: bench/stores.py, section ``records``.)
    """
    server = contract.new_server()
    keys = [JobKey(server, contract.new_handle(), b"u") for _ in range(500)]
    mc_store.write([ev(EventKind.STARTED, k, T0, function=b"f" * 30_000) for k in keys])
    got = mc_store.get_many([JobRef(k.handle) for k in keys])
    assert all(r is not None and len(r.function) == 30_000 for r in got)


# ------------------------------------------------------------------------ other languages


def php_reader() -> str:
    """A PHP script made of the README's recipe (the package docstring), verbatim."""
    import gearstash_memcache

    doc = gearstash_memcache.__doc__ or ""
    start = doc.index("is just that one)::\n\n") + len("is just that one)::\n\n")
    recipe = textwrap.dedent(doc[start : doc.index("\n\nWith the full reference")])
    k_line = doc[doc.index("(``$K = ") + len("(``$K = ") : doc.index(";``)")]
    return (
        "<?php\n"
        "[$servers, $handle, $server, $unique] = [explode(',', $argv[1]), $argv[2], $argv[3], 'new'];\n"
        "$mc = [];\n"
        "foreach ($servers as $s) {\n"
        "    $m = new Memcached(); $i = strrpos($s, ':');\n"
        "    $m->addServer(substr($s, 0, $i), (int)substr($s, $i + 1)); $mc[$s] = $m;\n"
        "}\n"
        + recipe
        + "\nif (!isset($job)) exit(4);\n"
        + "$K = "
        + " ".join(k_line.replace("``", "").split())
        + ";\n"
        "$job['J'] = substr(sha1($K), 0, 24);\n"
        "foreach (['data', 'warnings'] as $l) $job[$l] = array_map('base64_encode', $job[$l]);\n"
        "if (is_string($job['result'])) $job['result'] = base64_encode($job['result']);\n"
        "else $job['result'] = $job['result']['base64'];\n"
        'echo json_encode($job), "\\n";\n'
    )


def test_php_reads_a_finished_job_by_handle(
    two_servers: tuple[PrivateServer, PrivateServer], tmp_path: Any
) -> None:
    php = shutil.which("php")
    if php is None:
        pytest.skip("php-cli is not installed")
    check = subprocess.run(
        [php, "-r", "echo extension_loaded('memcached') ? 'yes' : 'no';"],
        capture_output=True,
        text=True,
        check=False,
    )
    if check.stdout.strip() != "yes":
        pytest.skip("php-memcached is not installed (Debian package php-memcached)")
    first, second = two_servers
    servers = f"{first.address},{second.address}"
    store = open_store(f"memcache://{servers}")
    try:
        handle = b"H:php:" + os.urandom(4).hex().encode()
        older = JobKey(contract.new_server(), handle, b"old")
        key = JobKey(contract.new_server(), handle, b"new")
        big = os.urandom(1_200_000)
        store.write(contract.full_job(older))
        store.write(
            [
                ev(EventKind.STARTED, key, T0, function=b"f"),
                ev(EventKind.DATA, key, T0 + 1, payload=b"\x00\xffbin"),
                ev(EventKind.DATA, key, T0 + 2, payload=big),
                ev(EventKind.STATUS, key, T0 + 3, numerator=1, denominator=2),
                ev(EventKind.WARNING, key, T0 + 4, payload=b"careful"),
            ]
        )
        store.write([ev(EventKind.COMPLETED, key, T0 + 5, payload=b"\xfe" + big)])
        record = get(store, JobRef(handle))
    finally:
        store.close()
    script = tmp_path / "reader.php"
    script.write_text(php_reader())
    out = subprocess.run(
        [php, str(script), servers, handle.decode(), key.server],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    import base64

    assert record is not None
    assert (job["handle"], job["unique"], job["state"]) == (handle.decode(), "new", "complete")
    assert job["J"] == job_digest(key)
    assert [base64.b64decode(c) for c in job["data"]] == record.data == [b"\x00\xffbin", big]
    assert [base64.b64decode(c) for c in job["warnings"]] == [b"careful"]
    assert [(p["numerator"], p["denominator"]) for p in job["status"]] == [(1, 2)]
    assert base64.b64decode(job["result"]) == record.result == b"\xfe" + big
