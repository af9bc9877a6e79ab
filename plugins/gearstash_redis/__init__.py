"""Built-in Redis store: ``redis://``, ``rediss://`` (TLS) and ``unix://`` URLs; and Redis Cluster,
``redis+cluster://`` / ``rediss+cluster://`` (:mod:`gearstash_redis.cluster`, the same layout once
per shard: :mod:`gearstash_redis.shards`).

``redis://[[user]:password@]host[:port][/db][?options]``, ``rediss://…`` (TLS; add
``ssl_ca_certs=/path/ca.pem`` or ``ssl_cert_reqs=none``), ``unix:///path/redis.sock?db=0``.
Needs redis-py (``pip install 'gearstash[redis]'``, with hiredis) and Redis ≥ 5 (tested with 7.0,
where one ``PEXPIRE … GT`` keeps the index's TTL).
Capabilities: ``shared``, ``push`` (waiters are woken by pub/sub), ``expires``, ``delete``; whether
the data survives a restart of Redis depends on its persistence settings.

Options (query parameters; any other one goes to redis-py, e.g. ``socket_timeout=2``,
``socket_connect_timeout=2`` — both 5 s by default — or ``ssl_ca_certs``):

* ``ttl=SECONDS`` — keep a job this long after its last write (default 86400; ``0`` = for ever).
  ``Worker.function(ttl=...)`` overrides it per function.
* ``grace=SECONDS`` — how long an expired job still reads as ``expired`` (its tombstone outlives
  its data by ``min(ttl, grace)``; default 86400). After that it reads as unknown (``None``).
* ``prefix=WORD`` — the first part of every key and channel (default ``gs``).

Key layout (``gs`` is the prefix; strings are bytes; numbers and times are decimal text, times
unix seconds as Python prints a float):

``K`` — the job's *key encoding*
    the netstrings of its server (``host:port``, UTF-8), handle and unique, concatenated (a
    netstring is ``<byte length>:<bytes>,``). Server ``127.0.0.1:4730``, handle ``H:web1:70``,
    unique ``5f0c`` give ``14:127.0.0.1:4730,9:H:web1:70,4:5f0c,``.
``J`` — the job digest: the first 24 hex digits (lower case) of SHA-1(K).
``H`` — the handle digest: the first 24 hex digits of SHA-1(handle).
``U`` — the unique digest: the first 24 hex digits of SHA-1(unique).

``gs:{J}:job`` — HASH, one per job instance (server, handle, unique)
    ``server``, ``handle``, ``unique``, ``function``, ``state`` (``queued`` / ``running`` /
    ``complete`` / ``failed``), ``attempt`` (0 while queued), ``worker``; and only when set:
    ``updated_at``, ``expires_at`` (absent when the job is kept for ever), ``lease_until``,
    ``started_at``, ``finished_at``, ``result`` (present and empty: an empty result),
    ``error_kind`` (``fail`` / ``exception``), ``error_message``, ``traceback``, ``workload``
    (the job's workload, when a worker captured it; a later attempt without one keeps it). A
    new attempt (the
    job started again) removes ``finished_at``, ``result`` and the error fields and empties the
    three lists. A ``submitted`` event writes only when the job has no hash yet (a ``queued``
    one); a ``heartbeat`` only when it has one.
``gs:{J}:data`` — LIST: the data chunks, in the order the worker sent them.
``gs:{J}:warnings`` — LIST: the warnings, in order.
``gs:{J}:status`` — LIST: ``"<numerator> <denominator> <at>"``, in order.
``gs:{J}:gone`` — STRING, the tombstone: the job's ``expires_at``. It outlives the job's other
    keys by ``min(ttl, grace)``; while it exists and ``gs:{J}:job`` does not, the job reads as
    ``expired``.
``gs:h:{H}`` — ZSET, the handle index: member K of every job with that handle, scored 1, 2, 3…
    in the order the jobs were first written (the highest score is the newest job). It lives at
    least as long as the tombstones of its jobs; an entry whose job and tombstone are both gone
    stays until a new job with the handle is written (readers skip it).
``gs:u:{U}`` — ZSET, the unique index: the same for every job with that unique (a job with an
    empty unique is not listed); a reference by unique alone (no handle) follows it.
``gs:all`` — ZSET, the listing index: member K of every job, scored by ``INCR gs:serial`` when
    the job is first written (the write script adds it in the same call that makes the job).
    Listing walks it newest first; entries whose job and tombstone are both gone are removed by
    listing and by later writes (the oldest two per new job). ``gs:serial`` — STRING, its counter.
``gs:st:STATE`` — ZSET, the state index: member K of every job whose stored state is STATE,
    scored by its expires_at (``+inf``: kept for ever); every write keeps it, moving the job when
    its state changes. Counting by state is a ``ZCOUNT`` per state.
``gs:ev:{H}`` — pub/sub channel: each write to a job with that handle publishes the job's J.
    (A waiter on a reference by unique alone has no channel: it polls.)

A job's keys live ``ttl`` seconds after its last write (``ttl`` of the write's last event, else
the store's ``?ttl=``); each write sets that TTL on all of them, ``ttl + min(ttl, grace)`` on the
tombstone, and makes sure the handle and unique indexes live at least as long. ``ttl=0`` removes
the TTLs and the tombstone. ``expires_at`` is the writer's clock plus ``ttl``. Every key of one job carries
the hash tag ``{J}`` (one Redis Cluster slot); the handle index and channel carry ``{H}``, the
unique index ``{U}``.

One ``write()`` is one Lua script (EVALSHA), applied atomically: concurrent writers' chunks never
interleave within a batch and never get lost. A read runs one script per slice of up to 250
references (atomic: the hashes and lists of one slice are of the same moment), all in one
pipeline; a read by handle alone follows the index inside that script. The read script touches
keys of many slots, and reads keys it does not declare (those it finds in an index), as does index
pruning inside the write script, so ``redis://`` needs a single Redis server (or a primary with
replicas); for Redis Cluster, ``redis+cluster://`` puts all of these keys of one shard under one
hash tag (:mod:`gearstash_redis.shards`).

Finding a job by handle, in any language (PHP with phpredis; the test suite runs this recipe)::

    $H = substr(sha1($handle), 0, 24);
    $members = $redis->zRange("gs:h:{" . $H . "}", 0, -1);   // oldest first
    $K = end($members);   // the newest job; or walk back to the first whose server/unique match
    // K holds three netstrings: "<len>:<server>,<len>:<handle>,<len>:<unique>,"
    $J = substr(sha1($K), 0, 24);
    $job = $redis->hGetAll("gs:{" . $J . "}:job");    // empty: expired, deleted or unknown
    $data = $redis->lRange("gs:{" . $J . "}:data", 0, -1);
    // no hash, but "gs:{J}:gone" exists: the job expired at that time

Knowing the server and unique, build K and J directly and skip the index. Knowing only the unique
(a job replayed under a new handle), take the members of ``"gs:u:{" . substr(sha1($unique), 0,
24) . "}"`` instead of the handle index. Read the hash and the
lists in one MULTI/EXEC (or one Lua script) for a consistent snapshot.

Registered through the ``gearstash`` entry-point group exactly as a third-party store would be.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gearstash import hookimpl
from gearstash.spine.hookspecs import RegisterStore

if TYPE_CHECKING:
    from .cluster import RedisClusterStore
    from .store import RedisStore, RedisWatch

__all__ = [
    "RedisClusterStore",
    "RedisStore",
    "RedisWatch",
    "open_redis",
    "open_redis_cluster",
    "register_stores",
]

NEEDS = {"driver": "redis", "extra": "redis"}
"""redis-py is imported when a Redis store is opened: without it the plugin loads quietly."""


def __getattr__(name: str) -> Any:
    if name in ("RedisStore", "RedisWatch"):
        from . import store

        return getattr(store, name)
    if name == "RedisClusterStore":
        from . import cluster

        return cluster.RedisClusterStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_redis(url: str) -> RedisStore:
    """Open the Redis store at ``url``. Raises StoreError (unreachable, refused), ConfigError."""
    from .store import RedisStore

    return RedisStore(url)


def open_redis_cluster(url: str) -> RedisClusterStore:
    """Open the Redis Cluster store at ``url`` (:mod:`gearstash_redis.cluster`). Raises
    StoreError (no node reachable, refused), ConfigError."""
    from .cluster import RedisClusterStore

    return RedisClusterStore(url)


@hookimpl
def register_stores(register: RegisterStore) -> None:
    """Register ``redis``, ``rediss``, ``unix``, ``redis+cluster`` and ``rediss+cluster``."""
    register(
        "redis",
        open_redis,
        description="Redis (redis://[user:pass@]host:port/db); shared",
        **NEEDS,
    )
    register(
        "rediss",
        open_redis,
        description="Redis over TLS (rediss://…?ssl_ca_certs=PATH)",
        **NEEDS,
    )
    register(
        "unix",
        open_redis,
        description="Redis on a unix socket (unix:///path.sock?db=N)",
        **NEEDS,
    )
    register(
        "redis+cluster",
        open_redis_cluster,
        description="Redis Cluster (redis+cluster://host:port[,host:port...]); shared",
        **NEEDS,
    )
    register(
        "rediss+cluster",
        open_redis_cluster,
        description="Redis Cluster over TLS (rediss+cluster://…?ssl_ca_certs=PATH)",
        **NEEDS,
    )
