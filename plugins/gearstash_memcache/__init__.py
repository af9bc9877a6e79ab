"""Built-in memcached store: ``memcache://`` (alias ``memcached://``), through pymemcache.

``memcache://host[:port][,host[:port]...][?options]`` (port 11211 by default; IPv6 in brackets,
``[::1]:11211``). Several servers share the jobs by rendezvous hashing (below); every key of one job
lives on one server. Needs pymemcache 4 or later (``pip install 'gearstash[memcache]'``) and memcached
≥ 1.4.8 (tested with 1.6). Capabilities: ``shared``, ``expires``, ``delete``, ``evicts``. Opening
the store reaches every server (StoreError if one is down). Connections are pooled per server
(thread-safe), made again in a forked child, and have ``TCP_NODELAY`` set; ``timeout`` bounds
every connect and every answer.

Options (query parameters):

* ``ttl=SECONDS`` — keep a job this long after its last write (default 86400; ``0`` = for ever).
  An event's own ``ttl`` (``Worker.function(ttl=...)``) overrides it.
* ``grace=SECONDS`` — how long an expired job still reads as ``expired``: its tombstone outlives
  it by ``min(ttl, grace)`` (default 86400). After that it reads as unknown (``None``).
* ``prefix=WORD`` — the first part of every key (default ``gs``; 1 to 32 of ``A-Z a-z 0-9 _ . -``).
* ``timeout=SECONDS`` — connect and read timeout (default 2).

**memcached may evict.** Under memory pressure memcached drops items before their TTL, least
recently used first. A job whose head was evicted reads as unknown (``None``); a chunk that was
evicted cuts that list short at its place. Size memcached (``-m``) for your jobs times their TTL, or use a
store that keeps what it is given. **No push**: ``watch`` returns a
:class:`~gearstash.store.contract.PollWatch`, so waiters poll. ``purge()`` does nothing (memcached expires
items by itself).

Key layout (strings are bytes; times are unix seconds; JSON is UTF-8):

``K`` (the job's *key encoding*)
    netstrings of the server (``host:port``, UTF-8), the handle and the unique, concatenated.
    For server ``127.0.0.1:4730``, handle ``H:web1:70``, unique ``5f0c``:
    ``14:127.0.0.1:4730,9:H:web1:70,4:5f0c,`` (a netstring is ``<byte length>:<bytes>,``).
``J`` (job digest)
    the first 24 hex digits (lower case) of SHA-1(K) — as in the Redis store.
``H`` (handle digest)
    the first 24 hex digits of SHA-1(handle).
``U`` (unique digest)
    the first 24 hex digits of SHA-1(unique).
The server of a digest (J, or H or U for an index)
    with several servers, the one whose ``sha256("<host:port> <digest>")`` (hex, lower case) is
    greatest as a string; ``host:port`` as written in the URL (host lower-cased, the port always
    given, IPv6 in brackets). A job's keys all live on the server of its J.

Stored values (the memcached flags are always 0) begin with one byte: ``=`` — the rest is the value;
``@`` — the rest is a JSON parts header ``{"parts": N, "size": BYTES, "id": "<16 hex>"}``: the value
did not fit in one memcached item (≤ 1 MiB; parts are at most the server's slab chunk, 512 KiB by
default) and is the concatenation of parts ``0 … N-1``, stored under ``<key>:p:<id>:<k>`` without
any leading byte. Parts are written before the value that names them.

``gs:<J>:job`` — the head: the job record (``gearstash.job/1`` JSON) without its lists
    ``format``, ``server``, ``handle``, ``unique``, ``function``, ``state``, ``attempt``,
    ``result``, ``error``, ``worker``, ``started_at``, ``finished_at``, ``updated_at``,
    ``expires_at``, ``lease_until``, ``workload`` (absent in older heads: null) as in the
    README's record format (``state`` ``queued``, ``attempt`` 0: submitted, not started yet),
    and ``chunks``: ``{"generation": G, "data": ND, "warnings": NW, "status": NS, ...}``
    (other members are for writers). G is 16 hex digits, new for every attempt (a ``started``
    begins a new attempt: its chunks start afresh).
``gs:<J>:<G>:d:<i>`` — data chunk ``i`` (the bytes the worker sent), for ``0 <= i < ND``
``gs:<J>:<G>:w:<i>`` — warning ``i``, for ``i < NW``
``gs:<J>:<G>:s:<i>`` — status ``i``: ``{"numerator": N, "denominator": D, "at": T}``, ``i < NS``
``gs:<J>:<G>:d:n``, ``…:w:n``, ``…:s:n`` — counters (decimal) handing writers chunk indices
``gs:<J>:gone`` — the tombstone: ``{"format": "gearstash.tombstone/1", "server", "handle",
    "unique", "function" (empty when over 1 KiB), "attempt", "expires_at"}``. While it exists
    and the head does not, the job reads as ``expired`` (as unknown if its ``expires_at`` has not
    come: the head was evicted).
``gs:h:<H>`` — the handle index: `` J1 J2 J3`` (a space before each J), the jobs with that handle,
    oldest first; a J may appear twice (its first place counts) and may name a forgotten job.
``gs:u:<U>`` — the unique index: the same for the jobs with that unique (a job with an empty unique
    is not listed); a reference by unique alone (no handle) follows it. Like any key it may be
    evicted: the jobs listed in it are then found by unique again only once they are written to.

TTLs. Every write sets a memcached expiry on each key it writes: the head expires at
``expires_at`` (plus one second: memcached's clock has whole seconds, so readers compare
``expires_at`` with their own clock), chunks and counters up to ``min(ttl, 1 h)`` later (all of a
job's chunks are refreshed when it runs longer than that), the tombstone and the handle and unique
indexes ``min(ttl, grace)`` later (an index lives as long as its most recently written job). A
``submitted`` event writes only when the job has no head yet; a ``heartbeat`` only when it has one.
memcached
reads an expiry over 30 days as a unix time: longer ones are sent as one. ``ttl=0`` sets none and
writes no tombstone.

Writes and consistency. The head is the commit point: a write stores its chunks first (under a new
generation for a new attempt, else under indices taken from the counters with ``incr``), then
replaces the head with ``add`` (a new job) or ``cas``, so concurrent writers (threads, processes,
hosts) never lose an update and each writer's chunks keep its order. A chunk below the head's count
is missing only while a concurrent writer is still storing it, when it was evicted, or when that
writer died between taking the index and storing the chunk: readers take each list up to its first
missing chunk. SHA-1 collisions are harmless: the head carries the whole key and a head for another
key is never returned. The costs in round trips are in ``store.py``.

Reading a finished job by handle, in PHP with php-memcached (one ``Memcached`` per server, each with
one ``addServer``; with a single server ``server_for`` is just that one)::

    function server_for(array $servers, string $digest): string {   // "host:port" strings
        $best = null; $top = '';
        foreach ($servers as $s) {
            $score = hash('sha256', "$s $digest");
            if ($best === null || strcmp($score, $top) > 0) { $best = $s; $top = $score; }
        }
        return $best;
    }
    function value(Memcached $m, string $key): ?string {          // undoes '=' and '@'
        $v = $m->get($key);
        if ($v === false) return null;
        if ($v[0] === '=') return substr($v, 1);
        $p = json_decode(substr($v, 1), true); $body = '';
        for ($k = 0; $k < $p['parts']; $k++) $body .= $m->get("$key:p:{$p['id']}:$k");
        return strlen($body) === $p['size'] ? $body : null;
    }
    $H = substr(sha1($handle), 0, 24);
    $index = $mc[server_for($servers, $H)]->get("gs:h:$H");              // false: unknown
    $newest_first = array_reverse(array_unique(preg_split('/ +/', trim($index))));
    foreach ($newest_first as $J) {
        $m = $mc[server_for($servers, $J)];
        $head = value($m, "gs:$J:job");
        if ($head === null) continue;             // forgotten (or see "gs:$J:gone": expired)
        $job = json_decode($head, true);          // keep it if server/unique are what you know
        $c = $job['chunks'];
        foreach (['data' => 'd', 'warnings' => 'w', 'status' => 's'] as $list => $s) {
            $job[$list] = [];
            for ($i = 0; $i < $c[$list]; $i++) {
                $chunk = value($m, "gs:$J:{$c['generation']}:$s:$i");
                if ($chunk === null) break;
                $job[$list][] = $s === 's' ? json_decode($chunk, true) : $chunk;
            }
        }
        break;                                    // $job: the newest job with that handle
    }

With the full reference (server, handle, unique) skip the index: build K and J directly
(``$K = strlen($server).':'.$server.','.strlen($handle).':'.$handle.','.strlen($unique).':'
.$unique.',';``). By the unique alone, read the index ``"gs:u:$U"`` (``$U = substr(sha1($unique),
0, 24)``, on ``server_for($servers, $U)``) instead of the handle's. In the head, bytes that are
not UTF-8 are ``{"base64": ...}`` as in the record format; chunks are raw bytes. Check
``expires_at`` against the clock: a head may outlive it by up to a second. Use ``getMulti`` to
read many keys in one round trip.

Registered through the ``gearstash`` entry-point group exactly as a third-party store would be.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gearstash import hookimpl
from gearstash.spine.hookspecs import RegisterStore

if TYPE_CHECKING:
    from .store import MemcacheStore

__all__ = ["MemcacheStore", "open_memcache", "register_stores"]

NEEDS = {"driver": "pymemcache", "extra": "memcache"}
"""pymemcache is imported when a memcache store is opened: without it the plugin loads quietly."""


def __getattr__(name: str) -> Any:
    if name == "MemcacheStore":
        from .store import MemcacheStore

        return MemcacheStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_memcache(url: str) -> MemcacheStore:
    """Open the memcache store at ``url`` (reaches every server). Raises StoreError, ConfigError."""
    from .store import MemcacheStore

    return MemcacheStore(url)


@hookimpl
def register_stores(register: RegisterStore) -> None:
    """Register ``memcache://`` and ``memcached://``."""
    register(
        "memcache",
        open_memcache,
        description="memcached (several servers by rendezvous hashing); shared, may evict",
        **NEEDS,
    )
    register(
        "memcached", open_memcache, description="memcached (alias of memcache://)", **NEEDS
    )
