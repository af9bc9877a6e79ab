"""The Redis Cluster store (``redis+cluster://``): the store contract on the session's private
three-master cluster, what only the cluster store promises (its key layout, the split of a
batch over the masters, the listing merged from every shard), and a failover during captured
jobs: a master killed while a gearstash worker writes, its replica promoted, nothing lost and
nothing written twice.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
from gearstash_redis.shards import DEFAULT_SHARDS, ShardedLayout
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from support.stores import exact, full_job, new_key
from support.waiting import wait_until
from test_outage import WorkerProcess, assert_complete, submit_chunky, worker_process  # noqa: F401

from gearstash import Client
from gearstash.errors import ConfigError, StoreDenied, StoreError
from gearstash.model.records import JobKey, JobRef
from gearstash.spine.manager import open_store
from gearstash.store.contract import Store
from gearstash.testing.contract import StoreContract
from gearstash.testing.gearmand import Gearmand
from gearstash.testing.servers import PrivateRedisCluster, redis_command


def _prefix() -> str:
    return f"gsc{uuid.uuid4().hex[:8]}"


@pytest.fixture
def store_url(redis_cluster: PrivateRedisCluster) -> str:
    return f"{redis_cluster.url}?prefix={_prefix()}"


LAYOUT = ShardedLayout("gs", DEFAULT_SHARDS)  # the default layout (prefix gs)


def _client(cluster: PrivateRedisCluster) -> Iterator[RedisCluster]:
    """redis-py's own cluster client on ``cluster``, closed afterwards."""
    node = cluster.nodes[0]
    nodes = [ClusterNode(node.host, node.port)]
    client = RedisCluster(startup_nodes=nodes, password=cluster.password)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def raw(redis_cluster: PrivateRedisCluster) -> Iterator[RedisCluster]:
    yield from _client(redis_cluster)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    try:
        yield opened
    finally:
        opened.close()


class TestRedisClusterContract(StoreContract):
    """The shipped store contract (gearstash.testing.contract) on the session's cluster."""

    @pytest.fixture
    def store_url_with_password(self, store_url: str) -> str:
        return store_url  # the session's cluster wants its password


# ---------------------------------------------------------------------------------- layout


def test_keys_of_a_handle_share_one_slot_and_shards_spread(
    store: Store, raw: RedisCluster, store_url: str
) -> None:
    prefix = store_url.rpartition("prefix=")[2]
    keys = [new_key() for _ in range(40)]
    store.write([event for key in keys for event in full_job(key)])  # one write, many shards
    slots = set()
    for key in keys:
        names = store.layout.keys(key)  # type: ignore[attr-defined]
        tag = names.job.split(b"}")[0] + b"}"
        assert names.job.startswith(prefix.encode() + b":{")
        for name in (*names[2:9], b"%b:all" % tag, b"%b:serial" % tag, names.job[:-3] + b"w"):
            assert key_slot(name) == key_slot(tag[tag.index(b"{") + 1 : -1])
        assert raw.exists(names.job, names.data, names.handle_index) == 3
        slots.add(key_slot(names.job))
    masters = {raw.nodes_manager.get_node_from_slot(slot).name for slot in slots}
    assert len(masters) == 3  # one write reached every master
    # the README's recipe, by hand: S from the handle, then the single-server names under gs:{S}
    key = keys[0]
    shard = int(hashlib.sha1(key.handle).hexdigest()[:8], 16) % 64
    base = f"{prefix}:{{{shard}}}"
    members = raw.zrange(f"{base}:h:{{{hashlib.sha1(key.handle).hexdigest()[:24]}}}", 0, -1)
    job = f"{base}:{{{hashlib.sha1(members[-1]).hexdigest()[:24]}}}"
    assert raw.hget(f"{job}:job", "handle") == key.handle
    assert raw.lrange(f"{job}:data", 0, -1) == [b"one", b"two", b"three"]
    for key in keys:
        got = store.get_many([exact(key)])[0]
        assert got is not None and got.data == [b"one", b"two", b"three"]


@pytest.mark.parametrize("script", ["as chosen", "before Redis 7"])
def test_both_write_scripts_keep_a_job_and_its_ttls(
    script: str, store_url: str, raw: RedisCluster
) -> None:
    from gearstash_redis.cluster import WRITE_CLUSTER, WRITE_CLUSTER_GT
    from gearstash_redis.shards import sha1

    store = open_store(store_url + "&ttl=100")
    try:
        assert store._write_sha == sha1(WRITE_CLUSTER_GT)  # type: ignore[attr-defined]  # 7.0
        if script == "before Redis 7":
            store._write_sha = sha1(WRITE_CLUSTER)  # type: ignore[attr-defined]
        key = new_key()
        store.write(full_job(key)[:3])
        store.write(full_job(key)[3:])
        got = store.get_many([exact(key)])[0]
        assert got is not None and got.data == [b"one", b"two", b"three"]
        names = store.layout.keys(key)  # type: ignore[attr-defined]
        for name in (names.job, names.data, names.handle_index, names.job[:-3] + b"w"):
            assert 0 < raw.pttl(name) <= 200_000, name  # ttl + min(ttl, grace) at most
    finally:
        store.close()


def test_cluster_urls_are_checked(redis_cluster: PrivateRedisCluster) -> None:
    node = redis_cluster.nodes[0].address
    for bad in (
        f"redis+cluster://{node}/3",
        f"redis+cluster://{node}?shards=4097",
        "redis+cluster://nohost",
        f"redis+cluster://{node}?shards=0",
        f"redis+cluster://{node}?wait=x",
    ):
        with pytest.raises(ConfigError):
            open_store(bad)
    with pytest.raises(StoreDenied) as refused:
        open_store(f"redis+cluster://:sekrit-pw@{node},{node}?wait=0")
    assert "sekrit-pw" not in str(refused.value) and "authentication" in str(refused.value)
    with pytest.raises(StoreDenied, match="needs a password"):
        open_store(f"redis+cluster://{node}")
    store = open_store(redis_cluster.url + "?socket_timeout=3&x_password=hidden")
    try:  # every node named, the passwords hidden
        nodes = ",".join(n.address for n in redis_cluster.nodes)
        assert store.url == f"redis+cluster://:***@{nodes}?socket_timeout=3&x_password=***"
    finally:
        store.close()
    with pytest.raises(StoreError):  # TLS to a node that speaks plain TCP
        open_store(f"rediss+cluster://{node}?ssl_cert_reqs=none&socket_connect_timeout=1")


def test_a_single_node_url_still_opens_the_single_node_store(redis_url: str) -> None:
    store = open_store(redis_url)
    try:
        assert type(store).__name__ == "RedisStore"
    finally:
        store.close()


# ---------------------------------------------------------------------------------- failover


@pytest.fixture
def own_cluster() -> Iterator[PrivateRedisCluster]:
    """A cluster of this test's own (three masters, a replica each, node timeout 1000 ms)."""
    cluster = PrivateRedisCluster(node_timeout_ms=1000)
    with cluster:
        yield cluster


@pytest.fixture
def own_raw(own_cluster: PrivateRedisCluster) -> Iterator[RedisCluster]:
    yield from _client(own_cluster)


@pytest.mark.gearmand
@pytest.mark.parametrize("how", ["killed", "failover"])
def test_a_master_stops_during_captured_jobs_and_nothing_is_lost_or_doubled(
    how: str,
    gearmand: Gearmand,
    own_cluster: PrivateRedisCluster,
    own_raw: RedisCluster,
    worker_process: Callable[..., WorkerProcess],  # noqa: F811 - test_outage's fixture
) -> None:
    """Jobs run through gearmand and a ``gearstash worker`` (group commit, several jobs a write)
    into the cluster; a master is SIGKILLed ("killed": its replica takes over after the node
    timeout, the worker spools meanwhile) or hands over to its replica (``CLUSTER FAILOVER``)
    while jobs write to it. Every record ends complete, every event once and in order."""
    url = own_cluster.url
    worker = worker_process(gearmand.address, url, "-c", "4", "--pipeline", "4")
    with Client([gearmand.address], store=url) as client:
        before = submit_chunky(client, [f"before{i}" for i in range(12)], 0.01)
        assert_complete(client, before)
        crossing = submit_chunky(client, [f"crossing{i}" for i in range(4)], 0.3)
        during: dict[str, JobRef] = {}
        for i in range(6):  # jobs writing while the master goes
            during.update(submit_chunky(client, [f"during{i}"], 0.01))
            time.sleep(0.05)
        # the master most of the slow jobs (still running for a second) write to goes
        writing = [_master(own_raw, ref) for ref in crossing.values()]
        victim = own_cluster.node(max(own_cluster.masters(), key=writing.count))
        replica = next(p for p, m in own_cluster.roles().items() if m == victim.port)
        if how == "killed":
            victim.kill()
        else:
            redis_command(victim.host, replica, "CLUSTER", "FAILOVER")
        for i in range(6, 30):  # and after, while the cluster elects the replica
            during.update(submit_chunky(client, [f"during{i}"], 0.01))
            time.sleep(0.1)
        wait_until(lambda: replica in own_cluster.masters(), 30, "the replica to take over")
        own_cluster.wait_ok()
        after = submit_chunky(client, [f"after{i}" for i in range(6)], 0.01)
        assert_complete(client, {**before, **crossing, **during, **after})
        assert writing.count(victim.port) >= 2  # of 4 slow jobs, writing while their master went
    assert worker.stop() == 0
    log = worker.text()
    if how == "killed":
        assert f"store {url} unreachable" in log, log
        assert f"store {url} back: replayed" in log, log
    assert "events of job" not in log, log  # nothing lost


def _master(raw: RedisCluster, ref: JobRef) -> int:
    """The port of the master that serves the job's shard now."""
    slot = ShardedLayout("gs", DEFAULT_SHARDS).slots[
        ShardedLayout("gs", DEFAULT_SHARDS).shard(ref.handle)
    ]
    return int(raw.nodes_manager.get_node_from_slot(slot).port)


# ---------------------------------------------------------------------------------- in doubt

_BUSY = """
local t = redis.call('TIME')
local start = tonumber(t[1]) + tonumber(t[2]) / 1e6
repeat
  t = redis.call('TIME')
until tonumber(t[1]) + tonumber(t[2]) / 1e6 - start > tonumber(ARGV[1])
return 1
"""


@pytest.mark.parametrize("applied", [True, False], ids=["applied", "not-applied"])
def test_a_write_in_doubt_is_replayed_exactly_once(
    applied: bool, store_url: str, raw: RedisCluster
) -> None:
    """A write whose answer does not come (the master is busy past ``socket_timeout``) raises
    StoreError; the master then runs it ("applied": it was busy with a long script) or drops it
    ("not-applied": clients were paused, and the store hung up meanwhile). Replaying it, as a
    worker's spool does, followed by a later event, stores every event once."""
    store = open_store(store_url + "&socket_timeout=0.3&wait=0")
    password = store_url.partition("://:")[2].partition("@")[0]
    try:
        key = new_key()
        events = full_job(key)
        store.write(events[:2])  # started, "one"
        node = raw.nodes_manager.get_node_from_slot(LAYOUT.slots[LAYOUT.shard(key.handle)])
        direct = redis.Redis(host=node.host, port=node.port, password=password)
        busy = threading.Thread(
            target=(lambda: direct.eval(_BUSY, 0, 1.0))
            if applied
            else (lambda: direct.execute_command("CLIENT", "PAUSE", 1000, "WRITE"))
        )
        busy.start()
        time.sleep(0.1)
        with pytest.raises(StoreError, match="write failed"):
            store.write(events[2:3])  # "two": in doubt
        busy.join()
        time.sleep(1.2)  # the master is free again (and has run or dropped the write)
        store.write(events[2:])  # the replay, and the rest of the job
        got = store.get_many([exact(key)])[0]
        assert got is not None and got.data == [b"one", b"two", b"three"]
        assert got.result == b"done"
        direct.close()
    finally:
        store.close()


# ---------------------------------------------------------------------------------- no servers


def _entry(score: int) -> list[object]:
    return [b"s", b"h", b"u", b"", b"running", b"1", b"", None, None, None, None, None, None, None,
            str(score).encode()]  # fmt: skip


def test_shard_listings_merge_newest_first_and_never_skip_a_shard() -> None:
    from gearstash_redis.shards import before_of, merge_pages, read_position

    answers = [
        [[_entry(10), _entry(8)], b""],  # shard 0: every entry seen
        [[_entry(9)], b"7"],  # shard 1: stopped at 7 (its budget); below 7 not seen yet
        [[_entry(3)], b""],  # shard 2: an old entry, below shard 1's stop
    ]
    entries, cursor = merge_pages(answers, 5, 3)
    assert [e[14] for e in entries] == [b"10", b"9", b"8"]  # not 3: shard 1 may hold 4..6
    position = read_position(cursor, 3)
    assert position == (7, 1)
    assert [before_of(position, s) for s in range(3)] == [b"8", b"7", b"7"]  # (7, 0) < (7, 1)
    entries, cursor = merge_pages(answers, 2, 3)
    assert [e[14] for e in entries] == [b"10", b"9"] and read_position(cursor, 3) == (9, 1)
    assert merge_pages([[[_entry(3)], b""]] * 2, 5, 2)[1] is None  # all seen: the last page


def test_the_ledger_drops_only_what_is_stored() -> None:
    from gearstash_redis.doubt import Ledger

    key, other = new_key(), new_key()
    first, later = full_job(key)[:3], full_job(key)[3:]
    ledger = Ledger(10)
    ledger.failed({}, [(first, b"t1", "doubt"), (full_job(other)[:2], b"t2", "applied")])
    assert ledger.in_doubt([*first, *later]) == [key]
    replay = [*first, *full_job(other)[:2], *later, *full_job(other)[2:]]
    kept, dropped = ledger.settle(replay, {key: b"t1"})  # the token is there: key's first write ran
    assert kept == [*later, *full_job(other)[2:]] and set(dropped) == {key, other}
    kept, _ = ledger.settle(replay, {key: b"t0"})  # another token: it did not run
    assert kept == [*first, *later, *full_job(other)[2:]]
    kept, _ = ledger.settle(later, {key: b"t1"})  # not the replay (it does not start with it)
    assert kept == later
    ledger.done([key, other])
    assert not ledger


def test_a_cluster_url_splits_into_nodes_driver_options_and_our_own() -> None:
    from gearstash_redis.cluster import parse_cluster_url, redact_cluster_url

    url = "rediss+cluster://us%40er:p%25w%2F@h1:7000,[::1]:7001?socket_timeout=2&wait=0&shards=8"
    nodes, kwargs, own = parse_cluster_url(url)
    assert nodes == [("h1", 7000), ("::1", 7001)]
    assert (kwargs["username"], kwargs["password"]) == ("us@er", "p%w/")  # unquoted once
    assert kwargs["socket_timeout"] == 2.0 and kwargs["ssl"] is True
    assert own == {"wait": "0", "shards": "8"}
    assert redact_cluster_url(url) == (
        "rediss+cluster://us%40er:***@h1:7000,[::1]:7001?socket_timeout=2&wait=0&shards=8"
    )


def test_writes_go_on_when_a_replica_stops(own_cluster: PrivateRedisCluster) -> None:
    """A master whose replica is gone: its writes still land (a ``WAIT`` comes back short, after
    ``wait_timeout``), and the store asks the master again and stops waiting for the replica."""
    store = open_store(own_cluster.url + "?wait_timeout=0.2")
    try:
        key = new_key()
        master = _master_of(own_cluster, key)
        replica = own_cluster.node(next(p for p, m in own_cluster.roles().items() if m == master))
        connections = store._connections  # type: ignore[attr-defined]
        node = next(n for n in connections.cluster.get_primaries() if n.port == master)
        assert connections.replicas_of(node) == 1
        replica.kill()
        events = full_job(key)
        written = 0

        def waits_for_none() -> bool:
            nonlocal written
            if written < len(events):
                store.write(events[written : written + 1])
                written += 1
            return connections.replicas_of(node) == 0

        wait_until(waits_for_none, 10, "the store to stop waiting for the stopped replica")
        store.write(events[written:])
        got = store.get_many([exact(key)])[0]
        assert got is not None and got.data == [b"one", b"two", b"three"] and got.result == b"done"
    finally:
        store.close()


def _master_of(cluster: PrivateRedisCluster, key: JobKey) -> int:
    """The port of the master of the job's shard (default layout)."""
    for client in _client(cluster):
        slot = LAYOUT.slots[LAYOUT.shard(key.handle)]
        return int(client.nodes_manager.get_node_from_slot(slot).port)
    raise AssertionError("unreachable")
