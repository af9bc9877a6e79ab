"""The Redis store (``redis://``, ``rediss://``, ``unix://``): the store contract, and what only the
Redis store promises — its documented key layout, TTLs and tombstones, pub/sub waits, AUTH, ACL
users, TLS, unix sockets and its behaviour when Redis dies or restarts.

Tests on the session's own Redis (db 15) use a key prefix unique to the test and delete
their keys afterwards (never FLUSHDB). Tests that stop, restart or configure a server start their
own ``redis-server`` on a free loopback port.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot
from support import stores as contract
from support.need import need
from support.stores import T0, assert_same, ev, full_job
from support.waiting import wait_until

from gearstash.errors import ConfigError, StoreError
from gearstash.model.records import Event, EventKind, JobKey, JobRecord, JobRef, State
from gearstash.spine.manager import open_store
from gearstash.store.contract import Store, get_after, watch
from gearstash.testing.contract import StoreContract
from gearstash.testing.gearmand import free_port
from gearstash.testing.servers import PrivateServer, find_binary, redis_spec

RUN = uuid.uuid4().hex[:8]
_count = iter(range(1_000_000))


def _name(tag: str = "") -> str:
    return f"gst{RUN}x{next(_count)}{tag}"


def _key(handle: bytes | None = None, server: str = "s.test:4730", unique: bytes = b"u") -> JobKey:
    return JobKey(server, handle or _name().encode(), unique)


def _full(key: JobKey) -> JobRef:
    return JobRef(key.handle, key.server, key.unique)


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def prefix(raw: redis.Redis) -> Iterator[str]:
    """A key prefix of this test's own on the shared Redis; its keys are deleted afterwards."""
    name = _name("p")
    yield name
    keys = list(raw.scan_iter(match=f"{name}:*", count=1000))
    for start in range(0, len(keys), 500):
        raw.delete(*keys[start : start + 500])


@pytest.fixture
def store_url(redis_url: str, prefix: str) -> str:
    return f"{redis_url}?prefix={prefix}"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    try:
        yield opened
    finally:
        opened.close()


def _url(store_url: str, **options: Any) -> str:
    return store_url + "".join(f"&{k}={v}" for k, v in options.items())


@pytest.fixture
def private_redis(own_server: Any) -> Any:
    """``start(*args) -> PrivateServer``: a redis-server of this test's own (no persistence) with
    ``args`` added to its command line; removed after the test."""

    def start(*args: str) -> PrivateServer:
        server: PrivateServer = own_server(lambda: redis_spec(extra=args))
        return server

    return start


# ---------------------------------------------------------------------------------- the contract


class TestRedisContract(StoreContract):
    """The shipped store contract (gearstash.testing.contract) on Redis; ``store_url`` is the module's."""

    @pytest.fixture
    def store_url_with_password(self, private_redis: Any) -> str:
        server = private_redis("--requirepass", "redis-contract-secret")
        return f"redis://:redis-contract-secret@127.0.0.1:{server.port}/0"


# ---------------------------------------------------------------------------------- key layout


def _netstring(value: bytes) -> bytes:
    return b"%d:%b," % (len(value), value)


def _digest(value: bytes) -> str:
    return hashlib.sha1(value).hexdigest()[:24]


def test_key_layout_as_documented(store: Store, raw: redis.Redis, prefix: str) -> None:
    key = _key(unique=b"\x00u\xff")
    store.write(full_job(key))
    member = _netstring(key.server.encode()) + _netstring(key.handle) + _netstring(key.unique)
    assert member.startswith(b"11:s.test:4730,")
    j, h = _digest(member), _digest(key.handle)
    base = f"{prefix}:{{{j}}}:"
    fields = raw.hgetall(base + "job")
    record = store.get_many([_full(key)])[0]
    assert record is not None and record.expires_at is not None
    assert fields == {
        b"server": b"s.test:4730",
        b"handle": key.handle,
        b"unique": b"\x00u\xff",
        b"function": b"resize",
        b"state": b"complete",
        b"attempt": b"1",
        b"worker": b"host-1.42",
        b"result": b"done",
        b"started_at": repr(T0).encode(),
        b"finished_at": repr(T0 + 0.7).encode(),
        b"updated_at": repr(T0 + 0.7).encode(),
        b"expires_at": b"%.3f" % record.expires_at,
    }
    assert raw.lrange(base + "data", 0, -1) == [b"one", b"two", b"three"]
    assert raw.lrange(base + "warnings", 0, -1) == [b"careful"]
    assert raw.lrange(base + "status", 0, -1) == [
        f"1 3 {T0 + 0.4!r}".encode(),
        f"3 3 {T0 + 0.6!r}".encode(),
    ]
    assert raw.get(base + "gone") == fields[b"expires_at"]
    assert raw.zrange(f"{prefix}:h:{{{h}}}", 0, -1, withscores=True) == [(member, 1.0)]
    u = _digest(key.unique)
    assert raw.zrange(f"{prefix}:u:{{{u}}}", 0, -1, withscores=True) == [(member, 1.0)]
    names = [base + s for s in ("job", "data", "warnings", "status", "gone")]
    assert [raw.type(n) for n in names] == [b"hash", b"list", b"list", b"list", b"string"]

    # a failure: error fields; a new attempt drops result and error and empties the lists
    store.write([ev(EventKind.EXCEPTION, key, T0 + 1, payload=b"boom", traceback="tb")])
    fields = raw.hgetall(base + "job")
    assert (fields[b"state"], fields[b"error_kind"], fields[b"error_message"]) == (
        b"failed",
        b"exception",
        b"boom",
    )
    assert fields[b"traceback"] == b"tb" and fields[b"result"] == b"done"
    store.write([ev(EventKind.STARTED, key, T0 + 2, worker="w2")])
    fields = raw.hgetall(base + "job")
    assert (fields[b"attempt"], fields[b"state"], fields[b"function"]) == (
        b"2",
        b"running",
        b"resize",
    )
    for gone in (b"result", b"error_kind", b"error_message", b"traceback", b"finished_at"):
        assert gone not in fields
    assert not raw.exists(base + "data", base + "warnings", base + "status")


def test_layout_of_queued_jobs_leases_and_uniques(
    store: Store, raw: redis.Redis, prefix: str
) -> None:
    unique = _name("u").encode()
    key, retry = _key(unique=unique), _key(unique=unique)
    base = _base(prefix, key)
    store.write([ev(EventKind.SUBMITTED, key, T0, function=b"resize")])
    fields = raw.hgetall(base + "job")
    assert (fields[b"state"], fields[b"attempt"], fields[b"function"]) == (
        b"queued",
        b"0",
        b"resize",
    )
    assert fields[b"updated_at"] == repr(T0).encode() and b"lease_until" not in fields
    assert raw.exists(base + "data", base + "warnings", base + "status") == 0
    ttl = raw.pttl(base + "job")
    raw.pexpire(base + "job", 5_000)
    store.write([ev(EventKind.SUBMITTED, key, T0 + 1, function=b"other", ttl=9)])
    assert raw.hgetall(base + "job") == fields  # a second submission changes nothing …
    assert 0 < raw.pttl(base + "job") <= 5_000  # … not even the TTL
    store.write([ev(EventKind.STARTED, key, T0 + 2, lease=30.0)])
    fields = raw.hgetall(base + "job")
    assert (fields[b"attempt"], fields[b"state"]) == (b"1", b"running")
    assert fields[b"lease_until"] == repr(T0 + 32.0).encode()
    assert ttl > 0 and raw.pttl(base + "job") > 5_000
    store.write([ev(EventKind.HEARTBEAT, key, T0 + 3, lease=30.0)])
    assert raw.hget(base + "job", "lease_until") == repr(T0 + 33.0).encode()
    assert raw.hget(base + "job", "updated_at") == repr(T0 + 3).encode()

    # a heartbeat for no record writes nothing at all
    nothing = _key()
    store.write([ev(EventKind.HEARTBEAT, nothing, T0, lease=30.0)])
    assert raw.keys(_base(prefix, nothing) + "*") == []
    assert not raw.exists(f"{prefix}:h:{{{_digest(nothing.handle)}}}")

    # the unique index lists every job with that unique, oldest first
    store.write([ev(EventKind.STARTED, retry, T0 + 4)])
    listed = raw.zrange(f"{prefix}:u:{{{_digest(unique)}}}", 0, -1, withscores=True)
    assert [decode(m) for m, _ in listed] == [key, retry]
    assert [score for _, score in listed] == [1.0, 2.0]
    got = store.get_many([JobRef(b"", None, unique)])[0]
    assert got is not None and got.key == retry

    # a job with an empty unique is not listed (nor found by one)
    empty = _key(unique=b"")
    store.write(full_job(empty))
    assert not raw.exists(f"{prefix}:u:{{{_digest(b'')}}}")
    assert store.get_many([JobRef(b"", None, b""), JobRef(empty.handle)])[0] is None


def decode(member: bytes) -> JobKey | None:
    from gearstash_redis.layout import decode_key

    return decode_key(member)


def test_key_encoding_round_trips() -> None:
    from gearstash_redis.layout import decode_key, encode_key

    documented = JobKey("127.0.0.1:4730", b"H:web1:70", b"5f0c")
    assert encode_key(documented) == b"14:127.0.0.1:4730,9:H:web1:70,4:5f0c,"  # the docstring's
    for key in (documented, JobKey("", b"", b""), JobKey("h\u00e9:1", b"a,b:c\x00", b"\xff" * 300)):
        assert decode_key(encode_key(key)) == key
    for junk in (b"", b"1:a,", b"1:a,1:b,1:c", b"1:a,1:b,1:c,x", b"x:a,1:b,1:c,", b"2:a,1:b,1:c,"):
        assert decode_key(junk) is None


def test_keys_of_a_job_share_one_cluster_slot(store: Store, raw: redis.Redis, prefix: str) -> None:
    keys = [_key(), _key(unique=b"{tricky}"), _key(handle=b"H:{x}:1", server="[::1]:4730")]
    for key in keys:
        store.write(full_job(key))
    slots = set()
    for key in keys:
        member = _netstring(key.server.encode()) + _netstring(key.handle) + _netstring(key.unique)
        names = raw.keys(f"{prefix}:{{{_digest(member)}}}:*")
        assert len(names) == 5  # job, data, warnings, status, gone
        assert len({key_slot(n) for n in names}) == 1
        slots.add(key_slot(names[0]))
        index = f"{prefix}:h:{{{_digest(key.handle)}}}".encode()
        assert raw.exists(index) and key_slot(index) == key_slot(
            f"{{{_digest(key.handle)}}}".encode()
        )
    assert len(slots) == 3  # different jobs spread over slots


def test_handle_index_orders_jobs_by_first_write(
    store: Store, raw: redis.Redis, prefix: str
) -> None:
    handle = _name().encode()
    keys = [_key(handle, unique=b"%d" % i) for i in range(3)]
    for key in keys:
        store.write([ev(EventKind.STARTED, key, T0)])
    store.write([ev(EventKind.DATA, keys[0], T0 + 5, payload=b"late")])  # not a new job
    index = raw.zrange(f"{prefix}:h:{{{_digest(handle)}}}", 0, -1, withscores=True)
    assert [score for _, score in index] == [1.0, 2.0, 3.0]
    assert [m.rsplit(b":", 1)[1] for m, _ in index] == [b"0,", b"1,", b"2,"]
    got = store.get_many([JobRef(handle)])[0]
    assert got is not None and got.key == keys[2]


# ---------------------------------------------------------------------------------- TTLs


def _base(prefix: str, key: JobKey) -> str:
    member = _netstring(key.server.encode()) + _netstring(key.handle) + _netstring(key.unique)
    return f"{prefix}:{{{_digest(member)}}}:"


def _pttls(raw: redis.Redis, prefix: str, key: JobKey) -> dict[str, int]:
    base = _base(prefix, key)
    out = {s: raw.pttl(base + s) for s in ("job", "data", "warnings", "status", "gone")}
    out["index"] = raw.pttl(f"{prefix}:h:{{{_digest(key.handle)}}}")
    out["unique index"] = raw.pttl(f"{prefix}:u:{{{_digest(key.unique)}}}")
    return out


@pytest.mark.parametrize("script", ["as chosen", "before Redis 7"])
def test_every_key_gets_a_ttl(store_url: str, raw: redis.Redis, prefix: str, script: str) -> None:
    from gearstash_redis.scripts import WRITE_GT_SHA, WRITE_SHA

    store = open_store(_url(store_url, ttl=100, grace=30))
    if script == "as chosen":
        assert store._write_sha == WRITE_GT_SHA  # type: ignore[attr-defined]  # Redis 7 here
    else:
        store._write_sha = WRITE_SHA  # type: ignore[attr-defined]  # PTTL, then PEXPIRE
    try:
        key = _key()
        before = time.time()
        store.write(full_job(key))
        ttls = _pttls(raw, prefix, key)
        for name in ("job", "data", "warnings", "status"):
            assert 99_000 < ttls[name] <= 100_000, (name, ttls)
        # tombstone and index: ttl + min(ttl, grace)
        assert 129_000 < ttls["gone"] <= 130_000 and 129_000 < ttls["index"] <= 130_000, ttls
        assert 129_000 < ttls["unique index"] <= 130_000, ttls
        record = store.get_many([_full(key)])[0]
        assert record is not None and record.expires_at is not None
        assert before + 99 < record.expires_at < time.time() + 101

        # a per-event ttl overrides the store's, for every key of the job (lists included, even
        # when the write does not touch them); the index keeps the longest life of its jobs
        store.write([ev(EventKind.COMPLETED, key, T0, payload=b"x", ttl=5)])
        ttls = _pttls(raw, prefix, key)
        for name in ("job", "data", "warnings", "status"):
            assert 4_000 < ttls[name] <= 5_000, (name, ttls)
        assert 9_000 < ttls["gone"] <= 10_000 and ttls["index"] > 120_000, ttls
        assert ttls["unique index"] > 120_000, ttls
        other = key._replace(unique=b"other")
        store.write([ev(EventKind.STARTED, other, T0, ttl=500)])
        assert 529_000 < _pttls(raw, prefix, other)["index"] <= 530_000
        record = store.get_many([_full(key)])[0]
        assert record is not None and record.expires_at is not None
        assert record.expires_at < time.time() + 5
    finally:
        store.close()


def test_ttl_zero_keeps_for_ever(store_url: str, raw: redis.Redis, prefix: str) -> None:
    store = open_store(_url(store_url, ttl=0))
    try:
        key = _key()
        store.write(full_job(key))
        assert _pttls(raw, prefix, key) == {
            "job": -1,
            "data": -1,
            "warnings": -1,
            "status": -1,
            "gone": -2,  # no tombstone: the job never expires
            "index": -1,
            "unique index": -1,
        }
        record = store.get_many([_full(key)])[0]
        assert record is not None and record.expires_at is None
        assert b"expires_at" not in raw.hgetall(_base(prefix, key) + "job")
        store.write([ev(EventKind.DATA, key, T0, payload=b"x", ttl=50)])  # and back to a TTL
        ttls = _pttls(raw, prefix, key)
        assert 49_000 < ttls["data"] <= 50_000 and 49_000 < ttls["job"] <= 50_000
        assert ttls["index"] == ttls["unique index"] == -1  # an index of a job kept for ever
    finally:
        store.close()


def test_expired_job_reads_expired_then_unknown(
    store_url: str, raw: redis.Redis, prefix: str
) -> None:
    # expired after 2 s, a tombstone for 4 s more: wide windows, polled
    store = open_store(_url(store_url, ttl=2, grace=4))
    try:
        key = _key()
        store.write(full_job(key))
        refs = [_full(key), JobRef(key.handle), JobRef(key.handle, key.server)]
        assert [r.state if r else None for r in store.get_many(refs)] == [State.COMPLETE] * 3
        expired = wait_until(
            lambda: (
                (got := store.get_many(refs))[0] is not None
                and got[0].state is State.EXPIRED
                and got
            ),
            what="the job to read expired",
        )
        for record in expired:
            assert record is not None
            assert (record.key, record.state, record.data, record.result) == (
                key,
                State.EXPIRED,
                [],
                None,
            )
            assert record.expires_at is not None and record.expires_at < time.time()
        assert raw.exists(_base(prefix, key) + "job") == 0
        wait_until(lambda: store.get_many(refs) == [None, None, None], what="the tombstone to go")
    finally:
        store.close()


def test_vanished_newest_job_falls_back_to_older_one(
    store: Store, raw: redis.Redis, prefix: str
) -> None:
    handle = _name().encode()
    kept, brief = _key(handle, unique=b"kept"), _key(handle, unique=b"brief")
    store.write([ev(EventKind.STARTED, kept, T0, ttl=0)])
    store.write([ev(EventKind.STARTED, brief, T0, ttl=0.2)])  # newer; gone after 0.4 s
    newest = store.get_many([JobRef(handle)])[0]
    assert newest is not None and newest.key == brief
    time.sleep(0.5)
    index = f"{prefix}:h:{{{_digest(handle)}}}"
    assert raw.zcard(index) == 2  # the dead entry is still listed …
    got = store.get_many([JobRef(handle), JobRef(handle, None, b"brief")])
    assert got[0] is not None and got[0].key == kept  # … but skipped
    assert got[1] is None
    store.write([ev(EventKind.STARTED, _key(handle, unique=b"third"), T0)])
    assert raw.zcard(index) == 2  # writing a new job with the handle pruned it


# ---------------------------------------------------------------------------------- writes, reads


def test_concurrent_writer_threads_keep_each_writers_order(store: Store) -> None:
    key = _key()
    store.write([ev(EventKind.STARTED, key, T0)])
    writers, count = 8, 150
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            barrier.wait(timeout=10)
            for i in range(count):
                batch = [ev(EventKind.DATA, key, T0, payload=b"%d:%d" % (w, i))]
                if i % 10 == 0:  # now and then several chunks in one call
                    batch.append(ev(EventKind.DATA, key, T0, payload=b"%d:%d+" % (w, i)))
                store.write(batch)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    record = store.get_many([_full(key)])[0]
    assert record is not None and len(record.data) == writers * (count + count // 10)
    for w in range(writers):
        mine = [c for c in record.data if c.startswith(b"%d:" % w)]
        want = []
        for i in range(count):
            want.append(b"%d:%d" % (w, i))
            if i % 10 == 0:
                want.append(b"%d:%d+" % (w, i))
        assert mine == want
        for i in range(0, count, 10):  # a batch's chunks stay together
            at = record.data.index(b"%d:%d" % (w, i))
            assert record.data[at + 1] == b"%d:%d+" % (w, i)


def test_one_batch_many_jobs_and_long_runs(store: Store) -> None:
    keys = [_key(unique=b"%d" % i) for i in range(3)]
    chunks = [b"c%d" % i for i in range(2500)]  # more than one RPUSH per run
    batch: list[Event] = []
    for key in keys:
        batch.append(ev(EventKind.STARTED, key, T0, function=b"f"))
    for i, chunk in enumerate(chunks):  # interleaved jobs, interleaved kinds
        key = keys[i % 3]
        batch.append(ev(EventKind.DATA, key, T0 + i, payload=chunk))
        if i % 500 == 0:
            batch.append(ev(EventKind.STATUS, key, T0 + i, numerator=i, denominator=2500))
            batch.append(ev(EventKind.WARNING, key, T0 + i, payload=b"w%d" % i))
    batch += [ev(EventKind.COMPLETED, k, T0 + 9, payload=b"r") for k in keys]
    batch += [ev(EventKind.STARTED, keys[2], T0 + 10), ev(EventKind.DATA, keys[2], T0 + 11)]
    store.write(batch)
    got = store.get_many([_full(k) for k in keys])
    for key, record in zip(keys, got, strict=True):
        assert_same(record, JobRecord.from_events(key, [e for e in batch if e.key == key]))
    assert got[0] is not None and len(got[0].data) == 834
    assert got[2] is not None and (got[2].attempt, got[2].data) == (2, [b""])


def test_get_after_reads_only_new_chunks(store: Store) -> None:
    key = _key()
    store.write([ev(EventKind.STARTED, key, T0)])
    store.write([ev(EventKind.DATA, key, T0, payload=b"%d" % i) for i in range(5)])
    for ref in (_full(key), JobRef(key.handle)):
        record = get_after(store, ref, 3)
        assert record is not None and (record.data, record.data_offset) == ([b"3", b"4"], 3)
        record = get_after(store, ref, 1 << 62)  # the client's "no data, please"
        assert record is not None and (record.data, record.state) == ([], State.RUNNING)
        record = get_after(store, ref, 0)
        assert record is not None and len(record.data) == 5 and record.data_offset == 0
    assert get_after(store, JobRef(_name().encode()), 2) is None


def test_round_trips_are_bounded(store: Store) -> None:
    from gearstash_redis import read

    server = "rt.test:4730"
    keys = [_key(server=server, unique=b"%d" % i) for i in range(300)]
    calls: list[int] = []
    real = store._roundtrip  # type: ignore[attr-defined]

    def counting(commands: list[Any], *args: Any, **kwargs: Any) -> Any:
        calls.append(len(commands))
        return real(commands, *args, **kwargs)

    store._roundtrip = counting  # type: ignore[attr-defined]
    store.write([e for k in keys for e in full_job(k)])
    assert calls == [1]  # one EVALSHA for 300 jobs
    calls.clear()
    refs = []
    for i in range(1000):
        k = keys[i % 300]
        refs.append(
            [_full(k), JobRef(k.handle), JobRef(k.handle, server), JobRef(b"nope%d" % i)][i % 4]
        )
    got = store.get_many(refs)
    assert [r is not None for r in got] == [i % 4 != 3 for i in range(1000)]
    # one pipeline: a read script per slice of distinct references
    slice_ = read.SLICE
    assert calls == [-(-len(set(refs)) // slice_)]
    calls.clear()
    assert store.get_many(refs[:1]) == got[:1] and calls == [1]  # one EVALSHA for one reference
    calls.clear()
    calls.clear()
    named = {i % 300 for i in range(1000) if i % 4 != 3}
    assert store.delete(refs) == len(named) == 225  # type: ignore[attr-defined]
    assert len(calls) == 2  # the index, then the deletions


def test_delete_forgets_every_match(store: Store, raw: redis.Redis, prefix: str) -> None:
    handle = _name().encode()
    a, b, c = (
        _key(handle, server=s, unique=u) for s, u in (("a:1", b"1"), ("b:1", b"1"), ("a:1", b"2"))
    )
    for key in (a, b, c):
        store.write(full_job(key))
    assert store.delete([_full(b)]) == 1  # type: ignore[attr-defined]
    assert store.get_many([_full(b)]) == [None]
    assert not raw.keys(_base(prefix, b) + "*")
    assert store.delete([JobRef(handle, "a:1")]) == 2  # type: ignore[attr-defined]
    assert store.get_many([_full(a), _full(c), JobRef(handle)]) == [None, None, None]
    # every key, indexes included; the listing serial counter stays
    assert raw.keys(f"{prefix}:*") == [f"{prefix}:serial".encode()]
    assert store.delete([JobRef(handle)]) == 0  # type: ignore[attr-defined]


def test_capabilities_and_purge(store: Store) -> None:
    assert store.capabilities == {"shared", "push", "expires", "delete", "list"}
    assert store.purge() == 0  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------- watch


def _write_later(store: Store, events: list[Event], delay: float) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        store.write(events)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_watch_wakes_on_a_write_from_another_thread(store: Store) -> None:
    key = _key()
    store.write([ev(EventKind.STARTED, key, T0)])
    for ref in (_full(key), JobRef(key.handle)):
        with_watch = watch(store, [ref])
        try:
            assert with_watch.wait(0.05) is False  # nothing happened
            thread = _write_later(store, [ev(EventKind.DATA, key, T0, payload=b"x")], 0.05)
            start = time.monotonic()
            assert with_watch.wait(5) is True
            assert time.monotonic() - start < 4  # woken, not timed out
            thread.join()
            assert with_watch.wait(0.05) is False  # the announcement was consumed
        finally:
            with_watch.close()


def test_watch_misses_nothing_written_before_wait(store: Store) -> None:
    key = _key()
    w = watch(store, [_full(key)])
    try:
        store.write([ev(EventKind.STARTED, key, T0)])  # after watch(), before wait()
        store.write([ev(EventKind.DATA, key, T0)])
        start = time.monotonic()
        assert w.wait(5) is True and time.monotonic() - start < 4  # woken, not timed out
        assert w.wait(0) is False  # both announcements were drained by the first wait
    finally:
        w.close()
    assert w.wait(1) is False  # closed: no wait


def test_watch_with_a_full_reference_ignores_other_jobs_of_the_handle(store: Store) -> None:
    key = _key()
    other = key._replace(unique=b"other")
    w = watch(store, [_full(key)])
    wide = watch(store, [JobRef(key.handle)])
    try:
        store.write([ev(EventKind.STARTED, other, T0)])
        assert w.wait(0.1) is False
        assert wide.wait(1) is True
    finally:
        w.close()
        wide.close()


def _write_in_child(url: str, key: JobKey, delay: float) -> None:
    time.sleep(delay)
    store = open_store(url)
    try:
        store.write([Event(EventKind.DATA, key, T0, payload=b"child")])
    finally:
        store.close()


def test_watch_wakes_on_a_write_from_another_process(store_url: str, store: Store) -> None:
    key = _key()
    w = watch(store, [_full(key)])
    try:
        ctx = contract.processes()
        proc = ctx.Process(target=_write_in_child, args=(store_url, key, 0.05))
        proc.start()
        assert w.wait(10) is True
        proc.join(timeout=10)
        assert proc.exitcode == 0
        record = store.get_many([_full(key)])[0]
        assert record is not None and record.data == [b"child"]
    finally:
        w.close()


def test_watch_closed_from_another_thread(store: Store) -> None:
    w = watch(store, [JobRef(_name().encode())])
    closer = threading.Timer(0.05, w.close)
    closer.start()
    start = time.monotonic()
    assert w.wait(5) is False
    assert time.monotonic() - start < 4  # ended by close(), not by the timeout
    closer.join()


def test_watch_wakes_for_every_write_from_another_thread(store: Store) -> None:
    """30 writes from another thread, each while the waiter waits: each one wakes it, and the
    chunks all land. (How fast it wakes: bench/stores.py, section ``wait``.)"""
    key = _key()
    store.write([ev(EventKind.STARTED, key, T0)])
    w = watch(store, [_full(key)])
    try:
        for i in range(30):
            thread = threading.Thread(
                target=store.write, args=([ev(EventKind.DATA, key, T0, payload=b"%d" % i)],)
            )
            thread.start()
            assert w.wait(30) is True, f"write {i} did not wake the waiter"
            thread.join()
    finally:
        w.close()
    record = store.get_many([_full(key)])[0]
    assert record is not None and record.data == [b"%d" % i for i in range(30)]


# ---------------------------------------------------------------------------------- connections


def _actions(store: Store, key: JobKey) -> dict[str, Any]:
    return {
        "write": lambda: store.write(full_job(key)),
        "read": lambda: store.get_many([JobRef(key.handle)]),
        "watch": lambda: watch(store, [JobRef(key.handle)]),
        "delete": lambda: store.delete([_full(key)]),  # type: ignore[attr-defined]
    }


def test_dead_redis_raises_store_error_without_password(private_redis: Any) -> None:
    server = private_redis("--requirepass", "s3cret")
    url = f"redis://:s3cret@127.0.0.1:{server.port}/0"
    shown = f"redis://:***@127.0.0.1:{server.port}/0"
    store = open_store(url)
    try:
        assert store.url == shown and "s3cret" not in repr(store)
        key = _key()
        store.write(full_job(key))
        server.stop()
        for name, action in _actions(store, key).items():
            with pytest.raises(StoreError) as info:
                action()
            message = str(info.value)
            assert "s3cret" not in message, name
            assert message.startswith(shown + ": "), message
            assert "onnect" in message, message  # redis-py's "Error 111 connecting to …"
    finally:
        store.close()
    with pytest.raises(StoreError) as info:
        open_store(url)
    assert shown in str(info.value) and "s3cret" not in str(info.value)
    with pytest.raises(StoreError, match="closed"):
        store.write(full_job(_key()))


def test_store_survives_a_redis_restart(private_redis: Any) -> None:
    server = private_redis()
    store = open_store(f"redis://127.0.0.1:{server.port}/0")
    try:
        key = _key()
        store.write(full_job(key)[:2])
        w = watch(store, [JobRef(key.handle)])
        server.stop()
        server.start()  # same port; empty (no persistence), no scripts loaded
        assert w.wait(5) is True  # the subscription broke: anything may have changed
        store.write(full_job(key))  # the pooled connection is dead: a fresh one, NOSCRIPT → load
        record = store.get_many([JobRef(key.handle)])[0]
        assert record is not None and record.state is State.COMPLETE and record.data[0] == b"one"
        assert w.wait(5) is True  # subscribed again …
        assert w.wait(0.05) is False
        store.write([ev(EventKind.DATA, key, T0)])
        assert w.wait(5) is True  # … and woken again
        w.close()
    finally:
        store.close()


def test_scripts_flushed_are_loaded_again(private_redis: Any) -> None:
    server = private_redis()
    store = open_store(f"redis://127.0.0.1:{server.port}/0")
    client = redis.Redis(port=server.port)
    try:
        key = _key()
        store.write(full_job(key)[:3])
        client.script_flush()
        store.write(full_job(key)[3:])
        client.script_flush()
        want = JobRecord.from_events(key, full_job(key))
        for record in store.get_many([JobRef(key.handle), _full(key)]):
            assert_same(record, want)
        shas = [s.decode() for s in _script_shas(store)]
        assert client.script_exists(*shas) == [False, True]  # write, read
        store.write([ev(EventKind.DATA, key, T0)])
        assert client.script_exists(*shas) == [True, True]
    finally:
        client.close()
        store.close()


def _script_shas(store: Store) -> list[bytes]:
    from gearstash_redis.scripts import READ_MANY_SHA

    return [store._write_sha, READ_MANY_SHA]  # type: ignore[attr-defined]


def test_store_is_fork_safe(store: Store) -> None:
    key = _key()
    store.write([ev(EventKind.STARTED, key, T0)])  # the parent has an open connection now
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            store.write([ev(EventKind.DATA, key, T0, payload=b"child")])
            record = store.get_many([_full(key)])[0]
            code = 0 if record is not None and record.data == [b"child"] else 3
            store.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    store.write([ev(EventKind.DATA, key, T0, payload=b"parent")])  # the parent's socket still works
    record = store.get_many([_full(key)])[0]
    assert record is not None and record.data == [b"child", b"parent"]


def test_password_and_acl_users(private_redis: Any) -> None:
    server = private_redis(
        "--requirepass",
        "s3cret",
        *("--user", "alice", "on", ">wonderland", "~*", "&*", "+@all"),
        *("--user", "bob", "on", ">builder123", "~*", "&*", "+@all", "-@scripting"),
    )
    port = server.port
    for url in (
        f"redis://:s3cret@127.0.0.1:{port}/0",
        f"redis://default:s3cret@127.0.0.1:{port}/1",
        f"redis://alice:wonderland@127.0.0.1:{port}/2",
        f"redis://127.0.0.1:{port}/3?password=s3cret",
    ):
        store = open_store(url)
        try:
            assert "s3cret" not in store.url and "wonderland" not in repr(store)
            key = _key()
            w = watch(store, [_full(key)])
            store.write(full_job(key))
            assert w.wait(5) is True
            w.close()
            assert_same(
                store.get_many([JobRef(key.handle)])[0], JobRecord.from_events(key, full_job(key))
            )
        finally:
            store.close()
    for url, words in (
        (f"redis://:wr0ngpass@127.0.0.1:{port}/0", ("invalid", "password")),
        (f"redis://alice:wr0ngpass@127.0.0.1:{port}/0", ("invalid", "password")),
        (f"redis://127.0.0.1:{port}/0", ("authentication",)),
        (f"redis://bob:builder123@127.0.0.1:{port}/0", ("permission",)),
        (f"redis://127.0.0.1:{port}/0?password=wr0ngpass", ("invalid", "password=***")),
    ):
        with pytest.raises(StoreError) as info:
            open_store(url)
        message = str(info.value)
        assert "wr0ngpass" not in message and "builder123" not in message
        assert all(word in message.lower() for word in words), message


def test_unix_socket_url(private_redis: Any, tmp_path: Path) -> None:
    path = tmp_path / "redis.sock"
    server = private_redis("--unixsocket", str(path), "--unixsocketperm", "700")
    store = open_store(f"unix://{path}?db=3&ttl=60")
    try:
        assert store.url == f"unix://{path}?db=3&ttl=60"
        key = _key()
        store.write(full_job(key))
        assert_same(
            store.get_many([JobRef(key.handle)])[0], JobRecord.from_events(key, full_job(key))
        )
        client = redis.Redis(port=server.port, db=3)
        # db 3: job, data, warnings, status, gone, 2 indexes, the listing index and its serial,
        # the state index
        assert client.dbsize() == 10
        client.close()
    finally:
        store.close()


def _certificate(tmp_path: Path) -> tuple[Path, Path]:
    openssl = find_binary("openssl", "/usr/bin/openssl")
    need(openssl is not None, "openssl is not installed (Debian package openssl)")
    assert openssl is not None
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_url(private_redis: Any, tmp_path: Path) -> None:
    cert, key_file = _certificate(tmp_path)
    port = free_port()
    try:
        private_redis(
            "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
            "--tls-key-file", str(key_file), "--tls-ca-cert-file", str(cert),
            "--tls-auth-clients", "no", "--requirepass", "s3cret",
        )  # fmt: skip
    except RuntimeError as exc:  # Debian's redis-server has TLS; a build without it says so
        need("tls" not in str(exc).lower(), f"redis-server was built without TLS: {exc}")
        raise
    for options in (f"ssl_ca_certs={cert}", "ssl_cert_reqs=none"):
        store = open_store(f"rediss://:s3cret@127.0.0.1:{port}/0?{options}")
        try:
            key = _key()
            w = watch(store, [JobRef(key.handle)])
            store.write(full_job(key))
            assert w.wait(5) is True
            w.close()
            assert_same(store.get_many([_full(key)])[0], JobRecord.from_events(key, full_job(key)))
        finally:
            store.close()
    (tmp_path / "other").mkdir()
    other, _ = _certificate(tmp_path / "other")
    for url in (
        f"rediss://:s3cret@127.0.0.1:{port}/0?ssl_ca_certs={other}",  # not our CA
        f"redis://:s3cret@127.0.0.1:{port}/0?socket_timeout=1",  # no TLS
    ):
        with pytest.raises(StoreError) as info:
            open_store(url)
        assert "s3cret" not in str(info.value) and ":***@" in str(info.value)


def test_url_options(redis_url: str, prefix: str) -> None:
    store = open_store(f"{redis_url}?prefix={prefix}&ttl=5&grace=1.5&gearstash_x=1")
    try:
        assert (store.ttl, store.grace, store.layout.prefix) == (5.0, 1.5, prefix)  # type: ignore[attr-defined]
        kwargs = store._connection_kwargs  # type: ignore[attr-defined]
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (5.0, 5.0)
        assert kwargs["db"] == 15 and "prefix" not in kwargs and "gearstash_x" not in kwargs
    finally:
        store.close()
    store = open_store(f"{redis_url}?socket_timeout=2&socket_connect_timeout=1&prefix={prefix}")
    try:
        kwargs = store._connection_kwargs  # type: ignore[attr-defined]
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (2.0, 1.0)
        assert store.ttl == 86400.0 and store.layout.prefix == prefix  # type: ignore[attr-defined]
    finally:
        store.close()
    for bad in ("prefix=a{b}", "prefix=", "ttl=-1", "grace=soon", "bogus=1", "socket_timeout=x"):
        with pytest.raises(ConfigError):
            open_store(f"{redis_url}?{bad}")


# ---------------------------------------------------------------------------------- other readers

PHP_READER = r"""<?php
// The README's recipe: find the newest job with a handle, straight from Redis.
[$_, $port, $db, $prefix, $handle] = $argv;
$redis = new Redis();
$redis->connect('127.0.0.1', (int)$port);
$redis->select((int)$db);
function netstrings(string $k): array {
    $out = [];
    while ($k !== '') {
        $colon = strpos($k, ':');
        $len = (int)substr($k, 0, $colon);
        $out[] = substr($k, $colon + 1, $len);
        $k = substr($k, $colon + 1 + $len + 1);
    }
    return $out;
}
$H = substr(sha1($handle), 0, 24);
$members = $redis->zRange("$prefix:h:{" . $H . "}", 0, -1);
$K = end($members);
[$server, $h, $unique] = netstrings($K);
$J = substr(sha1($K), 0, 24);
$job = $redis->hGetAll("$prefix:{" . $J . "}:job");
echo json_encode([
    'server' => $server, 'unique' => $unique, 'count' => count($members),
    'state' => $job['state'], 'result' => $job['result'], 'attempt' => (int)$job['attempt'],
    'data' => $redis->lRange("$prefix:{" . $J . "}:data", 0, -1),
    'status' => $redis->lRange("$prefix:{" . $J . "}:status", 0, -1),
]);
"""


@pytest.mark.php
def test_php_reads_the_documented_layout(
    store: Store, prefix: str, tmp_path: Path, redis_server: PrivateServer
) -> None:
    php = shutil.which("php")
    has_redis = (
        php is not None
        and "redis" in subprocess.run([php, "-m"], capture_output=True, text=True).stdout.split()
    )
    need(has_redis, "php-cli with the redis extension is not installed (php-cli php-redis)")
    assert php is not None
    handle = _name().encode()
    old = JobKey("127.0.0.1:4730", handle, b"old")
    new = JobKey("127.0.0.1:4731", handle, b"new")
    store.write(full_job(old))
    store.write(full_job(new))
    script = tmp_path / "reader.php"
    script.write_text(PHP_READER)
    port, db = redis_server.port, 15  # the session's own Redis
    out = subprocess.run(
        [php, str(script), str(port), str(db), prefix, handle.decode()],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert json.loads(out) == {
        "server": "127.0.0.1:4731",
        "unique": "new",
        "count": 2,
        "state": "complete",
        "result": "done",
        "attempt": 1,
        "data": ["one", "two", "three"],
        "status": [f"1 3 {T0 + 0.4!r}", f"3 3 {T0 + 0.6!r}"],
    }


# ---------------------------------------------------------------------------------- batched reads


def test_reads_in_slices_match_single_reads(
    store: Store, raw: redis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gearstash_redis import read

    monkeypatch.setattr(read, "SLICE", 3)
    handle = _name().encode()
    keys = [_key(handle, server=f"s{i % 2}.test:4730", unique=b"%d" % i) for i in range(4)]
    for key in keys:
        store.write(full_job(key))
    gone = _key()
    store.write([ev(EventKind.STARTED, gone, T0)])
    raw.delete(_base(prefix, gone) + "job")  # as if expired: only the tombstone is left
    refs = [
        JobRef(handle),
        _full(keys[0]),
        JobRef(handle, "s0.test:4730"),
        JobRef(handle, None, b"1"),
        JobRef(b"nope" + handle),
        _full(gone),
        JobRef(gone.handle),
        _full(keys[0]),  # asked for twice: a record each
        JobRef(handle, "s9.test:4730"),
    ]
    got = store.get_many(refs)
    assert got == [store.get_many([ref])[0] for ref in refs]
    assert [r.key if r else None for r in got] == [
        keys[3], keys[0], keys[2], keys[1], None, gone, gone, keys[0], None
    ]  # fmt: skip
    assert got[5] is not None and got[5].state is State.EXPIRED and got[6] == got[5]
    assert got[1] is not got[7]
    assert_same(got[1], JobRecord.from_events(keys[0], full_job(keys[0])))


def test_scripts_flushed_reload_in_a_sliced_read(
    private_redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gearstash_redis import read

    monkeypatch.setattr(read, "SLICE", 2)
    server = private_redis()
    store = open_store(f"redis://127.0.0.1:{server.port}/0")
    client = redis.Redis(port=server.port)
    try:
        keys = [_key() for _ in range(5)]
        for key in keys:
            store.write(full_job(key))
        client.script_flush()
        refs = [JobRef(k.handle) if i % 2 else _full(k) for i, k in enumerate(keys)]
        for key, record in zip(keys, store.get_many(refs), strict=True):
            assert_same(record, JobRecord.from_events(key, full_job(key)))
    finally:
        client.close()
        store.close()


def test_malformed_record_raises_store_error(store: Store, raw: redis.Redis, prefix: str) -> None:
    key = _key()
    store.write(full_job(key))
    raw.hset(_base(prefix, key) + "job", "attempt", "many")
    with pytest.raises(StoreError, match="malformed job record"):
        store.get_many([JobRef(_name().encode()), _full(key)])
    raw.hset(_base(prefix, key) + "job", "attempt", "1")
    assert store.get_many([_full(key)])[0] is not None  # the connection is still usable


def test_counting_everything_reads_the_state_indexes(store: Store, raw: redis.Redis) -> None:
    """Unfiltered counts come from the state indexes (kept by the write script as jobs change
    state, expire and are deleted) and agree with the walk a filter takes."""
    from gearstash.store.contract import JobFilter, count_by_state

    now = time.time()
    queued, moving, done, failed, short, forever = (_key() for _ in range(6))
    store.write([ev(EventKind.SUBMITTED, queued, now, function=b"f")])
    store.write([ev(EventKind.SUBMITTED, moving, now, function=b"f")])
    store.write([ev(EventKind.STARTED, moving, now + 1, function=b"f")])  # queued -> running
    store.write(full_job(done, now))
    store.write([ev(EventKind.STARTED, failed, now), ev(EventKind.FAILED, failed, now + 1)])
    store.write([ev(EventKind.STARTED, short, now, ttl=0.5)])
    store.write([ev(EventKind.STARTED, forever, now, ttl=0)])
    time.sleep(0.7)
    want = {
        State.QUEUED: 1,
        State.RUNNING: 2,
        State.COMPLETE: 1,
        State.FAILED: 1,
        State.EXPIRED: 1,
    }
    assert count_by_state(store) == want
    everything = JobFilter(prefix=b"")  # a filter that keeps every job: the walk
    assert count_by_state(store, everything) == want
    store.delete([_full(done)])  # type: ignore[attr-defined]
    store.write([ev(EventKind.COMPLETED, moving, time.time())])  # running -> complete
    assert count_by_state(store) == {**want, State.RUNNING: 1}
    assert count_by_state(store, everything) == count_by_state(store)
