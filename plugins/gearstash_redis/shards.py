"""The Redis Cluster layout: the single-server layout, once per *shard*. No I/O.

A Redis Cluster script may touch the keys of one hash slot only, and the write script keeps a
job's keys, its handle and unique indexes, the listing index, the state indexes and the serial
together in one atomic call. So on a cluster every key name starts with a *shard prefix*
``PREFIX:{S}`` instead of ``PREFIX``, where ``S`` (the hash tag: one slot) is the shard of the
job's handle, in decimal::

    S = int(H[:8], 16) % SHARDS        # H = the handle digest (24 hex digits of SHA-1(handle))
    gs:{17}:{J}:job  gs:{17}:{J}:data  …  gs:{17}:h:{H}  gs:{17}:u:{U}  gs:{17}:all
    gs:{17}:serial  gs:{17}:st:running  gs:{17}:ev:{H} (channel)  gs:{17}:{J}:w (write token)

Below the shard prefix everything is the single-server layout (package docstring), with two
differences written by :data:`cluster_script`'s additions to the write script: ``PREFIX:{S}:all``
is scored by the shard's clock in microseconds (``TIME``, kept rising within the shard in
``PREFIX:{S}:serial``) instead of a counter, so the shards' listings merge newest first; and each
write leaves a token of its own in ``PREFIX:{S}:{J}:w`` (see :mod:`gearstash_redis.cluster`).

``SHARDS`` (``?shards=``, default 64) fixes how the jobs spread over the cluster's masters: the 64
tags ``{0}`` … ``{63}`` fall 21/22/21 on the three slot ranges of a three-master cluster. It is part
of the layout, like the prefix: never change it for data that is already stored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from redis.crc import key_slot

from gearstash.errors import BadCursor
from gearstash.model.records import JobKey
from gearstash.store.contract import read_cursor

from .layout import DIGEST_HEX, JobKeys, Layout

DEFAULT_SHARDS = 64
MAX_SHARDS = 4096
CURSOR_KIND = "rc"

# The write script, changed in two places for a cluster (asserted: a change to the script that
# moves these lines fails at import, not at run time).
_SERIAL = "redis.call('ZADD', prefix .. ':all', redis.call('INCR', prefix .. ':serial'), member)"
_RETURN = "return #KEYS / 7\n"
_STAMP = r"""
local function stamp(prefix)
  -- the listing index's score: this node's clock in microseconds, rising within the shard
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('GET', prefix .. ':serial') or '0')
  if now <= last then now = last + 1 end
  local text = string.format('%d', now)
  redis.call('SET', prefix .. ':serial', text)
  return text
end
"""
_TOKEN = r"""-- the write's token (the last two ARGV, after every job's): PREFIX:{S}:{J}:w of each job
local token, token_ms = ARGV[#ARGV - 1], tonumber(ARGV[#ARGV])
for k = 1, #KEYS, 7 do
  local w = string.sub(KEYS[k], 1, -4) .. 'w'
  if token_ms > 0 then
    redis.call('SET', w, token, 'PX', token_ms)
  else
    redis.call('SET', w, token)
  end
end
"""


def cluster_script(source: str) -> str:
    """The write script ``source`` as a cluster runs it (see the module docstring)."""
    if source.count(_SERIAL) != 1 or not source.endswith(_RETURN):
        raise AssertionError("the write script changed: update gearstash_redis.shards")
    serial = "redis.call('ZADD', prefix .. ':all', stamp(prefix), member)"
    body = source.replace(_SERIAL, serial)
    return _STAMP + body[: -len(_RETURN)] + _TOKEN + _RETURN


def sha1(source: str) -> bytes:
    """The EVALSHA name of a script."""
    return hashlib.sha1(source.encode()).hexdigest().encode()


class ShardedLayout:
    """The key names of a cluster store: one :class:`Layout` per shard."""

    def __init__(self, prefix: str, shards: int) -> None:
        self.prefix = prefix
        self.shards = shards
        self.layouts = [Layout(f"{prefix}:{{{s}}}") for s in range(shards)]
        self.prefixes = [layout.prefix.encode() for layout in self.layouts]
        self.slots = [key_slot(b"%d" % s) for s in range(shards)]

    def shard(self, handle: bytes) -> int:
        """The shard of every job with this handle."""
        return int(hashlib.sha1(handle).hexdigest()[:8], 16) % self.shards

    def keys(self, key: JobKey) -> JobKeys:
        """The names of a job's keys (``Layout.keys`` in its shard)."""
        return self.layouts[self.shard(key.handle)].keys(key)

    def token_key(self, key: JobKey) -> bytes:
        """``PREFIX:{S}:{J}:w``: the token of the last write to the job."""
        return self.keys(key).job[:-3] + b"w"


assert DIGEST_HEX >= 8


def make_cursor(score: int, shard: int, shards: int) -> str:
    """A listing cursor: below entry (score, shard) of the merged listing."""
    return f"{CURSOR_KIND}.{score * shards + shard}"


def read_position(cursor: str | None, shards: int) -> tuple[int, int] | None:
    """(score, shard) of a cursor :func:`make_cursor` made; None for none. Raises BadCursor."""
    position = read_cursor(CURSOR_KIND, cursor)
    if position is None:
        return None
    score, shard = divmod(position, shards)
    if score <= 0:
        raise BadCursor("this cursor was not made by this store: start from the first page")
    return score, shard


def before_of(position: tuple[int, int] | None, shard: int) -> bytes:
    """The LIST script's ``before`` (list scores below it) for ``shard``, for a merged cursor."""
    if position is None:
        return b""
    score, at = position
    return b"%d" % (score + 1 if shard < at else score)  # ties: the lower shard comes later


def merge_pages(
    answers: Sequence[list[Any]], limit: int, shards: int
) -> tuple[list[list[Any]], str | None]:
    """Merge the LIST answers ``{entries, next}`` of every shard (in shard order), newest first.

    Every shard examined its entries down to its ``next`` (or all of them, ``''``). The merged page
    holds only entries at or above the highest of those stops (below it, a shard is not yet
    read), at most ``limit``; its cursor continues below the last entry taken, or at the highest
    stop when fewer were taken, or is None when every shard is exhausted.
    """
    entries: list[tuple[int, int, list[Any]]] = []
    stop: tuple[int, int] | None = None
    for shard, (found, following) in enumerate(answers):
        for entry in found:
            entries.append((int(entry[14]), shard, entry))
        if following:
            at = (int(following), shard)
            stop = at if stop is None or at > stop else stop
    entries.sort(key=lambda item: (item[0], item[1]), reverse=True)
    if stop is not None:
        entries = [item for item in entries if (item[0], item[1]) >= stop]
    taken = entries[:limit]
    if len(taken) == limit:
        last = taken[-1]
        cursor: str | None = make_cursor(last[0], last[1], shards)
    elif stop is not None:
        cursor = make_cursor(stop[0], stop[1], shards)
    else:
        cursor = None
    return [item[2] for item in taken], cursor
